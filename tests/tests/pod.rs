//! Pod tests: two network namespaces as two meshed pods, each with `weft-proxy init`'s
//! iptables rules and a `weft-proxy` running as UID 2102, joined by a veth pair.
//!
//! ```text
//!  pod A (client)                             pod B (server)
//!  app, uid 65534                             app-8080 <── 127.0.0.1:8080 ── inbound proxy :15006
//!   │ GET http://10.231.0.2:8080/                                                  ^
//!   v OUTPUT: REDIRECT                                  PREROUTING: REDIRECT ──────┘
//!  outbound proxy 127.0.0.1:15001, uid 2102 ──>       (all TCP but 9090 and 15020)
//!   (its own connections: RETURN)     eth0 10.231.0.1 ═ veth ═ 10.231.0.2 eth0
//!                                                     9090 ──> app-9090, 15020 ──> admin
//! ```
//!
//! Needs root (namespaces, iptables, changing UID): without it the test prints
//! "skipping: needs root" and passes. Needs `weft-proxy` built in the same profile
//! (`cargo build -p weft-proxy`). Run with
//! `cargo build -p weft-proxy && cargo test -p weft-tests --test pod -- --nocapture`.
//!
//! Every namespace and process has a guard, so a failing assertion still removes them; the
//! proxies' logs are printed and kept when it does.

use std::path::Path;
use std::time::Duration;

use weft_tests::http::echo_field;
use weft_tests::metrics::Metrics;
use weft_tests::netns;
use weft_tests::pod::{Bins, Pod, ADMIN_PORT, APP_UID, NS_PREFIX, PROXY_UID};
use weft_tests::{is_root, TempDir};

const A_CIDR: &str = "10.231.0.1/30";
const B_CIDR: &str = "10.231.0.2/30";
const A_IP: &str = "10.231.0.1";
const B_IP: &str = "10.231.0.2";
const APP_PORT: u16 = 8080;
/// Listed in B's `--skip-inbound-ports`: reaches the app without the proxy.
const SKIPPED_PORT: u16 = 9090;
/// Requests sent through both proxies.
const REQUESTS: u32 = 3;

const REQUESTS_TOTAL: &str = "weft_requests_total";
const CONNECTIONS_OPENED: &str = "weft_tcp_connections_opened_total";

/// The `weft_*` counters in a scrape that a direction's traffic moves.
fn counters(m: &Metrics, direction: &str) -> (f64, f64) {
    let labels = [("direction", direction)];
    (
        m.sum(REQUESTS_TOTAL, &labels),
        m.sum(CONNECTIONS_OPENED, &labels),
    )
}

