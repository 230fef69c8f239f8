//! The proxy's Prometheus metrics. Traffic families are labelled by `direction` and `target`
//! (a meshed Service port `namespace/name:port`, else the destination `ip:port`, or a static
//! listener's name) and the mesh identities — never by anything a client controls per
//! request, such as a path, so cardinality stays bounded by what the pod talks to. Every
//! family, its labels and their bounds: docs/metrics.md.
//!
//! Hot paths don't look families up per request: a target's [`TargetMetrics`] (ready handles,
//! each an `Arc` around atomics) is resolved once per process and then shared, and a
//! connection with a fixed target keeps it.
//!
//! gRPC responses are counted by their final `grpc-status` ([`grpc`]); the traffic
//! management state (breakers, ejections, budgets) is read at scrape time
//! ([`crate::traffic::metrics`]).

pub mod grpc;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use weft_api::SpiffeId;

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub direction: Direction,
    pub target: String,
    /// `true` when the connection is mesh mTLS.
    pub tls: &'static str,
    /// Inbound: the caller's SPIFFE ID. Empty otherwise.
    pub client_id: String,
    /// Outbound: the SPIFFE ID the upstream had to present. Empty otherwise.
    pub server_id: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseLabels {
    status_class: &'static str,
    // The derive can only flatten the last field.
    #[prometheus(flatten)]
    target: TargetLabels,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: ErrorKind,
    #[prometheus(flatten)]
    target: TargetLabels,
}

/// What went wrong, as a bounded label.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    HeaderTooLarge,
    HeaderTimeout,
    IdleTimeout,
    ConnectRefused,
    ConnectTimeout,
    ConnectError,
    UpstreamError,
    NoDestination,
    Io,
    TlsHandshake,
    PlaintextRefused,
    /// An inbound connection arrived before the first view from the control plane and none
    /// came in time: without its policies the proxy cannot tell whom to let in.
    NoPolicy,
    /// Routes are attached to the Service and none matched (404).
    NoRoute,
    /// The Service has no ready endpoint, or a route's backend is unknown.
    NoEndpoint,
    /// A circuit-breaker limit refused the request (503).
    Overflow,
    /// The request or backend-request timeout fired (504).
    Timeout,
}

impl ErrorKind {
    /// How many kinds there are ([`TargetMetrics`] keeps a slot for each): `Timeout` is the
    /// last one.
    const COUNT: usize = ErrorKind::Timeout as usize + 1;

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::HeaderTooLarge => "header_too_large",
            ErrorKind::HeaderTimeout => "header_timeout",
            ErrorKind::IdleTimeout => "idle_timeout",
            ErrorKind::ConnectRefused => "connect_refused",
            ErrorKind::ConnectTimeout => "connect_timeout",
            ErrorKind::ConnectError => "connect_error",
            ErrorKind::UpstreamError => "upstream_error",
            ErrorKind::NoDestination => "no_destination",
            ErrorKind::Io => "io_error",
            ErrorKind::TlsHandshake => "tls_handshake",
            ErrorKind::PlaintextRefused => "plaintext_refused",
            ErrorKind::NoPolicy => "no_policy",
            ErrorKind::NoRoute => "no_route",
            ErrorKind::NoEndpoint => "no_endpoint",
            ErrorKind::Overflow => "overflow",
            ErrorKind::Timeout => "timeout",
        }
    }
}

impl EncodeLabelValue for ErrorKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

/// Latency buckets from 0.5 ms to ~8 s: a mesh hop is sub-millisecond, a slow backend seconds.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0005, 2.0, 15)
}

