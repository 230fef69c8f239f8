//! Upstream connections, reused across requests and client connections.
//!
//! HTTP/1.1: a stack of idle connections per target address. A connection goes back on the
//! stack only when its response body has been read to the end (before that, HTTP/1.1 cannot
//! carry another request); one whose body is abandoned is closed instead. HTTP/2: one shared,
//! multiplexed connection per target, replaced when it closes.
//!
//! A request that finds its pooled connection closed before the request could be written is
//! sent again on a fresh connection: that race (the server closed an idle connection just as
//! we picked it) is the one failure a client can never cause, so it must never surface.
//!
//! A call to a meshed Service brings the Service's circuit breaker
//! ([`ConnectSettings::limits`]): every connection to its endpoints holds a place under
//! `max_connections` until it closes, and a request waiting for a connection (being opened
//! for it, or freed when the Service is at its limit) holds a place under
//! `max_pending_requests`. At the connection limit a request first takes an idle connection
//! if one comes back, else waits for one to close, for at most the connect timeout; then it
//! is refused (503, `overflow-connections`). Connections to an endpoint that two Services
//! share are pooled once, and count against the Service that opened them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;

use super::body::OnEnd;
use super::error::ProxyError;
use super::Body;
use crate::connect::{connect_upstream, ConnectError};
use crate::tls::{SharedTls, Upstream, ALPN_H2, ALPN_HTTP1};
use crate::traffic::breaker::{ConnectionPermit, Overflow, PendingPermit, ServiceBreaker};

/// Idle connections kept per target. Enough for a busy caller's steady concurrency; beyond
/// it, connections are closed rather than hoarded by one sidecar.
pub const DEFAULT_MAX_IDLE_PER_TARGET: usize = 64;
/// Close pooled connections unused this long: below the 120 s+ idle timeouts common in
/// servers and load balancers, so we close first rather than race their close.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http1,
    Http2,
}

/// A connection is retired after this long, busy or not: it bounds how long a connection
/// authenticated by a certificate that has since expired, or by a root since dropped from the
/// trust bundle, keeps carrying requests. Reconnecting to a peer every few minutes costs one
/// handshake, which is nothing next to the requests it carried.
pub const DEFAULT_MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);

/// What a request brings to the pool besides its target: the timeouts and limits of the
/// Service it calls, or the proxy's own for everything else.
#[derive(Clone, Copy)]
pub struct ConnectSettings<'a> {
    /// Bounds opening a connection (TCP and TLS), and separately the wait for a connection
    /// when the Service is at its connection limit.
    pub connect_timeout: Duration,
    /// How long a connection this request opens or returns may sit unused in the pool.
    pub idle_timeout: Duration,
    /// The called Service's limits; `None` for traffic that is not a call to a Service.
    pub limits: Option<ServiceLimits<'a>>,
}

impl ConnectSettings<'_> {
    /// No Service limits, the pool's idle timeout.
    pub fn plain(connect_timeout: Duration) -> ConnectSettings<'static> {
        ConnectSettings {
            connect_timeout,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            limits: None,
        }
    }
}

/// A Service's circuit breaker and its name for the 503.
#[derive(Clone, Copy)]
pub struct ServiceLimits<'a> {
    pub breaker: &'a ServiceBreaker,
    /// `namespace/name:port`, as in metrics.
    pub target: &'a str,
}

impl ServiceLimits<'_> {
    fn overflow(&self, limit: Overflow) -> ProxyError {
        ProxyError::Overflow {
            target: self.target.to_owned(),
            limit,
        }
    }

    /// A place for a request waiting for a connection.
    fn pending(&self) -> Result<PendingPermit, ProxyError> {
        self.breaker.try_pending().map_err(|l| self.overflow(l))
    }
}

struct Idle {
    tx: http1::SendRequest<Body>,
    opened: Instant,
    since: Instant,
    idle_timeout: Duration,
    /// Told when the connection goes back to the pool: a request may be waiting for it.
    breaker: Option<ServiceBreaker>,
}

impl Idle {
    /// `now` is passed in so that a caller checking several connections (and this, which
    /// checks two ages) reads the clock once.
    fn usable(&self, now: Instant) -> bool {
        !self.tx.is_closed()
            && now.saturating_duration_since(self.since) < self.idle_timeout
            && now.saturating_duration_since(self.opened) < DEFAULT_MAX_CONNECTION_AGE
    }
}

