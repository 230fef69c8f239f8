//! Load balancing, circuit breaking and endpoint updates end to end (issue 5): a client calls
//! Service `shop/orders` through its sidecar's outbound listener (forward-proxy style, as in
//! local mode); the endpoints are fault-injecting upstreams pushed by a test control plane.
//!
//! Each test prints the figure it measured and asserts it.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::task::JoinSet;
use tokio::time::Instant;
use weft_api::proto::discovery::v1 as pb;

use support::faulty::{
    exclusive, load, policy, request, service, Faults, Faulty, LoadSpec, TrafficMesh,
};
use support::pki::spiffe;
use support::within;

/// One of three endpoints 50 ms slower than the others: P2C over peak-EWMA latency sends it
/// a small share; round robin sends it a third.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_gets_a_small_share_under_p2c_and_a_third_under_round_robin() {
    let _heavy = exclusive().await;
    let a = Faulty::start("a", Faults::healthy()).await;
    let b = Faulty::start("b", Faults::healthy()).await;
    let slow = Faulty::start("slow", Faults::slow(Duration::from_millis(50))).await;
    let addrs = [a.addr, slow.addr, b.addr];
    let mesh = TrafficMesh::start(vec![service("orders", &addrs)]).await;
    let spec = LoadSpec::new(3_000, 16, Duration::from_secs(20));
    let make = |i| request(Method::GET, "orders", &format!("/item/{i}"), Bytes::new());

    let p2c = load(mesh.outbound(), spec, make).await;
    let p2c_share = p2c.share("slow");
    println!(
        "P2C-EWMA: the slow endpoint got {:.2}% of {} requests; p50 {:.1?} p99 {:.1?}; {}",
        100.0 * p2c_share,
        p2c.sent,
        p2c.quantile(0.5),
        p2c.quantile(0.99),
        p2c.summary()
    );
    assert_eq!(p2c.ok(), 3_000, "{}", p2c.summary());
    assert!(
        p2c_share < 0.10,
        "P2C sends the slow endpoint under 10%: {:.2}%",
        100.0 * p2c_share
    );

    let mut orders = service("orders", &addrs);
    orders.traffic_policy = Some(pb::TrafficPolicy {
        load_balancer: pb::LoadBalancer::RoundRobin as i32,
        ..policy("orders")
    });
    mesh.push(vec![orders]).await;
    let rr = load(mesh.outbound(), spec, make).await;
    let rr_share = rr.share("slow");
    println!(
        "round robin: the slow endpoint got {:.2}% of {} requests; p50 {:.1?} p99 {:.1?}; {}",
        100.0 * rr_share,
        rr.sent,
        rr.quantile(0.5),
        rr.quantile(0.99),
        rr.summary()
    );
    assert_eq!(rr.ok(), 3_000, "{}", rr.summary());
    assert!(
        (rr_share - 1.0 / 3.0).abs() < 0.02,
        "round robin sends the slow endpoint a third: {:.2}%",
        100.0 * rr_share
    );
    // What the choice is for: with round robin a third of the requests wait 50 ms.
    assert!(rr.quantile(0.99) >= Duration::from_millis(50));
}

