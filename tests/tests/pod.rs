//! Pod tests: two network namespaces as two meshed pods, each with `weft-proxy init`'s
//! iptables rules and a `weft-proxy` running as UID 2102, joined by a veth pair.
//!
//! ```text
//!  pod A (client)                              pod B (server)
//!  weft-test-app get ──OUTPUT REDIRECT──┐      ┌──PREROUTING REDIRECT──> inbound 15006
//!                      outbound 15001 <─┘      │                           │ 127.0.0.1:8080
//!                      │ (uid 2102: RETURN)    │                           v
//!                      └── 10.231.0.1 ═veth═ 10.231.0.2 ──(9090, 15020: RETURN)── apps, admin
//! ```
//!
//! Needs root (namespaces, iptables, changing UID): without it the test prints
//! "skipping: needs root" and passes. Needs `weft-proxy` built in the same profile
//! (`cargo build -p weft-proxy`). Run with
//! `cargo build -p weft-proxy && cargo test -p weft-tests --test pod -- --nocapture`.
//!
//! Every namespace and process has a guard, so a failing assertion still removes them; the
//! proxies' logs are printed and kept when it does.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use weft_tests::http::{self, echo_field};
use weft_tests::metrics::Metrics;
use weft_tests::netns::{self, Netns};
use weft_tests::process::{output_with_timeout, run_ok, ChildGuard};
use weft_tests::{bins, is_root, wait_for, TempDir};

/// Namespace names are `weft-t-<pid>-a|b`: unique per run, and stale ones are recognisable.
const NS_PREFIX: &str = "weft-t-";
const A_CIDR: &str = "10.231.0.1/30";
const B_CIDR: &str = "10.231.0.2/30";
const A_IP: &str = "10.231.0.1";
const B_IP: &str = "10.231.0.2";
/// The proxy's UID: init's default, so the rules skip the proxy's own connections.
const PROXY_UID: u32 = 2102;
/// The apps run as `nobody`: an ordinary UID whose traffic the rules redirect.
const APP_UID: u32 = 65534;
const APP_PORT: u16 = 8080;
/// Listed in B's `--skip-inbound-ports`: reaches the app without the proxy.
const SKIPPED_PORT: u16 = 9090;
const ADMIN_PORT: u16 = 15020;
/// Requests sent through both proxies.
const REQUESTS: u32 = 3;

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const METRICS_TIMEOUT: Duration = Duration::from_secs(10);

const REQUESTS_TOTAL: &str = "weft_requests_total";
const CONNECTIONS_OPENED: &str = "weft_tcp_connections_opened_total";

/// A pod: a namespace and what runs in it.
struct Pod {
    // Fields drop in order: the processes stop before their namespace is deleted.
    children: Vec<ChildGuard>,
    ns: Netns,
}

impl Pod {
    fn new(name: &str) -> Pod {
        Pod {
            children: Vec::new(),
            ns: Netns::create(name),
        }
    }

