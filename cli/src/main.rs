//! `weftctl`, the operator's CLI: the manifests a cluster needs (`install`), offline sidecar
//! injection (`inject`), a proxy's view (`proxy-config`), the mesh's health (`check`), live
//! traffic per workload (`stat`) and why a request would be allowed or denied
//! (`authz explain`). Usage: docs/weftctl.md.

mod check;
mod explain;
mod inject;
mod install;
mod scrape;
mod stat;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// A proxy's admin server answers from memory; if it takes longer, it is stuck or unreachable.
const DEFAULT_ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(name = "weftctl", version, about = "Operate a Weft mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print weftctl's version.
    Version,
    /// Check the mesh: the control plane is up, every policy object is valid, the CA's issuer
    /// and trust anchors are valid for a while yet, and every proxy has applied its latest
    /// view and runs the control plane's version. Prints ✓/✗ lines; exits 1 when anything
    /// failed.
    Check(check::CheckArgs),
    /// Live traffic per workload, from the proxies' metrics: requests per second, success
    /// rate, latency percentiles (p50/p95/p99) and the share of mTLS, refreshed every
    /// --interval.
    ///
    /// Examples:
    ///   weftctl stat                                   # every proxy the control plane lists
    ///   weftctl stat --proxy web=127.0.0.1:15020 --proxy orders=127.0.0.1:15021
    ///   weftctl stat --direction outbound --once       # one table of what each calls
    #[command(verbatim_doc_comment)]
    Stat(stat::StatArgs),
    /// Authorization policy tools.
    Authz {
        #[command(subcommand)]
        command: AuthzCommand,
    },
    /// Print a proxy's current configuration (its admin server's /config), as JSON.
    ProxyConfig {
        /// The proxy's admin address. /config answers only on localhost: use
        /// `kubectl port-forward pod/<pod> 15020` for a pod.
        #[arg(long, default_value = "127.0.0.1:15020")]
        admin: SocketAddr,
    },
    /// Add the Weft sidecar to the workloads in Kubernetes YAML, offline.
    ///
    /// Reads a multi-document YAML stream and writes it to stdout with every Pod, Deployment,
    /// StatefulSet, DaemonSet, ReplicaSet, Job and CronJob (and such objects in a `kind:
    /// List`) meshed by the same mutation as the webhook. Every other document, and every
    /// workload left alone, is written back byte for byte. A workload stays as it is when its
    /// pod template says `weft.dev/inject: disabled`, is already injected, or uses
    /// hostNetwork; stderr says which and why. On an error nothing is written to stdout.
    ///
    /// Example: weftctl inject -f deploy.yaml | kubectl apply -f -
    #[command(verbatim_doc_comment)]
    Inject {
        /// The YAML to read; `-` (the default) reads stdin.
        #[arg(
            short = 'f',
            long = "filename",
            value_name = "FILE",
            default_value = "-"
        )]
        file: PathBuf,
        #[command(flatten)]
        args: inject::InjectArgs,
    },
    /// Print every manifest a cluster needs to run Weft.
    ///
    /// The weft-system namespace, the CRDs, RBAC, the control plane and the injector
    /// (Deployments and Services), the MutatingWebhookConfiguration, and Secrets holding a
    /// new mesh root CA and the webhook's serving certificate (generated now, unless
    /// --ca-dir keeps them). The output contains private keys: apply it, don't commit it.
    ///
    /// Example: weftctl install --ca-dir ~/.weft/prod | kubectl apply -f -
    ///
    /// Then mesh a namespace with: kubectl label namespace NS weft.dev/inject=enabled
    /// (the control plane gives it the weft-trust-anchors ConfigMap its proxies mount).
    #[command(verbatim_doc_comment)]
    Install(install::InstallArgs),
}

#[derive(Subcommand)]
enum AuthzCommand {
    /// Explain whether a request would be allowed, and which policy decides.
    ///
    /// Fetches the target pod's live inbound view from the control plane and evaluates the
    /// request with the proxy's own code: the same compiled policies, mTLS mode and path
    /// normalization. Prints the decision, the deciding policy, what would be recorded
    /// (AUDIT and dry-run policies) and which policies match. Exit code 0: allowed,
    /// 3: denied, 1: could not explain, 2: bad arguments.
    ///
    /// Example:
    ///   weftctl authz explain --caller spiffe://cluster.local/ns/shop/sa/web \
    ///       -n shop --pod orders-7d4b9c-x2x7k --port 8080 --method POST --path /orders
    #[command(verbatim_doc_comment)]
    Explain(explain::ExplainArgs),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    match Cli::parse().command {
        Command::Version => println!("weftctl {}", env!("CARGO_PKG_VERSION")),
        Command::Check(args) => return Ok(check::run(&args).await),
        Command::Stat(args) => return stat::run(&args).await,
        Command::Authz {
            command: AuthzCommand::Explain(args),
        } => return explain::run(&args).await,
        Command::Inject { file, args } => inject::run(&file, &args)?,
        Command::Install(args) => install::run(&args)?,
        Command::ProxyConfig { admin } => {
            let body = tokio::time::timeout(DEFAULT_ADMIN_TIMEOUT, get(admin, "/config"))
                .await
                .with_context(|| {
                    format!("proxy admin {admin} did not answer within {DEFAULT_ADMIN_TIMEOUT:?}")
                })??;
            let json: serde_json::Value = serde_json::from_slice(&body)
                .with_context(|| format!("proxy admin {admin} sent invalid JSON"))?;
            println!("{}", serde_json::to_string_pretty(&json)?);
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `GET path` from an admin server, bounded by [`DEFAULT_ADMIN_TIMEOUT`].
async fn get_json(admin: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    let body = tokio::time::timeout(DEFAULT_ADMIN_TIMEOUT, get(admin, path))
        .await
        .with_context(|| format!("{admin} did not answer within {DEFAULT_ADMIN_TIMEOUT:?}"))??;
    serde_json::from_slice(&body).with_context(|| format!("{admin}{path} sent invalid JSON"))
}

async fn get(admin: SocketAddr, path: &str) -> anyhow::Result<bytes::Bytes> {
    let stream = tokio::net::TcpStream::connect(admin)
        .await
        .with_context(|| format!("cannot connect to proxy admin {admin}"))?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, admin.to_string())
        .body(Empty::<bytes::Bytes>::new())?;
    let rsp = tx
        .send_request(req)
        .await
        .with_context(|| format!("GET {path} from {admin} failed"))?;
    let status = rsp.status();
    let body = rsp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "GET {path} from {admin}: {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    Ok(body)
}
