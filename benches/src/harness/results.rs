//! The results of a benchmark run: per-scenario figures, the targets checked against
//! them, and their renderings (terminal table, Markdown for the README, JSON).

use std::fmt::Write as _;

use serde::Serialize;

use crate::procfs::Memory;
use crate::report::LoadReport;

/// One proxy process of a scenario (two for the 2-hop chains).
#[derive(Debug, Clone, Serialize)]
pub struct ProxyProcess {
    pub name: String,
    pub pid: u32,
    /// `/proc/<pid>/exe`: the binary actually measured.
    pub exe: Option<String>,
    /// After the proxy reported ready and sat idle for a moment, before any load.
    pub idle: Memory,
    /// After the last measured run.
    pub after_load: Memory,
}

/// One load run plus the CPU the processes spent on it.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    pub load: LoadReport,
    /// utime+stime of all proxy processes of the chain during the run, milliseconds.
    pub proxy_cpu_ms: Option<f64>,
    /// `proxy_cpu_ms` per completed (2xx) request, microseconds.
    pub proxy_cpu_us_per_req: Option<f64>,
    /// The upstream's CPU per request, for calibration (should be equal across scenarios).
    pub upstream_cpu_us_per_req: Option<f64>,
    /// Fraction of the whole machine (all CPUs) used by processes other than the benchmark's
    /// during the run: noise in the latency tails.
    pub other_busy: Option<f64>,
    /// Whole-machine stalls (e.g. the hypervisor pausing the VM) seen during the run.
    pub stalls: super::stalls::Stalls,
    /// Which attempt this is (runs disturbed by other work or stalls are repeated).
    pub attempts: u32,
    /// Every round of this measurement, sorted; the figures above are the median one's.
    pub rounds: Vec<Round>,
}

/// The key figures of one round, to show the spread behind a median.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub proxy_cpu_us_per_req: Option<f64>,
    pub other_busy: Option<f64>,
    pub longest_stall_ms: f64,
}

impl Round {
    pub fn of(m: &Measured) -> Self {
        let l = &m.load.latency;
        Self {
            rps: m.load.rps,
            p50_us: l.p50_us,
            p99_us: l.p99_us,
            p999_us: l.p999_us,
            proxy_cpu_us_per_req: m.proxy_cpu_us_per_req,
            other_busy: m.other_busy,
            longest_stall_ms: m.stalls.longest_ms,
        }
    }
}

impl Measured {
    /// How disturbed the run was, for picking the best attempt: stalls first (they
    /// dominate the tails), then other work.
    pub fn disturbance(&self) -> (u64, u64) {
        (
            (self.stalls.longest_ms * 1000.0) as u64,
            (self.other_busy.unwrap_or(0.0) * 1e6) as u64,
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Skipped,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub name: String,
    pub description: String,
    /// `weft`, `envoy`, or none for `direct`.
    pub proxy: Option<String>,
    pub hops: usize,
    pub status: Status,
    pub note: Option<String>,
    /// Fraction of all CPUs busy (with something else) in the second before the scenario.
    pub machine_busy_before: Option<f64>,
    pub proxies: Vec<ProxyProcess>,
    pub closed: Option<Measured>,
    pub open: Option<Measured>,
    /// Open-loop p99 minus the `direct` scenario's open-loop p99, microseconds.
    pub added_p99_us: Option<f64>,
}

impl ScenarioResult {
    pub fn new(name: &str, description: &str, proxy: Option<&str>, hops: usize) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            proxy: proxy.map(Into::into),
            hops,
            status: Status::Ok,
            note: None,
            machine_busy_before: None,
            proxies: Vec::new(),
            closed: None,
            open: None,
            added_p99_us: None,
        }
    }

    /// The largest idle RSS over the scenario's proxies, KiB.
    pub fn max_idle_rss(&self) -> Option<u64> {
        self.proxies.iter().map(|p| p.idle.rss_kib).max()
    }

