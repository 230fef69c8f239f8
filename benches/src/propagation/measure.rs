//! One change, measured: rename the new file into the watched directory, then follow every
//! simulated proxy's updates until each affected proxy has the new view (or the deadline
//! passes), and for a quiet window after that, during which no other proxy may get anything.
//! Meanwhile the control plane's `/metrics` is polled to see when it has counted every ack,
//! and its memory is watched: past `--max-cp-rss-mib` it is killed at once rather than let
//! the machine run out of memory.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use super::cplog;
use super::cpmetrics::{self, Counters};
use super::mesh::{self, Change, Mesh};
use super::proxies::{Event, EventKind, Update};
use super::results::{Breakdown, ChangeResult, Percentiles};
use crate::procfs::{self, Memory};

pub struct Context<'a> {
    pub mesh: &'a Mesh,
    pub events: &'a mut mpsc::UnboundedReceiver<Event>,
    /// Which proxies are subscribed (and still connected).
    pub live: &'a mut [bool],
    pub cp_pid: u32,
    pub admin: SocketAddr,
    pub log: &'a mut cplog::Cursor,
    pub timeout: Duration,
    pub quiet: Duration,
    pub poll: Duration,
    pub max_cp_rss_kib: u64,
}

/// Everything received by proxies between two changes: must be nothing.
pub fn drain_stray(ctx: &mut Context<'_>) -> usize {
    let mut stray = 0;
    while let Ok(event) = ctx.events.try_recv() {
        if let EventKind::Ended(why) = &event.kind {
            eprintln!("   proxy {} disconnected: {why}", event.proxy);
            ctx.live[event.proxy] = false;
        }
        stray += 1;
    }
    stray
}

/// Whether an affected proxy's update is the one `change` in `round` must produce: the
/// changed part only, with the new content (an outbound change as a delta, not a full sync).
fn as_expected(change: Change, round: u32, update: &Update) -> bool {
    match change {
        Change::Selective => {
            update.inbound && !update.outbound && update.selective_round == Some(round)
        }
        Change::MeshWide => update.inbound && !update.outbound && update.mesh_round == Some(round),
        Change::Endpoints => {
            update.outbound
                && update.delta
                && !update.inbound
                && update.endpoint_ready == Some(mesh::endpoint_ready(round))
        }
    }
}

/// Waits (bounded) until the machine is less than `threshold` busy over a second.
pub async fn wait_until_quiet(threshold: f64, max_wait: Duration) -> Option<f64> {
    let deadline = Instant::now() + max_wait;
    loop {
        let before = machine_jiffies()?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = machine_jiffies()?;
        let busy = (after.busy - before.busy) as f64 / (after.total - before.total).max(1) as f64;
        if busy < threshold || Instant::now() >= deadline {
            return Some(busy);
        }
    }
}

