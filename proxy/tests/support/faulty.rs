//! What the traffic tests need around a proxy that calls meshed Services:
//!
//! - [`Faulty`], a fault-injecting HTTP/1.1 + HTTP/2 (prior knowledge) upstream whose faults
//!   ([`Faults`]: a failing status for a share of requests, connection resets, latency) can be
//!   changed while it runs, and which counts what it saw (requests, by method, bodies);
//! - the Services of the outbound view pointing at such upstreams ([`service`], [`endpoints`]),
//!   pushed by the test control plane to a proxy in local mode ([`TrafficMesh`]);
//! - a client that sends requests through the proxy's outbound listener as a forward proxy
//!   (`GET http://orders.shop.svc.cluster.local/...`), once ([`TrafficMesh::send`]) or as
//!   bounded load ([`load`]) that counts every outcome instead of panicking on it.
//!
//! Faults are deterministic where they can be: "every request" and "every Nth request"
//! count the upstream's own requests; only [`Share::Random`] draws.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use weft_api::proto::discovery::v1 as pb;

use super::discovery::{inbound, TestControlPlane};
use super::{admin, eventually, full, within, Body, BoxError, Scrape, TestProxy, WAIT};

// ---------------------------------------------------------------------------------------------
// The fault-injecting upstream
// ---------------------------------------------------------------------------------------------

/// Which of an upstream's requests a fault applies to, by their number (1 for the first
/// request it received).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Share {
    #[default]
    None,
    All,
    /// Requests N, 2N, 3N, ...
    EveryNth(u64),
    /// Each request with this probability (0.0–1.0).
    Random(f64),
}

impl Share {
    fn hits(self, n: u64) -> bool {
        match self {
            Share::None => false,
            Share::All => true,
            Share::EveryNth(every) => every > 0 && n.is_multiple_of(every),
            Share::Random(p) => fastrand::f64() < p,
        }
    }
}

/// What an upstream does to its requests. It reads each request's body in full first, then
/// waits the delay, then resets, fails or answers 200 (in that order of precedence).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Answer these requests with this status instead of 200.
    pub fail: Option<(StatusCode, Share)>,
    /// Close the connection without a response: a TCP reset for HTTP/1.1 (`SO_LINGER` 0),
    /// a stream reset for HTTP/2.
    pub reset: Share,
    /// Added to every request.
    pub delay: Duration,
    /// Added to these requests, on top of `delay`.
    pub extra_delay: Option<(Duration, Share)>,
    /// A response's head is sent at once, its body after this long (a streaming response).
    pub body_delay: Duration,
}

impl Faults {
    pub fn healthy() -> Faults {
        Faults::default()
    }

    /// Every request fails with `status`.
    pub fn failing(status: u16) -> Faults {
        Faults {
            fail: Some((StatusCode::from_u16(status).unwrap(), Share::All)),
            ..Faults::default()
        }
    }

    /// Every request gets its connection reset.
    pub fn resetting() -> Faults {
        Faults {
            reset: Share::All,
            ..Faults::default()
        }
    }

    /// Every request is answered 200 after `delay`.
    pub fn slow(delay: Duration) -> Faults {
        Faults {
            delay,
            ..Faults::default()
        }
    }
}

/// What an upstream has seen so far.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Requests received (counted when their head arrives).
    pub requests: u64,
    pub by_method: BTreeMap<String, u64>,
    /// The body length of every request that had a non-empty body, in arrival order.
    pub bodies: Vec<usize>,
    pub answered_ok: u64,
    pub failed: u64,
    pub resets: u64,
    /// TCP connections accepted.
    pub connections: u64,
    /// Requests being handled now, and the most at once.
    pub in_flight: usize,
    pub max_in_flight: usize,
}

