//! OTLP/gRPC export: one task batches finished spans (up to [`super::BATCH_SIZE`], or what
//! arrived within the flush interval) and sends each batch as an `ExportTraceServiceRequest`
//! over a lazily connected tonic channel, which reconnects by itself. One export is in flight
//! at a time; while the collector is slow the queue fills, and what does not fit is dropped
//! by the request path ([`super::Tracer::submit`]). A batch the collector refuses or that
//! times out is dropped and counted, not retried: the next batch is already waiting.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource as OtlpResource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Channel, Endpoint};

use super::{DropLabels, Resource, SpanKind, SpanRecord, TraceMetrics, Value, BATCH_SIZE};

/// A collector that has not answered in this long is treated as failed for that batch.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `SpanFlags`: the parent's remoteness is known, and the parent is remote (it always is:
/// the caller's span, from another process).
const FLAGS_HAS_IS_REMOTE: u32 = 0x100;
const FLAGS_IS_REMOTE: u32 = 0x200;

pub(super) enum Msg {
    Span(Box<SpanRecord>),
    Flush(oneshot::Sender<()>),
}

/// A lazily connected channel to the collector. `host:port` means `http://host:port`.
pub(super) fn channel(collector: &str) -> Result<Channel, String> {
    let uri = if collector.contains("://") {
        collector.to_owned()
    } else {
        format!("http://{collector}")
    };
    if !uri.starts_with("http://") {
        return Err("only plaintext OTLP/gRPC (http://) is supported: send to a collector agent on the node or in the pod".into());
    }
    let endpoint = Endpoint::from_shared(uri).map_err(|e| e.to_string())?;
    Ok(endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(EXPORT_TIMEOUT)
        .connect_lazy())
}

pub(super) async fn run(
    channel: Channel,
    resource: Resource,
    mut rx: mpsc::Receiver<Msg>,
    interval: Duration,
    metrics: TraceMetrics,
) {
    let mut client = TraceServiceClient::new(channel);
    let resource = otlp_resource(&resource);
    let mut batch: Vec<Span> = Vec::with_capacity(BATCH_SIZE);
    let mut flushes = Vec::new();
    let mut failing = false;
    loop {
        // Wait for a first span (or a flush), then up to `interval` for the batch to fill.
        let Some(first) = rx.recv().await else { break };
        let deadline = tokio::time::Instant::now() + interval;
        let mut next = Some(first);
        loop {
            match next.take() {
                Some(Msg::Span(span)) => batch.push(to_otlp(*span)),
                Some(Msg::Flush(done)) => {
                    flushes.push(done);
                    break;
                }
                None => {}
            }
            if batch.len() >= BATCH_SIZE {
                break;
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(msg)) => next = Some(msg),
                Ok(None) | Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let spans = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_SIZE));
            let count = spans.len() as u64;
            let request = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(resource.clone()),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "weft-proxy".into(),
                            version: env!("CARGO_PKG_VERSION").into(),
                            ..Default::default()
                        }),
                        spans,
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }],
            };
            match client.export(request).await {
                Ok(rsp) => {
                    let rejected = rsp
                        .into_inner()
                        .partial_success
                        .map_or(0, |p| p.rejected_spans.max(0) as u64);
                    metrics.exported.inc_by(count.saturating_sub(rejected));
                    dropped(&metrics, rejected);
                    if failing {
                        tracing::info!("span export to the collector works again");
                        failing = false;
                    }
                }
                Err(status) => {
                    dropped(&metrics, count);
                    // Once per outage, not once per batch.
                    if !failing {
                        tracing::warn!(code = ?status.code(), message = status.message(), "span export failed; dropping spans until the collector answers");
                        failing = true;
                    }
                }
            }
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

fn dropped(metrics: &TraceMetrics, n: u64) {
    if n > 0 {
        metrics
            .dropped
            .get_or_create(&DropLabels {
                reason: "export_failed",
            })
            .inc_by(n);
    }
}

fn otlp_resource(resource: &Resource) -> OtlpResource {
    let mut attributes = vec![kv(
        "service.name",
        Value::Str(resource.service_name.clone()),
    )];
    if let Some(ns) = &resource.namespace {
        attributes.push(kv("k8s.namespace.name", Value::Str(ns.clone())));
    }
    if let Some(pod) = &resource.pod {
        attributes.push(kv("k8s.pod.name", Value::Str(pod.clone())));
    }
    OtlpResource {
        attributes,
        ..Default::default()
    }
}

fn to_otlp(span: SpanRecord) -> Span {
    let nanos = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    };
    let status = match span.error {
        Some(message) => Status {
            message,
            code: status::StatusCode::Error as i32,
        },
        None => Status::default(),
    };
    let mut flags = u32::from(span.sampled);
    if span.parent.is_some() {
        flags |= FLAGS_HAS_IS_REMOTE | FLAGS_IS_REMOTE;
    }
    Span {
        trace_id: span.trace_id.to_vec(),
        span_id: span.span_id.to_vec(),
        trace_state: span.trace_state,
        parent_span_id: span.parent.map(|p| p.to_vec()).unwrap_or_default(),
        flags,
        name: span.name,
        kind: match span.kind {
            SpanKind::Server => span::SpanKind::Server,
            SpanKind::Client => span::SpanKind::Client,
        } as i32,
        start_time_unix_nano: nanos(span.start),
        end_time_unix_nano: nanos(span.end),
        attributes: span.attributes.into_iter().map(|(k, v)| kv(k, v)).collect(),
        status: Some(status),
        ..Default::default()
    }
}

fn kv(key: &str, value: Value) -> KeyValue {
    let value = match value {
        Value::Str(s) => any_value::Value::StringValue(s),
        Value::Int(i) => any_value::Value::IntValue(i),
    };
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}
