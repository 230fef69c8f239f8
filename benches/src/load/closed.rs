//! Closed loop: each connection sends its next request as soon as the previous response
//! completes, for the whole window. This finds the maximum throughput of the chain, but its
//! latencies are *service* times only: when the system stalls, the loop stalls with it and
//! simply sends fewer requests, so a closed loop cannot tell you what a user arriving at a
//! fixed rate would have waited. Use the open loop for latency.

use std::sync::Arc;

use super::conn::Conn;
use super::worker::{ensure_conn, send_and_record, WorkerResult};
use super::RunCtx;
use crate::clock::now_ns;

pub(crate) async fn worker(ctx: Arc<RunCtx>, mut slot: Option<Conn>) -> WorkerResult {
    let mut result = WorkerResult::new();
    // Everyone starts together, after all connections are up.
    let lead = ctx.start_ns.saturating_sub(now_ns());
    tokio::time::sleep(std::time::Duration::from_nanos(lead)).await;
    loop {
        let now = now_ns();
        if now >= ctx.end_ns {
            break;
        }
        if ensure_conn(&mut slot, &ctx, &mut result).await.is_none() {
            continue;
        }
        if !ctx.take_ticket() {
            break;
        }
        let timeout = ctx.cfg.request_timeout;
        send_and_record(&mut slot, &ctx, &mut result, now_ns(), timeout).await;
    }
    result
}
