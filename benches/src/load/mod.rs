//! The load generator: C keep-alive HTTP/1.1 connections against one target, driven either
//! closed-loop ([`closed`]) or open-loop ([`open`]), merged into one [`LoadReport`].
//!
//! Designed to run on a single-threaded runtime pinned to one core: the benchmark gives the
//! load generator and the upstream one core and the proxies the other, and a single thread
//! per process keeps the scheduler from adding cross-core wake-ups of its own.

mod closed;
mod conn;
mod open;
mod worker;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::clock::now_ns;
use crate::report::{Latency, LoadMode, LoadReport};
use crate::timer::Timer;
pub use conn::Conn;
use worker::WorkerResult;

/// How to load the target.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub target: SocketAddr,
    /// Request path (the `Host` header is the target address).
    pub path: String,
    pub connections: usize,
    /// The measured window.
    pub duration: Duration,
    /// Stop after this many requests even if the window is not over.
    pub max_requests: Option<u64>,
    /// `Some(r)`: open loop at `r` requests/s in total; `None`: closed loop.
    pub rate: Option<f64>,
    /// A request without a response after this long counts as a timeout and its connection
    /// is replaced.
    pub request_timeout: Duration,
    /// Open loop: how long past the window a backlog of late requests may still be sent.
    /// Everything is abandoned (and counted as not sent) after `duration + drain`.
    pub drain: Duration,
}

/// Why a run could not produce a report at all.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid load settings: {0}")]
    Config(&'static str),
    #[error("cannot create a timerfd: {0}")]
    Timer(std::io::Error),
    #[error("could not open any connection to {target}: {source}")]
    Unreachable {
        target: SocketAddr,
        source: conn::ConnError,
    },
}

/// Shared, read-only run parameters plus the request budget.
pub(crate) struct RunCtx {
    pub cfg: LoadConfig,
    pub host: String,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Open loop only: no request is sent after this instant.
    pub hard_stop_ns: u64,
    /// Requests started so far (closed loop budget for `max_requests`).
    pub issued: AtomicU64,
}

impl RunCtx {
    /// Claims one request from the `max_requests` budget; false when it is spent.
    pub fn take_ticket(&self) -> bool {
        match self.cfg.max_requests {
            None => true,
            Some(max) => self.issued.fetch_add(1, Ordering::Relaxed) < max,
        }
    }
}

/// Runs one load test. Must be called inside a Tokio runtime with time and I/O enabled.
pub async fn run(cfg: LoadConfig) -> Result<LoadReport, LoadError> {
    if cfg.connections == 0 {
        return Err(LoadError::Config("connections must be at least 1"));
    }
    if cfg.duration.is_zero() {
        return Err(LoadError::Config("duration must be positive"));
    }
    if let Some(rate) = cfg.rate {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(LoadError::Config("rate must be a positive number"));
        }
    }

    // Connect everyone before the clock starts: connection setup is not what is measured.
    let mut connecting = JoinSet::new();
    for _ in 0..cfg.connections {
        let target = cfg.target;
        connecting.spawn(async move { Conn::connect(target).await });
    }
    let mut conns = Vec::with_capacity(cfg.connections);
    let mut connect_errors = 0;
    let mut last_error = None;
    while let Some(joined) = connecting.join_next().await {
        match joined.expect("connect task panicked") {
            Ok(c) => conns.push(Some(c)),
            Err(e) => {
                connect_errors += 1;
                last_error = Some(e);
                conns.push(None);
            }
        }
    }
    if let (true, Some(source)) = (conns.iter().all(Option::is_none), last_error) {
        return Err(LoadError::Unreachable {
            target: cfg.target,
            source,
        });
    }

    // A short lead time so that the open loop's first deadlines are not already past.
    let start_ns = now_ns() + 5_000_000;
    let end_ns = start_ns + cfg.duration.as_nanos() as u64;
    let ctx = Arc::new(RunCtx {
        host: cfg.target.to_string(),
        start_ns,
        end_ns,
        hard_stop_ns: end_ns + cfg.drain.as_nanos() as u64,
        issued: AtomicU64::new(0),
        cfg,
    });

    let mut workers = JoinSet::new();
    for (idx, conn) in conns.into_iter().enumerate() {
        let ctx = ctx.clone();
        match ctx.cfg.rate {
            None => workers.spawn(closed::worker(ctx, conn)),
            Some(_) => {
                let timer = Timer::new().map_err(LoadError::Timer)?;
                workers.spawn(open::worker(ctx, idx as u64, timer, conn))
            }
        };
    }
    let mut total = WorkerResult::new();
    total.errors.connect += connect_errors;
    while let Some(joined) = workers.join_next().await {
        total.merge(&joined.expect("load worker panicked"));
    }

    let elapsed_ns = total.last_done_ns.saturating_sub(ctx.start_ns);
    let elapsed_s = if elapsed_ns == 0 {
        ctx.cfg.duration.as_secs_f64()
    } else {
        elapsed_ns as f64 / 1e9
    };
    Ok(LoadReport {
        mode: match ctx.cfg.rate {
            None => LoadMode::Closed,
            Some(_) => LoadMode::Open,
        },
        target: ctx.host.clone(),
        connections: ctx.cfg.connections,
        duration_s: ctx.cfg.duration.as_secs_f64(),
        rate: ctx.cfg.rate,
        elapsed_s,
        requests: total.ok,
        rps: total.ok as f64 / elapsed_s,
        latency: Latency::from_histogram(&total.hist),
        schedule_lag: ctx.cfg.rate.map(|_| Latency::from_histogram(&total.lag)),
        errors: total.errors,
    })
}
