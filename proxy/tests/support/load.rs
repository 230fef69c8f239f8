//! Continuous, bounded load through a mesh, counting every failure instead of panicking on
//! it: HTTP/1.1 requests on new client connections, WebSocket upgrades, and opaque TCP echo
//! connections. Each worker stops by itself after a time limit or an operation count.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{get, pattern, within};

/// One request or connection, start to end, fails after this long.
pub const OP_LIMIT: Duration = Duration::from_secs(5);
/// Pause between one worker's operations: continuous load that leaves CPU for the rest of a
/// parallel test run.
pub const PAUSE: Duration = Duration::from_millis(5);
/// A worker stops after this many operations, whatever the time.
pub const MAX_OPS_PER_WORKER: u64 = 5_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An HTTP/1.1 request on a new client connection.
    Http,
    /// A WebSocket upgrade on a new client connection, then an echo over it. Between proxies
    /// an upgrade gets an mTLS connection of its own.
    Upgrade,
    /// An opaque TCP connection to an echo server.
    Tcp,
}

pub const KINDS: [Kind; 3] = [Kind::Http, Kind::Upgrade, Kind::Tcp];
/// The workers: two of each kind.
const WORKERS: [Kind; 6] = [
    Kind::Http,
    Kind::Http,
    Kind::Upgrade,
    Kind::Upgrade,
    Kind::Tcp,
    Kind::Tcp,
];

/// Where the load goes.
#[derive(Debug, Clone, Copy)]
pub struct Targets {
    /// HTTP requests and upgrades: a listener leading to an [`super::Upstream`].
    pub http: SocketAddr,
    /// Opaque connections: a listener leading to a [`super::TcpBehavior::Echo`] server.
    pub tcp: SocketAddr,
}

// ---------------------------------------------------------------------------------------------
// One operation of each kind; a failure is returned, never panicked, so the load can count it
// ---------------------------------------------------------------------------------------------

async fn bounded(fut: impl std::future::Future<Output = Result<(), String>>) -> Result<(), String> {
    tokio::time::timeout(OP_LIMIT, fut)
        .await
        .unwrap_or_else(|_| Err(format!("no result within {OP_LIMIT:?}")))
}

/// One HTTP/1.1 request on a new client connection; the app must answer 200.
pub async fn http_once(addr: SocketAddr, n: u64) -> Result<(), String> {
    bounded(async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let rsp = tx
            .send_request(get(&format!("/load/{n}")))
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = rsp.status();
        let from_app = rsp.headers().contains_key("x-upstream");
        let error = rsp.headers().get("weft-proxy-error").cloned();
        let body = rsp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        if status != StatusCode::OK || !from_app {
            return Err(format!(
                "{status} {error:?} {:?}",
                String::from_utf8_lossy(&body)
            ));
        }
        Ok(())
    })
    .await
}

/// A WebSocket upgrade (`/ws` on an [`super::Upstream`]) on a new client connection, then
/// an echo over the upgraded connection.
pub async fn upgrade_once(addr: SocketAddr, n: u64) -> Result<(), String> {
    bounded(async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .write_all(
                format!(
                    "GET /ws HTTP/1.1\r\nHost: test.local\r\nConnection: Upgrade\r\n\
                     Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                     Sec-WebSocket-Version: 13\r\nx-n: {n}\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        // Byte by byte, so nothing past the head is consumed.
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                Ok(_) => {
                    return Err(format!(
                        "closed before the response head: {:?}",
                        String::from_utf8_lossy(&head)
                    ))
                }
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        if !head.starts_with(b"HTTP/1.1 101") {
            return Err(format!(
                "not upgraded: {:?}",
                String::from_utf8_lossy(&head)
            ));
        }
        echo_check(&mut stream, n).await
    })
    .await
}

/// An opaque TCP connection to an echo server.
pub async fn tcp_once(addr: SocketAddr, n: u64) -> Result<(), String> {
    bounded(async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        echo_check(&mut stream, n).await
    })
    .await
}

