//! What the load-balancing benchmark measured: every run (JSON) and a Markdown table with
//! one row per balancer (the median round by p99, every round's p99 in brackets).

use std::fmt::Write as _;

use serde::Serialize;

use super::manifests::Balancer;
use super::Options;
use crate::harness::results::Machine;
use crate::harness::stalls::Stalls;
use crate::report::LoadReport;

/// One measured run: one balancer, one fresh proxy.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub balancer: Balancer,
    pub round: u32,
    pub load: LoadReport,
    /// Failed requests during the (unmeasured) warm-up.
    pub warmup_errors: u64,
    /// Requests each endpoint answered during the measured window (the slow one last).
    pub answered: [u64; 3],
    /// The slow endpoint's share of them.
    pub slow_share: f64,
    /// The proxy's CPU time (user + system) per answered request.
    pub proxy_cpu_us_per_req: f64,
    /// The whole machine's busy share in the second before the run.
    pub machine_busy_before: Option<f64>,
    /// The share of the machine's CPU time used during the run by processes other than the
    /// benchmark's (proxy, load generator and endpoints).
    pub other_work: Option<f64>,
    pub wall_s: f64,
    pub stalls: Stalls,
}

impl RunResult {
    /// One line for the progress output.
    pub fn line(&self) -> String {
        let l = &self.load.latency;
        format!(
            "{:<12} round {}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; \
             slow endpoint {:.2}% ({:?}); errors {}; other work {}; longest stall {:.0} ms",
            self.balancer.label(),
            self.round,
            self.load.rps,
            l.p50_us / 1e3,
            l.p99_us / 1e3,
            l.p999_us / 1e3,
            l.max_us / 1e3,
            100.0 * self.slow_share,
            self.answered,
            self.load.errors.total(),
            self.other_work
                .map(|b| format!("{:.0}%", 100.0 * b))
                .unwrap_or_else(|| "–".into()),
            self.stalls.longest_ms
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub rate: f64,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub connections: usize,
    pub slow_ms: f64,
    pub rounds: u32,
    pub pinning: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BalanceResults {
    pub date_utc: String,
    pub machine: Machine,
    pub settings: Settings,
    pub runs: Vec<RunResult>,
}

impl BalanceResults {
    pub fn new(opts: &Options, runs: Vec<RunResult>) -> Self {
        let pinning = match (opts.load_core, opts.proxy_core) {
            (Some(l), Some(p)) => {
                format!("load generator + endpoints pinned to core {l}, weft-proxy to core {p}")
            }
            _ => "unpinned".into(),
        };
        let pinning = pinning
            + match opts.sched {
                crate::harness::process::Sched::Normal => "",
                crate::harness::process::Sched::Nice => ", all benchmark processes at nice -19",
                crate::harness::process::Sched::Fifo => ", all benchmark processes SCHED_FIFO",
            };
        BalanceResults {
            date_utc: crate::harness::utc_now(),
            machine: crate::harness::machine(),
            settings: Settings {
                rate: opts.rate,
                duration_s: opts.duration.as_secs_f64(),
                warmup_s: opts.warmup.as_secs_f64(),
                connections: opts.connections,
                slow_ms: opts.slow.as_secs_f64() * 1e3,
                rounds: opts.rounds,
                pinning,
            },
            runs,
        }
    }

    /// The round of `balancer` with the median p99.
    fn median(&self, balancer: Balancer) -> Option<&RunResult> {
        let mut runs: Vec<&RunResult> = self
            .runs
            .iter()
            .filter(|r| r.balancer == balancer)
            .collect();
        runs.sort_by(|a, b| a.load.latency.p99_us.total_cmp(&b.load.latency.p99_us));
        runs.get(runs.len().saturating_sub(1) / 2).copied()
    }

    pub fn markdown(&self) -> String {
        let s = &self.settings;
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Measured {} on {} cores ({}), kernel {}; load average at start {}.",
            self.date_utc, m.nproc, m.cpu_model, m.kernel, m.loadavg_at_start
        );
        let _ = writeln!(
            out,
            "Open loop at {:.0} req/s for {:.0} s after {:.0} s of warm-up, {} connections, one \
             endpoint of three adding {:.0} ms; a fresh weft-proxy per run; median of {} round(s) by \
             p99 (every round's p99 in brackets); {}.\n",
            s.rate, s.duration_s, s.warmup_s, s.connections, s.slow_ms, s.rounds, s.pinning
        );
        out.push_str(
            "| balancer | req/s | p50 ms | p99 ms | p99.9 ms | max ms | slow endpoint's share | \
             errors | other work | longest stall | proxy CPU µs/req |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for balancer in [Balancer::P2cEwma, Balancer::RoundRobin] {
            let Some(run) = self.median(balancer) else {
                continue;
            };
            let rounds: Vec<String> = self
                .runs
                .iter()
                .filter(|r| r.balancer == balancer)
                .map(|r| format!("{:.2}", r.load.latency.p99_us / 1e3))
                .collect();
            let l = &run.load.latency;
            let other = run
                .other_work
                .map(|b| format!("{:.0}%", 100.0 * b))
                .unwrap_or_else(|| "–".into());
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.2} | {:.2} [{}] | {:.2} | {:.2} | {:.2}% ({} of {}) | {} | {} | {:.0} ms | {:.1} |",
                balancer.label(),
                run.load.rps,
                l.p50_us / 1e3,
                l.p99_us / 1e3,
                rounds.join(" / "),
                l.p999_us / 1e3,
                l.max_us / 1e3,
                100.0 * run.slow_share,
                run.answered[2],
                run.answered.iter().sum::<u64>(),
                run.load.errors.total(),
                other,
                run.stalls.longest_ms,
                run.proxy_cpu_us_per_req,
            );
        }
        out.push_str(
            "\n\"other work\": the share of the machine's CPU time (both cores) used during the run \
             by processes other than the proxy, the load generator and the endpoints.\n",
        );
        out
    }
}
