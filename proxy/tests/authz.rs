//! The proxy subscribed to its view and enforcing it: a test control plane
//! ([`support::discovery`]) certifies the server proxy and pushes its view over real mTLS;
//! meshed clients (proxies with certificates from the same CA) call it through their own
//! proxy.
//!
//! ```text
//! client ─> proxy (web | payments, files) ──mTLS──> proxy (orders, control plane) ─> app
//!                                                        ^ Subscribe / Ack
//!                                                   test control plane
//! ```
//!
//! Every wait is bounded; nothing sleeps longer than a poll interval.

mod support;

use std::net::SocketAddr;

use http::{Method, StatusCode};
use tokio::io::AsyncWriteExt;
use weft_api::proto::discovery::v1 as pb;

use support::discovery::{inbound, policy, view, TestControlPlane};
use support::pki::{spiffe, IdentityFiles};
use support::*;

fn web() -> String {
    spiffe("shop", "web")
}

fn payments() -> String {
    spiffe("shop", "payments")
}

fn orders() -> String {
    spiffe("shop", "orders")
}

/// A meshed caller: a proxy with a certificate for `account`, whose static listener
/// `listener` forwards to the server proxy over mTLS.
struct Caller {
    proxy: TestProxy,
    listener: SocketAddr,
    _files: IdentityFiles,
}

async fn caller(
    cp: &TestControlPlane,
    account: &str,
    server: &TestProxy,
    protocol: &str,
) -> Caller {
    let files = IdentityFiles::new(&cp.ca().issue(&spiffe("shop", account)), &[cp.ca()]);
    let listener = free_addr();
    let proxy = proxy()
        .config(format!(
            "listeners:\n  - name: orders\n    bind: \"{listener}\"\n    target: \"{}\"\n    protocol: {protocol}\n    identity: \"{}\"\n",
            server.inbound,
            orders()
        ))
        .args(files.args())
        .start()
        .await;
    Caller {
        proxy,
        listener,
        _files: files,
    }
}

/// The server proxy (`orders`, pod `orders-1`) in front of `app`, certified by `cp` and
/// subscribed to its view; `config` is its config file.
async fn server(cp: &TestControlPlane, app: SocketAddr, config: &str) -> TestProxy {
    proxy()
        .inbound_app(app)
        .config(config)
        .args(cp.proxy_args("orders", Some("orders-1")))
        .start()
        .await
}

async fn ready(proxy: &TestProxy) {
    eventually(WAIT, "the proxy to be ready", || async {
        admin(proxy.admin, Method::GET, "/ready", "").await.status == StatusCode::OK
    })
    .await;
}

/// `weft_authz_decisions_total` for this policy and decision.
async fn decisions(proxy: &TestProxy, policy: &str, decision: &str) -> f64 {
    proxy.metrics().await.value(
        "weft_authz_decisions_total",
        &[("policy", policy), ("decision", decision)],
    )
}

struct Mesh {
    cp: TestControlPlane,
    app: Upstream,
    server: TestProxy,
    web: Caller,
}

/// Control plane with `first` pushed, the server proxy ready with it, and a `web` caller.
async fn mesh(first: pb::ViewUpdate) -> Mesh {
    let cp = TestControlPlane::start().await;
    let version = first.version.clone();
    cp.push(first);
    let app = Upstream::start("app").await;
    let server = server(&cp, app.addr, "inboundMtls: {default: strict}").await;
    ready(&server).await;
    assert_eq!(cp.ack(&version).await.error, "");
    let web = caller(&cp, "web", &server, "auto").await;
    Mesh {
        cp,
        app,
        server,
        web,
    }
}

/// Pushes `update` and waits until the proxy has acknowledged it.
async fn push(cp: &TestControlPlane, update: pb::ViewUpdate) -> pb::Ack {
    let version = update.version.clone();
    cp.push(update);
    cp.ack(&version).await
}

