//! The webhook over real HTTPS: reviews on keep-alive HTTP/1.1 and HTTP/2 connections,
//! malformed and oversized requests, metrics, readiness during shutdown, and the serving
//! certificate reloaded when its files change.

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::Value;
use support::https::{self, Pki, H1, H2};
use support::*;
use weft_injector::server::{Server, Settings};

struct Running {
    server: Server,
    pki: Pki,
    dir: tempfile::TempDir,
}

async fn start(adjust: impl FnOnce(&mut Settings)) -> Running {
    let pki = Pki::new("test webhook CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki.leaf().write(dir.path());
    let mut settings = Settings::new("127.0.0.1:0".parse().unwrap(), cert, key);
    adjust(&mut settings);
    let server = Server::start(settings).await.expect("the server starts");
    Running { server, pki, dir }
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("a JSON body")
}

fn text(body: &[u8]) -> &str {
    std::str::from_utf8(body).unwrap()
}

#[tokio::test]
async fn reviews_on_keep_alive_http1_and_http2() {
    let running = start(|_| {}).await;
    let addr = running.server.local_addr();
    let ca = running.pki.ca_pem.as_str();

    let mut h1 = H1::connect(addr, &[ca]).await;
    for _ in 0..3 {
        let rsp = h1
            .post("/mutate", fixture_bytes("deployment_pod.json"))
            .await;
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(rsp.headers()["content-type"], "application/json");
        let review = fixture("deployment_pod.json");
        let response = response_of(&review, rsp.body());
        let injected = pod(&apply(&review, &response));
        check_injected(
            &original_pod(&review),
            &injected,
            weft_injector::SidecarMode::Native,
        );
    }
    let rsp = h1.post("/mutate", fixture_bytes("opt_out.json")).await;
    let response = response_of(&fixture("opt_out.json"), rsp.body());
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none());
    // A malformed review on the same connection, and the connection carries on.
    let rsp = h1.post("/mutate", "{}").await;
    assert_eq!(rsp.status(), StatusCode::BAD_REQUEST);
    let rsp = h1.post("/mutate", fixture_bytes("host_network.json")).await;
    assert_eq!(rsp.status(), StatusCode::OK);
    assert!(!h1.is_closed());

    let mut h2 = H2::connect(addr, &[ca]).await;
    let rsp = h2
        .post("/mutate", fixture_bytes("init_containers_probes.json"))
        .await;
    assert_eq!(rsp.status(), StatusCode::OK);
    let review = fixture("init_containers_probes.json");
    apply(&review, &response_of(&review, rsp.body()));
}

