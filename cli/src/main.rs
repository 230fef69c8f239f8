//! `weftctl`, the operator's CLI. Today it reads a proxy's view; `check`, `stat`, `inject`,
//! `install` and `authz explain` arrive with the control plane.

use std::net::SocketAddr;
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
    /// Print a proxy's current configuration (its admin server's /config), as JSON.
    ProxyConfig {
        /// The proxy's admin address. /config answers only on localhost: use
        /// `kubectl port-forward pod/<pod> 15020` for a pod.
        #[arg(long, default_value = "127.0.0.1:15020")]
        admin: SocketAddr,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Version => println!("weftctl {}", env!("CARGO_PKG_VERSION")),
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
    Ok(())
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
