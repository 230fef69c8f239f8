//! A Service's `TrafficPolicy` resolved against the proxy's defaults, and the `HTTPRoute`
//! timeouts layered on top of it. Built once per view update, read by every request to the
//! Service; nothing here changes while a request runs.

use std::time::Duration;

use weft_api::proto::discovery::v1 as pb;

use super::retry::RetryPolicy;

/// None, as in the Gateway API, Istio and Linkerd: the proxy cannot know how long a request
/// may legitimately take (uploads, long polls, reports); the application or the route says.
pub const DEFAULT_REQUEST_TIMEOUT: Option<Duration> = None;
/// None: a try is bounded by the request timeout unless the route or policy says more.
pub const DEFAULT_BACKEND_REQUEST_TIMEOUT: Option<Duration> = None;

/// Everything the outbound side needs to know about calls to one Service.
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficSettings {
    /// `namespace/name` of the TrafficPolicy, `None` when only defaults apply (for logs and
    /// the admin page).
    pub policy: Option<String>,
    pub retry: RetryPolicy,
    pub timeouts: Timeouts,
    /// As sent; `Unspecified` means the default (P2C over peak EWMA). Read by `balance`.
    pub load_balancer: pb::LoadBalancer,
    /// As sent; absent fields take `breaker`'s defaults.
    pub circuit_breaker: Option<pb::CircuitBreaker>,
    /// As sent; absent fields take `outlier`'s defaults.
    pub outlier_detection: Option<pb::OutlierDetection>,
}

impl Default for TrafficSettings {
    fn default() -> Self {
        TrafficSettings::from_proto(None)
    }
}

impl TrafficSettings {
    /// `None` (no TrafficPolicy targets the Service) and absent fields take the defaults.
    pub fn from_proto(p: Option<&pb::TrafficPolicy>) -> TrafficSettings {
        let Some(p) = p else {
            return TrafficSettings {
                policy: None,
                retry: RetryPolicy::default(),
                timeouts: Timeouts::default(),
                load_balancer: pb::LoadBalancer::Unspecified,
                circuit_breaker: None,
                outlier_detection: None,
            };
        };
        TrafficSettings {
            policy: Some(format!("{}/{}", p.namespace, p.name)),
            retry: RetryPolicy::from_proto(p.retries.as_ref()),
            timeouts: Timeouts::from_proto(p.timeouts.as_ref()),
            // An unknown value (a newer control plane) reads as Unspecified.
            load_balancer: p.load_balancer(),
            circuit_breaker: p.circuit_breaker,
            outlier_detection: p.outlier_detection,
        }
    }

    /// The timeouts for a request that matched `rule`: the rule's wherever it sets one.
    pub fn timeouts_for(&self, rule: Option<&pb::RouteRule>) -> Timeouts {
        match rule {
            Some(rule) => self.timeouts.with_route(
                route_timeout(rule.request_timeout_ms),
                route_timeout(rule.backend_request_timeout_ms),
            ),
            None => self.timeouts,
        }
    }

