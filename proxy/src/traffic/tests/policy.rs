use std::time::Duration;

use weft_api::proto::discovery::v1 as pb;

use super::*;
use crate::traffic::budget::BudgetConfig;
use crate::traffic::retry::{Conditions, RetryPolicy};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn policy() -> pb::TrafficPolicy {
    pb::TrafficPolicy {
        namespace: "shop".into(),
        name: "orders".into(),
        ..Default::default()
    }
}

#[test]
fn from_proto_none_is_all_defaults() {
    let s = TrafficSettings::from_proto(None);
    assert_eq!(s.policy, None);
    assert_eq!(s.retry, RetryPolicy::default());
    assert_eq!(
        s.timeouts,
        Timeouts {
            // The proxy's own connect and idle timeouts apply (resolved per call).
            connect: None,
            request: None,
            backend_request: None,
            idle: None,
        }
    );
    assert_eq!(s.load_balancer, pb::LoadBalancer::Unspecified);
    assert_eq!((s.circuit_breaker, s.outlier_detection), (None, None));
    assert_eq!(s, TrafficSettings::default());
}

#[test]
fn from_proto_empty_policy_is_defaults_with_its_name() {
    let s = TrafficSettings::from_proto(Some(&policy()));
    assert_eq!(s.policy.as_deref(), Some("shop/orders"));
    assert_eq!(
        TrafficSettings { policy: None, ..s },
        TrafficSettings::default()
    );
}

#[test]
fn from_proto_partial_policy_keeps_defaults_for_absent_fields() {
    let s = TrafficSettings::from_proto(Some(&pb::TrafficPolicy {
        retries: Some(pb::Retries {
            attempts: Some(5),
            ..Default::default()
        }),
        timeouts: Some(pb::Timeouts {
            request_ms: Some(10_000),
            ..Default::default()
        }),
        circuit_breaker: Some(pb::CircuitBreaker {
            max_requests: Some(10),
            ..Default::default()
        }),
        ..policy()
    }));
    assert_eq!(
        s.retry,
        RetryPolicy {
            attempts: 5,
            ..RetryPolicy::default()
        }
    );
    assert_eq!(
        s.timeouts,
        Timeouts {
            request: Some(secs(10)),
            ..Timeouts::default()
        }
    );
    // Passed through for the breaker, which fills in its own defaults.
    assert_eq!(s.circuit_breaker.unwrap().max_requests, Some(10));
    assert_eq!(s.circuit_breaker.unwrap().max_connections, None);
    assert_eq!(s.outlier_detection, None);
}

#[test]
fn from_proto_full_policy() {
    let outlier = pb::OutlierDetection {
        consecutive_failures: Some(3),
        base_ejection_ms: Some(10_000),
        max_ejection_percent: Some(20),
    };
    let breaker = pb::CircuitBreaker {
        max_connections: Some(1),
        max_pending_requests: Some(2),
        max_requests: Some(3),
    };
    let s = TrafficSettings::from_proto(Some(&pb::TrafficPolicy {
        load_balancer: pb::LoadBalancer::RoundRobin as i32,
        retries: Some(pb::Retries {
            attempts: Some(1),
            retry_on: vec!["reset".into()],
            statuses: vec![pb::StatusRange { from: 502, to: 504 }],
            grpc_codes: vec![8],
            per_try_timeout_ms: Some(500),
            backoff_base_ms: Some(50),
            backoff_max_ms: Some(500),
            budget_ratio: Some(0.1),
            budget_min_per_second: Some(1),
            max_buffered_body_bytes: Some(4096),
            non_idempotent: true,
        }),
        timeouts: Some(pb::Timeouts {
            connect_ms: Some(250),
            request_ms: Some(10_000),
            backend_request_ms: Some(2_000),
            idle_ms: Some(60_000),
        }),
        circuit_breaker: Some(breaker),
        outlier_detection: Some(outlier),
        ..policy()
    }));
    assert_eq!(
        s,
        TrafficSettings {
            policy: Some("shop/orders".into()),
            retry: RetryPolicy {
                attempts: 1,
                on: Conditions {
                    connect_failure: false,
                    refused_stream: false,
                    reset: true,
                    statuses: vec![502..=504],
                    grpc_codes: vec![8],
                },
                per_try_timeout: Some(ms(500)),
                backoff_base: ms(50),
                backoff_max: ms(500),
                max_buffered_body: 4096,
                non_idempotent: true,
                budget: BudgetConfig {
                    ratio: 0.1,
                    min_per_second: 1,
                    ttl: secs(10),
                },
            },
            timeouts: Timeouts {
                connect: Some(ms(250)),
                request: Some(secs(10)),
                backend_request: Some(secs(2)),
                idle: Some(secs(60)),
            },
            load_balancer: pb::LoadBalancer::RoundRobin,
            circuit_breaker: Some(breaker),
            outlier_detection: Some(outlier),
        }
    );
}