#[tokio::test]
async fn malformed_requests_get_clear_errors_and_the_server_carries_on() {
    let running = start(|s| s.max_body_bytes = 64 << 10).await;
    let addr = running.server.local_addr();
    let ca = running.pki.ca_pem.as_str();
    let mut h1 = H1::connect(addr, &[ca]).await;

    let cases: [(&str, &[u8], &str); 4] = [
        ("not JSON", b"\x00\xffnot json", "not an admission.k8s.io/v1 AdmissionReview"),
        ("wrong kind", br#"{"apiVersion":"v1","kind":"Pod","metadata":{}}"#, "apiVersion \"v1\""),
        ("no request", br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#, "no `request`"),
        (
            "no uid",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"operation":"CREATE"}}"#,
            "no `request.uid`",
        ),
    ];
    for (what, body, needle) in cases {
        let rsp = h1.post("/mutate", body.to_vec()).await;
        assert_eq!(rsp.status(), StatusCode::BAD_REQUEST, "{what}");
        assert!(
            text(rsp.body()).contains(needle),
            "{what}: {:?}",
            text(rsp.body())
        );
    }

    // Too large, declared or not.
    let rsp = h1.post("/mutate", vec![b' '; 100 << 10]).await;
    assert_eq!(rsp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(text(rsp.body()).contains("at most 65536 bytes"));
    {
        // Chunked, so only the bytes read tell the size.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut tls, _) = https::connect(addr, https::client_config(&[ca], &[]))
            .await
            .unwrap();
        let chunk = vec![b' '; 100 << 10];
        let mut request =
            b"POST /mutate HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        request.extend(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend(&chunk);
        request.extend(b"\r\n0\r\n\r\n");
        // The server may answer before reading it all; a write error then is fine.
        let _ = tls.write_all(&request).await;
        let mut head = [0u8; 12];
        tls.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 413");
    }

    // Wrong method and path.
    let mut h1 = H1::connect(addr, &[ca]).await;
    assert_eq!(
        h1.get("/mutate").await.status(),
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(h1.get("/nothing").await.status(), StatusCode::NOT_FOUND);

    // Not TLS at all, and TLS that never finishes its handshake: dropped, nothing else.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
        plain
            .write_all(b"POST /mutate HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "a plaintext client is disconnected");
        let _half_open = tokio::net::TcpStream::connect(addr).await.unwrap();
    }

    // A pod the types cannot read: admitted, with a warning.
    let rsp = h1
        .post("/mutate", fixture_bytes("unreadable_pod.json"))
        .await;
    let response = response_of(&fixture("unreadable_pod.json"), rsp.body());
    assert_eq!(response["allowed"], true);
    assert!(response["warnings"][0]
        .as_str()
        .unwrap()
        .contains("without the Weft sidecar"));

    // And a good review still works, on a new connection too.
    let mut fresh = H1::connect(addr, &[ca]).await;
    let rsp = fresh
        .post("/mutate", fixture_bytes("deployment_pod.json"))
        .await;
    assert_eq!(rsp.status(), StatusCode::OK);
    assert!(json(rsp.body())["response"]["patch"].is_string());

    let metrics = text(fresh.get("/metrics").await.body()).to_owned();
    for line in [
        "weft_injector_errors_total{kind=\"bad_review\"} 4",
        "weft_injector_errors_total{kind=\"body_too_large\"} 2",
        "weft_injector_errors_total{kind=\"unreadable_pod\"} 1",
        "weft_injector_injections_total{sidecar=\"native\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

#[tokio::test]
async fn metrics_count_injections_skips_and_errors() {
    let running = start(|s| s.inject.sidecar = weft_injector::SidecarMode::Classic).await;
    let addr = running.server.local_addr();
    let mut h1 = H1::connect(addr, &[running.pki.ca_pem.as_str()]).await;
    for name in [
        "deployment_pod.json",
        "annotations_job.json",
        "opt_out.json",
        "host_network.json",
        "already_injected.json",
        "deployment_object.json",
        "pod_update.json",
        "invalid_annotation.json",
    ] {
        let rsp = h1.post("/mutate", fixture_bytes(name)).await;
        assert_eq!(rsp.status(), StatusCode::OK, "{name}");
    }
    let rsp = h1.get("/metrics").await;
    assert_eq!(rsp.status(), StatusCode::OK);
    assert!(rsp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let metrics = text(rsp.body());
    for line in [
        "weft_injector_injections_total{sidecar=\"classic\"} 2",
        "weft_injector_skips_total{reason=\"disabled\"} 1",
        "weft_injector_skips_total{reason=\"host_network\"} 1",
        "weft_injector_skips_total{reason=\"already_injected\"} 1",
        "weft_injector_skips_total{reason=\"not_pod_create\"} 2",
        "weft_injector_errors_total{kind=\"invalid_annotation\"} 1",
        "weft_injector_review_duration_seconds_count 8",
        "weft_injector_cert_reloads_total{result=\"ok\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    assert!(metrics.contains("weft_injector_cert_expiration_timestamp_seconds "));

    // promtool reads the Prometheus text format, which a scraper asks for by Accept.
    let mut req = support::https::get("/metrics");
    req.headers_mut()
        .insert("accept", "text/plain; version=0.0.4".parse().unwrap());
    let rsp = h1.send(req).await;
    assert!(rsp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let plain = text(rsp.body());
    assert!(
        plain.contains("# TYPE weft_injector_injections_total counter"),
        "{plain}"
    );
    assert!(
        !plain.contains("# EOF"),
        "no OpenMetrics terminator:\n{plain}"
    );
}

#[tokio::test]
async fn live_ready_and_a_graceful_shutdown() {
    let running = start(|s| s.shutdown_delay = Duration::from_millis(600)).await;
    let addr = running.server.local_addr();
    let mut h1 = H1::connect(addr, &[running.pki.ca_pem.as_str()]).await;
    assert_eq!(h1.get("/live").await.status(), StatusCode::OK);
    assert_eq!(h1.get("/ready").await.status(), StatusCode::OK);

    let shutdown = tokio::spawn(running.server.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Not ready, but still answering reviews during the delay.
    assert_eq!(
        h1.get("/ready").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(h1.get("/live").await.status(), StatusCode::OK);
    let rsp = h1
        .post("/mutate", fixture_bytes("deployment_pod.json"))
        .await;
    assert_eq!(rsp.status(), StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the port is closed"
    );
}

#[tokio::test]
async fn the_certificate_is_reloaded_when_its_files_change() {
    let running = start(|_| {}).await;
    let addr = running.server.local_addr();
    let next_ca = Pki::new("rotated webhook CA");
    let trust = [running.pki.ca_pem.as_str(), next_ca.ca_pem.as_str()];
    let config = https::client_config(&trust, &[b"http/1.1"]);
    let presented = || async { https::connect(addr, config.clone()).await.unwrap().1 };
    let first = presented().await;

    // A keep-alive connection made before the rotation.
    let mut before = H1::connect(addr, &trust).await;

    // Half a rotation: the new certificate with the old key. Refused; the old pair serves.
    let next = next_ca.leaf();
    let cert_path = running.dir.path().join("tls.crt");
    let key_path = running.dir.path().join("tls.key");
    std::fs::write(&cert_path, &next.cert_pem).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut metrics = String::new();
    while Instant::now() < deadline {
        metrics = running.server.metrics().encode();
        if metrics.contains("weft_injector_cert_reloads_total{result=\"error\"}") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        metrics.contains("weft_injector_cert_reloads_total{result=\"error\"}"),
        "{metrics}"
    );
    assert_eq!(presented().await, first, "a mismatched pair is not taken");

    // The key arrives: new handshakes get the new certificate.
    std::fs::write(&key_path, &next.key_pem).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = presented().await;
        if now == next.der {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not loaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(running
        .server
        .metrics()
        .encode()
        .contains("weft_injector_cert_reloads_total{result=\"ok\"} 2"));
    // The connection made before is untouched and still served.
    let rsp = before
        .post("/mutate", fixture_bytes("deployment_pod.json"))
        .await;
    assert_eq!(rsp.status(), StatusCode::OK);
    // A client that trusts only the old CA now fails.
    let old_only = https::client_config(&[running.pki.ca_pem.as_str()], &[]);
    assert!(https::connect(addr, old_only).await.is_err());
}
