//! One request, from the downstream connection to the upstream and back: find where it goes,
//! strip hop-by-hop fields, send it through the pool, and pass upgrades (WebSocket) and
//! `CONNECT` tunnels through as raw bytes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::borrow::Cow;

use http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::error::{empty, ProxyError};
use super::headers::{is_upgrade_request, remove_hop_by_hop, strip_hop_by_hop, RequestFields};
use super::pool::{ConnectSettings, Pool, Version};
use super::Body;
use crate::authz::ConnAuthz;
use crate::conn::{with_idle_timeout, ConnScope};
use crate::connect::connect;
use crate::discovery::ViewStore;
use crate::metrics::{Direction, ErrorKind, Metrics, TargetMetrics};
use crate::tls::Upstream;
use crate::traffic::services::{ServiceTable, Target};
use tokio::io::{AsyncRead, AsyncWrite};

/// Where the requests on one connection go.
#[derive(Clone)]
pub enum Destination {
    /// Every request goes to one upstream (a redirected connection's original destination,
    /// the app behind the inbound listener, or a static listener's target).
    Fixed {
        upstream: Upstream,
        metrics: TargetMetrics,
    },
    /// Forward-proxy mode: each request names its target in an absolute-form URI, or asks
    /// for a tunnel with `CONNECT`.
    FromRequest,
}

/// Marks a request that an HTTP/1.1 client sent and the mesh hop carried as HTTP/2; the
/// receiving proxy removes it and restores HTTP/1.1 for its app.
pub const ORIG_PROTO_HEADER: &str = "weft-orig-proto";
const ORIG_PROTO_HTTP1: &str = "HTTP/1.1";
/// [`ORIG_PROTO_HEADER`] as a name, so that looking it up does not parse the string each
/// time (it is removed from every request).
static ORIG_PROTO_NAME: HeaderName = HeaderName::from_static(ORIG_PROTO_HEADER);

/// Everything a connection's requests share. Built once per downstream connection.
pub struct Forwarder {
    pub direction: Direction,
    pub destination: Destination,
    /// The protocol the downstream client speaks.
    pub version: Version,
    pub pool: Arc<Pool>,
    pub metrics: Metrics,
    pub connect_timeout: Duration,
    /// The listener's own address, to refuse requests that would loop back to it.
    pub listener: SocketAddr,
    /// Held by tunnels that outlive their request.
    pub scope: ConnScope,
    /// Inbound with a view from the control plane: every request is authorized first.
    pub authz: Option<ConnAuthz>,
    /// Tracing and the access log of this connection's requests ([`crate::trace`]).
    pub observe: crate::trace::ConnObserver,
    /// Outbound with a view from the control plane: calls to its Services are routed,
    /// balanced and retried ([`crate::traffic`]).
    pub services: Option<Arc<ViewStore>>,
}