#[test]
fn requests_cross_two_meshed_pods() {
    if !is_root() {
        eprintln!("skipping requests_cross_two_meshed_pods: needs root");
        return;
    }
    let bins = Bins::stage(
        Path::new(env!("CARGO_BIN_EXE_weft-test-app")),
        Path::new(env!("CARGO_MANIFEST_DIR")),
    );
    netns::remove_stale(NS_PREFIX);
    let dir = TempDir::for_logs("weft-pod-logs");
    let id = std::process::id();
    let mut a = Pod::new(&format!("{NS_PREFIX}{id}-a"));
    let mut b = Pod::new(&format!("{NS_PREFIX}{id}-b"));
    netns::connect(a.ns(), &[A_CIDR], b.ns(), &[B_CIDR]);

    // Init, twice in B: the second run must change nothing.
    a.init(&bins, &[]);
    let skip = SKIPPED_PORT.to_string();
    b.init(&bins, &["--skip-inbound-ports", &skip]);
    let once = b.weft_rules("iptables-save");
    b.init(&bins, &["--skip-inbound-ports", &skip]);
    let twice = b.weft_rules("iptables-save");
    assert_eq!(once, twice, "a second `weft-proxy init` changed the rules");
    for rule in &twice {
        let copies = twice.iter().filter(|r| *r == rule).count();
        assert_eq!(
            copies,
            1,
            "`{rule}` appears {copies} times in:\n{}",
            twice.join("\n")
        );
    }
    for wanted in [
        "-A PREROUTING -p tcp -j WEFT_INBOUND",
        "-A OUTPUT -p tcp -j WEFT_OUTPUT",
        "-A WEFT_INBOUND -p tcp -m tcp --dport 15020 -j RETURN",
        "-A WEFT_INBOUND -p tcp -m tcp --dport 9090 -j RETURN",
        "-A WEFT_OUTPUT -m owner --uid-owner 2102 -j RETURN",
    ] {
        assert!(
            twice.iter().any(|r| r == wanted),
            "no `{wanted}` in:\n{}",
            twice.join("\n")
        );
    }

    // The apps in B, then a proxy in each pod.
    for port in [APP_PORT, SKIPPED_PORT] {
        let name = format!("app-{port}");
        let port = port.to_string();
        b.start_app(
            &bins,
            &name,
            &["serve", "--port", &port, "--name", &name],
            dir.path(),
        );
    }
    a.start_proxy(&bins, "a", &[], dir.path());
    b.start_proxy(&bins, "b", &[], dir.path());
    a.wait_ready(&[]);
    b.wait_ready(&[APP_PORT, SKIPPED_PORT]);

    let a_before = counters(&a.scrape(), "outbound");
    let b_before = counters(&b.scrape(), "inbound");

    // A's app calls B's app: A's outbound proxy, then B's inbound proxy, then the app.
    for i in 0..REQUESTS {
        let url = format!("http://{B_IP}:{APP_PORT}/hello?i={i}");
        let response = a.app_get(&bins, APP_UID, &url);
        assert_eq!(response.status, 200, "GET {url}: {response:?}");
        assert_eq!(
            echo_field(&response.body, "app"),
            Some("app-8080"),
            "{response:?}"
        );
        assert_eq!(
            echo_field(&response.body, "path"),
            Some(format!("/hello?i={i}").as_str())
        );
        let peer = echo_field(&response.body, "peer").unwrap_or_default();
        assert!(
            peer.starts_with("127.0.0.1:"),
            "the app saw {peer}: the request did not come through B's inbound proxy"
        );
    }
    let n = f64::from(REQUESTS);
    let a_m = a.wait_for_count(REQUESTS_TOTAL, &[("direction", "outbound")], a_before.0 + n);
    let b_m = b.wait_for_count(REQUESTS_TOTAL, &[("direction", "inbound")], b_before.0 + n);
    let a_after = counters(&a_m, "outbound");
    let b_after = counters(&b_m, "inbound");
    assert_eq!(a_after.0 - a_before.0, n, "A's outbound requests");
    assert_eq!(b_after.0 - b_before.0, n, "B's inbound requests");
    // A's proxy recovered the app's real destination (SO_ORIGINAL_DST) and labels by it.
    let target = format!("{B_IP}:{APP_PORT}");
    let by_target = [("direction", "outbound"), ("target", target.as_str())];
    assert_eq!(
        a_m.sum(REQUESTS_TOTAL, &by_target),
        n,
        "A's outbound requests to {target}: {:#?}",
        a_m.select(REQUESTS_TOTAL, &[]).collect::<Vec<_>>()
    );
    assert!(
        a_after.1 > a_before.1,
        "A counted no outbound connection: {a_after:?}"
    );
    assert!(
        b_after.1 > b_before.1,
        "B counted no inbound connection: {b_after:?}"
    );
    eprintln!(
        "after {REQUESTS} requests: A outbound (requests, connections) {a_before:?} -> \
         {a_after:?}; B inbound {b_before:?} -> {b_after:?}"
    );
    // Each side saw only its own direction.
    assert_eq!(
        counters(&a_m, "inbound").0,
        0.0,
        "A's proxy counted inbound requests"
    );
    assert_eq!(
        counters(&b_m, "outbound").0,
        0.0,
        "B's proxy counted outbound requests"
    );

    // Port 9090 is skipped on B's inbound side: the app answers the network directly, and B's
    // proxy sees nothing. (A's outbound proxy still carries it: A skips nothing.)
    let url = format!("http://{B_IP}:{SKIPPED_PORT}/skipped");
    let response = a.app_get(&bins, APP_UID, &url);
    assert_eq!(response.status, 200, "GET {url}: {response:?}");
    assert_eq!(
        echo_field(&response.body, "app"),
        Some("app-9090"),
        "{response:?}"
    );
    let peer = echo_field(&response.body, "peer").unwrap_or_default();
    assert!(
        peer.starts_with(&format!("{A_IP}:")),
        "app-9090 saw {peer}, not pod A's address: something proxied the skipped port"
    );
    a.wait_for_count(
        REQUESTS_TOTAL,
        &[("direction", "outbound")],
        a_after.0 + 1.0,
    );

    // The admin port is always skipped: a scrape from outside the pod (as Prometheus does;
    // sent as the proxy UID so A's own rules let it go straight out) reaches B's admin server.
    let url = format!("http://{B_IP}:{ADMIN_PORT}/metrics");
    let scrape = a.app_get(&bins, PROXY_UID, &url);
    assert_eq!(scrape.status, 200, "GET {url}: {scrape:?}");
    Metrics::parse(&scrape.body).unwrap_or_else(|err| panic!("{url}: {err}"));

    std::thread::sleep(Duration::from_millis(300));
    let b_final = counters(&b.scrape(), "inbound");
    assert_eq!(
        b_final, b_after,
        "B's inbound counters (requests, connections) moved for traffic to skipped ports"
    );
    eprintln!("after the skipped-port request and an admin scrape from A: B inbound {b_final:?}");
    a.assert_running();
    b.assert_running();
}
