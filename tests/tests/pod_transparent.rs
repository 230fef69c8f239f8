//! More pod tests in transparent mode (see `pod.rs` for the setup they share): IPv6 traffic
//! through dual-stack proxies, and opaque (non-HTTP) TCP, client-speaks-first and
//! server-speaks-first.
//!
//! ```text
//!  pod A (client)                                   pod B (server)
//!  client ── OUTPUT: REDIRECT ──> outbound proxy    PREROUTING: REDIRECT ──> inbound proxy
//!          127.0.0.1:15001 / [::1]:15001 ══ veth ══>   0.0.0.0:15006 / [::]:15006
//!                                                         │ original port, same family
//!                                                         v
//!                                                   app on 127.0.0.1 or ::1
//! ```
//!
//! Each test has its own pair of namespaces (`weft-t-<pid>-v6a|v6b`, `…-tcpa|tcpb`), so they
//! run in parallel with each other and with `pod.rs`. Needs root and `weft-proxy` built in the
//! same profile, like `pod.rs`; without root each test prints "skipping" and passes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use weft_tests::http::echo_field;
use weft_tests::metrics::Metrics;
use weft_tests::netns;
use weft_tests::pod::{Bins, Pod, ADMIN_PORT, APP_UID, NS_PREFIX, REQUEST_TIMEOUT};
use weft_tests::tcp::banner_line;
use weft_tests::{is_root, TempDir};

const REQUESTS_TOTAL: &str = "weft_requests_total";
const OPENED: &str = "weft_tcp_connections_opened_total";
const CLOSED: &str = "weft_tcp_connections_closed_total";
const READ_BYTES: &str = "weft_tcp_read_bytes_total";
const WRITE_BYTES: &str = "weft_tcp_write_bytes_total";

fn bins() -> Bins {
    Bins::stage(
        Path::new(env!("CARGO_BIN_EXE_weft-test-app")),
        Path::new(env!("CARGO_MANIFEST_DIR")),
    )
}

/// Two fresh pods `weft-t-<pid>-<tag>a|b` joined by a veth pair with these addresses.
fn pod_pair(tag: &str, a_cidrs: &[&str], b_cidrs: &[&str]) -> (Pod, Pod) {
    netns::remove_stale(NS_PREFIX);
    let id = std::process::id();
    let a = Pod::new(&format!("{NS_PREFIX}{id}-{tag}a"));
    let b = Pod::new(&format!("{NS_PREFIX}{id}-{tag}b"));
    let started = Instant::now();
    netns::connect(a.ns(), a_cidrs, b.ns(), b_cidrs);
    eprintln!("{tag}: link carries traffic after {:?}", started.elapsed());
    (a, b)
}

fn by_target<'a>(direction: &'a str, target: &'a str) -> [(&'a str, &'a str); 2] {
    [("direction", direction), ("target", target)]
}

// ---------------------------------------------------------------------------------------------
// IPv6

const V6_A_CIDR: &str = "fd00:77::1/64";
const V6_B_CIDR: &str = "fd00:77::2/64";
const V6_B_IP: &str = "fd00:77::2";
/// IPv4 on the same link, to show the dual-stack listeners keep the families apart.
const V4_A_CIDR: &str = "10.231.2.1/30";
const V4_B_CIDR: &str = "10.231.2.2/30";
const V4_B_IP: &str = "10.231.2.2";
const APP_PORT: u16 = 8080;
const V6_REQUESTS: u32 = 3;

