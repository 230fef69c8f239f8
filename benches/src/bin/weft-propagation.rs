//! `weft-propagation`: the control-plane propagation benchmark (issue 4). For each mesh size
//! it starts the real `weft-control-plane` on a generated manifest directory, subscribes one
//! simulated proxy per pod over its own mTLS connection, edits policies, and reports how long
//! each edit took to reach every proxy it affects (p50/p99/max), that no other proxy got
//! anything, and the control plane's memory and CPU. See benches/README.md.
//!
//! Build and run (the control plane is a separate binary; build it too):
//!
//! ```sh
//! cargo build --release -p weft-control-plane
//! cargo run --release -p weft-bench --features propagation --bin weft-propagation -- \
//!     --proxies 1000,10000
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use weft_bench::harness;
use weft_bench::harness::process::Sched;
use weft_bench::propagation::mesh::Change;
use weft_bench::propagation::results::{PropagationResults, Settings};
use weft_bench::propagation::{self, Options};

#[derive(Debug, Parser)]
#[command(
    name = "weft-propagation",
    about = "How long a policy edit takes to reach every affected proxy, with N proxies subscribed"
)]
struct Args {
    /// Simulated proxies, one per pod; comma-separated sizes run one after the other.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    proxies: Vec<usize>,
    /// Pods in the mesh per size (default: as many as proxies; one value for every size, or
    /// one per size). Proxies subscribe for pod-0 .. pod-(proxies-1).
    #[arg(long, value_delimiter = ',')]
    pods: Vec<usize>,
    /// Rounds of each change (selective, mesh-wide).
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// The changes made in each round: selective (a policy selecting app-7, 1 % of the
    /// pods), mesh-wide (a policy selecting every pod), endpoints (one endpoint's readiness
    /// flips: every proxy gets a delta carrying that one Service; opt-in because it reaches
    /// every proxy, see the README).
    #[arg(long, value_delimiter = ',', default_value = "selective,mesh-wide", value_parser = parse_change)]
    changes: Vec<Change>,
    /// A round whose change spread while other work used more than this share (0..1) of the
    /// machine is repeated …
    #[arg(long, default_value_t = 0.10)]
    disturbance_threshold: f64,
    /// … up to this many times, keeping the least disturbed attempt.
    #[arg(long, default_value_t = 2)]
    retries: u32,
    /// Before each change, wait up to this many seconds for the machine to be under 25 % busy.
    #[arg(long, default_value_t = 20.0)]
    quiet_before_change: f64,
    /// Before each size, wait up to this many seconds for the machine to be under 25 % busy.
    #[arg(long, default_value_t = 60)]
    quiet_wait: u64,
    /// Scheduling of the control plane and of this process (the simulated proxies): normal,
    /// or nice (-19) to shield both from other work on a shared machine.
    #[arg(long, value_enum, default_value = "normal")]
    sched: SchedArg,
    /// Proxies connecting (and receiving their first view) at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Threads of the simulated proxies (1: a single-threaded runtime).
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// Seconds a change may take to reach every affected proxy before it is given up.
    #[arg(long, default_value_t = 30.0)]
    change_timeout: f64,
    /// Seconds all proxies together may take to subscribe.
    #[arg(long, default_value_t = 900.0)]
    subscribe_timeout: f64,
    /// Seconds to keep watching after the last affected proxy got its update: any update to
    /// another proxy in this window is counted as sent to an unaffected proxy.
    #[arg(long, default_value_t = 2.0)]
    quiet: f64,
    /// Milliseconds between polls of the control plane's /metrics during a change.
    #[arg(long, default_value_t = 20)]
    poll_ms: u64,
    /// The weft-control-plane binary (default: next to this binary).
    #[arg(long)]
    control_plane: Option<PathBuf>,
    /// The control plane's --log filter.
    #[arg(long, default_value = "info")]
    cp_log: String,
    /// Keep each size's temporary directory (manifests, CA, control-plane log).
    #[arg(long)]
    keep_dir: bool,
    /// Extra environment for the control plane, KEY=VALUE (repeatable), e.g.
    /// MALLOC_ARENA_MAX=2, or LD_PRELOAD=/usr/lib/heaptrack/libheaptrack_preload.so plus
    /// DUMP_HEAPTRACK_OUTPUT=FILE to record its heap with heaptrack.
    #[arg(long, value_parser = parse_env)]
    cp_env: Vec<(String, String)>,
    /// Seconds to wait after the control plane is ready, before any proxy connects (to
    /// attach a profiler: heaptrack -p PID, perf record -p PID).
    #[arg(long, default_value_t = 0.0)]
    pause_after_ready: f64,
    /// Stop (with an error) if the control plane's RSS passes this many MiB while proxies
    /// subscribe, rather than run the machine out of memory.
    #[arg(long, default_value_t = 12288)]
    max_cp_rss_mib: u64,
    /// Where the JSON goes; the Markdown table is written next to it (.md).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results/propagation.json"))]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SchedArg {
    Normal,
    Nice,
}

