//! Shared pieces of the proxy's integration tests: an in-process proxy with its config file,
//! test upstreams (HTTP/1+2 and raw TCP), clients, raw-socket helpers, and a parser for the
//! Prometheus text exposition on `/metrics`.
//!
//! Everything binds 127.0.0.1 port 0 (or a port just found free), and every wait is bounded:
//! the helpers panic with a message saying what they were waiting for.
#![allow(dead_code)]

pub mod control_plane;
pub mod discovery;
pub mod faulty;
pub mod load;
pub mod pki;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use clap::Parser;
use weft_proxy::bootstrap::{Cli, RunArgs};
use weft_proxy::drain::Drained;
use weft_proxy::Proxy;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every test client and upstream.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// The default bound on any single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------------

/// Awaits `fut`, panicking with `what` if it takes longer than `limit`.
pub async fn within<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Polls `check` every 10 ms until it returns true, panicking with `what` after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("condition not met within {limit:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Ports, files, logs, panics
// ---------------------------------------------------------------------------------------------

/// A loopback address with nothing listening on it (bound, read, released). Used for static
/// listener binds, which need a concrete port, and for "unreachable upstream" targets.
///
/// Never hands out the same port twice in one test process: tests run in parallel, and two
/// of them given the same port would connect to each other's proxies.
pub fn free_addr() -> SocketAddr {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = l.local_addr().expect("local_addr");
        if !handed_out.contains(&addr.port()) {
            handed_out.push(addr.port());
            return addr;
        }
    }
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "weft-proxy-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The proxy's YAML config file, in a directory of its own (the reloader watches the directory).
pub struct ConfigFile {
    dir: TempDir,
    pub path: PathBuf,
}

impl ConfigFile {
    pub fn new(yaml: &str) -> ConfigFile {
        let dir = TempDir::new();
        let path = dir.path().join("weft.yaml");
        std::fs::write(&path, yaml).expect("write config");
        ConfigFile { dir, path }
    }

    /// Replaces the file atomically (write a sibling, rename over), as a ConfigMap update does,
    /// so the reloader never reads half a file.
    pub fn write(&self, yaml: &str) {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let tmp = self.dir.path().join(format!(
            ".weft.yaml.{}",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&tmp, yaml).expect("write config");
        std::fs::rename(&tmp, &self.path).expect("rename config");
    }
}

/// Sends the proxy's logs to the test output when `WEFT_TEST_LOG` is set (e.g.
/// `WEFT_TEST_LOG=weft_proxy=debug cargo test -p weft-proxy --test http1 -- --nocapture`).
pub fn init_logging() {
    if let Ok(filter) = std::env::var("WEFT_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Records every panic raised outside the test files themselves (i.e. in the proxy or its
/// dependencies, where tokio would otherwise swallow it as one failed connection task).
pub fn watch_for_proxy_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let location = info
                .location()
                .map(|l| l.file().to_owned())
                .unwrap_or_default();
            if !location.contains("tests/") && !location.contains("tests\\") {
                PANICS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(format!("{info}"));
            }
            previous(info);
        }));
    });
}