#[tokio::test]
async fn deny_and_allow_policies_decide_who_gets_through() {
    let deny = policy("deny-admin", pb::Action::Deny, &[&web()], &["/admin*"]);
    let m = mesh(view("v1", inbound(vec![deny.clone()]))).await;

    // Denied: 403 naming the policy; the app never sees the request.
    let reply = get_once(m.web.listener, "/admin/users").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    assert_eq!(reply.header("weft-authz-policy"), Some("shop/deny-admin"));
    assert!(reply.text().contains("shop/deny-admin"), "{}", reply.text());
    // A path that resolves to /admin is judged as /admin.
    let dotted = get_once(m.web.listener, "/public/../admin/users").await;
    assert_eq!(dotted.status, StatusCode::FORBIDDEN, "{}", dotted.text());
    let reply = get_once(m.web.listener, "/public").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.text(), "app");
    let seen: Vec<String> = m
        .app
        .seen()
        .iter()
        .map(|s| s.uri.path().to_owned())
        .collect();
    assert_eq!(
        seen,
        ["/public"],
        "only the allowed request reached the app"
    );
    assert_eq!(decisions(&m.server, "shop/deny-admin", "deny").await, 2.0);
    assert_eq!(decisions(&m.server, "default", "allow").await, 1.0);

    // An ALLOW policy for another principal: web must match an ALLOW now, and doesn't. The
    // first ALLOW policy is named.
    let allow = policy("allow-payments", pb::Action::Allow, &[&payments()], &[]);
    assert_eq!(
        push(&m.cp, view("v2", inbound(vec![deny, allow])))
            .await
            .error,
        ""
    );
    let reply = get_once(m.web.listener, "/public").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(
        reply.header("weft-authz-policy"),
        Some("shop/allow-payments")
    );
    let payments = caller(&m.cp, "payments", &m.server, "auto").await;
    let reply = get_once(payments.listener, "/public").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        decisions(&m.server, "shop/allow-payments", "allow").await,
        1.0
    );
    assert_eq!(
        decisions(&m.server, "shop/allow-payments", "deny").await,
        1.0
    );
    assert_eq!(m.app.seen().len(), 2);
    // Callers and paths never become labels.
    let text = m.server.metrics().await.text;
    let decisions_text: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("weft_authz_decisions_total"))
        .collect();
    assert!(
        decisions_text
            .iter()
            .all(|l| !l.contains("spiffe://") && !l.contains("/public")),
        "{decisions_text:?}"
    );
}

#[tokio::test]
async fn a_policy_change_applies_to_the_next_request_on_an_open_mesh_connection() {
    let m = mesh(view("v1", inbound(vec![]))).await;
    let mut client = H1Client::connect(m.web.listener).await;
    assert_eq!(client.get("/").await.status, StatusCode::OK);

    let deny = policy("deny-web", pb::Action::Deny, &[&web()], &[]);
    push(&m.cp, view("v2", inbound(vec![deny]))).await;
    let reply = client.get("/").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.header("weft-authz-policy"), Some("shop/deny-web"));

    push(&m.cp, view("v3", inbound(vec![]))).await;
    assert_eq!(client.get("/").await.status, StatusCode::OK);
    assert!(!client.is_closed());
    let opened = m.server.metrics().await.sum(
        "weft_tcp_connections_opened_total",
        &[("direction", "inbound")],
    );
    assert_eq!(
        opened, 1.0,
        "every request used the one HTTP/2 mesh connection"
    );
    assert_eq!(m.app.seen().len(), 2);
}

#[tokio::test]
async fn a_denied_grpc_request_gets_permission_denied() {
    let deny = policy("deny-web", pb::Action::Deny, &[&web()], &[]);
    let m = mesh(view("v1", inbound(vec![deny]))).await;
    let mut client = H2Client::connect(m.web.listener).await;
    let mut req = request(
        Method::POST,
        "/weft.test.Echo/Say",
        full(&b"\0\0\0\0\x05hello"[..]),
    );
    req.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    req.headers_mut().insert("te", "trailers".parse().unwrap());
    let reply = client.call(req).await;
    assert_eq!(reply.status, StatusCode::OK, "gRPC errors travel as 200");
    assert_eq!(reply.header("grpc-status"), Some("7"));
    assert_eq!(reply.header("content-type"), Some("application/grpc"));
    assert_eq!(reply.header("weft-authz-policy"), Some("shop/deny-web"));
    assert!(
        reply
            .header("grpc-message")
            .unwrap()
            .contains("shop/deny-web"),
        "{:?}",
        reply.headers
    );
    assert!(reply.body.is_empty(), "trailers-only");
    assert!(m.app.seen().is_empty());
}

