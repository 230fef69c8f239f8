//! Bootstrap settings: what the process needs before it can serve, read once from flags and
//! `WEFT_*` environment variables. Everything that may change while running lives in the
//! dynamic [`crate::config::Config`] snapshot instead.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use weft_api::SpiffeId;

use crate::duration::parse_duration;
use crate::init::InitArgs;

/// The outbound listener. Loopback because iptables' OUTPUT `REDIRECT` delivers to 127.0.0.1
/// (and ::1), and nothing outside the pod should be able to use it as an open proxy.
pub const DEFAULT_OUTBOUND_ADDR: &str = "127.0.0.1:15001";
/// The inbound listener. Every address, because PREROUTING `REDIRECT` delivers to the primary
/// address of the interface the packet arrived on.
pub const DEFAULT_INBOUND_ADDR: &str = "0.0.0.0:15006";
/// Admin: probes from the kubelet and scrapes from Prometheus arrive from outside the pod.
pub const DEFAULT_ADMIN_ADDR: &str = "0.0.0.0:15020";
/// Kubernetes gives a pod 30 s (`terminationGracePeriodSeconds`) before SIGKILL; draining for
/// 25 s leaves the proxy time to flush and exit on its own.
pub const DEFAULT_SHUTDOWN_GRACE: &str = "25s";

#[derive(Debug, Parser)]
#[command(name = "weft-proxy", version, about = "Weft's sidecar proxy")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve traffic (the default when no subcommand is given).
    Run,
    /// Write the iptables rules that redirect a pod's traffic through the proxy.
    Init(InitArgs),
    /// Wait until the proxy's /ready answers 200 (the injector's postStart hook).
    WaitReady(crate::wait_ready::WaitReadyArgs),
}

/// How the proxy learns where a connection was going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Connections are redirected by iptables; `SO_ORIGINAL_DST` gives the real target.
    Transparent,
    /// No iptables: the outbound listener is an HTTP forward proxy (`HTTP_PROXY`), the inbound
    /// listener forwards to `--inbound-app`, and the config file may add static listeners.
    Local,
}

#[derive(Debug, Clone, Args, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunArgs {
    /// How connections find their destination.
    #[arg(long, env = "WEFT_MODE", value_enum, default_value = "transparent")]
    pub mode: Mode,

    /// Outbound listener address(es), comma-separated (e.g. `127.0.0.1:15001,[::1]:15001`).
    #[arg(long, env = "WEFT_OUTBOUND_ADDR", value_delimiter = ',', default_value = DEFAULT_OUTBOUND_ADDR)]
    pub outbound_addr: Vec<SocketAddr>,

    /// Inbound listener address(es), comma-separated.
    #[arg(long, env = "WEFT_INBOUND_ADDR", value_delimiter = ',', default_value = DEFAULT_INBOUND_ADDR)]
    pub inbound_addr: Vec<SocketAddr>,

    /// Admin server address: /live, /ready, /metrics, /config, /shutdown, /log-level.
    #[arg(long, env = "WEFT_ADMIN_ADDR", default_value = DEFAULT_ADMIN_ADDR)]
    pub admin_addr: SocketAddr,

    /// Where inbound traffic goes in local mode (the app's address). In transparent mode it
    /// goes to 127.0.0.1 at the connection's original port.
    #[arg(long, env = "WEFT_INBOUND_APP")]
    pub inbound_app: Option<SocketAddr>,

    /// Dynamic configuration file (YAML), reloaded when it changes.
    #[arg(long, env = "WEFT_CONFIG")]
    pub config: Option<PathBuf>,

    /// How long in-flight work may take to finish after SIGTERM or POST /shutdown.
    #[arg(long, env = "WEFT_SHUTDOWN_GRACE", value_parser = parse_duration, default_value = DEFAULT_SHUTDOWN_GRACE)]
    #[serde(with = "crate::duration::serde_secs")]
    pub shutdown_grace: Duration,

    /// Worker threads. A sidecar shares its pod's CPU, so one is the default; 1 runs a
    /// single-threaded runtime, which is also the fastest per request.
    #[arg(long, env = "WEFT_WORKERS", default_value_t = 1)]
    pub workers: usize,

    /// Log filter, in `tracing` env-filter syntax (`info`, `weft_proxy=debug`).
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    pub log: String,

    /// Log format.
    #[arg(long, env = "WEFT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Workload identity and its certificates (mTLS).
    #[command(flatten)]
    pub identity: IdentityArgs,

    /// The pod's name (the downward API's `metadata.name`). With --control-plane-addr and
    /// --namespace, the proxy subscribes to its view (ports, mTLS mode, authorization
    /// policies) from the control plane; without it, no view and no authorization.
    #[arg(long, env = "WEFT_POD_NAME")]
    pub pod_name: Option<String>,

    /// Distributed tracing: OTLP export of a span per request (off without a collector).
    #[command(flatten)]
    pub trace: crate::trace::TraceArgs,

    /// Access log destination, `stdout` or a file, when the config file has no `accessLog`.
    #[arg(long, env = "WEFT_ACCESS_LOG")]
    pub access_log: Option<crate::access_log::Destination>,
}