#[derive(Clone)]
pub struct Metrics {
    requests: Family<TargetLabels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    latency: Family<TargetLabels, Histogram, fn() -> Histogram>,
    tcp_opened: Family<TargetLabels, Counter>,
    tcp_closed: Family<TargetLabels, Counter>,
    tcp_open: Family<TargetLabels, Gauge>,
    tcp_read_bytes: Family<TargetLabels, Counter>,
    tcp_write_bytes: Family<TargetLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    config_reloads: Family<ReloadLabels, Counter>,
    retries: Family<RetryLabels, Counter>,
    budget_exhausted: Family<ServiceLabel, Counter>,
    grpc_responses: Family<grpc::GrpcLabels, Counter>,
    overflows: Family<OverflowLabels, Counter>,
    routes: Family<RouteLabels, Counter>,
    info: Family<InfoLabels, Gauge>,
    /// [`Metrics::for_target`]'s handles by target label (then direction and peer), made once:
    /// a call to a meshed Service or a forward-proxy request resolves them per request, and
    /// building the label set and looking it up in seven families each time was most of the
    /// metrics' cost. Bounded like the families themselves, whose series are never removed.
    targets: Arc<RwLock<HashMap<String, Vec<TargetMetrics>>>>,
    /// [`Metrics::route_request`]'s counters by target label, then route and backend, made
    /// once for the same reason (it is counted on every routed request). Bounded like the
    /// family.
    route_counters: Arc<RwLock<HashMap<String, Vec<RouteCounter>>>>,
}

