use std::time::Duration;

use http::Method;
use weft_api::proto::discovery::v1 as pb;

use super::*;

fn response(status: u16, headers: &[(&str, &str)]) -> http::response::Parts {
    let mut builder = http::Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap().into_parts().0
}

fn retries() -> pb::Retries {
    pb::Retries::default()
}

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|w| w.to_string()).collect()
}

#[test]
fn defaults_retry_connection_failures_503_and_grpc_unavailable() {
    let p = RetryPolicy::default();
    assert_eq!(p.attempts, 2);
    assert!(p.is_retryable(&Attempt::ConnectFailed));
    assert!(p.is_retryable(&Attempt::RefusedStream));
    assert!(p.is_retryable(&Attempt::Reset));
    assert!(p.is_retryable(&Attempt::Response(&response(503, &[]))));
    assert!(p.is_retryable(&Attempt::Response(&response(200, &[("grpc-status", "14")]))));
    for status in [200, 404, 500, 502, 504] {
        assert!(
            !p.is_retryable(&Attempt::Response(&response(status, &[]))),
            "{status}"
        );
    }
    // No per-try timeout by default, so a timed-out try is not retried.
    assert!(!p.is_retryable(&Attempt::Timeout));
}

#[test]
fn each_connection_condition_only_when_listed() {
    let only = |word: &str| {
        RetryPolicy::from_proto(Some(&pb::Retries {
            retry_on: words(&[word]),
            ..retries()
        }))
    };
    let cases = [
        ("connect-failure", Attempt::ConnectFailed),
        ("refused-stream", Attempt::RefusedStream),
        ("reset", Attempt::Reset),
    ];
    for (word, _) in &cases {
        let p = only(word);
        for (other, attempt) in &cases {
            assert_eq!(p.is_retryable(attempt), word == other, "{word} vs {other}");
        }
        // A list replaces the default statuses too.
        assert!(!p.is_retryable(&Attempt::Response(&response(503, &[]))));
    }
}

#[test]
fn status_ranges() {
    let p = RetryPolicy::from_proto(Some(&pb::Retries {
        statuses: vec![
            pb::StatusRange { from: 502, to: 504 },
            pb::StatusRange { from: 429, to: 429 },
        ],
        ..retries()
    }));
    for (status, yes) in [
        (429, true),
        (501, false),
        (502, true),
        (503, true),
        (504, true),
        (505, false),
        (200, false),
    ] {
        assert_eq!(
            p.is_retryable(&Attempt::Response(&response(status, &[]))),
            yes,
            "{status}"
        );
    }
    // Only statuses were listed: connection conditions are off.
    assert!(!p.is_retryable(&Attempt::ConnectFailed));
    assert!(!p.is_retryable(&Attempt::Reset));
}

#[test]
fn status_ranges_from_the_wire_are_clamped_and_bad_ones_dropped() {
    let c = Conditions::from_proto(
        &[],
        &[
            pb::StatusRange {
                from: 0,
                to: 100_000,
            },
            pb::StatusRange { from: 504, to: 500 },
        ],
        &[],
    );
    assert_eq!(c.statuses, vec![100..=599]);
}

#[test]
fn grpc_codes_from_trailers_only_response_headers() {
    let p = RetryPolicy::from_proto(Some(&pb::Retries {
        grpc_codes: vec![8, 14],
        ..retries()
    }));
    let grpc = |code: &str| {
        response(
            200,
            &[("content-type", "application/grpc"), ("grpc-status", code)],
        )
    };
    assert_eq!(
        p.condition(&Attempt::Response(&grpc("14"))),
        Some(Condition::GrpcStatus)
    );
    assert!(p.is_retryable(&Attempt::Response(&grpc("8"))));
    assert!(!p.is_retryable(&Attempt::Response(&grpc("0"))));
    assert!(!p.is_retryable(&Attempt::Response(&grpc("13"))));
    assert!(!p.is_retryable(&Attempt::Response(&grpc("unavailable"))));
    // A gRPC response whose status will come in trailers: headers without grpc-status are
    // not retryable, whatever the trailers later say.
    let streaming = response(200, &[("content-type", "application/grpc")]);
    assert!(!p.is_retryable(&Attempt::Response(&streaming)));
    // grpcRetryOn replaces only the gRPC default: the HTTP defaults stay.
    assert!(p.is_retryable(&Attempt::ConnectFailed));
    assert!(p.is_retryable(&Attempt::Response(&response(503, &[]))));
}