/// Writes a payload (never starting like TLS or HTTP) and expects it back byte for byte.
async fn echo_check(stream: &mut TcpStream, n: u64) -> Result<(), String> {
    let mut payload = format!("load {n} ").into_bytes();
    payload.extend(pattern(n as usize, 512));
    stream
        .write_all(&payload)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0u8; payload.len()];
    stream
        .read_exact(&mut back)
        .await
        .map_err(|e| format!("echo read: {e}"))?;
    if back != payload {
        return Err("the echo differs".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Workers and counts
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Counter {
    ok: AtomicU64,
    failed: AtomicU64,
    /// (last success, longest time without one)
    gap: Mutex<(Option<Instant>, Duration)>,
}

/// The counts of a running (or finished) load.
#[derive(Default)]
pub struct Load {
    counters: [Counter; 3],
    /// The first few failures, saying what and when.
    failures: Mutex<Vec<String>>,
    stop: AtomicBool,
}

/// Counts at one moment, per kind: (ok, failed).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Tally([(u64, u64); 3]);

impl Tally {
    pub fn ok(&self, kind: Kind) -> u64 {
        self.0[kind as usize].0
    }

    pub fn failed(&self) -> u64 {
        self.0.iter().map(|(_, failed)| failed).sum()
    }

    pub fn total(&self) -> u64 {
        self.0.iter().map(|(ok, failed)| ok + failed).sum()
    }

    /// What happened between `earlier` and this one.
    pub fn since(&self, earlier: &Tally) -> Tally {
        let mut out = *self;
        for (now, then) in out.0.iter_mut().zip(earlier.0) {
            *now = (now.0 - then.0, now.1 - then.1);
        }
        out
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [http, upgrade, tcp] = self.0;
        write!(
            f,
            "http {}/{} failed, upgrade {}/{} failed, opaque tcp {}/{} failed",
            http.1,
            http.0 + http.1,
            upgrade.1,
            upgrade.0 + upgrade.1,
            tcp.1,
            tcp.0 + tcp.1
        )
    }
}

/// Load being generated; [`LoadRun::stop`] ends it.
pub struct LoadRun {
    load: Arc<Load>,
    workers: Vec<JoinHandle<()>>,
    started: Instant,
}

impl Load {
    /// Starts the workers; each stops by itself after `limit` or `MAX_OPS_PER_WORKER`
    /// operations, or when [`LoadRun::stop`] is called.
    pub fn start(targets: Targets, limit: Duration) -> LoadRun {
        let load = Arc::new(Load::default());
        let started = Instant::now();
        let deadline = started + limit;
        let workers = WORKERS
            .iter()
            .enumerate()
            .map(|(worker, &kind)| {
                let load = load.clone();
                tokio::spawn(async move {
                    let mut n = 0;
                    while !load.stop.load(Ordering::Relaxed)
                        && Instant::now() < deadline
                        && n < MAX_OPS_PER_WORKER
                    {
                        // Unique per worker and operation, for the upstream's logs.
                        let id = (worker as u64) << 32 | n;
                        let result = match kind {
                            Kind::Http => http_once(targets.http, id).await,
                            Kind::Upgrade => upgrade_once(targets.http, id).await,
                            Kind::Tcp => tcp_once(targets.tcp, id).await,
                        };
                        load.record(kind, result, started);
                        n += 1;
                        tokio::time::sleep(PAUSE).await;
                    }
                })
            })
            .collect();
        LoadRun {
            load,
            workers,
            started,
        }
    }

    fn record(&self, kind: Kind, result: Result<(), String>, started: Instant) {
        let counter = &self.counters[kind as usize];
        match result {
            Ok(()) => {
                counter.ok.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                let mut gap = counter.gap.lock().unwrap();
                let since = now - gap.0.unwrap_or(started);
                gap.1 = gap.1.max(since);
                gap.0 = Some(now);
            }
            Err(error) => {
                counter.failed.fetch_add(1, Ordering::Relaxed);
                let mut failures = self.failures.lock().unwrap();
                if failures.len() < 20 {
                    failures.push(format!("{kind:?} at {:?}: {error}", started.elapsed()));
                }
            }
        }
    }

    pub fn tally(&self) -> Tally {
        Tally(self.counters.each_ref().map(|c| {
            (
                c.ok.load(Ordering::Relaxed),
                c.failed.load(Ordering::Relaxed),
            )
        }))
    }

    /// The longest stretch without a success of `kind`.
    pub fn longest_gap(&self, kind: Kind) -> Duration {
        self.counters[kind as usize].gap.lock().unwrap().1
    }

    /// Panics, listing the first failures, unless `tally` counts none.
    pub fn assert_no_failures(&self, tally: &Tally) {
        // Copied out first: a panic while holding the lock would poison it for the workers.
        let failures = self.failures.lock().unwrap().join("\n");
        assert_eq!(tally.failed(), 0, "{tally}; first failures:\n{failures}");
    }
}

impl LoadRun {
    pub fn tally(&self) -> Tally {
        self.load.tally()
    }

    pub fn load(&self) -> &Load {
        &self.load
    }

    /// Stops the workers (each finishes its current operation, bounded by `OP_LIMIT`);
    /// returns the counts and how long the load ran.
    pub async fn stop(self) -> (Arc<Load>, Duration) {
        self.load.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            within(OP_LIMIT * 2, "a load worker to stop", worker)
                .await
                .expect("load worker");
        }
        // The stretch from the last success to the end counts too.
        let end = Instant::now();
        for counter in &self.load.counters {
            let mut gap = counter.gap.lock().unwrap();
            gap.1 = gap.1.max(end - gap.0.unwrap_or(self.started));
        }
        (self.load, self.started.elapsed())
    }
}
