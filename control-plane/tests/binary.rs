//! The `weft-control-plane` binary: flags and `WEFT_CP_*` variables, the trust bundle for
//! local-mode proxies, and a clean exit on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use weft_control_plane::ca::local;

const BIN: &str = env!("CARGO_BIN_EXE_weft-control-plane");

struct Process {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Process {
    fn start(command: &mut Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[control plane] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Process { child, lines }
    }

    /// The `addr` field of the "serving" log line.
    fn serving_addr(&self) -> std::net::SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(line) = self.lines.recv_timeout(left) else {
                break;
            };
            let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if json["fields"]["message"] == "control plane serving gRPC over TLS" {
                return json["fields"]["addr"].as_str().unwrap().parse().unwrap();
            }
        }
        panic!("the control plane did not report serving within 20s");
    }

    /// Async so the test's own gRPC client keeps running (and answers the server's GOAWAY)
    /// while the control plane shuts down.
    async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the control plane did not exit within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn local_mode_from_the_command_line_with_sigterm() {
    let env = Env::new();
    let state = env.state();
    let mut process = Process::start(
        Command::new(BIN)
            .args(["--grpc-addr", "127.0.0.1:0", "--log-format", "json"])
            .arg("--state-dir")
            .arg(&state)
            .env("WEFT_CP_TOKEN_FILE", env.tokens())
            .env("WEFT_CP_CERT_LIFETIME", "45s")
            .env("WEFT_CP_TRUST_DOMAIN", "mesh.test"),
    );
    let addr = process.serving_addr();

    // Local-mode proxies get their trust anchors from DIR/bundle.crt ...
    let bundle_pem = std::fs::read_to_string(local::bundle_path(&state)).unwrap();
    // ... or from --print-trust-bundle, which says the same.
    let printed = Command::new(BIN)
        .arg("--state-dir")
        .arg(&state)
        .arg("--print-trust-bundle")
        .output()
        .unwrap();
    assert!(printed.status.success(), "{printed:?}");
    assert_eq!(String::from_utf8(printed.stdout).unwrap(), bundle_pem);

    let bundle: Vec<_> = rustls::pki_types::pem::PemObject::pem_slice_iter(bundle_pem.as_bytes())
        .collect::<Result<Vec<rustls::pki_types::CertificateDer<'static>>, _>>()
        .unwrap();
    let server_id: weft_api::SpiffeId = "spiffe://mesh.test/ns/weft-system/sa/weft-control-plane"
        .parse()
        .unwrap();
    let mut client = weft_control_plane::client::connect(addr, &bundle, server_id)
        .await
        .unwrap();
    let id: weft_api::SpiffeId = "spiffe://mesh.test/ns/shop/sa/orders".parse().unwrap();
    let before = now_unix();
    let response = client
        .certify(request(
            &id,
            ORDERS_TOKEN,
            csr(&p256(), vec![uri(id.as_str())]),
        ))
        .await
        .unwrap()
        .into_inner();
    let (_, not_after) = check_leaf(&response.chain_der, &response.trust_bundle_der, &id);
    assert!(
        (not_after - before - 45).abs() <= 2,
        "lifetime from WEFT_CP_CERT_LIFETIME"
    );

    unsafe { libc::kill(process.child.id() as i32, libc::SIGTERM) };
    // With the client still connected: shutdown sends it GOAWAY and does not wait out the
    // grace period.
    let signalled = Instant::now();
    let status = process.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "exit after SIGTERM: {status:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "an idle client held shutdown for {:?}",
        signalled.elapsed()
    );
    drop(client);
}

#[test]
fn missing_or_conflicting_settings_are_refused() {
    let env = Env::new();
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).env_clear().output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let state = env.state();
    let state = state.to_str().unwrap();
    let tokens = env.tokens();
    let tokens = tokens.to_str().unwrap();

    let (status, err) = run(&["--token-file", tokens]);
    assert!(!status.success());
    assert!(err.contains("--state-dir"), "{err}");

    let (status, err) = run(&["--state-dir", state]);
    assert!(!status.success());
    assert!(err.contains("--token-file"), "{err}");

    let (status, _) = run(&[
        "--state-dir",
        state,
        "--issuer-cert",
        "x.crt",
        "--token-file",
        tokens,
    ]);
    assert!(!status.success(), "--state-dir with --issuer-cert");

    let (status, err) = run(&[
        "--state-dir",
        state,
        "--token-file",
        tokens,
        "--cert-lifetime",
        "soon",
    ]);
    assert!(!status.success());
    assert!(err.contains("24h"), "{err}");
    assert!(
        !std::path::Path::new(state).exists(),
        "nothing is generated when the flags are wrong"
    );
}
