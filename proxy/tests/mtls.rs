//! Mutual TLS between two proxies with certificates from files: HTTP/1.1 carried as HTTP/2
//! over one mTLS connection and restored for the app, the caller's SPIFFE ID in the metrics,
//! and every refusal — wrong identity, unknown CA, expired certificate, no client certificate,
//! plaintext on a STRICT port. Standard clients (openssl, curl) with an issued certificate.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use http::{StatusCode, Version};
use support::pki::{spiffe, IdentityFiles, TestCa};
use support::*;
use time::OffsetDateTime;

struct Mesh {
    app: Upstream,
    client: TestProxy,
    server: TestProxy,
    /// The client proxy's static listener for the meshed service.
    listener: SocketAddr,
    _files: Vec<IdentityFiles>,
}

/// `client proxy (web) --mTLS--> server proxy (orders) --> app`, the client expecting
/// `expected` at the far end.
async fn mesh(
    ca: &TestCa,
    client_cert: IdentityFiles,
    server_cert: IdentityFiles,
    expected: &str,
    server_mode: &str,
) -> Mesh {
    let app = Upstream::start("app").await;
    let server = proxy()
        .inbound_app(app.addr)
        .config(format!("inboundMtls: {{default: {server_mode}}}"))
        .args(server_cert.args())
        .start()
        .await;
    let listener = free_addr();
    let client = proxy()
        .config(format!(
            "listeners:\n  - name: orders\n    bind: \"{listener}\"\n    target: \"{}\"\n    identity: \"{expected}\"\n",
            server.inbound
        ))
        .args(client_cert.args())
        .start()
        .await;
    let _ = ca;
    Mesh {
        app,
        client,
        server,
        listener,
        _files: vec![client_cert, server_cert],
    }
}

fn web() -> String {
    spiffe("shop", "web")
}

fn orders() -> String {
    spiffe("shop", "orders")
}

async fn standard_mesh(server_mode: &str) -> Mesh {
    let ca = TestCa::new("mesh root");
    let client = IdentityFiles::new(&ca.issue(&web()), &[&ca]);
    let server = IdentityFiles::new(&ca.issue(&orders()), &[&ca]);
    mesh(&ca, client, server, &orders(), server_mode).await
}

#[tokio::test]
async fn http1_crosses_the_mesh_hop_as_http2_over_one_mtls_connection() {
    let m = standard_mesh("strict").await;
    for _ in 0..2 {
        let mut client = H1Client::connect(m.listener).await;
        for i in 0..3 {
            let reply = client.get(&format!("/hello/{i}")).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            assert_eq!(reply.text(), "app");
        }
    }
    let seen = m.app.seen();
    assert_eq!(seen.len(), 6);
    for s in &seen {
        assert_eq!(s.version, Version::HTTP_11, "the app gets HTTP/1.1 back");
        assert!(
            !s.headers.contains_key("weft-orig-proto"),
            "the mesh marker is removed"
        );
        assert!(
            s.headers.contains_key("host"),
            "Host is restored from :authority"
        );
    }
    let server = m.server.metrics().await;
    let (web_id, orders_id) = (web(), orders());
    let inbound = [
        ("direction", "inbound"),
        ("tls", "true"),
        ("client_id", web_id.as_str()),
    ];
    assert_eq!(server.value("weft_requests_total", &inbound), 6.0);
    assert_eq!(
        server.sum(
            "weft_tcp_connections_opened_total",
            &[("direction", "inbound")]
        ),
        1.0,
        "every request shared one multiplexed mesh connection"
    );
    let client = m.client.metrics().await;
    let outbound = [
        ("direction", "outbound"),
        ("target", "orders"),
        ("server_id", orders_id.as_str()),
    ];
    assert_eq!(client.value("weft_requests_total", &outbound), 6.0);
}

#[tokio::test]
async fn a_peer_with_another_identity_is_refused() {
    let ca = TestCa::new("mesh root");
    let client = IdentityFiles::new(&ca.issue(&web()), &[&ca]);
    let server = IdentityFiles::new(&ca.issue(&orders()), &[&ca]);
    let m = mesh(&ca, client, server, &spiffe("shop", "payments"), "strict").await;
    let reply = get_once(m.listener, "/").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        reply.header("weft-proxy-error"),
        Some("tls-handshake-failed")
    );
    assert!(
        reply
            .text()
            .contains("spiffe://test.local/ns/shop/sa/payments"),
        "{}",
        reply.text()
    );
    assert!(m.app.seen().is_empty());
}

