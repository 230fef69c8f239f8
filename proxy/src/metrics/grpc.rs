//! `weft_grpc_responses_total`: gRPC responses by their final `grpc-status`.
//!
//! A gRPC call's outcome is not its HTTP status (200 for nearly every call) but the
//! `grpc-status` in the trailers after the last message — or in the headers of a
//! trailers-only response — which arrives long after [`TargetMetrics::response`] counted the
//! HTTP status. So the HTTP server ([`crate::http::server`]) runs each request's handler
//! inside [`track`]: the handler's `TargetMetrics::response` leaves its target's gRPC
//! counters in a task-local slot, and `track` hands a gRPC response's body a counter that
//! counts the status once it has gone by, or `""` when the stream ends (or is abandoned)
//! without one. Non-gRPC responses pass through untouched.
//!
//! [`TargetMetrics::response`]: super::TargetMetrics::response

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderMap, Response};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::TargetLabels;
use crate::http::Body;

/// gRPC's status codes are 0 (OK) to 16 (UNAUTHENTICATED).
const CODES: [&str; 17] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
];
/// The stream ended, failed or was dropped without a status.
const NONE: usize = CODES.len();
/// A status outside 0..=16 (only a broken server sends one).
const OTHER: usize = NONE + 1;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GrpcLabels {
    grpc_status: &'static str,
    #[prometheus(flatten)]
    target: TargetLabels,
}

/// One target's gRPC counters, created on first use of each status.
#[derive(Debug)]
pub(crate) struct GrpcCounters {
    family: Family<GrpcLabels, Counter>,
    labels: TargetLabels,
    counters: [OnceLock<Counter>; OTHER + 1],
}

impl GrpcCounters {
    pub(crate) fn new(family: Family<GrpcLabels, Counter>, labels: TargetLabels) -> Self {
        GrpcCounters {
            family,
            labels,
            counters: Default::default(),
        }
    }

    fn count(&self, status: Option<&[u8]>) {
        let index = match status {
            None => NONE,
            Some(value) => std::str::from_utf8(value)
                .ok()
                .and_then(|v| CODES.iter().position(|code| *code == v.trim()))
                .unwrap_or(OTHER),
        };
        let grpc_status = match index {
            NONE => "",
            OTHER => "other",
            code => CODES[code],
        };
        self.counters[index]
            .get_or_init(|| {
                let labels = GrpcLabels {
                    grpc_status,
                    target: self.labels.clone(),
                };
                self.family.get_or_create(&labels).clone()
            })
            .inc();
    }
}

tokio::task_local! {
    /// The gRPC counters of the target the current request's response was counted on.
    static RESPONDED: Cell<Option<Arc<GrpcCounters>>>;
}

/// Called by [`super::TargetMetrics::response`]: remembers the target for [`track`]. Does
/// nothing outside `track` (tests, tools).
pub(crate) fn responded(counters: &Arc<GrpcCounters>) {
    let _ = RESPONDED.try_with(|slot| slot.set(Some(counters.clone())));
}

/// Runs one request's handler; a gRPC response it returns gets its status counted on the
/// target its HTTP status was counted on.
///
/// A future of its own rather than an async fn, and entering the task-local scope per poll
/// rather than through `LocalKey::scope`: either would wrap the handler's future (KiBs) in
/// another, and each wrapping is one more copy of it (an async fn even keeps its argument
/// beside the future it awaits).
pub(crate) fn track<F>(handler: F) -> Track<F>
where
    F: Future<Output = Response<Body>>,
{
    Track {
        handler,
        counters: None,
    }
}

pin_project_lite::pin_project! {
    /// [`track`]'s future.
    pub(crate) struct Track<F> {
        #[pin]
        handler: F,
        // What the handler has left in the task-local slot, kept between its polls.
        counters: Option<Arc<GrpcCounters>>,
    }
}

impl<F> Future for Track<F>
where
    F: Future<Output = Response<Body>>,
{
    type Output = Response<Body>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response<Body>> {
        let this = self.project();
        let handler = this.handler;
        let (poll, counters) = RESPONDED.sync_scope(Cell::new(this.counters.take()), || {
            let poll = handler.poll(cx);
            (poll, RESPONDED.with(Cell::take))
        });
        let rsp = match poll {
            Poll::Ready(rsp) => rsp,
            Poll::Pending => {
                *this.counters = counters;
                return Poll::Pending;
            }
        };
        Poll::Ready(match counters {
            Some(counters) if is_grpc(&rsp) => count_status(rsp, counters),
            _ => rsp,
        })
    }
}

/// A gRPC response: 2xx (a gRPC server always answers 200; anything else is an HTTP-level
/// failure, counted as such) with a gRPC content type.
fn is_grpc(rsp: &Response<Body>) -> bool {
    rsp.status().is_success()
        && rsp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/grpc"))
}