/// One `weft_route_requests_total` series of a target.
struct RouteCounter {
    route_namespace: String,
    route_name: String,
    backend: String,
    counter: Counter,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    /// `namespace/name:port` of the backend Service.
    target: String,
    /// The retry condition that matched (`connect-failure`, `status`, ...).
    condition: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    target: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OverflowLabels {
    /// `namespace/name:port` of the Service called.
    target: String,
    /// The breaker limit that refused: `requests`, `pending`, `connections`.
    limit: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    /// `namespace/name:port` of the Service called.
    target: String,
    /// `namespace/name` of the HTTPRoute whose rule matched.
    route: String,
    /// `namespace/name:port` of the backend the rule's weights picked.
    backend: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    version: &'static str,
    /// The pod's namespace and name, as the proxy was told (empty when it wasn't). Not
    /// `namespace`/`pod`: Prometheus's Kubernetes discovery sets those as target labels.
    workload_namespace: String,
    workload_pod: String,
}

impl Metrics {
    /// Creates the families and registers them under `weft_`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics {
            requests: Family::default(),
            responses: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            tcp_open: Family::default(),
            tcp_read_bytes: Family::default(),
            tcp_write_bytes: Family::default(),
            errors: Family::default(),
            config_reloads: Family::default(),
            retries: Family::default(),
            budget_exhausted: Family::default(),
            grpc_responses: Family::default(),
            overflows: Family::default(),
            routes: Family::default(),
            info: Family::default(),
            targets: Arc::default(),
            route_counters: Arc::default(),
        };
        let r = registry.sub_registry_with_prefix("weft");
        r.register("requests", "HTTP requests received", m.requests.clone());
        r.register(
            "responses",
            "HTTP responses sent, by status class",
            m.responses.clone(),
        );
        r.register(
            "response_latency_seconds",
            "Time from receiving a request's headers to receiving the response's headers",
            m.latency.clone(),
        );
        r.register(
            "tcp_connections_opened",
            "Connections accepted",
            m.tcp_opened.clone(),
        );
        r.register(
            "tcp_connections_closed",
            "Connections closed",
            m.tcp_closed.clone(),
        );
        r.register(
            "tcp_connections_open",
            "Connections open now",
            m.tcp_open.clone(),
        );
        r.register(
            "tcp_read_bytes",
            "Bytes read from the accepted peer",
            m.tcp_read_bytes.clone(),
        );
        r.register(
            "tcp_write_bytes",
            "Bytes written to the accepted peer",
            m.tcp_write_bytes.clone(),
        );
        r.register("errors", "Failures, by kind", m.errors.clone());
        r.register(
            "config_reloads",
            "Config file reloads, by result",
            m.config_reloads.clone(),
        );
        r.register(
            "retries",
            "Requests sent again to a Service, by the condition that allowed it",
            m.retries.clone(),
        );
        r.register(
            "retry_budget_exhausted",
            "Retries a Service's retry budget refused (the failure went back to the caller)",
            m.budget_exhausted.clone(),
        );
        r.register(
            "grpc_responses",
            "gRPC responses (HTTP 2xx, content-type application/grpc), by final grpc-status (empty: the stream ended without one)",
            m.grpc_responses.clone(),
        );
        r.register(
            "circuit_breaker_overflows",
            "Requests a Service's circuit breaker refused at once (503), by the limit that refused",
            m.overflows.clone(),
        );
        r.register(
            "route_requests",
            "Requests an HTTPRoute rule matched, by the backend its weights picked",
            m.routes.clone(),
        );
        r.register(
            "proxy_info",
            "The proxy's version and the pod it serves (always 1)",
            m.info.clone(),
        );
        m
    }

    /// Sets `weft_proxy_info`: which build this is and, when known, for which pod.
    pub fn proxy_info(&self, namespace: Option<&str>, pod: Option<&str>) {
        self.info.clear();
        self.info
            .get_or_create(&InfoLabels {
                version: env!("CARGO_PKG_VERSION"),
                workload_namespace: namespace.unwrap_or_default().to_owned(),
                workload_pod: pod.unwrap_or_default().to_owned(),
            })
            .set(1);
    }

    /// A Service's circuit breaker refused a request.
    pub fn breaker_overflow(&self, target: &str, limit: &'static str) {
        self.overflows
            .get_or_create(&OverflowLabels {
                target: target.to_owned(),
                limit,
            })
            .inc();
    }

    /// A rule of the route `route_namespace/route_name` matched a request for `target` and
    /// sent it to `backend`.
    pub fn route_request(
        &self,
        target: &str,
        (route_namespace, route_name): (&str, &str),
        backend: &str,
    ) {
        let same = |known: &&RouteCounter| {
            known.route_name == route_name
                && known.route_namespace == route_namespace
                && known.backend == backend
        };
        let counters = self
            .route_counters
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = counters.get(target).and_then(|all| all.iter().find(same)) {
            known.counter.inc();
            return;
        }
        drop(counters);
        let mut counters = self
            .route_counters
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let all = counters.entry(target.to_owned()).or_default();
        // Another thread may have made it between the two locks.
        if let Some(known) = all.iter().find(same) {
            known.counter.inc();
            return;
        }
        let counter = self
            .routes
            .get_or_create(&RouteLabels {
                target: target.to_owned(),
                route: format!("{route_namespace}/{route_name}"),
                backend: backend.to_owned(),
            })
            .clone();
        counter.inc();
        all.push(RouteCounter {
            route_namespace: route_namespace.to_owned(),
            route_name: route_name.to_owned(),
            backend: backend.to_owned(),
            counter,
        });
    }

    pub fn retry(&self, target: &str, condition: &'static str) {
        self.retries
            .get_or_create(&RetryLabels {
                target: target.to_owned(),
                condition,
            })
            .inc();
    }

    pub fn retry_budget_exhausted(&self, target: &str) {
        self.budget_exhausted
            .get_or_create(&ServiceLabel {
                target: target.to_owned(),
            })
            .inc();
    }

    /// Handles for one target. `peer` is the mesh identity on the other end (the caller
    /// inbound, the upstream outbound) when the connection is mTLS. Made on the first call
    /// for a (direction, target, peer), shared afterwards.
    pub fn for_target(
        &self,
        direction: Direction,
        target: &str,
        peer: Option<&SpiffeId>,
    ) -> TargetMetrics {
        let peer = peer.map_or("", SpiffeId::as_str);
        let same = |known: &&TargetMetrics| known.is(direction, peer);
        let targets = self.targets.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = targets.get(target).and_then(|all| all.iter().find(same)) {
            return known.clone();
        }
        drop(targets);
        let mut targets = self.targets.write().unwrap_or_else(PoisonError::into_inner);
        let all = targets.entry(target.to_owned()).or_default();
        // Another thread may have made them between the two locks.
        if let Some(known) = all.iter().find(same) {
            return known.clone();
        }
        let made = self.make_target(direction, target, peer);
        all.push(made.clone());
        made
    }

    fn make_target(&self, direction: Direction, target: &str, peer: &str) -> TargetMetrics {
        let peer = peer.to_owned();
        let tls = if peer.is_empty() { "false" } else { "true" };
        let (client_id, server_id) = match direction {
            Direction::Inbound => (peer, String::new()),
            Direction::Outbound => (String::new(), peer),
        };
        let labels = TargetLabels {
            direction,
            target: target.to_owned(),
            tls,
            client_id,
            server_id,
        };
        TargetMetrics(Arc::new(TargetHandles {
            requests: self.requests.get_or_create(&labels).clone(),
            latency: self.latency.get_or_create(&labels).clone(),
            tcp_read_bytes: self.tcp_read_bytes.get_or_create(&labels).clone(),
            tcp_write_bytes: self.tcp_write_bytes.get_or_create(&labels).clone(),
            tcp_closed: self.tcp_closed.get_or_create(&labels).clone(),
            tcp_open: self.tcp_open.get_or_create(&labels).clone(),
            tcp_opened: self.tcp_opened.get_or_create(&labels).clone(),
            responses: Default::default(),
            errors: Default::default(),
            grpc: Arc::new(grpc::GrpcCounters::new(
                self.grpc_responses.clone(),
                labels.clone(),
            )),
            response_family: self.responses.clone(),
            error_family: self.errors.clone(),
            labels,
        }))
    }

    /// Counts a failure for a connection that never got as far as having target metrics
    /// (no destination, refused before serving), without creating its other series.
    pub fn connection_error(&self, direction: Direction, target: &str, kind: ErrorKind) {
        let labels = ErrorLabels {
            kind,
            target: TargetLabels {
                direction,
                target: target.to_owned(),
                tls: "false",
                client_id: String::new(),
                server_id: String::new(),
            },
        };
        self.errors.get_or_create(&labels).inc();
    }

    pub fn config_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.config_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
    }
}

