//! One request as tracing and the access log see it: started when its head arrives
//! ([`ConnObserver::start`], which also writes the forwarded trace context), finished when
//! the response body has been sent or abandoned, at which point its span and access-log
//! record are queued ([`super::Tracer::submit`], [`AccessLog::submit`]).
//!
//! What only the forwarding code learns — the address each attempt went to, the meshed
//! Service and route — is noted through a task-local ([`note_upstream`], [`note_service`]),
//! so the traffic path reports it without carrying anything through its signatures. With
//! tracing and the access log both off there is no [`ConnObserver`] state at all and the
//! notes are a failed task-local lookup.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use prometheus_client::registry::Registry;
use weft_api::SpiffeId;

use super::context::{self, Outgoing, TraceId};
use super::{Resource, SpanKind, SpanRecord, TraceError, Tracer, Value};
use crate::access_log::{AccessLog, Record};
use crate::authz::POLICY_HEADER;
use crate::bootstrap::RunArgs;
use crate::config::{Config, ConfigStore};
use crate::http::error::PROXY_ERROR_HEADER;
use crate::http::Body;
use crate::metrics::Direction;
use crate::tls::Upstream;
use crate::traffic::services::Target;

/// Tracing and the access log, for the whole process.
#[derive(Clone, Default)]
pub struct Observer {
    tracer: Option<Arc<Tracer>>,
    access_log: Option<AccessLog>,
}

impl Observer {
    /// Starts the span exporter (when a collector is configured) and the access-log writer.
    pub fn start(
        args: &RunArgs,
        config: &Arc<ConfigStore>,
        registry: &mut Registry,
    ) -> Result<Observer, TraceError> {
        let identity = &args.identity;
        let service_account = identity
            .identity
            .as_ref()
            .and_then(|id| id.service_account())
            .map(|(ns, sa)| (ns.to_owned(), sa.to_owned()))
            .or_else(|| {
                identity
                    .namespace
                    .clone()
                    .zip(identity.service_account.clone())
            });
        let resource = Resource {
            service_name: args.trace.trace_service_name.clone().unwrap_or_else(|| {
                service_account
                    .as_ref()
                    .map_or_else(|| "weft-proxy".to_owned(), |(ns, sa)| format!("{sa}.{ns}"))
            }),
            namespace: service_account.map(|(ns, _)| ns),
            pod: args.pod_name.clone(),
        };
        Ok(Observer {
            tracer: Tracer::start(&args.trace, resource, registry)?,
            access_log: Some(AccessLog::start(args.access_log.clone(), config, registry)),
        })
    }

    /// What one connection's requests are observed with, given its config snapshot.
    pub fn connection(
        &self,
        config: &Config,
        direction: Direction,
        client_id: Option<&SpiffeId>,
    ) -> ConnObserver {
        let access_log = self.access_log.as_ref().filter(|l| l.enabled(config));
        if self.tracer.is_none() && access_log.is_none() {
            return ConnObserver(None);
        }
        ConnObserver(Some(Arc::new(ConnShared {
            tracer: self.tracer.clone(),
            access_log: access_log.cloned(),
            direction,
            client_id: client_id.map(|id| id.as_str().to_owned()),
        })))
    }

    /// Sends what is queued (spans and log lines), waiting at most `limit`.
    pub async fn flush(&self, limit: Duration) {
        let spans = async {
            if let Some(tracer) = &self.tracer {
                tracer.flush(limit).await;
            }
        };
        let lines = async {
            if let Some(log) = &self.access_log {
                log.flush(limit).await;
            }
        };
        tokio::join!(spans, lines);
    }
}

/// One connection's share: `None` when nothing observes its requests.
#[derive(Clone, Default)]
pub struct ConnObserver(Option<Arc<ConnShared>>);

struct ConnShared {
    tracer: Option<Arc<Tracer>>,
    access_log: Option<AccessLog>,
    direction: Direction,
    client_id: Option<String>,
}