pub fn proxy_panics() -> Vec<String> {
    PANICS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

// ---------------------------------------------------------------------------------------------
// The proxy
// ---------------------------------------------------------------------------------------------

pub struct ProxyBuilder {
    inbound_app: Option<SocketAddr>,
    config: Option<String>,
    grace: Duration,
    log: String,
    args: Vec<String>,
}

/// A proxy in local mode with outbound, inbound and admin listeners on 127.0.0.1 port 0.
pub fn proxy() -> ProxyBuilder {
    ProxyBuilder {
        inbound_app: None,
        config: None,
        grace: Duration::from_secs(5),
        log: "info".into(),
        args: Vec::new(),
    }
}

impl ProxyBuilder {
    pub fn inbound_app(mut self, addr: SocketAddr) -> Self {
        self.inbound_app = Some(addr);
        self
    }

    /// The YAML config file's initial content.
    pub fn config(mut self, yaml: impl Into<String>) -> Self {
        self.config = Some(yaml.into());
        self
    }

    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    pub fn log(mut self, filter: &str) -> Self {
        self.log = filter.into();
        self
    }

    /// More command-line arguments, as `weft-proxy` takes them (e.g. identity flags).
    pub fn args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub async fn start(self) -> TestProxy {
        init_logging();
        let config = self.config.as_deref().map(ConfigFile::new);
        // Parsed like the binary's command line, so every bootstrap setting has its default.
        let mut argv: Vec<String> = [
            "weft-proxy",
            "--mode",
            "local",
            "--outbound-addr",
            "127.0.0.1:0",
            "--inbound-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--workers",
            "1",
        ]
        .map(String::from)
        .into();
        argv.extend(["--log".into(), self.log, "--shutdown-grace".into()]);
        argv.push(format!("{}ms", self.grace.as_millis()));
        if let Some(app) = self.inbound_app {
            argv.extend(["--inbound-app".into(), app.to_string()]);
        }
        if let Some(c) = &config {
            argv.extend(["--config".into(), c.path.display().to_string()]);
        }
        argv.extend(self.args);
        let args: RunArgs = Cli::try_parse_from(&argv)
            .unwrap_or_else(|e| panic!("bad test arguments {argv:?}: {e}"))
            .run;
        // A real filter parser, so `PUT /log-level` tells valid from invalid as in production.
        let set_log_filter = Box::new(|text: &str| {
            tracing_subscriber::EnvFilter::try_new(text)
                .map(drop)
                .map_err(|e| e.to_string())
        });
        let proxy = within(
            WAIT,
            "the proxy to start",
            Proxy::start(args, set_log_filter),
        )
        .await
        .expect("proxy starts");
        TestProxy {
            outbound: proxy.outbound_addrs[0],
            inbound: proxy.inbound_addrs[0],
            admin: proxy.admin_addr,
            proxy,
            config,
        }
    }
}

pub struct TestProxy {
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    pub proxy: Proxy,
    pub config: Option<ConfigFile>,
}

impl TestProxy {
    pub fn config_file(&self) -> &ConfigFile {
        self.config
            .as_ref()
            .expect("proxy started with a config file")
    }

    pub async fn metrics(&self) -> Scrape {
        scrape(self.admin).await
    }

    /// Drains, bounded by the grace period plus a margin.
    pub async fn shutdown(self) -> Drained {
        within(WAIT, "the proxy to drain", self.proxy.shutdown()).await
    }
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

pub fn full(data: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// Deterministic, non-periodic test data: `len` bytes starting at stream offset `offset`.
pub fn pattern(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len)
        .map(|i| {
            let x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            (x >> 56) as u8 ^ (i / 4099) as u8
        })
        .collect()
}

/// A body of `total` pattern bytes in `chunk`-sized frames, of unknown length (so HTTP/1.1
/// sends it chunked).
pub fn chunked_pattern(total: usize, chunk: usize) -> Body {
    PatternBody {
        offset: 0,
        total,
        chunk,
    }
    .boxed_unsync()
}

struct PatternBody {
    offset: usize,
    total: usize,
    chunk: usize,
}

impl http_body::Body for PatternBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.offset >= self.total {
            return Poll::Ready(None);
        }
        let n = self.chunk.min(self.total - self.offset);
        let data = pattern(self.offset, n);
        self.offset += n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(data)))))
    }
}

/// A body fed frame by frame through a channel; it ends when the sender is dropped.
pub fn channel_body() -> (mpsc::Sender<Frame<Bytes>>, Body) {
    let (tx, rx) = mpsc::channel(16);
    (tx, ChannelBody(rx).boxed_unsync())
}

struct ChannelBody(mpsc::Receiver<Frame<Bytes>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

// ---------------------------------------------------------------------------------------------
// Test HTTP upstream
// ---------------------------------------------------------------------------------------------

/// A request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
}

struct UpstreamState {
    name: String,
    accepts: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    gate: watch::Sender<bool>,
    barrier: watch::Sender<HashMap<String, usize>>,
    events: mpsc::UnboundedSender<String>,
}

