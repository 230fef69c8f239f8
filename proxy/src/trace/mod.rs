//! Distributed tracing: a span per proxied request on each side — `CLIENT` outbound, `SERVER`
//! inbound — in the trace the request came with ([`context`]), exported with OTLP/gRPC to a
//! collector ([`export`]). [`request`] follows one request for both tracing and the access
//! log ([`crate::access_log`]).
//!
//! Off unless `--trace-collector` is set, and then free: no context is read or written and
//! nothing is allocated per request.
//!
//! Sampling is parent-based: a request whose caller decided (W3C `sampled` flag, B3
//! `sampled`/debug) keeps the decision, sampled or not, so the mesh never breaks up a trace an
//! application or an ingress chose to record. Only a trace the proxy starts itself is sampled
//! by ratio, `--trace-sampling`, 1% by default, as Istio's sidecars do: every pod of the mesh
//! runs a proxy and every hop adds two spans, so tracing all new traces would make the
//! collector's load grow with the mesh's total request rate; at 1% a service taking 1000
//! requests a second starts 10 traces a second, enough to see every hot path, and an app
//! that wants more sets the flag itself. The ratio decision is a function of the trace id
//! (OpenTelemetry's `TraceIdRatioBased`), so proxies that see the same undecided trace agree.
//! Unsampled requests still carry a context downstream (with the flag off), so the next
//! hops follow the decision instead of sampling the same trace anew.

pub mod context;
mod export;
pub mod request;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::{ArgAction, Args};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot};

pub use request::{ConnObserver, Exchange, Observer};

use context::{SpanId, TraceId};
use export::Msg;

/// Share of new traces sampled when the flag is not given (see the module docs).
pub const DEFAULT_SAMPLING: f64 = 0.01;
/// Spans waiting for export; beyond this they are dropped and counted (OpenTelemetry's
/// default `maxQueueSize`).
pub const QUEUE_SIZE: usize = 2048;
/// Spans per export request (OpenTelemetry's default `maxExportBatchSize`).
pub const BATCH_SIZE: usize = 512;