#[tokio::test]
async fn a_client_certificate_from_an_unknown_ca_is_refused() {
    let (mesh_ca, rogue_ca) = (TestCa::new("mesh root"), TestCa::new("rogue root"));
    // The client trusts the server, but its own certificate comes from a CA the server
    // doesn't know.
    let client = IdentityFiles::new(&rogue_ca.issue(&web()), &[&mesh_ca, &rogue_ca]);
    let server = IdentityFiles::new(&mesh_ca.issue(&orders()), &[&mesh_ca]);
    let m = mesh(&mesh_ca, client, server, &orders(), "strict").await;
    let reply = get_once(m.listener, "/").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert!(m.app.seen().is_empty());
    eventually(
        WAIT,
        "the server to count the refused handshake",
        || async {
            m.server.metrics().await.sum(
                "weft_errors_total",
                &[("direction", "inbound"), ("kind", "tls_handshake")],
            ) >= 1.0
        },
    )
    .await;
}

#[tokio::test]
async fn an_expired_server_certificate_is_refused() {
    let ca = TestCa::new("mesh root");
    let now = OffsetDateTime::now_utc();
    let expired = ca.issue_with(
        vec![rcgen::SanType::URI(orders().as_str().try_into().unwrap())],
        now - time::Duration::days(2),
        now - time::Duration::days(1),
    );
    let client = IdentityFiles::new(&ca.issue(&web()), &[&ca]);
    let server = IdentityFiles::new(&expired, &[&ca]);
    let m = mesh(&ca, client, server, &orders(), "strict").await;
    let reply = get_once(m.listener, "/").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        reply.header("weft-proxy-error"),
        Some("tls-handshake-failed")
    );
    assert!(
        reply.text().to_lowercase().contains("expired"),
        "{}",
        reply.text()
    );
    assert!(m.app.seen().is_empty());
    // A proxy whose only certificate has expired is not ready.
    let ready = admin(m.server.admin, http::Method::GET, "/ready", "").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready.text().contains("certificate"), "{}", ready.text());
    let client_ready = admin(m.client.admin, http::Method::GET, "/ready", "").await;
    assert_eq!(client_ready.status, StatusCode::OK);
}

#[tokio::test]
async fn plaintext_is_refused_on_a_strict_port_and_labelled_on_a_permissive_one() {
    let strict = standard_mesh("strict").await;
    let mut raw = connect(strict.server.inbound).await;
    use tokio::io::AsyncWriteExt;
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let rest = read_until_closed(&mut raw, Duration::from_secs(3)).await;
    assert!(
        rest.is_empty(),
        "a STRICT port answered plaintext: {:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(strict.app.seen().is_empty());
    let errors = strict
        .server
        .metrics()
        .await
        .sum("weft_errors_total", &[("kind", "plaintext_refused")]);
    assert_eq!(errors, 1.0);

    let permissive = standard_mesh("permissive").await;
    let reply = get_once(permissive.server.inbound, "/plain").await;
    assert_eq!(reply.status, StatusCode::OK);
    let m = permissive.server.metrics().await;
    assert_eq!(
        m.value(
            "weft_requests_total",
            &[("direction", "inbound"), ("tls", "false")]
        ),
        1.0
    );
    // The meshed caller on the same port is still mTLS.
    assert_eq!(
        get_once(permissive.listener, "/meshed").await.status,
        StatusCode::OK
    );
    let m = permissive.server.metrics().await;
    assert_eq!(
        m.value(
            "weft_requests_total",
            &[("direction", "inbound"), ("tls", "true")]
        ),
        1.0
    );
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
        || Command::new(tool).arg("version").output().is_ok()
}

/// openssl s_client with the given extra args; returns what the server sent back.
fn openssl_get(addr: SocketAddr, extra: &[String]) -> String {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-tls1_3",
            "-verify_return_error",
            "-connect",
            &addr.to_string(),
        ])
        .args(extra)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET /openssl HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[tokio::test]
