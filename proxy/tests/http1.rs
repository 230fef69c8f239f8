//! HTTP/1.1 through the proxy: keep-alive and upstream connection reuse, streamed chunked
//! bodies, hop-by-hop header removal, the inbound listener, and the outbound listener as a
//! forward proxy (absolute-form requests and CONNECT tunnels).

mod support;

use http::{Method, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use support::*;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn keep_alive_reuses_the_client_and_upstream_connections() {
    let app = Upstream::start("app").await;
    let proxy = proxy().inbound_app(app.addr).start().await;

    let mut client = H1Client::connect(proxy.inbound).await;
    for _ in 0..5 {
        let reply = client.get("/").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "app");
    }
    // Bodies of every size class: empty, fixed length, chunked.
    assert_eq!(
        client.get("/status/204").await.status,
        StatusCode::NO_CONTENT
    );
    let echoed = client
        .call(request(Method::POST, "/echo", full("fixed length")))
        .await;
    assert_eq!(echoed.text(), "fixed length");
    let echoed = client
        .call(request(
            Method::POST,
            "/echo",
            chunked_pattern(10_000, 1000),
        ))
        .await;
    assert_eq!(echoed.body, pattern(0, 10_000));
    assert!(!client.is_closed());

    // A second client connection: the pool is shared across downstream connections.
    let mut second = H1Client::connect(proxy.inbound).await;
    for _ in 0..3 {
        assert_eq!(second.get("/").await.text(), "app");
    }
    assert_eq!(app.seen().len(), 11);
    assert_eq!(
        app.accepts(),
        1,
        "every request should reuse the one pooled upstream connection"
    );

    let m = proxy.metrics().await;
    let labels = [
        ("direction", "inbound"),
        ("target", &app.addr.to_string()[..]),
    ];
    assert_eq!(m.value("weft_tcp_connections_opened_total", &labels), 2.0);
    assert_eq!(m.value("weft_requests_total", &labels), 11.0);
}

#[tokio::test]
async fn a_4mib_chunked_body_streams_both_ways_intact() {
    const SIZE: usize = 4 * 1024 * 1024;
    let app = Upstream::start("app").await;
    let proxy = proxy().inbound_app(app.addr).start().await;
    let mut client = H1Client::connect(proxy.inbound).await;

    let rsp = client
        .send(request(
            Method::POST,
            "/echo",
            chunked_pattern(SIZE, 61 * 1024),
        ))
        .await;
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(
        rsp.headers()["transfer-encoding"],
        "chunked",
        "the response should stream, not be buffered to learn its length"
    );
    let reply = read_reply(rsp).await;
    assert_eq!(reply.body.len(), SIZE);
    assert!(reply.body == pattern(0, SIZE), "echoed body differs");

    let seen = app.seen_path("/echo").unwrap();
    assert_eq!(seen.headers["transfer-encoding"], "chunked");
    assert!(!seen.headers.contains_key("content-length"));

    // The connection is still good for another request after all that.
    assert_eq!(client.get("/").await.text(), "app");
}

