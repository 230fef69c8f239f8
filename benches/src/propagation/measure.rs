//! One policy edit, measured: rename the new policy into the watched directory, then follow
//! every simulated proxy's updates until each affected proxy has the new view (or the
//! deadline passes), and for a quiet window after that, during which no other proxy may get
//! anything. Meanwhile the control plane's `/metrics` is polled to see when it has counted
//! every ack.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::cpmetrics::{self, Counters};
use super::mesh::{Change, Mesh};
use super::proxies::{Event, EventKind};
use super::results::{ChangeResult, Percentiles};
use crate::procfs;

pub struct Context<'a> {
    pub mesh: &'a Mesh,
    pub events: &'a mut mpsc::UnboundedReceiver<Event>,
    /// Which proxies are subscribed (and still connected).
    pub live: &'a mut [bool],
    pub cp_pid: u32,
    pub admin: SocketAddr,
    pub timeout: Duration,
    pub quiet: Duration,
    pub poll: Duration,
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
    let cp_ticks_before = procfs::cpu_ticks(ctx.cp_pid)?;
    let self_before = self_cpu();
    let t0 = Instant::now();
    staged.commit()?;

    let mut latency_ms = vec![f64::NAN; ctx.live.len()];
    let mut got = vec![false; ctx.live.len()];
    let mut received = 0usize;
    let mut saw = Counters::default();
    let (mut unaffected, mut with_outbound, mut wrong, mut duplicates, mut disconnects) =
        (0, 0, 0, 0, 0);
    let mut bytes = 0usize;
    let mut cp_all_acked: Option<f64> = None;
    let deadline = t0 + ctx.timeout;
    let mut quiet_end: Option<Instant> = None;
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
                            let round_seen = match change {
                                Change::Selective => update.selective_round,
                                Change::MeshWide => update.mesh_round,
                            };
                            if !update.inbound || round_seen != Some(round) {
                                wrong += 1;
                            }
                            if received == expected_count {
                                quiet_end = Some(Instant::now() + ctx.quiet);
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
            _ = poll.tick(), if cp_all_acked.is_none() => {
                if let Ok(now) = cpmetrics::scrape(ctx.admin).await {
                    let acked = now.since(&before).acks_applied;
                    if acked >= expected_count as f64 && expected_count > 0 {
                        cp_all_acked = Some(t0.elapsed().as_secs_f64() * 1e3);
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
    let cp_ticks = procfs::cpu_ticks(ctx.cp_pid)? - cp_ticks_before;
    let client_cpu = self_cpu() - self_before;
    let after = cpmetrics::scrape(ctx.admin).await?;
    let cp_counted = after.since(&before);
    saw.subscribers = cp_counted.subscribers;
    let samples_ms: Vec<f64> = latency_ms.into_iter().filter(|v| !v.is_nan()).collect();
    Ok(ChangeResult {
        change,
        round,
        expected: expected_count,
        received,
        latency: Percentiles::of(&samples_ms),
        samples_ms,
        cp_all_acked_ms: cp_all_acked,
        unaffected_updates: unaffected,
        with_outbound,
        wrong_content: wrong,
        duplicates,
        disconnects,
        cp_cpu_ms: cp_ticks as f64 * 1e3 / procfs::ticks_per_second() as f64,
        client_cpu_ms: client_cpu.as_secs_f64() * 1e3,
        update_bytes: if received > 0 {
            bytes as f64 / received as f64
        } else {
            0.0
        },
        counts_match: cp_counted == saw,
        cp_counted,
        proxies_saw: saw,
    })
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
