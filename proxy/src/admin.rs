//! The admin server: probes and metrics for anyone; configuration, shutdown and log level only
//! from localhost (an operator on the node or `kubectl port-forward`, never another pod).
//!
//! | path | method | who | what |
//! |---|---|---|---|
//! | `/live` | GET | anyone | 200 while the process runs |
//! | `/ready` | GET | anyone | 200 once listeners are up (and the certificate and first view are in), 503 before and while draining |
//! | `/metrics` | GET | anyone | OpenMetrics, or the Prometheus text format for `Accept: text/plain` |
//! | `/config` | GET | localhost | bootstrap settings, the current snapshot and view, as JSON |
//! | `/shutdown` | POST | localhost | starts a graceful drain |
//! | `/log-level` | GET, PUT | localhost | reads or replaces the log filter |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::bootstrap::RunArgs;
use crate::config::ConfigStore;

/// A new log filter is a short string; anything bigger is a mistake.
const MAX_LOG_FILTER_BYTES: usize = 4096;

/// Replaces the process's log filter. Supplied by `main`, which owns the subscriber.
pub type SetLogFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

pub struct Admin {
    pub registry: Registry,
    pub ready: AtomicBool,
    pub draining: AtomicBool,
    pub shutdown: Notify,
    pub config: Arc<ConfigStore>,
    /// With mTLS on, ready also needs a valid certificate — checked on every probe, so a
    /// certificate that expires without renewal turns the pod unready.
    pub identity: Option<Arc<crate::identity::Tls>>,
    /// With discovery on, ready also needs a view: a new pod must not take traffic before it
    /// knows its policies. Once applied, a view is kept through control-plane outages.
    pub views: Option<Arc<crate::discovery::ViewStore>>,
    pub bootstrap: RunArgs,
    pub log_filter: std::sync::Mutex<String>,
    pub set_log_filter: SetLogFilter,
}

pub fn spawn(listener: TcpListener, admin: Arc<Admin>) {
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let admin = admin.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(req, peer).await) }
                });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10));
                if let Err(error) = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%error, "admin connection failed");
                }
            });
        }
    });
}

impl Admin {
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let local_only = matches!(req.uri().path(), "/config" | "/shutdown" | "/log-level");
        if local_only && !is_loopback(peer) {
            return text(StatusCode::FORBIDDEN, "only available from localhost\n");
        }
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
            (&Method::GET, "/ready") => {
                if self.draining.load(Ordering::Acquire) {
                    text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                } else if !self.ready.load(Ordering::Acquire) {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                } else if self.identity.as_ref().is_some_and(|tls| !tls.is_ready()) {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no valid workload certificate\n",
                    )
                } else if self.views.as_ref().is_some_and(|views| !views.is_applied()) {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no view from the control plane yet\n",
                    )
                } else {
                    text(StatusCode::OK, "ready\n")
                }
            }
            (&Method::GET, "/metrics") => {
                let accept = req.headers().get(header::ACCEPT);
                self.metrics(accept.and_then(|v| v.to_str().ok()))
            }
            (&Method::GET, "/config") => {
                let view = self.views.as_ref().and_then(|views| views.load_full());
                let body = serde_json::json!({
                    "bootstrap": &self.bootstrap,
                    "config": &*self.config.load(),
                    "view": view.as_deref(),
                });
                let mut rsp = Response::new(Full::new(Bytes::from(body.to_string())));
                rsp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    "application/json".parse().expect("static header value"),
                );
                rsp
            }
            (&Method::POST, "/shutdown") => {
                self.shutdown.notify_one();
                text(StatusCode::ACCEPTED, "draining\n")
            }
            (&Method::GET, "/log-level") => {
                let current = self
                    .log_filter
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                text(StatusCode::OK, format!("{current}\n"))
            }
            (&Method::PUT, "/log-level") => self.set_log_level(req).await,
            (_, "/live" | "/ready" | "/metrics" | "/config" | "/shutdown" | "/log-level") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    /// OpenMetrics, or the Prometheus text format when `accept` asks for `text/plain`
    /// ([`weft_api::metrics`]).
    fn metrics(&self, accept: Option<&str>) -> Response<Full<Bytes>> {
        let mut out = String::with_capacity(16 * 1024);
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("encoding metrics failed: {error}\n"),
            );
        }
        let (body, content_type) = weft_api::metrics::negotiate(out, accept);
        let mut rsp = Response::new(Full::new(Bytes::from(body)));
        rsp.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        rsp
    }

    async fn set_log_level(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let body = match Limited::new(req.into_body(), MAX_LOG_FILTER_BYTES)
            .collect()
            .await
        {
            Ok(collected) => collected.to_bytes(),
            Err(error) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read body: {error}\n"),
                )
            }
        };
        let Ok(filter) = std::str::from_utf8(&body) else {
            return text(StatusCode::BAD_REQUEST, "log filter must be UTF-8\n");
        };
        let filter = filter.trim();
        match (self.set_log_filter)(filter) {
            Ok(()) => {
                *self.log_filter.lock().unwrap_or_else(|e| e.into_inner()) = filter.to_owned();
                tracing::info!(filter, "log filter changed");
                text(StatusCode::OK, format!("{filter}\n"))
            }
            Err(error) => text(
                StatusCode::BAD_REQUEST,
                format!("invalid log filter {filter:?}: {error}\n"),
            ),
        }
    }
}

fn is_loopback(peer: SocketAddr) -> bool {
    match peer.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(body.into()));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        "text/plain; charset=utf-8"
            .parse()
            .expect("static header value"),
    );
    rsp
}