    /// Starts a long-running process in the pod as `uid`, logging to `<logs>/<name>.log`.
    fn start(&mut self, name: &str, mut cmd: Command, uid: u32, logs: &Path) {
        let log_path = logs.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)
            .unwrap_or_else(|err| panic!("creating {}: {err}", log_path.display()));
        let log2 = log
            .try_clone()
            .unwrap_or_else(|err| panic!("dup {}: {err}", log_path.display()));
        cmd.uid(uid)
            .gid(uid)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = self.ns.spawn(&mut cmd);
        self.children.push(ChildGuard::new(
            format!("{name} in {}", self.ns.name()),
            child,
            Some(log_path),
        ));
    }

    /// Panics with the log of any process that has exited.
    fn assert_running(&mut self) {
        for child in &mut self.children {
            if let Err(err) = child.check_running() {
                panic!("{err}");
            }
        }
    }

    /// GET from inside the pod, as root from the test process: loopback, so never redirected.
    fn local_get(&self, port: u16, path: &str) -> std::io::Result<http::Response> {
        let addr = ([127, 0, 0, 1], port).into();
        self.ns.run_in(|| http::get(addr, path, REQUEST_TIMEOUT))
    }

    fn scrape(&self) -> Metrics {
        let response = self
            .local_get(ADMIN_PORT, "/metrics")
            .unwrap_or_else(|err| panic!("scraping {}'s proxy: {err}", self.ns.name()));
        assert_eq!(response.status, 200, "{}", response.text());
        Metrics::parse(&response.text())
            .unwrap_or_else(|err| panic!("{}'s /metrics does not parse: {err}", self.ns.name()))
    }

    /// Waits until the proxy's admin server says ready and `ports` accept connections.
    fn wait_ready(&mut self, ports: &[u16]) {
        let ready = wait_for(STARTUP_TIMEOUT, || {
            self.assert_running();
            let proxy_ready = self
                .local_get(ADMIN_PORT, "/ready")
                .is_ok_and(|r| r.status == 200);
            let apps_up = ports.iter().all(|&port| {
                self.ns
                    .run_in(|| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
            });
            (proxy_ready && apps_up).then_some(())
        });
        if ready.is_none() {
            let logs: Vec<String> = self
                .children
                .iter()
                .map(|c| format!("--- {}:\n{}", c.name(), c.log_tail(30)))
                .collect();
            panic!(
                "{} not ready within {STARTUP_TIMEOUT:?} (admin /ready on {ADMIN_PORT}, ports {ports:?})\n{}",
                self.ns.name(),
                logs.join("\n")
            );
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for child in &self.children {
                eprintln!("--- log of {}:\n{}", child.name(), child.log_tail(60));
            }
        }
    }
}

/// What a client app printed: `weft-test-app get` writes `status=<code>` then the body.
#[derive(Debug)]
struct AppResponse {
    status: u16,
    body: String,
}

/// The binaries, staged where the unprivileged UIDs can execute them.
struct Bins {
    proxy: PathBuf,
    app: PathBuf,
}

fn command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    // Nothing from the developer's environment (WEFT_*, RUST_LOG…) changes what is tested.
    cmd.env_clear().env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    cmd
}

/// Runs `weft-proxy init <flags>` in `pod` the way an operator would: `ip netns exec`.
fn init(pod: &Pod, bins: &Bins, flags: &[&str]) -> String {
    let mut cmd = command(Path::new("ip"));
    cmd.args(["netns", "exec", pod.ns.name()])
        .arg(&bins.proxy)
        .arg("init")
        .args(flags);
    run_ok(&mut cmd, netns::COMMAND_TIMEOUT)
}

