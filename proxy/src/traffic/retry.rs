//! The retry policy of one Service: which failed tries are retried, for which methods, how
//! many times, and how long to wait in between. Whether a retry may happen *now* is the
//! [`budget`](super::budget)'s call; whether the request body can be replayed is the request
//! path's (it keeps a copy of up to [`RetryPolicy::max_buffered_body`] bytes,
//! `crate::http::replay`).
//!
//! Conditions follow Envoy's names, as the control plane writes them into `pb::Retries`:
//! `connect-failure`, `refused-stream`, `reset`, status ranges, and gRPC status codes read
//! from the headers of a trailers-only response.

use std::ops::RangeInclusive;
use std::time::Duration;

use http::{HeaderMap, Method};
use weft_api::proto::discovery::v1 as pb;

use super::budget::{BudgetConfig, DEFAULT_BUDGET_MIN_PER_SECOND, DEFAULT_BUDGET_RATIO};

/// Istio's default: two retries (three tries) rides out one or two bad endpoints among
/// several, and the budget caps what that costs in an outage.
pub const DEFAULT_ATTEMPTS: u32 = 2;
/// The control plane's limit (`MAX_RETRY_ATTEMPTS`), applied again here in case a newer or
/// older control plane sends more: retries stack across hops, so one request must not turn
/// into a storm.
pub const MAX_ATTEMPTS: u32 = 10;
/// Envoy's: a retry after 25 ms usually lands on another endpoint or after a restart blip,
/// without holding the caller up noticeably.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);
/// Envoy's (10 × base): with at most a few retries, waiting longer mostly adds latency.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_millis(250);
/// Envoy and Istio: no per-try timeout unless asked for; a try is bounded by the request
/// timeout (and the route's `backendRequest`), because a wrong guess here cuts off slow but
/// healthy requests and then retries them, doubling the load.
pub const DEFAULT_PER_TRY_TIMEOUT: Option<Duration> = None;
/// Linkerd's limit, and the issue's: enough for nearly every API request body, small enough
/// that buffering every in-flight request costs little memory. Larger bodies stream and are
/// never retried.
pub const DEFAULT_MAX_BUFFERED_BODY: usize = 64 * 1024;
/// Only 503 by default (Istio's `retriable-status-codes`): it is the status that says "not
/// now, not processed" (overload, draining, no healthy upstream). A 500 or 504 may come after
/// the work was done.
pub const DEFAULT_RETRY_STATUSES: [RangeInclusive<u16>; 1] = [503..=503];
/// gRPC UNAVAILABLE (14) only: gRPC's status guide names it as the code a client should
/// retry; the others (INTERNAL, DEADLINE_EXCEEDED, ...) may follow side effects.
pub const DEFAULT_GRPC_CODES: [u32; 1] = [GRPC_UNAVAILABLE];
const GRPC_UNAVAILABLE: u32 = 14;

/// One condition under which a failed try is retried; also the reason a retry happened (a
/// metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Condition {
    /// The connection to the endpoint could not be made (refused, unreachable, connect
    /// timeout, TLS handshake or peer identity failure). The request never left the proxy.
    ConnectFailure,
    /// HTTP/2 REFUSED_STREAM (or a GOAWAY that excludes the stream): the server says it did
    /// nothing with the request.
    RefusedStream,
    /// The connection or stream was reset before a response arrived.
    Reset,
    /// The response status is in one of the retried ranges.
    Status,
    /// A trailers-only gRPC response carries one of the retried codes.
    GrpcStatus,
    /// The try outlived its per-try timeout.
    Timeout,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::ConnectFailure => "connect-failure",
            Condition::RefusedStream => "refused-stream",
            Condition::Reset => "reset",
            Condition::Status => "status",
            Condition::GrpcStatus => "grpc-status",
            Condition::Timeout => "per-try-timeout",
        }
    }

    /// The application never saw the request (or gRPC says it may be retried; see
    /// [`RetryPolicy::should_retry`]), so retrying is safe whatever the method.
    fn safe_for_any_method(self) -> bool {
        matches!(
            self,
            Condition::ConnectFailure | Condition::RefusedStream | Condition::GrpcStatus
        )
    }
}

/// The conditions a policy retries on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conditions {
    pub connect_failure: bool,
    pub refused_stream: bool,
    pub reset: bool,
    /// Inclusive ranges of HTTP statuses.
    pub statuses: Vec<RangeInclusive<u16>>,
    /// gRPC status codes (0–16).
    pub grpc_codes: Vec<u32>,
}