pub struct Pool {
    idle: Mutex<HashMap<Upstream, Vec<Idle>>>,
    h2: Mutex<HashMap<Upstream, Arc<H2Slot>>>,
    /// The workload identity meshed upstreams are reached with.
    tls: SharedTls,
    max_idle_per_target: usize,
}

impl Pool {
    pub fn new(tls: SharedTls) -> Arc<Self> {
        let pool = Arc::new(Pool {
            idle: Mutex::default(),
            h2: Mutex::default(),
            tls,
            max_idle_per_target: DEFAULT_MAX_IDLE_PER_TARGET,
        });
        tokio::spawn(sweep(Arc::downgrade(&pool)));
        pool
    }

    /// Sends `req` to `target`, reusing a connection when one is free. (The forwarding path
    /// calls [`send_http1`](Self::send_http1) or [`send_http2`](Self::send_http2) directly.)
    pub async fn send(
        self: &Arc<Self>,
        target: &Upstream,
        version: Version,
        req: Request<Body>,
        settings: &ConnectSettings<'_>,
    ) -> Result<Response<Body>, ProxyError> {
        match version {
            Version::Http1 => self.send_http1(target, req, settings).await,
            Version::Http2 => self.send_http2(target, req, settings).await,
        }
    }

    /// [`send`](Self::send) over HTTP/1.1.
    pub async fn send_http1(
        self: &Arc<Self>,
        target: &Upstream,
        mut req: Request<Body>,
        settings: &ConnectSettings<'_>,
    ) -> Result<Response<Body>, ProxyError> {
        let upstream_err = |source| ProxyError::Upstream {
            target: target.to_string(),
            source,
        };
        let mut pending = None;
        let mut wait_until = None;
        let permit = loop {
            // Registered before looking, so a connection released between the look and the
            // wait still wakes this request.
            let available = settings.limits.map(|l| l.breaker.connection_available());
            tokio::pin!(available);
            if let Some(available) = available.as_mut().as_pin_mut() {
                available.enable();
            }
            // Pooled connections first; each may turn out to be closed.
            while let Some(conn) = self.checkout(target) {
                let Idle { mut tx, opened, .. } = conn;
                // Ready at once, or not idle after all: a server may answer before it has
                // read the whole request body, so a connection can come back while its
                // previous request still streams. Waiting for that body would tie this
                // request to another client's pace; dropping the handle lets the
                // connection close once that exchange ends.
                let ready = std::future::poll_fn(|cx| std::task::Poll::Ready(tx.poll_ready(cx)));
                if !matches!(ready.await, std::task::Poll::Ready(Ok(()))) {
                    continue;
                }
                match tx.try_send_request(req).await {
                    Ok(rsp) => return Ok(self.pooled_response(target, tx, opened, rsp, settings)),
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => req = unsent,
                        None => return Err(upstream_err(e.into_error())),
                    },
                }
            }
            let (Some(limits), Some(available)) = (settings.limits, available.as_pin_mut()) else {
                break None;
            };
            match limits.breaker.try_connection() {
                Ok(permit) => break Some(permit),
                Err(_) => {
                    if pending.is_none() {
                        pending = Some(limits.pending()?);
                    }
                    // An idle connection to another of the Service's endpoints would hold
                    // its place until it idles out: close it, and this request takes the
                    // place when its connection task ends.
                    self.evict_idle(limits.breaker);
                    let deadline = *wait_until
                        .get_or_insert_with(|| Instant::now() + settings.connect_timeout);
                    if tokio::time::timeout_at(deadline, available).await.is_err() {
                        return Err(limits.overflow(Overflow::Connections));
                    }
                }
            }
        };
        // Waiting for the connection to open counts as pending.
        if pending.is_none() {
            pending = settings.limits.map(|l| l.pending()).transpose()?;
        }
        // Boxed: opening a connection is rare next to reusing one, and its futures (TCP
        // connect, TLS handshake, hyper's handshake) take KiBs that would otherwise be part
        // of every request's future, and be copied with it.
        let mut tx = Box::pin(self.open_http1(target, settings, permit, pending)).await?;
        let rsp = tx.send_request(req).await.map_err(upstream_err)?;
        Ok(self.pooled_response(target, tx, Instant::now(), rsp, settings))
    }

    /// Opens a new HTTP/1.1 connection to `target` and spawns its task, which holds `permit`
    /// until the connection closes. `pending` is released once the connection is open.
    async fn open_http1(
        &self,
        target: &Upstream,
        settings: &ConnectSettings<'_>,
        permit: Option<ConnectionPermit>,
        pending: Option<PendingPermit>,
    ) -> Result<http1::SendRequest<Body>, ProxyError> {
        let io =
            connect_upstream(target, &self.tls, &[ALPN_HTTP1], settings.connect_timeout).await?;
        let (tx, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| ProxyError::Upstream {
                target: target.to_string(),
                source,
            })?;
        drop(pending);
        let target_name = target.to_string();
        tokio::spawn(async move {
            // The connection's place under the Service's limit, until it closes.
            let _permit = permit;
            let target = target_name;
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(%error, %target, "upstream HTTP/1 connection ended with an error");
            }
        });
        Ok(tx)
    }

    /// Arranges for `tx` to return to the pool once `rsp`'s body is done.
    fn pooled_response(
        self: &Arc<Self>,
        target: &Upstream,
        tx: http1::SendRequest<Body>,
        opened: Instant,
        rsp: Response<Incoming>,
        settings: &ConnectSettings<'_>,
    ) -> Response<Body> {
        use http_body_util::BodyExt;
        if rsp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            // The connection now belongs to the upgraded protocol.
            return rsp.map(|b| b.boxed_unsync());
        }
        let checkin = Checkin {
            pool: Arc::downgrade(self),
            target: target.clone(),
            idle: Idle {
                tx,
                opened,
                since: opened,
                idle_timeout: settings.idle_timeout,
                breaker: settings.limits.map(|l| l.breaker.clone()),
            },
        };
        rsp.map(|inner| OnEnd::new(inner, move || checkin.run()).boxed_unsync())
    }

    fn checkout(&self, target: &Upstream) -> Option<Idle> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let stack = idle.get_mut(target)?;
        let now = Instant::now();
        while let Some(entry) = stack.pop() {
            if entry.usable(now) {
                return Some(entry);
            }
        }
        None
    }

    /// Closes the oldest idle connection that counts against `breaker`, if there is one.
    fn evict_idle(&self, breaker: &ServiceBreaker) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let mut oldest: Option<(&Upstream, usize, Instant)> = None;
        for (target, stack) in idle.iter() {
            for (i, entry) in stack.iter().enumerate() {
                let counts = entry.breaker.as_ref().is_some_and(|b| b.same(breaker));
                if counts && oldest.is_none_or(|(_, _, since)| entry.since < since) {
                    oldest = Some((target, i, entry.since));
                }
            }
        }
        let Some((target, i, _)) = oldest else {
            return;
        };
        let target = target.clone();
        if let Some(stack) = idle.get_mut(&target) {
            // Dropping the sender ends the connection task, which drops its permit.
            drop(stack.remove(i));
        }
    }

    fn checkin(&self, target: &Upstream, mut entry: Idle) {
        let now = Instant::now();
        if entry.tx.is_closed()
            || now.saturating_duration_since(entry.opened) >= DEFAULT_MAX_CONNECTION_AGE
        {
            return;
        }
        entry.since = now;
        let breaker = entry.breaker.clone();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let stack = match idle.get_mut(target) {
            Some(stack) => stack,
            None => idle.entry(target.clone()).or_default(),
        };
        if stack.len() < self.max_idle_per_target {
            stack.push(entry);
        }
        drop(idle);
        if let Some(breaker) = breaker {
            breaker.connection_returned();
        }
    }

    /// [`send`](Self::send) over HTTP/2.
    pub async fn send_http2(
        &self,
        target: &Upstream,
        req: Request<Body>,
        settings: &ConnectSettings<'_>,
    ) -> Result<Response<Body>, ProxyError> {
        use http_body_util::BodyExt;
        let upstream_err = |source| ProxyError::Upstream {
            target: target.to_string(),
            source,
        };
        let mut tx = self.h2_sender(target, settings).await?;
        tx.ready().await.map_err(upstream_err)?;
        let rsp = tx.send_request(req).await.map_err(upstream_err)?;
        Ok(rsp.map(|b| b.boxed_unsync()))
    }

    /// The live HTTP/2 connection to `target`, opening it if needed. At most one attempt runs
    /// per target: requests that arrive meanwhile wait for it (pending) and share its
    /// outcome, so a cold burst opens one connection, and a burst at a dead target fails
    /// together after one connect timeout instead of one timeout after another.
    async fn h2_sender(
        &self,
        target: &Upstream,
        settings: &ConnectSettings<'_>,
    ) -> Result<http2::SendRequest<Body>, ProxyError> {
        let slot = self
            .h2
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(target)
            .cloned();
        let slot = match slot {
            Some(slot) => slot,
            None => self
                .h2
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(target.clone())
                .or_default()
                .clone(),
        };
        if let Some(tx) = slot.live() {
            return Ok(tx);
        }
        // Boxed: opening is rare, and its future (the lock, the connect, the TLS and HTTP/2
        // handshakes) takes KiBs that every request's future would otherwise carry.
        Box::pin(self.open_h2_slot(&slot, target, settings)).await
    }

    /// Opens `target`'s HTTP/2 connection into `slot`, or waits for the attempt already
    /// under way and shares its outcome (see [`Self::h2_sender`]).
    async fn open_h2_slot(
        &self,
        slot: &H2Slot,
        target: &Upstream,
        settings: &ConnectSettings<'_>,
    ) -> Result<http2::SendRequest<Body>, ProxyError> {
        let _pending = settings.limits.map(|l| l.pending()).transpose()?;
        let seen = slot.attempts.load(Ordering::Acquire);
        let mut last_failure = slot.connecting.lock().await;
        if let Some(tx) = slot.live() {
            return Ok(tx);
        }
        if slot.attempts.load(Ordering::Acquire) != seen {
            if let Some(error) = &*last_failure {
                return Err(error.clone().into());
            }
        }
        let permit = match settings.limits {
            Some(limits) => Some(connection_permit(limits, settings.connect_timeout).await?),
            None => None,
        };
        let result = open_h2(target, &self.tls, settings.connect_timeout, permit).await;
        slot.attempts.fetch_add(1, Ordering::AcqRel);
        *last_failure = None;
        match result {
            Ok(tx) => {
                *slot.live.lock().unwrap_or_else(|e| e.into_inner()) = Some(LiveH2 {
                    tx: tx.clone(),
                    opened: Instant::now(),
                    last_used: Instant::now(),
                    idle_timeout: settings.idle_timeout,
                });
                Ok(tx)
            }
            Err(ProxyError::Connect(error)) => {
                *last_failure = Some(error.clone());
                Err(error.into())
            }
            Err(other) => Err(other),
        }
    }

    fn sweep_once(&self) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|_, stack| {
            stack.retain(|entry| entry.usable(now));
            !stack.is_empty()
        });
        drop(idle);
        // A slot whose connection is being opened has no live sender yet but must stay: the
        // opener stores the new connection in it.
        self.h2
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, slot| slot.keep() || slot.connecting.try_lock().is_err());
    }

    #[cfg(test)]
    pub fn idle_count(&self, target: &Upstream) -> usize {
        self.idle.lock().unwrap().get(target).map_or(0, Vec::len)
    }
}

