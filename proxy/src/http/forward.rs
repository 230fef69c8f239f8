//! One request, from the downstream connection to the upstream and back: find where it goes,
//! strip hop-by-hop fields, send it through the pool, and pass upgrades (WebSocket) and
//! `CONNECT` tunnels through as raw bytes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{header, Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::error::{empty, ProxyError};
use super::headers::{is_upgrade_request, strip_hop_by_hop};
use super::pool::{Pool, Version};
use super::Body;
use crate::conn::{with_idle_timeout, ConnScope};
use crate::connect::connect;
use crate::metrics::{Direction, ErrorKind, Metrics, TargetMetrics};
use tokio::io::{AsyncRead, AsyncWrite};

/// Where the requests on one connection go.
#[derive(Clone)]
pub enum Destination {
    /// Every request goes to one address (a redirected connection's original destination,
    /// the app behind the inbound listener, or a static listener's target).
    Fixed {
        addr: SocketAddr,
        metrics: TargetMetrics,
    },
    /// Forward-proxy mode: each request names its target in an absolute-form URI, or asks
    /// for a tunnel with `CONNECT`.
    FromRequest,
}

/// Everything a connection's requests share. Built once per downstream connection.
pub struct Forwarder {
    pub direction: Direction,
    pub destination: Destination,
    pub version: Version,
    pub pool: Arc<Pool>,
    pub metrics: Metrics,
    pub connect_timeout: Duration,
    /// The listener's own address, to refuse requests that would loop back to it.
    pub listener: SocketAddr,
    /// Held by tunnels that outlive their request.
    pub scope: ConnScope,
}

impl Forwarder {
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let (target, metrics, req) = match self.resolve(req).await {
            Ok(resolved) => resolved,
            Err(error) => {
                tracing::info!(%error, direction = self.direction.as_str(), "cannot route request");
                return error.into_response();
            }
        };
        metrics.requests.inc();
        let rsp = match self.forward(target, req).await {
            Ok(rsp) => rsp,
            Err(error) => {
                tracing::info!(%error, %target, direction = self.direction.as_str(), "request failed");
                metrics.error(error.kind());
                error.into_response()
            }
        };
        metrics.response(rsp.status(), started.elapsed());
        rsp
    }

    async fn resolve(
        &self,
        req: Request<Incoming>,
    ) -> Result<(SocketAddr, TargetMetrics, Request<Incoming>), ProxyError> {
        match &self.destination {
            Destination::Fixed { addr, metrics } => Ok((*addr, metrics.clone(), req)),
            Destination::FromRequest => {
                let authority = request_authority(&req)?;
                let addr = resolve(&authority).await?;
                if addr == self.listener {
                    return Err(ProxyError::Loop(authority));
                }
                Ok((
                    addr,
                    self.metrics.for_target(self.direction, &authority),
                    req,
                ))
            }
        }
    }

    async fn forward(
        &self,
        target: SocketAddr,
        mut req: Request<Incoming>,
    ) -> Result<Response<Body>, ProxyError> {
        use http_body_util::BodyExt;
        if req.method() == Method::CONNECT && matches!(self.destination, Destination::FromRequest) {
            return self.tunnel(target, req).await;
        }
        let upgrade = self.version == Version::Http1 && is_upgrade_request(req.headers());
        let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        strip_hop_by_hop(req.headers_mut(), upgrade, self.version == Version::Http2);
        if self.version == Version::Http1 {
            ensure_host(&mut req);
            to_origin_form(req.uri_mut());
        }
        let req = req.map(|b| b.boxed_unsync());
        let mut rsp = self
            .pool
            .send(target, self.version, req, self.connect_timeout)
            .await?;

        if let (StatusCode::SWITCHING_PROTOCOLS, Some(downstream)) =
            (rsp.status(), downstream_upgrade)
        {
            let upstream = hyper::upgrade::on(&mut rsp);
            self.spawn_tunnel(target, async move {
                let (down, up) = tokio::try_join!(downstream, upstream)?;
                Ok((TokioIo::new(down), TokioIo::new(up)))
            });
            strip_hop_by_hop(rsp.headers_mut(), true, false);
            return Ok(rsp);
        }
        strip_hop_by_hop(rsp.headers_mut(), false, self.version == Version::Http2);
        Ok(rsp)
    }

    /// `CONNECT host:port`: open the TCP connection, answer 200, then copy raw bytes.
    async fn tunnel(
        &self,
        target: SocketAddr,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, ProxyError> {
        let upstream = connect(target, self.connect_timeout).await?;
        self.spawn_tunnel(target, async move {
            let downstream = hyper::upgrade::on(req).await?;
            Ok((TokioIo::new(downstream), upstream))
        });
        Ok(Response::new(empty()))
    }

    /// Copies raw bytes between the taken-over downstream connection and the upstream once
    /// `ends` yields both. The tunnel holds the connection's scope: the drain waits for it,
    /// the connection still counts as open, and the idle timeout still applies.
    fn spawn_tunnel<D, U>(
        &self,
        target: SocketAddr,
        ends: impl std::future::Future<Output = Result<(D, U), hyper::Error>> + Send + 'static,
    ) where
        D: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let scope = self.scope.clone();
        tokio::spawn(async move {
            let (mut down, mut up) = match ends.await {
                Ok(ends) => ends,
                Err(error) => {
                    tracing::debug!(%error, %target, "tunnel not established");
                    return;
                }
            };
            let copy = async {
                tokio::io::copy_bidirectional(&mut down, &mut up)
                    .await
                    .map(drop)
                    .map_err(|_| ErrorKind::Io)
            };
            if let Err(kind) =
                with_idle_timeout(&scope.activity, scope.tunnel_idle_timeout, copy).await
            {
                tracing::debug!(kind = kind.as_str(), %target, "tunnel ended");
            }
            drop(scope);
        });
    }
}

