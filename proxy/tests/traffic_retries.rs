//! Retries end to end (issue 5): a client calls Service `shop/orders` through its sidecar's
//! outbound listener (forward-proxy style, as in local mode), the sidecar balances over
//! fault-injecting upstreams pushed as the Service's endpoints by a test control plane.
//!
//! ```text
//! client ──GET http://orders.shop.svc.cluster.local/──> proxy (web-1) ──> faulty upstreams
//!                                                        ^ Subscribe / Ack
//!                                                   test control plane
//! ```
//!
//! Each test prints the figure it measured and asserts it.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use weft_api::proto::discovery::v1 as pb;

use support::faulty::{
    exclusive, load, policy, request, service, Faults, Faulty, LoadSpec, TrafficMesh,
};

const TARGET: &str = "shop/orders:80";

/// Three endpoints, one of which fails every request the way `faults` says: at least 99.9%
/// of 10,000 requests still succeed (retries step around it, outlier ejection takes it out).
async fn one_bad_endpoint_of_three(faults: Faults, what: &str) {
    let _heavy = exclusive().await;
    let a = Faulty::start("a", Faults::healthy()).await;
    let b = Faulty::start("b", Faults::healthy()).await;
    let bad = Faulty::start("bad", faults).await;
    let mesh = TrafficMesh::start(vec![service("orders", &[a.addr, bad.addr, b.addr])]).await;

    let spec = LoadSpec::new(10_000, 16, Duration::from_secs(30));
    let report = load(mesh.outbound(), spec, |i| {
        request(Method::GET, "orders", &format!("/item/{i}"), Bytes::new())
    })
    .await;
    let metrics = mesh.metrics().await;
    let retries = metrics.sum("weft_retries_total", &[("target", TARGET)]);
    let exhausted = metrics.sum("weft_retry_budget_exhausted_total", &[("target", TARGET)]);
    println!(
        "one endpoint of three {what}: {:.3}% success ({} of {}); the bad endpoint saw {} requests, \
         retries {retries}, budget exhausted {exhausted}; {}",
        100.0 * report.success_ratio(),
        report.ok(),
        report.sent,
        bad.requests(),
        report.summary()
    );
    assert_eq!(
        report.sent, 10_000,
        "every request was sent before the deadline"
    );
    assert!(
        report.success_ratio() >= 0.999,
        "at least 99.9% success: {}",
        report.summary()
    );
    // Every request the bad endpoint got failed, and none of those reached the client as
    // a failure beyond the 0.1% allowed: retries made up for them.
    assert!(bad.requests() > 0, "the bad endpoint was tried");
    assert!(
        retries >= (bad.requests() as f64) * 0.9,
        "the bad endpoint's failures were retried: {retries} retries for {} failures",
        bad.requests()
    );
    // Outlier ejection (5 failures in a row by default) takes it out of rotation: it sees
    // a handful of requests, not a third of 10,000.
    assert!(
        bad.requests() < 100,
        "the bad endpoint was ejected early: it saw {} requests",
        bad.requests()
    );
}

