//! What a propagation run measured, and its renderings (Markdown table, JSON).

use std::fmt::Write as _;

use serde::Serialize;

use super::cpmetrics::Counters;
use super::mesh::Change;
use crate::harness::results::Machine;
use crate::procfs::Memory;

/// The target from the issue: p99 of the time to every affected proxy's ack, at 10,000.
pub const TARGET_P99_MS: f64 = 1000.0;
pub const TARGET_PROXIES: usize = 10_000;

/// Percentiles of a set of latencies, milliseconds (nearest rank).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub samples: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub min_ms: f64,
}

impl Percentiles {
    pub fn of(values: &[f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let at =
            |q: f64| sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
        Percentiles {
            samples: sorted.len(),
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: sorted[sorted.len() - 1],
            min_ms: sorted[0],
        }
    }
}

/// One policy edit and what followed.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeResult {
    pub change: Change,
    pub round: u32,
    /// Subscribed proxies the change affects.
    pub expected: usize,
    /// Of those, how many received (and acked) the new view before the deadline.
    pub received: usize,
    /// Per affected proxy: rename → update received and its ack queued, milliseconds.
    pub latency: Percentiles,
    /// The per-proxy latencies (ms), in proxy order (not written: 10,000 per round).
    #[serde(skip)]
    pub samples_ms: Vec<f64>,
    /// Rename → the control plane's `weft_cp_acks_total` counted every ack (polled every
    /// `poll_ms`, so up to that much late), milliseconds.
    pub cp_all_acked_ms: Option<f64>,
    /// The control plane's own timestamps for the steps of the change.
    pub breakdown: Breakdown,
    /// Updates received by proxies the change does not affect (must be 0), until the quiet
    /// window after the last affected proxy ended.
    pub unaffected_updates: usize,
    /// Updates that carried an outbound view (a policy edit must not; must be 0).
    pub with_outbound: usize,
    /// Updates that carried an inbound view (an endpoint change must not; must be 0).
    pub with_inbound: usize,
    /// Updates to affected proxies with the wrong parts or without the new content.
    pub wrong_content: usize,
    /// Second and later updates to the same affected proxy.
    pub duplicates: usize,
    /// Streams that ended during the change.
    pub disconnects: usize,
    /// From the rename to the end of the quiet window (or the deadline), milliseconds.
    pub window_ms: f64,
    /// Control-plane CPU (user + system) over the window.
    pub cp_cpu_ms: f64,
    /// The benchmark process's own CPU over the window (the simulated proxies).
    pub client_cpu_ms: f64,
    /// CPU used by everything else in the VM over the window (noise: other work).
    pub other_cpu_ms: Option<f64>,
    /// CPU time the hypervisor took from this VM over the window (noise: steal).
    pub steal_ms: Option<f64>,
    /// From the rename until the last affected proxy had the update, milliseconds.
    pub active_ms: Option<f64>,
    /// CPU used by other work in the VM during `active_ms`: what can have delayed the change.
    pub other_active_ms: Option<f64>,
    /// Edits made for this round (a disturbed one is repeated; the least disturbed is kept).
    pub attempts: u32,
    /// Mean size of the update an affected proxy received (protobuf bytes).
    pub update_bytes: f64,
    /// The control plane's memory at the end of the window (VmHWM: its peak so far).
    pub cp_memory_after: Memory,
    /// What the control plane's counters moved by over the change.
    pub cp_counted: Counters,
    /// The same as the simulated proxies saw it (pushes = updates received with that part,
    /// acks = updates acked).
    pub proxies_saw: Counters,
    pub counts_match: bool,
    /// Set when the control plane was killed at the memory limit during the change.
    pub aborted: Option<String>,
}

impl ChangeResult {
    /// The share (0..1) of the machine's CPUs other work used while the change spread.
    pub fn disturbance(&self, nproc: usize) -> f64 {
        match (self.other_active_ms, self.active_ms) {
            (Some(other), Some(active)) if active > 0.0 => other / (active * nproc.max(1) as f64),
            _ => 0.0,
        }
    }
}

