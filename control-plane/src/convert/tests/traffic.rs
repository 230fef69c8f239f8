//! Unit tests of `convert::traffic` (a child module: private items are visible).

use super::*;
use crate::convert::testing::{lines, parse};

fn convert(spec: &str) -> Result<pb::TrafficPolicy, Vec<FieldError>> {
    let head = "apiVersion: policy.weft.dev/v1alpha1\nkind: TrafficPolicy\n\
                metadata: {name: reviews, namespace: shop}\nspec:\n";
    traffic_policy(&parse(&format!("{head}{spec}")))
}

const TARGET: &str = "  targetRef: {kind: Service, name: reviews}\n";

#[test]
fn a_minimal_policy() {
    assert_eq!(
        convert(TARGET).unwrap(),
        pb::TrafficPolicy {
            namespace: "shop".into(),
            name: "reviews".into(),
            ..Default::default()
        }
    );
}

#[test]
fn every_field_converts() {
    let spec = r#"
  targetRef: {group: core, kind: Service, name: reviews}
  loadBalancer: RoundRobin
  retries:
    attempts: 10
    retryOn: [connect-failure, Refused-Stream, reset, 5xx, "503", 500-504, 429-429]
    grpcRetryOn: [unavailable, DEADLINE_EXCEEDED, invalid-argument, Canceled, "0", "16"]
    perTryTimeout: 250ms
    backoff: {base: 25ms, max: 1s}
    budget: {ratio: 0.2, minPerSecond: 10}
    maxBufferedBodyBytes: 65536
    nonIdempotent: true
  timeouts: {connect: 1s, request: 1m, backendRequest: 1m, idle: 1h}
  circuitBreaker: {maxConnections: 100, maxPendingRequests: 0, maxRequests: 1000}
  outlierDetection: {consecutiveFailures: 1, baseEjectionTime: 30s, maxEjectionPercent: 100}
"#;
    let range = |from, to| pb::StatusRange { from, to };
    assert_eq!(
        convert(spec).unwrap(),
        pb::TrafficPolicy {
            namespace: "shop".into(),
            name: "reviews".into(),
            load_balancer: pb::LoadBalancer::RoundRobin as i32,
            retries: Some(pb::Retries {
                attempts: Some(10),
                retry_on: vec![
                    "connect-failure".into(),
                    "refused-stream".into(),
                    "reset".into()
                ],
                statuses: vec![
                    range(500, 599),
                    range(503, 503),
                    range(500, 504),
                    range(429, 429)
                ],
                grpc_codes: vec![14, 4, 3, 1, 0, 16],
                per_try_timeout_ms: Some(250),
                backoff_base_ms: Some(25),
                backoff_max_ms: Some(1000),
                budget_ratio: Some(0.2),
                budget_min_per_second: Some(10),
                max_buffered_body_bytes: Some(65536),
                non_idempotent: true,
            }),
            timeouts: Some(pb::Timeouts {
                connect_ms: Some(1000),
                request_ms: Some(60_000),
                backend_request_ms: Some(60_000),
                idle_ms: Some(3_600_000),
            }),
            circuit_breaker: Some(pb::CircuitBreaker {
                max_connections: Some(100),
                max_pending_requests: Some(0),
                max_requests: Some(1000),
            }),
            outlier_detection: Some(pb::OutlierDetection {
                consecutive_failures: Some(1),
                base_ejection_ms: Some(30_000),
                max_ejection_percent: Some(100),
            }),
        }
    );
    let p2c = format!("{TARGET}  loadBalancer: P2CEWMA\n  retries: {{}}\n  timeouts: {{request: 0s, backendRequest: 5s}}\n");
    let p2c = convert(&p2c).unwrap();
    assert_eq!(p2c.load_balancer, pb::LoadBalancer::P2cEwma as i32);
    assert_eq!(p2c.retries, Some(pb::Retries::default()));
    assert_eq!(
        p2c.timeouts.unwrap().request_ms,
        Some(0),
        "0s is kept: no limit"
    );
}

