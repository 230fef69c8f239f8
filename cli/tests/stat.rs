//! `weftctl stat` (and `check`'s proxy lines) against a real proxy subscribed to a real
//! control plane, both in-process, with traffic flowing: an app that answers after 20 ms and
//! fails every fifth request, called through the proxy's inbound listener.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser as _;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata:
  name: orders-1
  namespace: shop
  labels: {app: orders}
  annotations: {weft.dev/status: '{"version":"test"}'}
spec:
  serviceAccountName: orders
  containers: [{name: app, image: orders, ports: [{containerPort: 8080}]}]
"#;

const APP_DELAY: Duration = Duration::from_millis(20);

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}

/// Answers `/fail` with 500 and everything else with 200, each after [`APP_DELAY`].
async fn start_app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    tokio::time::sleep(APP_DELAY).await;
                    let status = if req.uri().path() == "/fail" {
                        500
                    } else {
                        200
                    };
                    let mut rsp = http::Response::new(Full::new(Bytes::from_static(b"ok")));
                    *rsp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    Ok::<_, Infallible>(rsp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Sends requests to `addr` one after another until `stop`; every fifth is `/fail`.
async fn traffic(addr: SocketAddr, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let path = if n % 5 == 0 { "/fail" } else { "/orders" };
        let req = http::Request::get(path)
            .header(http::header::HOST, "orders")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let rsp = tx.send_request(req).await.expect("response");
        rsp.into_body().collect().await.expect("body");
        sent.fetch_add(1, Ordering::Relaxed);
    }
}

fn weftctl(args: &[String]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_weftctl"))
        .args(args)
        .output()
        .expect("run weftctl");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.code(), text)
}