#[derive(Default)]
struct State {
    name: String,
    faults: Mutex<Faults>,
    requests: AtomicU64,
    by_method: Mutex<HashMap<Method, u64>>,
    bodies: Mutex<Vec<usize>>,
    answered_ok: AtomicU64,
    failed: AtomicU64,
    resets: AtomicU64,
    connections: AtomicU64,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// A fault-injecting HTTP/1.1 + HTTP/2 server on 127.0.0.1. Every response carries
/// `x-upstream: NAME`; a 200's body is NAME. Dropped, it stops listening and cuts every
/// connection.
pub struct Faulty {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Faulty {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Faulty {
    pub async fn start(name: &str, faults: Faults) -> Faulty {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            name: name.to_owned(),
            faults: Mutex::new(faults),
            ..State::default()
        });
        let accepting = state.clone();
        let task = tokio::spawn(async move {
            // Owned by this task: aborting it drops the set, which aborts every connection.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        if let Ok((stream, _)) = accepted {
                            accepting.connections.fetch_add(1, Ordering::SeqCst);
                            connections.spawn(serve(accepting.clone(), stream));
                        }
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Faulty { addr, state, task }
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Changes the faults for the requests that arrive from now on.
    pub fn set(&self, faults: Faults) {
        *self.state.faults.lock().unwrap() = faults;
    }

    pub fn faults(&self) -> Faults {
        *self.state.faults.lock().unwrap()
    }

    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    pub fn stats(&self) -> Stats {
        let s = &self.state;
        Stats {
            requests: s.requests.load(Ordering::SeqCst),
            by_method: s
                .by_method
                .lock()
                .unwrap()
                .iter()
                .map(|(m, n)| (m.to_string(), *n))
                .collect(),
            bodies: s.bodies.lock().unwrap().clone(),
            answered_ok: s.answered_ok.load(Ordering::SeqCst),
            failed: s.failed.load(Ordering::SeqCst),
            resets: s.resets.load(Ordering::SeqCst),
            connections: s.connections.load(Ordering::SeqCst),
            in_flight: s.in_flight.load(Ordering::SeqCst),
            max_in_flight: s.max_in_flight.load(Ordering::SeqCst),
        }
    }

    /// Waits until `n` requests are being handled at once.
    pub async fn wait_in_flight(&self, n: usize) {
        eventually(
            WAIT,
            &format!("{} to have {n} requests in flight", self.name()),
            || std::future::ready(self.in_flight() >= n),
        )
        .await;
    }
}

/// The error that makes hyper drop a connection (HTTP/1.1) or reset a stream (HTTP/2)
/// without a response.
#[derive(Debug)]
struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fault injected: reset")
    }
}

impl std::error::Error for Reset {}

async fn serve(state: Arc<State>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    // Kept to turn the close into a reset; valid as long as the connection (which this
    // function owns) is open, and every handler runs inside it.
    let fd = stream.as_raw_fd();
    let service = service_fn(move |req| handle(state.clone(), fd, req));
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Decrements the in-flight count however the handler ends (the proxy may drop the
/// request, which drops the handler's future).
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(
    state: Arc<State>,
    fd: RawFd,
    req: Request<Incoming>,
) -> Result<Response<Body>, Reset> {
    let n = state.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let _in_flight = InFlight(&state.in_flight);
    *state
        .by_method
        .lock()
        .unwrap()
        .entry(req.method().clone())
        .or_default() += 1;
    let faults = *state.faults.lock().unwrap();
    let version = req.version();
    let mut body = req.into_body();
    let mut length = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => length += frame.data_ref().map_or(0, Bytes::len),
            Err(_) => return Err(Reset),
        }
    }
    if length > 0 {
        state.bodies.lock().unwrap().push(length);
    }
    let mut delay = faults.delay;
    if let Some((extra, share)) = faults.extra_delay {
        if share.hits(n) {
            delay += extra;
        }
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if faults.reset.hits(n) {
        state.resets.fetch_add(1, Ordering::SeqCst);
        if version != http::Version::HTTP_2 {
            // SAFETY: the fd belongs to the connection this handler runs on, which is open
            // while the handler runs.
            let socket = unsafe { BorrowedFd::borrow_raw(fd) };
            let _ = socket2::SockRef::from(&socket).set_linger(Some(Duration::ZERO));
        }
        return Err(Reset);
    }
    let (status, text) = match faults.fail {
        Some((status, share)) if share.hits(n) => {
            state.failed.fetch_add(1, Ordering::SeqCst);
            (status, "fault injected".to_owned())
        }
        _ => {
            state.answered_ok.fetch_add(1, Ordering::SeqCst);
            (StatusCode::OK, state.name.clone())
        }
    };
    let body = if faults.body_delay.is_zero() {
        full(text)
    } else {
        DelayedBody {
            sleep: Box::pin(tokio::time::sleep(faults.body_delay)),
            data: Some(Bytes::from(text)),
        }
        .boxed_unsync()
    };
    let mut rsp = Response::new(body);
    *rsp.status_mut() = status;
    rsp.headers_mut()
        .insert("x-upstream", state.name.parse().unwrap());
    Ok(rsp)
}

/// A body whose one frame comes after a sleep.
struct DelayedBody {
    sleep: Pin<Box<tokio::time::Sleep>>,
    data: Option<Bytes>,
}

impl http_body::Body for DelayedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.data.is_none() {
            return Poll::Ready(None);
        }
        ready!(self.sleep.as_mut().poll(cx));
        Poll::Ready(self.data.take().map(|data| Ok(Frame::data(data))))
    }
}