/// The `host:port` a forward-proxy request names: the authority of `CONNECT`, or of an
/// absolute-form `http://` URI. Default port 80.
pub fn request_authority<B>(req: &Request<B>) -> Result<String, ProxyError> {
    let uri = req.uri();
    let Some(authority) = uri.authority() else {
        return Err(ProxyError::BadRequest(
            "this is a forward proxy: send absolute-form requests (HTTP_PROXY) or CONNECT".into(),
        ));
    };
    if req.method() != Method::CONNECT && uri.scheme_str() != Some("http") {
        return Err(ProxyError::BadRequest(format!(
            "cannot forward scheme {:?}: use CONNECT for TLS",
            uri.scheme_str().unwrap_or("")
        )));
    }
    let port = authority.port_u16().unwrap_or(80);
    Ok(format!("{}:{port}", authority.host()))
}

async fn resolve(authority: &str) -> Result<SocketAddr, ProxyError> {
    if let Ok(addr) = authority.parse() {
        return Ok(addr);
    }
    let resolve_err = |reason: String| ProxyError::Resolve {
        authority: authority.to_owned(),
        reason,
    };
    tokio::net::lookup_host(authority)
        .await
        .map_err(|e| resolve_err(e.to_string()))?
        .next()
        .ok_or_else(|| resolve_err("no addresses".into()))
}

/// An origin server expects `/path?query`, not the absolute form a forward-proxy client sends.
fn to_origin_form(uri: &mut Uri) {
    if uri.scheme().is_none() {
        return;
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    if let Ok(origin) = path.parse() {
        *uri = origin;
    }
}

/// Adds the Host header an absolute-form request carried only in its URI.
fn ensure_host<B>(req: &mut Request<B>) {
    if req.headers().contains_key(header::HOST) {
        return;
    }
    if let Some(value) = req
        .uri()
        .authority()
        .and_then(|a| header::HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(header::HOST, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, uri: &str) -> Request<()> {
        Request::builder().method(method).uri(uri).body(()).unwrap()
    }

    #[test]
    fn forward_proxy_authorities() {
        assert_eq!(
            request_authority(&req(Method::GET, "http://orders/x")).unwrap(),
            "orders:80"
        );
        assert_eq!(
            request_authority(&req(Method::GET, "http://127.0.0.1:8080/x")).unwrap(),
            "127.0.0.1:8080"
        );
        assert_eq!(
            request_authority(&req(Method::CONNECT, "db.local:5432")).unwrap(),
            "db.local:5432"
        );
        assert!(matches!(
            request_authority(&req(Method::GET, "/x")),
            Err(ProxyError::BadRequest(_))
        ));
        assert!(matches!(
            request_authority(&req(Method::GET, "https://a/x")),
            Err(ProxyError::BadRequest(_))
        ));
    }

    #[test]
    fn absolute_form_becomes_origin_form() {
        let mut uri: Uri = "http://orders:8080/a/b?c=d".parse().unwrap();
        to_origin_form(&mut uri);
        assert_eq!(uri, "/a/b?c=d");
        let mut bare: Uri = "http://orders".parse().unwrap();
        to_origin_form(&mut bare);
        assert_eq!(bare, "/");
    }
}