#[test]
fn ipv6_requests_cross_two_meshed_pods() {
    if !is_root() {
        eprintln!("skipping ipv6_requests_cross_two_meshed_pods: needs root");
        return;
    }
    let bins = bins();
    let logs = TempDir::for_logs("weft-pod-v6-logs");
    let (mut a, mut b) = pod_pair("v6", &[V6_A_CIDR, V4_A_CIDR], &[V6_B_CIDR, V4_B_CIDR]);

    a.init(&bins, &["--ipv6"]);
    b.init(&bins, &["--ipv6"]);
    let rules = b.weft_rules("ip6tables-save");
    for wanted in [
        "-A PREROUTING -p tcp -j WEFT_INBOUND",
        "-A OUTPUT -p tcp -j WEFT_OUTPUT",
        "-A WEFT_OUTPUT -m owner --uid-owner 2102 -j RETURN",
        "-A WEFT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
    ] {
        assert!(
            rules.iter().any(|r| r == wanted),
            "no `{wanted}` in B's ip6tables nat rules:\n{}",
            rules.join("\n")
        );
    }

    // Two apps on the same port, one per loopback: which one answers shows the family the
    // inbound proxy delivered in.
    let port = APP_PORT.to_string();
    for (name, bind) in [("app-v6", "::1"), ("app-v4", "127.0.0.1")] {
        let args = ["serve", "--port", &port, "--name", name, "--bind", bind];
        b.start_app(&bins, name, &args, logs.path());
    }
    let listeners = [
        ("WEFT_OUTBOUND_ADDR", "127.0.0.1:15001,[::1]:15001"),
        ("WEFT_INBOUND_ADDR", "0.0.0.0:15006,[::]:15006"),
    ];
    a.start_proxy(&bins, "a", &listeners, logs.path());
    b.start_proxy(&bins, "b", &listeners, logs.path());
    a.wait_ready_at(&[]);
    let v6_app: SocketAddr = format!("[::1]:{APP_PORT}").parse().unwrap();
    let v4_app: SocketAddr = format!("127.0.0.1:{APP_PORT}").parse().unwrap();
    b.wait_ready_at(&[v6_app, v4_app]);

    for i in 0..V6_REQUESTS {
        let url = format!("http://[{V6_B_IP}]:{APP_PORT}/v6?i={i}");
        let response = a.app_get(&bins, APP_UID, &url);
        assert_eq!(response.status, 200, "GET {url}: {response:?}");
        assert_eq!(
            echo_field(&response.body, "app"),
            Some("app-v6"),
            "GET {url} was not delivered to the app on ::1: {response:?}"
        );
        assert_eq!(
            echo_field(&response.body, "path"),
            Some(format!("/v6?i={i}").as_str())
        );
        let peer = echo_field(&response.body, "peer").unwrap_or_default();
        assert!(
            peer.starts_with("[::1]:"),
            "app-v6 saw {peer}: the request did not come through B's inbound proxy"
        );
    }
    // The same proxies still carry IPv4 next to IPv6.
    let url = format!("http://{V4_B_IP}:{APP_PORT}/v4");
    let response = a.app_get(&bins, APP_UID, &url);
    assert_eq!(response.status, 200, "GET {url}: {response:?}");
    assert_eq!(
        echo_field(&response.body, "app"),
        Some("app-v4"),
        "{response:?}"
    );
    let peer = echo_field(&response.body, "peer").unwrap_or_default();
    assert!(peer.starts_with("127.0.0.1:"), "app-v4 saw {peer}");

    // Both proxies counted exactly what was sent, labelled by the family's addresses: A by the
    // original destination, B by the loopback it delivered to.
    let n = f64::from(V6_REQUESTS);
    let a_target = format!("[{V6_B_IP}]:{APP_PORT}");
    let b_target = format!("[::1]:{APP_PORT}");
    let a_v4_target = format!("{V4_B_IP}:{APP_PORT}");
    let b_v4_target = format!("127.0.0.1:{APP_PORT}");
    let a_m = a.wait_for_count(REQUESTS_TOTAL, &[("direction", "outbound")], n + 1.0);
    let b_m = b.wait_for_count(REQUESTS_TOTAL, &[("direction", "inbound")], n + 1.0);
    let requests = |m: &Metrics| {
        m.select(REQUESTS_TOTAL, &[])
            .map(|s| format!("{:?} {}", s.labels, s.value))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for (pod, m, direction, target, count) in [
        (&a, &a_m, "outbound", a_target.as_str(), n),
        (&a, &a_m, "outbound", a_v4_target.as_str(), 1.0),
        (&b, &b_m, "inbound", b_target.as_str(), n),
        (&b, &b_m, "inbound", b_v4_target.as_str(), 1.0),
    ] {
        assert_eq!(
            m.sum(REQUESTS_TOTAL, &by_target(direction, target)),
            count,
            "{}: {REQUESTS_TOTAL}{{direction={direction}, target={target}}}; all:\n{}",
            pod.name(),
            requests(m)
        );
        assert!(
            m.sum(OPENED, &by_target(direction, target)) >= 1.0,
            "{}: no {direction} connection to {target} counted",
            pod.name()
        );
    }
    assert_eq!(
        a_m.sum(REQUESTS_TOTAL, &[]),
        n + 1.0,
        "A:\n{}",
        requests(&a_m)
    );
    assert_eq!(
        b_m.sum(REQUESTS_TOTAL, &[]),
        n + 1.0,
        "B:\n{}",
        requests(&b_m)
    );
    a.assert_running();
    b.assert_running();
}

// ---------------------------------------------------------------------------------------------
// Opaque TCP

const TCP_A_CIDR: &str = "10.231.1.1/30";
const TCP_B_CIDR: &str = "10.231.1.2/30";
const TCP_B_IP: &str = "10.231.1.2";
/// A client-speaks-first, non-HTTP protocol: a byte echo.
const ECHO_PORT: u16 = 7000;
/// Server-speaks-first, on a port in the proxies' default `skipDetectPorts` (MySQL's).
const SKIPPED_BANNER_PORT: u16 = 3306;
/// Server-speaks-first on a port that is *not* skipped: the control, whose banner waits for
/// detection to time out in each proxy.
const DETECTED_BANNER_PORT: u16 = 7001;
/// The proxies' default `detectTimeout`.
const DETECT_TIMEOUT: Duration = Duration::from_secs(1);
/// What "promptly" means: well under one detection timeout, and far above a round trip.
const PROMPT: Duration = Duration::from_millis(500);
/// First bytes that are clearly not HTTP (so detection decides at once), then a bulk of every
/// byte value.
const HELLO: &[u8] = b"\x00\x01hello\n";
const BULK_LEN: usize = 32 * 1024;

/// A connection from the test process inside `pod` (as root: not the proxy's UID, so the
/// rules redirect it exactly like an app's), with every step bounded.
fn connect_from(pod: &Pod, addr: SocketAddr) -> BufReader<TcpStream> {
    let stream = pod
        .ns()
        .run_in(|| TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT))
        .unwrap_or_else(|err| panic!("connecting to {addr} from {}: {err}", pod.name()));
    stream.set_read_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    BufReader::new(stream)
}