// ---------------------------------------------------------------------------------------------
// Services in the outbound view
// ---------------------------------------------------------------------------------------------

/// The namespace of every Service here.
pub const NS: &str = "shop";
/// The Service port every Service here has (named `http`).
pub const PORT: u32 = 80;

/// The name a local-mode client uses for Service `name`.
pub fn host(name: &str) -> String {
    format!("{name}.{NS}.svc.cluster.local")
}

/// Plain (unmeshed) endpoints at these addresses, ready, one EndpointSlice port named
/// `http` each.
pub fn endpoints(addrs: &[SocketAddr]) -> Vec<pb::Endpoint> {
    addrs
        .iter()
        .map(|addr| pb::Endpoint {
            address: addr.ip().to_string(),
            ports: vec![pb::NamedPort {
                name: "http".into(),
                port: u32::from(addr.port()),
            }],
            identity: String::new(),
            ready: true,
            workload: String::new(),
        })
        .collect()
}

/// Service `shop/<name>`, port 80 (`http`), with these endpoints and no routes or policy.
pub fn service(name: &str, addrs: &[SocketAddr]) -> pb::Service {
    pb::Service {
        namespace: NS.into(),
        name: name.into(),
        cluster_ips: vec![],
        hostnames: vec![
            host(name),
            format!("{name}.{NS}.svc"),
            format!("{name}.{NS}"),
        ],
        ports: vec![pb::ServicePort {
            name: "http".into(),
            port: PORT,
            target_port: 0,
            app_protocol: String::new(),
        }],
        endpoints: endpoints(addrs),
        routes: vec![],
        traffic_policy: None,
    }
}

/// A TrafficPolicy `shop/<name>-policy` with these parts (the rest default).
pub fn policy(name: &str) -> pb::TrafficPolicy {
    pb::TrafficPolicy {
        namespace: NS.into(),
        name: format!("{name}-policy"),
        ..Default::default()
    }
}

/// A backendRef to Service `shop/<name>` port 80.
pub fn backend(name: &str, weight: u32) -> pb::BackendRef {
    pb::BackendRef {
        namespace: NS.into(),
        name: name.into(),
        port: PORT,
        weight,
    }
}

/// An HTTPRoute `shop/<name>` attached to every port of the Service it is put on.
pub fn route(name: &str, rules: Vec<pb::RouteRule>) -> pb::HttpRoute {
    pb::HttpRoute {
        namespace: NS.into(),
        name: name.into(),
        ports: vec![],
        hostnames: vec![],
        rules,
    }
}