/// Metric handles for one (direction, target), from [`Metrics::for_target`]. A clone is
/// another reference to the same handles.
#[derive(Clone)]
pub struct TargetMetrics(Arc<TargetHandles>);

struct TargetHandles {
    requests: Counter,
    latency: Histogram,
    tcp_read_bytes: Counter,
    tcp_write_bytes: Counter,
    tcp_opened: Counter,
    tcp_closed: Counter,
    tcp_open: Gauge,
    /// Response counters by status class, looked up on first use: a series exists only for
    /// the classes that occur, and later responses skip the label lookup.
    responses: [OnceLock<Counter>; 5],
    /// gRPC responses by status, counted when the status is known ([`grpc`]).
    grpc: Arc<grpc::GrpcCounters>,
    /// Error counters by kind, looked up on first use like `responses`.
    errors: [OnceLock<Counter>; ErrorKind::COUNT],
    /// The families of the series made on first use.
    response_family: Family<ResponseLabels, Counter>,
    error_family: Family<ErrorLabels, Counter>,
    labels: TargetLabels,
}

impl TargetMetrics {
    /// HTTP requests received for the target.
    pub fn requests(&self) -> &Counter {
        &self.0.requests
    }

    pub fn tcp_read_bytes(&self) -> &Counter {
        &self.0.tcp_read_bytes
    }

    pub fn tcp_write_bytes(&self) -> &Counter {
        &self.0.tcp_write_bytes
    }

    /// Whether these are the handles for `direction` and the mesh identity `peer` (empty
    /// without mTLS).
    fn is(&self, direction: Direction, peer: &str) -> bool {
        let labels = &self.0.labels;
        let labelled_peer = match direction {
            Direction::Inbound => &labels.client_id,
            Direction::Outbound => &labels.server_id,
        };
        labels.direction == direction && labelled_peer == peer
    }

    pub fn response(&self, status: http::StatusCode, latency: Duration) {
        let this = &*self.0;
        this.latency.observe(latency.as_secs_f64());
        grpc::responded(&this.grpc);
        const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        // StatusCode is always 100..=999; everything from 500 up counts as a server error.
        let class = (usize::from(status.as_u16() / 100)).clamp(1, 5) - 1;
        this.responses[class]
            .get_or_init(|| {
                let labels = ResponseLabels {
                    target: this.labels.clone(),
                    status_class: CLASSES[class],
                };
                this.response_family.get_or_create(&labels).clone()
            })
            .inc();
    }

    pub fn error(&self, kind: ErrorKind) {
        let this = &*self.0;
        this.errors[kind as usize]
            .get_or_init(|| {
                let labels = ErrorLabels {
                    target: this.labels.clone(),
                    kind,
                };
                this.error_family.get_or_create(&labels).clone()
            })
            .inc();
    }

