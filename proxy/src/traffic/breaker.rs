//! Per-Service circuit breaking: limits on the connections, pending requests and concurrent
//! requests the proxy holds towards one Service (`TrafficPolicy.circuitBreaker`, Envoy's
//! thresholds of the same names).
//!
//! A request over a limit is refused at once, never queued: the caller answers 503 and
//! counts the overflow under [`Overflow::as_str`]. Queueing would only move the pile-up
//! from the upstream into this proxy's memory, and a fast 503 lets the caller's retries and
//! its own callers react. Each admitted unit holds a permit that gives its place back when
//! dropped, so a cancelled request or a closed connection can never leak capacity.
//!
//! The counters and limits are atomics: taking a permit is one compare-and-swap, and a
//! policy push changes the limits under requests in flight ([`ServiceBreaker::update`]).
//!
//! The one wait: a request that needs a new connection while the Service is at
//! `max_connections` waits, holding a pending permit, for a connection to close or return
//! to the pool idle ([`ServiceBreaker::connection_available`]), bounded by the connect
//! timeout. That is what `max_pending_requests` bounds (as in Envoy, a request waiting for a
//! connection being opened for it is pending too). The pool does the waiting
//! (`crate::http::pool`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use weft_api::proto::discovery::v1 as pb;

/// Connections to the Service's endpoints, open or opening. Envoy's default, like the two
/// below: far above what one sidecar needs for a healthy Service (a pod rarely sends
/// thousands of concurrent requests to one Service), so the limit never shapes normal
/// traffic, but it stops a stuck upstream from absorbing every file descriptor and megabyte
/// the proxy has.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Requests waiting for a connection to become available.
pub const DEFAULT_MAX_PENDING: usize = 1024;
/// Requests in flight to the Service (sent and not yet answered, streamed or failed).
pub const DEFAULT_MAX_REQUESTS: usize = 1024;

/// A Service's limits. 0 refuses everything (Envoy's meaning, and a way to shut a Service's
/// traffic off); leave a field out of the policy for the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_pending: usize,
    pub max_requests: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_pending: DEFAULT_MAX_PENDING,
            max_requests: DEFAULT_MAX_REQUESTS,
        }
    }
}

impl Limits {
    /// The limits a `TrafficPolicy` gives; absent fields (or no policy) take the defaults.
    pub fn from_proto(proto: Option<&pb::CircuitBreaker>) -> Self {
        let default = Limits::default();
        let Some(proto) = proto else {
            return default;
        };
        let limit = |value: Option<u32>, default: usize| {
            value.map_or(default, |v| usize::try_from(v).unwrap_or(usize::MAX))
        };
        Limits {
            max_connections: limit(proto.max_connections, default.max_connections),
            max_pending: limit(proto.max_pending_requests, default.max_pending),
            max_requests: limit(proto.max_requests, default.max_requests),
        }
    }
}

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Overflow {
    #[error("the Service has too many requests in flight (circuit breaker: max_requests)")]
    Requests,
    #[error("the Service has too many requests waiting for a connection (circuit breaker: max_pending_requests)")]
    Pending,
    #[error("the Service has too many connections (circuit breaker: max_connections)")]
    Connections,
}

impl Overflow {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::Requests => "requests",
            Overflow::Pending => "pending",
            Overflow::Connections => "connections",
        }
    }
}

/// One Service's breaker. Cheap to clone; clones share the counters.
#[derive(Clone, Debug, Default)]
pub struct ServiceBreaker {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    requests: Gauge,
    pending: Gauge,
    connections: Gauge,
    /// Woken when a connection closes, returns to the pool idle, or the limits change.
    available: tokio::sync::Notify,
}

impl Inner {
    fn gauge(&self, which: Overflow) -> &Gauge {
        match which {
            Overflow::Requests => &self.requests,
            Overflow::Pending => &self.pending,
            Overflow::Connections => &self.connections,
        }
    }
}

