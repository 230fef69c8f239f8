//! A Service's connections end to end (issue 5): `maxConnections`, `maxPendingRequests`, and
//! the TrafficPolicy's connect and idle timeouts. A client calls Service `shop/orders`
//! through its sidecar's outbound listener (forward-proxy style, as in local mode); the
//! endpoints are fault-injecting upstreams (HTTP/1.1, so one request per connection at a
//! time) pushed by a test control plane.
//!
//! Each test prints the figure it measured and asserts it.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use weft_api::proto::discovery::v1 as pb;

use support::faulty::{exclusive, policy, request, service, Faults, Faulty, Outcome, TrafficMesh};
use support::pki::spiffe;
use support::within;

const TARGET: &str = "shop/orders:80";

fn limits(max_connections: u32, max_pending: Option<u32>) -> pb::CircuitBreaker {
    pb::CircuitBreaker {
        max_connections: Some(max_connections),
        max_pending_requests: max_pending,
        ..Default::default()
    }
}

/// Sends `n` GETs at once; their outcomes and times, in completion order.
async fn concurrently(mesh: &Arc<TrafficMesh>, n: usize) -> Vec<(Outcome, Duration)> {
    let mut calls = JoinSet::new();
    for i in 0..n {
        let mesh = mesh.clone();
        calls.spawn(async move {
            mesh.send(request(
                Method::GET,
                "orders",
                &format!("/{i}"),
                Bytes::new(),
            ))
            .await
        });
    }
    within(Duration::from_secs(15), "the concurrent requests", async {
        let mut done = Vec::new();
        while let Some(result) = calls.join_next().await {
            done.push(result.unwrap());
        }
        done
    })
    .await
}

/// `maxConnections: 2` and six requests at once to a slow upstream: the upstream never sees
/// more than two connections, and the other four wait for a connection to come back instead
/// of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_max_connections_wait_for_a_connection_and_all_succeed() {
    let _heavy = exclusive().await;
    let delay = Duration::from_millis(200);
    let upstream = Faulty::start("orders", Faults::slow(delay)).await;
    let mut orders = service("orders", &[upstream.addr]);
    orders.traffic_policy = Some(pb::TrafficPolicy {
        circuit_breaker: Some(limits(2, None)),
        ..policy("orders")
    });
    let mesh = Arc::new(TrafficMesh::start(vec![orders]).await);

    let done = concurrently(&mesh, 6).await;
    let stats = upstream.stats();
    let slowest = done.iter().map(|(_, t)| *t).max().unwrap_or_default();
    println!(
        "max_connections 2, 6 at once against a {delay:?} upstream: {} ok, upstream saw {} \
         connections and at most {} requests at once; slowest {slowest:.1?}",
        done.iter()
            .filter(|(o, _)| o.status == StatusCode::OK)
            .count(),
        stats.connections,
        stats.max_in_flight
    );
    for (outcome, _) in &done {
        assert_eq!(outcome.status, StatusCode::OK, "{}", outcome.text());
    }
    assert_eq!(stats.connections, 2, "two connections, reused");
    assert_eq!(stats.max_in_flight, 2);
    // Three rounds of two: the waiting requests went out as connections came back.
    assert!(
        slowest >= delay * 3,
        "six requests over two connections take three rounds: {slowest:?}"
    );
}

