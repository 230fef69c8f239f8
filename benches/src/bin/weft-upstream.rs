//! `weft-upstream`: the benchmark's stand-in application — HTTP/1.1 keep-alive, `200 OK`
//! with a small fixed body. Prints `listening on ADDR` once it accepts connections, and
//! exits by itself after `--exit-after` seconds so a forgotten one never lingers.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use weft_bench::upstream;

#[derive(Debug, Parser)]
#[command(
    name = "weft-upstream",
    about = "Fast fixed-body HTTP/1.1 server for benchmarks"
)]
struct Args {
    /// Listen address (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Response body size in bytes.
    #[arg(long, default_value_t = upstream::DEFAULT_BODY_BYTES)]
    body_bytes: usize,
    /// Exit after this many seconds.
    #[arg(long, default_value_t = 3600)]
    exit_after: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the Tokio runtime")?;
    rt.block_on(async {
        let (listener, local) = upstream::bind(args.addr)
            .await
            .with_context(|| format!("binding {}", args.addr))?;
        println!("listening on {local}");
        let body = upstream::body_of(args.body_bytes);
        tokio::select! {
            served = upstream::serve(listener, body) => served.context("accepting"),
            _ = tokio::time::sleep(Duration::from_secs(args.exit_after)) => Ok(()),
        }
    })
}
