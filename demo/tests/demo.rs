//! The one-command local mesh, run without a terminal: `weft-demo --duration 8s --once`
//! starts the control plane on examples/manifests and five sidecars with their own
//! identities, sends traffic and stops everything. The sidecars' last /metrics (written by
//! `--metrics-out`) must show mTLS with the callers' identities, the 90/10 split, payments'
//! 503s retried away and the scanner denied by the named policy; afterwards no process the
//! demo started may be running. A second run is stopped with SIGINT, as Ctrl-C would.
//!
//! Needs `weft-proxy` and `weft-control-plane` built (`cargo build -p weft-proxy -p
//! weft-control-plane`; `cargo test` at the workspace root builds them).

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use weft_tests::metrics::Metrics;
use weft_tests::process::{output_with_timeout, signal, ChildGuard};
use weft_tests::TempDir;

/// The demo listens on fixed ports (they are in the manifests): one run at a time.
static FIXED_PORTS: Mutex<()> = Mutex::new(());

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const SCANNER: &str = "spiffe://cluster.local/ns/shop/sa/scanner";
const POLICY: &str = "shop/payments-callers";

/// Every port the demo binds (mesh.rs, examples/manifests/pods.yaml).
fn demo_ports() -> Vec<u16> {
    let mut ports = vec![17012, 17014];
    for block in [171u16, 172, 173, 174, 175] {
        ports.extend([block * 100 + 1, block * 100 + 6, block * 100 + 20]);
    }
    ports.extend([17280, 17380, 17480]);
    ports
}

/// The demo, running the `weft-proxy` and `weft-control-plane` the other end-to-end tests
/// would (refused when older than their sources); `weftctl` if it is built beside it.
fn demo() -> Command {
    let demo = PathBuf::from(env!("CARGO_BIN_EXE_weft-demo"));
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let mut cmd = Command::new(&demo);
    cmd.env(
        "WEFT_PROXY_BIN",
        weft_tests::bins::weft_proxy(&demo, workspace),
    )
    .env(
        "WEFT_CONTROL_PLANE_BIN",
        weft_tests::bins::weft_control_plane(&demo, workspace),
    );
    cmd
}

/// The pids of the processes the demo reports starting (`started <name> pid <n>`).
fn started_pids(stderr: &str) -> Vec<u32> {
    stderr
        .lines()
        .filter_map(|line| line.split(" pid ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

fn assert_nothing_left(pids: &[u32], output: &str) {
    assert_eq!(
        pids.len(),
        6,
        "a control plane and five proxies started:\n{output}"
    );
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} is still running after the demo exited:\n{output}"
        );
    }
    for port in demo_ports() {
        TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|err| panic!("port {port} still in use after the demo: {err}"));
    }
}

