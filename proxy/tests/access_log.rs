//! Access logs end to end: proxies with the log on (from the config file, from the flag,
//! and switched on by a reload) serve allowed, denied and failed requests, and every line
//! of the log is parsed as JSON and checked field by field.
//!
//! ```text
//! client ─> proxy (web, files) ──mTLS──> proxy (orders, control plane: deny /admin*) ─> app
//!              └─ dead target (connect refused)
//! client ─> proxy (web-1, control plane: Services orders, flaky) ─> faulty upstreams
//! ```

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use serde_json::Value;
use weft_api::proto::discovery::v1 as pb;

use support::discovery::{inbound, policy, view, TestControlPlane};
use support::faulty::{self, backend, route, service, services_view, Faults, Faulty};
use support::pki::{spiffe, IdentityFiles};
use support::*;

/// The log's lines once there are at least `n`, each parsed as a JSON object.
async fn lines(path: &Path, n: usize) -> Vec<Value> {
    let mut text = String::new();
    eventually(WAIT, &format!("{n} lines in {}", path.display()), || {
        text = std::fs::read_to_string(path).unwrap_or_default();
        std::future::ready(text.lines().count() >= n)
    })
    .await;
    text.lines()
        .map(|line| {
            let json: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            assert!(json.is_object(), "{line}");
            json
        })
        .collect()
}

/// The one line with this path and direction.
fn line<'a>(lines: &'a [Value], direction: &str, path: &str) -> &'a Value {
    let found: Vec<&Value> = lines
        .iter()
        .filter(|l| l["direction"] == direction && l["path"] == path)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {direction} line for {path} in {lines:#?}"
    );
    found[0]
}

