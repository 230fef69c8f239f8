//! `TrafficPolicy` → `pb::TrafficPolicy`. The Service it targets is not part of the wire
//! value: the index attaches the result to the Service named by `spec.targetRef.name` (in
//! the policy's namespace).

use weft_api::crd::traffic_policy::{self as crd, TrafficPolicy};
use weft_api::proto::discovery::v1 as pb;

use super::{namespace_and_name, service_ref, Errors, FieldError};

/// The most retries a policy may ask for. Each retry multiplies load on a Service that is
/// already failing, and retries stack across hops (3 hops × 10 attempts is already 1,331
/// requests for one call); the retry budget limits the average, this limits the worst case
/// of a single request, so a typo like `attempts: 100` cannot turn into a retry storm.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;

/// Retry conditions that are passed through as words (`pb::Retries::retry_on`).
const RETRY_ON_WORDS: &[&str] = &["connect-failure", "refused-stream", "reset"];

/// gRPC status codes by canonical name (index = code), written with `-`.
const GRPC_CODES: [&str; 17] = [
    "ok",
    "cancelled",
    "unknown",
    "invalid-argument",
    "deadline-exceeded",
    "not-found",
    "already-exists",
    "permission-denied",
    "resource-exhausted",
    "failed-precondition",
    "aborted",
    "out-of-range",
    "unimplemented",
    "internal",
    "unavailable",
    "data-loss",
    "unauthenticated",
];

pub fn traffic_policy(p: &TrafficPolicy) -> Result<pb::TrafficPolicy, Vec<FieldError>> {
    let mut errors = Errors::default();
    let (namespace, name) = namespace_and_name(&p.metadata, &mut errors);
    let spec = &p.spec;

    let target = &spec.target_ref;
    let (group, kind) = (Some(target.group.as_str()), Some(target.kind.as_str()));
    service_ref(&mut errors, "spec.targetRef", group, kind);
    if target.name.is_empty() {
        errors.add("spec.targetRef.name", "required");
    }

    let load_balancer = match spec.load_balancer {
        None => pb::LoadBalancer::Unspecified,
        Some(crd::LoadBalancer::P2cEwma) => pb::LoadBalancer::P2cEwma,
        Some(crd::LoadBalancer::RoundRobin) => pb::LoadBalancer::RoundRobin,
    };
    let retries = spec.retries.as_ref().map(|r| retries(r, &mut errors));
    let timeouts = spec.timeouts.as_ref().map(|t| timeouts(t, &mut errors));
    let circuit_breaker = spec.circuit_breaker.as_ref().map(|c| pb::CircuitBreaker {
        max_connections: c.max_connections,
        max_pending_requests: c.max_pending_requests,
        max_requests: c.max_requests,
    });
    let outlier_detection = spec
        .outlier_detection
        .as_ref()
        .map(|o| outlier_detection(o, &mut errors));

    errors.finish(pb::TrafficPolicy {
        namespace,
        name,
        load_balancer: load_balancer as i32,
        retries,
        timeouts,
        circuit_breaker,
        outlier_detection,
    })
}

fn retries(r: &crd::Retries, errors: &mut Errors) -> pb::Retries {
    if let Some(attempts) = r.attempts {
        if attempts > MAX_RETRY_ATTEMPTS {
            errors.add(
                "spec.retries.attempts",
                format!("{attempts} is more than the maximum of {MAX_RETRY_ATTEMPTS}"),
            );
        }
    }
    let mut retry_on = Vec::new();
    let mut statuses = Vec::new();
    for (i, entry) in r.retry_on.iter().enumerate() {
        match retry_condition(entry) {
            Ok(Condition::Word(word)) => retry_on.push(word.to_owned()),
            Ok(Condition::Statuses(from, to)) => statuses.push(pb::StatusRange { from, to }),
            Err(message) => errors.add(format!("spec.retries.retryOn[{i}]"), message),
        }
    }
    let mut grpc_codes = Vec::new();
    for (i, entry) in r.grpc_retry_on.iter().enumerate() {
        match grpc_code(entry) {
            Some(code) => grpc_codes.push(code),
            None => errors.add(
                format!("spec.retries.grpcRetryOn[{i}]"),
                format!(
                    "{entry:?} is not a gRPC status code: expected a number 0-16 or a name like \
                     \"unavailable\" or \"deadline-exceeded\""
                ),
            ),
        }
    }
    let per_try_timeout_ms =
        errors.duration_ms("spec.retries.perTryTimeout", r.per_try_timeout.as_deref());
    let backoff = r.backoff.clone().unwrap_or_default();
    let backoff_base_ms = errors.duration_ms("spec.retries.backoff.base", backoff.base.as_deref());
    let backoff_max_ms = errors.duration_ms("spec.retries.backoff.max", backoff.max.as_deref());
    if let (Some(base), Some(max)) = (backoff_base_ms, backoff_max_ms) {
        if base > max {
            errors.add(
                "spec.retries.backoff.base",
                format!("must not exceed backoff.max ({base}ms > {max}ms)"),
            );
        }
    }
    let budget = r.budget.clone().unwrap_or_default();
    if let Some(ratio) = budget.ratio {
        if !(0.0..=1.0).contains(&ratio) {
            errors.add(
                "spec.retries.budget.ratio",
                format!("{ratio} is not between 0 and 1"),
            );
        }
    }
    pb::Retries {
        attempts: r.attempts,
        retry_on,
        statuses,
        grpc_codes,
        per_try_timeout_ms,
        backoff_base_ms,
        backoff_max_ms,
        budget_ratio: budget.ratio,
        budget_min_per_second: budget.min_per_second,
        max_buffered_body_bytes: r.max_buffered_body_bytes,
        non_idempotent: r.non_idempotent,
    }
}