/// Makes edit number `round` of `change` (each edit has new content: the round is written
/// into the policy, or decides the endpoint's readiness) and measures it.
pub async fn change(
    ctx: &mut Context<'_>,
    change: Change,
    round: u32,
) -> anyhow::Result<ChangeResult> {
    let stray = drain_stray(ctx);
    if stray > 0 {
        eprintln!("   {stray} stray events before the change (counted nowhere)");
    }
    let expected: Vec<bool> = (0..ctx.live.len())
        .map(|p| ctx.live[p] && change.affects(p))
        .collect();
    let expected_count = expected.iter().filter(|e| **e).count();
    let staged = ctx.mesh.stage(change, round)?;

    let before = cpmetrics::scrape(ctx.admin).await?;
    ctx.log.read_new(&[]);
    let cp_ticks_before = procfs::cpu_ticks(ctx.cp_pid)?;
    let self_ticks_before = procfs::cpu_ticks(std::process::id())?;
    let machine_before = machine_jiffies();
    let self_before = self_cpu();
    let t0_wall = SystemTime::now();
    let t0 = Instant::now();
    staged.commit()?;

    let mut latency_ms = vec![f64::NAN; ctx.live.len()];
    let mut got = vec![false; ctx.live.len()];
    let mut received = 0usize;
    let mut saw = Counters::default();
    let (mut unaffected, mut with_outbound, mut with_inbound, mut wrong, mut duplicates) =
        (0, 0, 0, 0, 0);
    let mut disconnects = 0;
    let mut bytes = 0usize;
    let mut cp_all_acked: Option<f64> = None;
    let mut aborted = None;
    let deadline = t0 + ctx.timeout;
    let mut quiet_end: Option<Instant> = None;
    // When the last affected proxy had it: (time, machine, control plane, this process).
    let mut completed: Option<(Instant, Option<Jiffies>, u64, u64)> = None;
    let mut poll = tokio::time::interval(ctx.poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        let stop_at = quiet_end.unwrap_or(deadline).min(deadline);
        tokio::select! {
            event = ctx.events.recv() => {
                let Some(event) = event else { anyhow::bail!("every simulated proxy is gone") };
                match event.kind {
                    EventKind::Update(update) => {
                        saw.acks_applied += 1.0;
                        saw.pushes_inbound += f64::from(u8::from(update.inbound));
                        saw.pushes_outbound += f64::from(u8::from(update.outbound));
                        with_outbound += usize::from(update.outbound);
                        with_inbound += usize::from(update.inbound);
                        let p = event.proxy;
                        if !expected[p] {
                            unaffected += 1;
                        } else if got[p] {
                            duplicates += 1;
                        } else {
                            got[p] = true;
                            received += 1;
                            bytes += update.bytes;
                            latency_ms[p] = event.at.duration_since(t0).as_secs_f64() * 1e3;
                            if !as_expected(change, round, &update) {
                                wrong += 1;
                            }
                            if received == expected_count {
                                quiet_end = Some(Instant::now() + ctx.quiet);
                                completed = Some((
                                    Instant::now(),
                                    machine_jiffies(),
                                    procfs::cpu_ticks(ctx.cp_pid).unwrap_or(0),
                                    procfs::cpu_ticks(std::process::id()).unwrap_or(0),
                                ));
                            }
                        }
                    }
                    EventKind::Ended(why) => {
                        eprintln!("   proxy {} disconnected: {why}", event.proxy);
                        ctx.live[event.proxy] = false;
                        disconnects += 1;
                    }
                    EventKind::Subscribed { .. } | EventKind::Failed(_) => {}
                }
            }
            _ = poll.tick() => {
                let rss = procfs::memory(ctx.cp_pid).map(|m| m.rss_kib).unwrap_or(0);
                if rss > ctx.max_cp_rss_kib {
                    // SAFETY: kill(2) on the control plane's pid, which this process started
                    // and has not reaped (Managed reaps it when dropped).
                    unsafe { libc::kill(ctx.cp_pid as libc::pid_t, libc::SIGKILL) };
                    let why = format!(
                        "the control plane's RSS reached {} MiB {:.0} ms after the change \
                         ({received} of {expected_count} proxies had it); killed at the \
                         --max-cp-rss-mib limit",
                        rss / 1024,
                        t0.elapsed().as_secs_f64() * 1e3
                    );
                    eprintln!("   {why}");
                    aborted = Some(why);
                    break;
                }
                if cp_all_acked.is_none() {
                    if let Ok(now) = cpmetrics::scrape(ctx.admin).await {
                        let acked = now.since(&before).acks_applied;
                        if acked >= expected_count as f64 && expected_count > 0 {
                            cp_all_acked = Some(t0.elapsed().as_secs_f64() * 1e3);
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(stop_at.into()) => {
                if quiet_end.is_none() {
                    eprintln!(
                        "   deadline: {received} of {expected_count} affected proxies got round {round} within {:?}",
                        ctx.timeout
                    );
                }
                break;
            }
        }
    }
    let window = t0.elapsed();
    let samples_ms: Vec<f64> = latency_ms.into_iter().filter(|v| !v.is_nan()).collect();
    let latency = Percentiles::of(&samples_ms);
    let breakdown = breakdown(ctx.log, t0_wall, latency.max_ms);
    let client_cpu = self_cpu() - self_before;
    let tick_ms = 1e3 / procfs::ticks_per_second() as f64;
    // Other work while the change was spreading (rename → last affected proxy): what can
    // have delayed it. The quiet window after it does not count.
    let (active_ms, other_active_ms) = match (completed, machine_before) {
        (Some((at, Some(machine), cp, own)), Some(before)) => (
            Some(at.duration_since(t0).as_secs_f64() * 1e3),
            Some(
                (machine.busy - before.busy)
                    .saturating_sub(cp - cp_ticks_before + own - self_ticks_before)
                    as f64
                    * tick_ms,
            ),
        ),
        _ => (None, None),
    };
    let (cp_cpu_ms, other_cpu_ms, steal_ms, cp_memory, cp_counted) = if aborted.is_some() {
        (0.0, None, None, Memory::default(), Counters::default())
    } else {
        let cp_ticks = procfs::cpu_ticks(ctx.cp_pid)? - cp_ticks_before;
        let self_ticks = procfs::cpu_ticks(std::process::id())? - self_ticks_before;
        let (other, steal) = match machine_before.zip(machine_jiffies()) {
            Some((b, a)) => (
                Some((a.busy - b.busy).saturating_sub(cp_ticks + self_ticks) as f64 * tick_ms),
                Some((a.steal - b.steal) as f64 * tick_ms),
            ),
            None => (None, None),
        };
        let after = cpmetrics::scrape(ctx.admin).await?;
        (
            cp_ticks as f64 * tick_ms,
            other,
            steal,
            procfs::memory(ctx.cp_pid)?,
            after.since(&before),
        )
    };
    saw.subscribers = cp_counted.subscribers;
    Ok(ChangeResult {
        change,
        round,
        expected: expected_count,
        received,
        latency,
        samples_ms,
        cp_all_acked_ms: cp_all_acked,
        breakdown,
        unaffected_updates: unaffected,
        with_outbound,
        with_inbound,
        wrong_content: wrong,
        duplicates,
        disconnects,
        window_ms: window.as_secs_f64() * 1e3,
        cp_cpu_ms,
        client_cpu_ms: client_cpu.as_secs_f64() * 1e3,
        other_cpu_ms,
        steal_ms,
        active_ms,
        other_active_ms,
        attempts: 1,
        update_bytes: if received > 0 {
            bytes as f64 / received as f64
        } else {
            0.0
        },
        cp_memory_after: cp_memory,
        counts_match: aborted.is_none() && cp_counted == saw,
        cp_counted,
        proxies_saw: saw,
        aborted,
    })
}

/// The control plane's own timestamps for the change (see [`cplog`]).
fn breakdown(log: &mut cplog::Cursor, t0: SystemTime, last_ms: f64) -> Breakdown {
    let lines = log.read_new(&[cplog::LOADED, cplog::COMPUTED]);
    let since = |at: SystemTime| at.duration_since(t0).ok().map(|d| d.as_secs_f64() * 1e3);
    let first = |message: &str| lines.iter().find(|l| l.message == message && l.at >= t0);
    let loaded_ms = first(cplog::LOADED).and_then(|l| since(l.at));
    let computed = first(cplog::COMPUTED);
    let computed_ms = computed.and_then(|l| since(l.at));
    Breakdown {
        loaded_ms,
        index_compute_ms: computed.and_then(|l| l.elapsed_ms),
        views_published_ms: computed_ms,
        fan_out_ms: computed_ms.map(|c| last_ms - c),
        reloads: lines.iter().filter(|l| l.message == cplog::LOADED).count(),
    }
}

/// This process's CPU time (all threads, user + system).
pub fn self_cpu() -> Duration {
    // SAFETY: an all-zero rusage is valid; getrusage only writes to it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU time of the whole machine from the `cpu` line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy)]
struct Jiffies {
    /// user + nice + system + irq + softirq: work done in this VM.
    busy: u64,
    /// Every field (idle and steal included).
    total: u64,
    /// Time the hypervisor ran something else while this VM wanted to run.
    steal: u64,
}

fn machine_jiffies() -> Option<Jiffies> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let field = |i: usize| v.get(i).copied().unwrap_or(0);
    Some(Jiffies {
        busy: field(0) + field(1) + field(2) + field(5) + field(6),
        total: (0..8).map(field).sum(),
        steal: field(7),
    })
}