#[test]
fn zero_timeouts_mean_none_and_the_proxy_value_for_connect_and_idle() {
    let t = Timeouts::from_proto(Some(&pb::Timeouts {
        connect_ms: Some(0),
        request_ms: Some(0),
        backend_request_ms: Some(0),
        idle_ms: Some(0),
    }));
    assert_eq!(
        t,
        Timeouts {
            connect: None,
            request: None,
            backend_request: None,
            idle: None,
        }
    );
}

#[test]
fn unknown_load_balancer_reads_as_unspecified() {
    let s = TrafficSettings::from_proto(Some(&pb::TrafficPolicy {
        load_balancer: 99,
        ..policy()
    }));
    assert_eq!(s.load_balancer, pb::LoadBalancer::Unspecified);
}

#[test]
fn route_timeouts_win_where_set() {
    let base = Timeouts {
        request: Some(secs(10)),
        backend_request: Some(secs(2)),
        ..Timeouts::default()
    };
    // Unset: the policy's stay.
    assert_eq!(base.with_route(None, None), base);
    // Set: the route's.
    let t = base.with_route(Some(Some(secs(30))), None);
    assert_eq!(
        (t.request, t.backend_request),
        (Some(secs(30)), Some(secs(2)))
    );
    let t = base.with_route(None, Some(Some(ms(500))));
    assert_eq!(
        (t.request, t.backend_request),
        (Some(secs(10)), Some(ms(500)))
    );
    // Explicitly none (the route's "0s") beats the policy's value.
    let t = base.with_route(Some(None), Some(None));
    assert_eq!((t.request, t.backend_request), (None, None));
    // Connect and idle are never the route's.
    assert_eq!((t.connect, t.idle), (base.connect, base.idle));
}

#[test]
fn route_rule_timeouts_from_the_wire() {
    let s = TrafficSettings::from_proto(Some(&pb::TrafficPolicy {
        timeouts: Some(pb::Timeouts {
            request_ms: Some(10_000),
            backend_request_ms: Some(2_000),
            ..Default::default()
        }),
        ..policy()
    }));
    let rule = |request, backend| pb::RouteRule {
        request_timeout_ms: request,
        backend_request_timeout_ms: backend,
        ..Default::default()
    };
    assert_eq!(s.timeouts_for(None), s.timeouts);
    assert_eq!(s.timeouts_for(Some(&rule(None, None))), s.timeouts);
    let t = s.timeouts_for(Some(&rule(Some(0), Some(1_000))));
    assert_eq!((t.request, t.backend_request), (None, Some(secs(1))));
    assert_eq!(route_timeout(None), None);
    assert_eq!(route_timeout(Some(0)), Some(None));
    assert_eq!(route_timeout(Some(1_500)), Some(Some(ms(1_500))));
}

#[test]
fn try_timeout_is_the_smaller_of_per_try_and_backend_request() {
    let mut s = TrafficSettings::default();
    let t = |backend| Timeouts {
        backend_request: backend,
        ..Timeouts::default()
    };
    assert_eq!(s.try_timeout(&t(None)), None);
    assert_eq!(s.try_timeout(&t(Some(secs(2)))), Some(secs(2)));
    s.retry.per_try_timeout = Some(secs(1));
    assert_eq!(s.try_timeout(&t(None)), Some(secs(1)));
    assert_eq!(s.try_timeout(&t(Some(secs(2)))), Some(secs(1)));
    assert_eq!(s.try_timeout(&t(Some(ms(300)))), Some(ms(300)));
}

#[test]
fn timeout_kinds_name_themselves_for_the_504() {
    assert_eq!(TimeoutKind::Connect.as_str(), "connect-timeout");
    assert_eq!(TimeoutKind::Request.as_str(), "request-timeout");
    assert_eq!(
        TimeoutKind::BackendRequest.as_str(),
        "backend-request-timeout"
    );
    assert_eq!(TimeoutKind::Idle.as_str(), "idle-timeout");
    assert_eq!(
        TimeoutKind::Request.reason(secs(10)),
        "request timeout (10s) exceeded"
    );
    assert_eq!(
        TimeoutKind::Connect.reason(ms(250)),
        "connect timeout (250ms) exceeded"
    );
    assert_eq!(
        TimeoutKind::BackendRequest.reason(ms(1_500)),
        "backend request timeout (1500ms) exceeded"
    );
    assert_eq!(
        TimeoutKind::Idle.reason(secs(300)),
        "idle timeout (5m) exceeded"
    );
    assert_eq!(
        TimeoutKind::Request.reason(secs(90)),
        "request timeout (1m30s) exceeded"
    );
}