enum Condition {
    Word(&'static str),
    Statuses(u32, u32),
}

/// `connect-failure`, `refused-stream`, `reset`, `5xx`, `503` or `500-504` (words
/// case-insensitive).
fn retry_condition(entry: &str) -> Result<Condition, String> {
    let lower = entry.to_ascii_lowercase();
    if let Some(word) = RETRY_ON_WORDS.iter().find(|w| **w == lower) {
        return Ok(Condition::Word(word));
    }
    if lower == "5xx" {
        return Ok(Condition::Statuses(500, 599));
    }
    let status = |text: &str| -> Result<u32, String> {
        let code =
            (!text.is_empty() && text.len() <= 3 && text.bytes().all(|b| b.is_ascii_digit()))
                .then(|| text.parse::<u32>().ok())
                .flatten();
        match code {
            Some(code) if (100..=599).contains(&code) => Ok(code),
            Some(code) => Err(format!(
                "{entry:?}: status {code} is not between 100 and 599"
            )),
            None => Err(format!(
                "{entry:?} is not a retry condition: expected connect-failure, refused-stream, \
                 reset, 5xx, a status like 503 or a range like 500-504"
            )),
        }
    };
    match entry.split_once('-') {
        None => status(entry).map(|s| Condition::Statuses(s, s)),
        Some((from, to)) => {
            let (from, to) = (status(from)?, status(to)?);
            if from > to {
                return Err(format!("{entry:?}: the range's start is after its end"));
            }
            Ok(Condition::Statuses(from, to))
        }
    }
}

/// A gRPC status code by number (0-16) or canonical name, case-insensitive, with `-` or `_`
/// (`unavailable`, `DEADLINE_EXCEEDED`, `invalid-argument`); `canceled` too.
fn grpc_code(entry: &str) -> Option<u32> {
    if !entry.is_empty() && entry.len() <= 2 && entry.bytes().all(|b| b.is_ascii_digit()) {
        return entry.parse().ok().filter(|code| *code <= 16);
    }
    let name = entry.to_ascii_lowercase().replace('_', "-");
    let name = if name == "canceled" {
        "cancelled"
    } else {
        &name
    };
    GRPC_CODES
        .iter()
        .position(|n| *n == name)
        .map(|code| code as u32)
}

fn timeouts(t: &crd::Timeouts, errors: &mut Errors) -> pb::Timeouts {
    let connect_ms = errors.duration_ms("spec.timeouts.connect", t.connect.as_deref());
    let request_ms = errors.duration_ms("spec.timeouts.request", t.request.as_deref());
    let backend_request_ms =
        errors.duration_ms("spec.timeouts.backendRequest", t.backend_request.as_deref());
    let idle_ms = errors.duration_ms("spec.timeouts.idle", t.idle.as_deref());
    // As for HTTPRoute (Gateway API): one attempt may not outlast the whole request; "0s"
    // means no limit.
    if let (Some(request), Some(backend)) = (request_ms, backend_request_ms) {
        if request != 0 && backend > request {
            errors.add(
                "spec.timeouts.backendRequest",
                format!("must not exceed timeouts.request ({backend}ms > {request}ms)"),
            );
        }
    }
    pb::Timeouts {
        connect_ms,
        request_ms,
        backend_request_ms,
        idle_ms,
    }
}

fn outlier_detection(o: &crd::OutlierDetection, errors: &mut Errors) -> pb::OutlierDetection {
    if o.consecutive_failures == Some(0) {
        errors.add(
            "spec.outlierDetection.consecutiveFailures",
            "must be at least 1",
        );
    }
    let base_ejection_ms = errors.duration_ms(
        "spec.outlierDetection.baseEjectionTime",
        o.base_ejection_time.as_deref(),
    );
    if let Some(percent) = o.max_ejection_percent {
        if percent > 100 {
            errors.add(
                "spec.outlierDetection.maxEjectionPercent",
                format!("{percent} is more than 100"),
            );
        }
    }
    pb::OutlierDetection {
        consecutive_failures: o.consecutive_failures,
        base_ejection_ms,
        max_ejection_percent: o.max_ejection_percent,
    }
}

#[cfg(test)]
#[path = "tests/traffic.rs"]
mod tests;