/// The commit and whether the control plane's sources differ from it (what was measured).
fn source_state() -> String {
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown (no git)".into();
    };
    let dirty = git(&[
        "status",
        "--porcelain",
        "--",
        "control-plane",
        "api",
        "fswatch",
        "tls",
        "Cargo.lock",
    ])
    .map_or(0, |s| s.lines().count());
    if dirty == 0 {
        format!("commit {head}")
    } else {
        format!("commit {head} + {dirty} file(s) of control-plane/api/fswatch/tls changed in the working tree")
    }
}

fn parse_change(text: &str) -> Result<Change, String> {
    match text {
        "selective" => Ok(Change::Selective),
        "mesh-wide" => Ok(Change::MeshWide),
        "endpoints" => Ok(Change::Endpoints),
        other => Err(format!(
            "{other:?}: the changes are selective, mesh-wide and endpoints"
        )),
    }
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: write KEY=VALUE"))?;
    Ok((k.to_owned(), v.to_owned()))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sched = match args.sched {
        SchedArg::Normal => Sched::Normal,
        SchedArg::Nice => {
            // Before any thread exists: threads inherit the nice value of their creator.
            // SAFETY: setpriority on this (the main) thread.
            if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -19) } != 0 {
                anyhow::bail!(
                    "--sched nice: setpriority: {}",
                    std::io::Error::last_os_error()
                );
            }
            Sched::Nice
        }
    };
    let control_plane = match args.control_plane {
        Some(path) => path,
        None => std::env::current_exe()?
            .parent()
            .context("the benchmark binary has no directory")?
            .join("weft-control-plane"),
    };
    anyhow::ensure!(
        control_plane.is_file(),
        "{} not found: build it first (cargo build --release -p weft-control-plane) or pass --control-plane",
        control_plane.display()
    );
    let opts = Options {
        control_plane: control_plane.clone(),
        rounds: args.rounds,
        changes: args.changes.clone(),
        sched,
        disturbance_threshold: args.disturbance_threshold,
        retries: args.retries,
        quiet_before_change: Duration::from_secs_f64(args.quiet_before_change),
        quiet_wait: Duration::from_secs(args.quiet_wait),
        connect_concurrency: args.connect_concurrency.max(1),
        client_threads: args.client_threads.max(1),
        change_timeout: Duration::from_secs_f64(args.change_timeout),
        subscribe_timeout: Duration::from_secs_f64(args.subscribe_timeout),
        quiet: Duration::from_secs_f64(args.quiet),
        poll: Duration::from_millis(args.poll_ms.max(1)),
        cp_log: args.cp_log.clone(),
        keep_dir: args.keep_dir,
        max_cp_rss_mib: args.max_cp_rss_mib,
        pause_after_ready: Duration::from_secs_f64(args.pause_after_ready),
        cp_env: args.cp_env.clone(),
    };
    let mut results = PropagationResults {
        date_utc: harness::utc_now(),
        machine: harness::machine(),
        settings: Settings {
            rounds: opts.rounds,
            changes: opts.changes.clone(),
            sched: format!("{:?}", args.sched).to_lowercase(),
            retries: args.retries,
            disturbance_threshold: args.disturbance_threshold,
            quiet_before_change_s: args.quiet_before_change,
            connect_concurrency: opts.connect_concurrency,
            client_threads: opts.client_threads,
            change_timeout_s: args.change_timeout,
            quiet_s: args.quiet,
            poll_ms: args.poll_ms,
            control_plane: control_plane.display().to_string(),
            source: source_state(),
            control_plane_log: args.cp_log,
            control_plane_env: args
                .cp_env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
        },
        sizes: Vec::new(),
        targets: Vec::new(),
    };
    for (i, &proxies) in args.proxies.iter().enumerate() {
        let pods = match args.pods.as_slice() {
            [] => proxies,
            [one] => *one,
            many => *many
                .get(i)
                .context("give one --pods value, or one per --proxies size")?,
        };
        // On the main thread: see `run_size`.
        let size = propagation::run_size(&opts, proxies, pods)
            .with_context(|| format!("{proxies} proxies, {pods} pods"))?;
        results.sizes.push(size);
    }
    results.evaluate();
    let md = results.markdown();
    println!("{md}");
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("writing {}", args.out.display()))?;
    let md_path = args.out.with_extension("md");
    std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    println!("wrote {} and {}", args.out.display(), md_path.display());
    Ok(())
}
