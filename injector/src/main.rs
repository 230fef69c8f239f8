//! `weft-injector`: the mutating admission webhook that adds Weft's sidecar to pods.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tracing_subscriber::EnvFilter;

use weft_injector::config::{
    self, check_quantity, resources, InjectConfig, SidecarMode, TrustAnchors,
};
use weft_injector::server::{self, Server, Settings};
use weft_proxy::duration::parse_duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SidecarFlag {
    /// Native when the API server is 1.29 or newer, else classic.
    Auto,
    /// Always native sidecars (init container with restartPolicy: Always).
    Native,
    /// Always a regular first container with a postStart hook.
    Classic,
}

#[derive(Debug, Parser)]
#[command(
    name = "weft-injector",
    version,
    about = "Weft's sidecar injector (mutating admission webhook)"
)]
struct Cli {
    /// HTTPS listen address.
    #[arg(long, env = "WEFT_INJECTOR_ADDR", default_value = server::DEFAULT_ADDR)]
    addr: SocketAddr,
    /// Serving certificate chain (PEM, leaf first), reloaded when it changes.
    #[arg(
        long,
        env = "WEFT_INJECTOR_TLS_CERT",
        default_value = "/var/run/weft.dev/injector-tls/tls.crt"
    )]
    tls_cert: PathBuf,
    /// The certificate's private key (PEM), reloaded when it changes.
    #[arg(
        long,
        env = "WEFT_INJECTOR_TLS_KEY",
        default_value = "/var/run/weft.dev/injector-tls/tls.key"
    )]
    tls_key: PathBuf,
    /// Native or classic sidecars; `auto` asks the API server for its version at start.
    #[arg(
        long,
        env = "WEFT_INJECTOR_SIDECAR",
        value_enum,
        default_value = "auto"
    )]
    sidecar: SidecarFlag,
    /// With --sidecar auto: how long to keep asking the API server before giving up.
    #[arg(long, env = "WEFT_INJECTOR_VERSION_TIMEOUT", value_parser = parse_duration, default_value = "30s")]
    version_timeout: Duration,
    /// Image of the proxy and init containers.
    #[arg(long, env = "WEFT_INJECTOR_PROXY_IMAGE", default_value = config::DEFAULT_PROXY_IMAGE)]
    proxy_image: String,
    /// imagePullPolicy of the injected containers (Always, IfNotPresent, Never) [default: Kubernetes']
    #[arg(long, env = "WEFT_INJECTOR_IMAGE_PULL_POLICY", value_parser = ["Always", "IfNotPresent", "Never"])]
    image_pull_policy: Option<String>,
    /// Proxy CPU request.
    #[arg(long, env = "WEFT_INJECTOR_PROXY_CPU_REQUEST", default_value = config::DEFAULT_PROXY_CPU_REQUEST)]
    proxy_cpu_request: String,
    /// Proxy memory request.
    #[arg(long, env = "WEFT_INJECTOR_PROXY_MEMORY_REQUEST", default_value = config::DEFAULT_PROXY_MEMORY_REQUEST)]
    proxy_memory_request: String,
    /// Proxy CPU limit [default: none, to avoid CFS throttling].
    #[arg(long, env = "WEFT_INJECTOR_PROXY_CPU_LIMIT")]
    proxy_cpu_limit: Option<String>,
    /// Proxy memory limit.
    #[arg(long, env = "WEFT_INJECTOR_PROXY_MEMORY_LIMIT", default_value = config::DEFAULT_PROXY_MEMORY_LIMIT)]
    proxy_memory_limit: String,
    /// The control plane's gRPC address, given to every proxy.
    #[arg(long, env = "WEFT_INJECTOR_CONTROL_PLANE_ADDR", default_value = config::DEFAULT_CONTROL_PLANE_ADDR)]
    control_plane_addr: String,
    /// The control plane's SPIFFE ID, when not the proxy's default.
    #[arg(long, env = "WEFT_INJECTOR_CONTROL_PLANE_IDENTITY")]
    control_plane_identity: Option<String>,
    /// The mesh's trust domain.
    #[arg(long, env = "WEFT_INJECTOR_TRUST_DOMAIN", default_value = config::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Audience of the projected token (must match the control plane's --token-audience).
    #[arg(long, env = "WEFT_INJECTOR_TOKEN_AUDIENCE", default_value = config::DEFAULT_TOKEN_AUDIENCE)]
    token_audience: String,
    /// Lifetime of the projected token, in seconds (at least 600).
    #[arg(long, env = "WEFT_INJECTOR_TOKEN_EXPIRATION_SECONDS", default_value_t = config::DEFAULT_TOKEN_EXPIRATION_SECONDS,
          value_parser = clap::value_parser!(i64).range(600..))]
    token_expiration_seconds: i64,
    /// ConfigMap (in each meshed namespace) with the control plane's trust anchors.
    #[arg(long, env = "WEFT_INJECTOR_TRUST_ANCHORS_CONFIG_MAP", default_value = config::DEFAULT_TRUST_ANCHORS_CONFIG_MAP)]
    trust_anchors_config_map: String,
    /// The PEM key inside that ConfigMap.
    #[arg(long, env = "WEFT_INJECTOR_TRUST_ANCHORS_KEY", default_value = config::DEFAULT_TRUST_ANCHORS_KEY)]
    trust_anchors_key: String,
    /// WEFT_LOG for injected proxies [default: the proxy's].
    #[arg(long, env = "WEFT_INJECTOR_PROXY_LOG")]
    proxy_log: Option<String>,
    /// Largest review body accepted, in bytes.
    #[arg(long, env = "WEFT_INJECTOR_MAX_BODY_BYTES", default_value_t = server::DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// On SIGTERM, keep answering (not ready) this long so the Service stops sending here first.
    #[arg(long, env = "WEFT_INJECTOR_SHUTDOWN_DELAY", value_parser = parse_duration, default_value = "5s")]
    shutdown_delay: Duration,
    /// Then wait at most this long for in-flight reviews.
    #[arg(long, env = "WEFT_INJECTOR_SHUTDOWN_GRACE", value_parser = parse_duration, default_value = "10s")]
    shutdown_grace: Duration,
    /// Runtime threads; 1 runs a single-threaded runtime.
    #[arg(long, env = "WEFT_INJECTOR_WORKERS", default_value_t = 1)]
    workers: usize,
    /// Log filter (`tracing` env-filter syntax).
    #[arg(long, env = "WEFT_INJECTOR_LOG", default_value = "info")]
    log: String,
    /// Log format.
    #[arg(long, env = "WEFT_INJECTOR_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