impl Default for Conditions {
    /// connect-failure, refused-stream, reset, 503, and gRPC UNAVAILABLE.
    fn default() -> Self {
        Conditions {
            connect_failure: true,
            refused_stream: true,
            reset: true,
            statuses: DEFAULT_RETRY_STATUSES.to_vec(),
            grpc_codes: DEFAULT_GRPC_CODES.to_vec(),
        }
    }
}

impl Conditions {
    /// From the wire. As in Envoy and Istio, a list that is given replaces the default:
    /// `retry_on` and `statuses` (both written from the CRD's `retryOn`) replace the
    /// connection and status defaults together; `grpc_codes` (from `grpcRetryOn`) replaces
    /// the gRPC default on its own. Unknown words (a newer control plane) are ignored.
    pub fn from_proto(
        retry_on: &[String],
        statuses: &[pb::StatusRange],
        grpc_codes: &[u32],
    ) -> Self {
        let defaults = Conditions::default();
        let mut c = Conditions {
            grpc_codes: if grpc_codes.is_empty() {
                defaults.grpc_codes.clone()
            } else {
                grpc_codes.to_vec()
            },
            ..defaults
        };
        if retry_on.is_empty() && statuses.is_empty() {
            return c;
        }
        c.connect_failure = false;
        c.refused_stream = false;
        c.reset = false;
        c.statuses.clear();
        for word in retry_on {
            match word.to_ascii_lowercase().as_str() {
                "connect-failure" => c.connect_failure = true,
                "refused-stream" => c.refused_stream = true,
                "reset" => c.reset = true,
                other => tracing::warn!(condition = other, "unknown retry condition ignored"),
            }
        }
        for range in statuses {
            let (from, to) = (range.from.max(100), range.to.min(599));
            if from <= to {
                c.statuses.push(from as u16..=to as u16);
            }
        }
        c
    }
}

/// What happened to one try, as the request path saw it.
#[derive(Debug, Clone, Copy)]
pub enum Attempt<'a> {
    /// A response head arrived: its status, and for gRPC the `grpc-status` header of a
    /// trailers-only response. A `grpc-status` that comes in trailers is too late (the
    /// response is already streaming to the caller) and is never looked at.
    Response(&'a http::response::Parts),
    /// No connection to the endpoint.
    ConnectFailed,
    /// HTTP/2 REFUSED_STREAM.
    RefusedStream,
    /// Connection or stream reset (or closed) before the response head.
    Reset,
    /// The try's own timeout ([`TrafficSettings::try_timeout`]: the per-try or the backend
    /// request timeout, whichever is smaller) fired before the response head. Retryable only
    /// when the policy has a per-try timeout: retrying timed-out tries is opted into.
    ///
    /// [`TrafficSettings::try_timeout`]: super::policy::TrafficSettings::try_timeout
    Timeout,
}

/// A Service's retry policy, resolved against the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first try (0 disables retries).
    pub attempts: u32,
    pub on: Conditions,
    /// Bound on one try; when set, a try that hits it is retried (Envoy).
    pub per_try_timeout: Option<Duration>,
    /// Backoff before retry n is uniform in `[0, min(max, base × 2^(n-1))]`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Up to this many bytes of a request body are kept, as the first try streams it, to be
    /// replayed by a retry; a longer body is sent once and its request is never retried.
    pub max_buffered_body: usize,
    /// Retry methods that are not idempotent (POST, PATCH) too.
    pub non_idempotent: bool,
    pub budget: BudgetConfig,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: DEFAULT_ATTEMPTS,
            on: Conditions::default(),
            per_try_timeout: DEFAULT_PER_TRY_TIMEOUT,
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_max: DEFAULT_BACKOFF_MAX,
            max_buffered_body: DEFAULT_MAX_BUFFERED_BODY,
            non_idempotent: false,
            budget: BudgetConfig::default(),
        }
    }
}

