//! The HTTPS server: `POST /mutate` (AdmissionReview), `/live`, `/ready`, `/metrics`.
//!
//! TLS 1.2/1.3 with ALPN `h2` and `http/1.1` (the API server speaks either and keeps its
//! connections alive). Every connection has bounded time to finish its handshake and send
//! headers, and a review body is bounded in size; nothing a caller sends can stop the server
//! from answering the next one.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::config::InjectConfig;
use crate::metrics::Metrics;
use crate::review::{self, Outcome};
use crate::tls::{self, CertError};

/// The injector's port (like the meshes users know).
pub const DEFAULT_ADDR: &str = "0.0.0.0:8443";
/// The largest review body accepted. The API server caps an object at 3 MiB (1.5 MiB in
/// etcd); a review carries one pod, so 4 MiB is more than any real review.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;
/// Time a connection has for its TLS handshake, for request headers, and for a request body.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// How to run the server.
#[derive(Debug, Clone)]
pub struct Settings {
    pub addr: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub inject: InjectConfig,
    pub max_body_bytes: usize,
    /// After a shutdown is asked for, keep serving (not ready) this long, so the API server
    /// stops sending reviews here before the port closes.
    pub shutdown_delay: Duration,
    /// Then wait at most this long for in-flight reviews.
    pub shutdown_grace: Duration,
}

impl Settings {
    /// Defaults around a certificate pair: what tests and the benchmark want.
    pub fn new(addr: SocketAddr, tls_cert: PathBuf, tls_key: PathBuf) -> Self {
        Settings {
            addr,
            tls_cert,
            tls_key,
            inject: InjectConfig::default(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            shutdown_delay: Duration::ZERO,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("serving certificate: {0}")]
    Cert(#[from] CertError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

struct State {
    inject: InjectConfig,
    metrics: Metrics,
    max_body_bytes: usize,
    ready: AtomicBool,
}

/// A running server.
pub struct Server {
    local_addr: SocketAddr,
    metrics: Metrics,
    state: Arc<State>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    settings: Settings,
    _watcher: notify::RecommendedWatcher,
}

impl Server {
    /// Loads the certificate, binds and starts serving.
    pub async fn start(settings: Settings) -> Result<Server, StartError> {
        let metrics = Metrics::new();
        let (cert, watcher) = tls::start(
            settings.tls_cert.clone(),
            settings.tls_key.clone(),
            metrics.clone(),
        )?;
        let mut tls = ServerConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(cert);
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let listener =
            TcpListener::bind(settings.addr)
                .await
                .map_err(|source| StartError::Bind {
                    addr: settings.addr,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: settings.addr,
            source,
        })?;
        let state = Arc::new(State {
            inject: settings.inject.clone(),
            metrics: metrics.clone(),
            max_body_bytes: settings.max_body_bytes,
            ready: AtomicBool::new(true),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, acceptor, state.clone(), shutdown_rx));
        tracing::info!(addr = %local_addr, sidecar = %settings.inject.sidecar, "weft-injector serving");
        Ok(Server {
            local_addr,
            metrics,
            state,
            shutdown,
            task,
            settings,
            _watcher: watcher,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Not ready, keep serving for the shutdown delay, then stop accepting and wait for
    /// in-flight requests (at most the grace period).
    pub async fn shutdown(self) {
        self.state.ready.store(false, Ordering::SeqCst);
        tokio::time::sleep(self.settings.shutdown_delay).await;
        let _ = self.shutdown.send(true);
        let mut task = self.task;
        if tokio::time::timeout(self.settings.shutdown_grace, &mut task)
            .await
            .is_err()
        {
            tracing::warn!("in-flight reviews did not finish within the shutdown grace");
            task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Each connection holds a sender; `recv` returns `None` once all are gone.
    let (alive, mut all_done) = mpsc::channel::<()>(1);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let state = state.clone();
        let shutdown = shutdown.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            serve_connection(tcp, peer, acceptor, state, shutdown).await;
            drop(alive);
        });
    }
    drop(listener);
    drop(alive);
    let _ = all_done.recv().await;
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    let tls = match tokio::time::timeout(IO_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(IO_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let service = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(route(req, &state).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            return;
        }
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

async fn route(req: Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/mutate") => mutate(req, state).await,
        (_, "/mutate") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
        (&Method::GET, "/live") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/ready") => {
            if state.ready.load(Ordering::SeqCst) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            }
        }
        (&Method::GET, "/metrics") => {
            // OpenMetrics for Prometheus; the text format for tools that ask (promtool).
            let accept = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let (body, content_type) = weft_api::metrics::negotiate(state.metrics.encode(), accept);
            Response::builder()
                .header(header::CONTENT_TYPE, content_type)
                .body(Full::new(Bytes::from(body)))
                .expect("a static header and a body are a valid response")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try POST /mutate, /live, /ready, /metrics\n",
        ),
    }
}

async fn mutate(req: Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    let limit = state.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return too_large(state, limit);
    }
    let body = Limited::new(req.into_body(), limit);
    let body = match tokio::time::timeout(IO_TIMEOUT, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(error)) => {
            if error.is::<http_body_util::LengthLimitError>() {
                return too_large(state, limit);
            }
            state.metrics.error("bad_review");
            return text(
                StatusCode::BAD_REQUEST,
                &format!("reading the body: {error}\n"),
            );
        }
        Err(_) => {
            state.metrics.error("bad_review");
            return text(StatusCode::REQUEST_TIMEOUT, "the body took too long\n");
        }
    };
    let started = Instant::now();
    match review::review(&body, &state.inject) {
        Ok(answer) => {
            state.metrics.answered(&answer.outcome, started.elapsed());
            log(&answer.outcome, &answer.pod);
            Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(answer.body)))
                .expect("a valid response")
        }
        Err(bad) => {
            state.metrics.error("bad_review");
            tracing::warn!(error = %bad, "malformed review");
            text(StatusCode::BAD_REQUEST, &format!("weft-injector: {bad}\n"))
        }
    }
}

fn log(outcome: &Outcome, pod: &str) {
    match outcome {
        Outcome::Injected(mode) => tracing::info!(pod, sidecar = %mode, "injected"),
        Outcome::Skipped(reason) => tracing::debug!(pod, reason, "not injected"),
        Outcome::Denied(message) => tracing::warn!(pod, message, "refused"),
        Outcome::Failed { kind, message } => {
            tracing::error!(pod, kind, message, "admitted without the sidecar")
        }
    }
}

fn too_large(state: &State, limit: usize) -> Response<Full<Bytes>> {
    state.metrics.error("body_too_large");
    text(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("weft-injector: a review body may be at most {limit} bytes\n"),
    )
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("a valid response")
}
