//! HTTPRoutes and timeouts end to end (issue 5): a client calls Service `shop/orders`
//! through its sidecar's outbound listener (forward-proxy style, as in local mode); the
//! routes attached to `orders` and its TrafficPolicy come from a test control plane, the
//! backends are fault-injecting upstreams.
//!
//! Each test prints the figure it measured and asserts it.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use weft_api::proto::discovery::v1 as pb;

use support::faulty::{
    backend, exclusive, load, policy, request, route, service, Faults, Faulty, LoadSpec,
    TrafficMesh,
};

/// A route rule: these matches, all traffic to one backend Service.
fn rule(matches: Vec<pb::RouteMatch>, to: &str) -> pb::RouteRule {
    pb::RouteRule {
        matches,
        backends: vec![backend(to, 1)],
        ..Default::default()
    }
}

fn path(kind: pb::PathMatchKind, value: &str) -> Option<pb::PathMatch> {
    Some(pb::PathMatch {
        kind: kind as i32,
        value: value.into(),
    })
}

fn value(name: &str, value: &str) -> pb::ValueMatch {
    pb::ValueMatch {
        name: name.into(),
        value: value.into(),
        regex: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_90_10_split_lands_within_two_points_over_10000_requests() {
    let _heavy = exclusive().await;
    let v1 = Faulty::start("v1", Faults::healthy()).await;
    let v2 = Faulty::start("v2", Faults::healthy()).await;
    let mut orders = service("orders", &[]);
    orders.routes = vec![route(
        "orders-canary",
        vec![pb::RouteRule {
            backends: vec![backend("orders-v1", 90), backend("orders-v2", 10)],
            ..Default::default()
        }],
    )];
    let mesh = TrafficMesh::start(vec![
        orders,
        service("orders-v1", &[v1.addr]),
        service("orders-v2", &[v2.addr]),
    ])
    .await;

    let spec = LoadSpec::new(10_000, 16, Duration::from_secs(30));
    let report = load(mesh.outbound(), spec, |i| {
        request(Method::GET, "orders", &format!("/item/{i}"), Bytes::new())
    })
    .await;
    let share = 100.0 * report.share("v2");
    println!(
        "90/10 split: orders-v2 got {share:.2}% ({} of {}); {}",
        report.by_upstream.get("v2").unwrap_or(&0),
        report.sent,
        report.summary()
    );
    assert_eq!(report.ok(), 10_000, "{}", report.summary());
    assert!(
        (share - 10.0).abs() <= 2.0,
        "orders-v2 gets 10 ± 2 points: {share:.2}%"
    );
    assert_eq!(v1.requests() + v2.requests(), 10_000);
}

/// A request (method, path and query, headers) and the Service it must reach (`None`: 404).
type Case<'a> = (Method, &'a str, &'a [(&'a str, &'a str)], Option<&'a str>);

#[tokio::test]
async fn rules_match_on_path_headers_method_and_query_and_nothing_else_is_404() {
    use pb::PathMatchKind::{Exact, Prefix, Regex};
    let names = ["exact", "canary", "writer", "api", "items", "v2"];
    let mut upstreams = Vec::new();
    for name in names {
        upstreams.push(Faulty::start(name, Faults::healthy()).await);
    }
    let mut services: Vec<pb::Service> = names
        .iter()
        .zip(&upstreams)
        .map(|(name, u)| service(name, &[u.addr]))
        .collect();
    let mut orders = service("orders", &[]);
    orders.routes = vec![route(
        "orders",
        vec![
            rule(
                vec![pb::RouteMatch {
                    path: path(Exact, "/exact"),
                    ..Default::default()
                }],
                "exact",
            ),
            rule(
                vec![pb::RouteMatch {
                    path: path(Prefix, "/api"),
                    headers: vec![value("x-canary", "yes")],
                    ..Default::default()
                }],
                "canary",
            ),
            rule(
                vec![pb::RouteMatch {
                    path: path(Prefix, "/api"),
                    method: "POST".into(),
                    ..Default::default()
                }],
                "writer",
            ),
            rule(
                vec![pb::RouteMatch {
                    path: path(Prefix, "/api/"),
                    ..Default::default()
                }],
                "api",
            ),
            rule(
                vec![pb::RouteMatch {
                    path: path(Regex, r"/items/\d+"),
                    ..Default::default()
                }],
                "items",
            ),
            rule(
                vec![pb::RouteMatch {
                    path: path(Prefix, "/q"),
                    query_params: vec![value("version", "2")],
                    ..Default::default()
                }],
                "v2",
            ),
        ],
    )];
    services.push(orders);
    let mesh = TrafficMesh::start(services).await;

    let cases: &[Case] = &[
        (Method::GET, "/exact", &[], Some("exact")),
        (Method::GET, "/exact?x=1", &[], Some("exact")),
        (Method::GET, "/exact/more", &[], None),
        (Method::GET, "/api", &[], Some("api")),
        (Method::GET, "/api/orders/7", &[], Some("api")),
        (
            Method::GET,
            "/api/orders",
            &[("x-canary", "yes")],
            Some("canary"),
        ),
        (
            Method::GET,
            "/api/orders",
            &[("X-Canary", "no")],
            Some("api"),
        ),
        (Method::POST, "/api/orders", &[], Some("writer")),
        // A method match outranks header matches (Gateway API precedence).
        (
            Method::POST,
            "/api/orders",
            &[("x-canary", "yes")],
            Some("writer"),
        ),
        // Prefixes match whole segments.
        (Method::GET, "/apix", &[], None),
        (Method::GET, "/items/42", &[], Some("items")),
        (Method::GET, "/items/42/x", &[], None),
        (Method::GET, "/items/abc", &[], None),
        (Method::GET, "/q?version=2", &[], Some("v2")),
        (Method::GET, "/q?a=b&version=2", &[], Some("v2")),
        (Method::GET, "/q?version=1", &[], None),
        (Method::GET, "/other", &[], None),
        (Method::GET, "/", &[], None),
    ];
    let mut not_found = 0;
    for (method, target, headers, expected) in cases {
        let mut req = request(method.clone(), "orders", target, Bytes::new());
        for (name, value) in *headers {
            req.headers_mut().insert(*name, value.parse().unwrap());
        }
        let (outcome, _) = mesh.send(req).await;
        println!(
            "{method} {target} {headers:?} → {} {:?}",
            outcome.status,
            outcome.upstream().or(outcome.proxy_error())
        );
        match expected {
            Some(name) => {
                assert_eq!(outcome.status, StatusCode::OK, "{method} {target}");
                assert_eq!(
                    outcome.upstream(),
                    Some(*name),
                    "{method} {target} {headers:?}"
                );
            }
            None => {
                not_found += 1;
                assert_eq!(outcome.status, StatusCode::NOT_FOUND, "{method} {target}");
                assert_eq!(outcome.proxy_error(), Some("no-route"), "{method} {target}");
                assert_eq!(outcome.upstream(), None);
            }
        }
    }
    let reached: u64 = upstreams.iter().map(Faulty::requests).sum();
    assert_eq!(
        reached as usize,
        cases.len() - not_found,
        "unmatched requests reach no upstream"
    );
    let metrics = mesh.metrics().await;
    assert_eq!(
        metrics.sum("weft_errors_total", &[("kind", "no_route")]),
        not_found as f64,
        "every 404 is counted as no_route"
    );
}

/// Sends one GET to `orders` and checks it is answered 504 naming `code`, in
/// `expected` ± 50 ms. Returns the elapsed time.
async fn times_out(mesh: &TrafficMesh, code: &str, expected: Duration, what: &str) -> Duration {
    let (outcome, elapsed) = mesh.get("orders", "/slow").await;
    let off = elapsed.as_secs_f64() * 1e3 - expected.as_secs_f64() * 1e3;
    println!(
        "{what}: {} {:?} after {:.1} ms (setting {expected:?}, off by {off:+.1} ms): {}",
        outcome.status,
        outcome.proxy_error(),
        elapsed.as_secs_f64() * 1e3,
        outcome.text().trim()
    );
    assert_eq!(outcome.status, StatusCode::GATEWAY_TIMEOUT, "{what}");
    assert_eq!(outcome.proxy_error(), Some(code), "{what}");
    assert!(
        off.abs() < 50.0,
        "{what}: fired {off:+.1} ms from its setting"
    );
    elapsed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_fire_within_50ms_of_their_setting() {
    let _heavy = exclusive().await;
    let slow = Faulty::start("slow", Faults::slow(Duration::from_secs(2))).await;
    let with_policy = |p: pb::TrafficPolicy, routes: Vec<pb::HttpRoute>| {
        let mut orders = service("orders", &[slow.addr]);
        orders.traffic_policy = Some(p);
        orders.routes = routes;
        orders
    };
    let rule_to_orders = |request_ms: Option<u64>, backend_ms: Option<u64>| pb::RouteRule {
        backends: vec![backend("orders", 1)],
        request_timeout_ms: request_ms,
        backend_request_timeout_ms: backend_ms,
        ..Default::default()
    };

    // TrafficPolicy timeouts.request: 200 ms.
    let mesh = TrafficMesh::start(vec![with_policy(
        pb::TrafficPolicy {
            timeouts: Some(pb::Timeouts {
                request_ms: Some(200),
                ..Default::default()
            }),
            ..policy("orders")
        },
        vec![],
    )])
    .await;
    let (outcome, _) = mesh.get("orders", "/slow").await;
    assert_eq!(
        outcome.text().trim(),
        "weft-proxy: request timeout (200ms) exceeded"
    );
    let ms = Duration::from_millis;
    times_out(&mesh, "request-timeout", ms(200), "policy request timeout").await;

    // An HTTPRoute rule's timeouts.request wins over the policy's (1 s).
    mesh.push(vec![with_policy(
        pb::TrafficPolicy {
            timeouts: Some(pb::Timeouts {
                request_ms: Some(1000),
                ..Default::default()
            }),
            ..policy("orders")
        },
        vec![route("orders", vec![rule_to_orders(Some(200), None)])],
    )])
    .await;
    times_out(&mesh, "request-timeout", ms(200), "route request timeout").await;

    // timeouts.backendRequest on the route, no per-try timeout: one try, not retried.
    let before = slow.requests();
    mesh.push(vec![with_policy(
        policy("orders"),
        vec![route("orders", vec![rule_to_orders(None, Some(150))])],
    )])
    .await;
    times_out(
        &mesh,
        "backend-request-timeout",
        ms(150),
        "route backend request timeout",
    )
    .await;
    assert_eq!(
        slow.requests() - before,
        1,
        "a timed-out try is not retried by default"
    );

    // A per-try timeout of 100 ms with one retry and no backoff: two tries, 504 after 200 ms.
    let before = slow.requests();
    mesh.push(vec![with_policy(
        pb::TrafficPolicy {
            retries: Some(pb::Retries {
                attempts: Some(1),
                per_try_timeout_ms: Some(100),
                backoff_base_ms: Some(0),
                ..Default::default()
            }),
            ..policy("orders")
        },
        vec![],
    )])
    .await;
    times_out(
        &mesh,
        "backend-request-timeout",
        ms(200),
        "per-try timeout 100 ms, 1 retry",
    )
    .await;
    assert_eq!(
        slow.requests() - before,
        2,
        "the timed-out try was retried once"
    );

    // The request timeout bounds the retries: 250 ms over tries of 100 ms.
    mesh.push(vec![with_policy(
        pb::TrafficPolicy {
            retries: Some(pb::Retries {
                attempts: Some(5),
                per_try_timeout_ms: Some(100),
                backoff_base_ms: Some(0),
                ..Default::default()
            }),
            timeouts: Some(pb::Timeouts {
                request_ms: Some(250),
                ..Default::default()
            }),
            ..policy("orders")
        },
        vec![],
    )])
    .await;
    times_out(
        &mesh,
        "request-timeout",
        ms(250),
        "request timeout 250 ms over per-try 100 ms",
    )
    .await;
}

/// A per-try timeout steps around a slow endpoint: the retry goes to the fast one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_cut_off_by_its_per_try_timeout_is_retried_on_another_endpoint() {
    let _heavy = exclusive().await;
    let slow = Faulty::start("slow", Faults::slow(Duration::from_secs(2))).await;
    let fast = Faulty::start("fast", Faults::healthy()).await;
    let mut orders = service("orders", &[slow.addr, fast.addr]);
    orders.traffic_policy = Some(pb::TrafficPolicy {
        load_balancer: pb::LoadBalancer::RoundRobin as i32,
        retries: Some(pb::Retries {
            per_try_timeout_ms: Some(100),
            backoff_base_ms: Some(0),
            ..Default::default()
        }),
        ..policy("orders")
    });
    let mesh = TrafficMesh::start(vec![orders]).await;
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let (outcome, elapsed) = mesh.get("orders", "/").await;
        assert_eq!(outcome.status, StatusCode::OK, "{}", outcome.text());
        assert_eq!(outcome.upstream(), Some("fast"));
        slowest = slowest.max(elapsed);
    }
    println!(
        "per-try timeout 100 ms: 10 of 10 answered by the fast endpoint, slowest in {slowest:.1?}; \
         the slow endpoint was tried {} times",
        slow.requests()
    );
    assert!(slow.requests() >= 1, "round robin tried the slow endpoint");
    assert!(
        slowest < Duration::from_millis(100 + 50),
        "a retried request took the per-try timeout and little more: {slowest:?}"
    );
}
