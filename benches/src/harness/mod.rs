//! The scenario runner behind `weft-bench`: runs every [`scenario`] with the same settings,
//! then checks the targets ([`results`]).
//!
//! Pinning (a 2-core machine): the load generator and the upstream share core 0, every proxy
//! process runs on core 1 (`taskset`). The proxy under test thus has a core to itself — the
//! "one core per proxy" of the targets — and never competes with the traffic's source and
//! sink. In the 2-hop chains both proxies share core 1, like two sidecars on one node's core.

pub mod envoy;
pub mod pki;
pub mod ports;
pub mod process;
pub mod quiet;
pub mod results;
pub mod scenario;
pub mod stalls;
pub mod weft;

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use results::{Machine, RunResults, SettingsSummary};
use scenario::{Scenario, Settings};

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error(transparent)]
    Process(#[from] process::ProcessError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("load run failed: {0}")]
    Load(String),
}

/// What a proxy hop does with the bytes it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarding {
    /// Parses HTTP/1.1 and routes each request: the product being measured.
    Http,
    /// Copies opaque TCP both ways: the transport floor, what any proxy on this machine
    /// pays for the sockets, wake-ups and syscalls alone, before it looks at a request.
    Tcp,
}

/// One proxy of a chain, as both proxies' `start` take it.
#[derive(Debug, Clone, Copy)]
pub struct Hop<'a> {
    pub name: &'a str,
    pub listen: SocketAddr,
    pub target: SocketAddr,
    pub forwarding: Forwarding,
    /// One side of an mTLS hop (HTTP chains only).
    pub tls: Option<pki::HopTls<'a>>,
}

/// Runs `scenarios` in order, printing progress to stderr.
pub fn run_all(
    settings: &Settings,
    scenarios: &[Scenario],
    quick: bool,
    weft_build: &str,
) -> RunResults {
    let machine = machine();
    let pinning = match (settings.load_place.core, settings.proxy_place.core) {
        (Some(l), Some(p)) => format!(
            "load generator + upstream pinned to core {l}, every proxy to core {p} (taskset)"
        ),
        _ => "unpinned".into(),
    };
    let sched = match settings.load_place.sched {
        process::Sched::Normal => "",
        process::Sched::Nice => ", all benchmark processes at nice -19",
        process::Sched::Fifo => ", all benchmark processes SCHED_FIFO",
    };
    let pinning = pinning + sched;
    let mut results = RunResults {
        date_utc: utc_now(),
        settings: SettingsSummary {
            quick,
            rounds: settings.rounds,
            duration_s: settings.duration.as_secs_f64(),
            warmup_s: settings.warmup.as_secs_f64(),
            connections: settings.connections,
            open_loop_rate: settings.rate,
            pinning,
            weft_build: weft_build.into(),
        },
        machine,
        scenarios: Vec::new(),
        targets: Vec::new(),
        floor: Vec::new(),
    };
    for s in scenarios {
        eprintln!("== {} ({})", s.name, s.description);
        let r = scenario::run(s, settings);
        match (&r.status, &r.note) {
            (results::Status::Ok, _) => {
                for m in [&r.closed, &r.open].into_iter().flatten() {
                    eprintln!(
                        "   {:<6} {:>9.0} req/s  p50 {:>7.1} µs  p99 {:>7.1} µs  proxy {} µs/req",
                        m.load.mode.to_string(),
                        m.load.rps,
                        m.load.latency.p50_us,
                        m.load.latency.p99_us,
                        m.proxy_cpu_us_per_req
                            .map(|v| format!("{v:.1}"))
                            .unwrap_or_else(|| "–".into())
                    );
                }
            }
            (status, note) => eprintln!("   {status:?}: {}", note.as_deref().unwrap_or("")),
        }
        results.scenarios.push(r);
    }
    results.evaluate();
    results
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let nproc = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
    };
    Machine {
        nproc,
        cpu_model,
        kernel: read("/proc/sys/kernel/osrelease"),
        loadavg_at_start: read("/proc/loadavg"),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` without a date-time dependency (civil-from-days, H. Hinnant).
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