impl Cli {
    fn inject_config(&self, sidecar: SidecarMode) -> Result<InjectConfig, String> {
        let mut requests = vec![
            ("cpu", self.proxy_cpu_request.as_str()),
            ("memory", self.proxy_memory_request.as_str()),
        ];
        requests.retain(|(_, q)| !q.is_empty());
        let mut limits = vec![("memory", self.proxy_memory_limit.as_str())];
        if let Some(cpu) = &self.proxy_cpu_limit {
            limits.push(("cpu", cpu.as_str()));
        }
        limits.retain(|(_, q)| !q.is_empty());
        for (_, q) in requests.iter().chain(&limits) {
            check_quantity(q)?;
        }
        Ok(InjectConfig {
            proxy_image: self.proxy_image.clone(),
            image_pull_policy: self.image_pull_policy.clone(),
            proxy_resources: resources(&requests, &limits),
            sidecar,
            control_plane_addr: self.control_plane_addr.clone(),
            control_plane_identity: self.control_plane_identity.clone(),
            trust_domain: self.trust_domain.clone(),
            token_audience: self.token_audience.clone(),
            token_expiration_seconds: self.token_expiration_seconds,
            trust_anchors: TrustAnchors {
                config_map: self.trust_anchors_config_map.clone(),
                key: self.trust_anchors_key.clone(),
            },
            proxy_log: self.proxy_log.clone(),
            ..InjectConfig::default()
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match EnvFilter::try_new(&cli.log) {
        Ok(filter) => filter,
        Err(error) => {
            eprintln!("weft-injector: invalid log filter {:?}: {error}", cli.log);
            return ExitCode::from(2);
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        builder.json().init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
    let runtime = if cli.workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.workers)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("weft-injector: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("weft-injector: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let sidecar = match cli.sidecar {
        SidecarFlag::Native => SidecarMode::Native,
        SidecarFlag::Classic => SidecarMode::Classic,
        SidecarFlag::Auto => {
            let (mode, version) = weft_injector::version::detect(cli.version_timeout)
                .await
                .map_err(|e| {
                    format!(
                        "cannot learn the API server's version ({e}); pass --sidecar native or --sidecar classic"
                    )
                })?;
            tracing::info!(server = version, sidecar = %mode, "sidecar mode from the API server's version");
            mode
        }
    };
    let inject = cli.inject_config(sidecar)?;
    let settings = Settings {
        addr: cli.addr,
        tls_cert: cli.tls_cert,
        tls_key: cli.tls_key,
        inject,
        max_body_bytes: cli.max_body_bytes,
        shutdown_delay: cli.shutdown_delay,
        shutdown_grace: cli.shutdown_grace,
    };
    let server = Server::start(settings).await.map_err(|e| e.to_string())?;
    wait_for_signal().await?;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("signal handler: {e}"))?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("weft-injector").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn default_flags_give_the_default_config() {
        let config = cli(&[]).inject_config(SidecarMode::Native).unwrap();
        assert_eq!(config, InjectConfig::default());
    }

    #[test]
    fn flags_reach_the_config_and_bad_quantities_are_refused() {
        let config = cli(&[
            "--proxy-image=registry.example/weft-proxy:dev",
            "--proxy-cpu-limit=1",
            "--proxy-memory-request=",
            "--control-plane-addr=cp:15012",
            "--trust-anchors-config-map=roots",
        ])
        .inject_config(SidecarMode::Classic)
        .unwrap();
        assert_eq!(config.proxy_image, "registry.example/weft-proxy:dev");
        assert_eq!(config.sidecar, SidecarMode::Classic);
        assert_eq!(config.control_plane_addr, "cp:15012");
        assert_eq!(config.trust_anchors.config_map, "roots");
        let requests = config.proxy_resources.requests.unwrap();
        assert!(!requests.contains_key("memory"));
        assert_eq!(config.proxy_resources.limits.unwrap()["cpu"].0, "1");
        let error = cli(&["--proxy-memory-limit=256MB"])
            .inject_config(SidecarMode::Native)
            .unwrap_err();
        assert!(error.contains("256MB"), "{error}");
        assert!(Cli::try_parse_from(["weft-injector", "--token-expiration-seconds=60"]).is_err());
    }
}