/// `maxRequests: 2` with a slow upstream and 10 requests at once: 2 go through, the other 8
/// are answered 503 `overflow-requests` at once (not queued) and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_circuit_breaker_limit_are_refused_at_once() {
    let _heavy = exclusive().await;
    let delay = Duration::from_millis(600);
    let upstream = Faulty::start("orders", Faults::slow(delay)).await;
    let mut orders = service("orders", &[upstream.addr]);
    orders.traffic_policy = Some(pb::TrafficPolicy {
        circuit_breaker: Some(pb::CircuitBreaker {
            max_requests: Some(2),
            ..Default::default()
        }),
        ..policy("orders")
    });
    let mesh = std::sync::Arc::new(TrafficMesh::start(vec![orders]).await);

    let mut calls = JoinSet::new();
    for i in 0..10 {
        let mesh = mesh.clone();
        calls.spawn(async move {
            let req = request(Method::GET, "orders", &format!("/{i}"), Bytes::new());
            mesh.send(req).await
        });
    }
    let mut admitted = Vec::new();
    let mut refused = Vec::new();
    within(Duration::from_secs(10), "10 requests", async {
        while let Some(done) = calls.join_next().await {
            let (outcome, elapsed) = done.unwrap();
            match outcome.status {
                StatusCode::OK => admitted.push(elapsed),
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert_eq!(outcome.proxy_error(), Some("overflow-requests"));
                    refused.push(elapsed);
                }
                other => panic!("unexpected {other}: {}", outcome.text()),
            }
        }
    })
    .await;
    let slowest_refusal = refused.iter().max().copied().unwrap_or_default();
    let overflow = mesh
        .metrics()
        .await
        .sum("weft_errors_total", &[("kind", "overflow")]);
    println!(
        "max_requests 2, 10 at once against a {delay:?} upstream: {} admitted, {} refused \
         (slowest refusal after {slowest_refusal:.1?}), weft_errors_total{{kind=overflow}} {overflow}",
        admitted.len(),
        refused.len()
    );
    assert_eq!(admitted.len(), 2);
    assert_eq!(refused.len(), 8);
    assert_eq!(
        upstream.stats().max_in_flight,
        2,
        "never more than 2 at the upstream"
    );
    assert_eq!(upstream.requests(), 2);
    assert!(
        slowest_refusal < Duration::from_millis(200),
        "refused at once, not after the upstream's {delay:?}: {slowest_refusal:?}"
    );
    assert_eq!(overflow, 8.0, "every refusal is counted");
}

/// A view that removes an endpoint while requests to it are in flight: they complete 200, and
/// the next request goes to the new endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_to_a_removed_endpoint_complete() {
    let _heavy = exclusive().await;
    let old = Faulty::start("old", Faults::slow(Duration::from_millis(800))).await;
    let new = Faulty::start("new", Faults::healthy()).await;
    let mesh = std::sync::Arc::new(TrafficMesh::start(vec![service("orders", &[old.addr])]).await);

    let mut calls = JoinSet::new();
    for i in 0..8 {
        let mesh = mesh.clone();
        calls.spawn(async move {
            let req = request(Method::GET, "orders", &format!("/{i}"), Bytes::new());
            mesh.send(req).await
        });
    }
    old.wait_in_flight(8).await;
    let pushed = Instant::now();
    mesh.push(vec![service("orders", &[new.addr])]).await;
    let (next, _) = mesh.get("orders", "/next").await;
    assert_eq!(next.status, StatusCode::OK);
    assert_eq!(
        next.upstream(),
        Some("new"),
        "the next request uses the new view"
    );
    assert!(
        old.in_flight() > 0,
        "the old requests were still in flight after the push"
    );

    let mut completed = 0;
    while let Some(done) = calls.join_next().await {
        let (outcome, _) = done.unwrap();
        assert_eq!(outcome.status, StatusCode::OK, "{}", outcome.text());
        assert_eq!(outcome.upstream(), Some("old"));
        completed += 1;
    }
    println!(
        "endpoint removed with 8 requests in flight: {completed} of 8 completed 200 from it, \
         {:.1?} after the push; the next request went to the new endpoint",
        pushed.elapsed()
    );
    assert_eq!(completed, 8);
    assert_eq!(old.requests(), 8);
}

/// Endpoint sets that change every 100 ms under continuous load fail no request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_changes_under_load_fail_no_request() {
    let _heavy = exclusive().await;
    let ups = [
        Faulty::start("a", Faults::slow(Duration::from_millis(5))).await,
        Faulty::start("b", Faults::slow(Duration::from_millis(5))).await,
        Faulty::start("c", Faults::slow(Duration::from_millis(5))).await,
    ];
    let sets = [
        vec![ups[0].addr, ups[1].addr],
        vec![ups[1].addr, ups[2].addr],
        vec![ups[2].addr],
        vec![ups[0].addr, ups[2].addr],
        vec![ups[0].addr],
    ];
    let mesh = std::sync::Arc::new(TrafficMesh::start(vec![service("orders", &sets[0])]).await);
    let outbound = mesh.outbound();
    let running = tokio::spawn(load(
        outbound,
        LoadSpec::new(100_000, 8, Duration::from_secs(3)),
        |i| request(Method::GET, "orders", &format!("/item/{i}"), Bytes::new()),
    ));
    let mut pushes = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2_500) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        pushes += 1;
        mesh.push(vec![service("orders", &sets[pushes % sets.len()])])
            .await;
    }
    let report = running.await.unwrap();
    println!("{pushes} endpoint changes under load: {}", report.summary());
    assert!(report.sent > 500, "{}", report.summary());
    assert_eq!(report.ok(), report.sent, "{}", report.summary());
    assert!(report.failures.is_empty(), "{}", report.summary());
}