/// A change as the control plane logged it: milliseconds from the rename.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Breakdown {
    /// `manifest directory loaded`: the watcher's 100 ms debounce plus the reload.
    pub loaded_ms: Option<f64>,
    /// The index's own compute time (`elapsed_ms` of `views computed`).
    pub index_compute_ms: Option<f64>,
    /// `views computed`: the new views are published to the subscriptions.
    pub views_published_ms: Option<f64>,
    /// From then until the last affected proxy had the update.
    pub fan_out_ms: Option<f64>,
    /// Reloads logged in the window (1 expected).
    pub reloads: usize,
}

/// Every round of one kind of change at one size, together.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeSummary {
    pub change: Change,
    pub rounds: usize,
    /// Over every affected proxy of every round.
    pub latency: Percentiles,
    /// Per round, the time until the last affected proxy had the new view (ms).
    pub all_received_ms: Vec<f64>,
    pub cp_all_acked_ms: Vec<Option<f64>>,
    pub missing: usize,
    pub unaffected_updates: usize,
    pub with_outbound: usize,
    pub with_inbound: usize,
    pub wrong_content: usize,
    pub duplicates: usize,
    pub counts_match: bool,
    /// Medians over rounds.
    pub cp_cpu_ms: f64,
    pub client_cpu_ms: f64,
    pub other_cpu_ms: f64,
    pub steal_ms: f64,
    /// Largest share of the machine other work used while a kept round spread.
    pub max_disturbance: f64,
    /// Edits made in all (more than `rounds` when disturbed rounds were repeated).
    pub edits: u32,
    pub update_bytes: f64,
    pub breakdown: Breakdown,
    /// The control plane's peak RSS (VmHWM) after the last round, KiB.
    pub cp_hwm_kib: u64,
    pub aborted: Option<String>,
}

impl ChangeSummary {
    pub fn of(change: Change, rounds: &[&ChangeResult], nproc: usize) -> Self {
        let all: Vec<f64> = rounds
            .iter()
            .flat_map(|r| r.samples_ms.iter().copied())
            .collect();
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        };
        let median_of = |f: &dyn Fn(&Breakdown) -> Option<f64>| {
            let v: Vec<f64> = rounds.iter().filter_map(|r| f(&r.breakdown)).collect();
            (!v.is_empty()).then(|| median(v))
        };
        ChangeSummary {
            change,
            rounds: rounds.len(),
            latency: Percentiles::of(&all),
            all_received_ms: rounds.iter().map(|r| r.latency.max_ms).collect(),
            cp_all_acked_ms: rounds.iter().map(|r| r.cp_all_acked_ms).collect(),
            missing: rounds.iter().map(|r| r.expected - r.received).sum(),
            unaffected_updates: rounds.iter().map(|r| r.unaffected_updates).sum(),
            with_outbound: rounds.iter().map(|r| r.with_outbound).sum(),
            with_inbound: rounds.iter().map(|r| r.with_inbound).sum(),
            wrong_content: rounds.iter().map(|r| r.wrong_content).sum(),
            duplicates: rounds.iter().map(|r| r.duplicates).sum(),
            counts_match: rounds.iter().all(|r| r.counts_match),
            cp_cpu_ms: median(rounds.iter().map(|r| r.cp_cpu_ms).collect()),
            client_cpu_ms: median(rounds.iter().map(|r| r.client_cpu_ms).collect()),
            other_cpu_ms: median(rounds.iter().filter_map(|r| r.other_cpu_ms).collect()),
            steal_ms: median(rounds.iter().filter_map(|r| r.steal_ms).collect()),
            max_disturbance: rounds
                .iter()
                .map(|r| r.disturbance(nproc))
                .fold(0.0, f64::max),
            edits: rounds.iter().map(|r| r.attempts).sum(),
            update_bytes: median(rounds.iter().map(|r| r.update_bytes).collect()),
            breakdown: Breakdown {
                loaded_ms: median_of(&|b| b.loaded_ms),
                index_compute_ms: median_of(&|b| b.index_compute_ms),
                views_published_ms: median_of(&|b| b.views_published_ms),
                fan_out_ms: median_of(&|b| b.fan_out_ms),
                reloads: rounds
                    .iter()
                    .map(|r| r.breakdown.reloads)
                    .max()
                    .unwrap_or(0),
            },
            cp_hwm_kib: rounds
                .iter()
                .map(|r| r.cp_memory_after.hwm_kib)
                .max()
                .unwrap_or(0),
            aborted: rounds.iter().find_map(|r| r.aborted.clone()),
        }
    }
}