#[tokio::test]
async fn a_denied_opaque_connection_is_closed_before_the_app_sees_it() {
    let cp = TestControlPlane::start().await;
    let deny = policy("deny-web", pb::Action::Deny, &[&web()], &[]);
    cp.push(view("v1", inbound(vec![deny])));
    let echo = TcpUpstream::start(TcpBehavior::Echo).await;
    let server = server(&cp, echo.addr, "inboundMtls: {default: strict}").await;
    ready(&server).await;
    let web = caller(&cp, "web", &server, "opaque").await;

    let mut stream = connect(web.listener).await;
    let _ = stream.write_all(b"\x00\x01binary hello").await;
    let back = read_until_closed(&mut stream, WAIT).await;
    assert!(back.is_empty(), "{back:?}");
    assert_eq!(decisions(&server, "shop/deny-web", "deny").await, 1.0);
    assert_eq!(echo.accepts(), 0, "the app never saw a connection");

    // Allowed again: the bytes get through.
    push(&cp, view("v2", inbound(vec![]))).await;
    let mut stream = connect(web.listener).await;
    stream.write_all(b"\x00\x01binary hello").await.unwrap();
    stream.shutdown().await.unwrap();
    let back = read_until_closed(&mut stream, WAIT).await;
    assert_eq!(back, b"\x00\x01binary hello");
    assert_eq!(echo.accepts(), 1);
}

#[tokio::test]
async fn audit_and_dry_run_policies_record_without_denying() {
    let audit = policy("audit-web", pb::Action::Audit, &[&web()], &[]);
    let mut dry_run = policy("dry-deny-web", pb::Action::Deny, &[&web()], &[]);
    dry_run.dry_run = true;
    let m = mesh(view("v1", inbound(vec![audit, dry_run]))).await;
    let reply = get_once(m.web.listener, "/").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(reply.header("weft-authz-policy").is_none());
    assert_eq!(m.app.seen().len(), 1);
    assert_eq!(decisions(&m.server, "default", "allow").await, 1.0);
    assert_eq!(decisions(&m.server, "shop/audit-web", "audit").await, 1.0);
    assert_eq!(
        decisions(&m.server, "shop/dry-deny-web", "dry_run_deny").await,
        1.0
    );
    assert_eq!(decisions(&m.server, "shop/dry-deny-web", "deny").await, 0.0);
}

#[tokio::test]
async fn every_version_is_acked_and_an_invalid_one_is_nacked_and_not_applied() {
    let deny = policy("deny-web", pb::Action::Deny, &[&web()], &[]);
    let m = mesh(view("v1", inbound(vec![deny]))).await;
    let broken = policy("broken", pb::Action::Allow, &["a*b"], &[]);
    let nack = push(&m.cp, view("v2", inbound(vec![broken]))).await;
    assert!(nack.error.contains("shop/broken"), "{nack:?}");
    assert!(nack.error.contains("a*b"), "{nack:?}");

    // v1 is still enforced.
    let reply = get_once(m.web.listener, "/").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.header("weft-authz-policy"), Some("shop/deny-web"));
    let metrics = m.server.metrics().await;
    assert_eq!(
        metrics.value("weft_discovery_updates_total", &[("result", "applied")]),
        1.0
    );
    assert_eq!(
        metrics.value("weft_discovery_updates_total", &[("result", "rejected")]),
        1.0
    );
    assert_eq!(
        metrics.value("weft_discovery_view_info", &[("version", "v1")]),
        1.0
    );

    // A valid version after the rejected one applies.
    assert_eq!(push(&m.cp, view("v3", inbound(vec![]))).await.error, "");
    assert_eq!(get_once(m.web.listener, "/").await.status, StatusCode::OK);
    let acked: Vec<(String, bool)> =
        m.cp.acks()
            .into_iter()
            .map(|a| (a.version, a.error.is_empty()))
            .collect();
    assert_eq!(
        acked,
        [
            ("v1".into(), true),
            ("v2".into(), false),
            ("v3".into(), true)
        ]
    );
}

#[tokio::test]
async fn the_last_view_is_enforced_while_the_control_plane_is_away() {
    let deny = policy("deny-web", pb::Action::Deny, &[&web()], &[]);
    let m = mesh(view("v1", inbound(vec![deny]))).await;
    let first = m.cp.hello(1).await;
    assert_eq!(first.hello.current_version, "");

    m.cp.stop().await;
    eventually(WAIT, "the proxy to notice the lost stream", || async {
        m.server
            .metrics()
            .await
            .value("weft_discovery_connected", &[])
            == 0.0
    })
    .await;
    let reply = get_once(m.web.listener, "/").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "still enforcing v1");
    let ready = admin(m.server.admin, Method::GET, "/ready", "").await;
    assert_eq!(
        ready.status,
        StatusCode::OK,
        "a kept view keeps the pod ready"
    );

    m.cp.restart().await;
    let again = m.cp.hello(2).await;
    assert_eq!(
        again.hello.current_version, "v1",
        "the reconnect says what it enforces"
    );
    assert_eq!(push(&m.cp, view("v2", inbound(vec![]))).await.error, "");
    assert_eq!(get_once(m.web.listener, "/").await.status, StatusCode::OK);
    let metrics = m.server.metrics().await;
    assert!(metrics.value("weft_discovery_reconnects_total", &[]) >= 1.0);
    assert_eq!(metrics.value("weft_discovery_connected", &[]), 1.0);
}

