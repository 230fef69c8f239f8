//! HTTP/2 prior knowledge through static listeners: detected (`auto`) and declared (`http2`),
//! concurrent streams on one connection, trailers (gRPC), large bodies under flow control.

mod support;

use std::net::SocketAddr;

use http::{Method, StatusCode, Version};
use support::*;

struct Setup {
    app: Upstream,
    proxy: TestProxy,
    auto: SocketAddr,
    h2: SocketAddr,
}

async fn setup() -> Setup {
    let app = Upstream::start("app").await;
    let (auto, h2) = (free_addr(), free_addr());
    let proxy = proxy()
        .config(format!(
            r#"
listeners:
  - name: detected
    bind: "{auto}"
    target: "{app}"
    protocol: auto
  - name: declared
    bind: "{h2}"
    target: "{app}"
    protocol: http2
"#,
            app = app.addr
        ))
        .start()
        .await;
    Setup {
        app,
        proxy,
        auto,
        h2,
    }
}

#[tokio::test]
async fn prior_knowledge_on_auto_and_http2_listeners_multiplexes_streams() {
    const STREAMS: usize = 8;
    let Setup {
        app,
        proxy,
        auto,
        h2,
    } = setup().await;

    for (name, addr) in [("detected", auto), ("declared", h2)] {
        let client = H2Client::connect(addr).await;
        assert_eq!(client.clone().call(get("/warm-up")).await.text(), "app");
        // Each request waits at the upstream until all of them are there: this only
        // completes if the streams really are concurrent, end to end.
        let calls: Vec<_> = (0..STREAMS)
            .map(|_| {
                let mut client = client.clone();
                tokio::spawn(async move {
                    client
                        .call(get(&format!("/barrier/{STREAMS}/{name}")))
                        .await
                })
            })
            .collect();
        for call in calls {
            let reply = within(WAIT, "a concurrent stream", call).await.unwrap();
            assert_eq!(reply.status, StatusCode::OK, "{name}");
            assert_eq!(reply.text(), "together", "{name}");
        }
        let m = proxy.metrics().await;
        assert_eq!(
            m.value(
                "weft_requests_total",
                &[("direction", "outbound"), ("target", name)]
            ),
            (STREAMS + 1) as f64,
            "{name}"
        );
        assert_eq!(
            m.value(
                "weft_tcp_connections_opened_total",
                &[("direction", "outbound"), ("target", name)]
            ),
            1.0,
            "{name}: all streams on one client connection"
        );
    }
    let seen = app.seen();
    assert!(seen.iter().all(|s| s.version == Version::HTTP_2));
    assert_eq!(seen.len(), 2 * (STREAMS + 1));
    assert_eq!(
        app.accepts(),
        1,
        "both listeners' streams share one multiplexed upstream connection"
    );
}

#[tokio::test]
async fn trailers_pass_through() {
    let Setup {
        app,
        h2,
        auto,
        proxy: _proxy,
    } = setup().await;

    for addr in [h2, auto] {
        let mut client = H2Client::connect(addr).await;
        let req = http::Request::builder()
            .method(Method::POST)
            .uri("/grpc")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(full(&b"\0\0\0\0\x02hi"[..]))
            .unwrap();
        let reply = client.call(req).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("content-type"), Some("application/grpc"));
        assert_eq!(&reply.body[..], b"\0\0\0\0\x05hello");
        let trailers = reply.trailers.expect("response trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["grpc-message"], "all-good");
    }
    let seen = app.seen_path("/grpc").unwrap();
    assert_eq!(seen.headers["te"], "trailers", "gRPC needs TE: trailers");
    assert_eq!(seen.headers["content-type"], "application/grpc");
}

#[tokio::test]
async fn a_4mib_body_echoes_over_http2() {
    const SIZE: usize = 4 * 1024 * 1024;
    let Setup {
        h2, proxy: _proxy, ..
    } = setup().await;
    let mut client = H2Client::connect(h2).await;
    let reply = client
        .call(request(
            Method::POST,
            "/echo",
            chunked_pattern(SIZE, 100 * 1024),
        ))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.len(), SIZE);
    assert!(reply.body == pattern(0, SIZE), "echoed body differs");
}

#[tokio::test]
async fn a_cold_burst_opens_one_upstream_connection() {
    const STREAMS: usize = 8;
    let Setup {
        app,
        h2,
        proxy: _proxy,
        ..
    } = setup().await;
    let client = H2Client::connect(h2).await;
    // No warm-up: every stream arrives while the proxy has no upstream connection yet.
    let calls: Vec<_> = (0..STREAMS)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.call(get(&format!("/barrier/{STREAMS}/cold"))).await })
        })
        .collect();
    for call in calls {
        let reply = within(WAIT, "a concurrent stream", call).await.unwrap();
        assert_eq!(reply.text(), "together");
    }
    assert_eq!(app.accepts(), 1, "the burst shared one connection attempt");
}