/// A count of admitted units and its limit.
#[derive(Debug, Default)]
struct Gauge {
    active: AtomicUsize,
    limit: AtomicUsize,
}

impl Gauge {
    fn try_acquire(&self) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |active| {
                (active < limit).then_some(active + 1)
            })
            .is_ok()
    }

    fn release(&self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
    }

    fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
}

impl ServiceBreaker {
    pub fn new(limits: Limits) -> Self {
        let breaker = ServiceBreaker::default();
        breaker.update(limits);
        breaker
    }

    /// Changes the limits for what is admitted from now on. Lowering one below what is
    /// already admitted refuses new units until enough permits are dropped; nothing in
    /// flight is cut.
    pub fn update(&self, limits: Limits) {
        let inner = &self.inner;
        inner
            .requests
            .limit
            .store(limits.max_requests, Ordering::Relaxed);
        inner
            .pending
            .limit
            .store(limits.max_pending, Ordering::Relaxed);
        inner
            .connections
            .limit
            .store(limits.max_connections, Ordering::Relaxed);
        inner.available.notify_waiters();
    }

    pub fn limits(&self) -> Limits {
        let inner = &self.inner;
        Limits {
            max_connections: inner.connections.limit.load(Ordering::Relaxed),
            max_pending: inner.pending.limit.load(Ordering::Relaxed),
            max_requests: inner.requests.limit.load(Ordering::Relaxed),
        }
    }

    /// Admits a request to the Service: hold the permit until its response ends or it fails.
    pub fn try_request(&self) -> Result<RequestPermit, Overflow> {
        self.try_acquire(Overflow::Requests)
            .map(|_held| RequestPermit { _held })
    }

    /// Admits a request to wait for a connection: hold the permit while it waits.
    pub fn try_pending(&self) -> Result<PendingPermit, Overflow> {
        self.try_acquire(Overflow::Pending)
            .map(|_held| PendingPermit { _held })
    }

    /// Admits a new connection: the connection holds the permit until it closes.
    pub fn try_connection(&self) -> Result<ConnectionPermit, Overflow> {
        self.try_acquire(Overflow::Connections)
            .map(|_held| ConnectionPermit { _held })
    }

    /// Resolves once a connection to the Service closes, returns idle to the pool, or the
    /// limits change. Create it (and `enable` it) before checking, so a release between
    /// the check and the wait is not missed.
    pub fn connection_available(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.available.notified()
    }

    /// Whether `other` is a handle on this same breaker.
    pub fn same(&self, other: &ServiceBreaker) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// A connection to one of the Service's endpoints went back to the pool, idle.
    pub fn connection_returned(&self) {
        self.inner.available.notify_waiters();
    }

    /// Requests admitted and not yet released.
    pub fn requests(&self) -> usize {
        self.inner.requests.active()
    }

    pub fn pending(&self) -> usize {
        self.inner.pending.active()
    }

    pub fn connections(&self) -> usize {
        self.inner.connections.active()
    }

    fn try_acquire(&self, which: Overflow) -> Result<Permit, Overflow> {
        if self.inner.gauge(which).try_acquire() {
            Ok(Permit {
                inner: self.inner.clone(),
                which,
            })
        } else {
            Err(which)
        }
    }
}

/// A place under one of the limits, given back on drop.
#[derive(Debug)]
struct Permit {
    inner: Arc<Inner>,
    which: Overflow,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.inner.gauge(self.which).release();
        if self.which == Overflow::Connections {
            self.inner.available.notify_waiters();
        }
    }
}

/// A request's place under `max_requests`.
#[derive(Debug)]
pub struct RequestPermit {
    _held: Permit,
}

/// A waiting request's place under `max_pending`.
#[derive(Debug)]
pub struct PendingPermit {
    _held: Permit,
}

/// A connection's place under `max_connections`.
#[derive(Debug)]
pub struct ConnectionPermit {
    _held: Permit,
}

#[cfg(test)]
#[path = "tests/breaker.rs"]
mod tests;