/// Half-closes `conn` and returns everything the server sends until it closes: the echo
/// server's `peer=…` trailer, which also proves the half-close crossed both proxies.
fn finish(mut conn: BufReader<TcpStream>, what: &str) -> String {
    conn.get_ref()
        .shutdown(Shutdown::Write)
        .unwrap_or_else(|err| panic!("{what}: shutdown: {err}"));
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest)
        .unwrap_or_else(|err| panic!("{what}: waiting for the trailer after a half-close: {err}"));
    String::from_utf8(rest).unwrap_or_else(|err| panic!("{what}: trailer: {err}"))
}

/// The peer the server reported in its trailer; panics unless it is B's loopback, i.e. the
/// connection came through B's inbound proxy.
fn loopback_peer(trailer: &str, what: &str) -> String {
    let peer = trailer
        .strip_prefix("peer=")
        .and_then(|rest| rest.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("{what}: unexpected trailer {trailer:?}"));
    assert!(
        peer.starts_with("127.0.0.1:"),
        "{what}: the server saw {peer}: the connection did not come through B's inbound proxy"
    );
    peer.to_owned()
}

/// Connects to a banner server and returns how long the banner took, and the bytes read.
fn read_banner(pod: &Pod, addr: SocketAddr, banner: &str) -> (Duration, usize) {
    let what = format!("banner from {addr}");
    let started = Instant::now();
    let mut conn = connect_from(pod, addr);
    let mut line = String::new();
    conn.read_line(&mut line)
        .unwrap_or_else(|err| panic!("{what}: {err} after {:?}", started.elapsed()));
    let elapsed = started.elapsed();
    let trailer = finish(conn, &what);
    let peer = loopback_peer(&trailer, &what);
    assert_eq!(line, banner_line(banner, &peer), "{what}");
    (elapsed, line.len() + trailer.len())
}

