//! `weft-bench`: runs the benchmark scenarios (direct, weft-proxy and Envoy, one and two
//! hops), prints a table and writes `results/latest.json` and `results/latest.md`.
//! `benches/run.sh` builds everything in release mode and runs this.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use weft_bench::harness::{self, process, scenario};

#[derive(Debug, Parser)]
#[command(
    name = "weft-bench",
    about = "Weft's proxy benchmark: direct vs weft-proxy vs Envoy"
)]
struct Args {
    /// Short runs (3 s per measurement) for iterating on the harness.
    #[arg(long)]
    quick: bool,
    /// Seconds per measurement (default 10, or 3 with --quick).
    #[arg(long)]
    duration: Option<f64>,
    /// Measurements per loop and scenario; the median is reported (default 3, or 1 with
    /// --quick).
    #[arg(long)]
    rounds: Option<u32>,
    /// Seconds of closed-loop warm-up before measuring (default 2, or 1 with --quick).
    #[arg(long)]
    warmup: Option<f64>,
    /// Connections for both loops.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Open-loop rate, requests/s.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Comma-separated scenarios to run (default: all).
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// The weft-proxy binary (default: `weft-proxy` next to this binary).
    #[arg(long)]
    weft_proxy: Option<PathBuf>,
    /// How the weft-proxy binary was built, recorded with the results (run.sh passes
    /// whether it is the profile-guided build of `benches/pgo.sh`).
    #[arg(long, default_value = "plain release build (cargo build --release)")]
    weft_build: String,
    /// Skip the weft scenarios, recording this reason (used by run.sh when the proxy does
    /// not build, so a stale binary is never measured).
    #[arg(long)]
    skip_weft: Option<String>,
    /// The Envoy binary or a name to find on PATH.
    #[arg(long, default_value = "envoy")]
    envoy: String,
    /// Core for the load generator and the upstream.
    #[arg(long, default_value_t = 0)]
    load_core: usize,
    /// Core for every proxy process.
    #[arg(long, default_value_t = 1)]
    proxy_core: usize,
    /// Before each scenario wait up to this many seconds for the machine to be quiet
    /// (less than --quiet-threshold busy); 0 only records how busy it was.
    #[arg(long, default_value_t = 60)]
    quiet_wait: u64,
    /// The busy fraction (0..1) of all CPUs considered quiet.
    #[arg(long, default_value_t = 0.1)]
    quiet_threshold: f64,
    /// Repeat a run during which other processes used more than this fraction (0..1) of
    /// the machine …
    #[arg(long, default_value_t = 0.03)]
    noise_threshold: f64,
    /// Repeat a run during which the whole machine stalled for longer than this many
    /// milliseconds (a VM paused by its host) …
    #[arg(long, default_value_t = 10.0)]
    stall_threshold_ms: f64,
    /// … up to this many times, keeping the least disturbed attempt …
    #[arg(long, default_value_t = 2)]
    retries: u32,
    /// … as long as the run has not been going for more than this many minutes.
    #[arg(long, default_value_t = 15.0)]
    retry_budget: f64,
    /// Scheduling of every benchmark process: normal, nice (-19) or fifo (SCHED_FIFO 10;
    /// needs root or CAP_SYS_NICE). Raise it when other work shares the machine.
    #[arg(long, value_enum, default_value = "normal")]
    sched: SchedArg,
    /// Do not pin anything with taskset.
    #[arg(long)]
    no_pin: bool,
    /// Where to write the JSON results (a `.md` table is written next to it).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results/latest.json"))]
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
    let exe_dir = std::env::current_exe()
        .context("locating weft-bench")?
        .parent()
        .map(PathBuf::from)
        .context("weft-bench has no parent directory")?;
    let sibling = |name: &str| -> anyhow::Result<PathBuf> {
        let p = exe_dir.join(name);
        anyhow::ensure!(
            p.is_file(),
            "{} not found; build with `cargo build --release -p weft-bench`",
            p.display()
        );
        Ok(p)
    };

    let weft_bin = match (&args.skip_weft, &args.weft_proxy) {
        (Some(reason), _) => Err(reason.clone()),
        (None, Some(p)) if p.is_file() => Ok(p.clone()),
        (None, Some(p)) => Err(format!("{} not found", p.display())),
        (None, None) => {
            let p = exe_dir.join("weft-proxy");
            if p.is_file() {
                Ok(p)
            } else {
                Err(format!(
                    "{} not found (cargo build --release -p weft-proxy)",
                    p.display()
                ))
            }
        }
    };
    let envoy_bin = process::which(&args.envoy).ok_or_else(|| {
        format!(
            "no `{}` binary on PATH; Envoy scenarios skipped",
            args.envoy
        )
    });

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin =
        !args.no_pin && process::have_taskset() && cores > args.load_core.max(args.proxy_core);
    if !args.no_pin && !pin {
        eprintln!("note: not pinning (taskset missing or fewer than 2 cores)");
    }

    let sched = match args.sched {
        SchedArg::Normal => process::Sched::Normal,
        SchedArg::Nice => process::Sched::Nice,
        SchedArg::Fifo => process::Sched::Fifo,
    };

    let run_dir = std::env::temp_dir().join(format!("weft-bench-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir).context("creating the run directory")?;
    let secs = |v: Option<f64>, full: f64, quick: f64| {
        Duration::from_secs_f64(v.unwrap_or(if args.quick { quick } else { full }))
    };
    let settings = scenario::Settings {
        duration: secs(args.duration, 10.0, 3.0),
        warmup: secs(args.warmup, 2.0, 1.0),
        settle: Duration::from_secs(1),
        connections: args.connections,
        rate: args.rate,
        load_place: process::Placement {
            core: pin.then_some(args.load_core),
            sched,
        },
        proxy_place: process::Placement {
            core: pin.then_some(args.proxy_core),
            sched,
        },
        load_bin: sibling("weft-load")?,
        upstream_bin: sibling("weft-upstream")?,
        weft_bin,
        envoy_bin,
        run_dir: run_dir.clone(),
        quiet_wait: Duration::from_secs(args.quiet_wait),
        quiet_threshold: args.quiet_threshold,
        noise_threshold: args.noise_threshold,
        stall_threshold_ms: args.stall_threshold_ms,
        retries: args.retries,
        retry_deadline: std::time::Instant::now()
            + Duration::from_secs_f64(args.retry_budget * 60.0),
        rounds: args.rounds.unwrap_or(if args.quick { 1 } else { 3 }),
    };

    let chosen: Vec<scenario::Scenario> = if args.scenarios.is_empty() {
        scenario::SCENARIOS.to_vec()
    } else {
        for name in &args.scenarios {
            anyhow::ensure!(
                scenario::SCENARIOS.iter().any(|s| s.name == name),
                "unknown scenario {name:?}; known: {}",
                scenario::SCENARIOS
                    .iter()
                    .map(|s| s.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        scenario::SCENARIOS
            .iter()
            .filter(|s| args.scenarios.iter().any(|n| n == s.name))
            .copied()
            .collect()
    };
    eprintln!("configs and logs: {}", run_dir.display());

    let results = harness::run_all(&settings, &chosen, args.quick, &args.weft_build);
    println!("\n{}", results.table());

    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("writing {}", args.out.display()))?;
    let md = args.out.with_extension("md");
    std::fs::write(&md, results.markdown()).with_context(|| format!("writing {}", md.display()))?;
    println!("wrote {} and {}", args.out.display(), md.display());
    Ok(())
}