    /// The bound on one try: the smaller of the retry policy's per-try timeout and the
    /// backend request timeout. Either one firing ends the try as
    /// [`TimeoutKind::BackendRequest`].
    pub fn try_timeout(&self, timeouts: &Timeouts) -> Option<Duration> {
        match (self.retry.per_try_timeout, timeouts.backend_request) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A route's optional milliseconds as [`Timeouts::with_route`] takes them: absent is unset,
/// `0` is "no timeout" (the Gateway API's `0s`).
pub fn route_timeout(ms: Option<u64>) -> Option<Option<Duration>> {
    ms.map(|ms| (ms != 0).then(|| Duration::from_millis(ms)))
}

/// The timeouts of one Service, or of one request once its route is known. `None` is no
/// timeout for `request` and `backend_request`, and the proxy's own value for `connect` and
/// `idle`, which are always bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timeouts {
    /// Opening a connection to one endpoint (TCP and the mTLS handshake), and separately
    /// waiting for a connection while the Service is at `maxConnections`. `None`: the
    /// proxy's `connectTimeout` (1 s unless its config says otherwise).
    pub connect: Option<Duration>,
    /// The whole request, from the proxy receiving it to the end of the response, retries
    /// and backoff included (Gateway API `timeouts.request`). Before the response head it
    /// answers 504; after, the response is cut off.
    pub request: Option<Duration>,
    /// One try at one backend, from sending the request to the end of the response
    /// (Gateway API `timeouts.backendRequest`).
    pub backend_request: Option<Duration>,
    /// How long a pooled connection to an endpoint may sit with no request before it is
    /// closed. `None`: the pool's own (`http::pool::DEFAULT_IDLE_TIMEOUT`, 90 s). Every
    /// connection is retired at `http::pool::DEFAULT_MAX_CONNECTION_AGE` (5 min) anyway,
    /// so a longer idle timeout changes nothing.
    pub idle: Option<Duration>,
}

impl Timeouts {
    /// From the wire; absent fields take the defaults and `0` means no timeout — except for
    /// `connect` and `idle`, where `0` takes the proxy's value: a connect without a bound
    /// would hang on a black-holed endpoint for the kernel's two minutes of SYN retries, and
    /// a pooled connection is retired at its maximum age whatever its idle timeout.
    pub fn from_proto(t: Option<&pb::Timeouts>) -> Timeouts {
        let defaults = Timeouts::default();
        let Some(t) = t else {
            return defaults;
        };
        let optional = |ms: Option<u64>, default: Option<Duration>| match ms {
            None => default,
            Some(ms) => (ms != 0).then(|| Duration::from_millis(ms)),
        };
        let proxy_bounded = |ms: Option<u64>| ms.filter(|&ms| ms != 0).map(Duration::from_millis);
        Timeouts {
            connect: proxy_bounded(t.connect_ms),
            request: optional(t.request_ms, DEFAULT_REQUEST_TIMEOUT),
            backend_request: optional(t.backend_request_ms, DEFAULT_BACKEND_REQUEST_TIMEOUT),
            idle: proxy_bounded(t.idle_ms),
        }
    }

    /// HTTPRoute values win where set (`Some(None)` = explicitly no timeout).
    pub fn with_route(
        &self,
        request: Option<Option<Duration>>,
        backend_request: Option<Option<Duration>>,
    ) -> Timeouts {
        Timeouts {
            request: request.unwrap_or(self.request),
            backend_request: backend_request.unwrap_or(self.backend_request),
            ..*self
        }
    }
}

/// Which timeout fired. The request path answers 504 with header
/// `weft-proxy-error: <as_str>` and body [`reason`](Self::reason) for every kind but
/// `Idle`, which only closes connections with no request on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeoutKind {
    Connect,
    Request,
    /// The backend request timeout or the per-try timeout, whichever is smaller (both bound
    /// one try at one backend).
    BackendRequest,
    Idle,
}

impl TimeoutKind {
    /// The error code: `connect-timeout`, `request-timeout`, `backend-request-timeout`,
    /// `idle-timeout`.
    pub fn as_str(self) -> &'static str {
        match self {
            TimeoutKind::Connect => "connect-timeout",
            TimeoutKind::Request => "request-timeout",
            TimeoutKind::BackendRequest => "backend-request-timeout",
            TimeoutKind::Idle => "idle-timeout",
        }
    }

    /// One line for the 504 body: `request timeout (10s) exceeded`.
    pub fn reason(self, limit: Duration) -> String {
        let name = match self {
            TimeoutKind::Connect => "connect timeout",
            TimeoutKind::Request => "request timeout",
            TimeoutKind::BackendRequest => "backend request timeout",
            TimeoutKind::Idle => "idle timeout",
        };
        format!("{name} ({}) exceeded", human(limit))
    }
}

/// `10s`, `1m30s`, `250ms`, `1500ms`: whole seconds and minutes when exact, else milliseconds.
fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 || !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let secs = ms / 1000;
    match (secs / 60, secs % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s}s"),
    }
}

#[cfg(test)]
#[path = "tests/policy.rs"]
mod tests;
