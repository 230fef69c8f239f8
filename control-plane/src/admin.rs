//! The control plane's admin server, for probes, Prometheus and operators (`weftctl check`).
//!
//! | path | what |
//! |---|---|
//! | `/live` | 200 while the process runs |
//! | `/ready` | 200 once views are computed (when a source is configured) |
//! | `/metrics` | Prometheus text exposition (`weft_cp_*`) |
//! | `/debug/problems` | JSON: every invalid file or object skipped right now, and why |
//! | `/debug/proxies` | JSON: subscribed proxies, the version each was sent and acked |
//!
//! Nothing here changes state and nothing secret is shown, so it needs no access control
//! beyond the network policy that already keeps the port inside the cluster.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry as Metrics;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::discovery::Registry;
use crate::index::Views;
use crate::state::ProblemBoard;
use crate::StartError;

/// A scraper or probe that stalls mid-request is cut off after this.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub problems: Arc<ProblemBoard>,
    pub registry: Arc<Registry>,
    pub views: watch::Receiver<Option<Arc<Views>>>,
    /// Whether readiness waits for views (a source is configured).
    pub needs_views: bool,
}

/// Binds and serves until `stop`; returns the bound address.
pub async fn spawn(
    addr: SocketAddr,
    admin: Admin,
    mut stop: watch::Receiver<bool>,
) -> Result<SocketAddr, StartError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    let admin = Arc::new(admin);
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = crate::server::stopped(&mut stop) => return,
            };
            let admin = admin.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(handle(&admin, req)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    tracing::info!(addr = %bound, "control plane admin server listening");
    Ok(bound)
}

fn handle(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" => {
            if !admin.needs_views || admin.views.borrow().is_some() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "waiting for the first cluster state\n",
                )
            }
        }
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, &admin.metrics) {
                Ok(()) => Response::builder()
                    .header(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )
                    .body(Full::new(Bytes::from(body)))
                    .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "")),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
            }
        }
        "/debug/problems" => json(&admin.problems.all()),
        "/debug/proxies" => json(&admin.registry.subscribers()),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn json(value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "")),
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{error}\n")),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(Bytes::from(body.to_owned())));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}