#[tokio::test]
async fn not_ready_until_the_first_view_which_config_then_shows() {
    let cp = TestControlPlane::start().await;
    let app = Upstream::start("app").await;
    let server = server(&cp, app.addr, "inboundMtls: {default: strict}").await;
    let hello = cp.hello(1).await;
    assert_eq!(
        hello.caller,
        orders(),
        "subscribed with the workload certificate"
    );
    assert_eq!(
        (hello.hello.namespace.as_str(), hello.hello.pod.as_str()),
        ("shop", "orders-1")
    );
    assert!(!hello.hello.proxy_version.is_empty());
    let rsp = admin(server.admin, Method::GET, "/ready", "").await;
    assert_eq!(rsp.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(rsp.text().contains("view"), "{}", rsp.text());

    // A request arriving before the view waits for it instead of getting through unjudged.
    let client = caller(&cp, "web", &server, "auto").await;
    let early = tokio::spawn(get_once(client.listener, "/early"));
    eventually(
        WAIT,
        "the early request to leave the caller's proxy",
        || async {
            client
                .proxy
                .metrics()
                .await
                .value("weft_requests_total", &[("direction", "outbound")])
                == 1.0
        },
    )
    .await;
    // Long enough for the mesh connection to reach the server proxy, which holds it.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!early.is_finished());
    let deny = policy("deny-web", pb::Action::Deny, &[&web()], &[]);
    cp.push(view("v1", inbound(vec![deny])));
    let reply = within(WAIT, "the early request", early).await.unwrap();
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    assert!(app.seen().is_empty());
    ready(&server).await;

    let config = admin(server.admin, Method::GET, "/config", "").await;
    let json: serde_json::Value = serde_json::from_slice(&config.body).unwrap();
    assert_eq!(json["view"]["version"], "v1", "{json}");
    // The view as structured JSON, not debug text.
    assert_eq!(json["view"]["inbound"]["pod"], "orders-1", "{json}");
    assert_eq!(
        json["view"]["inbound"]["policies"][0]["name"], "deny-web",
        "{json}"
    );
    assert_eq!(json["bootstrap"]["podName"], "orders-1", "{json}");
}

#[tokio::test]
async fn the_view_sets_the_inbound_mtls_mode_per_port() {
    let cp = TestControlPlane::start().await;
    let app = Upstream::start("app").await;
    let mut strict = inbound(vec![]);
    strict.mtls_mode = pb::MtlsMode::Strict as i32;
    cp.push(view("v1", strict.clone()));
    // The config file says permissive; the view says strict.
    let server = server(&cp, app.addr, "inboundMtls: {default: permissive}").await;
    ready(&server).await;
    let refused = raw_exchange(server.inbound, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(refused.is_empty(), "{}", String::from_utf8_lossy(&refused));

    // A port override, and a default that wants an identity: plaintext gets in, then is
    // denied by the default policy.
    let mut permissive_port = strict;
    permissive_port.ports.push(pb::WorkloadPort {
        port: u32::from(app.addr.port()),
        name: "http".into(),
        mtls_mode: pb::MtlsMode::Permissive as i32,
    });
    permissive_port.default_policy = pb::DefaultPolicy::Authenticated as i32;
    push(&cp, view("v2", permissive_port)).await;
    let reply = get_once(server.inbound, "/").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    assert_eq!(reply.header("weft-authz-policy"), Some("default"));
    let web = caller(&cp, "web", &server, "auto").await;
    assert_eq!(get_once(web.listener, "/").await.status, StatusCode::OK);
    let metrics = server.metrics().await;
    assert_eq!(
        metrics.value(
            "weft_errors_total",
            &[("direction", "inbound"), ("kind", "plaintext_refused")]
        ),
        1.0
    );
}
