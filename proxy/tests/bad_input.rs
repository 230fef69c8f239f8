//! What clients and upstreams get wrong: malformed requests (400), oversized headers (431),
//! unreachable or failing upstreams (502, with a reason), slow and idle clients (closed on
//! time), and random bytes (survived). Failures are counted in `weft_errors_total`.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

async fn wait_for_error(proxy: &TestProxy, direction: &str, target: &str, kind: &str) {
    eventually(
        WAIT,
        &format!("weft_errors_total{{direction={direction},target={target},kind={kind}}} == 1"),
        || async {
            proxy.metrics().await.value(
                "weft_errors_total",
                &[("direction", direction), ("target", target), ("kind", kind)],
            ) == 1.0
        },
    )
    .await;
}

fn status_line(response: &[u8]) -> String {
    let text = String::from_utf8_lossy(response);
    text.lines().next().unwrap_or("").to_owned()
}

#[tokio::test]
async fn a_malformed_request_line_gets_400() {
    let app = Upstream::start("app").await;
    let bind = free_addr();
    let proxy = proxy()
        .config(format!(
            "listeners:\n  - {{name: web, bind: \"{bind}\", target: \"{}\", protocol: http1}}\n",
            app.addr
        ))
        .start()
        .await;

    // On an `http1` listener nothing is detected: the HTTP server sees the bad line.
    for bad in [
        &b"BAD REQUEST LINE\r\n\r\n"[..],
        b"GET /\x01 HTTP/1.1\r\n\r\n",
        b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let response = raw_exchange(bind, bad).await;
        assert!(
            status_line(&response).starts_with("HTTP/1.1 400"),
            "{:?} got {:?}",
            String::from_utf8_lossy(bad),
            String::from_utf8_lossy(&response)
        );
    }
    assert!(app.seen().is_empty());
    eventually(WAIT, "three bad_request errors", || async {
        proxy.metrics().await.value(
            "weft_errors_total",
            &[
                ("direction", "outbound"),
                ("target", "web"),
                ("kind", "bad_request"),
            ],
        ) == 3.0
    })
    .await;
}

#[tokio::test]
async fn malformed_headers_get_400() {
    let app = Upstream::start("app").await;
    let proxy = proxy().inbound_app(app.addr).start().await;

    let response = raw_exchange(
        proxy.inbound,
        b"GET / HTTP/1.1\r\nHost: x\r\nthis line has no colon\r\n\r\n",
    )
    .await;
    assert!(
        status_line(&response).starts_with("HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&response)
    );
    assert!(app.seen().is_empty());
    wait_for_error(&proxy, "inbound", &app.addr.to_string(), "bad_request").await;
}

#[tokio::test]
async fn headers_over_max_header_bytes_get_431() {
    let app = Upstream::start("app").await;
    let proxy = proxy()
        .inbound_app(app.addr)
        .config("maxHeaderBytes: 16384")
        .start()
        .await;

    // Under the configured limit (and the 64 KiB default): forwarded.
    let fits = "a".repeat(12_000);
    let reply = call(
        proxy.inbound,
        http::Request::builder()
            .uri("/")
            .header("host", "x")
            .header("x-big", &fits)
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(app.seen()[0].headers["x-big"], &fits[..]);

    // Over the configured limit, though well under the default: refused.
    let request = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(20_000)
    );
    let response = raw_exchange(proxy.inbound, request.as_bytes()).await;
    assert!(
        status_line(&response).starts_with("HTTP/1.1 431"),
        "{:?}",
        String::from_utf8_lossy(&response)
    );
    assert_eq!(app.seen().len(), 1);
    wait_for_error(&proxy, "inbound", &app.addr.to_string(), "header_too_large").await;
}

#[tokio::test]
async fn an_unreachable_upstream_gets_502_saying_why() {
    let nowhere = free_addr();
    let proxy = proxy().inbound_app(nowhere).start().await;

    let reply = get_once(proxy.inbound, "/").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.header("weft-proxy-error"), Some("connect-refused"));
    let body = reply.text();
    assert!(body.contains("refused"), "{body}");
    assert!(body.contains(&nowhere.to_string()), "{body}");

    let target = nowhere.to_string();
    let m = proxy.metrics().await;
    assert_eq!(
        m.value(
            "weft_errors_total",
            &[
                ("direction", "inbound"),
                ("target", &target),
                ("kind", "connect_refused")
            ]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "weft_responses_total",
            &[
                ("direction", "inbound"),
                ("target", &target),
                ("status_class", "5xx")
            ]
        ),
        1.0
    );
}