fn count_status(rsp: Response<Body>, counters: Arc<GrpcCounters>) -> Response<Body> {
    if let Some(status) = rsp.headers().get("grpc-status") {
        // Trailers-only: the status is in the headers and the body is empty.
        counters.count(Some(status.as_bytes()));
        return rsp;
    }
    rsp.map(|body| {
        StatusBody {
            inner: body,
            counters: Some(counters),
        }
        .boxed_unsync()
    })
}

pin_project_lite::pin_project! {
    /// Counts the `grpc-status` of the trailers going by, or none when the body ends or is
    /// dropped without them.
    struct StatusBody {
        #[pin]
        inner: Body,
        counters: Option<Arc<GrpcCounters>>,
    }

    impl PinnedDrop for StatusBody {
        fn drop(this: Pin<&mut Self>) {
            if let Some(counters) = this.project().counters.take() {
                counters.count(None);
            }
        }
    }
}

impl http_body::Body for StatusBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let poll = this.inner.poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    if let Some(counters) = this.counters.take() {
                        counters.count(status(trailers));
                    }
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                if let Some(counters) = this.counters.take() {
                    counters.count(None);
                }
            }
            Poll::Pending => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn status(trailers: &HeaderMap) -> Option<&[u8]> {
    trailers.get("grpc-status").map(|v| v.as_bytes())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{HeaderValue, StatusCode};
    use http_body_util::{Empty, Full};
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::metrics::{Direction, Metrics};

    fn grpc_response(body: Body) -> Response<Body> {
        let mut rsp = Response::new(body);
        rsp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        rsp
    }

    /// A message, then trailers with `status`.
    fn with_trailers(status: &'static str) -> Body {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static(status));
        Frames(vec![
            Frame::trailers(trailers),
            Frame::data(Bytes::from_static(b"\0\0\0\0\0")),
        ])
        .boxed_unsync()
    }

    /// Ready frames, last first.
    struct Frames(Vec<Frame<Bytes>>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = hyper::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
            Poll::Ready(self.0.pop().map(Ok))
        }
    }

    fn counted(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out.lines()
            .filter(|l| l.starts_with("weft_grpc_responses_total"))
            .map(|l| l.to_owned() + "\n")
            .collect()
    }

    #[tokio::test]
    async fn counts_the_status_from_trailers_headers_or_its_absence() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let target = metrics.for_target(Direction::Inbound, "app", None);
        let respond = |body: Body, headers_status: Option<&'static str>| {
            let target = target.clone();
            async move {
                let mut rsp = grpc_response(body);
                if let Some(status) = headers_status {
                    rsp.headers_mut()
                        .insert("grpc-status", HeaderValue::from_static(status));
                }
                target.response(rsp.status(), Duration::from_millis(1));
                rsp
            }
        };
        // Trailers: counted once read.
        let rsp = track(respond(with_trailers("14"), None)).await;
        assert_eq!(counted(&registry), "");
        rsp.into_body().collect().await.unwrap();
        // Trailers-only: counted at once.
        let _ = track(respond(
            Empty::new().map_err(|e| match e {}).boxed_unsync(),
            Some("7"),
        ))
        .await;
        // No status before the end, and a body dropped unread.
        track(respond(
            Full::new(Bytes::new())
                .map_err(|e| match e {})
                .boxed_unsync(),
            None,
        ))
        .await
        .into_body()
        .collect()
        .await
        .unwrap();
        drop(track(respond(with_trailers("0"), None)).await);
        // Not gRPC: untouched.
        let plain = track(async {
            target.response(StatusCode::OK, Duration::from_millis(1));
            Response::new(
                Full::new(Bytes::new())
                    .map_err(|e| match e {})
                    .boxed_unsync(),
            )
        })
        .await;
        drop(plain);
        let labels = r#"direction="inbound",target="app",tls="false",client_id="",server_id="""#;
        let text = counted(&registry);
        for status in ["14", "7", ""] {
            let line = format!("weft_grpc_responses_total{{grpc_status=\"{status}\",{labels}}} ");
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
        let line = format!("weft_grpc_responses_total{{grpc_status=\"\",{labels}}} 2");
        assert!(text.contains(&line), "empty status counted twice:\n{text}");
        assert_eq!(text.lines().count(), 3, "{text}");
    }

    /// The target counted in one poll of the handler is still known when it completes in a
    /// later one: the task-local slot is kept between polls.
    #[tokio::test]
    async fn the_counted_target_survives_the_handlers_later_polls() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let target = metrics.for_target(Direction::Inbound, "app", None);
        let rsp = track(async {
            target.response(StatusCode::OK, Duration::from_millis(1));
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
            let mut rsp = grpc_response(Empty::new().map_err(|e| match e {}).boxed_unsync());
            rsp.headers_mut()
                .insert("grpc-status", HeaderValue::from_static("5"));
            rsp
        })
        .await;
        drop(rsp);
        let text = counted(&registry);
        assert!(text.contains(r#"grpc_status="5""#), "{text}");
        // Outside `track` nothing is left behind for the next request.
        assert!(RESPONDED.try_with(|_| ()).is_err());
    }
}
