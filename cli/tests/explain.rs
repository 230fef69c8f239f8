//! `weftctl authz explain` against a real control plane serving a manifest directory: the
//! decision, the deciding policy, audit and dry-run records, path normalization, STRICT
//! mTLS for plaintext callers, and the pods the control plane does not know.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

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
  name: vault-1
  namespace: shop
  labels: {app: vault}
  annotations: {weft.dev/status: '{"version":"test"}', weft.dev/mtls-mode: strict}
spec:
  serviceAccountName: vault
  containers: [{name: app, image: vault, ports: [{containerPort: 9000}]}]
---
apiVersion: policy.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: orders-callers, namespace: shop}
spec:
  selector: {matchLabels: {app: orders}}
  rules:
  - from: [{principals: ["spiffe://cluster.local/ns/shop/sa/web"]}]
    to: [{methods: [GET, POST], paths: ["/orders*"]}]
---
apiVersion: policy.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  selector: {matchLabels: {app: orders}}
  action: DENY
  rules: [{to: [{paths: ["/orders/admin*"]}]}]
---
apiVersion: policy.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: audit-writes, namespace: shop}
spec:
  selector: {matchLabels: {app: orders}}
  action: AUDIT
  rules: [{to: [{methods: [POST]}]}]
---
apiVersion: policy.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: tenants-only
  namespace: shop
  annotations: {weft.dev/dry-run: "true"}
spec:
  selector: {matchLabels: {app: orders}}
  action: DENY
  rules: [{when: [{header: x-tenant, notValues: [acme]}]}]
"#;

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

struct Explained {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn explain(admin: SocketAddr, args: &[&str]) -> Explained {
    let output = Command::new(env!("CARGO_BIN_EXE_weftctl"))
        .args([
            "authz",
            "explain",
            "--control-plane-admin",
            &admin.to_string(),
        ])
        .args(args)
        .output()
        .expect("run weftctl");
    Explained {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn line<'a>(out: &'a Explained, prefix: &str) -> &'a str {
    out.stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in\n{}{}", out.stdout, out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explains_decisions_with_the_live_policies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).expect("mkdir");
    std::fs::write(manifests.join("cluster.yaml"), CLUSTER).expect("write");
    std::fs::write(dir.path().join("tokens.yaml"), "tokens: []\n").expect("tokens");
    let config =
        weft_control_plane::Config::local(dir.path().join("state"), dir.path().join("tokens.yaml"))
            .with_manifests(&manifests);
    let cp = weft_control_plane::start(config)
        .await
        .expect("control plane");
    let admin = cp.admin_addr.expect("admin server");