/// Every line has every field, with the types the docs promise.
fn check_shape(line: &Value) {
    const KEYS: [&str; 19] = [
        "timestamp",
        "direction",
        "method",
        "authority",
        "path",
        "protocol",
        "status",
        "duration_ms",
        "bytes_in",
        "bytes_out",
        "upstream",
        "client_id",
        "server_id",
        "target",
        "route",
        "authz_policy",
        "retries",
        "proxy_error",
        "trace_id",
    ];
    let object = line.as_object().unwrap();
    for key in KEYS {
        assert!(object.contains_key(key), "{key} missing from {line}");
    }
    assert_eq!(object.len(), KEYS.len(), "{line}");
    // RFC 3339, UTC, milliseconds: 2025-01-31T12:34:56.789Z
    let ts = line["timestamp"].as_str().unwrap();
    let shape: Vec<bool> = ts.chars().map(|c| c.is_ascii_digit()).collect();
    assert_eq!(ts.len(), 24, "{ts}");
    assert!(
        ts.ends_with('Z') && &ts[10..11] == "T" && &ts[19..20] == "." && shape[20..23] == [true; 3],
        "{ts}"
    );
    assert!(line["duration_ms"].as_f64().unwrap() >= 0.0, "{line}");
    assert!(
        line["bytes_out"].is_u64() && line["retries"].is_u64(),
        "{line}"
    );
    assert!(line["status"].is_u64(), "{line}");
    assert!(
        !line.to_string().contains("secret"),
        "no query string: {line}"
    );
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test]
async fn allowed_denied_and_failed_requests_each_get_a_line_with_their_fields() {
    // The server proxy: authorization from a control plane denying /admin* to everyone,
    // access log from its config file.
    let cp = TestControlPlane::start().await;
    let deny = policy("deny-admin", pb::Action::Deny, &[], &["/admin*"]);
    cp.push(view("v1", inbound(vec![deny])));
    let app = Upstream::start("app").await;
    let dir = TempDir::new();
    let (server_log, client_log) = (dir.path().join("orders.log"), dir.path().join("web.log"));
    let server = proxy()
        .inbound_app(app.addr)
        .config(format!(
            "inboundMtls: {{default: strict}}\naccessLog:\n  format: json\n  path: {}\n",
            server_log.display()
        ))
        .args(cp.proxy_args("orders", Some("orders-1")))
        .start()
        .await;
    eventually(WAIT, "the server proxy to be ready", || async {
        admin(server.admin, Method::GET, "/ready", "").await.status == StatusCode::OK
    })
    .await;

    // The client proxy: certificate from files, access log from the flag; one listener to
    // the server, one to a port nobody listens on.
    let files = IdentityFiles::new(&cp.ca().issue(&spiffe("shop", "web")), &[cp.ca()]);
    let (to_orders, to_nowhere, nowhere) = (free_addr(), free_addr(), free_addr());
    let client = proxy()
        .config(format!(
            "listeners:\n  - name: orders\n    bind: \"{to_orders}\"\n    target: \"{}\"\n    identity: \"{}\"\n  - name: gone\n    bind: \"{to_nowhere}\"\n    target: \"{nowhere}\"\n",
            server.inbound,
            spiffe("shop", "orders"),
        ))
        .args(files.args())
        .args(["--access-log", &client_log.display().to_string()])
        .start()
        .await;

    let allowed = Request::builder()
        .uri("/items/1?token=secret")
        .header("host", "orders.shop:8080")
        .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
        .header("content-length", "5")
        .body(full("hello"))
        .unwrap();
    let reply = call(to_orders, allowed).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let denied = get_once(to_orders, "/admin/users").await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN, "{}", denied.text());
    let failed = get_once(to_nowhere, "/anything?secret=1").await;
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY, "{}", failed.text());

    let (web_id, orders_id) = (spiffe("shop", "web"), spiffe("shop", "orders"));
    let server_lines = lines(&server_log, 2).await;
    let client_lines = lines(&client_log, 3).await;
    for l in server_lines.iter().chain(&client_lines) {
        check_shape(l);
    }

    // Allowed, inbound: the caller's identity, the app as upstream, the trace it carried.
    let inb = line(&server_lines, "inbound", "/items/1");
    assert_eq!(inb["method"], "GET");
    assert_eq!(inb["status"], 200);
    assert_eq!(inb["protocol"], "HTTP/2", "the mesh hop");
    assert_eq!(inb["authority"], "orders.shop:8080");
    assert_eq!(inb["client_id"], web_id.as_str());
    assert_eq!(inb["server_id"], Value::Null);
    assert_eq!(inb["upstream"], app.addr.to_string());
    assert_eq!(inb["bytes_in"], 5);
    assert_eq!(inb["bytes_out"], 3, "the app answers `app`");
    assert_eq!(inb["trace_id"], TRACE, "from the request, with tracing off");
    assert_eq!(inb["retries"], 0);
    assert_eq!(inb["proxy_error"], Value::Null);
    assert_eq!(inb["authz_policy"], Value::Null);

    // Allowed, outbound: the identity the server had to present.
    let out = line(&client_lines, "outbound", "/items/1");
    assert_eq!(out["status"], 200);
    assert_eq!(out["protocol"], "HTTP/1.1");
    assert_eq!(out["server_id"], orders_id.as_str());
    assert_eq!(out["client_id"], Value::Null);
    assert_eq!(out["upstream"], server.inbound.to_string());
    assert_eq!(out["trace_id"], TRACE);

    // Denied: the policy, and no upstream on the server's side.
    let inb = line(&server_lines, "inbound", "/admin/users");
    assert_eq!(inb["status"], 403);
    assert_eq!(inb["authz_policy"], "shop/deny-admin");
    assert_eq!(inb["upstream"], Value::Null, "the app never saw it");
    assert_eq!(inb["trace_id"], Value::Null);
    let out = line(&client_lines, "outbound", "/admin/users");
    assert_eq!(out["status"], 403);
    assert_eq!(
        out["authz_policy"], "shop/deny-admin",
        "the caller's side says who denied it"
    );

    // A proxy error: its code, and where the proxy tried to go.
    let out = line(&client_lines, "outbound", "/anything");
    assert_eq!(out["status"], 502);
    assert_eq!(out["proxy_error"], "connect-refused");
    assert_eq!(out["upstream"], nowhere.to_string());
    let _ = reply;

    let metrics = client.metrics().await;
    assert_eq!(metrics.value("weft_access_log_lines_total", &[]), 3.0);
    assert_eq!(
        metrics.value("weft_access_log_dropped_total", &[("reason", "queue_full")]),
        0.0
    );
}

/// A control plane with these Services, and the client's proxy subscribed to it with the
/// access log going to `log`.
async fn traffic_proxy(services: Vec<pb::Service>, log: &Path) -> (TestControlPlane, TestProxy) {
    let cp = TestControlPlane::start().await;
    cp.push(services_view("v1", services));
    let proxy = proxy()
        .config(format!("accessLog: {{path: {}}}\n", log.display()))
        .args(cp.proxy_args("web", Some("web-1")))
        .start()
        .await;
    assert_eq!(cp.ack("v1").await.error, "");
    eventually(WAIT, "the proxy to be ready", || async {
        admin(proxy.admin, Method::GET, "/ready", "").await.status == StatusCode::OK
    })
    .await;
    (cp, proxy)
}