impl Forwarder {
    /// Handles one request, traced and logged when tracing or the access log is on.
    ///
    /// Not an async fn, and taking the connection's `Arc`: the future is built here, whole,
    /// so the server can move it into place once. An async fn would also keep the request
    /// (and the exchange) in its future beside the dispatch future holding them.
    pub fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
    ) -> impl std::future::Future<Output = Response<Body>> + Send {
        match self.observe.start(&mut req) {
            // Boxed, like the call to a meshed Service in `dispatch`: the exchange and the
            // task-local scope around the dispatch would otherwise add to every request's
            // future, observed or not.
            Some(exchange) => Either::Left {
                fut: Box::pin(self.observed(exchange, req)),
            },
            None => Either::Right {
                fut: self.dispatch(req),
            },
        }
    }

    async fn observed(
        self: Arc<Self>,
        exchange: crate::trace::Exchange,
        req: Request<Incoming>,
    ) -> Response<Body> {
        // Awaited here rather than passed to an async fn of the exchange, which would hold
        // the dispatch future twice (see `Exchange::scope`).
        let rsp = exchange.scope(self.dispatch(req)).await;
        exchange.respond(rsp)
    }

    async fn dispatch(self: Arc<Self>, mut req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        if let Some((table, target)) = self.service_for(&req) {
            // Boxed: routing, retries, replayable bodies and timeouts make the call's future
            // twice the size of the plain path's, which every request's future would
            // otherwise have, and be copied with (the server keeps it in place, unboxed).
            return Box::pin(self.call_service(started, table, target, req)).await;
        }
        let (target, metrics) = match self.resolve(&req).await {
            Ok(resolved) => resolved,
            Err(error) => {
                tracing::info!(%error, direction = self.direction.as_str(), "cannot route request");
                return error.into_response();
            }
        };
        metrics.requests().inc();
        if let Some(authz) = &self.authz {
            if let Some(denied) = authz.denial(&mut req) {
                metrics.response(denied.status(), started.elapsed());
                return denied;
            }
        }
        // `tunnel` and `forward_via` are awaited here rather than through an async fn that
        // takes the request and picks one: each such layer would keep a copy of the request
        // in the future of every request (see `Exchange::scope`).
        let result = if req.method() == Method::CONNECT
            && matches!(self.destination, Destination::FromRequest)
        {
            self.tunnel(&target, req).await
        } else {
            let settings = ConnectSettings::plain(self.connect_timeout);
            self.forward_via(&target, req, &settings).await
        };
        let rsp = match result {
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

    /// A request to a meshed Service ([`crate::traffic::call`]), counted on the Service.
    async fn call_service(
        &self,
        started: Instant,
        table: Arc<ServiceTable>,
        target: Arc<Target>,
        req: Request<Incoming>,
    ) -> Response<Body> {
        crate::trace::request::note_service(&target, &req);
        let metrics =
            self.metrics
                .for_target(self.direction, &target.label, target.identity.as_ref());
        metrics.requests().inc();
        let rsp = match crate::traffic::call::call(self, &table, &target, req).await {
            Ok(rsp) => rsp,
            Err(error) => {
                tracing::info!(%error, target = %target.label, "request failed");
                metrics.error(error.kind());
                error.into_response()
            }
        };
        metrics.response(rsp.status(), started.elapsed());
        rsp
    }

    /// The meshed Service a request is for, when the view knows its destination: the
    /// original destination's cluster IP (transparent mode) or the host a forward-proxy
    /// request names (local mode). Upgrades and `CONNECT` keep the plain path.
    fn service_for(&self, req: &Request<Incoming>) -> Option<(Arc<ServiceTable>, Arc<Target>)> {
        let views = self.services.as_ref()?;
        if req.method() == Method::CONNECT || is_upgrade_request(req.headers()) {
            return None;
        }
        let table = views.load().as_ref()?.services.clone();
        let target = match &self.destination {
            Destination::Fixed { upstream, .. } if upstream.identity.is_none() => {
                table.by_addr(upstream.addr)?.clone()
            }
            Destination::Fixed { .. } => return None,
            Destination::FromRequest => {
                let authority = req.uri().authority()?;
                table
                    .by_host(authority.host(), authority.port_u16().unwrap_or(80))?
                    .clone()
            }
        };
        Some((table, target))
    }

    /// The request's upstream and metrics: borrowed from the connection when fixed, made per
    /// request in forward-proxy mode.
    async fn resolve(
        &self,
        req: &Request<Incoming>,
    ) -> Result<(Cow<'_, Upstream>, Cow<'_, TargetMetrics>), ProxyError> {
        match &self.destination {
            Destination::Fixed { upstream, metrics } => {
                Ok((Cow::Borrowed(upstream), Cow::Borrowed(metrics)))
            }
            Destination::FromRequest => {
                let authority = request_authority(req)?;
                let addr = resolve(&authority).await?;
                if addr == self.listener {
                    return Err(ProxyError::Loop(authority));
                }
                let metrics = self.metrics.for_target(self.direction, &authority, None);
                Ok((Cow::Owned(Upstream::plain(addr)), Cow::Owned(metrics)))
            }
        }
    }

    /// Sends `req` to `target` through the pool, converting between HTTP versions as the hop
    /// needs, and passes an upgrade through.
    pub async fn forward_to<B>(
        &self,
        target: &Upstream,
        req: Request<B>,
    ) -> Result<Response<Body>, ProxyError>
    where
        B: http_body::Body<Data = bytes::Bytes, Error = hyper::Error> + Send + 'static,
    {
        let settings = ConnectSettings::plain(self.connect_timeout);
        self.forward_via(target, req, &settings).await
    }

    /// [`forward_to`](Self::forward_to) with the connection timeouts and limits of the
    /// Service being called.
    pub async fn forward_via<B>(
        &self,
        target: &Upstream,
        mut req: Request<B>,
        settings: &ConnectSettings<'_>,
    ) -> Result<Response<Body>, ProxyError>
    where
        B: http_body::Body<Data = bytes::Bytes, Error = hyper::Error> + Send + 'static,
    {
        use http_body_util::BodyExt;
        crate::trace::request::note_upstream(target);
        let fields = RequestFields::scan(req.headers(), &ORIG_PROTO_NAME);
        let upgrade = self.version == Version::Http1 && fields.upgrade;
        // Only the mesh hop may carry the marker; whatever arrives with it is restored.
        let crossed_as_h1 = fields.marker
            && req
                .headers_mut()
                .remove(&ORIG_PROTO_NAME)
                .is_some_and(|v| v == ORIG_PROTO_HTTP1);
        let upstream_version = if upgrade {
            // An upgrade takes the connection over: it needs HTTP/1.1 end to end.
            Version::Http1
        } else if target.identity.is_some() {
            // Between proxies, one multiplexed HTTP/2 connection serves every request.
            Version::Http2
        } else if crossed_as_h1 {
            Version::Http1
        } else {
            self.version
        };
        let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        if upgrade || fields.hop_by_hop {
            remove_hop_by_hop(
                req.headers_mut(),
                upgrade,
                upstream_version == Version::Http2,
            );
        }
        match (self.version, upstream_version) {
            (Version::Http1, Version::Http2) => {
                to_http2(&mut req, target.addr);
                req.headers_mut().insert(
                    ORIG_PROTO_NAME.clone(),
                    HeaderValue::from_static(ORIG_PROTO_HTTP1),
                );
            }
            (_, Version::Http1) => {
                *req.version_mut() = http::Version::HTTP_11;
                // `Connection` may have listed `Host` for removal: only a request without
                // hop-by-hop fields surely still has the Host the scan saw.
                if !fields.host || fields.hop_by_hop {
                    ensure_host(&mut req);
                }
                to_origin_form(req.uri_mut());
            }
            (Version::Http2, Version::Http2) => {}
        }
        let req = req.map(|b| b.boxed_unsync());
        // Not `Pool::send`, one more async fn holding the request (see `Exchange::scope`).
        let sent = match upstream_version {
            Version::Http1 => self.pool.send_http1(target, req, settings).await,
            Version::Http2 => self.pool.send_http2(target, req, settings).await,
        };
        let mut rsp = sent?;

        if let (StatusCode::SWITCHING_PROTOCOLS, Some(downstream)) =
            (rsp.status(), downstream_upgrade)
        {
            let upstream = hyper::upgrade::on(&mut rsp);
            self.spawn_tunnel(target.addr, async move {
                let (down, up) = tokio::try_join!(downstream, upstream)?;
                Ok((TokioIo::new(down), TokioIo::new(up)))
            });
            strip_hop_by_hop(rsp.headers_mut(), true, false);
            return Ok(rsp);
        }
        strip_hop_by_hop(rsp.headers_mut(), false, self.version == Version::Http2);
        *rsp.version_mut() = match self.version {
            Version::Http1 => http::Version::HTTP_11,
            Version::Http2 => http::Version::HTTP_2,
        };
        Ok(rsp)
    }

    /// `CONNECT host:port`: open the TCP connection, answer 200, then copy raw bytes.
    async fn tunnel(
        &self,
        target: &Upstream,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, ProxyError> {
        crate::trace::request::note_upstream(target);
        let upstream = connect(target.addr, self.connect_timeout).await?;
        self.spawn_tunnel(target.addr, async move {
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

pin_project_lite::pin_project! {
    /// One of two futures with the same output.
    #[project = EitherProj]
    enum Either<L, R> {
        Left { #[pin] fut: L },
        Right { #[pin] fut: R },
    }
}

impl<L, R, T> std::future::Future for Either<L, R>
where
    L: std::future::Future<Output = T>,
    R: std::future::Future<Output = T>,
{
    type Output = T;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<T> {
        match self.project() {
            EitherProj::Left { fut } => fut.poll(cx),
            EitherProj::Right { fut } => fut.poll(cx),
        }
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

/// An HTTP/1.1 request made ready for an HTTP/2 hop: the authority moves from `Host` into
/// the URI (`:authority`), which HTTP/2 requires with the scheme.
fn to_http2<B>(req: &mut Request<B>, fallback: SocketAddr) {
    let authority = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .or_else(|| req.uri().authority().cloned())
        .unwrap_or_else(|| {
            // A SocketAddr always renders as a valid authority.
            fallback
                .to_string()
                .parse()
                .expect("socket address is an authority")
        });
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(authority);
    parts.path_and_query = Some(path);
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    req.headers_mut().remove(header::HOST);
    *req.version_mut() = http::Version::HTTP_2;
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

    /// The server keeps each request's future in place, unboxed, and every move of it copies
    /// all of it: the large paths (a meshed Service's call, an observed exchange) are boxed
    /// so that the plain path's future stays small, and the gRPC tracking around it holds it
    /// once.
    #[test]
    fn a_request_future_stays_small() {
        fn output_size<F>(_: fn(Arc<Forwarder>, Request<Incoming>) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        fn call_size<'a, F>(
            _: fn(&'a Forwarder, &'a ServiceTable, &'a Arc<Target>, Request<Incoming>) -> F,
        ) -> usize {
            std::mem::size_of::<F>()
        }
        let handle = output_size(|f, r| f.handle(r));
        let tracked = output_size(|f, r| crate::metrics::grpc::track(f.handle(r)));
        let call = call_size(crate::traffic::call::call);
        // ~2.4 KiB when written; a meshed Service's call alone is ~3.6 KiB.
        assert!(handle <= 3 * 1024, "{handle} bytes");
        assert!(call > handle, "{call} bytes: no longer worth its box?");
        assert!(tracked <= handle + 64, "{tracked} bytes, from {handle}");
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
    fn http1_requests_become_http2_with_an_authority() {
        let mut r = Request::builder()
            .uri("/a?b=c")
            .header("host", "orders:8080")
            .body(())
            .unwrap();
        to_http2(&mut r, "10.0.0.1:80".parse().unwrap());
        assert_eq!(r.uri(), "http://orders:8080/a?b=c");
        assert_eq!(r.version(), http::Version::HTTP_2);
        assert!(!r.headers().contains_key("host"));
        let mut no_host = req(Method::GET, "/x");
        to_http2(&mut no_host, "10.0.0.1:80".parse().unwrap());
        assert_eq!(no_host.uri(), "http://10.0.0.1:80/x");
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