    let run = move |args: &'static [&'static str]| {
        tokio::task::spawn_blocking(move || explain(admin, args))
    };
    // Until the first state is in, the control plane says so (and weftctl exits 1).
    let deadline = Instant::now() + Duration::from_secs(10);
    let allowed = loop {
        let out = run(&[
            "--caller",
            WEB,
            "-n",
            "shop",
            "--pod",
            "orders-1",
            "--port",
            "8080",
            "--method",
            "GET",
            "--path",
            "/orders/1",
        ])
        .await
        .unwrap();
        if out.code != Some(1) || Instant::now() > deadline {
            break out;
        }
        assert!(
            out.stderr.contains("waiting for the first cluster state"),
            "{}",
            out.stderr
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        allowed.code,
        Some(0),
        "{}{}",
        allowed.stdout,
        allowed.stderr
    );
    assert!(line(&allowed, "target").contains("spiffe://cluster.local/ns/shop/sa/orders"));
    assert!(
        line(&allowed, "decision").contains("ALLOW, decided by policy shop/orders-callers"),
        "{}",
        allowed.stdout
    );
    // The dry-run policy would deny requests without x-tenant: acme, like this one.
    assert!(
        line(&allowed, "recorded").contains("dry-run deny: shop/tenants-only"),
        "{}",
        allowed.stdout
    );
    assert!(line(&allowed, "policies").contains("4 select this workload"));
    assert!(
        allowed
            .stdout
            .contains("shop/orders-callers  matches  ← decides"),
        "{}",
        allowed.stdout
    );
    assert!(
        allowed
            .stdout
            .contains("shop/deny-admin      does not match"),
        "{}",
        allowed.stdout
    );

    // A DENY policy wins; the path is normalized first, as the proxy does.
    let denied = run(&[
        "--caller",
        WEB,
        "-n",
        "shop",
        "--pod",
        "orders-1",
        "--port",
        "8080",
        "--method",
        "POST",
        "--path",
        "/orders/x/../%61dmin",
        "--header",
        "x-tenant=acme",
    ])
    .await
    .unwrap();
    assert_eq!(denied.code, Some(3), "{}{}", denied.stdout, denied.stderr);
    assert!(
        denied
            .stdout
            .contains("normalizes the path to /orders/admin"),
        "{}",
        denied.stdout
    );
    assert!(line(&denied, "decision").contains("DENY, decided by policy shop/deny-admin"));
    assert!(
        denied.stdout.contains("audit: shop/audit-writes"),
        "{}",
        denied.stdout
    );
    assert!(!denied.stdout.contains("dry-run deny"), "{}", denied.stdout);

    // No ALLOW policy matches another caller: the first ALLOW policy is named.
    let other = run(&[
        "--caller",
        "spiffe://cluster.local/ns/shop/sa/batch",
        "-n",
        "shop",
        "--pod",
        "orders-1",
        "--port",
        "8080",
        "--path",
        "/orders/1",
    ])
    .await
    .unwrap();
    assert_eq!(other.code, Some(3));
    assert!(
        line(&other, "decision")
            .contains("DENY, decided by policy shop/orders-callers (ALLOW policies select"),
        "{}",
        other.stdout
    );

    // Opaque TCP: the ALLOW rule uses HTTP fields, so it never matches a connection.
    let tcp = run(&[
        "--caller", WEB, "-n", "shop", "--pod", "orders-1", "--port", "8080",
    ])
    .await
    .unwrap();
    assert_eq!(tcp.code, Some(3), "{}", tcp.stdout);
    assert!(line(&tcp, "request").contains("opaque TCP"));

    // STRICT mTLS refuses plaintext before any policy; the default allows mesh callers.
    let plaintext = run(&[
        "--caller",
        "plaintext",
        "-n",
        "shop",
        "--pod",
        "vault-1",
        "--port",
        "9000",
        "--path",
        "/",
    ])
    .await
    .unwrap();
    assert_eq!(plaintext.code, Some(3), "{}", plaintext.stdout);
    assert!(
        line(&plaintext, "decision").contains("STRICT mTLS"),
        "{}",
        plaintext.stdout
    );
    let meshed = run(&[
        "--caller", WEB, "-n", "shop", "--pod", "vault-1", "--port", "9000", "--path", "/",
    ])
    .await
    .unwrap();
    assert_eq!(meshed.code, Some(0), "{}", meshed.stdout);
    assert!(line(&meshed, "decision").contains("decided by the workload's default: allow"));

    // A pod the control plane doesn't know gets its namespace's fallback, and says so.
    let unknown = run(&[
        "--caller", WEB, "-n", "shop", "--pod", "ghost", "--port", "80", "--path", "/",
    ])
    .await
    .unwrap();
    assert_eq!(unknown.code, Some(0), "{}", unknown.stdout);
    assert!(
        unknown.stdout.contains("does not know this pod"),
        "{}",
        unknown.stdout
    );
    assert!(line(&unknown, "policies").contains("0 select this workload"));

    // Bad arguments are refused before anything is fetched.
    let bad = run(&["--caller", "web", "-n", "shop", "--pod", "x", "--port", "1"])
        .await
        .unwrap();
    assert_eq!(bad.code, Some(2), "clap's usage error");
    assert!(bad.stderr.contains("plaintext"), "{}", bad.stderr);

    cp.shutdown().await.expect("shutdown");
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["check", "--help"],
        &["stat", "--help"],
        &["authz", "--help"],
        &["authz", "explain", "--help"],
        &["proxy-config", "--help"],
        &["inject", "--help"],
        &["install", "--help"],
        &["version", "--help"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_weftctl"))
            .args(args)
            .output()
            .expect("run weftctl");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{args:?}: {stdout}");
        assert!(stdout.contains("Usage: weftctl"), "{args:?}: {stdout}");
    }
}