    /// The largest after-load RSS and peak (HWM) over the scenario's proxies, KiB.
    pub fn max_after(&self) -> Option<(u64, u64)> {
        let rss = self.proxies.iter().map(|p| p.after_load.rss_kib).max()?;
        let hwm = self.proxies.iter().map(|p| p.after_load.hwm_kib).max()?;
        Some((rss, hwm))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    /// `/proc/loadavg` when the run started: a busy machine makes noisy numbers.
    pub loadavg_at_start: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SettingsSummary {
    pub quick: bool,
    pub rounds: u32,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub connections: usize,
    pub open_loop_rate: f64,
    pub pinning: String,
    /// How the measured weft-proxy was built (plain release or profile-guided), as run.sh
    /// reports it with `--weft-build`.
    pub weft_build: String,
}

/// One of the targets, checked.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    pub target: String,
    pub weft: Option<f64>,
    /// Envoy's figure or the absolute limit the weft figure is compared with.
    pub reference: Option<f64>,
    /// `None` when a side did not run.
    pub met: Option<bool>,
    pub detail: String,
}

/// One proxy's 1-hop CPU per request over HTTP against its own transport floor (the same
/// chain copying opaque TCP): the difference is what the proxy spends on HTTP itself.
#[derive(Debug, Clone, Serialize)]
pub struct FloorLine {
    pub proxy: String,
    /// `closed loop` or `open loop`.
    pub load: String,
    pub http_us_per_req: Option<f64>,
    pub tcp_us_per_req: Option<f64>,
    /// `http - tcp`.
    pub http_work_us_per_req: Option<f64>,
}

impl FloorLine {
    /// Proxy, loop, HTTP, floor, HTTP work: as printed.
    fn cells(&self) -> [String; 5] {
        [
            self.proxy.clone(),
            self.load.clone(),
            opt(self.http_us_per_req, 1),
            opt(self.tcp_us_per_req, 1),
            opt(self.http_work_us_per_req, 1),
        ]
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunResults {
    pub date_utc: String,
    pub machine: Machine,
    pub settings: SettingsSummary,
    pub scenarios: Vec<ScenarioResult>,
    pub targets: Vec<TargetCheck>,
    /// Not a target: where the 1-hop CPU goes (see [`FloorLine`]).
    pub floor: Vec<FloorLine>,
}

impl RunResults {
    /// Fills in each scenario's added p99 (against `direct`) and checks the targets.
    pub fn evaluate(&mut self) {
        let direct_p99 = self
            .find("direct")
            .and_then(|d| d.open.as_ref())
            .map(|m| m.load.latency.p99_us);
        for s in &mut self.scenarios {
            if let (Some(base), Some(open), false) = (direct_p99, &s.open, s.name == "direct") {
                s.added_p99_us = Some(open.load.latency.p99_us - base);
            }
        }
        self.targets = check_targets(self);
        self.floor = floor_lines(self);
    }

    /// How busy the machine was (with other work) before each scenario.
    fn busy_line(&self) -> String {
        let parts: Vec<String> = self
            .scenarios
            .iter()
            .filter_map(|s| {
                s.machine_busy_before
                    .map(|b| format!("{} {:.0}%", s.name, b * 100.0))
            })
            .collect();
        format!(
            "Machine busy (other work, all CPUs) in the second before each scenario: {}.",
            parts.join(", ")
        )
    }

    pub fn find(&self, name: &str) -> Option<&ScenarioResult> {
        self.scenarios
            .iter()
            .find(|s| s.name == name && s.status == Status::Ok)
    }

    /// The terminal table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<15} {:<6} {:>5} {:>9} {:>8} {:>8} {:>8} {:>6} {:>6} {:>6} {:>9} {:>9} {:>16}",
            "scenario",
            "mode",
            "rate",
            "req/s",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "errors",
            "other",
            "stall",
            "proxy µs/req",
            "RSS idle",
            "RSS after (peak)"
        );
        for s in &self.scenarios {
            if s.status != Status::Ok {
                let _ = writeln!(
                    out,
                    "{:<15} {:?}: {}",
                    s.name,
                    s.status,
                    s.note.as_deref().unwrap_or("")
                );
                continue;
            }
            for (i, m) in [&s.closed, &s.open].into_iter().flatten().enumerate() {
                let (idle, after) = if i == 0 {
                    mem_cells(s)
                } else {
                    (String::new(), String::new())
                };
                let l = &m.load;
                let _ = writeln!(
                    out,
                    "{:<15} {:<6} {:>5} {:>9.0} {:>8.1} {:>8.1} {:>8.1} {:>6} {:>6} {:>6} {:>9} {:>9} {:>16}",
                    if i == 0 { s.name.as_str() } else { "" },
                    l.mode.to_string(),
                    rate_cell(l),
                    l.rps,
                    l.latency.p50_us,
                    l.latency.p99_us,
                    l.latency.p999_us,
                    l.errors.total(),
                    pct(m.other_busy),
                    format!("{:.0}ms", m.stalls.longest_ms),
                    opt(m.proxy_cpu_us_per_req, 1),
                    idle,
                    after
                );
            }
        }
        let _ = writeln!(out, "\n{}", self.busy_line());
        for t in &self.targets {
            let verdict = match t.met {
                Some(true) => "MET",
                Some(false) => "NOT MET",
                None => "n/a",
            };
            let _ = writeln!(out, "[{verdict:^7}] {}: {}", t.target, t.detail);
        }
        if !self.floor.is_empty() {
            let _ = writeln!(
                out,
                "\n1-hop CPU µs/req: HTTP = transport floor (opaque TCP) + HTTP work"
            );
            for f in &self.floor {
                let [proxy, load, http, tcp, work] = f.cells();
                let _ = writeln!(out, "  {proxy:<6} {load:<12} {http} = {tcp} + {work}");
            }
        }
        out
    }

