//! `weft-balance`: p99 latency through a release weft-proxy to a Service of three endpoints,
//! one of them slowed by 50 ms, with P2C over peak-EWMA latency against round robin (Weft
//! issue 5). The Service, its endpoints and its TrafficPolicy come from the real
//! `weft-control-plane` serving a generated manifest directory. See benches/README.md
//! ("Load balancing").
//!
//! ```sh
//! cargo build --release -p weft-bench -p weft-proxy -p weft-control-plane
//! target/release/weft-balance                 # 500 req/s for 20 s per balancer, 3 rounds
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use weft_bench::balance::manifests::Balancer;
use weft_bench::balance::{self, Options};
use weft_bench::harness::process::{have_taskset, Sched};

#[derive(Debug, Parser)]
#[command(
    name = "weft-balance",
    about = "Latency with one of three endpoints slowed: P2C-EWMA against round robin"
)]
struct Args {
    /// Requests per second, open loop (coordinated-omission corrected).
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Seconds of each measured run.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Seconds of unmeasured load before each run.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Keep-alive connections of the load generator.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Milliseconds the slow endpoint adds.
    #[arg(long, default_value_t = 50)]
    slow_ms: u64,
    /// Balancers to compare, comma-separated: p2c-ewma, round-robin.
    #[arg(long, value_delimiter = ',', default_value = "p2c-ewma,round-robin", value_parser = Balancer::parse)]
    balancers: Vec<Balancer>,
    /// Rounds of each balancer (alternating); the median by p99 is reported.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// The weft-proxy binary (default: next to this binary).
    #[arg(long)]
    weft_proxy: Option<PathBuf>,
    /// The weft-control-plane binary (default: next to this binary).
    #[arg(long)]
    control_plane: Option<PathBuf>,
    /// Core of the load generator and the endpoints.
    #[arg(long, default_value_t = 0)]
    load_core: usize,
    /// Core of weft-proxy.
    #[arg(long, default_value_t = 1)]
    proxy_core: usize,
    /// Do not pin anything.
    #[arg(long)]
    no_pin: bool,
    /// Scheduling of the proxy, the load generator and the endpoints: normal, nice (-19) or
    /// fifo (SCHED_FIFO 10; needs root or CAP_SYS_NICE). Raise it when other work shares the
    /// machine.
    #[arg(long, value_enum, default_value = "normal")]
    sched: SchedArg,
    /// Before each run, wait (up to --quiet-wait s) for the machine to be less busy than this
    /// share.
    #[arg(long, default_value_t = 0.10)]
    quiet_threshold: f64,
    #[arg(long, default_value_t = 60)]
    quiet_wait: u64,
    /// Keep the temporary directory (manifests, configs, logs).
    #[arg(long)]
    keep_dir: bool,
    /// Where the JSON goes; the Markdown table is written next to it (.md).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results/balance.json"))]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SchedArg {
    Normal,
    Nice,
    Fifo,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.duration > 0.0 && args.duration <= 600.0,
        "--duration must be in (0, 600] seconds"
    );
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    anyhow::ensure!(!args.balancers.is_empty(), "--balancers: name at least one");
    let next_to_me = |name: &str| -> anyhow::Result<PathBuf> {
        Ok(std::env::current_exe()?
            .parent()
            .context("the benchmark binary has no directory")?
            .join(name))
    };
    let weft_proxy = match args.weft_proxy {
        Some(p) => p,
        None => next_to_me("weft-proxy")?,
    };
    let control_plane = match args.control_plane {
        Some(p) => p,
        None => next_to_me("weft-control-plane")?,
    };
    for (bin, package) in [
        (&weft_proxy, "weft-proxy"),
        (&control_plane, "weft-control-plane"),
    ] {
        anyhow::ensure!(
            bin.is_file(),
            "{} not found: build it (cargo build --release -p {package}) or pass its path",
            bin.display()
        );
    }
    let pin = !args.no_pin && have_taskset();
    let opts = Options {
        control_plane,
        weft_proxy,
        balancers: args.balancers,
        rounds: args.rounds,
        rate: args.rate,
        duration: Duration::from_secs_f64(args.duration),
        warmup: Duration::from_secs_f64(args.warmup),
        connections: args.connections.max(1),
        slow: Duration::from_millis(args.slow_ms),
        load_core: pin.then_some(args.load_core),
        proxy_core: pin.then_some(args.proxy_core),
        sched: match args.sched {
            SchedArg::Normal => Sched::Normal,
            SchedArg::Nice => Sched::Nice,
            SchedArg::Fifo => Sched::Fifo,
        },
        quiet_threshold: args.quiet_threshold,
        quiet_wait: Duration::from_secs(args.quiet_wait),
        keep_dir: args.keep_dir,
    };
    let results = balance::run(&opts)?;
    let markdown = results.markdown();
    println!("\n{markdown}");
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let md = args.out.with_extension("md");
    std::fs::write(&md, &markdown).with_context(|| format!("writing {}", md.display()))?;
    eprintln!("wrote {} and {}", args.out.display(), md.display());
    Ok(())
}