/// A place under the Service's connection limit, waiting up to `wait` for one to be freed.
async fn connection_permit(
    limits: ServiceLimits<'_>,
    wait: Duration,
) -> Result<ConnectionPermit, ProxyError> {
    let deadline = Instant::now() + wait;
    loop {
        let available = limits.breaker.connection_available();
        tokio::pin!(available);
        available.as_mut().enable();
        if let Ok(permit) = limits.breaker.try_connection() {
            return Ok(permit);
        }
        if tokio::time::timeout_at(deadline, available).await.is_err() {
            return Err(limits.overflow(Overflow::Connections));
        }
    }
}

async fn open_h2(
    target: &Upstream,
    tls: &SharedTls,
    connect_timeout: Duration,
    permit: Option<ConnectionPermit>,
) -> Result<http2::SendRequest<Body>, ProxyError> {
    let io = connect_upstream(target, tls, &[ALPN_H2], connect_timeout).await?;
    let (tx, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(io))
        .await
        .map_err(|source| ProxyError::Upstream {
            target: target.to_string(),
            source,
        })?;
    let target = target.to_string();
    tokio::spawn(async move {
        // The connection's place under the Service's limit, until it closes.
        let _permit = permit;
        if let Err(error) = conn.await {
            tracing::debug!(%error, %target, "upstream HTTP/2 connection ended with an error");
        }
    });
    Ok(tx)
}