/// A meshed endpoint is reached over mTLS and must present the identity the view gives it:
/// the Service's endpoint is another sidecar's inbound listener (in front of the upstream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshed_endpoints_are_reached_over_mtls_with_their_identity_checked() {
    let app = Faulty::start("orders", Faults::healthy()).await;
    let mesh = TrafficMesh::start(vec![]).await;
    let server = support::proxy()
        .inbound_app(app.addr)
        .config("inboundMtls: {default: strict}")
        .args(mesh.cp.proxy_args("orders", Some("orders-1")))
        .start()
        .await;
    support::eventually(support::WAIT, "the server sidecar to be ready", || async {
        support::admin(server.admin, Method::GET, "/ready", "")
            .await
            .status
            == StatusCode::OK
    })
    .await;
    let meshed = |identity: &str| {
        let mut orders = service("orders", &[server.inbound]);
        orders.endpoints[0].identity = identity.into();
        orders
    };

    mesh.push(vec![meshed(&spiffe("shop", "orders"))]).await;
    let (outcome, _) = mesh.get("orders", "/meshed").await;
    assert_eq!(outcome.status, StatusCode::OK, "{}", outcome.text());
    assert_eq!(outcome.upstream(), Some("orders"));
    let tls = server.metrics().await.sum(
        "weft_requests_total",
        &[("direction", "inbound"), ("tls", "true")],
    );
    assert_eq!(tls, 1.0, "the server sidecar took the request over mTLS");

    // The view says the endpoint is someone else: the handshake's identity check fails, no
    // request reaches the app.
    mesh.push(vec![meshed(&spiffe("shop", "payments"))]).await;
    let before = app.requests();
    let (outcome, _) = mesh.get("orders", "/impostor").await;
    println!(
        "meshed endpoint: 200 over mTLS with the right identity; with the wrong one {} {:?}: {}",
        outcome.status,
        outcome.proxy_error(),
        outcome.text().trim()
    );
    assert_eq!(outcome.status, StatusCode::BAD_GATEWAY);
    assert_eq!(outcome.proxy_error(), Some("tls-handshake-failed"));
    assert_eq!(app.requests(), before, "nothing reached the app");

    // A plain endpoint at the same (strict) port is refused by the server sidecar.
    mesh.push(vec![meshed("")]).await;
    let (outcome, _) = mesh.get("orders", "/plain").await;
    assert_ne!(outcome.status, StatusCode::OK, "{}", outcome.text());
    assert_eq!(app.requests(), before, "nothing reached the app");
}

/// A response whose body is still streaming is a request in flight: with `maxRequests: 1`
/// the next request overflows until that body has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_response_holds_its_place_under_the_circuit_breaker() {
    let upstream = Faulty::start(
        "orders",
        Faults {
            body_delay: Duration::from_millis(500),
            ..Faults::default()
        },
    )
    .await;
    let mut orders = service("orders", &[upstream.addr]);
    orders.traffic_policy = Some(pb::TrafficPolicy {
        circuit_breaker: Some(pb::CircuitBreaker {
            max_requests: Some(1),
            ..Default::default()
        }),
        ..policy("orders")
    });
    let mesh = TrafficMesh::start(vec![orders]).await;

    let mut streaming = support::H1Client::connect(mesh.outbound()).await;
    let head = streaming
        .send(request(Method::GET, "orders", "/stream", Bytes::new()))
        .await;
    assert_eq!(head.status(), StatusCode::OK);
    // The head is here, the body is not: the first request still holds the only place.
    let (during, _) = mesh.get("orders", "/during").await;
    let reply = support::read_reply(head).await;
    assert_eq!(reply.text(), "orders", "the streamed body arrives whole");
    let (after, _) = mesh.get("orders", "/after").await;
    println!(
        "max_requests 1: a request while a response body streams → {} {:?}; after it ended → {}",
        during.status,
        during.proxy_error(),
        after.status
    );
    assert_eq!(during.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(during.proxy_error(), Some("overflow-requests"));
    assert_eq!(
        after.status,
        StatusCode::OK,
        "the place is free once the body ended"
    );
}