#[test]
fn per_try_timeout_makes_a_timed_out_try_retryable() {
    let p = RetryPolicy::from_proto(Some(&pb::Retries {
        per_try_timeout_ms: Some(2_000),
        ..retries()
    }));
    assert_eq!(p.per_try_timeout, Some(Duration::from_secs(2)));
    assert_eq!(p.condition(&Attempt::Timeout), Some(Condition::Timeout));
    // 0 means none.
    let p = RetryPolicy::from_proto(Some(&pb::Retries {
        per_try_timeout_ms: Some(0),
        ..retries()
    }));
    assert_eq!(p.per_try_timeout, None);
    assert!(!p.is_retryable(&Attempt::Timeout));
}

#[test]
fn idempotent_methods_only_unless_non_idempotent() {
    let p = RetryPolicy::default();
    for m in [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ] {
        assert!(p.allows_method(&m), "{m}");
    }
    let custom = Method::from_bytes(b"PURGE").unwrap();
    for m in [Method::POST, Method::PATCH, Method::CONNECT, custom.clone()] {
        assert!(!p.allows_method(&m), "{m}");
    }
    let p = RetryPolicy {
        non_idempotent: true,
        ..RetryPolicy::default()
    };
    for m in [Method::POST, Method::PATCH, custom] {
        assert!(p.allows_method(&m), "{m}");
    }
    assert!(!p.allows_method(&Method::CONNECT));
}

#[test]
fn should_retry_lets_unprocessed_failures_through_for_any_method() {
    let p = RetryPolicy {
        per_try_timeout: Some(Duration::from_secs(1)),
        ..RetryPolicy::default()
    };
    let post = Method::POST;
    // The application never saw these.
    assert_eq!(
        p.should_retry(&post, &Attempt::ConnectFailed),
        Some(Condition::ConnectFailure)
    );
    assert_eq!(
        p.should_retry(&post, &Attempt::RefusedStream),
        Some(Condition::RefusedStream)
    );
    // gRPC (always POST) with a listed code.
    let unavailable = response(200, &[("grpc-status", "14")]);
    assert_eq!(
        p.should_retry(&post, &Attempt::Response(&unavailable)),
        Some(Condition::GrpcStatus)
    );
    // These may follow side effects: only for idempotent methods.
    let overloaded = response(503, &[]);
    for attempt in [
        Attempt::Reset,
        Attempt::Timeout,
        Attempt::Response(&overloaded),
    ] {
        assert_eq!(p.should_retry(&post, &attempt), None, "{attempt:?}");
        assert!(
            p.should_retry(&Method::GET, &attempt).is_some(),
            "{attempt:?}"
        );
    }
    // Never a tunnel; never an unlisted condition.
    assert_eq!(
        p.should_retry(&Method::CONNECT, &Attempt::ConnectFailed),
        None
    );
    assert_eq!(
        p.should_retry(&Method::GET, &Attempt::Response(&response(500, &[]))),
        None
    );
}

#[test]
fn backoff_ceiling_doubles_and_is_capped() {
    let p = RetryPolicy::default();
    let ms = Duration::from_millis;
    let ceilings: Vec<_> = (1..=6).map(|n| p.backoff_ceiling(n)).collect();
    assert_eq!(
        ceilings,
        [ms(25), ms(50), ms(100), ms(200), ms(250), ms(250)]
    );
    assert_eq!(p.backoff_ceiling(0), ms(25));
    assert_eq!(p.backoff_ceiling(u32::MAX), ms(250));
}

