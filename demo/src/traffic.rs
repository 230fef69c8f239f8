//! The demo's callers: loops that call a Service by its cluster host name through the
//! caller's sidecar at a fixed rate, exactly as an app with `HTTP_PROXY` set to its sidecar's
//! outbound listener does, and count what came back — what the *app* sees, to set beside what
//! the sidecars' metrics say.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::http;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What one caller saw of one Service.
#[derive(Default)]
pub struct Calls {
    pub sent: AtomicU64,
    /// Requests that got no response at all (connection refused, timeout).
    pub io_errors: AtomicU64,
    /// Responses by status code.
    pub statuses: Mutex<BTreeMap<u16, u64>>,
    /// 2xx responses by the app that answered (`x-served-by`).
    pub served_by: Mutex<BTreeMap<String, u64>>,
    /// The `weft-authz-policy` of the last 403.
    pub denied_by: Mutex<Option<String>>,
}

impl Calls {
    pub fn ok(&self) -> u64 {
        self.count(|status| (200..300).contains(&status))
    }

    /// Requests that did not succeed: non-2xx responses and no response.
    pub fn failed(&self) -> u64 {
        self.count(|status| !(200..300).contains(&status)) + self.io_errors.load(Ordering::Relaxed)
    }

    pub fn count(&self, which: impl Fn(u16) -> bool) -> u64 {
        let statuses = self.statuses.lock().unwrap_or_else(|p| p.into_inner());
        statuses
            .iter()
            .filter(|(status, _)| which(**status))
            .map(|(_, n)| n)
            .sum()
    }

    fn record(&self, result: std::io::Result<http::Response>) {
        let response = match result {
            Ok(response) => response,
            Err(_) => {
                self.io_errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        *lock(&self.statuses).entry(response.status).or_default() += 1;
        if (200..300).contains(&response.status) {
            if let Some(app) = response.header("x-served-by") {
                *lock(&self.served_by).entry(app.to_owned()).or_default() += 1;
            }
        }
        if response.status == 403 {
            *lock(&self.denied_by) = response.header("weft-authz-policy").map(str::to_owned);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One calling loop.
pub struct Caller {
    /// The caller's sidecar outbound listener, the app's `HTTP_PROXY`.
    pub proxy: SocketAddr,
    /// `http://orders.shop.svc.cluster.local/orders`: each request adds `/<n>`.
    pub url: String,
    pub per_second: f64,
    pub calls: Arc<Calls>,
}

impl Caller {
    /// Calls until `stop`, at `per_second` (sequentially: a slow answer delays the next
    /// call, it never piles calls up).
    pub fn start(self, stop: Arc<AtomicBool>) -> JoinHandle<()> {
        thread::spawn(move || {
            let period = Duration::from_secs_f64(1.0 / self.per_second.max(0.01));
            let mut next = Instant::now();
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                if next > now {
                    thread::sleep((next - now).min(Duration::from_millis(100)));
                    continue;
                }
                // Fallen far behind (a stall): start the schedule afresh instead of bursting.
                next = if now - next > Duration::from_secs(1) {
                    now + period
                } else {
                    next + period
                };
                n += 1;
                self.calls.sent.fetch_add(1, Ordering::Relaxed);
                let url = format!("{}/{n}", self.url);
                self.calls
                    .record(http::get(self.proxy, &url, REQUEST_TIMEOUT));
            }
        })
    }
}