/// Where a projected service-account token for the identity audience is mounted by the
/// injector; the kubelet rotates the file in place.
pub const DEFAULT_IDENTITY_TOKEN_FILE: &str = "/var/run/secrets/weft.dev/identity/token";

/// The workload identity: where its certificate comes from. Files mode when `--identity-cert`
/// is set, control-plane mode when `--control-plane-addr` is set, otherwise mTLS is off.
/// [`crate::identity::start`] checks the combination; conflicting or incomplete sets of flags
/// are a startup error.
#[derive(Debug, Clone, Args, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityArgs {
    /// Trust domain of the mesh's SPIFFE IDs [default: --identity's, else cluster.local].
    #[arg(long, env = "WEFT_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,

    /// This workload's SPIFFE ID, spelled out (instead of --namespace and --service-account).
    #[arg(long, env = "WEFT_IDENTITY")]
    pub identity: Option<SpiffeId>,

    /// The pod's namespace; with --service-account, names the identity
    /// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
    #[arg(long, env = "WEFT_NAMESPACE")]
    pub namespace: Option<String>,

    /// The pod's service account.
    #[arg(long, env = "WEFT_SERVICE_ACCOUNT")]
    pub service_account: Option<String>,

    /// Control-plane address (host:port) to get certificates from.
    #[arg(long, env = "WEFT_CONTROL_PLANE_ADDR")]
    pub control_plane_addr: Option<String>,

    /// The SPIFFE ID the control plane must present
    /// [default: spiffe://<trust-domain>/ns/weft-system/sa/weft-control-plane].
    #[arg(long, env = "WEFT_CONTROL_PLANE_IDENTITY")]
    pub control_plane_identity: Option<SpiffeId>,

    /// Token proving the service account to the control plane, re-read for every request.
    #[arg(long, env = "WEFT_IDENTITY_TOKEN_FILE", default_value = DEFAULT_IDENTITY_TOKEN_FILE)]
    pub identity_token_file: PathBuf,

    /// PEM roots the control plane's certificate must chain to (control-plane mode).
    #[arg(long, env = "WEFT_TRUST_ANCHORS")]
    pub trust_anchors: Option<PathBuf>,

    /// Files mode: the workload certificate chain (PEM, leaf first), reloaded when it changes.
    #[arg(long, env = "WEFT_IDENTITY_CERT")]
    pub identity_cert: Option<PathBuf>,

    /// Files mode: the certificate's private key (PEM, PKCS#8).
    #[arg(long, env = "WEFT_IDENTITY_KEY")]
    pub identity_key: Option<PathBuf>,

    /// Files mode: the roots peers' certificates must chain to (PEM).
    #[arg(long, env = "WEFT_IDENTITY_TRUST_BUNDLE")]
    pub identity_trust_bundle: Option<PathBuf>,
}

impl Default for IdentityArgs {
    /// mTLS off: what a proxy gets with none of the identity flags.
    fn default() -> Self {
        IdentityArgs {
            trust_domain: None,
            identity: None,
            namespace: None,
            service_account: None,
            control_plane_addr: None,
            control_plane_identity: None,
            identity_token_file: PathBuf::from(DEFAULT_IDENTITY_TOKEN_FILE),
            trust_anchors: None,
            identity_cert: None,
            identity_key: None,
            identity_trust_bundle: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}