#[test]
fn backoff_is_jittered_within_bounds_and_grows_on_average() {
    let p = RetryPolicy::default();
    let mut rng = fastrand::Rng::with_seed(42);
    let mut means = Vec::new();
    for retry in 1..=5 {
        let ceiling = p.backoff_ceiling(retry);
        let samples: Vec<_> = (0..1_000).map(|_| p.backoff(retry, &mut rng)).collect();
        assert!(samples.iter().all(|d| *d <= ceiling), "retry {retry}");
        // Full jitter: spread over the whole range, not bunched at the top.
        let min = samples.iter().min().unwrap();
        let max = samples.iter().max().unwrap();
        assert!(
            *min < ceiling / 10 && *max > ceiling * 9 / 10,
            "retry {retry}: {min:?}..{max:?}"
        );
        let mean = samples.iter().sum::<Duration>() / 1_000;
        assert!(
            mean > ceiling * 4 / 10 && mean < ceiling * 6 / 10,
            "retry {retry}: mean {mean:?}"
        );
        means.push(mean);
    }
    assert!(means.windows(2).take(3).all(|w| w[0] < w[1]), "{means:?}");
    // Same seed, same waits.
    let a: Vec<_> = (1..=3)
        .map(|n| p.backoff(n, &mut fastrand::Rng::with_seed(7)))
        .collect();
    let b: Vec<_> = (1..=3)
        .map(|n| p.backoff(n, &mut fastrand::Rng::with_seed(7)))
        .collect();
    assert_eq!(a, b);
}

#[test]
fn zero_backoff_base_retries_at_once() {
    let p = RetryPolicy::from_proto(Some(&pb::Retries {
        backoff_base_ms: Some(0),
        ..retries()
    }));
    let mut rng = fastrand::Rng::with_seed(1);
    assert_eq!(p.backoff(3, &mut rng), Duration::ZERO);
}

#[test]
fn from_proto_absent_is_the_default() {
    assert_eq!(RetryPolicy::from_proto(None), RetryPolicy::default());
    // An empty Retries message: every field absent.
    assert_eq!(
        RetryPolicy::from_proto(Some(&retries())),
        RetryPolicy::default()
    );
}

#[test]
fn from_proto_full() {
    let p = RetryPolicy::from_proto(Some(&pb::Retries {
        attempts: Some(3),
        retry_on: words(&["connect-failure", "reset"]),
        statuses: vec![pb::StatusRange { from: 500, to: 599 }],
        grpc_codes: vec![8],
        per_try_timeout_ms: Some(1_500),
        backoff_base_ms: Some(10),
        backoff_max_ms: Some(1_000),
        budget_ratio: Some(0.5),
        budget_min_per_second: Some(3),
        max_buffered_body_bytes: Some(1024),
        non_idempotent: true,
    }));
    assert_eq!(
        p,
        RetryPolicy {
            attempts: 3,
            on: Conditions {
                connect_failure: true,
                refused_stream: false,
                reset: true,
                statuses: vec![500..=599],
                grpc_codes: vec![8],
            },
            per_try_timeout: Some(Duration::from_millis(1_500)),
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            max_buffered_body: 1024,
            non_idempotent: true,
            budget: BudgetConfig {
                ratio: 0.5,
                min_per_second: 3,
                ttl: Duration::from_secs(10),
            },
        }
    );
}

#[test]
fn from_proto_makes_out_of_range_values_safe() {
    let p = RetryPolicy::from_proto(Some(&pb::Retries {
        attempts: Some(1_000),
        retry_on: words(&["RESET", "gateway-error"]),
        backoff_base_ms: Some(1_000),
        budget_ratio: Some(7.0),
        ..retries()
    }));
    assert_eq!(p.attempts, MAX_ATTEMPTS);
    // Words are case-insensitive; unknown ones are ignored.
    assert!(p.on.reset && !p.on.connect_failure && p.on.statuses.is_empty());
    // Base above the default max: the max follows.
    assert_eq!(p.backoff_max, Duration::from_secs(1));
    assert_eq!(p.budget.ratio, 1.0);
    let p = RetryPolicy::from_proto(Some(&pb::Retries {
        attempts: Some(0),
        ..retries()
    }));
    assert_eq!(p.attempts, 0);
}