/// Connecting every proxy.
#[derive(Debug, Clone, Serialize)]
pub struct SubscribePhase {
    pub subscribed: usize,
    pub failed: usize,
    /// The first failure's reason, if any.
    pub first_failure: Option<String>,
    /// From the first connect until every proxy had its first view, seconds.
    pub seconds: f64,
    /// Per proxy, first connect attempt → first view acked (includes waiting for a slot).
    pub per_proxy: Percentiles,
    /// Size of the first view (inbound + outbound), protobuf bytes, over all its messages.
    pub first_view_bytes: usize,
    /// The messages the first view came in (the most of any proxy), and the largest message.
    pub first_view_messages: usize,
    pub largest_message_bytes: usize,
    pub cp_cpu_s: f64,
    pub client_cpu_s: f64,
    /// The control plane's counters after every proxy subscribed.
    pub cp_counted: Counters,
}

/// The control-plane process.
#[derive(Debug, Clone, Serialize)]
pub struct ControlPlane {
    pub pid: u32,
    pub exe: Option<String>,
    /// After `/ready`, before any proxy connected.
    pub ready: Memory,
    /// After every proxy subscribed and a 2 s settle.
    pub subscribed: Memory,
    /// After the last change.
    pub end: Memory,
    /// Whether `/metrics` used the documented names (`weft_cp_*`, not `_weft_cp_*`).
    pub metric_names_as_documented: bool,
    /// The benchmark process (every simulated proxy) at the end, for comparison.
    pub simulated_proxies: Memory,
}

/// One mesh size.
#[derive(Debug, Clone, Serialize)]
pub struct SizeResult {
    pub proxies: usize,
    pub pods: usize,
    pub services: usize,
    /// `/ready` after start, seconds (the first load of the manifest directory).
    pub ready_s: f64,
    /// Fraction of both CPUs busy with other work just before this size started.
    pub machine_busy_before: Option<f64>,
    pub control_plane: ControlPlane,
    pub subscribe: SubscribePhase,
    pub changes: Vec<ChangeResult>,
    pub summaries: Vec<ChangeSummary>,
    /// Every proxy stream still open at the end.
    pub disconnected_at_end: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub rounds: u32,
    pub changes: Vec<Change>,
    /// `normal`, or `nice` (the control plane and the benchmark at nice -19).
    pub sched: String,
    pub retries: u32,
    pub disturbance_threshold: f64,
    pub quiet_before_change_s: f64,
    pub connect_concurrency: usize,
    pub client_threads: usize,
    pub change_timeout_s: f64,
    pub quiet_s: f64,
    pub poll_ms: u64,
    pub control_plane: String,
    /// The commit the control plane was built from (and whether its sources were modified).
    pub source: String,
    pub control_plane_log: String,
    /// Extra environment the control plane ran with (`--cp-env`).
    pub control_plane_env: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PropagationResults {
    pub date_utc: String,
    pub machine: Machine,
    pub settings: Settings,
    pub sizes: Vec<SizeResult>,
    pub targets: Vec<TargetCheck>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    pub target: String,
    pub met: Option<bool>,
    pub detail: String,
}

fn kib(k: u64) -> String {
    format!("{:.1} MiB", k as f64 / 1024.0)
}

fn opt_ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "–".into())
}

