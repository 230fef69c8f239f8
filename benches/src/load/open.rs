//! Open loop at a constant rate, corrected for coordinated omission.
//!
//! The schedule is fixed before the run: request `n` (0-based, over all connections) is due
//! at `start + n / rate`, and it is sent on connection `n mod C`, so each connection carries
//! `rate / C` requests per second, interleaved evenly with the others. A worker sleeps (on a
//! precise `timerfd`, see [`crate::timer`]) until its next request is due and sends it.
//!
//! **Why latency is measured from the intended send time.** A load generator that measures
//! from the moment it actually sends "coordinates" with the system under test: when the
//! proxy stalls for 50 ms, the connection's next requests are simply sent late, and each is
//! then timed as fast — the stall is recorded once, as one slow sample, while every request
//! that a real client would have issued during the stall (and which would have waited) is
//! omitted. Percentiles then look far better than what users experience. Measuring from the
//! *intended* time charges every scheduled request with the queueing delay it would really
//! have seen, which is what p99/p99.9 at a given rate are supposed to mean (the approach of
//! wrk2 and Gil Tene's HdrHistogram work). The corollary: the generator's own lateness (timer
//! wake-up, scheduling on a shared core) also counts, which is why the timer is precise and
//! why the `direct` scenario's p99 is subtracted to get a proxy's *added* latency.
//!
//! The run is bounded: nothing is scheduled at or after the end of the window or beyond
//! `max_requests`, and a backlog of late requests may be sent only until `end + drain`;
//! whatever is still unsent then is counted as `not_sent`.

use std::sync::Arc;
use std::time::Duration;

use super::conn::Conn;
use super::worker::{ensure_conn, send_and_record, WorkerResult};
use super::RunCtx;
use crate::clock::now_ns;
use crate::timer::Timer;

/// The schedule of one connection: the `k`-th request of connection `idx`.
struct Schedule {
    start_ns: u64,
    end_ns: u64,
    /// Nanoseconds between two requests of the whole run (1e9 / rate).
    gap_ns: f64,
    connections: u64,
    idx: u64,
    max_requests: Option<u64>,
}

impl Schedule {
    /// The intended send instant of this connection's `k`-th request, or `None` when the
    /// schedule has ended.
    fn due(&self, k: u64) -> Option<u64> {
        let n = k * self.connections + self.idx;
        if self.max_requests.is_some_and(|max| n >= max) {
            return None;
        }
        let at = self.start_ns + (n as f64 * self.gap_ns) as u64;
        (at < self.end_ns).then_some(at)
    }
}

pub(crate) async fn worker(
    ctx: Arc<RunCtx>,
    idx: u64,
    timer: Timer,
    mut slot: Option<Conn>,
) -> WorkerResult {
    let mut result = WorkerResult::new();
    let rate = ctx.cfg.rate.expect("open loop has a rate");
    let schedule = Schedule {
        start_ns: ctx.start_ns,
        end_ns: ctx.end_ns,
        gap_ns: 1e9 / rate,
        connections: ctx.cfg.connections as u64,
        idx,
        max_requests: ctx.cfg.max_requests,
    };

    let mut k = 0;
    while let Some(due) = schedule.due(k) {
        if timer.sleep_until(due).await.is_err() {
            // Never seen in practice; the coarse Tokio timer keeps the run going.
            let wait = due.saturating_sub(now_ns());
            tokio::time::sleep(Duration::from_nanos(wait)).await;
        }
        let now = now_ns();
        if now >= ctx.hard_stop_ns {
            // Out of time: everything still scheduled is reported, not silently dropped.
            let mut rest = k;
            while schedule.due(rest).is_some() {
                rest += 1;
            }
            result.errors.not_sent += rest - k;
            break;
        }
        k += 1;
        if ensure_conn(&mut slot, &ctx, &mut result).await.is_none() {
            // This scheduled request is lost to the failed connect (already counted).
            continue;
        }
        result
            .lag
            .saturating_record(now_ns().saturating_sub(due).max(1));
        let left = Duration::from_nanos(ctx.hard_stop_ns.saturating_sub(now_ns()));
        let timeout = ctx
            .cfg
            .request_timeout
            .min(left.max(Duration::from_millis(1)));
        send_and_record(&mut slot, &ctx, &mut result, due, timeout).await;
    }
    result
}
