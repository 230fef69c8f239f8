//! The upstream test server: HTTP/1.1, keep-alive, a fixed small body for every request.
//!
//! It stands in for the application behind the proxy, so it must be cheap enough that the
//! proxy (not the app) is what the scenarios measure: no routing, no allocation per request
//! beyond what hyper needs, the body a shared `Bytes`.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The default response body size, a typical small JSON reply.
pub const DEFAULT_BODY_BYTES: usize = 64;

/// A body of `len` printable bytes ending in a newline.
pub fn body_of(len: usize) -> Bytes {
    let mut body = vec![b'x'; len];
    if let Some(last) = body.last_mut() {
        *last = b'\n';
    }
    Bytes::from(body)
}

/// Accepts connections on `listener` forever, answering `200 OK` with `body` to every
/// request. Each connection is its own task; a failing connection only ends itself.
pub async fn serve(listener: TcpListener, body: Bytes) -> std::io::Result<()> {
    loop {
        let (stream, _peer) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_req| {
                let mut resp = Response::new(Full::new(body.clone()));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain"),
                );
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Binds `addr` (port 0 picks one) and returns the listener and its actual address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