#[tokio::test]
async fn an_upstream_that_hangs_up_gets_502() {
    let upstream = TcpUpstream::start(TcpBehavior::HangUp).await;
    let proxy = proxy().inbound_app(upstream.addr).start().await;

    let reply = get_once(proxy.inbound, "/").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.header("weft-proxy-error"), Some("upstream-failed"));
    assert!(
        reply.text().contains(&upstream.addr.to_string()),
        "{}",
        reply.text()
    );
    wait_for_error(
        &proxy,
        "inbound",
        &upstream.addr.to_string(),
        "upstream_error",
    )
    .await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let app = Upstream::start("app").await;
    let proxy = proxy()
        .inbound_app(app.addr)
        .config("headerReadTimeout: 300ms")
        .start()
        .await;

    let mut stream = connect(proxy.inbound).await;
    // A complete request line (so detection decides HTTP at once), then silence.
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let rest = read_until_closed(&mut stream, Duration::from_secs(3)).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(200),
        "closed after {elapsed:?}, before the header timeout"
    );
    assert!(
        !String::from_utf8_lossy(&rest).contains(" 200 "),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(app.seen().is_empty());
    wait_for_error(&proxy, "inbound", &app.addr.to_string(), "header_timeout").await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_http_idle_timeout() {
    let app = Upstream::start("app").await;
    let proxy = proxy()
        .inbound_app(app.addr)
        .config("httpIdleTimeout: 300ms\nheaderReadTimeout: 30s")
        .start()
        .await;

    let mut client = H1Client::connect(proxy.inbound).await;
    assert_eq!(client.get("/").await.status, StatusCode::OK);
    let started = Instant::now();
    client.closed(Duration::from_secs(3)).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(250),
        "closed after {elapsed:?}, before the idle timeout"
    );
    wait_for_error(&proxy, "inbound", &app.addr.to_string(), "idle_timeout").await;
}

#[tokio::test]
async fn an_active_connection_is_not_closed_by_the_idle_timeout() {
    let app = Upstream::start("app").await;
    let proxy = proxy()
        .inbound_app(app.addr)
        .config("httpIdleTimeout: 300ms\nheaderReadTimeout: 30s")
        .start()
        .await;

    // A request every 100 ms for three idle timeouts: the timer restarts with every byte.
    let mut busy = H1Client::connect(proxy.inbound).await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(900) {
        assert_eq!(busy.get("/").await.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!busy.is_closed());
}

#[tokio::test]
async fn random_bytes_do_not_take_the_proxy_down() {
    watch_for_proxy_panics();
    let app = Upstream::start("app").await;
    let (h1, h2) = (free_addr(), free_addr());
    let proxy = proxy()
        .inbound_app(app.addr)
        .config(format!(
            r#"
detectTimeout: 200ms
listeners:
  - {{name: h1, bind: "{h1}", target: "{app}", protocol: http1}}
  - {{name: h2, bind: "{h2}", target: "{app}", protocol: http2}}
"#,
            app = app.addr
        ))
        .start()
        .await;
    let listeners: [SocketAddr; 4] = [proxy.inbound, proxy.outbound, h1, h2];

    let mut garbage = Garbage::new(0x5eed);
    for round in 0..8 {
        for addr in listeners {
            let mut input = match round % 4 {
                0 => Vec::new(),
                1 => b"GET / HTTP/1.1\r\n".to_vec(),
                2 => weft_proxy::detect::H2_PREFACE.to_vec(),
                _ => b"GE".to_vec(),
            };
            input.extend(garbage.bytes(if round < 4 { 4096 } else { 17 }));
            // Then EOF: a server still waiting for the rest of a frame or a preface (which it
            // may, as long as the idle timeout allows) must see that nothing more will come.
            let mut stream = connect(addr).await;
            let _ = stream.write_all(&input).await;
            let _ = stream.shutdown().await;
            read_until_closed(&mut stream, WAIT).await;
        }
    }
    // Half an HTTP/2 preface, then silence: detection times out and the bytes go opaque to
    // the app (which waits for the rest of the preface until our EOF).
    let accepted = app.accepts();
    let mut stream = connect(proxy.inbound).await;
    stream
        .write_all(&weft_proxy::detect::H2_PREFACE[..10])
        .await
        .unwrap();
    eventually(WAIT, "the opaque connection to the app", || {
        std::future::ready(app.accepts() > accepted)
    })
    .await;
    stream.shutdown().await.unwrap();
    read_until_closed(&mut stream, WAIT).await;

    // Every listener still serves.
    assert_eq!(get_once(proxy.inbound, "/").await.text(), "app");
    assert_eq!(get_once(h1, "/").await.text(), "app");
    assert_eq!(
        H2Client::connect(h2).await.call(get("/")).await.text(),
        "app"
    );
    assert_eq!(
        call(proxy.outbound, get(&format!("http://{}/", app.addr)))
            .await
            .text(),
        "app"
    );
    // And nothing is left open.
    eventually(WAIT, "every connection to be closed", || async {
        proxy.metrics().await.sum("weft_tcp_connections_open", &[]) == 0.0
    })
    .await;
    assert!(proxy_panics().is_empty(), "panics: {:?}", proxy_panics());
}

#[tokio::test]
async fn waiting_between_keep_alive_requests_is_not_a_slow_header() {
    let app = Upstream::start("app").await;
    let proxy = proxy()
        .inbound_app(app.addr)
        .config("headerReadTimeout: 200ms\nhttpIdleTimeout: 30s")
        .start()
        .await;
    let mut client = H1Client::connect(proxy.inbound).await;
    assert_eq!(client.get("/first").await.status, StatusCode::OK);
    // Four header timeouts of keep-alive idleness: idle time, not a slow request head.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!client.is_closed(), "idle keep-alive connection was closed");
    assert_eq!(client.get("/second").await.status, StatusCode::OK);
    let errors = proxy.metrics().await.sum(
        "weft_errors_total",
        &[("direction", "inbound"), ("kind", "header_timeout")],
    );
    assert_eq!(errors, 0.0);
}