impl ConnObserver {
    /// Starts observing a request whose head just arrived, and writes the proxy's trace
    /// context into it. `None` when neither a span nor a log line will come of it (tracing
    /// and the access log off, or an unsampled request without the log).
    pub fn start<B>(&self, req: &mut Request<B>) -> Option<Exchange> {
        let conn = self.0.as_ref()?;
        let mut span = None;
        let mut trace_id = None;
        if let Some(tracer) = &conn.tracer {
            let found = context::extract(req.headers());
            let trace = found
                .parent
                .map_or_else(super::new_trace_id, |(trace, _)| trace);
            let sampled = found.debug || found.sampled.unwrap_or_else(|| tracer.sample(&trace));
            let ctx = Outgoing {
                trace_id: trace,
                span_id: super::new_span_id(),
                parent: found.parent.map(|(_, span)| span),
                sampled,
                debug: found.debug,
                short_trace_id: found.short_trace_id,
            };
            context::inject(req.headers_mut(), &ctx, found.formats);
            if sampled {
                let trace_state = req
                    .headers()
                    .get(context::TRACESTATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                span = Some((ctx, trace_state));
            }
            trace_id = Some(trace);
        } else if conn.access_log.is_some() {
            trace_id = context::trace_id_of(req.headers());
        }
        if span.is_none() && conn.access_log.is_none() {
            return None;
        }
        let uri = req.uri();
        let authority = uri.authority().map(|a| a.as_str().to_owned()).or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        });
        Some(Exchange {
            conn: conn.clone(),
            started: Instant::now(),
            started_at: SystemTime::now(),
            method: req.method().clone(),
            authority,
            path: uri.path().to_owned(),
            protocol: match req.version() {
                http::Version::HTTP_2 => "HTTP/2",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            bytes_in: content_length(req.headers()),
            span,
            trace_id,
            notes: Arc::default(),
            status: StatusCode::OK,
            proxy_error: None,
            authz_policy: None,
        })
    }
}

/// One observed request, from its head to the end of its response.
pub struct Exchange {
    conn: Arc<ConnShared>,
    started: Instant,
    started_at: SystemTime,
    method: Method,
    authority: Option<String>,
    path: String,
    protocol: &'static str,
    bytes_in: Option<u64>,
    /// The proxy's span and the tracestate it carries, when sampled.
    span: Option<(Outgoing, String)>,
    trace_id: Option<TraceId>,
    notes: Arc<Notes>,
    status: StatusCode,
    proxy_error: Option<String>,
    authz_policy: Option<String>,
}

impl Exchange {
    /// `dispatch` (the forwarding of the request) with the notes in scope; its response goes
    /// to [`respond`](Self::respond).
    ///
    /// Not an async fn taking `dispatch` and awaiting it: an async fn keeps its arguments in
    /// its own future and the future it awaits them in besides, so the request's whole
    /// forwarding future would be in it twice (several KiB, copied when it is boxed).
    pub fn scope<F>(&self, dispatch: F) -> impl Future<Output = Response<Body>>
    where
        F: Future<Output = Response<Body>>,
    {
        NOTES.scope(self.notes.clone(), dispatch)
    }