#[tokio::test]
async fn calls_to_meshed_services_log_their_service_route_and_retries() {
    let v1 = Faulty::start("v1", Faults::healthy()).await;
    let broken = Faulty::start("broken", Faults::failing(503)).await;
    let mut orders = service("orders", &[]);
    orders.routes = vec![route(
        "orders-split",
        vec![pb::RouteRule {
            backends: vec![backend("orders-v1", 1)],
            ..Default::default()
        }],
    )];
    let dir = TempDir::new();
    let log = dir.path().join("access.log");
    let (_cp, proxy) = traffic_proxy(
        vec![
            orders,
            service("orders-v1", &[v1.addr]),
            service("flaky", &[broken.addr]),
        ],
        &log,
    )
    .await;

    let routed = call(
        proxy.outbound,
        faulty::request(Method::GET, "orders", "/item/7?secret=1", Bytes::new()),
    )
    .await;
    assert_eq!(routed.status, StatusCode::OK, "{}", routed.text());
    let retried = call(
        proxy.outbound,
        faulty::request(Method::GET, "flaky", "/again", Bytes::new()),
    )
    .await;
    assert_eq!(retried.status, StatusCode::SERVICE_UNAVAILABLE);

    let lines = lines(&log, 2).await;
    lines.iter().for_each(check_shape);
    let ok = line(&lines, "outbound", "/item/7");
    assert_eq!(ok["target"], "shop/orders:80");
    assert_eq!(ok["route"], "shop/orders-split");
    assert_eq!(ok["upstream"], v1.addr.to_string());
    assert_eq!(ok["retries"], 0);
    assert_eq!(ok["authority"], faulty::host("orders"));
    let failed = line(&lines, "outbound", "/again");
    assert_eq!(failed["target"], "shop/flaky:80");
    assert_eq!(failed["route"], Value::Null, "no route attached");
    assert_eq!(failed["status"], 503);
    assert_eq!(
        failed["retries"], 2,
        "503 is retried twice by default: {failed}"
    );
    assert_eq!(failed["upstream"], broken.addr.to_string());
    assert_eq!(
        failed["proxy_error"],
        Value::Null,
        "the upstream's own 503, not the proxy's"
    );
    assert_eq!(broken.requests(), 3);
}

#[tokio::test]
async fn the_log_is_off_by_default_and_a_reload_turns_it_on() {
    let app = Upstream::start("app").await;
    let dir = TempDir::new();
    let log: PathBuf = dir.path().join("later.log");
    let p = proxy().inbound_app(app.addr).config("").start().await;
    let inbound: SocketAddr = p.inbound;
    assert_eq!(get_once(inbound, "/before").await.status, StatusCode::OK);
    p.config_file().write(&format!(
        "accessLog: {{format: json, path: {}}}\n",
        log.display()
    ));
    // New connections take the new snapshot once the reloader has read it.
    eventually(WAIT, "a request to be logged after the reload", || async {
        get_once(inbound, "/after").await;
        std::fs::read_to_string(&log).is_ok_and(|t| !t.is_empty())
    })
    .await;
    let lines = lines(&log, 1).await;
    assert!(lines.iter().all(|l| l["path"] == "/after"), "{lines:#?}");
    let first = &lines[0];
    check_shape(first);
    assert_eq!(first["direction"], "inbound");
    assert_eq!(first["client_id"], Value::Null, "plaintext caller");
    assert_eq!(first["protocol"], "HTTP/1.1");
}

#[tokio::test]
async fn an_upgraded_connection_still_works_with_logging_and_tracing_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = Upstream::start("app").await;
    let dir = TempDir::new();
    let log = dir.path().join("ws.log");
    let nowhere = format!("http://{}", free_addr());
    let p = proxy()
        .inbound_app(app.addr)
        .args(["--access-log", &log.display().to_string()])
        .args(["--trace-collector", &nowhere, "--trace-sampling", "1"])
        .start()
        .await;
    let mut stream = connect(p.inbound).await;
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: test.local\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let (head, _) = read_head(&mut stream).await;
    assert!(
        head.to_ascii_lowercase().starts_with("http/1.1 101"),
        "{head}"
    );
    stream.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    within(WAIT, "the upgraded echo", stream.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(&back, b"ping");
    let lines = lines(&log, 1).await;
    check_shape(&lines[0]);
    assert_eq!(lines[0]["status"], 101);
    assert_eq!(lines[0]["path"], "/ws");
    assert!(lines[0]["trace_id"].is_string(), "a trace was started");
    let seen = app.seen_path("/ws").unwrap();
    assert!(seen.headers.contains_key("traceparent"));
}
