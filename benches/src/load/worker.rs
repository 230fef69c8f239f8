//! What both loops share: per-worker counters, and sending one request with its outcome
//! accounted for.

use std::time::Duration;

use hdrhistogram::Histogram;

use super::conn::Conn;
use super::RunCtx;
use crate::clock::now_ns;
use crate::report::{new_histogram, Errors};

/// One worker's tally; merged into the run's total at the end (no shared counters on the
/// hot path).
pub(crate) struct WorkerResult {
    pub hist: Histogram<u64>,
    /// Open loop only: how late the generator itself sent each request (actual send time
    /// minus intended time). Part of the measured latency by design; reported separately so
    /// a late generator is visible rather than mistaken for a slow proxy.
    pub lag: Histogram<u64>,
    pub ok: u64,
    pub errors: Errors,
    /// When the last response (or failure) arrived.
    pub last_done_ns: u64,
}

impl WorkerResult {
    pub fn new() -> Self {
        Self {
            hist: new_histogram(),
            lag: new_histogram(),
            ok: 0,
            errors: Errors::default(),
            last_done_ns: 0,
        }
    }

    pub fn merge(&mut self, other: &WorkerResult) {
        self.hist.add(&other.hist).expect("histograms share bounds");
        self.lag.add(&other.lag).expect("histograms share bounds");
        self.ok += other.ok;
        self.errors.add(&other.errors);
        self.last_done_ns = self.last_done_ns.max(other.last_done_ns);
    }
}

/// Returns a usable connection, reconnecting if needed. On a failed connect it counts the
/// error, backs off briefly (so a dead target is not hammered in a hot loop) and returns
/// `None`.
pub(crate) async fn ensure_conn<'a>(
    slot: &'a mut Option<Conn>,
    ctx: &RunCtx,
    result: &mut WorkerResult,
) -> Option<&'a mut Conn> {
    if slot.as_ref().is_some_and(Conn::is_usable) {
        return slot.as_mut();
    }
    *slot = None;
    match Conn::connect(ctx.cfg.target).await {
        Ok(c) => {
            *slot = Some(c);
            slot.as_mut()
        }
        Err(_) => {
            result.errors.connect += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            None
        }
    }
}

/// Sends one request on `slot`'s connection and records the outcome, with latency measured
/// from `origin_ns` (the actual send time in the closed loop, the intended one in the open
/// loop). The request may take at most `timeout`. A failed or timed-out connection is
/// dropped so the next request reconnects.
pub(crate) async fn send_and_record(
    slot: &mut Option<Conn>,
    ctx: &RunCtx,
    result: &mut WorkerResult,
    origin_ns: u64,
    timeout: Duration,
) {
    let Some(conn) = slot.as_mut() else { return };
    let outcome = tokio::time::timeout(timeout, conn.get(&ctx.host, &ctx.cfg.path)).await;
    let done = now_ns();
    result.last_done_ns = result.last_done_ns.max(done);
    match outcome {
        Ok(Ok(status)) if status.is_success() => {
            result.ok += 1;
            result
                .hist
                .saturating_record(done.saturating_sub(origin_ns).max(1));
        }
        Ok(Ok(_)) => result.errors.non_2xx += 1,
        Ok(Err(_)) => {
            result.errors.io += 1;
            *slot = None;
        }
        Err(_elapsed) => {
            result.errors.timeout += 1;
            *slot = None;
        }
    }
}