/// One target's HTTP/2 connection, and the lock that serializes attempts to open it.
#[derive(Default)]
struct H2Slot {
    live: Mutex<Option<LiveH2>>,
    /// Held while an attempt runs; holds the failure of the last attempt, if it failed.
    connecting: tokio::sync::Mutex<Option<ConnectError>>,
    /// Finished attempts, so a waiter can tell that one ended while it waited.
    attempts: AtomicU64,
}

struct LiveH2 {
    tx: http2::SendRequest<Body>,
    opened: Instant,
    /// When the last request was sent on it.
    last_used: Instant,
    idle_timeout: Duration,
}

impl LiveH2 {
    /// `now` is passed in for the reason given at [`Idle::usable`].
    fn usable(&self, now: Instant) -> bool {
        !self.tx.is_closed()
            && now.saturating_duration_since(self.opened) < DEFAULT_MAX_CONNECTION_AGE
            && now.saturating_duration_since(self.last_used) < self.idle_timeout
    }
}

impl H2Slot {
    /// The connection for one more request, if it may still take one.
    fn live(&self) -> Option<http2::SendRequest<Body>> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        // A retired connection stays open until its streams finish, then hyper closes it once
        // its last sender is gone.
        let now = Instant::now();
        let conn = live.as_mut().filter(|c| c.usable(now))?;
        conn.last_used = now;
        Some(conn.tx.clone())
    }

    /// Whether the sweep keeps the slot; dropping it retires its connection.
    fn keep(&self) -> bool {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.as_ref().is_some_and(|c| c.usable(Instant::now()))
    }
}