/// An HTTP/1.1 + HTTP/2 (prior knowledge) server. Every response carries `x-upstream: NAME`.
///
/// | path | response |
/// |---|---|
/// | `/echo` | the request body, streamed back (no length: chunked in HTTP/1.1) |
/// | `/delay/MS` | 200 `slept` after MS milliseconds |
/// | `/gate` | 200 `NAME` once the test calls [`Upstream::open_gate`] |
/// | `/gated-body` | 200, body `first\n` at once and `second\n` after the gate opens |
/// | `/ingest` | reads the body, reporting each frame as an event; 200 with the byte count |
/// | `/barrier/N[/ROUND]` | 200 once N requests for this path wait here together, else 503 after 5 s |
/// | `/grpc` | gRPC-style: `application/grpc`, one data frame, trailers `grpc-status: 0` |
/// | `/ws` | 101 `Upgrade: websocket`, then echoes raw bytes |
/// | `/hop` | 200 with hop-by-hop fields in the response |
/// | `/status/CODE` | that status |
/// | anything else | 200 `NAME` |
pub struct Upstream {
    pub addr: SocketAddr,
    state: Arc<UpstreamState>,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let state = Arc::new(UpstreamState {
            name: name.to_owned(),
            accepts: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            gate: watch::Sender::new(false),
            barrier: watch::Sender::new(HashMap::new()),
            events: events_tx,
        });
        let accept_state = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accept_state.accepts.fetch_add(1, Ordering::SeqCst);
                let state = accept_state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(upstream_handle(state, req).await) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            state,
            events: tokio::sync::Mutex::new(events_rx),
        }
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// TCP connections accepted so far.
    pub fn accepts(&self) -> usize {
        self.state.accepts.load(Ordering::SeqCst)
    }

    /// Every request received so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn seen_path(&self, path: &str) -> Option<Seen> {
        self.seen().into_iter().find(|s| s.uri.path() == path)
    }

    /// Waits until a request for `path` has arrived.
    pub async fn wait_for_path(&self, path: &str) -> Seen {
        let mut found = None;
        eventually(WAIT, &format!("upstream to receive {path}"), || {
            found = self.seen_path(path);
            std::future::ready(found.is_some())
        })
        .await;
        found.unwrap()
    }

    pub fn open_gate(&self) {
        self.state.gate.send_replace(true);
    }

    /// The next event reported by a handler (`/ingest` frames).
    pub async fn next_event(&self) -> String {
        let mut rx = self.events.lock().await;
        within(WAIT, "an upstream event", rx.recv())
            .await
            .expect("upstream alive")
    }
}

