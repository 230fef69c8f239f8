//! `weft-demo`: Weft's whole mesh on one machine, no root and no Kubernetes, all on
//! 127.0.0.1 — the control plane serving `examples/manifests`, five workloads each behind its
//! own `weft-proxy` in local mode with its own identity, traffic, and a live view of what the
//! sidecars report. `./demo.sh` builds and runs it.
//!
//! ```text
//!   frontend ─HTTP_PROXY─> [frontend sidecar] ══mTLS══> [orders-v1 sidecar] ─> orders-v1   (90%)
//!                                    ║        ══mTLS══> [orders-v2 sidecar] ─> orders-v2   (10%)
//!                                    ╚════════ mTLS ══> [payments sidecar]  ─> payments (fails 20%: retried)
//!   scanner  ─HTTP_PROXY─> [scanner sidecar]  ══mTLS══> [payments sidecar]  ✗ 403 shop/payments-callers
//!                       every sidecar: certificate + view from weft-control-plane (:17012)
//! ```

mod apps;
mod http;
mod mesh;
mod traffic;
mod view;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

use apps::App;
use mesh::{Binaries, Layout, Processes, WORKLOADS};
use traffic::{Caller, Calls};
use view::{Snapshot, Style};

const DEFAULT_MANIFESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/manifests");

#[derive(Parser, Debug)]
#[command(
    name = "weft-demo",
    about = "Run Weft's local mesh (control plane, five sidecars, demo apps, traffic) on 127.0.0.1 with a live view"
)]
struct Args {
    /// Stop after sending traffic this long (`30s`, `2m`); without it, run until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Print the view once, at the end, instead of refreshing it (needs --duration).
    #[arg(long, requires = "duration")]
    once: bool,
    /// Plain lines even on a terminal (no screen redraw, no colour).
    #[arg(long)]
    plain: bool,
    /// Time between refreshes of the view [default: 1s on a terminal, 5s otherwise].
    #[arg(long, value_parser = humantime::parse_duration)]
    interval: Option<Duration>,
    /// The frontend's calls per second to orders; it calls payments half as often.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Share of requests the payments app fails with 503.
    #[arg(long, default_value_t = 0.2)]
    payments_failure_rate: f64,
    /// The manifests the control plane serves.
    #[arg(long, default_value = DEFAULT_MANIFESTS)]
    manifests: PathBuf,
    /// Where weft-proxy, weft-control-plane (and optionally weftctl) are [default: beside
    /// this binary]. WEFT_PROXY_BIN and WEFT_CONTROL_PLANE_BIN name one binary each.
    #[arg(long, env = "WEFT_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// Before stopping, write each sidecar's /metrics to DIR/<workload>.prom.
    #[arg(long, value_name = "DIR")]
    metrics_out: Option<PathBuf>,
    /// Keep the working directory (CA, tokens, every process's log) instead of removing it.
    #[arg(long)]
    keep_logs: bool,
}

/// What the view needs to know besides the metrics.
pub struct Demo {
    pub started: Instant,
    pub interactive: bool,
    /// Calls per second: frontend → orders, frontend → payments, scanner → payments.
    pub rates: (f64, f64, f64),
    pub payments_failure_rate: f64,
    pub check: String,
    pub frontend_orders: Arc<Calls>,
    pub frontend_payments: Arc<Calls>,
    pub scanner_payments: Arc<Calls>,
}