/// The cells of the table's row for `workload`.
fn row(out: &str, workload: &str) -> Vec<String> {
    out.lines()
        .find(|l| l.starts_with(workload))
        .unwrap_or_else(|| panic!("no row for {workload} in\n{out}"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn millis(cell: &str) -> f64 {
    match cell.strip_suffix("ms") {
        Some(ms) => ms.parse().unwrap(),
        None => cell.strip_suffix('s').unwrap().parse::<f64>().unwrap() * 1000.0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_shows_live_traffic_per_workload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).expect("mkdir");
    std::fs::write(manifests.join("cluster.yaml"), CLUSTER).expect("write");
    std::fs::write(
        dir.path().join("tokens.yaml"),
        "tokens:\n  - {token: orders-token, namespace: shop, serviceAccount: orders}\n",
    )
    .expect("tokens");
    std::fs::write(dir.path().join("orders.token"), "orders-token").expect("token");
    let config =
        weft_control_plane::Config::local(dir.path().join("state"), dir.path().join("tokens.yaml"))
            .with_manifests(&manifests);
    let cp = weft_control_plane::start(config)
        .await
        .expect("control plane");
    let cp_admin = cp.admin_addr.expect("admin server");
    let anchors = dir.path().join("anchors.pem");
    std::fs::write(&anchors, &cp.bundle_pem).expect("anchors");

    let app = start_app().await;
    let admin = free_addr();
    let argv: Vec<String> = [
        "weft-proxy",
        "--mode",
        "local",
        "--outbound-addr",
        "127.0.0.1:0",
        "--inbound-addr",
        "127.0.0.1:0",
        "--namespace",
        "shop",
        "--service-account",
        "orders",
        "--pod-name",
        "orders-1",
    ]
    .map(String::from)
    .into_iter()
    .chain([
        "--admin-addr".into(),
        admin.to_string(),
        "--inbound-app".into(),
        app.to_string(),
        "--control-plane-addr".into(),
        cp.addr.to_string(),
        "--trust-anchors".into(),
        anchors.display().to_string(),
        "--identity-token-file".into(),
        dir.path().join("orders.token").display().to_string(),
    ])
    .collect();
    let args = weft_proxy::bootstrap::Cli::try_parse_from(&argv)
        .expect("proxy arguments")
        .run;
    let proxy = weft_proxy::Proxy::start(args, Box::new(|_| Ok(())))
        .await
        .expect("proxy starts");
    let inbound = proxy.inbound_addrs[0];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cp
        .subscribers()
        .iter()
        .any(|s| s.acked_version == s.sent_version && !s.sent_version.is_empty())
    {
        assert!(Instant::now() < deadline, "the proxy never applied a view");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let client = tokio::spawn(traffic(inbound, stop.clone(), sent.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Named by the pod the proxy serves (weft_proxy_info); an unreachable proxy is a ✗ line
    // and exit code 1.
    let stat = ["stat", "--once", "--interval", "1s", "--proxy"]
        .map(String::from)
        .into_iter()
        .chain([
            admin.to_string(),
            "--proxy".into(),
            "gone=127.0.0.1:1".into(),
        ])
        .collect::<Vec<_>>();
    let (code, out) = tokio::task::spawn_blocking(move || weftctl(&stat))
        .await
        .unwrap();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("✗ gone (127.0.0.1:1)"), "{out}");
    assert!(!out.contains('\x1b'), "no colours off a terminal:\n{out}");
    let header = row(&out, "WORKLOAD");
    assert_eq!(
        header,
        ["WORKLOAD", "RPS", "SUCCESS", "P50", "P95", "P99", "MTLS", "REQUESTS"]
    );
    let cells = row(&out, "shop/orders-1");
    // Sequential requests of 20 ms: at most 50 per second.
    let rps: f64 = cells[1].parse().unwrap();
    assert!(rps > 5.0 && rps <= 50.0, "{out}");
    let success: f64 = cells[2].trim_end_matches('%').parse().unwrap();
    assert!(
        (70.0..=90.0).contains(&success),
        "every fifth fails:\n{out}"
    );
    let (p50, p99) = (millis(&cells[3]), millis(&cells[5]));
    assert!(
        p50 >= 16.0 && p50 <= 33.0,
        "p50 is in the 20 ms bucket:\n{out}"
    );
    assert!(p99 >= p50, "{out}");
    assert_eq!(cells[6], "0%", "plaintext callers:\n{out}");
    let total: u64 = cells[7].parse().unwrap();
    assert!(
        total > 0 && total <= sent.load(Ordering::Relaxed) + 1,
        "{out}"
    );

    // The proxies the control plane lists, at their address and --admin-port.
    let stat = [
        "stat",
        "--once",
        "--interval",
        "500ms",
        "--control-plane-admin",
    ]
    .map(String::from)
    .into_iter()
    .chain([
        cp_admin.to_string(),
        "--admin-port".into(),
        admin.port().to_string(),
    ])
    .collect::<Vec<_>>();
    let (code, out) = tokio::task::spawn_blocking(move || weftctl(&stat))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{out}");
    let cells = row(&out, "shop/orders-1");
    assert_ne!(cells[1], "-", "{out}");

    // Outbound: this proxy called nothing.
    let stat = [
        "stat",
        "--once",
        "--interval",
        "200ms",
        "--direction",
        "outbound",
        "--proxy",
    ]
    .map(String::from)
    .into_iter()
    .chain([format!("orders={admin}")])
    .collect::<Vec<_>>();
    let (code, out) = tokio::task::spawn_blocking(move || weftctl(&stat))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out.lines().count(), 1, "only the header:\n{out}");

    // check: the proxy is on its latest view and runs the control plane's version.
    let check = vec![
        "check".to_owned(),
        "--control-plane-admin".into(),
        cp_admin.to_string(),
    ];
    let (code, out) = tokio::task::spawn_blocking(move || weftctl(&check))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("✓ 1 proxies connected, all on their latest view"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "✓ 1 proxies run the control plane's version {}",
            env!("CARGO_PKG_VERSION")
        )),
        "{out}"
    );

    stop.store(true, Ordering::Relaxed);
    client.await.unwrap();
    proxy.shutdown().await;
    cp.shutdown().await.expect("shutdown");
}