async fn upstream_handle(state: Arc<UpstreamState>, mut req: Request<Incoming>) -> Response<Body> {
    state.seen.lock().unwrap().push(Seen {
        method: req.method().clone(),
        uri: req.uri().clone(),
        version: req.version(),
        headers: req.headers().clone(),
    });
    let path = req.uri().path().to_owned();
    let mut segments = path.trim_start_matches('/').splitn(2, '/');
    let (first, arg) = (segments.next().unwrap_or(""), segments.next());
    let mut rsp = match (first, arg) {
        ("echo", _) => Response::new(req.into_body().map_err(BoxError::from).boxed_unsync()),
        ("delay", Some(ms)) => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
            Response::new(full("slept"))
        }
        ("gate", _) => {
            let mut gate = state.gate.subscribe();
            let opened = tokio::time::timeout(WAIT, gate.wait_for(|open| *open))
                .await
                .is_ok();
            if opened {
                Response::new(full(state.name.clone()))
            } else {
                status(StatusCode::GATEWAY_TIMEOUT)
            }
        }
        ("gated-body", _) => {
            let (tx, body) = channel_body();
            let mut gate = state.gate.subscribe();
            tokio::spawn(async move {
                let _ = tx.send(Frame::data(Bytes::from_static(b"first\n"))).await;
                if tokio::time::timeout(WAIT, gate.wait_for(|open| *open))
                    .await
                    .is_ok()
                {
                    let _ = tx.send(Frame::data(Bytes::from_static(b"second\n"))).await;
                }
            });
            Response::new(body)
        }
        ("ingest", _) => {
            let mut body = req.into_body();
            let mut total = 0;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return status(StatusCode::BAD_REQUEST);
                };
                if let Some(data) = frame.data_ref() {
                    total += data.len();
                    let _ = state.events.send(format!("frame {}", data.len()));
                }
            }
            Response::new(full(total.to_string()))
        }
        ("barrier", Some(arg)) => {
            // `/barrier/N` or `/barrier/N/ROUND`: arrivals are counted per path.
            let n: usize = arg.split('/').next().unwrap().parse().unwrap();
            state
                .barrier
                .send_modify(|arrived| *arrived.entry(path.clone()).or_default() += 1);
            let mut arrived = state.barrier.subscribe();
            let together = tokio::time::timeout(
                Duration::from_secs(5),
                arrived.wait_for(|a| a.get(&path).copied().unwrap_or(0) >= n),
            )
            .await
            .is_ok();
            if together {
                Response::new(full("together"))
            } else {
                status(StatusCode::SERVICE_UNAVAILABLE)
            }
        }
        ("grpc", _) => {
            let _ = req.body_mut().collect().await;
            let (tx, body) = channel_body();
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            trailers.insert("grpc-message", "all-good".parse().unwrap());
            tx.send(Frame::data(Bytes::from_static(b"\0\0\0\0\x05hello")))
                .await
                .unwrap();
            tx.send(Frame::trailers(trailers)).await.unwrap();
            drop(tx);
            let mut rsp = Response::new(body);
            rsp.headers_mut()
                .insert("content-type", "application/grpc".parse().unwrap());
            rsp
        }
        ("ws", _) => {
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = on_upgrade.await {
                    let mut io = TokioIo::new(upgraded);
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match io.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if io.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = io.shutdown().await;
                }
            });
            let mut rsp = status(StatusCode::SWITCHING_PROTOCOLS);
            let h = rsp.headers_mut();
            h.insert("upgrade", "websocket".parse().unwrap());
            h.insert("connection", "upgrade".parse().unwrap());
            h.insert("sec-websocket-accept", "test-accept".parse().unwrap());
            rsp
        }
        ("hop", _) => {
            let mut rsp = Response::new(full("hop"));
            let h = rsp.headers_mut();
            h.insert("connection", "x-bar".parse().unwrap());
            h.insert("x-bar", "hop-by-hop".parse().unwrap());
            h.insert("keep-alive", "timeout=5".parse().unwrap());
            h.insert("proxy-connection", "keep-alive".parse().unwrap());
            h.insert("x-end", "end-to-end".parse().unwrap());
            rsp
        }
        ("status", Some(code)) => status(StatusCode::from_u16(code.parse().unwrap()).unwrap()),
        _ => Response::new(full(state.name.clone())),
    };
    rsp.headers_mut()
        .insert("x-upstream", state.name.parse().unwrap());
    rsp
}

fn status(code: StatusCode) -> Response<Body> {
    let mut rsp = Response::new(empty());
    *rsp.status_mut() = code;
    rsp
}

// ---------------------------------------------------------------------------------------------
// Test TCP upstreams
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub enum TcpBehavior {
    /// Echoes every byte; shuts down its write side after the client's EOF.
    Echo,
    /// Reads to the client's EOF, then replies with everything it got plus a suffix.
    ReplyAfterEof(&'static [u8]),
    /// Speaks first: sends the banner on accept, then echoes.
    Banner(&'static [u8]),
    /// Reads whatever arrives first, then hangs up without a word.
    HangUp,
}

pub struct TcpUpstream {
    pub addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
}

impl TcpUpstream {
    pub async fn start(behavior: TcpBehavior) -> TcpUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let counter = accepts.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let behavior = behavior.clone();
                tokio::spawn(async move {
                    match behavior {
                        TcpBehavior::Echo => echo(&mut stream).await,
                        TcpBehavior::ReplyAfterEof(suffix) => {
                            let mut got = Vec::new();
                            if stream.read_to_end(&mut got).await.is_ok() {
                                let _ = stream.write_all(&got).await;
                                let _ = stream.write_all(suffix).await;
                            }
                        }
                        TcpBehavior::Banner(banner) => {
                            if stream.write_all(banner).await.is_ok() {
                                echo(&mut stream).await;
                            }
                        }
                        TcpBehavior::HangUp => {
                            let _ = stream.read(&mut [0u8; 4096]).await;
                        }
                    }
                    let _ = stream.shutdown().await;
                });
            }
        });
        TcpUpstream { addr, accepts }
    }

    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
}