/// The server-speaks-first ports in a proxy's effective config (`GET /config`, localhost only).
fn skip_detect_ports(pod: &Pod) -> Vec<u16> {
    let response = pod
        .local_get(ADMIN_PORT, "/config")
        .unwrap_or_else(|err| panic!("{}: GET /config: {err}", pod.name()));
    let body = response.text();
    assert_eq!(response.status, 200, "{}: /config: {body}", pod.name());
    let list = body
        .split_once("\"skipDetectPorts\":[")
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(list, _)| list)
        .unwrap_or_else(|| panic!("{}: no skipDetectPorts in /config: {body}", pod.name()));
    list.split(',')
        .filter_map(|port| port.trim().parse().ok())
        .collect()
}

/// Waits until `pod`'s proxy has closed every connection it opened to `target`, then checks
/// its connection and byte counters for it.
fn assert_tcp_counters(
    pod: &Pod,
    direction: &str,
    target: &str,
    connections: f64,
    read: usize,
    written: usize,
) {
    let labels = by_target(direction, target);
    pod.wait_for_count(CLOSED, &labels, connections);
    let m = pod.wait_for_count(WRITE_BYTES, &labels, written as f64);
    let got = [OPENED, CLOSED, READ_BYTES, WRITE_BYTES].map(|name| m.sum(name, &labels));
    assert_eq!(
        got,
        [connections, connections, read as f64, written as f64],
        "{}: [opened, closed, read bytes, written bytes] for {direction} {target}",
        pod.name()
    );
}

