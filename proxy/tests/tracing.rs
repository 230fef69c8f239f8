//! Tracing end to end: two proxies in a chain export their spans with OTLP/gRPC to a test
//! collector (a tonic `TraceService` from the opentelemetry-proto generated types, so the
//! spans are decoded from the real protobuf), and the context reaches the app.
//!
//! ```text
//! client ─> proxy A (web, outbound) ──mTLS──> proxy B (orders, inbound) ─> app
//!              └────────── OTLP/gRPC ──────────────┴──> test collector
//! ```
//!
//! Every wait is bounded; spans are batched for 50 ms.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as OtlpStatus;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::net::TcpListener;

use support::pki::{spiffe, IdentityFiles, TestCa};
use support::*;

// ---------------------------------------------------------------------------------------------
// The collector
// ---------------------------------------------------------------------------------------------

/// A span as exported, with the `service.name` of the resource it came with.
#[derive(Clone, Debug)]
struct Exported {
    service: String,
    span: Span,
}

impl Exported {
    fn attr(&self, key: &str) -> Option<String> {
        let kv = self.span.attributes.iter().find(|kv| kv.key == key)?;
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            Value::IntValue(i) => Some(i.to_string()),
            other => Some(format!("{other:?}")),
        }
    }

    fn kind(&self) -> SpanKind {
        SpanKind::try_from(self.span.kind).unwrap_or(SpanKind::Unspecified)
    }
}

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Exported>>>);

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                assert_eq!(scope.scope.map(|s| s.name).as_deref(), Some("weft-proxy"));
                for span in scope.spans {
                    received.push(Exported {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC collector on 127.0.0.1 (HTTP/2 prior knowledge, as tonic clients speak).
struct Collector {
    addr: SocketAddr,
    received: Received,
}

impl Collector {
    async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Received::default();
        let service = TraceServiceServer::new(received.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let service = service.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let mut service = service.clone();
                            async move { tower::Service::call(&mut service, req).await }
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Collector { addr, received }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<Exported> {
        self.received.0.lock().unwrap().clone()
    }

    /// Waits for `n` spans of this trace (hex id as the proxies write it, padded to 128 bits).
    async fn trace(&self, trace_id: &str, n: usize) -> Vec<Exported> {
        let mut found = Vec::new();
        eventually(WAIT, &format!("{n} spans of trace {trace_id}"), || {
            found = self
                .spans()
                .into_iter()
                .filter(|e| hex(&e.span.trace_id) == trace_id)
                .collect();
            std::future::ready(found.len() >= n)
        })
        .await;
        assert_eq!(found.len(), n, "exactly {n} spans: {found:#?}");
        found
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// The chain
// ---------------------------------------------------------------------------------------------

fn web() -> String {
    spiffe("shop", "web")
}

fn orders() -> String {
    spiffe("shop", "orders")
}

struct Chain {
    app: Upstream,
    a: TestProxy,
    b: TestProxy,
    /// A's static listener for `orders`: where the client sends.
    listener: SocketAddr,
    _files: Vec<IdentityFiles>,
}

/// `client -> A -> mTLS -> B -> app`, both proxies with these extra flags (plus their service
/// names, `web` and `orders`, when tracing is on).
async fn chain(flags: &[String]) -> Chain {
    let ca = TestCa::new("mesh root");
    let a_files = IdentityFiles::new(&ca.issue(&web()), &[&ca]);
    let b_files = IdentityFiles::new(&ca.issue(&orders()), &[&ca]);
    let named = |name: &str| {
        let mut args = flags.to_vec();
        if !flags.is_empty() {
            args.extend(["--trace-service-name".to_owned(), name.to_owned()]);
        }
        args
    };
    let app = Upstream::start("app").await;
    let b = proxy()
        .inbound_app(app.addr)
        .config("inboundMtls: {default: strict}")
        .args(b_files.args())
        .args(named("orders"))
        .start()
        .await;
    let listener = free_addr();
    let a = proxy()
        .config(format!(
            "listeners:\n  - name: orders\n    bind: \"{listener}\"\n    target: \"{}\"\n    identity: \"{}\"\n",
            b.inbound,
            orders()
        ))
        .args(a_files.args())
        .args(named("web"))
        .start()
        .await;
    Chain {
        app,
        a,
        b,
        listener,
        _files: vec![a_files, b_files],
    }
}

/// Tracing on, exporting to `collector` every 50 ms, new traces sampled at `ratio`.
fn tracing_to(collector: &Collector, ratio: &str) -> Vec<String> {
    [
        "--trace-collector",
        &collector.url(),
        "--trace-sampling",
        ratio,
        "--trace-flush-interval",
        "50ms",
    ]
    .map(String::from)
    .into()
}

/// GET `path` through A's listener with these headers.
async fn get_with(c: &Chain, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header("host", "orders.shop:8080");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let reply = call(c.listener, req.body(empty()).unwrap()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply
}

/// The app's copy of the request for `path`.
async fn app_saw(c: &Chain, path: &str) -> HeaderMap {
    c.app.wait_for_path(path).await.headers
}

/// A's client span and B's server span, told apart by kind.
fn split(spans: Vec<Exported>) -> (Exported, Exported) {
    let client = spans.iter().find(|s| s.kind() == SpanKind::Client);
    let server = spans.iter().find(|s| s.kind() == SpanKind::Server);
    (
        client.expect("A's CLIENT span").clone(),
        server.expect("B's SERVER span").clone(),
    )
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn w3c_context_links_the_client_both_proxies_and_the_app() {
    let collector = Collector::start().await;
    // Ratio 0: only the caller's decision can sample this trace.
    let c = chain(&tracing_to(&collector, "0")).await;
    let traceparent = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    get_with(
        &c,
        "/items/42?token=secret",
        &[("traceparent", &traceparent), ("tracestate", "vendor=x")],
    )
    .await;

    let (a, b) = split(collector.trace(TRACE, 2).await);
    let a_span = hex(&a.span.span_id);
    let b_span = hex(&b.span.span_id);
    assert_eq!(
        hex(&a.span.parent_span_id),
        CLIENT_SPAN,
        "A's parent is the client's span"
    );
    assert_eq!(
        hex(&b.span.parent_span_id),
        a_span,
        "B's parent is A's span"
    );
    assert_ne!(a_span, b_span);
    let app = app_saw(&c, "/items/42").await;
    assert_eq!(
        app["traceparent"],
        format!("00-{TRACE}-{b_span}-01"),
        "the app's parent is B's span"
    );
    assert_eq!(app["tracestate"], "vendor=x", "tracestate passes unchanged");
    assert_eq!(a.span.trace_state, "vendor=x");

    // Who and what.
    assert_eq!((a.service.as_str(), b.service.as_str()), ("web", "orders"));
    assert_eq!(a.attr("weft.direction").as_deref(), Some("outbound"));
    assert_eq!(b.attr("weft.direction").as_deref(), Some("inbound"));
    for s in [&a, &b] {
        assert_eq!(s.attr("http.request.method").as_deref(), Some("GET"));
        assert_eq!(s.attr("http.response.status_code").as_deref(), Some("200"));
        assert_eq!(s.attr("url.path").as_deref(), Some("/items/42"));
        assert_eq!(
            s.attr("server.address").as_deref(),
            Some("orders.shop:8080")
        );
        assert!(s.span.name.starts_with("GET "), "{}", s.span.name);
        assert!(
            s.span.end_time_unix_nano >= s.span.start_time_unix_nano,
            "{s:?}"
        );
        assert_eq!(s.span.flags & 0x301, 0x301, "sampled, with a remote parent");
        assert_ne!(
            s.span.status.as_ref().map(|st| st.code),
            Some(OtlpStatus::Error as i32)
        );
        let everything = format!("{:?}", s.span);
        assert!(
            !everything.contains("secret"),
            "no query string anywhere: {everything}"
        );
    }
    let (web_id, orders_id) = (web(), orders());
    assert_eq!(
        a.attr("weft.server.identity").as_deref(),
        Some(orders_id.as_str())
    );
    assert_eq!(
        a.attr("weft.upstream.address"),
        Some(c.b.inbound.to_string())
    );
    assert_eq!(
        b.attr("weft.client.identity").as_deref(),
        Some(web_id.as_str())
    );
    assert_eq!(
        b.attr("weft.upstream.address"),
        Some(c.app.addr.to_string())
    );
    assert_eq!(a.attr("network.protocol.version").as_deref(), Some("1.1"));
    assert_eq!(
        b.attr("network.protocol.version").as_deref(),
        Some("2"),
        "the mesh hop is HTTP/2"
    );
    // B's span lies within A's (1 ms of slack for the two clocks' reading).
    let slack = 1_000_000;
    assert!(b.span.start_time_unix_nano + slack >= a.span.start_time_unix_nano);
    assert!(b.span.end_time_unix_nano <= a.span.end_time_unix_nano + slack);

    let metrics = c.a.metrics().await;
    assert!(metrics.value("weft_trace_spans_exported_total", &[]) >= 1.0);
}

#[tokio::test]
async fn b3_multi_headers_come_back_as_b3_with_64_bit_ids_kept() {
    let collector = Collector::start().await;
    let c = chain(&tracing_to(&collector, "0")).await;
    let short = &TRACE[16..];
    get_with(
        &c,
        "/b3-multi",
        &[
            ("x-b3-traceid", short),
            ("x-b3-spanid", CLIENT_SPAN),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    let padded = format!("{}{short}", "0".repeat(16));
    let (a, b) = split(collector.trace(&padded, 2).await);
    assert_eq!(hex(&a.span.parent_span_id), CLIENT_SPAN);
    assert_eq!(hex(&b.span.parent_span_id), hex(&a.span.span_id));
    let app = app_saw(&c, "/b3-multi").await;
    assert_eq!(app["x-b3-traceid"], short, "still 64-bit");
    assert_eq!(app["x-b3-spanid"], hex(&b.span.span_id).as_str());
    assert_eq!(app["x-b3-parentspanid"], hex(&a.span.span_id).as_str());
    assert_eq!(app["x-b3-sampled"], "1");
    assert!(
        !app.contains_key("traceparent"),
        "the format the client used, not W3C"
    );
}

#[tokio::test]
async fn b3_single_header_comes_back_as_b3() {
    let collector = Collector::start().await;
    let c = chain(&tracing_to(&collector, "0")).await;
    get_with(&c, "/b3", &[("b3", &format!("{TRACE}-{CLIENT_SPAN}-1"))]).await;
    let (a, b) = split(collector.trace(TRACE, 2).await);
    assert_eq!(hex(&a.span.parent_span_id), CLIENT_SPAN);
    assert_eq!(hex(&b.span.parent_span_id), hex(&a.span.span_id));
    let app = app_saw(&c, "/b3").await;
    assert_eq!(
        app["b3"],
        format!("{TRACE}-{}-1", hex(&b.span.span_id)).as_str()
    );
    assert!(!app.contains_key("traceparent"));
}

/// Also: `--trace-path false` keeps paths out of spans.
#[tokio::test]
async fn a_request_without_context_starts_a_w3c_trace_at_the_first_proxy() {
    let collector = Collector::start().await;
    let mut flags = tracing_to(&collector, "1");
    flags.extend(["--trace-path".to_owned(), "false".to_owned()]);
    let c = chain(&flags).await;
    get_with(&c, "/new", &[]).await;
    let app = app_saw(&c, "/new").await;
    let traceparent = app["traceparent"].to_str().unwrap().to_owned();
    let trace = &traceparent[3..35];
    let (a, b) = split(collector.trace(trace, 2).await);
    assert!(a.span.parent_span_id.is_empty(), "A's span is the root");
    assert_eq!(a.span.flags & 0x100, 0, "a root has no remote parent");
    assert_eq!(hex(&b.span.parent_span_id), hex(&a.span.span_id));
    assert_eq!(a.attr("url.path"), None, "--trace-path false leaves it out");
    assert_eq!(b.attr("url.path"), None);
    assert_eq!(
        traceparent,
        format!("00-{trace}-{}-01", hex(&b.span.span_id))
    );
}

#[tokio::test]
async fn an_unsampled_caller_is_followed_and_nothing_is_exported() {
    let collector = Collector::start().await;
    // Ratio 1: the proxies would sample anything they decide themselves.
    let c = chain(&tracing_to(&collector, "1")).await;
    get_with(
        &c,
        "/unsampled",
        &[("traceparent", &format!("00-{TRACE}-{CLIENT_SPAN}-00"))],
    )
    .await;
    get_with(&c, "/deny", &[("b3", "0")]).await;
    let app = app_saw(&c, "/unsampled").await;
    let traceparent = app["traceparent"].to_str().unwrap();
    assert!(
        traceparent.starts_with(&format!("00-{TRACE}-")) && traceparent.ends_with("-00"),
        "same trace, still unsampled: {traceparent}"
    );
    assert!(
        !traceparent.contains(CLIENT_SPAN),
        "the proxies' spans still take their place in the chain: {traceparent}"
    );
    let b3 = app_saw(&c, "/deny").await["b3"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(b3.ends_with("-0"), "{b3}");
    // A sampled request afterwards is exported, so the earlier ones had their chance.
    get_with(
        &c,
        "/sampled",
        &[(
            "traceparent",
            &format!("00-{}-{CLIENT_SPAN}-01", "a".repeat(32)),
        )],
    )
    .await;
    collector.trace(&"a".repeat(32), 2).await;
    assert_eq!(collector.spans().len(), 2, "{:#?}", collector.spans());
}

#[tokio::test]
async fn with_tracing_off_nothing_is_exported_and_headers_pass_untouched() {
    let collector = Collector::start().await;
    let c = chain(&[]).await;
    let sent = [
        ("traceparent", format!("00-{TRACE}-{CLIENT_SPAN}-01")),
        ("tracestate", "vendor=x".to_owned()),
        ("b3", format!("{TRACE}-{CLIENT_SPAN}-1")),
        ("x-b3-traceid", TRACE.to_owned()),
        ("x-b3-spanid", CLIENT_SPAN.to_owned()),
    ];
    let headers: Vec<(&str, &str)> = sent.iter().map(|(n, v)| (*n, v.as_str())).collect();
    get_with(&c, "/off", &headers).await;
    get_with(&c, "/off-bare", &[]).await;
    let app = app_saw(&c, "/off").await;
    for (name, value) in &sent {
        assert_eq!(app[*name], value.as_str(), "{name} untouched");
    }
    let bare = app_saw(&c, "/off-bare").await;
    assert!(!bare.contains_key("traceparent"), "no context invented");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(collector.spans().is_empty());
    let metrics = c.a.metrics().await;
    assert_eq!(metrics.get("weft_trace_spans_exported_total", &[]), None);
}

#[tokio::test]
async fn an_unreachable_collector_costs_dropped_spans_not_requests() {
    let nowhere = free_addr();
    let args: Vec<String> = [
        "--trace-collector",
        &format!("http://{nowhere}"),
        "--trace-sampling",
        "1",
        "--trace-flush-interval",
        "50ms",
    ]
    .map(String::from)
    .into();
    let c = chain(&args).await;
    for i in 0..3 {
        get_with(&c, &format!("/lost/{i}"), &[]).await;
    }
    for proxy in [&c.a, &c.b] {
        eventually(WAIT, "the failed exports to be counted", || async {
            let metrics = proxy.metrics().await;
            metrics.value(
                "weft_trace_spans_dropped_total",
                &[("reason", "export_failed")],
            ) >= 3.0
        })
        .await;
    }
}