    /// The same figures as a Markdown table (pasted into the README's "Latest results").
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(
            out,
            "Measured {} on {} cores ({}), kernel {}; load average at start {}.\n\
             {} s per measurement, median of {} round(s) (p99 of every round in brackets), \
             {} connections, open loop at {} req/s; {}.\n\
             weft-proxy: {}.\n",
            self.date_utc,
            m.nproc,
            m.cpu_model,
            m.kernel,
            m.loadavg_at_start,
            self.settings.duration_s,
            self.settings.rounds,
            self.settings.connections,
            self.settings.open_loop_rate,
            self.settings.pinning,
            self.settings.weft_build
        );
        out.push_str(
            "| scenario | mode | req/s | p50 µs | p99 µs | p99.9 µs | added p99 µs | errors | other work | longest stall | proxy CPU µs/req | proxy RSS idle | proxy RSS after load (peak) |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for s in &self.scenarios {
            if s.status != Status::Ok {
                let _ = writeln!(
                    out,
                    "| {} | {:?}: {} | | | | | | | | | | | |",
                    s.name,
                    s.status,
                    s.note.as_deref().unwrap_or("").replace('\n', " ")
                );
                continue;
            }
            let (idle, after) = mem_cells(s);
            for m in [&s.closed, &s.open].into_iter().flatten() {
                let l = &m.load;
                let added = match l.mode {
                    crate::report::LoadMode::Open => opt(s.added_p99_us, 1),
                    crate::report::LoadMode::Closed => "–".into(),
                };
                let _ = writeln!(
                    out,
                    "| {} | {} {} | {:.0} | {:.1} | {:.1}{} | {:.1} | {} | {} | {} | {:.0} ms | {} | {} | {} |",
                    s.name,
                    l.mode,
                    rate_cell(l),
                    l.rps,
                    l.latency.p50_us,
                    l.latency.p99_us,
                    rounds_cell(m),
                    l.latency.p999_us,
                    added,
                    l.errors.total(),
                    pct(m.other_busy),
                    m.stalls.longest_ms,
                    opt(m.proxy_cpu_us_per_req, 1),
                    idle,
                    after
                );
            }
        }
        let _ = writeln!(out, "\n{}", self.busy_line());
        out.push_str("\n| target | weft | reference | verdict |\n|---|---:|---:|---|\n");
        for t in &self.targets {
            let verdict = match t.met {
                Some(true) => "met",
                Some(false) => "**not met**",
                None => "not measured",
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} — {} |",
                t.target,
                opt(t.weft, 1),
                opt(t.reference, 1),
                verdict,
                t.detail
            );
        }
        if !self.floor.is_empty() {
            out.push_str(
                "\nWhere the 1-hop CPU goes (not a target): the same chain with the proxy \
                 copying opaque TCP is the transport floor — sockets, wake-ups, syscalls — that \
                 any proxy pays on this machine; the rest is the proxy's HTTP work.\n\n\
                 | proxy | loop | HTTP µs/req | transport floor µs/req | HTTP work µs/req |\n\
                 |---|---|---:|---:|---:|\n",
            );
            for f in &self.floor {
                let _ = writeln!(out, "| {} |", f.cells().join(" | "));
            }
        }
        out
    }
}

