//! Graceful shutdown: in-flight requests finish, idle connections are closed, new connections
//! are refused, `/ready` turns 503, and the drain reports whether it finished in time.

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use support::*;
use tokio::time::Instant;
use weft_proxy::drain::Drained;

#[tokio::test]
async fn in_flight_requests_finish_and_the_drain_is_graceful() {
    let app = Upstream::start("app").await;
    let h2_bind = free_addr();
    let proxy = proxy()
        .inbound_app(app.addr)
        .grace(Duration::from_secs(5))
        .config(format!(
            "listeners:\n  - {{name: h2, bind: \"{h2_bind}\", target: \"{}\", protocol: http2}}\n",
            app.addr
        ))
        .start()
        .await;
    let (inbound, admin_addr) = (proxy.inbound, proxy.admin);
    assert_eq!(
        admin(admin_addr, Method::GET, "/ready", "").await.status,
        StatusCode::OK
    );

    // Idle keep-alive connections, HTTP/1 and HTTP/2: the drain must close them, not wait.
    let mut idle = H1Client::connect(inbound).await;
    assert_eq!(idle.get("/").await.status, StatusCode::OK);
    let mut idle_h2 = H2Client::connect(h2_bind).await;
    assert_eq!(idle_h2.call(get("/")).await.status, StatusCode::OK);

    // A request the upstream takes 500 ms to answer.
    let started = Instant::now();
    let mut busy = H1Client::connect(inbound).await;
    let slow = tokio::spawn(async move { busy.get("/delay/500").await });
    app.wait_for_path("/delay/500").await;

    let drain_started = Instant::now();
    let drained = tokio::spawn(proxy.shutdown());

    eventually(WAIT, "/ready to answer 503", || async {
        admin(admin_addr, Method::GET, "/ready", "").await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    eventually(WAIT, "the inbound listener to refuse connections", || {
        refuses(inbound)
    })
    .await;
    eventually(WAIT, "the static listener to refuse connections", || {
        refuses(h2_bind)
    })
    .await;
    idle.closed(WAIT).await;

    let reply = within(WAIT, "the in-flight request", slow).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "slept");
    assert!(started.elapsed() >= Duration::from_millis(500));

    let drained = within(WAIT, "the drain", drained).await.unwrap();
    assert_eq!(drained, Drained::Graceful);
    let took = drain_started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "a graceful drain should end when the work does, not at the grace period: {took:?}"
    );
    // Still answering, still draining.
    let ready = admin(admin_addr, Method::GET, "/ready", "").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.text(), "draining\n");
}

#[tokio::test]
async fn work_that_outlives_the_grace_period_forces_the_drain() {
    let app = Upstream::start("app").await;
    let proxy = proxy()
        .inbound_app(app.addr)
        .grace(Duration::from_millis(200))
        .start()
        .await;

    let mut busy = H1Client::connect(proxy.inbound).await;
    let _slow = tokio::spawn(async move { busy.get("/delay/5000").await });
    app.wait_for_path("/delay/5000").await;

    let started = Instant::now();
    let drained = proxy.shutdown().await;
    let took = started.elapsed();
    assert_eq!(drained, Drained::Forced);
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_secs(2),
        "forced after {took:?}, expected about the 200 ms grace"
    );
}

#[tokio::test]
async fn a_proxy_with_nothing_in_flight_drains_at_once() {
    let app = Upstream::start("app").await;
    let proxy = proxy()
        .inbound_app(app.addr)
        .grace(Duration::from_secs(5))
        .start()
        .await;
    assert_eq!(get_once(proxy.inbound, "/").await.status, StatusCode::OK);
    let started = Instant::now();
    assert_eq!(proxy.shutdown().await, Drained::Graceful);
    assert!(started.elapsed() < Duration::from_secs(2));
}
