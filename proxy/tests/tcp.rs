//! Opaque TCP: non-HTTP bytes through an `auto` listener, half-close, and the two ways a
//! server-speaks-first protocol gets through detection (a skipped port, or the timeout).

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

async fn static_listener_proxy(
    target: std::net::SocketAddr,
    extra: &str,
) -> (TestProxy, std::net::SocketAddr) {
    let bind = free_addr();
    let proxy = proxy()
        .config(format!(
            r#"
{extra}
listeners:
  - name: db
    bind: "{bind}"
    target: "{target}"
    protocol: auto
"#
        ))
        .start()
        .await;
    (proxy, bind)
}

#[tokio::test]
async fn binary_protocol_through_an_auto_listener_is_forwarded_opaque() {
    let echo = TcpUpstream::start(TcpBehavior::Echo).await;
    let (proxy, bind) = static_listener_proxy(echo.addr, "").await;

    let mut stream = connect(bind).await;
    // A TLS ClientHello-like first byte: clearly not HTTP, so detection decides at once.
    let mut payload = vec![0x16, 0x03, 0x01];
    payload.extend(pattern(0, 128 * 1024));
    let (mut rd, mut wr) = stream.split();
    let (_, back) = tokio::join!(
        async {
            wr.write_all(&payload).await.unwrap();
        },
        async {
            let mut back = vec![0u8; payload.len()];
            within(WAIT, "the echo", rd.read_exact(&mut back))
                .await
                .unwrap();
            back
        }
    );
    assert!(back == payload, "echoed bytes differ");
    drop(stream);

    let labels = [("direction", "outbound"), ("target", "db")];
    eventually(WAIT, "the connection to be closed", || async {
        proxy
            .metrics()
            .await
            .value("weft_tcp_connections_closed_total", &labels)
            == 1.0
    })
    .await;
    let m = proxy.metrics().await;
    assert_eq!(
        m.value("weft_tcp_read_bytes_total", &labels),
        payload.len() as f64
    );
    assert_eq!(
        m.value("weft_tcp_write_bytes_total", &labels),
        payload.len() as f64
    );
    assert_eq!(
        m.value("weft_requests_total", &labels),
        0.0,
        "opaque bytes must not be parsed as HTTP requests"
    );
}

#[tokio::test]
async fn text_that_is_not_http_is_forwarded_opaque() {
    let echo = TcpUpstream::start(TcpBehavior::Echo).await;
    let (_proxy, bind) = static_listener_proxy(echo.addr, "").await;
    // Redis inline command and an SMTP greeting reply: text, but no HTTP request line.
    for line in [&b"*1\r\n$4\r\nPING\r\n"[..], b"HELO mail.example.com\r\n"] {
        let mut stream = connect(bind).await;
        stream.write_all(line).await.unwrap();
        assert_eq!(read_exactly(&mut stream, line.len()).await, line);
    }
    assert_eq!(echo.accepts(), 2);
}

#[tokio::test]
async fn half_close_still_delivers_the_whole_reply() {
    let server = TcpUpstream::start(TcpBehavior::ReplyAfterEof(b" -- replied after EOF")).await;
    let (_proxy, bind) = static_listener_proxy(server.addr, "").await;

    let mut stream = connect(bind).await;
    let request = pattern(0, 100_000);
    stream.write_all(&request).await.unwrap();
    // The server only answers once it has seen our EOF; our read side stays open.
    stream.shutdown().await.unwrap();
    let reply = read_until_closed(&mut stream, WAIT).await;
    let mut expected = request.clone();
    expected.extend_from_slice(b" -- replied after EOF");
    assert_eq!(reply.len(), expected.len());
    assert!(reply == expected, "reply differs");
}

/// Connects and measures how long the server's banner takes to arrive through the proxy,
/// then checks the connection still carries bytes the other way.
async fn banner_delay(addr: std::net::SocketAddr) -> Duration {
    let started = Instant::now();
    let mut stream = connect(addr).await;
    let banner = read_exactly(&mut stream, BANNER.len()).await;
    let elapsed = started.elapsed();
    assert_eq!(banner, BANNER);
    stream.write_all(b"QUIT\r\n").await.unwrap();
    assert_eq!(read_exactly(&mut stream, 6).await, b"QUIT\r\n");
    elapsed
}

const BANNER: &[u8] = b"220 smtp.test ESMTP ready\r\n";

#[tokio::test]
async fn a_skipped_port_is_not_held_for_detection() {
    let server = TcpUpstream::start(TcpBehavior::Banner(BANNER)).await;
    let port = server.addr.port();
    // A detection timeout far longer than the bound asserted below: only skipping detection
    // can deliver the banner in time.
    let config = format!("detectTimeout: 5s\nskipDetectPorts: [{port}]");

    // Inbound (local mode: the app's port decides).
    let inbound = proxy()
        .inbound_app(server.addr)
        .config(config.clone())
        .start()
        .await;
    let elapsed = banner_delay(inbound.inbound).await;
    assert!(
        elapsed < Duration::from_secs(2),
        "inbound banner took {elapsed:?}"
    );

    // A static `auto` listener (its target's port decides).
    let (_proxy, bind) = static_listener_proxy(server.addr, &config).await;
    let elapsed = banner_delay(bind).await;
    assert!(
        elapsed < Duration::from_secs(2),
        "static banner took {elapsed:?}"
    );
}

#[tokio::test]
async fn an_unlisted_server_first_port_waits_for_the_detection_timeout() {
    let server = TcpUpstream::start(TcpBehavior::Banner(BANNER)).await;
    let config = "detectTimeout: 200ms\nskipDetectPorts: []";

    let inbound = proxy()
        .inbound_app(server.addr)
        .config(config)
        .start()
        .await;
    let elapsed = banner_delay(inbound.inbound).await;
    assert!(
        elapsed >= Duration::from_millis(150) && elapsed < Duration::from_secs(2),
        "inbound banner took {elapsed:?}"
    );

    let (_proxy, bind) = static_listener_proxy(server.addr, config).await;
    let elapsed = banner_delay(bind).await;
    assert!(
        elapsed >= Duration::from_millis(150) && elapsed < Duration::from_secs(2),
        "static banner took {elapsed:?}"
    );
}