#[test]
fn opaque_tcp_crosses_two_meshed_pods() {
    if !is_root() {
        eprintln!("skipping opaque_tcp_crosses_two_meshed_pods: needs root");
        return;
    }
    let bins = bins();
    let logs = TempDir::for_logs("weft-pod-tcp-logs");
    let (mut a, mut b) = pod_pair("tcp", &[TCP_A_CIDR], &[TCP_B_CIDR]);
    a.init(&bins, &[]);
    b.init(&bins, &[]);

    let ports = [ECHO_PORT, SKIPPED_BANNER_PORT, DETECTED_BANNER_PORT];
    for (port, banner) in ports.into_iter().zip([None, Some("mysql"), Some("slow")]) {
        let name = format!("echo-{port}");
        let port = port.to_string();
        let mut args = vec!["echo", "--port", &port];
        args.extend(banner.iter().flat_map(|banner| ["--banner", banner]));
        b.start_app(&bins, &name, &args, logs.path());
    }
    a.start_proxy(&bins, "a", &[], logs.path());
    b.start_proxy(&bins, "b", &[], logs.path());
    a.wait_ready(&[]);
    b.wait_ready(&ports);
    for pod in [&a, &b] {
        let skipped = skip_detect_ports(pod);
        assert!(
            skipped.contains(&SKIPPED_BANNER_PORT)
                && !skipped.contains(&ECHO_PORT)
                && !skipped.contains(&DETECTED_BANNER_PORT),
            "{}: the test assumes skipDetectPorts has {SKIPPED_BANNER_PORT} but not \
             {ECHO_PORT} or {DETECTED_BANNER_PORT}; it is {skipped:?}",
            pod.name()
        );
    }
    let addr =
        |port: u16| SocketAddr::from((TCP_B_IP.parse::<std::net::Ipv4Addr>().unwrap(), port));

    std::thread::scope(|scope| {
        // The control runs alongside the rest: it takes two detection timeouts.
        let control = scope.spawn(|| read_banner(&a, addr(DETECTED_BANNER_PORT), "slow"));

        // Client speaks first, in binary: echoed at once, every byte intact.
        let what = format!("echo via {}", addr(ECHO_PORT));
        let started = Instant::now();
        let mut conn = connect_from(&a, addr(ECHO_PORT));
        conn.get_mut().write_all(HELLO).unwrap();
        let mut echoed = vec![0; HELLO.len()];
        conn.read_exact(&mut echoed)
            .unwrap_or_else(|err| panic!("{what}: {err} after {:?}", started.elapsed()));
        let first_echo = started.elapsed();
        assert_eq!(echoed, HELLO, "{what}");
        assert!(
            first_echo < PROMPT,
            "{what}: the first echo took {first_echo:?}: binary first bytes should be \
             classified opaque at once, not after the {DETECT_TIMEOUT:?} detection timeout"
        );
        let bulk: Vec<u8> = (0..BULK_LEN).map(|i| i as u8).collect();
        conn.get_mut().write_all(&bulk).unwrap();
        let mut echoed = vec![0; bulk.len()];
        conn.read_exact(&mut echoed)
            .unwrap_or_else(|err| panic!("{what}: echo of {BULK_LEN} bytes: {err}"));
        assert!(echoed == bulk, "{what}: the bulk came back altered");
        let trailer = finish(conn, &what);
        loopback_peer(&trailer, &what);
        let sent = HELLO.len() + bulk.len();
        let received = sent + trailer.len();

        // Server speaks first on a skipped port: the banner comes through without waiting.
        let (banner_time, banner_bytes) = read_banner(&a, addr(SKIPPED_BANNER_PORT), "mysql");
        assert!(
            banner_time < PROMPT,
            "the banner on {SKIPPED_BANNER_PORT} (in skipDetectPorts) took {banner_time:?}"
        );

        let (control_time, control_bytes) = control.join().expect("control thread panicked");
        assert!(
            control_time >= DETECT_TIMEOUT - Duration::from_millis(100),
            "the banner on {DETECTED_BANNER_PORT} (not skipped) took only {control_time:?}: \
             the proxies did not wait for the client to speak, so the prompt banner on \
             {SKIPPED_BANNER_PORT} proves nothing"
        );
        eprintln!(
            "first echo {first_echo:?}; banner on {SKIPPED_BANNER_PORT} {banner_time:?}; \
             banner on {DETECTED_BANNER_PORT} {control_time:?}"
        );

        // Each proxy carried each connection once, in its own direction, and counted every
        // byte: read from the side that accepted it, written back to it.
        for (port, read, written) in [
            (ECHO_PORT, sent, received),
            (SKIPPED_BANNER_PORT, 0, banner_bytes),
            (DETECTED_BANNER_PORT, 0, control_bytes),
        ] {
            let original = addr(port).to_string();
            assert_tcp_counters(&a, "outbound", &original, 1.0, read, written);
            let app = format!("127.0.0.1:{port}");
            assert_tcp_counters(&b, "inbound", &app, 1.0, read, written);
        }
    });
    let (a_m, b_m) = (a.scrape(), b.scrape());
    assert_eq!(a_m.sum(OPENED, &[("direction", "inbound")]), 0.0, "A");
    assert_eq!(b_m.sum(OPENED, &[("direction", "outbound")]), 0.0, "B");
    // Nothing here was HTTP.
    assert_eq!(a_m.sum(REQUESTS_TOTAL, &[]), 0.0, "A");
    assert_eq!(b_m.sum(REQUESTS_TOTAL, &[]), 0.0, "B");
    a.assert_running();
    b.assert_running();
}