async fn echo(stream: &mut TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// A complete response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub async fn read_reply(rsp: Response<Incoming>) -> Reply {
    let (parts, body) = rsp.into_parts();
    let collected = within(WAIT, "a response body", body.collect())
        .await
        .expect("response body");
    let trailers = collected.trailers().cloned();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

/// A request with a `Host` header (HTTP/1.1 requires one) and the given body.
pub fn request(method: Method, uri: &str, body: Body) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "test.local")
        .body(body)
        .unwrap()
}

pub fn get(uri: &str) -> Request<Body> {
    request(Method::GET, uri, empty())
}

/// One HTTP/1.1 client connection (keep-alive).
pub struct H1Client {
    tx: hyper::client::conn::http1::SendRequest<Body>,
    conn: tokio::task::JoinHandle<()>,
}

impl H1Client {
    pub async fn connect(addr: SocketAddr) -> H1Client {
        let stream = within(WAIT, "connect", TcpStream::connect(addr))
            .await
            .expect("connect to the proxy");
        let (tx, conn) = within(
            WAIT,
            "an HTTP/1 handshake",
            hyper::client::conn::http1::handshake(TokioIo::new(stream)),
        )
        .await
        .expect("HTTP/1 handshake");
        let conn = tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        H1Client { tx, conn }
    }

    /// Sends `req` and returns the response head; the body streams.
    pub async fn send(&mut self, req: Request<Body>) -> Response<Incoming> {
        within(WAIT, "the connection to be ready", self.tx.ready())
            .await
            .expect("connection usable");
        within(WAIT, "a response", self.tx.send_request(req))
            .await
            .expect("response")
    }