/// Closes expired idle connections even for targets nobody calls any more.
async fn sweep(pool: Weak<Pool>) {
    const PERIOD: Duration = Duration::from_secs(30);
    // Not `interval`: its first tick fires at once, and there is nothing to sweep yet.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + PERIOD, PERIOD);
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.sweep_once(),
            None => return,
        }
    }
}

struct Checkin {
    pool: Weak<Pool>,
    target: Upstream,
    idle: Idle,
}

impl Checkin {
    fn run(self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.checkin(&self.target, self.idle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// An HTTP/1.1 server on 127.0.0.1 that counts the connections it accepts.
    async fn counting_server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let counter = accepts.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                            bytes::Bytes::from("ok"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        (addr, accepts)
    }

    async fn get(pool: &Arc<Pool>, target: &Upstream) {
        use http_body_util::BodyExt;
        let req = Request::get("/")
            .body(super::super::error::empty())
            .unwrap();
        let rsp = pool
            .send(
                target,
                Version::Http1,
                req,
                &ConnectSettings::plain(Duration::from_secs(1)),
            )
            .await
            .unwrap();
        // Reading the body to the end returns the connection to the pool.
        rsp.into_body().collect().await.unwrap();
    }

    /// A server that answers before reading the request body hands the connection back
    /// while the body still streams: the next request must not wait for that body.
    #[tokio::test]
    async fn a_connection_still_sending_a_body_is_not_reused() {
        use http_body_util::BodyExt;
        // Answers each connection's first request head at once and then reads on,
        // keeping the connection open, as a server that rejects an upload early does.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let counter = accepts.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let (mut tcp, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = tcp.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                    }
                    let _ = tcp
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                    while tcp.read(&mut buf).await.unwrap_or(0) > 0 {}
                });
            }
        });
        let pool = Pool::new(None);
        let target = Upstream::plain(addr);
        /// A body that never ends (and never sends a byte).
        struct Endless;
        impl http_body::Body for Endless {
            type Data = bytes::Bytes;
            type Error = hyper::Error;
            fn poll_frame(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>>
            {
                std::task::Poll::Pending
            }
        }
        let req = Request::post("/upload")
            .header("transfer-encoding", "chunked")
            .body(Endless.boxed_unsync())
            .unwrap();
        let rsp = pool
            .send(
                &target,
                Version::Http1,
                req,
                &ConnectSettings::plain(Duration::from_secs(1)),
            )
            .await
            .unwrap();
        rsp.into_body().collect().await.unwrap();
        assert_eq!(
            pool.idle_count(&target),
            1,
            "checked in when the response ended"
        );
        tokio::time::timeout(Duration::from_secs(2), get(&pool, &target))
            .await
            .expect("the next request does not wait for the first one's body");
        assert_eq!(
            accepts.load(Ordering::SeqCst),
            2,
            "it took a new connection"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_is_still_retired_at_its_maximum_age() {
        let (addr, accepts) = counting_server().await;
        let pool = Pool::new(None);
        let target = Upstream::plain(addr);
        // A request every minute: never idle long enough to expire, but older and older.
        for _ in 0..5 {
            get(&pool, &target).await;
            tokio::time::advance(Duration::from_secs(60)).await;
        }
        assert_eq!(
            accepts.load(Ordering::SeqCst),
            1,
            "reused while younger than the maximum age"
        );
        get(&pool, &target).await;
        assert_eq!(
            accepts.load(Ordering::SeqCst),
            2,
            "replaced once past the maximum age"
        );
    }
}