    /// Returns the response of the [`scope`](Self::scope)d dispatch with a body that finishes
    /// the exchange when it ends.
    pub fn respond(mut self, rsp: Response<Body>) -> Response<Body> {
        self.status = rsp.status();
        let text = |name: &str| {
            rsp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        self.proxy_error = text(PROXY_ERROR_HEADER);
        self.authz_policy = text(POLICY_HEADER);
        rsp.map(|inner| {
            ObservedBody {
                inner,
                bytes: 0,
                exchange: Some(self),
            }
            .boxed_unsync()
        })
    }

    fn finish(self, bytes_out: u64) {
        let elapsed = self.started.elapsed();
        let notes = std::mem::take(&mut *lock(&self.notes));
        let conn = &self.conn;
        let server_id = notes.server_id.as_ref().map(|id| id.as_str().to_owned());
        let upstream = notes.upstream.map(|a| a.to_string());
        let retries = notes.attempts.saturating_sub(1);
        if let (Some(tracer), Some((ctx, trace_state))) = (&conn.tracer, &self.span) {
            let mut attributes = vec![
                ("weft.direction", Value::Str(conn.direction.as_str().into())),
                ("http.request.method", Value::Str(self.method.to_string())),
                (
                    "http.response.status_code",
                    Value::Int(i64::from(self.status.as_u16())),
                ),
                (
                    "network.protocol.version",
                    Value::Str(version(self.protocol)),
                ),
            ];
            let mut add = |key, value: Option<&String>| {
                if let Some(v) = value {
                    attributes.push((key, Value::Str(v.clone())));
                }
            };
            if tracer.record_path {
                add("url.path", Some(&self.path));
            }
            add("server.address", self.authority.as_ref());
            add("weft.target", notes.target.as_ref());
            add("weft.route", notes.route.as_ref());
            add("weft.upstream.address", upstream.as_ref());
            add("weft.client.identity", conn.client_id.as_ref());
            add("weft.server.identity", server_id.as_ref());
            add("weft.proxy_error", self.proxy_error.as_ref());
            add("weft.authz.policy", self.authz_policy.as_ref());
            if retries > 0 {
                attributes.push(("weft.retries", Value::Int(i64::from(retries))));
            }
            let kind = match conn.direction {
                Direction::Inbound => SpanKind::Server,
                Direction::Outbound => SpanKind::Client,
            };
            // OpenTelemetry's HTTP conventions: 5xx fails a server span, 4xx too a client's.
            let failed = self.status.is_server_error()
                || (kind == SpanKind::Client && self.status.is_client_error());
            let service = notes.target.as_ref().or(self.authority.as_ref());
            tracer.submit(SpanRecord {
                trace_id: ctx.trace_id,
                span_id: ctx.span_id,
                parent: ctx.parent,
                trace_state: trace_state.clone(),
                sampled: true,
                kind,
                name: match service {
                    Some(service) => format!("{} {service}", self.method),
                    None => self.method.to_string(),
                },
                start: self.started_at,
                end: self.started_at + elapsed,
                attributes,
                error: failed.then(|| self.proxy_error.clone().unwrap_or_default()),
            });
        }
        if let Some(log) = &conn.access_log {
            log.submit(Record {
                timestamp: self.started_at,
                direction: conn.direction.as_str(),
                method: self.method.to_string(),
                authority: self.authority,
                path: self.path,
                protocol: self.protocol,
                status: self.status.as_u16(),
                duration_ms: elapsed,
                bytes_in: self.bytes_in,
                bytes_out,
                upstream,
                client_id: conn.client_id.clone(),
                server_id,
                target: notes.target,
                route: notes.route,
                authz_policy: self.authz_policy,
                retries,
                proxy_error: self.proxy_error,
                trace_id: self.trace_id.map(|t| context::hex(&t)),
            });
        }
    }
}

fn version(protocol: &str) -> String {
    protocol.trim_start_matches("HTTP/").to_owned()
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The response body, counted; its end (or its drop, when the client goes away) finishes
/// the exchange, once.
struct ObservedBody {
    inner: Body,
    bytes: u64,
    exchange: Option<Exchange>,
}

impl ObservedBody {
    fn finish(&mut self) {
        if let Some(exchange) = self.exchange.take() {
            exchange.finish(self.bytes);
        }
    }
}

impl http_body::Body for ObservedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
            Poll::Ready(_) => self.finish(),
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

impl Drop for ObservedBody {
    fn drop(&mut self) {
        self.finish();
    }
}

tokio::task_local! {
    static NOTES: Arc<Notes>;
}

/// What the forwarding code learned about the request.
#[derive(Default)]
struct Notes(Mutex<Noted>);

#[derive(Default)]
struct Noted {
    upstream: Option<SocketAddr>,
    server_id: Option<SpiffeId>,
    attempts: u32,
    target: Option<String>,
    route: Option<String>,
}

fn lock(notes: &Notes) -> std::sync::MutexGuard<'_, Noted> {
    notes.0.lock().unwrap_or_else(|e| e.into_inner())
}

/// Notes that the request is being sent to `upstream` (once per attempt).
pub fn note_upstream(upstream: &Upstream) {
    let _ = NOTES.try_with(|notes| {
        let mut noted = lock(notes);
        noted.upstream = Some(upstream.addr);
        noted.server_id.clone_from(&upstream.identity);
        noted.attempts += 1;
    });
}

/// Notes that the request is a call to the meshed Service port `target`, and which of its
/// routes matches (the same choice the traffic path makes).
pub fn note_service<B>(target: &Target, req: &Request<B>) {
    let _ = NOTES.try_with(|notes| {
        let route = target
            .routes
            .select(req.method(), req.uri(), req.headers())
            .map(|rule| rule.route.to_string());
        let mut noted = lock(notes);
        noted.target = Some(target.label.clone());
        noted.route = route;
    });
}