#[test]
fn every_problem_is_reported() {
    let spec = r#"
  targetRef: {group: apps, kind: Deployment, name: ""}
  retries:
    attempts: 11
    retryOn: [5XX, gateway-error, "600", "99", 504-500, 500-, 4xx]
    grpcRetryOn: ["17", not_a_code, ""]
    perTryTimeout: 1.5s
    backoff: {base: 2s, max: 1s}
    budget: {ratio: 1.5}
  timeouts: {connect: 1d, request: 1s, backendRequest: 2s, idle: "10"}
  outlierDetection: {consecutiveFailures: 0, baseEjectionTime: 30, maxEjectionPercent: 101}
"#;
    let not_condition = |e: &str| {
        format!("{e:?} is not a retry condition: expected connect-failure, refused-stream, reset, 5xx, a status like 503 or a range like 500-504")
    };
    let not_code = |i: usize, e: &str| {
        format!("spec.retries.grpcRetryOn[{i}]: {e:?} is not a gRPC status code: expected a number 0-16 or a name like \"unavailable\" or \"deadline-exceeded\"")
    };
    let bad_duration = |field: &str, text: &str| {
        format!("{field}: invalid duration {text:?}: expected 1 to 4 groups of up to 5 digits and a unit (h, m, s or ms), like \"1h30m\" or \"250ms\"")
    };
    assert_eq!(
        lines(convert(spec)),
        vec![
            "spec.targetRef.group: unsupported group \"apps\": only \"\" (core) is supported"
                .to_string(),
            "spec.targetRef.kind: unsupported kind \"Deployment\": only Service is supported"
                .into(),
            "spec.targetRef.name: required".into(),
            "spec.retries.attempts: 11 is more than the maximum of 10".into(),
            format!(
                "spec.retries.retryOn[1]: {}",
                not_condition("gateway-error")
            ),
            "spec.retries.retryOn[2]: \"600\": status 600 is not between 100 and 599".into(),
            "spec.retries.retryOn[3]: \"99\": status 99 is not between 100 and 599".into(),
            "spec.retries.retryOn[4]: \"504-500\": the range's start is after its end".into(),
            format!("spec.retries.retryOn[5]: {}", not_condition("500-")),
            format!("spec.retries.retryOn[6]: {}", not_condition("4xx")),
            not_code(0, "17"),
            not_code(1, "not_a_code"),
            not_code(2, ""),
            bad_duration("spec.retries.perTryTimeout", "1.5s"),
            "spec.retries.backoff.base: must not exceed backoff.max (2000ms > 1000ms)".into(),
            "spec.retries.budget.ratio: 1.5 is not between 0 and 1".into(),
            bad_duration("spec.timeouts.connect", "1d"),
            bad_duration("spec.timeouts.idle", "10"),
            "spec.timeouts.backendRequest: must not exceed timeouts.request (2000ms > 1000ms)"
                .into(),
            "spec.outlierDetection.consecutiveFailures: must be at least 1".into(),
            bad_duration("spec.outlierDetection.baseEjectionTime", "30"),
            "spec.outlierDetection.maxEjectionPercent: 101 is more than 100".into(),
        ]
    );
}

#[test]
fn ratios_outside_0_to_1_and_missing_metadata_are_errors() {
    let yaml = format!(
        "apiVersion: policy.weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{}}\n\
         spec:\n{TARGET}  retries: {{budget: {{ratio: -0.1}}}}\n"
    );
    assert_eq!(
        lines(traffic_policy(&parse(&yaml))),
        [
            "metadata.name: required",
            "metadata.namespace: required",
            "spec.retries.budget.ratio: -0.1 is not between 0 and 1",
        ]
    );
    let nan = format!("{TARGET}  retries: {{budget: {{ratio: .nan}}}}\n");
    assert_eq!(
        lines(convert(&nan)),
        ["spec.retries.budget.ratio: NaN is not between 0 and 1"]
    );
}

#[test]
fn grpc_codes_by_every_name_and_number() {
    for (code, name) in GRPC_CODES.iter().enumerate() {
        assert_eq!(grpc_code(name), Some(code as u32));
        assert_eq!(
            grpc_code(&name.to_uppercase().replace('-', "_")),
            Some(code as u32)
        );
        assert_eq!(grpc_code(&code.to_string()), Some(code as u32));
    }
    assert_eq!(grpc_code("-1"), None);
    assert_eq!(grpc_code("014"), None);
}