/// `maxConnections: 1, maxPendingRequests: 1`: with one request on the only connection, one
/// more may wait for it, and a third is refused at once as `overflow-pending`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_max_pending_are_refused_at_once() {
    let _heavy = exclusive().await;
    let delay = Duration::from_millis(500);
    let upstream = Faulty::start("orders", Faults::slow(delay)).await;
    let mut orders = service("orders", &[upstream.addr]);
    orders.traffic_policy = Some(pb::TrafficPolicy {
        circuit_breaker: Some(limits(1, Some(1))),
        ..policy("orders")
    });
    let mesh = Arc::new(TrafficMesh::start(vec![orders]).await);

    let first = {
        let mesh = mesh.clone();
        tokio::spawn(async move { mesh.get("orders", "/first").await })
    };
    upstream.wait_in_flight(1).await;
    let done = concurrently(&mesh, 2).await;
    let (first, _) = first.await.unwrap();
    let refused: Vec<_> = done
        .iter()
        .filter(|(o, _)| o.status == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    let waited: Vec<_> = done
        .iter()
        .filter(|(o, _)| o.status == StatusCode::OK)
        .collect();
    let overflows = mesh.metrics().await.sum(
        "weft_circuit_breaker_overflows_total",
        &[("target", TARGET), ("limit", "pending")],
    );
    println!(
        "max_connections 1, max_pending 1, two more while one is in flight: {} waited and \
         succeeded, {} refused ({:?} after {:.1?}); overflows{{limit=pending}} {overflows}",
        waited.len(),
        refused.len(),
        refused.first().and_then(|(o, _)| o.proxy_error()),
        refused.first().map(|(_, t)| *t).unwrap_or_default(),
    );
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!((waited.len(), refused.len()), (1, 1));
    let (refusal, after) = refused[0];
    assert_eq!(refusal.proxy_error(), Some("overflow-pending"));
    assert!(
        *after < Duration::from_millis(300),
        "refused at once, not after the upstream's {delay:?}: {after:?}"
    );
    assert_eq!(overflows, 1.0, "the refusal is counted");
    assert_eq!(upstream.stats().connections, 1, "one connection throughout");
}

/// At `maxConnections` a request waits for a connection no longer than the connect timeout
/// (the TrafficPolicy's, here 200 ms), then gets 503 `overflow-connections`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_connection_is_bounded_by_the_connect_timeout() {
    let _heavy = exclusive().await;
    let upstream = Faulty::start("orders", Faults::slow(Duration::from_secs(2))).await;
    let mut orders = service("orders", &[upstream.addr]);
    orders.traffic_policy = Some(pb::TrafficPolicy {
        circuit_breaker: Some(limits(1, None)),
        timeouts: Some(pb::Timeouts {
            connect_ms: Some(200),
            ..Default::default()
        }),
        ..policy("orders")
    });
    let mesh = Arc::new(TrafficMesh::start(vec![orders]).await);

    let busy = {
        let mesh = mesh.clone();
        tokio::spawn(async move { mesh.get("orders", "/busy").await })
    };
    upstream.wait_in_flight(1).await;
    let (outcome, waited) = mesh.get("orders", "/waits").await;
    println!(
        "max_connections 1, the connection busy for 2s, connect timeout 200ms: {} {:?} after \
         {waited:.1?}",
        outcome.status,
        outcome.proxy_error()
    );
    assert_eq!(outcome.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(outcome.proxy_error(), Some("overflow-connections"));
    assert!(
        waited >= Duration::from_millis(190) && waited < Duration::from_millis(700),
        "waited about the connect timeout: {waited:?}"
    );
    let overflows = mesh.metrics().await.sum(
        "weft_circuit_breaker_overflows_total",
        &[("target", TARGET), ("limit", "connections")],
    );
    assert_eq!(overflows, 1.0);
    assert_eq!(
        upstream.requests(),
        1,
        "the refused request never left the proxy"
    );
    busy.abort();
}

/// With `maxConnections: 1` and two endpoints, the one connection can sit idle to one
/// endpoint while the balancer picks the other: that idle connection is closed to make room
/// rather than left holding the Service's only place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_to_another_endpoint_gives_way() {
    let _heavy = exclusive().await;
    let a = Faulty::start("a", Faults::healthy()).await;
    let b = Faulty::start("b", Faults::healthy()).await;
    let mut orders = service("orders", &[a.addr, b.addr]);
    orders.traffic_policy = Some(pb::TrafficPolicy {
        circuit_breaker: Some(limits(1, None)),
        load_balancer: pb::LoadBalancer::RoundRobin as i32,
        ..policy("orders")
    });
    let mesh = TrafficMesh::start(vec![orders]).await;

    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let (outcome, took) = mesh.get("orders", &format!("/{i}")).await;
        assert_eq!(
            outcome.status,
            StatusCode::OK,
            "request {i}: {}",
            outcome.text()
        );
        slowest = slowest.max(took);
    }
    let (a, b) = (a.stats(), b.stats());
    println!(
        "max_connections 1, round robin over two endpoints, 20 requests one after another: \
         a {} requests on {} connections, b {} on {}; slowest {slowest:.1?}",
        a.requests, a.connections, b.requests, b.connections
    );
    assert_eq!((a.requests, b.requests), (10, 10), "round robin alternated");
    // Every switch of endpoint closed the other's idle connection and opened a new one.
    assert_eq!(a.connections + b.connections, 20);
    assert!(
        slowest < Duration::from_millis(500),
        "no request waited out the connect timeout: {slowest:?}"
    );
}