/// The tracing flags.
#[derive(Debug, Clone, Args, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceArgs {
    /// OpenTelemetry collector to export spans to with OTLP/gRPC (`http://host:4317`).
    /// Tracing is off without it.
    #[arg(long, env = "WEFT_TRACE_COLLECTOR")]
    pub trace_collector: Option<String>,

    /// Share of the traces this proxy starts that are sampled, 0 to 1. A caller's decision
    /// always wins.
    #[arg(long, env = "WEFT_TRACE_SAMPLING", default_value_t = DEFAULT_SAMPLING, value_parser = parse_ratio)]
    pub trace_sampling: f64,

    /// `service.name` of the proxy's spans [default: <service-account>.<namespace>, else
    /// weft-proxy].
    #[arg(long, env = "WEFT_TRACE_SERVICE_NAME")]
    pub trace_service_name: Option<String>,

    /// Record the request path (`url.path`, never the query string) on spans.
    #[arg(long, env = "WEFT_TRACE_PATH", default_value_t = true, action = ArgAction::Set)]
    pub trace_path: bool,

    /// How long a span may wait for a batch to fill before it is exported.
    #[arg(long, env = "WEFT_TRACE_FLUSH_INTERVAL", value_parser = crate::duration::parse_duration, default_value = "5s")]
    #[serde(with = "crate::duration::serde_secs")]
    pub trace_flush_interval: Duration,
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    let ratio: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if (0.0..=1.0).contains(&ratio) {
        Ok(ratio)
    } else {
        Err(format!("{ratio} is not between 0 and 1"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("--trace-collector {0:?}: {1}")]
    Collector(String, String),
}

/// Who the spans are from (the OTLP resource).
#[derive(Debug, Clone, Default)]
pub struct Resource {
    pub service_name: String,
    pub namespace: Option<String>,
    pub pod: Option<String>,
}

/// The process's tracer: the sampler, the span queue and its counters.
pub struct Tracer {
    /// OpenTelemetry's `TraceIdRatioBased` bound: sampled when the trace id's low 63 bits
    /// are below it.
    threshold: u64,
    pub(crate) record_path: bool,
    queue: mpsc::Sender<Msg>,
    dropped_full: Counter,
}

#[derive(Clone)]
struct TraceMetrics {
    exported: Counter,
    dropped: Family<DropLabels, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
}

impl Tracer {
    /// Starts the exporter when a collector is configured; `None` (tracing off) otherwise.
    pub fn start(
        args: &TraceArgs,
        resource: Resource,
        registry: &mut Registry,
    ) -> Result<Option<Arc<Tracer>>, TraceError> {
        // An empty value (an unset variable in a manifest) is no collector.
        let Some(collector) = args
            .trace_collector
            .as_ref()
            .filter(|c| !c.trim().is_empty())
        else {
            return Ok(None);
        };
        let channel = export::channel(collector)
            .map_err(|reason| TraceError::Collector(collector.clone(), reason))?;
        let metrics = TraceMetrics {
            exported: Counter::default(),
            dropped: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("weft_trace");
        r.register(
            "spans_exported",
            "Spans the collector accepted",
            metrics.exported.clone(),
        );
        r.register(
            "spans_dropped",
            "Spans not exported, by reason (queue_full: the export queue was full; export_failed: the collector refused or was unreachable)",
            metrics.dropped.clone(),
        );
        let (queue, rx) = mpsc::channel(QUEUE_SIZE);
        // Both series from the start, so a rate() over them has a baseline.
        drop(metrics.dropped.get_or_create(&DropLabels {
            reason: "export_failed",
        }));
        let dropped_full = metrics
            .dropped
            .get_or_create(&DropLabels {
                reason: "queue_full",
            })
            .clone();
        tokio::spawn(export::run(
            channel,
            resource,
            rx,
            args.trace_flush_interval,
            metrics,
        ));
        tracing::info!(%collector, sampling = args.trace_sampling, "tracing on");
        Ok(Some(Arc::new(Tracer {
            threshold: ratio_threshold(args.trace_sampling),
            record_path: args.trace_path,
            queue,
            dropped_full,
        })))
    }

    /// The ratio decision for a trace this proxy starts (or whose caller deferred).
    pub fn sample(&self, trace_id: &TraceId) -> bool {
        let mut low = [0u8; 8];
        low.copy_from_slice(&trace_id[8..]);
        (u64::from_be_bytes(low) >> 1) < self.threshold
    }

    /// Queues a finished span; never waits. A full queue drops it and counts the drop.
    pub(crate) fn submit(&self, span: SpanRecord) {
        if self.queue.try_send(Msg::Span(Box::new(span))).is_err() {
            self.dropped_full.inc();
        }
    }

    /// Exports what is queued, waiting at most `limit` (at shutdown).
    pub async fn flush(&self, limit: Duration) {
        let (done, wait) = oneshot::channel();
        let flushed = async {
            if self.queue.send(Msg::Flush(done)).await.is_ok() {
                let _ = wait.await;
            }
        };
        if tokio::time::timeout(limit, flushed).await.is_err() {
            tracing::info!(?limit, "spans not flushed in time");
        }
    }
}

fn ratio_threshold(ratio: f64) -> u64 {
    // ratio 1 gives 2^63, above every 63-bit value: always sampled.
    (ratio.clamp(0.0, 1.0) * (1u64 << 63) as f64) as u64
}

/// A new, random, non-zero trace id.
pub fn new_trace_id() -> TraceId {
    let high = fastrand::u64(..);
    let low = fastrand::u64(1..);
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&high.to_be_bytes());
    id[8..].copy_from_slice(&low.to_be_bytes());
    id
}

/// A new, random, non-zero span id.
pub fn new_span_id() -> SpanId {
    fastrand::u64(1..).to_be_bytes()
}

/// Which side of the proxy a span is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// Inbound: the proxy serves a caller on behalf of its app.
    Server,
    /// Outbound: the proxy calls a service on behalf of its app.
    Client,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
}

/// A finished span, as queued for export.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    pub trace_state: String,
    pub sampled: bool,
    pub kind: SpanKind,
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Value)>,
    /// `Some` marks the span failed, with this message.
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracer(ratio: f64) -> (Tracer, mpsc::Receiver<Msg>) {
        let (queue, rx) = mpsc::channel(1);
        let tracer = Tracer {
            threshold: ratio_threshold(ratio),
            record_path: true,
            queue,
            dropped_full: Counter::default(),
        };
        (tracer, rx)
    }

    #[test]
    fn ratio_sampling_follows_the_trace_id() {
        let (all, _) = tracer(1.0);
        let (none, _) = tracer(0.0);
        let (tenth, _) = tracer(0.1);
        let mut sampled = 0;
        for _ in 0..10_000 {
            let id = new_trace_id();
            assert!(all.sample(&id));
            assert!(!none.sample(&id));
            assert_eq!(tenth.sample(&id), tenth.sample(&id), "deterministic");
            sampled += usize::from(tenth.sample(&id));
        }
        assert!((800..1200).contains(&sampled), "{sampled} of 10000 at 10%");
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (t, _queue) = tracer(1.0);
        let span = SpanRecord {
            trace_id: new_trace_id(),
            span_id: new_span_id(),
            parent: None,
            trace_state: String::new(),
            sampled: true,
            kind: SpanKind::Client,
            name: "GET".into(),
            start: SystemTime::now(),
            end: SystemTime::now(),
            attributes: Vec::new(),
            error: None,
        };
        t.submit(span.clone());
        t.submit(span);
        assert_eq!(t.dropped_full.get(), 1, "the second did not fit");
    }

    #[test]
    fn sampling_ratio_is_checked() {
        assert_eq!(parse_ratio("0.25"), Ok(0.25));
        assert!(parse_ratio("1.5").is_err());
        assert!(parse_ratio("-0.1").is_err());
        assert!(parse_ratio("lots").is_err());
    }
}
