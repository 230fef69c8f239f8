//! Serving one downstream HTTP connection with hyper, within the limits that keep a slow or
//! hostile client from holding the proxy: a request-head timeout ([`super::head_timeout`]),
//! a header size limit (431), and a drain that lets in-flight requests finish.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::body::OnEnd;
use super::forward::Forwarder;
use super::head_timeout::HeadTimer;
use super::pool::Version;
use crate::config::Config;
use crate::metrics::{grpc, ErrorKind};

/// Serves HTTP on `io` until the client is done, the connection fails, or a drain completes.
/// Returns the error kind to count when the connection ended abnormally.
pub async fn serve<I>(io: I, forwarder: Arc<Forwarder>, config: &Config) -> Result<(), ErrorKind>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let scope = forwarder.scope.clone();
    let result = match forwarder.version {
        Version::Http1 => {
            let head_timer = HeadTimer::new(scope.activity.clone());
            let timer = head_timer.clone();
            let service = service_fn(move |req| {
                let forwarder = forwarder.clone();
                let guard = timer.request_started();
                async move {
                    Ok::<_, Infallible>(
                        // Boxed: the handler's future is several KiB, and the wrappers
                        // around it (the gRPC status's task-local scope, hyper's service
                        // future) would otherwise copy it whole at each move; the copies
                        // were ~9 % of the proxy's CPU at full load.
                        grpc::track(Box::pin(forwarder.handle(req)))
                            .await
                            .map(|b| OnEnd::new(b, move || drop(guard))),
                    )
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(None)
                .max_buf_size(config.max_header_bytes);
            let conn = builder.serve_connection(io, service).with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => res.map_err(|e| classify(&e)),
                _ = head_timer.expired(config.header_read_timeout) => Err(ErrorKind::HeaderTimeout),
                _ = scope.drain.signaled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await.map_err(|e| classify(&e))
                }
            }
        }
        Version::Http2 => {
            let service = service_fn(move |req| {
                let forwarder = forwarder.clone();
                async move {
                    // Boxed for the same reason as above.
                    Ok::<_, Infallible>(grpc::track(Box::pin(forwarder.handle(req))).await)
                }
            });
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX));
            let conn = builder.serve_connection(io, service);
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => res.map_err(|e| classify(&e)),
                _ = scope.drain.signaled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await.map_err(|e| classify(&e))
                }
            }
        }
    };
    if let Err(kind) = result {
        tracing::debug!(kind = kind.as_str(), "downstream HTTP connection failed");
    }
    result
}

fn classify(error: &hyper::Error) -> ErrorKind {
    if error.is_parse_too_large() {
        ErrorKind::HeaderTooLarge
    } else if error.is_parse() || error.is_parse_status() {
        ErrorKind::BadRequest
    } else if error.is_timeout() {
        ErrorKind::HeaderTimeout
    } else {
        ErrorKind::Io
    }
}