/// An update with the client pod's inbound part (nothing to enforce) and these Services.
pub fn services_view(version: &str, services: Vec<pb::Service>) -> pb::ViewUpdate {
    pb::ViewUpdate {
        version: version.into(),
        inbound: Some(inbound(vec![])),
        outbound: Some(pb::Outbound { services }),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The proxy and its control plane
// ---------------------------------------------------------------------------------------------

/// A test control plane and a proxy in local mode (pod `web-1`) subscribed to it: the
/// client's sidecar, whose outbound listener is the forward proxy the tests call through.
pub struct TrafficMesh {
    pub cp: TestControlPlane,
    pub proxy: TestProxy,
    versions: AtomicU64,
}

impl TrafficMesh {
    /// Starts both with these Services pushed, and waits until the proxy applied them.
    pub async fn start(services: Vec<pb::Service>) -> TrafficMesh {
        let cp = TestControlPlane::start().await;
        cp.push(services_view("v1", services));
        let proxy = super::proxy()
            .args(cp.proxy_args("web", Some("web-1")))
            .start()
            .await;
        let mesh = TrafficMesh {
            cp,
            proxy,
            versions: AtomicU64::new(1),
        };
        assert_eq!(mesh.cp.ack("v1").await.error, "", "the first view applies");
        eventually(WAIT, "the proxy to be ready", || async {
            admin(mesh.proxy.admin, Method::GET, "/ready", "")
                .await
                .status
                == StatusCode::OK
        })
        .await;
        mesh
    }

    /// Pushes a new set of Services and waits until the proxy acknowledged it without error.
    pub async fn push(&self, services: Vec<pb::Service>) {
        let version = format!("v{}", self.versions.fetch_add(1, Ordering::SeqCst) + 1);
        self.cp.push(services_view(&version, services));
        let ack = self.cp.ack(&version).await;
        assert_eq!(ack.error, "", "view {version} applies");
    }

    pub fn outbound(&self) -> SocketAddr {
        self.proxy.outbound
    }

    pub async fn metrics(&self) -> Scrape {
        self.proxy.metrics().await
    }

    /// Sends `req` on a new connection to the outbound listener; the response read in full,
    /// and the time to its end.
    pub async fn send(&self, req: Request<Body>) -> (Outcome, Duration) {
        let started = Instant::now();
        let outcome = match within(
            WAIT,
            "a response through the proxy",
            send_once(self.outbound(), req),
        )
        .await
        {
            Ok(outcome) => outcome,
            Err(error) => panic!("request through the proxy failed: {error}"),
        };
        (outcome, started.elapsed())
    }

    pub async fn get(&self, service: &str, path: &str) -> (Outcome, Duration) {
        self.send(request(Method::GET, service, path, Bytes::new()))
            .await
    }
}

/// A forward-proxy request for Service `service` (absolute form, `Host` set), with a body of
/// known length.
pub fn request(method: Method, service: &str, path: &str, body: Bytes) -> Request<Body> {
    let host = host(service);
    let length = body.len();
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://{host}{path}"))
        .header("host", host);
    if length > 0 {
        builder = builder.header("content-length", length);
    }
    builder.body(full(body)).unwrap()
}

/// A response through the proxy, read in full.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Outcome {
    /// The upstream that answered (`x-upstream`), if one did.
    pub fn upstream(&self) -> Option<&str> {
        self.header("x-upstream")
    }

    /// The proxy's own error code (`weft-proxy-error`), if the proxy answered.
    pub fn proxy_error(&self) -> Option<&str> {
        self.header("weft-proxy-error")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 keep-alive connection to the proxy that reports failures instead of
/// panicking.
struct Conn {
    tx: hyper::client::conn::http1::SendRequest<Body>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Conn, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { tx })
    }

    async fn send(&mut self, req: Request<Body>) -> Result<Outcome, String> {
        self.tx.ready().await.map_err(|e| format!("ready: {e}"))?;
        let rsp = self
            .tx
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let (head, body) = rsp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("response body: {e}"))?
            .to_bytes();
        Ok(Outcome {
            status: head.status,
            headers: head.headers,
            body,
        })
    }
}

async fn send_once(addr: SocketAddr, req: Request<Body>) -> Result<Outcome, String> {
    Conn::open(addr).await?.send(req).await
}

// ---------------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------------

/// Bounded load: at most `requests` requests, `concurrency` in flight (one keep-alive
/// connection each, reopened after a failure), until `deadline`. Each request gets
/// `per_request` to complete or counts as a failure.
#[derive(Clone, Copy, Debug)]
pub struct LoadSpec {
    pub requests: u64,
    pub concurrency: usize,
    pub deadline: Duration,
    pub per_request: Duration,
}

impl LoadSpec {
    pub fn new(requests: u64, concurrency: usize, deadline: Duration) -> LoadSpec {
        LoadSpec {
            requests,
            concurrency,
            deadline,
            per_request: Duration::from_secs(5),
        }
    }
}

