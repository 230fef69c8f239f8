//! HTTP/1.1 upgrades (WebSocket): the handshake passes through with its hop-by-hop fields,
//! then the connection carries raw bytes both ways.

mod support;

use std::net::SocketAddr;

use http::StatusCode;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_proxy::drain::Drained;

const HANDSHAKE: &str = "GET /ws HTTP/1.1\r\n\
    Host: test.local\r\n\
    Connection: Upgrade\r\n\
    Upgrade: websocket\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\
    \r\n";

async fn upgrade(addr: SocketAddr) -> TcpStream {
    let mut stream = connect(addr).await;
    stream.write_all(HANDSHAKE.as_bytes()).await.unwrap();
    let (head, rest) = read_head(&mut stream).await;
    let lower = head.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 101"), "{head}");
    assert!(lower.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(lower.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert!(
        lower.contains("\r\nsec-websocket-accept: test-accept\r\n"),
        "{head}"
    );
    assert!(rest.is_empty());
    stream
}

async fn assert_echoes(stream: &mut TcpStream, payload: &[u8]) {
    let (mut rd, mut wr) = stream.split();
    let (_, back) = tokio::join!(async { wr.write_all(payload).await.unwrap() }, async {
        let mut back = vec![0u8; payload.len()];
        within(WAIT, "the upgraded echo", rd.read_exact(&mut back))
            .await
            .unwrap();
        back
    });
    assert!(back == payload, "echoed bytes differ");
}

#[tokio::test]
async fn websocket_upgrade_passes_bytes_both_ways() {
    let app = Upstream::start("app").await;
    let proxy = proxy().inbound_app(app.addr).start().await;

    let mut stream = upgrade(proxy.inbound).await;
    let seen = app.seen_path("/ws").unwrap();
    assert_eq!(seen.headers["upgrade"], "websocket");
    assert_eq!(
        seen.headers["connection"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase(),
        "upgrade"
    );
    assert_eq!(
        seen.headers["sec-websocket-key"],
        "dGhlIHNhbXBsZSBub25jZQ=="
    );

    // A small frame-like message, then a large binary blob: raw bytes, not HTTP.
    assert_eq!(
        {
            stream.write_all(b"\x81\x05hello").await.unwrap();
            read_exactly(&mut stream, 7).await
        },
        b"\x81\x05hello"
    );
    assert_echoes(&mut stream, &pattern(0, 512 * 1024)).await;

    // The client closes its side; the upstream's echo loop ends and closes too.
    stream.shutdown().await.unwrap();
    let tail = read_until_closed(&mut stream, WAIT).await;
    assert!(tail.is_empty());
}

#[tokio::test]
async fn upgrades_work_on_static_http1_listeners_and_leave_other_connections_alone() {
    let app = Upstream::start("app").await;
    let bind = free_addr();
    let proxy = proxy()
        .config(format!(
            "listeners:\n  - {{name: ws, bind: \"{bind}\", target: \"{}\", protocol: http1}}\n",
            app.addr
        ))
        .start()
        .await;

    let mut first = upgrade(bind).await;
    let mut second = upgrade(bind).await;
    assert_echoes(&mut first, b"one").await;
    assert_echoes(&mut second, b"two").await;
    // Plain requests on the same listener still work meanwhile.
    let reply = get_once(bind, "/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "app");
    assert_echoes(&mut first, &pattern(7, 64 * 1024)).await;

    let m = proxy.metrics().await;
    assert_eq!(
        m.value(
            "weft_responses_total",
            &[
                ("direction", "outbound"),
                ("target", "ws"),
                ("status_class", "1xx")
            ]
        ),
        2.0
    );
}

#[tokio::test]
async fn an_open_websocket_counts_as_open_and_holds_the_drain() {
    let app = Upstream::start("app").await;
    let proxy = proxy()
        .inbound_app(app.addr)
        .grace(Duration::from_millis(300))
        .start()
        .await;
    let mut stream = upgrade(proxy.inbound).await;
    assert_echoes(&mut stream, b"still here").await;
    let target = app.addr.to_string();
    let open = proxy.metrics().await.value(
        "weft_tcp_connections_open",
        &[("direction", "inbound"), ("target", &target)],
    );
    assert_eq!(open, 1.0, "the upgraded connection is still open");
    // The tunnel is in flight: a drain must wait for it, and cut it at the grace period.
    let started = std::time::Instant::now();
    assert_eq!(proxy.shutdown().await, Drained::Forced);
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn an_idle_websocket_is_closed_after_the_tcp_idle_timeout() {
    let app = Upstream::start("app").await;
    let proxy = proxy()
        .inbound_app(app.addr)
        .config("tcpIdleTimeout: 300ms\nhttpIdleTimeout: 1h")
        .start()
        .await;
    let mut stream = upgrade(proxy.inbound).await;
    assert_echoes(&mut stream, b"ping").await;
    let started = std::time::Instant::now();
    let rest = read_until_closed(&mut stream, Duration::from_secs(3)).await;
    assert!(rest.is_empty());
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(3),
        "closed after {elapsed:?}"
    );
}