/// ` [a / b / c]`: every round's p99 when there was more than one.
fn rounds_cell(m: &Measured) -> String {
    if m.rounds.len() < 2 {
        return String::new();
    }
    let all: Vec<String> = m
        .rounds
        .iter()
        .map(|r| format!("{:.0}", r.p99_us))
        .collect();
    format!(" [{}]", all.join(" / "))
}

fn pct(v: Option<f64>) -> String {
    v.map(|x| format!("{:.0}%", x * 100.0))
        .unwrap_or_else(|| "–".into())
}

fn rate_cell(l: &LoadReport) -> String {
    l.rate
        .map(|r| format!("{r:.0}"))
        .unwrap_or_else(|| "max".into())
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map(|x| format!("{x:.decimals$}"))
        .unwrap_or_else(|| "–".into())
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn mem_cells(s: &ScenarioResult) -> (String, String) {
    let idle = s.max_idle_rss().map(mib).unwrap_or_else(|| "–".into());
    let after = s
        .max_after()
        .map(|(rss, hwm)| format!("{} ({})", mib(rss), mib(hwm)))
        .unwrap_or_else(|| "–".into());
    (idle, after)
}

const IDLE_LIMIT_KIB: u64 = 8 * 1024;
const AFTER_LIMIT_KIB: u64 = 16 * 1024;

/// Weft's CPU per request against half of Envoy's, in the closed and the open loop.
fn cpu_checks(
    what: &str,
    weft: Option<&ScenarioResult>,
    envoy: Option<&ScenarioResult>,
) -> Vec<TargetCheck> {
    let loops: [(&str, fn(&ScenarioResult) -> Option<f64>); 2] = [
        ("closed loop", |s| s.closed.as_ref()?.proxy_cpu_us_per_req),
        ("open loop", |s| s.open.as_ref()?.proxy_cpu_us_per_req),
    ];
    loops
        .into_iter()
        .map(|(label, pick)| {
            half_of(
                format!("{what} CPU/request ≤ ½ Envoy's ({label})"),
                "µs/req",
                weft.and_then(pick),
                envoy.and_then(pick),
            )
        })
        .collect()
}

/// The issues' targets: CPU/request and added p99 at most half of Envoy's for the same hop
/// count, CPU/request over an mTLS hop at most half of Envoy's; RSS under 8 MiB idle and
/// 16 MiB after load, per proxy process (every weft scenario, mTLS included).
fn check_targets(r: &RunResults) -> Vec<TargetCheck> {
    let mut checks = Vec::new();
    for hops in [1, 2] {
        let weft = r.find(&format!("weft-{hops}hop"));
        let envoy = r.find(&format!("envoy-{hops}hop"));
        checks.extend(cpu_checks(&format!("{hops}-hop"), weft, envoy));
        checks.push(half_of(
            format!(
                "{hops}-hop added p99 at {} req/s ≤ ½ Envoy's",
                r.settings.open_loop_rate
            ),
            "µs",
            weft.and_then(|s| s.added_p99_us),
            envoy.and_then(|s| s.added_p99_us),
        ));
    }
    // The mesh hop as it runs in production: mutual TLS between the two proxies.
    let weft = r.find("weft-2hop-mtls");
    let envoy = r.find("envoy-2hop-mtls");
    checks.extend(cpu_checks("2-hop mTLS", weft, envoy));
    let weft: Vec<&ScenarioResult> = r
        .scenarios
        .iter()
        .filter(|s| s.proxy.as_deref() == Some("weft") && s.status == Status::Ok)
        .collect();
    let idle = weft.iter().filter_map(|s| s.max_idle_rss()).max();
    checks.push(under(
        "weft-proxy RSS idle < 8 MiB".into(),
        idle,
        IDLE_LIMIT_KIB,
        "VmRSS before load, largest proxy process".into(),
    ));
    let after = weft
        .iter()
        .filter_map(|s| s.max_after())
        .max_by_key(|(rss, _)| *rss);
    checks.push(under(
        "weft-proxy RSS after load < 16 MiB".into(),
        after.map(|(rss, _)| rss),
        AFTER_LIMIT_KIB,
        match after {
            Some((_, hwm)) => format!(
                "VmRSS after load, largest proxy process (peak VmHWM {})",
                mib(hwm)
            ),
            None => "VmRSS after load".into(),
        },
    ));
    checks
}

/// [`FloorLine`]s for every proxy whose 1-hop HTTP and TCP scenarios both ran.
fn floor_lines(r: &RunResults) -> Vec<FloorLine> {
    let loops: [(&str, fn(&ScenarioResult) -> Option<f64>); 2] = [
        ("closed loop", |s| s.closed.as_ref()?.proxy_cpu_us_per_req),
        ("open loop", |s| s.open.as_ref()?.proxy_cpu_us_per_req),
    ];
    let mut lines = Vec::new();
    for proxy in ["weft", "envoy"] {
        let (Some(http), Some(tcp)) = (
            r.find(&format!("{proxy}-1hop")),
            r.find(&format!("{proxy}-1hop-tcp")),
        ) else {
            continue;
        };
        for (load, pick) in loops {
            let (h, t) = (pick(http), pick(tcp));
            lines.push(FloorLine {
                proxy: proxy.into(),
                load: load.into(),
                http_us_per_req: h,
                tcp_us_per_req: t,
                http_work_us_per_req: h.zip(t).map(|(h, t)| h - t),
            });
        }
    }
    lines
}

fn half_of(target: String, unit: &str, weft: Option<f64>, envoy: Option<f64>) -> TargetCheck {
    let (met, detail) = match (weft, envoy) {
        (Some(w), Some(e)) => (
            Some(w <= e / 2.0),
            format!(
                "weft {w:.1} {unit} vs Envoy {e:.1} {unit} (weft/Envoy = {})",
                if e > 0.0 {
                    format!("{:.2}", w / e)
                } else {
                    "n/a".into()
                }
            ),
        ),
        (None, _) => (None, "weft scenario did not run".into()),
        (_, None) => (None, "Envoy scenario did not run".into()),
    };
    TargetCheck {
        target,
        weft,
        reference: envoy,
        met,
        detail,
    }
}

fn under(target: String, kib: Option<u64>, limit_kib: u64, what: String) -> TargetCheck {
    TargetCheck {
        target,
        weft: kib.map(|k| k as f64 / 1024.0),
        reference: Some(limit_kib as f64 / 1024.0),
        met: kib.map(|k| k < limit_kib),
        detail: match kib {
            Some(k) => format!("{what}: {}", mib(k)),
            None => "weft scenarios did not run".into(),
        },
    }
}
