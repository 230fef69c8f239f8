//! `weftctl check` against a real control plane serving a manifest directory.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const BROKEN: &str = r#"
apiVersion: policy.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: orders-callers, namespace: shop}
spec:
  rules: [{from: [{principals: ["spiffe://cluster.local/ns/*/sa/web"]}]}]
"#;

fn check(admin: std::net::SocketAddr) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_weftctl"))
        .args(["check", "--control-plane-admin", &admin.to_string()])
        .output()
        .expect("run weftctl");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

fn write(dir: &Path, text: &str) {
    let tmp = dir.join("policy.tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, dir.join("policy.yaml")).expect("rename");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_invalid_objects_and_passes_once_fixed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).expect("mkdir");
    write(&manifests, BROKEN);
    std::fs::write(dir.path().join("tokens.yaml"), "tokens: []\n").expect("tokens");
    let config =
        weft_control_plane::Config::local(dir.path().join("state"), dir.path().join("tokens.yaml"))
            .with_manifests(&manifests);
    let cp = weft_control_plane::start(config)
        .await
        .expect("control plane");
    let admin = cp.admin_addr.expect("admin server");

    // `start` returns before the manifest directory's first state is published; until
    // then /ready says 503 (and check says so). Wait for it, bounded.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (ok, out) = loop {
        let (ok, out) = tokio::task::spawn_blocking(move || check(admin))
            .await
            .expect("join");
        if !out.contains("waiting for the first cluster state") || Instant::now() > deadline {
            break (ok, out);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!ok, "an invalid object fails the check:\n{out}");
    assert!(out.contains("✓ control plane"), "{out}");
    assert!(out.contains("✗ 1 invalid object(s)"), "{out}");
    assert!(
        out.contains("AuthorizationPolicy shop/orders-callers")
            && out.contains("spec.rules[0].from[0].principals[0]"),
        "names the object and the field:\n{out}"
    );

    write(&manifests, &BROKEN.replace("ns/*/sa/web", "ns/shop/sa/web"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, out) = tokio::task::spawn_blocking(move || check(admin))
            .await
            .expect("join");
        if ok {
            assert!(
                out.contains("✓ every policy object and manifest is valid"),
                "{out}"
            );
            assert!(out.contains("✓ 0 proxies connected"), "{out}");
            assert!(
                out.contains("✓ CA issuer (a root) ") && out.contains("is valid, expires in"),
                "{out}"
            );
            assert!(out.contains("✓ trust anchor "), "{out}");
            assert!(
                out.contains("✓ 0 proxies run the control plane's version"),
                "{out}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still failing after the fix:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A CA closer to expiry than --min-ca-validity fails (the local root lasts 10 years).
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_weftctl"))
            .args(["check", "--control-plane-admin", &admin.to_string()])
            .args(["--min-ca-validity", "20000days"])
            .output()
            .expect("run weftctl")
    })
    .await
    .expect("join");
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{out}");
    assert!(out.contains("✗ CA issuer (a root) "), "{out}");
    assert!(out.contains("within 20000 days: rotate it"), "{out}");

    // Nobody listening: a clear failure, not a hang.
    cp.shutdown().await.expect("shutdown");
    let (ok, out) = tokio::task::spawn_blocking(move || check(admin))
        .await
        .expect("join");
    assert!(!ok);
    assert!(out.contains("✗ control plane"), "{out}");
}
