//! Serving one downstream HTTP connection with hyper, within the limits that keep a slow or
//! hostile client from holding the proxy: a request-head timeout ([`super::head_timeout`]),
//! a header size limit (431), and a drain that lets in-flight requests finish.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Response;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::body::OnEnd;
use super::forward::Forwarder;
use super::head_timeout::HeadTimer;
use super::pool::Version;
use super::Body;
use crate::config::Config;
use crate::metrics::{grpc, ErrorKind};
use crate::wake::OnWake;

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
                let guard = timer.request_started();
                // Neither boxed nor wrapped in an async block: hyper keeps the service future
                // in one allocation per connection and the handler's future is kept small
                // for that (the rare, large paths box their own), but each move of it
                // copies all of it, and an async block would move it once more when first
                // polled. Built here, it is moved into place with little else to copy.
                Respond {
                    inner: grpc::track(forwarder.clone().handle(req)),
                    then: Some(move |rsp: Response<Body>| {
                        rsp.map(|b| OnEnd::new(b, move || drop(guard)))
                    }),
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(None)
                .max_buf_size(config.max_header_bytes);
            let conn = builder.serve_connection(io, service).with_upgrades();
            tokio::pin!(conn);
            // The watchdogs are polled only when they woke (see `OnWake`), so the order is
            // fixed rather than drawn at random per poll: it would decide nothing but a tie.
            tokio::select! {
                biased;
                res = conn.as_mut() => res.map_err(|e| classify(&e)),
                _ = OnWake::new(head_timer.expired(config.header_read_timeout)) => {
                    Err(ErrorKind::HeaderTimeout)
                }
                _ = OnWake::new(scope.drain.signaled()) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await.map_err(|e| classify(&e))
                }
            }
        }
        Version::Http2 => {
            let service = service_fn(move |req| {
                let forwarder = forwarder.clone();
                async move {
                    // Still boxed, unlike HTTP/1's (only that path was measured unboxed):
                    // hyper spawns each stream's future as a task of its own.
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
                biased;
                res = conn.as_mut() => res.map_err(|e| classify(&e)),
                _ = OnWake::new(scope.drain.signaled()) => {
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

pin_project_lite::pin_project! {
    /// An HTTP/1 request's handler, and what to do with its response.
    struct Respond<F, G> {
        #[pin]
        inner: F,
        then: Option<G>,
    }
}

impl<F, G, T> Future for Respond<F, G>
where
    F: Future,
    G: FnOnce(F::Output) -> T,
{
    type Output = Result<T, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        // Taken once: hyper drops a service future once it has completed.
        let then = this.then.take().expect("Respond polled after completion");
        Poll::Ready(Ok(then(out)))
    }
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