impl PropagationResults {
    pub fn evaluate(&mut self) {
        let mut targets = Vec::new();
        for size in self.sizes.iter().filter(|s| s.proxies == TARGET_PROXIES) {
            for s in size.summaries.iter().filter(|s| s.change.is_policy()) {
                let met = s.missing == 0 && s.aborted.is_none() && s.latency.p99_ms < TARGET_P99_MS;
                targets.push(TargetCheck {
                    target: format!(
                        "policy change, {}: p99 < 1 s at {} proxies",
                        s.change.name(),
                        size.proxies
                    ),
                    met: Some(met),
                    detail: format!(
                        "p99 {:.0} ms, max {:.0} ms over {} samples, {} missing",
                        s.latency.p99_ms, s.latency.max_ms, s.latency.samples, s.missing
                    ),
                });
            }
        }
        for size in &self.sizes {
            let policy = || size.summaries.iter().filter(|s| s.change.is_policy());
            if policy().next().is_none() {
                continue;
            }
            let unaffected: usize = policy().map(|s| s.unaffected_updates).sum();
            let outbound: usize = policy().map(|s| s.with_outbound).sum();
            let wrong: usize = policy().map(|s| s.wrong_content).sum();
            targets.push(TargetCheck {
                target: format!(
                    "each policy change sent only to the proxies it affects, inbound only ({} proxies)",
                    size.proxies
                ),
                met: Some(unaffected == 0 && outbound == 0 && wrong == 0),
                detail: format!(
                    "{unaffected} updates to unaffected proxies, {outbound} with an outbound view, \
                     {wrong} with wrong content"
                ),
            });
        }
        self.targets = targets;
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let s = &self.settings;
        let _ = writeln!(
            out,
            "Measured {} ({}) on {} cores ({}), kernel {}; load average at start {}. \
             {} round(s) of each change; proxies connected {} at a time; the simulated proxies ran \
             in the benchmark process on {} thread(s), unpinned, on the same 2 cores as the control plane; \
             scheduling: {}.\n",
            self.date_utc,
            s.source,
            m.nproc,
            m.cpu_model,
            m.kernel,
            m.loadavg_at_start,
            s.rounds,
            s.connect_concurrency,
            s.client_threads,
            if s.sched == "nice" {
                "control plane and benchmark at nice -19"
            } else {
                "normal"
            }
        );
        let _ = writeln!(
            out,
            "Latency: file renamed into the watched directory → the simulated proxy has the new view \
             and has queued its ack; p50/p99/max over every affected proxy of every round. \
             \"All had it\": per round, the last affected proxy. \"CP counted\": per round, when \
             `weft_cp_acks_total` had every ack (polled every {} ms). \
             \"Other work while spreading\": the share of both CPUs used by other processes between \
             the rename and the last proxy (a round above {:.0} % is repeated, up to {} times, and the \
             least disturbed kept; \"edits\" counts every attempt).\n",
            s.poll_ms,
            s.disturbance_threshold * 100.0,
            s.retries
        );
        let _ = writeln!(
            out,
            "| proxies / pods | change | affected | p50 ms | p99 ms | max ms | all had it, per round (ms) | CP counted all acks (ms) | unaffected updates | wrong parts / content | CP CPU ms / change | sim. proxies CPU ms | other work while spreading (worst round) | edits | update bytes | counters match |"
        );
        let _ = writeln!(
            out,
            "|---|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for size in &self.sizes {
            for sum in &size.summaries {
                let affected = size
                    .changes
                    .iter()
                    .find(|c| c.change == sum.change)
                    .map(|c| c.expected)
                    .unwrap_or(0);
                let rounds: Vec<String> = sum
                    .all_received_ms
                    .iter()
                    .map(|v| format!("{v:.0}"))
                    .collect();
                let acked: Vec<String> = sum.cp_all_acked_ms.iter().map(|v| opt_ms(*v)).collect();
                let wrong_parts = if sum.change.is_policy() {
                    sum.with_outbound
                } else {
                    sum.with_inbound
                };
                let mut notes = String::new();
                if sum.missing > 0 {
                    let _ = write!(notes, " ({} missing)", sum.missing);
                }
                if sum.aborted.is_some() {
                    notes.push_str(" (**aborted: memory limit**)");
                }
                let _ = writeln!(
                    out,
                    "| {} / {} | {} | {}{} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} / {} | {:.0} | {:.0} | {:.0} % | {} | {:.0} | {} |",
                    size.proxies,
                    size.pods,
                    sum.change.name(),
                    affected,
                    notes,
                    sum.latency.p50_ms,
                    sum.latency.p99_ms,
                    sum.latency.max_ms,
                    rounds.join(" / "),
                    acked.join(" / "),
                    sum.unaffected_updates,
                    wrong_parts,
                    sum.wrong_content,
                    sum.cp_cpu_ms,
                    sum.client_cpu_ms,
                    sum.max_disturbance * 100.0,
                    sum.edits,
                    sum.update_bytes,
                    if sum.counts_match { "yes" } else { "**no**" },
                );
            }
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Where a change's time goes (medians over rounds, ms from the rename; from the control plane's log):\n"
        );
        let _ = writeln!(
            out,
            "| proxies / pods | change | directory reloaded (incl. 100 ms debounce) | index compute | views published | fan-out to the last proxy | CP peak RSS after |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
        for size in &self.sizes {
            for sum in &size.summaries {
                let b = &sum.breakdown;
                let _ = writeln!(
                    out,
                    "| {} / {} | {} | {} | {} | {} | {} | {} |",
                    size.proxies,
                    size.pods,
                    sum.change.name(),
                    opt_ms(b.loaded_ms),
                    opt_ms(b.index_compute_ms),
                    opt_ms(b.views_published_ms),
                    opt_ms(b.fan_out_ms),
                    kib(sum.cp_hwm_kib),
                );
            }
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| proxies / pods | CP ready | subscribe all | per proxy p50 / p99 | first view | CP CPU subscribing | CP RSS ready | CP RSS subscribed (peak) | CP RSS end (peak) | sim. proxies RSS end | CP counts subscribers |"
        );
        let _ = writeln!(
            out,
            "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for size in &self.sizes {
            let sub = &size.subscribe;
            let cp = &size.control_plane;
            let _ = writeln!(
                out,
                "| {} / {} | {:.1} s | {:.1} s{} | {:.0} / {:.0} ms | {:.0} KiB in {} msg, largest {:.1} KiB | {:.1} s | {} | {} ({}) | {} ({}) | {} | {:.0} |",
                size.proxies,
                size.pods,
                size.ready_s,
                sub.seconds,
                if sub.failed > 0 {
                    format!(" ({} failed)", sub.failed)
                } else {
                    String::new()
                },
                sub.per_proxy.p50_ms,
                sub.per_proxy.p99_ms,
                sub.first_view_bytes as f64 / 1024.0,
                sub.first_view_messages,
                sub.largest_message_bytes as f64 / 1024.0,
                sub.cp_cpu_s,
                kib(cp.ready.rss_kib),
                kib(cp.subscribed.rss_kib),
                kib(cp.subscribed.hwm_kib),
                kib(cp.end.rss_kib),
                kib(cp.end.hwm_kib),
                kib(cp.simulated_proxies.rss_kib),
                sub.cp_counted.subscribers,
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "| target | verdict |");
        let _ = writeln!(out, "|---|---|");
        for t in &self.targets {
            let verdict = match t.met {
                Some(true) => format!("met — {}", t.detail),
                Some(false) => format!("**not met** — {}", t.detail),
                None => format!("not measured — {}", t.detail),
            };
            let _ = writeln!(out, "| {} | {} |", t.target, verdict);
        }
        if self
            .sizes
            .iter()
            .any(|s| !s.control_plane.metric_names_as_documented)
        {
            let _ = writeln!(
                out,
                "\nNote: this control plane exported its metrics as `_weft_cp_*` (leading underscore) \
                 instead of the documented `weft_cp_*`; the cross-check reads either."
            );
        }
        out
    }
}