#[tokio::test]
async fn response_bodies_are_streamed_not_buffered() {
    let app = Upstream::start("app").await;
    let proxy = proxy().inbound_app(app.addr).start().await;
    let mut client = H1Client::connect(proxy.inbound).await;

    let rsp = client.send(get("/gated-body")).await;
    assert_eq!(rsp.status(), StatusCode::OK);
    let mut body = rsp.into_body();
    // The upstream holds the rest of the body until the gate opens: the first frame must
    // arrive on its own.
    let first = within(WAIT, "the first body frame", body.frame())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first\n");
    app.open_gate();
    let rest = within(WAIT, "the rest of the body", body.collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(rest, "second\n");
}

#[tokio::test]
async fn request_bodies_are_streamed_not_buffered() {
    let app = Upstream::start("app").await;
    let proxy = proxy().inbound_app(app.addr).start().await;
    let mut client = H1Client::connect(proxy.inbound).await;

    let (tx, body) = channel_body();
    let call =
        tokio::spawn(async move { client.call(request(Method::POST, "/ingest", body)).await });
    tx.send(Frame::data("hello".into())).await.unwrap();
    // The upstream sees the first frame while the client still holds the rest.
    assert_eq!(app.next_event().await, "frame 5");
    tx.send(Frame::data(" world!".into())).await.unwrap();
    assert_eq!(app.next_event().await, "frame 7");
    drop(tx);
    let reply = within(WAIT, "the response", call).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "12");
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let app = Upstream::start("app").await;
    let proxy = proxy().inbound_app(app.addr).start().await;

    let req = http::Request::builder()
        .uri("/hop")
        .header("host", "test.local")
        .header("connection", "x-foo")
        .header("x-foo", "hop-by-hop")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("te", "trailers")
        .header("x-end", "end-to-end")
        .body(empty())
        .unwrap();
    let reply = call(proxy.inbound, req).await;
    assert_eq!(reply.status, StatusCode::OK);

    let seen = app.seen_path("/hop").unwrap();
    for hop in [
        "connection",
        "x-foo",
        "keep-alive",
        "proxy-connection",
        "te",
    ] {
        assert!(
            !seen.headers.contains_key(hop),
            "upstream received hop-by-hop {hop}: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.headers["x-end"], "end-to-end");
    assert_eq!(seen.headers["host"], "test.local");

    for hop in ["x-bar", "keep-alive", "proxy-connection"] {
        assert!(
            !reply.headers.contains_key(hop),
            "client received hop-by-hop {hop}: {:?}",
            reply.headers
        );
    }
    assert_ne!(
        reply.header("connection"),
        Some("x-bar"),
        "the upstream's Connection field was forwarded"
    );
    assert_eq!(reply.header("x-end"), Some("end-to-end"));
}

#[tokio::test]
async fn the_inbound_listener_forwards_to_the_inbound_app() {
    let app = Upstream::start("app").await;
    let proxy = proxy().inbound_app(app.addr).start().await;

    let reply = call(
        proxy.inbound,
        request(Method::PUT, "/echo?x=1&y=2", full("payload")),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "payload");
    assert_eq!(reply.header("x-upstream"), Some("app"));

    let seen = app.seen_path("/echo").unwrap();
    assert_eq!(seen.method, Method::PUT);
    assert_eq!(seen.uri, "/echo?x=1&y=2");
    assert_eq!(seen.headers["content-length"], "7");

    let m = proxy.metrics().await;
    let target = app.addr.to_string();
    let labels = [("direction", "inbound"), ("target", &target[..])];
    assert_eq!(m.value("weft_requests_total", &labels), 1.0);
    assert_eq!(
        m.value(
            "weft_responses_total",
            &[
                ("direction", "inbound"),
                ("target", &target),
                ("status_class", "2xx")
            ]
        ),
        1.0
    );
}

#[tokio::test]
async fn forward_proxy_sends_absolute_form_requests_to_their_target() {
    let app = Upstream::start("app").await;
    let proxy = proxy().start().await;
    let mut client = H1Client::connect(proxy.outbound).await;

    let target = app.addr.to_string();
    // No Host header: the proxy must add it from the URI.
    let req = http::Request::builder()
        .uri(format!("http://{target}/orders?id=7"))
        .body(empty())
        .unwrap();
    let reply = client.call(req).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "app");
    // One client connection can reach any number of targets.
    let other = Upstream::start("other").await;
    let reply = client.call(get(&format!("http://{}/", other.addr))).await;
    assert_eq!(reply.text(), "other");

    let seen = app.seen_path("/orders").unwrap();
    assert_eq!(seen.uri, "/orders?id=7", "upstream must get origin form");
    assert_eq!(seen.headers["host"], &target[..]);

    let m = proxy.metrics().await;
    assert_eq!(
        m.value(
            "weft_requests_total",
            &[("direction", "outbound"), ("target", &target)]
        ),
        1.0
    );
}

#[tokio::test]
async fn forward_proxy_refuses_what_it_cannot_route() {
    let proxy = proxy().start().await;

    let origin_form = get_once(proxy.outbound, "/no-authority").await;
    assert_eq!(origin_form.status, StatusCode::BAD_REQUEST);
    assert_eq!(origin_form.header("weft-proxy-error"), Some("bad-request"));
    assert!(
        origin_form.text().contains("forward proxy"),
        "{}",
        origin_form.text()
    );

    let https = call(proxy.outbound, get("https://127.0.0.1:1/")).await;
    assert_eq!(https.status, StatusCode::BAD_REQUEST);
    assert!(https.text().contains("CONNECT"), "{}", https.text());

    let looped = call(proxy.outbound, get(&format!("http://{}/", proxy.outbound))).await;
    assert_eq!(looped.status, StatusCode::LOOP_DETECTED);
    assert_eq!(looped.header("weft-proxy-error"), Some("loop"));
}

#[tokio::test]
async fn connect_tunnels_raw_bytes() {
    let echo = TcpUpstream::start(TcpBehavior::Echo).await;
    let proxy = proxy().start().await;

    let mut stream = connect(proxy.outbound).await;
    stream
        .write_all(format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", echo.addr).as_bytes())
        .await
        .unwrap();
    let (head, rest) = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(rest.is_empty());

    // Not HTTP, not even text: the tunnel carries any bytes, both ways.
    let payload = pattern(0, 256 * 1024);
    let (mut rd, mut wr) = stream.into_split();
    let writer = {
        let payload = payload.clone();
        tokio::spawn(async move {
            wr.write_all(&payload).await.unwrap();
            wr
        })
    };
    let mut back = vec![0u8; payload.len()];
    within(
        WAIT,
        "the tunnelled echo",
        tokio::io::AsyncReadExt::read_exact(&mut rd, &mut back),
    )
    .await
    .unwrap();
    assert!(back == payload, "tunnelled bytes differ");
    drop(writer.await.unwrap());
    assert_eq!(echo.accepts(), 1);
}
