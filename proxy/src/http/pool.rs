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

struct Idle {
    tx: http1::SendRequest<Body>,
    opened: Instant,
    since: Instant,
}

pub struct Pool {
    idle: Mutex<HashMap<Upstream, Vec<Idle>>>,
    h2: Mutex<HashMap<Upstream, Arc<H2Slot>>>,
    /// The workload identity meshed upstreams are reached with.
    tls: SharedTls,
    max_idle_per_target: usize,
    idle_timeout: Duration,
}

impl Pool {
    pub fn new(tls: SharedTls) -> Arc<Self> {
        let pool = Arc::new(Pool {
            idle: Mutex::default(),
            h2: Mutex::default(),
            tls,
            max_idle_per_target: DEFAULT_MAX_IDLE_PER_TARGET,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        });
        tokio::spawn(sweep(Arc::downgrade(&pool)));
        pool
    }

    /// Sends `req` to `target`, reusing a connection when one is free.
    pub async fn send(
        self: &Arc<Self>,
        target: &Upstream,
        version: Version,
        req: Request<Body>,
        connect_timeout: Duration,
    ) -> Result<Response<Body>, ProxyError> {
        match version {
            Version::Http1 => self.send_http1(target, req, connect_timeout).await,
            Version::Http2 => self.send_http2(target, req, connect_timeout).await,
        }
    }

    async fn send_http1(
        self: &Arc<Self>,
        target: &Upstream,
        mut req: Request<Body>,
        connect_timeout: Duration,
    ) -> Result<Response<Body>, ProxyError> {
        let upstream_err = |source| ProxyError::Upstream {
            target: target.to_string(),
            source,
        };
        // Pooled connections first; each may turn out to be closed.
        while let Some((mut tx, opened)) = self.checkout(target) {
            if tx.ready().await.is_err() {
                continue;
            }
            match tx.try_send_request(req).await {
                Ok(rsp) => return Ok(self.pooled_response(target, tx, opened, rsp)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(upstream_err(e.into_error())),
                },
            }
        }
        let io = connect_upstream(target, &self.tls, &[ALPN_HTTP1], connect_timeout).await?;
        let (mut tx, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(upstream_err)?;
        let target_name = target.to_string();
        tokio::spawn(async move {
            let target = target_name;
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(%error, %target, "upstream HTTP/1 connection ended with an error");
            }
        });
        let rsp = tx.send_request(req).await.map_err(upstream_err)?;
        Ok(self.pooled_response(target, tx, Instant::now(), rsp))
    }

    /// Arranges for `tx` to return to the pool once `rsp`'s body is done.
    fn pooled_response(
        self: &Arc<Self>,
        target: &Upstream,
        tx: http1::SendRequest<Body>,
        opened: Instant,
        rsp: Response<Incoming>,
    ) -> Response<Body> {
        use http_body_util::BodyExt;
        if rsp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            // The connection now belongs to the upgraded protocol.
            return rsp.map(|b| b.boxed_unsync());
        }
        let checkin = Checkin {
            pool: Arc::downgrade(self),
            target: target.clone(),
            tx,
            opened,
        };
        rsp.map(|inner| OnEnd::new(inner, move || checkin.run()).boxed_unsync())
    }

    fn checkout(&self, target: &Upstream) -> Option<(http1::SendRequest<Body>, Instant)> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let stack = idle.get_mut(target)?;
        while let Some(entry) = stack.pop() {
            if !entry.tx.is_closed()
                && entry.since.elapsed() < self.idle_timeout
                && entry.opened.elapsed() < DEFAULT_MAX_CONNECTION_AGE
            {
                return Some((entry.tx, entry.opened));
            }
        }
        None
    }

    fn checkin(&self, target: &Upstream, tx: http1::SendRequest<Body>, opened: Instant) {
        if tx.is_closed() || opened.elapsed() >= DEFAULT_MAX_CONNECTION_AGE {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let stack = match idle.get_mut(target) {
            Some(stack) => stack,
            None => idle.entry(target.clone()).or_default(),
        };
        if stack.len() < self.max_idle_per_target {
            stack.push(Idle {
                tx,
                opened,
                since: Instant::now(),
            });
        }
    }

    async fn send_http2(
        &self,
        target: &Upstream,
        req: Request<Body>,
        connect_timeout: Duration,
    ) -> Result<Response<Body>, ProxyError> {
        use http_body_util::BodyExt;
        let upstream_err = |source| ProxyError::Upstream {
            target: target.to_string(),
            source,
        };
        let mut tx = self.h2_sender(target, connect_timeout).await?;
        tx.ready().await.map_err(upstream_err)?;
        let rsp = tx.send_request(req).await.map_err(upstream_err)?;
        Ok(rsp.map(|b| b.boxed_unsync()))
    }

    /// The live HTTP/2 connection to `target`, opening it if needed. At most one attempt runs
    /// per target: requests that arrive meanwhile wait for it and share its outcome, so a cold
    /// burst opens one connection, and a burst at a dead target fails together after one
    /// connect timeout instead of one timeout after another.
    async fn h2_sender(
        &self,
        target: &Upstream,
        connect_timeout: Duration,
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
        let result = open_h2(target, &self.tls, connect_timeout).await;
        slot.attempts.fetch_add(1, Ordering::AcqRel);
        *last_failure = None;
        match result {
            Ok(tx) => {
                *slot.live.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((tx.clone(), Instant::now()));
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
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|_, stack| {
            stack.retain(|e| {
                !e.tx.is_closed()
                    && e.since.elapsed() < self.idle_timeout
                    && e.opened.elapsed() < DEFAULT_MAX_CONNECTION_AGE
            });
            !stack.is_empty()
        });
        drop(idle);
        // A slot whose connection is being opened has no live sender yet but must stay: the
        // opener stores the new connection in it.
        self.h2
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, slot| slot.live().is_some() || slot.connecting.try_lock().is_err());
    }

    #[cfg(test)]
    pub fn idle_count(&self, target: &Upstream) -> usize {
        self.idle.lock().unwrap().get(target).map_or(0, Vec::len)
    }
}

async fn open_h2(
    target: &Upstream,
    tls: &SharedTls,
    connect_timeout: Duration,
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
        if let Err(error) = conn.await {
            tracing::debug!(%error, %target, "upstream HTTP/2 connection ended with an error");
        }
    });
    Ok(tx)
}

/// One target's HTTP/2 connection, and the lock that serializes attempts to open it.
#[derive(Default)]
struct H2Slot {
    /// The connection and when it was opened.
    live: Mutex<Option<(http2::SendRequest<Body>, Instant)>>,
    /// Held while an attempt runs; holds the failure of the last attempt, if it failed.
    connecting: tokio::sync::Mutex<Option<ConnectError>>,
    /// Finished attempts, so a waiter can tell that one ended while it waited.
    attempts: AtomicU64,
}

impl H2Slot {
    fn live(&self) -> Option<http2::SendRequest<Body>> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        // A retired connection stays open until its streams finish, then hyper closes it once
        // its last sender is gone.
        live.as_ref()
            .filter(|(tx, opened)| !tx.is_closed() && opened.elapsed() < DEFAULT_MAX_CONNECTION_AGE)
            .map(|(tx, _)| tx.clone())
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
    tx: http1::SendRequest<Body>,
    opened: Instant,
}

impl Checkin {
    fn run(self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.checkin(&self.target, self.tx, self.opened);
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
            .send(target, Version::Http1, req, Duration::from_secs(1))
            .await
            .unwrap();
        // Reading the body to the end returns the connection to the pool.
        rsp.into_body().collect().await.unwrap();
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
