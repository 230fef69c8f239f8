//! `weft-control-plane`: serves the identity CA's `Certify` and the `Discovery` push API over
//! TLS, from the Kubernetes API or a directory of manifests.
//! Flags and their `WEFT_CP_*` variables are in docs/control-plane.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use weft_control_plane::ca::{self, Authority};
use weft_control_plane::index::{self, MeshSettings};
use weft_control_plane::{AuthSource, CaSource, Config, Source};

#[derive(Parser, Debug)]
#[command(
    name = "weft-control-plane",
    version,
    about = "Weft's control plane: the identity CA that signs proxies' SPIFFE certificates"
)]
struct Cli {
    /// Where gRPC (TLS) is served.
    #[arg(long, env = "WEFT_CP_GRPC_ADDR", default_value = weft_control_plane::DEFAULT_GRPC_ADDR)]
    grpc_addr: SocketAddr,

    /// The SPIFFE trust domain: identities are spiffe://<trust-domain>/ns/<ns>/sa/<sa>.
    #[arg(long, env = "WEFT_CP_TRUST_DOMAIN", default_value = weft_control_plane::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,

    /// The control plane's own namespace (part of its serving certificate's identity).
    #[arg(long, env = "WEFT_CP_NAMESPACE", default_value = weft_control_plane::DEFAULT_NAMESPACE)]
    namespace: String,

    /// The control plane's own service account (part of its serving certificate's identity).
    #[arg(long, env = "WEFT_CP_SERVICE_ACCOUNT", default_value = weft_control_plane::DEFAULT_SERVICE_ACCOUNT)]
    service_account: String,

    /// How long issued certificates are valid: 24h, 30m, 30s.
    #[arg(long, env = "WEFT_CP_CERT_LIFETIME", default_value = "24h", value_parser = parse_duration)]
    cert_lifetime: Duration,

    /// Local mode: keep a generated root CA in this directory (ca.crt, ca.key, bundle.crt).
    #[arg(long, env = "WEFT_CP_STATE_DIR", conflicts_with_all = ["issuer_cert", "issuer_key", "trust_bundle"])]
    state_dir: Option<PathBuf>,

    /// The issuer certificate (PEM), e.g. from a mounted Secret.
    #[arg(long, env = "WEFT_CP_ISSUER_CERT", requires_all = ["issuer_key", "trust_bundle"])]
    issuer_cert: Option<PathBuf>,

    /// The issuer's private key (PEM, PKCS#8).
    #[arg(long, env = "WEFT_CP_ISSUER_KEY", requires_all = ["issuer_cert", "trust_bundle"])]
    issuer_key: Option<PathBuf>,

    /// The trust bundle (PEM, one or more roots) handed to proxies.
    #[arg(long, env = "WEFT_CP_TRUST_BUNDLE", requires_all = ["issuer_cert", "issuer_key"])]
    trust_bundle: Option<PathBuf>,

    /// Local mode: YAML mapping tokens to service accounts, reloaded when it changes.
    #[arg(long, env = "WEFT_CP_TOKEN_FILE", conflicts_with = "kubernetes")]
    token_file: Option<PathBuf>,

    /// Run against the Kubernetes API (in-cluster credentials): check tokens with TokenReview,
    /// watch Namespaces, Pods, Services, EndpointSlices, ServiceAccounts and the policy
    /// resources, and keep the ConfigMap weft-trust-anchors in every meshed namespace.
    #[arg(long, env = "WEFT_CP_KUBERNETES", conflicts_with = "manifests")]
    kubernetes: bool,

    /// Local mode and GitOps: serve the Kubernetes objects in this directory (multi-document
    /// YAML, watched for changes) instead of watching an API server.
    #[arg(long, env = "WEFT_CP_MANIFESTS")]
    manifests: Option<PathBuf>,

    /// What applies where no ALLOW policy selects a workload (a namespace may override it
    /// with the annotation weft.dev/default-policy).
    #[arg(long, env = "WEFT_CP_DEFAULT_POLICY", default_value = "allow", value_parser = ["allow", "authenticated", "deny"])]
    default_policy: String,