    /// Counts a connection as open until the returned guard is dropped.
    pub fn connection_opened(&self) -> OpenConnection {
        let this = &*self.0;
        this.tcp_opened.inc();
        this.tcp_open.inc();
        OpenConnection {
            closed: this.tcp_closed.clone(),
            open: this.tcp_open.clone(),
        }
    }
}

pub struct OpenConnection {
    closed: Counter,
    open: Gauge,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.closed.inc();
        self.open.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn counts_requests_responses_and_connections_by_target() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let t = metrics.for_target(Direction::Outbound, "10.0.0.1:80", None);
        let conn = t.connection_opened();
        t.requests().inc();
        t.response(http::StatusCode::BAD_GATEWAY, Duration::from_millis(3));
        t.error(ErrorKind::ConnectRefused);
        drop(conn);
        let text = render(&registry);
        for line in [
            r#"weft_requests_total{direction="outbound",target="10.0.0.1:80",tls="false",client_id="",server_id=""} 1"#,
            r#"weft_responses_total{status_class="5xx",direction="outbound",target="10.0.0.1:80",tls="false",client_id="",server_id=""} 1"#,
            r#"weft_errors_total{kind="connect_refused",direction="outbound",target="10.0.0.1:80",tls="false",client_id="",server_id=""} 1"#,
            r#"weft_tcp_connections_opened_total{direction="outbound",target="10.0.0.1:80",tls="false",client_id="",server_id=""} 1"#,
            r#"weft_tcp_connections_closed_total{direction="outbound",target="10.0.0.1:80",tls="false",client_id="",server_id=""} 1"#,
            r#"weft_tcp_connections_open{direction="outbound",target="10.0.0.1:80",tls="false",client_id="",server_id=""} 0"#,
            r#"weft_response_latency_seconds_count{direction="outbound",target="10.0.0.1:80",tls="false",client_id="",server_id=""} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    /// Each kind's counter is looked up once per target, then counts on the same series.
    #[test]
    fn error_counters_are_made_once_per_kind() {
        use ErrorKind::*;
        let all = [
            BadRequest,
            HeaderTooLarge,
            HeaderTimeout,
            IdleTimeout,
            ConnectRefused,
            ConnectTimeout,
            ConnectError,
            UpstreamError,
            NoDestination,
            Io,
            TlsHandshake,
            PlaintextRefused,
            NoPolicy,
            NoRoute,
            NoEndpoint,
            Overflow,
            Timeout,
        ];
        for kind in all {
            // Exhaustive: a new kind does not compile here until it is in `all` too.
            match kind {
                BadRequest | HeaderTooLarge | HeaderTimeout | IdleTimeout | ConnectRefused
                | ConnectTimeout | ConnectError | UpstreamError | NoDestination | Io
                | TlsHandshake | PlaintextRefused | NoPolicy | NoRoute | NoEndpoint | Overflow
                | Timeout => assert!((kind as usize) < ErrorKind::COUNT, "{kind:?}"),
            }
        }
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let t = metrics.for_target(Direction::Outbound, "orders", None);
        for (i, kind) in all.iter().enumerate() {
            for _ in 0..=i {
                t.error(*kind);
            }
        }
        let made =
            t.0.errors
                .iter()
                .filter(|slot| slot.get().is_some())
                .count();
        assert_eq!(made, all.len());
        // A second handle to the target's metrics shares the cached counters.
        metrics
            .for_target(Direction::Outbound, "orders", None)
            .error(Timeout);
        let text = render(&registry);
        for (i, kind) in all.iter().enumerate() {
            let count = if *kind == Timeout { i + 2 } else { i + 1 };
            let line = format!(
                r#"weft_errors_total{{kind="{}",direction="outbound",target="orders",tls="false",client_id="",server_id=""}} {count}"#,
                kind.as_str()
            );
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
    }

    /// Route counters are made once per (target, route, backend) and count on their series.
    #[test]
    fn route_counters_are_made_once_per_target_route_and_backend() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        for _ in 0..3 {
            metrics.route_request("shop/orders:80", ("shop", "split"), "shop/orders-v2:80");
        }
        metrics.route_request("shop/orders:80", ("shop", "split"), "shop/orders-v1:80");
        metrics.route_request("shop/orders:80", ("shop", "other"), "shop/orders-v1:80");
        metrics.route_request("shop/cart:80", ("shop", "split"), "shop/orders-v1:80");
        let cached = metrics.route_counters.read().unwrap();
        assert_eq!(cached["shop/orders:80"].len(), 3);
        assert_eq!(cached["shop/cart:80"].len(), 1);
        drop(cached);
        let text = render(&registry);
        for line in [
            r#"weft_route_requests_total{target="shop/orders:80",route="shop/split",backend="shop/orders-v2:80"} 3"#,
            r#"weft_route_requests_total{target="shop/orders:80",route="shop/split",backend="shop/orders-v1:80"} 1"#,
            r#"weft_route_requests_total{target="shop/orders:80",route="shop/other",backend="shop/orders-v1:80"} 1"#,
            r#"weft_route_requests_total{target="shop/cart:80",route="shop/split",backend="shop/orders-v1:80"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn mesh_identities_label_the_peer_by_direction() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let id: SpiffeId = "spiffe://td/ns/shop/sa/web".parse().unwrap();
        metrics
            .for_target(Direction::Inbound, "127.0.0.1:8080", Some(&id))
            .requests()
            .inc();
        metrics
            .for_target(Direction::Outbound, "orders", Some(&id))
            .requests()
            .inc();
        let text = render(&registry);
        assert!(text.contains(r#"weft_requests_total{direction="inbound",target="127.0.0.1:8080",tls="true",client_id="spiffe://td/ns/shop/sa/web",server_id=""} 1"#), "{text}");
        assert!(text.contains(r#"weft_requests_total{direction="outbound",target="orders",tls="true",client_id="",server_id="spiffe://td/ns/shop/sa/web"} 1"#), "{text}");
    }

    /// The handles are made once per (direction, target, peer) and shared: each still counts
    /// on its own series.
    #[test]
    fn target_handles_are_shared_per_direction_target_and_peer() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let id: SpiffeId = "spiffe://td/ns/shop/sa/web".parse().unwrap();
        let orders = metrics.for_target(Direction::Outbound, "orders", None);
        let again = metrics.for_target(Direction::Outbound, "orders", None);
        assert!(Arc::ptr_eq(&orders.0, &again.0), "made once");
        let others = [
            metrics.for_target(Direction::Outbound, "payments", None),
            metrics.for_target(Direction::Inbound, "orders", None),
            metrics.for_target(Direction::Outbound, "orders", Some(&id)),
            metrics.for_target(Direction::Inbound, "orders", Some(&id)),
        ];
        for (i, other) in others.iter().enumerate() {
            assert!(!Arc::ptr_eq(&orders.0, &other.0), "{i}");
        }
        orders.requests().inc();
        again.requests().inc();
        again.response(http::StatusCode::OK, Duration::from_millis(1));
        for other in &others {
            other.requests().inc();
        }
        // A later call finds the handles of the same series, counts included.
        let later = metrics.for_target(Direction::Inbound, "orders", Some(&id));
        later.requests().inc();
        let text = render(&registry);
        for line in [
            r#"weft_requests_total{direction="outbound",target="orders",tls="false",client_id="",server_id=""} 2"#,
            r#"weft_requests_total{direction="outbound",target="payments",tls="false",client_id="",server_id=""} 1"#,
            r#"weft_requests_total{direction="inbound",target="orders",tls="false",client_id="",server_id=""} 1"#,
            r#"weft_requests_total{direction="outbound",target="orders",tls="true",client_id="",server_id="spiffe://td/ns/shop/sa/web"} 1"#,
            r#"weft_requests_total{direction="inbound",target="orders",tls="true",client_id="spiffe://td/ns/shop/sa/web",server_id=""} 2"#,
            r#"weft_responses_total{status_class="2xx",direction="outbound",target="orders",tls="false",client_id="",server_id=""} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("weft_requests_total{"))
                .count(),
            5,
            "{text}"
        );
    }
}