/// A meshed endpoint that accepts TCP and never answers the TLS handshake: the connect
/// timeout bounds the handshake, and the TrafficPolicy's value (200 ms) replaces the
/// proxy's own (1 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_connect_timeout_bounds_the_handshake() {
    let _heavy = exclusive().await;
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let holding = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let orders = |connect_ms: Option<u64>| {
        let mut orders = service("orders", &[addr]);
        orders.endpoints[0].identity = spiffe("shop", "orders");
        orders.traffic_policy = Some(pb::TrafficPolicy {
            retries: Some(pb::Retries {
                attempts: Some(0),
                ..Default::default()
            }),
            timeouts: Some(pb::Timeouts {
                connect_ms,
                ..Default::default()
            }),
            ..policy("orders")
        });
        orders
    };
    let mesh = TrafficMesh::start(vec![orders(Some(200))]).await;
    let (outcome, with_policy) = mesh.get("orders", "/policy").await;
    assert_eq!(
        outcome.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        outcome.text()
    );
    assert_eq!(outcome.proxy_error(), Some("connect-timeout"));
    assert!(outcome.text().contains("200ms"), "{}", outcome.text());

    mesh.push(vec![orders(None)]).await;
    let (outcome, with_default) = mesh.get("orders", "/default").await;
    println!(
        "handshake never answered: 504 connect-timeout after {with_policy:.1?} with the \
         policy's 200ms, after {with_default:.1?} with the proxy's 1s"
    );
    assert_eq!(
        outcome.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        outcome.text()
    );
    assert!(
        with_policy >= Duration::from_millis(190) && with_policy < Duration::from_millis(600),
        "the policy's 200ms applied: {with_policy:?}"
    );
    assert!(
        with_default >= Duration::from_millis(950),
        "without it, the proxy's 1s: {with_default:?}"
    );
    holding.abort();
}

/// `timeouts.idle: 300ms`: a pooled connection unused for longer is not reused; without it
/// (the pool's 90 s) the same pause reuses the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_idle_timeout_retires_pooled_connections() {
    let upstream = Faulty::start("orders", Faults::healthy()).await;
    let orders = |idle_ms: Option<u64>| {
        let mut orders = service("orders", &[upstream.addr]);
        orders.traffic_policy = Some(pb::TrafficPolicy {
            timeouts: Some(pb::Timeouts {
                idle_ms,
                ..Default::default()
            }),
            ..policy("orders")
        });
        orders
    };
    let mesh = TrafficMesh::start(vec![orders(Some(300))]).await;
    let pause = Duration::from_millis(600);
    let connections_over_a_pause = || async {
        let before = upstream.stats().connections;
        assert_eq!(mesh.get("orders", "/1").await.0.status, StatusCode::OK);
        tokio::time::sleep(pause).await;
        assert_eq!(mesh.get("orders", "/2").await.0.status, StatusCode::OK);
        upstream.stats().connections - before
    };
    let with_idle = connections_over_a_pause().await;
    mesh.push(vec![orders(None)]).await;
    // The connection the last request left in the pool was opened under the old policy.
    tokio::time::sleep(pause).await;
    let with_default = connections_over_a_pause().await;
    println!(
        "two requests {pause:?} apart: {with_idle} connections with idle 300ms, \
         {with_default} with the default"
    );
    assert_eq!(
        with_idle, 2,
        "the idle connection was not reused after 300ms"
    );
    assert_eq!(with_default, 1, "reused under the pool's default");
}