/// What a load run saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Requests sent (each has exactly one outcome below).
    pub sent: u64,
    pub by_status: BTreeMap<u16, u64>,
    /// Responses by the upstream that answered (`x-upstream`), whatever their status.
    pub by_upstream: BTreeMap<String, u64>,
    /// Proxy error codes (`weft-proxy-error`).
    pub by_proxy_error: BTreeMap<String, u64>,
    /// Requests that got no response (the reason, counted).
    pub failures: BTreeMap<String, u64>,
    /// Time to the end of the response, successful (2xx) requests only, sorted.
    pub latencies: Vec<Duration>,
    pub elapsed: Duration,
}

impl LoadReport {
    pub fn ok(&self) -> u64 {
        self.by_status
            .iter()
            .filter(|(s, _)| (200..300).contains(*s))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn success_ratio(&self) -> f64 {
        self.ok() as f64 / self.sent.max(1) as f64
    }

    /// The share of all responses that came from `upstream`.
    pub fn share(&self, upstream: &str) -> f64 {
        let all: u64 = self.by_upstream.values().sum();
        *self.by_upstream.get(upstream).unwrap_or(&0) as f64 / all.max(1) as f64
    }

    pub fn quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 * q).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[i - 1]
    }

    /// One line for the test output.
    pub fn summary(&self) -> String {
        format!(
            "{} requests in {:.2?}: {:.3}% 2xx, statuses {:?}, upstreams {:?}, proxy errors {:?}, no response {:?}, p50 {:.1?} p99 {:.1?}",
            self.sent,
            self.elapsed,
            100.0 * self.success_ratio(),
            self.by_status,
            self.by_upstream,
            self.by_proxy_error,
            self.failures,
            self.quantile(0.5),
            self.quantile(0.99),
        )
    }
}

/// Runs `spec`'s load against the proxy at `addr`; `make(i)` builds request `i`.
pub async fn load<F>(addr: SocketAddr, spec: LoadSpec, make: F) -> LoadReport
where
    F: Fn(u64) -> Request<Body> + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let next = Arc::new(AtomicU64::new(0));
    let report = Arc::new(Mutex::new(LoadReport::default()));
    let started = Instant::now();
    let deadline = started + spec.deadline;
    let mut workers = JoinSet::new();
    for _ in 0..spec.concurrency.max(1) {
        let (make, next, report) = (make.clone(), next.clone(), report.clone());
        workers.spawn(async move {
            let mut conn: Option<Conn> = None;
            loop {
                if Instant::now() >= deadline {
                    return;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= spec.requests {
                    return;
                }
                let req = make(i);
                let begun = Instant::now();
                let result = tokio::time::timeout(spec.per_request, async {
                    if conn.is_none() {
                        conn = Some(Conn::open(addr).await?);
                    }
                    conn.as_mut().unwrap().send(req).await
                })
                .await
                .unwrap_or_else(|_| Err(format!("no response within {:?}", spec.per_request)));
                let took = begun.elapsed();
                let mut r = report.lock().unwrap();
                r.sent += 1;
                match result {
                    Ok(outcome) => {
                        *r.by_status.entry(outcome.status.as_u16()).or_default() += 1;
                        if let Some(up) = outcome.upstream() {
                            *r.by_upstream.entry(up.to_owned()).or_default() += 1;
                        }
                        if let Some(code) = outcome.proxy_error() {
                            *r.by_proxy_error.entry(code.to_owned()).or_default() += 1;
                        }
                        if outcome.status.is_success() {
                            r.latencies.push(took);
                        }
                    }
                    Err(error) => {
                        // The first word or two: the kind, not the details.
                        let kind: String = error.split(':').next().unwrap_or("").to_owned();
                        *r.failures.entry(kind).or_default() += 1;
                        conn = None;
                    }
                }
            }
        });
    }
    // Workers stop by themselves at the deadline; a request in flight then has its own
    // bound, so this cannot wait longer than deadline + per_request.
    within(
        spec.deadline + spec.per_request + Duration::from_secs(1),
        "the load workers to stop",
        async { while workers.join_next().await.is_some() {} },
    )
    .await;
    let mut report = std::mem::take(&mut *report.lock().unwrap());
    report.elapsed = started.elapsed();
    report.latencies.sort();
    report
}

// ---------------------------------------------------------------------------------------------
// Serializing heavy tests
// ---------------------------------------------------------------------------------------------

static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Held by a test that runs load or measures time, so the tests of one binary don't skew
/// each other's figures on a small machine (tests in a binary run in parallel).
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    HEAVY.lock().await
}