impl RetryPolicy {
    /// From the wire; absent fields take the defaults. Values the control plane would have
    /// refused (a newer or older one) are made safe rather than rejected: attempts are capped
    /// at [`MAX_ATTEMPTS`], `0` per-try timeout means none, a ratio outside 0–1 is clamped,
    /// and a backoff max below the base is raised to the base.
    pub fn from_proto(r: Option<&pb::Retries>) -> RetryPolicy {
        let Some(r) = r else {
            return RetryPolicy::default();
        };
        let ms = Duration::from_millis;
        let backoff_base = r.backoff_base_ms.map_or(DEFAULT_BACKOFF_BASE, ms);
        let backoff_max = r
            .backoff_max_ms
            .map_or(DEFAULT_BACKOFF_MAX, ms)
            .max(backoff_base);
        let ratio = match r.budget_ratio {
            Some(ratio) if !ratio.is_nan() => ratio.clamp(0.0, 1.0),
            _ => DEFAULT_BUDGET_RATIO,
        };
        RetryPolicy {
            attempts: r.attempts.unwrap_or(DEFAULT_ATTEMPTS).min(MAX_ATTEMPTS),
            on: Conditions::from_proto(&r.retry_on, &r.statuses, &r.grpc_codes),
            per_try_timeout: match r.per_try_timeout_ms {
                None => DEFAULT_PER_TRY_TIMEOUT,
                Some(0) => None,
                Some(n) => Some(ms(n)),
            },
            backoff_base,
            backoff_max,
            max_buffered_body: r
                .max_buffered_body_bytes
                .map_or(DEFAULT_MAX_BUFFERED_BODY, |n| n as usize),
            non_idempotent: r.non_idempotent,
            budget: BudgetConfig {
                ratio,
                min_per_second: r
                    .budget_min_per_second
                    .unwrap_or(DEFAULT_BUDGET_MIN_PER_SECOND),
                ..BudgetConfig::default()
            },
        }
    }

    /// Which of the policy's conditions `attempt` meets, if any.
    pub fn condition(&self, attempt: &Attempt<'_>) -> Option<Condition> {
        let on = &self.on;
        match attempt {
            Attempt::ConnectFailed => on.connect_failure.then_some(Condition::ConnectFailure),
            Attempt::RefusedStream => on.refused_stream.then_some(Condition::RefusedStream),
            Attempt::Reset => on.reset.then_some(Condition::Reset),
            Attempt::Timeout => self.per_try_timeout.map(|_| Condition::Timeout),
            Attempt::Response(parts) => {
                let status = parts.status.as_u16();
                if grpc_status(&parts.headers).is_some_and(|code| on.grpc_codes.contains(&code)) {
                    Some(Condition::GrpcStatus)
                } else if on.statuses.iter().any(|range| range.contains(&status)) {
                    Some(Condition::Status)
                } else {
                    None
                }
            }
        }
    }

    /// Whether `attempt` meets one of the policy's conditions (method, attempts left, body
    /// and budget are checked separately).
    pub fn is_retryable(&self, attempt: &Attempt<'_>) -> bool {
        self.condition(attempt).is_some()
    }

    /// Idempotent methods (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT, DELETE) may be
    /// retried; others only with `non_idempotent`. CONNECT never is: it opens a tunnel, there
    /// is no request to replay.
    pub fn allows_method(&self, method: &Method) -> bool {
        method.is_idempotent() || (self.non_idempotent && method != Method::CONNECT)
    }

    /// The retry decision short of attempts left, body and budget: the condition met, if the
    /// method allows a retry after it.
    ///
    /// A connect failure or a refused stream is retried whatever the method: the application
    /// never saw the request (Envoy's reasoning for `refused-stream`). A listed gRPC code is
    /// too: every gRPC call is a POST, so the method says nothing, and listing a code
    /// (UNAVAILABLE by default) is gRPC's own way of declaring it retryable, as Istio and
    /// gRPC's retry policy treat it. Everything else (resets, statuses, per-try timeouts)
    /// may come after the application acted, so the method must allow it.
    pub fn should_retry(&self, method: &Method, attempt: &Attempt<'_>) -> Option<Condition> {
        let condition = self.condition(attempt)?;
        (method != Method::CONNECT
            && (condition.safe_for_any_method() || self.allows_method(method)))
        .then_some(condition)
    }

    /// The wait before retry number `retry` (1 for the first retry): exponential with full
    /// jitter, uniform in `[0, ceiling]` (see [`backoff_ceiling`](Self::backoff_ceiling)).
    /// Full jitter spreads the retries of many callers that failed together, so they do not
    /// arrive at a recovering endpoint in one wave.
    pub fn backoff(&self, retry: u32, rng: &mut fastrand::Rng) -> Duration {
        let ceiling = self.backoff_ceiling(retry).as_nanos();
        Duration::from_nanos(rng.u64(0..=u64::try_from(ceiling).unwrap_or(u64::MAX)))
    }

    /// `base × 2^(retry - 1)`, capped at `backoff_max`.
    pub fn backoff_ceiling(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        self.backoff_base
            .saturating_mul(1 << doublings)
            .min(self.backoff_max)
    }
}

/// The `grpc-status` of a trailers-only response: a number in the response headers.
fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
#[path = "tests/retry.rs"]
mod tests;
