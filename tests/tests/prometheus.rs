//! The metrics as Prometheus sees them, with real processes: a `weft-control-plane` serving a
//! manifest directory and a `weft-proxy` subscribed to it, which calls the meshed Service
//! `shop/orders` (routed, balanced, breaker and budget in place) and serves its own app
//! inbound under an authorization policy. Local mode on 127.0.0.1, no root.
//!
//! - `promtool check metrics` passes on the proxy's and the control plane's exposition (in
//!   the text format promtool reads). Skipped, with a message, without promtool.
//! - A real Prometheus (Debian's `prometheus` package) scrapes both every second; the
//!   request count its HTTP API reports for the Service matches the requests sent, and both
//!   targets are up (Prometheus parsed their OpenMetrics). Skipped without `prometheus`.
//!
//! `.ci/run` installs the package.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weft_tests::process::ChildGuard;
use weft_tests::{http, TempDir};

const STEP: Duration = Duration::from_secs(15);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CLUSTER_IP: &str = "10.96.0.10";
const TARGET: &str = "shop/orders:80";

fn cluster(app_port: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  namespace: shop
  labels: {{app: web}}
  annotations: {{weft.dev/status: '{{"version":"test"}}'}}
spec:
  serviceAccountName: web
  containers: [{{name: app, image: web, ports: [{{containerPort: {app_port}}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: orders, namespace: shop}}
spec:
  clusterIP: {CLUSTER_IP}
  selector: {{app: orders}}
  ports: [{{name: http, port: 80, targetPort: {app_port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: orders-1
  namespace: shop
  labels: {{kubernetes.io/service-name: orders}}
addressType: IPv4
ports: [{{name: http, port: {app_port}}}]
endpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]
---
apiVersion: policy.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: web-callers, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  rules: [{{to: [{{paths: ["/*"]}}]}}]
"#
    )
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}

/// Whether `program` runs (`--version`).
fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn spawn(name: &str, mut cmd: Command, logs: &Path) -> ChildGuard {
    let log = logs.join(format!("{name}.log"));
    let file = std::fs::File::create(&log).expect("log file");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log file"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|err| panic!("starting {name}: {err}"));
    ChildGuard::new(name, child, Some(log))
}

fn wait_ready(child: &mut ChildGuard, admin: SocketAddr, path: &str) {
    let ready = weft_tests::wait_for(STEP, || {
        http::get(admin, path, Duration::from_millis(500))
            .ok()
            .filter(|r| r.status == 200)
    });
    if ready.is_none() {
        child.check_running().expect("still running");
        panic!("{} not ready; log:\n{}", child.name(), child.log_tail(40));
    }
}

/// The control plane, the app, and the proxy of pod `shop/web-0`.
struct Mesh {
    dir: TempDir,
    cp_admin: SocketAddr,
    proxy_admin: SocketAddr,
    /// The proxy's static listener for the Service's cluster IP: requests sent here are
    /// routed to `shop/orders`.
    to_orders: SocketAddr,
    /// The proxy's inbound listener, in front of the app.
    inbound: SocketAddr,
    _children: Vec<ChildGuard>,
}

impl Mesh {
    fn start(name: &str) -> Mesh {
        let test_app = PathBuf::from(env!("CARGO_BIN_EXE_weft-test-app"));
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root");
        let proxy_bin = weft_tests::bins::weft_proxy(&test_app, workspace);
        let cp_bin = weft_tests::bins::weft_control_plane(&test_app, workspace);
        let dir = TempDir::for_logs(name);
        let mut children = Vec::new();

        let app = free_addr();
        let mut cmd = Command::new(&test_app);
        cmd.args(["serve", "--bind", "127.0.0.1", "--name", "orders", "--port"])
            .arg(app.port().to_string());
        children.push(spawn("app", cmd, dir.path()));

        let manifests = dir.path().join("manifests");
        std::fs::create_dir(&manifests).expect("mkdir");
        std::fs::write(manifests.join("cluster.yaml"), cluster(app.port())).expect("manifests");
        std::fs::write(
            dir.path().join("tokens.yaml"),
            "tokens:\n  - {token: web-token, namespace: shop, serviceAccount: web}\n",
        )
        .expect("tokens");
        std::fs::write(dir.path().join("web.token"), "web-token").expect("token");
        let (grpc, cp_admin) = (free_addr(), free_addr());
        let mut cmd = Command::new(&cp_bin);
        cmd.arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--token-file")
            .arg(dir.path().join("tokens.yaml"))
            .arg("--manifests")
            .arg(&manifests)
            .arg("--grpc-addr")
            .arg(grpc.to_string())
            .arg("--admin-addr")
            .arg(cp_admin.to_string());
        let mut cp = spawn("control-plane", cmd, dir.path());
        wait_ready(&mut cp, cp_admin, "/ready");
        children.push(cp);

        let (proxy_admin, to_orders, inbound) = (free_addr(), free_addr(), free_addr());
        let config = dir.path().join("web.yaml");
        std::fs::write(
            &config,
            format!(
                "listeners:\n  - name: orders\n    bind: \"{to_orders}\"\n    target: \"{CLUSTER_IP}:80\"\n"
            ),
        )
        .expect("proxy config");
        let mut cmd = Command::new(&proxy_bin);
        cmd.args(["--mode", "local", "--outbound-addr", "127.0.0.1:0"])
            .args(["--namespace", "shop", "--service-account", "web"])
            .args(["--pod-name", "web-0"])
            .arg("--inbound-addr")
            .arg(inbound.to_string())
            .arg("--inbound-app")
            .arg(app.to_string())
            .arg("--admin-addr")
            .arg(proxy_admin.to_string())
            .arg("--config")
            .arg(&config)
            .arg("--control-plane-addr")
            .arg(grpc.to_string())
            .arg("--trust-anchors")
            .arg(dir.path().join("state/bundle.crt"))
            .arg("--identity-token-file")
            .arg(dir.path().join("web.token"));
        let mut proxy = spawn("web-proxy", cmd, dir.path());
        wait_ready(&mut proxy, proxy_admin, "/ready");
        children.push(proxy);
        Mesh {
            dir,
            cp_admin,
            proxy_admin,
            to_orders,
            inbound,
            _children: children,
        }
    }

    /// Sends `n` requests to the Service and `n` to the app inbound; all must succeed.
    fn traffic(&self, n: usize) {
        for i in 0..n {
            for addr in [self.to_orders, self.inbound] {
                let rsp = http::get(addr, &format!("/orders/{i}"), REQUEST_TIMEOUT)
                    .unwrap_or_else(|e| panic!("request {i} to {addr}: {e}"));
                assert_eq!(rsp.status, 200, "request {i} to {addr}: {}", rsp.text());
            }
        }
    }
}

/// `/metrics` in the Prometheus text format, as `promtool` reads it.
fn exposition(admin: SocketAddr) -> String {
    let mut stream = std::net::TcpStream::connect(admin).expect("connect");
    stream.set_read_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    use std::io::Write as _;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {admin}\r\nAccept: text/plain;version=0.0.4\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let rsp = http::read_response(&mut std::io::BufReader::new(stream)).expect("response");
    assert_eq!(rsp.status, 200);
    assert!(
        rsp.header("content-type")
            .is_some_and(|ct| ct.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        rsp.header("content-type")
    );
    rsp.text()
}

fn promtool_check(what: &str, text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
    }
    let output = child.wait_with_output().expect("promtool");
    assert!(
        output.status.success(),
        "promtool check metrics on the {what}'s exposition:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn promtool_accepts_the_proxy_and_control_plane_metrics() {
    if !installed("promtool") {
        eprintln!("skipped: promtool is not installed (Debian: apt-get install prometheus)");
        return;
    }
    let mesh = Mesh::start("weft-promtool");
    mesh.traffic(5);
    let proxy = exposition(mesh.proxy_admin);
    // Every kind of family is there to be checked: request counters and histograms, the
    // scrape-time traffic state, authorization, identity, discovery and the info gauge.
    for family in [
        "weft_requests_total{",
        "weft_response_latency_seconds_bucket{",
        "weft_balancer_endpoints{",
        "weft_circuit_breaker_max_requests{",
        "weft_authz_decisions_total{",
        "weft_identity_cert_expiration_timestamp_seconds ",
        "weft_discovery_connected 1",
        "weft_proxy_info{",
    ] {
        assert!(proxy.contains(family), "no {family} in\n{proxy}");
    }
    promtool_check("proxy", &proxy);
    let cp = exposition(mesh.cp_admin);
    for family in [
        "weft_cp_subscribers 1",
        "weft_cp_acks_total{",
        "weft_cp_ca_issuer_expiration_timestamp_seconds ",
    ] {
        assert!(cp.contains(family), "no {family} in\n{cp}");
    }
    assert!(!cp.contains("\n_weft"), "names start with weft_:\n{cp}");
    promtool_check("control plane", &cp);
}

/// A Prometheus server on 127.0.0.1 with its own storage; killed (and its storage removed)
/// on drop.
struct Prometheus {
    addr: SocketAddr,
    _child: ChildGuard,
}

impl Prometheus {
    fn start(dir: &Path, targets: &[SocketAddr]) -> Prometheus {
        let addr = free_addr();
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n  - job_name: weft\n    static_configs: [{{targets: [{}]}}]\n",
                targets.join(", ")
            ),
        )
        .expect("prometheus config");
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"));
        let mut child = spawn("prometheus", cmd, dir);
        wait_ready(&mut child, addr, "/-/ready");
        Prometheus {
            addr,
            _child: child,
        }
    }

    /// The single value of an instant query, or `None` while it has no result.
    fn query(&self, promql: &str) -> Option<f64> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let rsp = http::get(self.addr, &path, REQUEST_TIMEOUT).ok()?;
        assert_eq!(rsp.status, 200, "{promql}: {}", rsp.text());
        let body: serde_json::Value = serde_json::from_str(&rsp.text()).expect("JSON");
        assert_eq!(body["status"], "success", "{promql}: {body}");
        let result = body["data"]["result"].as_array()?;
        let [sample] = result.as_slice() else {
            assert!(result.is_empty(), "{promql}: more than one series: {body}");
            return None;
        };
        sample["value"][1].as_str()?.parse().ok()
    }

    /// Polls until `promql` is `want`; panics with the last value after [`STEP`].
    fn until(&self, promql: &str, want: f64) {
        let deadline = Instant::now() + STEP;
        let mut last = None;
        while Instant::now() < deadline {
            last = self.query(promql);
            if last == Some(want) {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("{promql}: {last:?} after {STEP:?}, expected {want}");
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn prometheus_scrapes_the_proxy_and_counts_every_request() {
    if !installed("prometheus") {
        eprintln!("skipped: prometheus is not installed (Debian: apt-get install prometheus)");
        return;
    }
    let mesh = Mesh::start("weft-prometheus");
    let prometheus = Prometheus::start(mesh.dir.path(), &[mesh.proxy_admin, mesh.cp_admin]);
    // Both targets scraped and parsed (a target whose OpenMetrics doesn't parse is down).
    prometheus.until("sum(up{job=\"weft\"})", 2.0);

    const N: usize = 25;
    mesh.traffic(N);
    let n = N as f64;
    prometheus.until(
        &format!("sum(weft_requests_total{{direction=\"outbound\",target=\"{TARGET}\"}})"),
        n,
    );
    prometheus.until(
        "sum(weft_responses_total{direction=\"inbound\",status_class=\"2xx\"})",
        n,
    );
    prometheus.until(
        "sum(weft_authz_decisions_total{policy=\"shop/web-callers\",decision=\"allow\"})",
        n,
    );
    prometheus.until(
        &format!("sum(weft_response_latency_seconds_count{{target=\"{TARGET}\"}})"),
        n,
    );
    prometheus.until("sum(weft_cp_subscribers)", 1.0);
    prometheus.until(
        &format!("sum(weft_balancer_endpoints{{target=\"{TARGET}\",state=\"serving\"}})"),
        1.0,
    );
}
