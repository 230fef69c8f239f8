//! Authorization end to end with real processes: a `weft-control-plane` serving a watched
//! manifest directory, two `weft-proxy` sidecars (web calls orders over mTLS) and an app.
//! A policy edited in the directory is enforced by the orders proxy, and the time that took
//! is measured; with the control plane killed the proxies keep enforcing the last view, and
//! a restarted control plane brings the next change. Local mode on 127.0.0.1, no root.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weft_tests::process::ChildGuard;
use weft_tests::{http, TempDir};

const STEP: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

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
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: shop
  labels: {app: web}
  annotations: {weft.dev/status: '{"version":"test"}'}
spec:
  serviceAccountName: web
  containers: [{name: app, image: web}]
"#;

/// Only `principal` may call orders.
fn allow_only(principal: &str) -> String {
    format!(
        r#"apiVersion: policy.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: orders-callers, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: orders}}}}
  rules: [{{from: [{{principals: ["{principal}"]}}]}}]
"#
    )
}

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}

fn bins() -> (PathBuf, PathBuf, PathBuf) {
    let test_app = PathBuf::from(env!("CARGO_BIN_EXE_weft-test-app"));
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    (
        weft_tests::bins::weft_proxy(&test_app, workspace),
        weft_tests::bins::weft_control_plane(&test_app, workspace),
        test_app,
    )
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
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

fn wait_ready(child: &mut ChildGuard, admin: SocketAddr) {
    let ready = weft_tests::wait_for(STEP, || {
        http::get(admin, "/ready", Duration::from_millis(200))
            .ok()
            .filter(|r| r.status == 200)
    });
    if ready.is_none() {
        child.check_running().expect("still running");
        panic!("{} not ready; log:\n{}", child.name(), child.log_tail(40));
    }
}

struct Mesh {
    dir: TempDir,
    control_plane_bin: PathBuf,
    grpc: SocketAddr,
    cp_admin: SocketAddr,
    /// web's listener for orders: requests sent here cross both proxies.
    to_orders: SocketAddr,
    orders_admin: SocketAddr,
    children: Vec<ChildGuard>,
}

impl Mesh {
    fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    fn write_policy(&self, text: &str) {
        write_atomically(&self.manifests().join("policy.yaml"), text);
    }

    fn start_control_plane(&self) -> ChildGuard {
        let state = self.dir.path().join("state");
        let mut cmd = Command::new(&self.control_plane_bin);
        cmd.arg("--state-dir")
            .arg(&state)
            .arg("--token-file")
            .arg(self.dir.path().join("tokens.yaml"))
            .arg("--manifests")
            .arg(self.manifests())
            .arg("--grpc-addr")
            .arg(self.grpc.to_string())
            .arg("--admin-addr")
            .arg(self.cp_admin.to_string());
        let mut child = spawn("control-plane", cmd, self.dir.path());
        wait_ready(&mut child, self.cp_admin);
        child
    }

    fn start() -> Mesh {
        let (proxy_bin, control_plane_bin, test_app) = bins();
        let dir = TempDir::for_logs("weft-policy");
        std::fs::create_dir(dir.path().join("manifests")).expect("mkdir");
        std::fs::write(
            dir.path().join("tokens.yaml"),
            "tokens:\n  - {token: web-token, namespace: shop, serviceAccount: web}\n  \
             - {token: orders-token, namespace: shop, serviceAccount: orders}\n",
        )
        .expect("tokens");
        std::fs::write(dir.path().join("web.token"), "web-token").expect("token");
        std::fs::write(dir.path().join("orders.token"), "orders-token").expect("token");
        let mut mesh = Mesh {
            control_plane_bin,
            grpc: free_addr(),
            cp_admin: free_addr(),
            to_orders: free_addr(),
            orders_admin: free_addr(),
            children: Vec::new(),
            dir,
        };
        write_atomically(&mesh.manifests().join("cluster.yaml"), CLUSTER);
        mesh.write_policy(&allow_only(WEB));
        let cp = mesh.start_control_plane();
        mesh.children.push(cp);

        let app = free_addr();
        let mut cmd = Command::new(&test_app);
        cmd.args(["serve", "--bind", "127.0.0.1", "--name", "orders", "--port"])
            .arg(app.port().to_string());
        mesh.children.push(spawn("app", cmd, mesh.dir.path()));

        let orders_inbound = free_addr();
        let mut orders = mesh.proxy(&proxy_bin, "orders", "orders-1", mesh.orders_admin);
        orders
            .arg("--inbound-addr")
            .arg(orders_inbound.to_string())
            .arg("--inbound-app")
            .arg(app.to_string());
        let mut orders = spawn("orders-proxy", orders, mesh.dir.path());
        wait_ready(&mut orders, mesh.orders_admin);
        mesh.children.push(orders);

        let web_config = mesh.dir.path().join("web.yaml");
        std::fs::write(
            &web_config,
            format!(
                "listeners:\n  - name: orders\n    bind: \"{}\"\n    target: \"{orders_inbound}\"\n    \
                 identity: spiffe://cluster.local/ns/shop/sa/orders\n",
                mesh.to_orders
            ),
        )
        .expect("web config");
        let web_admin = free_addr();
        let mut web = mesh.proxy(&proxy_bin, "web", "web-1", web_admin);
        web.arg("--inbound-addr")
            .arg("127.0.0.1:0")
            .arg("--config")
            .arg(&web_config);
        let mut web = spawn("web-proxy", web, mesh.dir.path());
        wait_ready(&mut web, web_admin);
        mesh.children.push(web);
        mesh
    }

    fn proxy(&self, bin: &Path, account: &str, pod: &str, admin: SocketAddr) -> Command {
        let mut cmd = Command::new(bin);
        cmd.args(["--mode", "local", "--outbound-addr", "127.0.0.1:0"])
            .args(["--namespace", "shop", "--service-account", account])
            .args(["--pod-name", pod])
            .arg("--admin-addr")
            .arg(admin.to_string())
            .arg("--control-plane-addr")
            .arg(self.grpc.to_string())
            .arg("--trust-anchors")
            .arg(self.dir.path().join("state/bundle.crt"))
            .arg("--identity-token-file")
            .arg(self.dir.path().join(format!("{account}.token")));
        cmd
    }

    fn call_orders(&self) -> http::Response {
        http::get(self.to_orders, "/orders/1", REQUEST_TIMEOUT).expect("a response")
    }

    /// Polls until a call gets `status`; returns how long it took.
    fn until_status(&self, status: u16, since: Instant) -> Duration {
        let got = weft_tests::wait_for(STEP, || {
            let rsp = self.call_orders();
            (rsp.status == status).then_some(rsp)
        });
        got.unwrap_or_else(|| {
            panic!(
                "never got {status}; last: {}; orders proxy log:\n{}",
                self.call_orders().status,
                self.children[2].log_tail(30)
            )
        });
        since.elapsed()
    }

    fn orders_metrics(&self) -> String {
        http::get(self.orders_admin, "/metrics", REQUEST_TIMEOUT)
            .expect("metrics")
            .text()
    }
}

#[test]
fn a_policy_edit_is_enforced_and_survives_a_control_plane_outage() {
    let mut mesh = Mesh::start();
    let rsp = mesh.call_orders();
    assert_eq!(rsp.status, 200, "web is allowed: {}", rsp.text());

    // The live change: only frontend may call orders now.
    let edited = Instant::now();
    mesh.write_policy(&allow_only(FRONTEND));
    let took = mesh.until_status(403, edited);
    eprintln!("policy edit enforced after {took:?}");
    let denied = mesh.call_orders();
    assert_eq!(
        denied.header("weft-authz-policy"),
        Some("shop/orders-callers")
    );
    let metrics = mesh.orders_metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("weft_authz_decisions_total")
                && l.contains("policy=\"shop/orders-callers\"")
                && l.contains("decision=\"deny\"")),
        "denial counted by policy:\n{metrics}"
    );

    // The control plane goes away: the last view stays in force.
    drop(mesh.children.remove(0));
    mesh.write_policy(&allow_only(WEB));
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..5 {
        assert_eq!(
            mesh.call_orders().status,
            403,
            "still enforcing the last view"
        );
    }

    // Back on the same address: the proxies reconnect and get the change made meanwhile.
    let restarted = Instant::now();
    let cp = mesh.start_control_plane();
    mesh.children.insert(0, cp);
    let took = mesh.until_status(200, restarted);
    eprintln!("change made during the outage enforced {took:?} after the restart");
    assert!(took < STEP);
}