    /// Inbound mTLS where neither the pod nor its namespace says (annotation
    /// weft.dev/mtls-mode).
    #[arg(long, env = "WEFT_CP_MTLS_MODE", default_value = "permissive", value_parser = ["strict", "permissive"])]
    mtls_mode: String,

    /// The cluster's DNS domain (Services are name.namespace.svc.<domain>).
    #[arg(long, env = "WEFT_CP_CLUSTER_DOMAIN", default_value = weft_control_plane::index::DEFAULT_CLUSTER_DOMAIN)]
    cluster_domain: String,

    /// The admin server: /live, /ready, /metrics, /debug/problems, /debug/proxies.
    #[arg(long, env = "WEFT_CP_ADMIN_ADDR", default_value = weft_control_plane::DEFAULT_ADMIN_ADDR)]
    admin_addr: SocketAddr,

    /// The audience proxies' projected tokens must be minted for (with --kubernetes).
    #[arg(long, env = "WEFT_CP_TOKEN_AUDIENCE", default_value = weft_control_plane::auth::DEFAULT_AUDIENCE)]
    token_audience: String,

    /// Print the trust bundle (PEM) to stdout and exit; in local mode the CA is generated
    /// first if the state directory holds none.
    #[arg(long)]
    print_trust_bundle: bool,

    /// Log filter (tracing env-filter syntax).
    #[arg(long, env = "WEFT_CP_LOG", default_value = "info")]
    log: String,

    /// Log format: text or json.
    #[arg(long, env = "WEFT_CP_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (write e.g. 24h, 30m, 90s)"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("weft-control-plane: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("weft-control-plane: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let ca_source = match (
        &cli.state_dir,
        &cli.issuer_cert,
        &cli.issuer_key,
        &cli.trust_bundle,
    ) {
        (Some(dir), None, None, None) => CaSource::StateDir(dir.clone()),
        (None, Some(cert), Some(key), Some(bundle)) => CaSource::Files {
            issuer_cert: cert.clone(),
            issuer_key: key.clone(),
            trust_bundle: bundle.clone(),
        },
        _ => anyhow::bail!(
            "say where the CA is: --state-dir DIR (local mode) or --issuer-cert, --issuer-key \
             and --trust-bundle"
        ),
    };

    if cli.print_trust_bundle {
        let authority = match ca_source {
            CaSource::StateDir(dir) => ca::local::load_or_create(&dir, &cli.trust_domain)?,
            CaSource::Files {
                issuer_cert,
                issuer_key,
                trust_bundle,
            } => Authority::load(&issuer_cert, &issuer_key, &trust_bundle)?,
            CaSource::Authority(authority) => *authority,
        };
        print!("{}", authority.trust_bundle_pem());
        return Ok(());
    }

    let auth = match (&cli.token_file, cli.kubernetes) {
        (Some(path), false) => AuthSource::TokenFile(path.clone()),
        (None, true) => AuthSource::Kubernetes {
            audience: cli.token_audience.clone(),
        },
        _ => anyhow::bail!(
            "say how to check proxies' tokens: --token-file FILE (local mode) or --kubernetes"
        ),
    };
    let source = match (&cli.manifests, cli.kubernetes) {
        (Some(dir), _) => Some(Source::Manifests(dir.clone())),
        (None, true) => Some(Source::Kubernetes),
        (None, false) => None,
    };
    let mesh = MeshSettings {
        trust_domain: cli.trust_domain.clone(),
        cluster_domain: cli.cluster_domain.clone(),
        default_policy: index::parse_default_policy(&cli.default_policy)
            .map_err(anyhow::Error::msg)?,
        mtls_mode: index::parse_mtls_mode(&cli.mtls_mode).map_err(anyhow::Error::msg)?,
    };
    let running = weft_control_plane::start(Config {
        source,
        mesh,
        admin_addr: Some(cli.admin_addr),
        grpc_addr: cli.grpc_addr,
        trust_domain: cli.trust_domain,
        namespace: cli.namespace,
        service_account: cli.service_account,
        cert_lifetime: cli.cert_lifetime,
        ca: ca_source,
        auth,
    })
    .await?;

    wait_for_signal().await?;
    tracing::info!("shutting down");
    running.shutdown().await?;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

fn init_logging(cli: &Cli) {
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|error| {
        eprintln!("weft-control-plane: bad --log filter ({error}); using info");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