/// Set by SIGINT, SIGTERM and SIGHUP.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    install_signal_handlers();
    let dir = std::env::temp_dir().join(format!("weft-demo-{}", std::process::id()));
    let layout = Layout { dir: dir.clone() };
    let mut processes = Processes::default();
    let result = run(&args, &layout, &mut processes);
    let running = processes.stop();
    eprintln!("stopped {running} processes; nothing the demo started is running");
    match result {
        Ok(()) => {
            if args.keep_logs {
                eprintln!("logs kept in {}", dir.display());
            } else {
                let _ = std::fs::remove_dir_all(&dir);
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("weft-demo: {error}");
            if dir.exists() {
                eprintln!("(logs kept in {})", dir.display());
            }
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args, layout: &Layout, processes: &mut Processes) -> Result<(), String> {
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("finding this binary: {e}"))?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    let bins = Binaries::find(&bin_dir)?;
    if !args.manifests.is_dir() {
        return Err(format!("{}: not a directory", args.manifests.display()));
    }
    mesh::check_ports_free()?;
    layout.write_tokens()?;

    eprintln!(
        "starting the mesh (working directory {}):",
        layout.dir.display()
    );
    for app in [
        App::new("orders-v1", 0.0),
        App::new("orders-v2", 0.0),
        App::new("payments", args.payments_failure_rate),
    ] {
        let name = app.name;
        let addr = mesh::workload(name).app();
        app.start(addr)
            .map_err(|e| format!("app {name} on {addr}: {e}"))?;
        eprintln!("  started app {name:<16} on {addr} (in this process)");
    }
    processes.spawn(
        "weft-control-plane",
        layout.control_plane(&bins.control_plane, &args.manifests),
        layout.log("control-plane"),
    )?;
    processes.wait_ready(
        "weft-control-plane",
        mesh::localhost(mesh::CONTROL_PLANE_ADMIN),
        &STOP,
    )?;
    let proxy_name = |w: &mesh::Workload| format!("weft-proxy {}", w.name);
    for w in &WORKLOADS {
        processes.spawn(
            &proxy_name(w),
            layout.proxy(&bins.proxy, w),
            layout.log(w.name),
        )?;
    }
    for w in &WORKLOADS {
        processes.wait_ready(&proxy_name(w), w.admin(), &STOP)?;
    }
    let check = match &bins.weftctl {
        Some(weftctl) => {
            let mut cmd = Command::new(weftctl);
            cmd.args(["check", "--control-plane-admin"])
                .arg(mesh::localhost(mesh::CONTROL_PLANE_ADMIN).to_string());
            mesh::run_briefly(cmd, Duration::from_secs(10))
                .unwrap_or_else(|e| format!("weftctl check: {e}\n"))
        }
        None => String::new(),
    };

    let rates = (args.rate, args.rate / 2.0, 1.0);
    let demo = Demo {
        started: Instant::now(),
        interactive: !args.once,
        rates,
        payments_failure_rate: args.payments_failure_rate,
        check,
        frontend_orders: Arc::default(),
        frontend_payments: Arc::default(),
        scanner_payments: Arc::default(),
    };
    let traffic_stop = Arc::new(AtomicBool::new(false));
    let frontend = mesh::workload("frontend").outbound();
    let scanner = mesh::workload("scanner").outbound();
    let callers = [
        (frontend, "orders", rates.0, &demo.frontend_orders),
        (frontend, "payments", rates.1, &demo.frontend_payments),
        (scanner, "payments", rates.2, &demo.scanner_payments),
    ];
    let threads: Vec<_> = callers
        .into_iter()
        .map(|(proxy, service, per_second, calls)| {
            Caller {
                proxy,
                url: format!("http://{service}.shop.svc.cluster.local/{service}"),
                per_second,
                calls: calls.clone(),
            }
            .start(traffic_stop.clone())
        })
        .collect();
    eprintln!(
        "traffic started; {}",
        match args.duration {
            Some(d) => format!("stopping in {}", humantime::format_duration(d)),
            None => "Ctrl-C stops everything".into(),
        }
    );

    let live = !args.once && !args.plain && std::io::stdout().is_terminal();
    let style = Style { colour: live };
    let interval = args.interval.unwrap_or(if live {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    });
    let deadline = args.duration.map(|d| demo.started + d);
    let mut previous: Option<(Snapshot, Instant)> = None;
    let mut next_frame = Instant::now() + interval.min(Duration::from_secs(1));
    let outcome = loop {
        if STOP.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
            break Ok(());
        }
        if let Some(exited) = processes.exited() {
            break Err(exited);
        }
        if !args.once && Instant::now() >= next_frame {
            let snapshot = Snapshot::take();
            let since = previous.as_ref().map_or(interval, |(_, at)| at.elapsed());
            let frame = view::render(
                &demo,
                &snapshot,
                previous.as_ref().map(|(s, _)| s),
                since,
                &style,
            );
            if live {
                // Redraw in place: home, each line cleared to its end, then what is left of
                // the last frame below (no flicker, unlike clearing the screen first).
                let lines: String = frame.lines().map(|l| format!("{l}\x1b[K\n")).collect();
                print!("\x1b[H{lines}\x1b[J");
                let _ = std::io::Write::flush(&mut std::io::stdout());
            } else {
                println!("{frame}");
            }
            previous = Some((snapshot, Instant::now()));
            next_frame += interval;
        }
        std::thread::sleep(Duration::from_millis(50));
    };

    traffic_stop.store(true, Ordering::Relaxed);
    for thread in threads {
        let _ = thread.join();
    }
    let last = Snapshot::take();
    if let Some(dir) = &args.metrics_out {
        write_metrics(dir)?;
    }
    let since = previous.as_ref().map_or(interval, |(_, at)| at.elapsed());
    let demo = Demo {
        interactive: false,
        ..demo
    };
    let frame = view::render(
        &demo,
        &last,
        previous.as_ref().map(|(s, _)| s),
        since,
        &style,
    );
    if live {
        print!("\x1b[H\x1b[2J");
    }
    println!("{frame}");
    outcome
}

/// Every sidecar's /metrics as it is now, one file per workload.
fn write_metrics(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for w in &WORKLOADS {
        let rsp = http::get(w.admin(), "/metrics", Duration::from_secs(2))
            .map_err(|e| format!("reading {}'s metrics: {e}", w.name))?;
        let path = dir.join(format!("{}.prom", w.name));
        std::fs::write(&path, rsp.body).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