/// An endpoint failing every other request is never ejected (its failures are never five in
/// a row), so only retries protect the callers, and a retry must not land on it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_step_away_from_an_endpoint_failing_every_other_request() {
    let _heavy = exclusive().await;
    let a = Faulty::start("a", Faults::healthy()).await;
    let b = Faulty::start("b", Faults::healthy()).await;
    let flaky = Faulty::start(
        "flaky",
        Faults {
            fail: Some((
                StatusCode::SERVICE_UNAVAILABLE,
                support::faulty::Share::EveryNth(2),
            )),
            ..Faults::default()
        },
    )
    .await;
    // P2C likes the flaky endpoint's fast answers, so it draws a large share and about a
    // fifth of all requests need a retry: a budget of half the requests keeps the budget out
    // of the picture, and what is measured is where the retries land.
    let mut orders = service("orders", &[a.addr, flaky.addr, b.addr]);
    orders.traffic_policy = Some(pb::TrafficPolicy {
        retries: Some(pb::Retries {
            budget_ratio: Some(0.5),
            ..Default::default()
        }),
        ..policy("orders")
    });
    let mesh = TrafficMesh::start(vec![orders]).await;
    let spec = LoadSpec::new(10_000, 16, Duration::from_secs(30));
    let report = load(mesh.outbound(), spec, |i| {
        request(Method::GET, "orders", &format!("/item/{i}"), Bytes::new())
    })
    .await;
    println!(
        "one endpoint of three failing every other request: {:.3}% success; it saw {} requests; {}",
        100.0 * report.success_ratio(),
        flaky.requests(),
        report.summary()
    );
    assert_eq!(report.sent, 10_000);
    assert!(
        flaky.requests() > 100,
        "the flaky endpoint stayed in rotation"
    );
    // Every failure was retried on a healthy endpoint, so none reached a client. (Retrying
    // on the same endpoint lost 5–25 of 10,000 here.)
    assert_eq!(
        report.ok(),
        report.sent,
        "no failure reached a client: {}",
        report.summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_endpoint_failing_every_request_with_503_costs_under_a_tenth_of_a_percent() {
    one_bad_endpoint_of_three(Faults::failing(503), "failing with 503").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_endpoint_resetting_every_connection_costs_under_a_tenth_of_a_percent() {
    one_bad_endpoint_of_three(Faults::resetting(), "resetting connections").await;
}

/// Every endpoint fails: the Service's retry budget (20% of requests plus a reserve of
/// 10/s × the 10 s window) caps the retries, where `attempts: 2` alone would triple the load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_total_outage_is_not_multiplied_beyond_the_retry_budget() {
    let _heavy = exclusive().await;
    let upstreams = [
        Faulty::start("a", Faults::failing(503)).await,
        Faulty::start("b", Faults::failing(503)).await,
        Faulty::start("c", Faults::failing(503)).await,
    ];
    let addrs: Vec<_> = upstreams.iter().map(|u| u.addr).collect();
    let mesh = TrafficMesh::start(vec![service("orders", &addrs)]).await;

    // 4 s of load: within one 10 s budget window, so the bound is exactly
    // 0.2 × requests + 10/s × 10 s.
    let window = Duration::from_secs(4);
    let spec = LoadSpec::new(1_000_000, 16, window);
    let report = load(mesh.outbound(), spec, |i| {
        request(Method::GET, "orders", &format!("/item/{i}"), Bytes::new())
    })
    .await;
    let seen: u64 = upstreams.iter().map(Faulty::requests).sum();
    let requests = report.sent;
    let retries = seen - requests;
    let bound = 0.2 * requests as f64 + 10.0 * 10.0;
    let metrics = mesh.metrics().await;
    let counted = metrics.sum("weft_retries_total", &[("target", TARGET)]);
    let exhausted = metrics.sum("weft_retry_budget_exhausted_total", &[("target", TARGET)]);
    println!(
        "total outage: {requests} requests in {:.2?}, upstreams saw {seen}: {retries} retries \
         ({:.1}% of requests; budget bound {bound:.0}, attempts alone would allow {}); \
         weft_retries_total {counted}, weft_retry_budget_exhausted_total {exhausted}",
        report.elapsed,
        100.0 * retries as f64 / requests as f64,
        2 * requests
    );
    assert!(
        requests > 1_000,
        "enough load to matter: {}",
        report.summary()
    );
    assert_eq!(
        report.by_status.get(&503).copied(),
        Some(requests),
        "every request got the upstream's 503: {}",
        report.summary()
    );
    assert!(
        retries as f64 <= bound,
        "retries {retries} within 0.2 × {requests} + 100 = {bound}"
    );
    // The budget is what stopped them, not a lack of failures: it was spent (nearly) in full.
    assert!(
        retries as f64 >= 0.95 * bound - 2.0,
        "the budget was used: {retries} retries of {bound}"
    );
    assert_eq!(
        counted, retries as f64,
        "weft_retries_total counts every retry"
    );
    // Each request was retried k ∈ {0, 1, 2} times; those with k < 2 met the empty budget.
    let e = exhausted;
    assert!(
        e > 0.0 && 2.0 * (requests as f64 - e) <= retries as f64 && retries as f64 <= 2.0 * requests as f64 - e,
        "weft_retry_budget_exhausted_total {e} is consistent with {retries} retries of {requests} requests"
    );
}

/// One endpoint failing every request with 503; what the upstream sees for one request.
async fn tries(mesh: &TrafficMesh, upstream: &Faulty, method: Method, body_len: usize) -> u64 {
    let before = upstream.stats();
    let body = Bytes::from(vec![b'x'; body_len]);
    let (outcome, _) = mesh
        .send(request(method.clone(), "orders", "/", body))
        .await;
    assert_eq!(
        outcome.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{method} of {body_len} bytes: the upstream's failure comes back"
    );
    assert_eq!(
        outcome.upstream(),
        Some("orders"),
        "{method}: not the proxy's own answer"
    );
    let after = upstream.stats();
    // Every try carried the whole body.
    let bodies = &after.bodies[before.bodies.len()..];
    assert!(
        bodies.iter().all(|&n| n == body_len),
        "{method}: every try carried all {body_len} bytes: {bodies:?}"
    );
    after.requests - before.requests
}

/// Bodies over the 64 KiB buffer are never retried; small ones are, for idempotent methods
/// by default and for POST only with `nonIdempotent: true`.
#[tokio::test]
async fn bodies_over_the_buffer_and_non_idempotent_methods_are_not_retried() {
    let upstream = Faulty::start("orders", Faults::failing(503)).await;
    let mesh = TrafficMesh::start(vec![service("orders", &[upstream.addr])]).await;
    const LARGE: usize = 64 * 1024 + 1;
    const SMALL: usize = 1000;

    let cases = [
        (Method::PUT, LARGE, 1),
        (Method::PUT, 64 * 1024, 3),
        (Method::PUT, SMALL, 3),
        (Method::GET, 0, 3),
        (Method::DELETE, 0, 3),
        (Method::POST, SMALL, 1),
        (Method::POST, LARGE, 1),
        (Method::PATCH, SMALL, 1),
    ];
    for (method, len, expected) in cases {
        let seen = tries(&mesh, &upstream, method.clone(), len).await;
        println!("default policy: {method} with {len} body bytes → the upstream saw {seen} tries");
        assert_eq!(seen, expected, "{method} of {len} bytes");
    }

    // nonIdempotent: true — POST and PATCH are retried too, but never with a body over the
    // buffer.
    let mut orders = service("orders", &[upstream.addr]);
    orders.traffic_policy = Some(pb::TrafficPolicy {
        retries: Some(pb::Retries {
            non_idempotent: true,
            ..Default::default()
        }),
        ..policy("orders")
    });
    mesh.push(vec![orders]).await;
    let cases = [
        (Method::POST, SMALL, 3),
        (Method::PATCH, SMALL, 3),
        (Method::POST, LARGE, 1),
        (Method::POST, 1024 * 1024, 1),
    ];
    for (method, len, expected) in cases {
        let seen = tries(&mesh, &upstream, method.clone(), len).await;
        println!("nonIdempotent: {method} with {len} body bytes → the upstream saw {seen} tries");
        assert_eq!(seen, expected, "nonIdempotent: {method} of {len} bytes");
    }
    let metrics = mesh.metrics().await;
    assert_eq!(
        metrics.value("weft_retry_budget_exhausted_total", &[("target", TARGET)]),
        0.0,
        "nothing here needed more than the budget's reserve"
    );
}

/// A forward-proxy request for `shop/orders` with a body of unknown length: no
/// `content-length`, so HTTP/1.1 sends it chunked and HTTP/2 without a length.
fn streaming_request(
    method: Method,
    path: &str,
    body: support::Body,
) -> http::Request<support::Body> {
    let host = support::faulty::host("orders");
    http::Request::builder()
        .method(method)
        .uri(format!("http://{host}{path}"))
        .header("host", host)
        .body(body)
        .unwrap()
}

/// `shop/orders` over a first endpoint failing every request with 503 and an echoing second
/// one, in that order, balanced round robin (so a request tries the failing one first and its
/// retry goes to the other); POST retried.
async fn failing_then_echoing() -> (Faulty, support::Upstream, TrafficMesh) {
    let bad = Faulty::start("bad", Faults::failing(503)).await;
    let echo = support::Upstream::start("echo").await;
    let mut orders = service("orders", &[bad.addr, echo.addr]);
    orders.traffic_policy = Some(pb::TrafficPolicy {
        load_balancer: pb::LoadBalancer::RoundRobin as i32,
        retries: Some(pb::Retries {
            non_idempotent: true,
            ..Default::default()
        }),
        ..policy("orders")
    });
    let mesh = TrafficMesh::start(vec![orders]).await;
    (bad, echo, mesh)
}

/// A chunked HTTP/1.1 POST (no `content-length`) that fails with 503 is retried on the other
/// endpoint, which receives exactly the bytes the client sent.
#[tokio::test]
async fn a_chunked_body_is_replayed_to_the_retry() {
    let (bad, echo, mesh) = failing_then_echoing().await;
    const LEN: usize = 40_000;
    let body = support::chunked_pattern(LEN, 4096);
    let (outcome, _) = mesh
        .send(streaming_request(Method::POST, "/echo", body))
        .await;
    let stats = bad.stats();
    let retries = mesh
        .metrics()
        .await
        .sum("weft_retries_total", &[("target", TARGET)]);
    println!(
        "chunked POST of {LEN} bytes: {} from {:?}; the failing endpoint saw {} tries with bodies {:?}; {retries} retries",
        outcome.status,
        outcome.upstream(),
        stats.requests,
        stats.bodies
    );
    assert_eq!(
        outcome.status,
        StatusCode::OK,
        "retried: {}",
        outcome.text()
    );
    assert_eq!(outcome.upstream(), Some("echo"));
    assert_eq!(outcome.body.len(), LEN, "the retry carried the whole body");
    assert!(
        outcome.body[..] == support::pattern(0, LEN)[..],
        "the retry carried exactly the bytes sent"
    );
    assert_eq!(stats.requests, 1, "one failed try");
    assert_eq!(
        stats.bodies,
        vec![LEN],
        "the failed try got the whole body too"
    );
    assert_eq!(retries, 1.0);
    let seen = echo
        .seen_path("/echo")
        .expect("the echo endpoint got the retry");
    assert!(
        seen.headers.get("content-length").is_none()
            || seen.headers["content-length"] == LEN.to_string().as_str(),
        "no wrong length: {:?}",
        seen.headers
    );
}

/// The same over HTTP/2 (prior knowledge), gRPC style: data frames without a
/// `content-length`, then trailers; the retry carries both.
#[tokio::test]
async fn an_http2_body_of_unknown_length_and_its_trailers_are_replayed_to_the_retry() {
    let (bad, _echo, mesh) = failing_then_echoing().await;
    let (tx, body) = support::channel_body();
    let mut sent = Vec::new();
    for i in 0..10 {
        let chunk = support::pattern(i * 3000, 3000);
        sent.extend_from_slice(&chunk);
        tx.send(http_body::Frame::data(Bytes::from(chunk)))
            .await
            .unwrap();
    }
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", "abc123".parse().unwrap());
    tx.send(http_body::Frame::trailers(trailers)).await.unwrap();
    drop(tx);
    let mut client = support::H2Client::connect(mesh.outbound()).await;
    let reply = client
        .call(streaming_request(Method::POST, "/echo", body))
        .await;
    let stats = bad.stats();
    println!(
        "HTTP/2 POST of {} bytes and trailers: {} from {:?}; the failing endpoint saw {} tries with bodies {:?}",
        sent.len(),
        reply.status,
        reply.header("x-upstream"),
        stats.requests,
        stats.bodies
    );
    assert_eq!(reply.status, StatusCode::OK, "retried: {}", reply.text());
    assert_eq!(reply.header("x-upstream"), Some("echo"));
    assert!(
        reply.body[..] == sent[..],
        "the retry carried exactly the bytes sent ({} of {})",
        reply.body.len(),
        sent.len()
    );
    assert_eq!(
        reply
            .trailers
            .as_ref()
            .and_then(|t| t.get("x-checksum"))
            .and_then(|v| v.to_str().ok()),
        Some("abc123"),
        "the retry carried the trailers: {:?}",
        reply.trailers
    );
    assert_eq!(stats.requests, 1, "one failed try");
    assert_eq!(stats.bodies, vec![sent.len()]);
}

/// A chunked body that outgrows the 64 KiB buffer streams through once: the failure reaches
/// the client, and the upstream got the whole body in its one try.
#[tokio::test]
async fn a_chunked_body_over_the_buffer_is_not_retried() {
    let upstream = Faulty::start("orders", Faults::failing(503)).await;
    let mut orders = service("orders", &[upstream.addr]);
    orders.traffic_policy = Some(pb::TrafficPolicy {
        retries: Some(pb::Retries {
            non_idempotent: true,
            ..Default::default()
        }),
        ..policy("orders")
    });
    let mesh = TrafficMesh::start(vec![orders]).await;
    const LEN: usize = 200_000;
    for method in [Method::PUT, Method::POST] {
        let before = upstream.stats();
        let body = support::chunked_pattern(LEN, 8192);
        let (outcome, _) = mesh
            .send(streaming_request(method.clone(), "/", body))
            .await;
        let after = upstream.stats();
        println!(
            "chunked {method} of {LEN} bytes: {} from {:?}; the upstream saw {} tries",
            outcome.status,
            outcome.upstream(),
            after.requests - before.requests
        );
        assert_eq!(outcome.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(outcome.upstream(), Some("orders"), "the upstream's failure");
        assert_eq!(after.requests - before.requests, 1, "{method}: one try");
        assert_eq!(
            after.bodies[before.bodies.len()..],
            [LEN],
            "{method}: the try got the whole body"
        );
    }
    // Small chunked bodies to the same endpoint are retried (two retries by default).
    let before = upstream.stats();
    let (outcome, _) = mesh
        .send(streaming_request(
            Method::PUT,
            "/",
            support::chunked_pattern(1000, 100),
        ))
        .await;
    let after = upstream.stats();
    assert_eq!(outcome.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        after.requests - before.requests,
        3,
        "a small chunked PUT is retried"
    );
    assert_eq!(after.bodies[before.bodies.len()..], [1000, 1000, 1000]);
}

/// An endpoint that answers 503 as soon as it has a request's head and keeps reading its
/// body: the first try's body is still being sent (hyper holds it) when the failure arrives,
/// so nothing can replay it. The failure comes back at once (no retry, no hang, no proxy
/// error) while the client is still sending.
#[tokio::test]
async fn a_try_answered_while_its_body_streams_is_not_retried() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tries = Arc::new(AtomicUsize::new(0));
    let counted = tries.clone();
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                support::read_head(&mut stream).await;
                let rsp = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nx-upstream: orders\r\n\r\n";
                stream.write_all(rsp.as_bytes()).await.unwrap();
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    let mesh = TrafficMesh::start(vec![service("orders", &[addr])]).await;
    let (tx, body) = support::channel_body();
    tx.send(http_body::Frame::data(Bytes::from_static(b"first")))
        .await
        .unwrap();
    let (outcome, _) = mesh.send(streaming_request(Method::PUT, "/", body)).await;
    let tries = tries.load(Ordering::SeqCst);
    println!(
        "PUT answered 503 mid-body: {} from {:?} (proxy error {:?}); the upstream saw {tries} tries",
        outcome.status,
        outcome.upstream(),
        outcome.proxy_error()
    );
    assert_eq!(outcome.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(outcome.upstream(), Some("orders"), "the upstream's own 503");
    assert_eq!(outcome.proxy_error(), None);
    assert_eq!(tries, 1, "not retried");
    drop(tx);
    server.abort();
}