fn read_metrics(dir: &Path, workload: &str) -> Metrics {
    let path = dir.join(format!("{workload}.prom"));
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    Metrics::parse(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

#[test]
fn the_demo_shows_mtls_the_split_retries_and_a_denial_then_leaves_nothing_running() {
    let _ports = FIXED_PORTS.lock().unwrap_or_else(|p| p.into_inner());
    let out = TempDir::for_logs("weft-demo-metrics");
    let mut cmd = demo();
    cmd.args(["--duration", "8s", "--once", "--metrics-out"])
        .arg(out.path());
    let run = output_with_timeout(&mut cmd, Duration::from_secs(90)).expect("the demo ran");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    let output = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(run.status.success(), "the demo failed:\n{output}");
    println!("{stdout}");

    // mTLS: every call arrived over mTLS, with the caller's identity from its certificate.
    for callee in ["orders-v1", "orders-v2", "payments"] {
        let m = read_metrics(out.path(), callee);
        let inbound = [("direction", "inbound")];
        let from_frontend = m.sum(
            "weft_requests_total",
            &[
                ("direction", "inbound"),
                ("tls", "true"),
                ("client_id", FRONTEND),
            ],
        );
        assert!(
            from_frontend > 0.0,
            "{callee} got mTLS calls from the frontend:\n{output}"
        );
        let plaintext = m.sum(
            "weft_requests_total",
            &[("direction", "inbound"), ("tls", "false")],
        );
        assert_eq!(plaintext, 0.0, "{callee}: no plaintext requests");
        assert!(m.sum("weft_requests_total", &inbound) > 0.0);
    }
    assert!(
        stdout.contains(FRONTEND) && stdout.contains(SCANNER),
        "the view names the identities:\n{output}"
    );

    // The 90/10 split, as the frontend's sidecar decided it and as orders-v2 received it.
    let frontend = read_metrics(out.path(), "frontend");
    let routed = |backend: &str| {
        frontend.sum(
            "weft_route_requests_total",
            &[("route", "shop/orders-split"), ("backend", backend)],
        )
    };
    let (v1, v2) = (routed("shop/orders-v1:80"), routed("shop/orders-v2:80"));
    let share = v2 / (v1 + v2);
    println!("split: v1 {v1}, v2 {v2} ({:.1}% to v2)", share * 100.0);
    assert!(v1 + v2 >= 80.0, "enough calls to orders: {v1} + {v2}");
    assert!(
        (0.02..=0.30).contains(&share),
        "roughly 10% to orders-v2: {v2} of {}",
        v1 + v2
    );
    let at_v2 = read_metrics(out.path(), "orders-v2").sum(
        "weft_requests_total",
        &[("direction", "inbound"), ("client_id", FRONTEND)],
    );
    assert_eq!(at_v2, v2, "orders-v2 received what the route sent it");

    // Retries: payments' 503s were retried by the frontend's sidecar and the app saw
    // (almost) none of them.
    let payments = read_metrics(out.path(), "payments");
    let failed_tries = payments.sum(
        "weft_responses_total",
        &[
            ("direction", "inbound"),
            ("client_id", FRONTEND),
            ("status_class", "5xx"),
        ],
    );
    let retries = frontend.sum("weft_retries_total", &[("target", "shop/payments:80")]);
    let answered = frontend.sum(
        "weft_responses_total",
        &[("direction", "outbound"), ("target", "shop/payments:80")],
    );
    let answered_ok = frontend.sum(
        "weft_responses_total",
        &[
            ("direction", "outbound"),
            ("target", "shop/payments:80"),
            ("status_class", "2xx"),
        ],
    );
    println!(
        "payments: {failed_tries} tries failed, {retries} retries, the frontend got {answered_ok} \
         ok of {answered}"
    );
    assert!(failed_tries > 0.0, "payments failed some tries");
    assert!(retries > 0.0, "the failures were retried");
    assert!(answered >= 40.0, "enough calls to payments: {answered}");
    assert!(
        answered_ok / answered >= 0.97,
        "retries absorbed the failures: {answered_ok} ok of {answered}"
    );
    assert!(stdout.contains("the frontend app saw"), "{output}");

    // The denial, named.
    let denied = payments.sum(
        "weft_authz_decisions_total",
        &[("policy", POLICY), ("decision", "deny")],
    );
    assert!(denied > 0.0, "the scanner was denied:\n{output}");
    assert!(
        stdout.contains(&format!("weft-authz-policy: {POLICY}")),
        "the scanner saw the policy's name:\n{output}"
    );

    assert_nothing_left(&started_pids(&stderr), &output);
}

#[test]
fn sigint_stops_everything_the_demo_started() {
    let _ports = FIXED_PORTS.lock().unwrap_or_else(|p| p.into_inner());
    let mut child = demo()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the demo");
    let stdout = read_all(child.stdout.take().expect("piped"));
    let stderr_lines = read_lines(child.stderr.take().expect("piped"));
    let pid = child.id();
    // Stopped (SIGTERM, then SIGKILL) if the test fails before it exits.
    let mut demo = ChildGuard::new("weft-demo", child, None);

    let mut stderr = String::new();
    let started = loop {
        match stderr_lines.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                stderr.push_str(&line);
                stderr.push('\n');
                if line.starts_with("traffic started") {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    assert!(
        started,
        "the demo did not get to sending traffic:\n{stderr}"
    );
    std::thread::sleep(Duration::from_secs(2));
    signal(pid, libc::SIGINT);
    let status = demo
        .wait_exit(Duration::from_secs(20))
        .expect("the demo exits on SIGINT");
    while let Ok(line) = stderr_lines.recv_timeout(Duration::from_secs(5)) {
        stderr.push_str(&line);
        stderr.push('\n');
    }
    let stdout = stdout.join().unwrap_or_default();
    let output = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(status.success(), "exit status {status}:\n{output}");
    assert!(
        stdout.contains("final figures"),
        "the last figures are printed:\n{output}"
    );
    assert_nothing_left(&started_pids(&stderr), &output);
}

fn read_all(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

fn read_lines(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}
