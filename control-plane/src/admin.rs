//! The control plane's admin server, for probes, Prometheus and operators (`weftctl check`).
//!
//! | path | what |
//! |---|---|
//! | `/live` | 200 while the process runs |
//! | `/ready` | 200 once views are computed (when a source is configured) |
//! | `/metrics` | Prometheus text exposition (`weft_cp_*`) |
//! | `/debug/problems` | JSON: every invalid file or object skipped right now, and why; kinds that cannot be listed; namespaces whose trust anchors ConfigMap cannot be written |
//! | `/debug/proxies` | JSON: subscribed proxies, the version each was sent and acked |
//! | `/debug/ca` | JSON: the issuer and trust anchors with their expiry ([`CaStatus`]) |
//! | `/debug/version` | JSON: the control plane's version (proxies report theirs in `/debug/proxies`) |
//! | `/debug/inbound?namespace=NS&pod=POD` | the pod's inbound view (its policies) as JSON, or as the protobuf message with `Accept: application/x-protobuf` (`weftctl authz explain`) |
//!
//! `/metrics` answers OpenMetrics, or the Prometheus text format for `Accept: text/plain`
//! ([`weft_api::metrics`]).
//!
//! Nothing here changes state and nothing secret is shown, so it needs no access control
//! beyond the network policy that already keeps the port inside the cluster. (Policies are
//! not secret: every proxy they select is sent them.)

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

use crate::ca::metrics::CaStatus;
use crate::ca::Ca;
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
    pub ca: Arc<Ca>,
}

/// The media type `/debug/inbound` answers the protobuf message with.
pub const PROTOBUF_CONTENT_TYPE: &str = "application/x-protobuf";

/// On `/debug/inbound`: `false` when the control plane doesn't know the pod, and the view is
/// what any pod of the namespace would get (only the policies without a selector).
pub const POD_KNOWN_HEADER: &str = "weft-pod-known";

/// On `/debug/inbound`: the SPIFFE ID the pod runs as, when the control plane knows it.
pub const POD_IDENTITY_HEADER: &str = "weft-pod-identity";

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
                Ok(()) => {
                    let accept = header_str(&req, header::ACCEPT);
                    let (body, content_type) = weft_api::metrics::negotiate(body, accept);
                    Response::builder()
                        .header(header::CONTENT_TYPE, content_type)
                        .body(Full::new(Bytes::from(body)))
                        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, ""))
                }
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
            }
        }
        "/debug/problems" => json(&admin.problems.all()),
        "/debug/proxies" => json(&admin.registry.subscribers()),
        "/debug/ca" => json(&CaStatus::of(&admin.ca)),
        "/debug/version" => json(&serde_json::json!({"version": env!("CARGO_PKG_VERSION")})),
        "/debug/inbound" => inbound(admin, &req),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `/debug/inbound?namespace=NS&pod=POD`: the inbound view the pod's proxy is sent.
fn inbound(admin: &Admin, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let query = req.uri().query().unwrap_or("");
    let (Some(namespace), Some(pod)) = (query_param(query, "namespace"), query_param(query, "pod"))
    else {
        return text(
            StatusCode::BAD_REQUEST,
            "usage: /debug/inbound?namespace=NS&pod=POD\n",
        );
    };
    let Some(views) = admin.views.borrow().clone() else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first cluster state\n",
        );
    };
    let view = views.inbound_for(&namespace, &pod);
    let identity = views.identity_of(&namespace, &pod).map(str::to_owned);
    let known = identity.is_some();
    let wants_protobuf =
        header_str(req, header::ACCEPT).is_some_and(|a| a.contains(PROTOBUF_CONTENT_TYPE));
    let mut rsp = if wants_protobuf {
        let body = prost::Message::encode_to_vec(&view.message);
        let mut rsp = Response::new(Full::new(Bytes::from(body)));
        rsp.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static(PROTOBUF_CONTENT_TYPE),
        );
        rsp
    } else {
        json(&serde_json::json!({
            "namespace": namespace,
            "pod": pod,
            "podKnown": known,
            "identity": identity,
            "view": &view.message,
        }))
    };
    let headers = rsp.headers_mut();
    headers.insert(
        POD_KNOWN_HEADER,
        http::HeaderValue::from_static(if known { "true" } else { "false" }),
    );
    if let Some(value) = identity.and_then(|id| http::HeaderValue::from_str(&id).ok()) {
        headers.insert(POD_IDENTITY_HEADER, value);
    }
    rsp
}

fn header_str(req: &Request<Incoming>, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The first value of `name` in a query string, percent-decoded (`+` is a space).
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key).as_deref() == Some(name))
            .then(|| percent_decode(value))
            .flatten()
            .filter(|v| !v.is_empty())
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_decoded() {
        let query = "pod=orders-1&namespace=sh%6Fp&x=a+b";
        assert_eq!(query_param(query, "namespace").as_deref(), Some("shop"));
        assert_eq!(query_param(query, "pod").as_deref(), Some("orders-1"));
        assert_eq!(query_param(query, "x").as_deref(), Some("a b"));
        assert_eq!(query_param(query, "missing"), None);
        assert_eq!(query_param("pod=", "pod"), None);
        assert_eq!(query_param("pod=%zz", "pod"), None);
    }
}