/// `weft-test-app get <url>` in `pod`, as `uid`, like an app making a call.
fn app_get(pod: &Pod, bins: &Bins, uid: u32, url: &str) -> AppResponse {
    let mut cmd = command(&bins.app);
    cmd.args(["get", url]).uid(uid).gid(uid).current_dir("/");
    let output = pod
        .ns
        .run_in(|| output_with_timeout(&mut cmd, REQUEST_TIMEOUT + Duration::from_secs(5)))
        .unwrap_or_else(|err| panic!("GET {url} from {}: {err}", pod.ns.name()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let (status, body) = stdout
        .split_once('\n')
        .and_then(|(first, body)| Some((first.strip_prefix("status=")?.parse().ok()?, body)))
        .unwrap_or_else(|| {
            panic!(
                "GET {url} from {} as uid {uid} failed ({}): {stderr}{stdout}",
                pod.ns.name(),
                output.status
            )
        });
    AppResponse {
        status,
        body: body.to_owned(),
    }
}

/// Scrapes `pod` until `name{direction}` reaches `at_least`, and returns the last scrape.
fn wait_for_count(pod: &Pod, name: &str, direction: &str, at_least: f64) -> Metrics {
    let mut last = Metrics::default();
    let reached = wait_for(METRICS_TIMEOUT, || {
        last = pod.scrape();
        (last.sum(name, &[("direction", direction)]) >= at_least).then_some(())
    });
    assert!(
        reached.is_some(),
        "{}: {name}{{direction=\"{direction}\"}} stayed at {} (wanted {at_least}); scrape:\n{:#?}",
        pod.ns.name(),
        last.sum(name, &[("direction", direction)]),
        last.select(name, &[]).collect::<Vec<_>>()
    );
    last
}

/// The `weft_*` counters in a scrape that a direction's traffic moves.
fn counters(m: &Metrics, direction: &str) -> (f64, f64) {
    let labels = [("direction", direction)];
    (
        m.sum(REQUESTS_TOTAL, &labels),
        m.sum(CONNECTIONS_OPENED, &labels),
    )
}

/// Lines of `iptables-save -t nat` in `pod` that mention Weft's chains.
fn weft_rules(pod: &Pod) -> Vec<String> {
    let mut cmd = Command::new("iptables-save");
    cmd.args(["-t", "nat"]);
    pod.ns
        .run_ok(&mut cmd, netns::COMMAND_TIMEOUT)
        .lines()
        .filter(|l| l.contains("WEFT_"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn requests_cross_two_meshed_pods() {
    if !is_root() {
        eprintln!("skipping requests_cross_two_meshed_pods: needs root");
        return;
    }
    let proxy = bins::weft_proxy(Path::new(env!("CARGO_BIN_EXE_weft-test-app")));
    netns::remove_stale(NS_PREFIX);
    let staging = TempDir::new("weft-pod-bin");
    let dir = TempDir::for_logs("weft-pod-logs");
    let bins = Bins {
        proxy: bins::stage(&proxy, staging.path()),
        app: bins::stage(
            Path::new(env!("CARGO_BIN_EXE_weft-test-app")),
            staging.path(),
        ),
    };
    let id = std::process::id();
    let mut a = Pod::new(&format!("{NS_PREFIX}{id}-a"));
    let mut b = Pod::new(&format!("{NS_PREFIX}{id}-b"));
    netns::connect(&a.ns, A_CIDR, &b.ns, B_CIDR);

    // Init, twice in B: the second run must change nothing.
    init(&a, &bins, &[]);
    let skip = SKIPPED_PORT.to_string();
    init(&b, &bins, &["--skip-inbound-ports", &skip]);
    let once = weft_rules(&b);
    init(&b, &bins, &["--skip-inbound-ports", &skip]);
    let twice = weft_rules(&b);
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
        let mut app = command(&bins.app);
        let name = format!("app-{port}");
        app.args(["serve", "--port", &port.to_string(), "--name", &name]);
        b.start(&name, app, APP_UID, dir.path());
    }
    for (pod, label) in [(&mut a, "a"), (&mut b, "b")] {
        let mut proxy = command(&bins.proxy);
        proxy
            .env("WEFT_MODE", "transparent")
            .env("WEFT_LOG", "debug")
            .env("RUST_BACKTRACE", "1");
        pod.start(&format!("weft-proxy-{label}"), proxy, PROXY_UID, dir.path());
    }
    a.wait_ready(&[]);
    b.wait_ready(&[APP_PORT, SKIPPED_PORT]);

    let a_before = counters(&a.scrape(), "outbound");
    let b_before = counters(&b.scrape(), "inbound");

    // A's app calls B's app: A's outbound proxy, then B's inbound proxy, then the app.
    for i in 0..REQUESTS {
        let url = format!("http://{B_IP}:{APP_PORT}/hello?i={i}");
        let response = app_get(&a, &bins, APP_UID, &url);
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
    let a_m = wait_for_count(&a, REQUESTS_TOTAL, "outbound", a_before.0 + n);
    let b_m = wait_for_count(&b, REQUESTS_TOTAL, "inbound", b_before.0 + n);
    let a_after = counters(&a_m, "outbound");
    let b_after = counters(&b_m, "inbound");
    assert_eq!(a_after.0 - a_before.0, n, "A's outbound requests");
    assert_eq!(b_after.0 - b_before.0, n, "B's inbound requests");
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
    let response = app_get(&a, &bins, APP_UID, &url);
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
    wait_for_count(&a, REQUESTS_TOTAL, "outbound", a_after.0 + 1.0);

    // The admin port is always skipped: a scrape from outside the pod (as Prometheus does;
    // sent as the proxy UID so A's own rules let it go straight out) reaches B's admin server.
    let url = format!("http://{B_IP}:{ADMIN_PORT}/metrics");
    let scrape = app_get(&a, &bins, PROXY_UID, &url);
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