async fn openssl_and_curl_with_an_issued_certificate_talk_to_the_inbound_port() {
    assert!(
        have("openssl"),
        "openssl is needed (apt-get install openssl)"
    );
    let ca = TestCa::new("mesh root");
    let server = IdentityFiles::new(&ca.issue(&orders()), &[&ca]);
    let caller = IdentityFiles::new(&ca.issue(&spiffe("ops", "debugger")), &[&ca]);
    let client = IdentityFiles::new(&ca.issue(&web()), &[&ca]);
    let m = mesh(&ca, client, server, &orders(), "strict").await;
    let inbound = m.server.inbound;

    let with_cert = vec![
        "-cert".to_string(),
        caller.cert.display().to_string(),
        "-key".into(),
        caller.key.display().to_string(),
        "-CAfile".into(),
        caller.bundle.display().to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || openssl_get(inbound, &with_cert))
        .await
        .unwrap();
    assert!(out.contains("HTTP/1.1 200"), "{out}");
    let m2 = m.server.metrics().await;
    let caller_id = spiffe("ops", "debugger");
    assert_eq!(
        m2.value(
            "weft_requests_total",
            &[("direction", "inbound"), ("client_id", caller_id.as_str())]
        ),
        1.0
    );

    // No client certificate: the handshake is refused and nothing reaches the app.
    let without = vec!["-CAfile".to_string(), caller.bundle.display().to_string()];
    let out = tokio::task::spawn_blocking(move || openssl_get(inbound, &without))
        .await
        .unwrap();
    assert!(!out.contains("HTTP/1.1 200"), "{out}");
    assert_eq!(m.app.seen().len(), 1);

    if have("curl") {
        let (cert, key) = (caller.cert.clone(), caller.key.clone());
        let out = tokio::task::spawn_blocking(move || {
            Command::new("curl")
                .args(["-sS", "--http1.1", "-k", "--max-time", "5", "--cert"])
                .arg(cert)
                .arg("--key")
                .arg(key)
                .arg(format!("https://{inbound}/curl"))
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "app");
    }
}

#[tokio::test]
async fn a_websocket_upgrade_crosses_the_mesh_hop() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let m = standard_mesh("strict").await;
    let mut ws = connect(m.listener).await;
    ws.write_all(
        b"GET /ws HTTP/1.1\r\nHost: orders\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let (head, _) = read_head(&mut ws).await;
    assert!(
        head.to_ascii_lowercase().starts_with("http/1.1 101"),
        "{head}"
    );
    ws.write_all(b"\x81\x05hello").await.unwrap();
    let mut back = [0u8; 7];
    within(
        WAIT,
        "the echo over the upgraded mesh connection",
        ws.read_exact(&mut back),
    )
    .await
    .unwrap();
    assert_eq!(&back, b"\x81\x05hello");
    let seen = m.app.seen_path("/ws").unwrap();
    assert_eq!(seen.version, Version::HTTP_11);
}

#[tokio::test]
async fn opaque_bytes_cross_the_mesh_hop_on_their_own_mtls_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = TestCa::new("mesh root");
    let echo = TcpUpstream::start(TcpBehavior::Echo).await;
    let server_files = IdentityFiles::new(&ca.issue(&orders()), &[&ca]);
    let client_files = IdentityFiles::new(&ca.issue(&web()), &[&ca]);
    let server = proxy()
        .inbound_app(echo.addr)
        .config("inboundMtls: {default: strict}")
        .args(server_files.args())
        .start()
        .await;
    let listener = free_addr();
    let client = proxy()
        .config(format!(
            "listeners:\n  - name: db\n    bind: \"{listener}\"\n    target: \"{}\"\n    protocol: opaque\n    identity: \"{}\"\n",
            server.inbound,
            orders()
        ))
        .args(client_files.args())
        .start()
        .await;
    let mut stream = connect(listener).await;
    let payload = pattern(0, 64 * 1024);
    stream.write_all(&payload).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    within(
        WAIT,
        "the echo through both proxies",
        stream.read_to_end(&mut back),
    )
    .await
    .unwrap();
    assert!(
        back == payload,
        "echoed bytes differ ({} of {})",
        back.len(),
        payload.len()
    );
    let web_id = web();
    let m = server.metrics().await;
    assert_eq!(
        m.value(
            "weft_tcp_read_bytes_total",
            &[("direction", "inbound"), ("client_id", web_id.as_str())]
        ),
        payload.len() as f64
    );
    assert_eq!(
        m.sum("weft_requests_total", &[]),
        0.0,
        "opaque bytes are not HTTP requests"
    );
    drop(client);
}
