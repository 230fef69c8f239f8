//! `weft-load`: HTTP/1.1 load against one address, closed loop (max throughput) or open
//! loop (`--rate`, coordinated-omission corrected). Prints a table, or JSON with `--json`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use weft_bench::load::{self, LoadConfig};

#[derive(Debug, Parser)]
#[command(
    name = "weft-load",
    about = "HTTP/1.1 load generator (closed or open loop)"
)]
struct Args {
    /// Address to load (loopback only: this tool is for local benchmarks).
    #[arg(long)]
    target: SocketAddr,
    /// Keep-alive connections, one worker each.
    #[arg(long, short = 'c', default_value_t = 32)]
    connections: usize,
    /// Length of the measured window, seconds.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    duration: f64,
    /// Open loop at this many requests/s in total; without it, closed loop.
    #[arg(long, short = 'r')]
    rate: Option<f64>,
    /// Stop after this many requests.
    #[arg(long, short = 'n')]
    max_requests: Option<u64>,
    /// Request path.
    #[arg(long, default_value = "/")]
    path: String,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Open loop: seconds past the window a backlog may still be sent.
    #[arg(long, default_value_t = 2.0)]
    drain: f64,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.target.ip().is_loopback(),
        "refusing to load {}: benchmarks only talk to loopback addresses",
        args.target
    );
    anyhow::ensure!(
        args.duration > 0.0 && args.duration <= 600.0,
        "duration must be in (0, 600] seconds"
    );
    let cfg = LoadConfig {
        target: args.target,
        path: args.path,
        connections: args.connections,
        duration: Duration::from_secs_f64(args.duration),
        max_requests: args.max_requests,
        rate: args.rate,
        request_timeout: Duration::from_secs_f64(args.timeout),
        drain: Duration::from_secs_f64(args.drain),
    };
    // One thread: the load generator is pinned to one core (see the README).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the Tokio runtime")?;
    let report = rt.block_on(load::run(cfg))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.human());
    }
    Ok(())
}