    pub async fn call(&mut self, req: Request<Body>) -> Reply {
        let rsp = self.send(req).await;
        read_reply(rsp).await
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        self.call(get(path)).await
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Waits until the server closes the connection.
    pub async fn closed(self, limit: Duration) {
        within(limit, "the server to close the connection", self.conn)
            .await
            .unwrap();
    }
}

/// Sends one request on a new HTTP/1.1 connection.
pub async fn call(addr: SocketAddr, req: Request<Body>) -> Reply {
    H1Client::connect(addr).await.call(req).await
}

pub async fn get_once(addr: SocketAddr, path: &str) -> Reply {
    call(addr, get(path)).await
}

/// One HTTP/2 prior-knowledge client connection; clone it to send concurrent streams.
#[derive(Clone)]
pub struct H2Client {
    tx: hyper::client::conn::http2::SendRequest<Body>,
}

impl H2Client {
    pub async fn connect(addr: SocketAddr) -> H2Client {
        let stream = within(WAIT, "connect", TcpStream::connect(addr))
            .await
            .expect("connect to the proxy");
        let (tx, conn) = within(
            WAIT,
            "an HTTP/2 handshake",
            hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(TokioIo::new(stream)),
        )
        .await
        .expect("HTTP/2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        H2Client { tx }
    }

    pub async fn call(&mut self, mut req: Request<Body>) -> Reply {
        // HTTP/2 carries the authority in the URI, not in Host.
        req.headers_mut().remove("host");
        if req.uri().authority().is_none() {
            let path = req.uri().path_and_query().unwrap().as_str().to_owned();
            *req.uri_mut() = format!("http://test.local{path}").parse().unwrap();
        }
        within(WAIT, "the connection to be ready", self.tx.ready())
            .await
            .expect("connection usable");
        let rsp = within(WAIT, "a response", self.tx.send_request(req))
            .await
            .expect("response");
        read_reply(rsp).await
    }
}

// ---------------------------------------------------------------------------------------------
// Raw sockets
// ---------------------------------------------------------------------------------------------

pub async fn connect(addr: SocketAddr) -> TcpStream {
    within(WAIT, "connect", TcpStream::connect(addr))
        .await
        .expect("connect")
}

/// True when nothing accepts connections on `addr` any more.
pub async fn refuses(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// Reads a response head (through the blank line). Returns the head as text and any bytes
/// read past it.
pub async fn read_head(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            return (head, buf[end + 4..].to_vec());
        }
        let n = within(WAIT, "a response head", stream.read(&mut chunk))
            .await
            .expect("read response head");
        assert!(
            n > 0,
            "connection closed before a full response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until EOF or a reset (a server closing with unread input resets), bounded by `limit`.
pub async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    within(limit, "the connection to close", async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    out
}

/// Reads exactly `n` bytes.
pub async fn read_exactly(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    within(WAIT, &format!("{n} bytes"), stream.read_exact(&mut buf))
        .await
        .expect("read");
    buf
}

/// Writes raw bytes and returns everything the server sends until it closes.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = connect(addr).await;
    // The server may answer and close before reading all of it: a failed write is fine.
    let _ = stream.write_all(bytes).await;
    read_until_closed(&mut stream, WAIT).await
}

/// A deterministic pseudo-random byte generator (xorshift64*), for garbage input.
pub struct Garbage(u64);

impl Garbage {
    pub fn new(seed: u64) -> Garbage {
        Garbage(seed.max(1))
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 >> 12;
                self.0 ^= self.0 << 25;
                self.0 ^= self.0 >> 27;
                (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Admin and metrics
// ---------------------------------------------------------------------------------------------

pub async fn admin(addr: SocketAddr, method: Method, path: &str, body: &str) -> Reply {
    call(addr, request(method, path, full(body.to_owned()))).await
}

/// The samples of one metric name: labels and value.
type Series = Vec<(BTreeMap<String, String>, f64)>;

/// One scrape of `/metrics`: every sample by (name, labels).
#[derive(Debug, Default)]
pub struct Scrape {
    samples: HashMap<String, Series>,
    pub text: String,
}

pub async fn scrape(admin_addr: SocketAddr) -> Scrape {
    let reply = get_once(admin_addr, "/metrics").await;
    assert_eq!(reply.status, StatusCode::OK, "GET /metrics");
    Scrape::parse(&reply.text())
}

impl Scrape {
    /// Parses the Prometheus / OpenMetrics text exposition.
    pub fn parse(text: &str) -> Scrape {
        let mut samples: HashMap<String, Series> = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, labels, rest) = match line.find(['{', ' ']) {
                Some(i) if line.as_bytes()[i] == b'{' => {
                    let (labels, rest) = parse_labels(&line[i + 1..])
                        .unwrap_or_else(|| panic!("bad metric line {line:?}"));
                    (&line[..i], labels, rest)
                }
                Some(i) => (&line[..i], BTreeMap::new(), &line[i..]),
                None => panic!("bad metric line {line:?}"),
            };
            let value = rest
                .split_whitespace()
                .next()
                .unwrap_or_else(|| panic!("no value in {line:?}"));
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            samples
                .entry(name.to_owned())
                .or_default()
                .push((labels, value));
        }
        Scrape {
            samples,
            text: text.to_owned(),
        }
    }

    /// The total of the samples whose labels include these (labels a test doesn't name, such
    /// as `tls` or `client_id`, don't split a series it asks about), or `None` when no sample
    /// matches.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .get(name)?
            .iter()
            .filter(|(l, _)| {
                labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, v)| *v)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    /// Like [`Scrape::get`], or 0 when there is none (a counter not yet
    /// created has counted nothing).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// The sum of every sample of `name` whose labels include these.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples.get(name).map_or(0.0, |series| {
            series
                .iter()
                .filter(|(l, _)| {
                    labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
                })
                .map(|(_, v)| v)
                .sum()
        })
    }
}

/// Parses `k="v",k2="v2"}` and returns the labels and what follows the brace.
fn parse_labels(s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_owned();
        rest = rest[eq + 1..].strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.insert(key, value);
        rest = &rest[end + 1..];
    }
}
