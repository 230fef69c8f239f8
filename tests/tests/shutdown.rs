//! Shutdown of a real `weft-proxy` process: SIGTERM and `POST /shutdown` drain in-flight
//! requests and exit 0; a request that outlives the grace period is cut and the process still
//! exits. Local mode on 127.0.0.1, no root needed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use weft_tests::process::{signal, ChildGuard};
use weft_tests::{http, TempDir};

const STEP: Duration = Duration::from_secs(5);

/// An upstream that answers each request after `delay`, and reports when a request arrives.
fn slow_upstream(delay: Duration) -> (SocketAddr, mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (arrived_tx, arrived_rx) = mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let arrived = arrived_tx.clone();
            thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                // Read the head; the requests here have no body.
                while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                    if line == "\r\n" {
                        let _ = arrived.send(());
                        thread::sleep(delay);
                        let mut out = &stream;
                        let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow");
                    }
                    line.clear();
                }
            });
        }
    });
    (addr, arrived_rx)
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Running {
    proxy: ChildGuard,
    listener: SocketAddr,
    admin: SocketAddr,
    _dir: TempDir,
}

fn start_proxy(upstream: SocketAddr, grace: &str) -> Running {
    let bin: PathBuf = weft_tests::bins::weft_proxy(
        Path::new(env!("CARGO_BIN_EXE_weft-test-app")),
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap(),
    );
    let dir = TempDir::for_logs("weft-shutdown");
    let (listener, admin) = (free_addr(), free_addr());
    let config = dir.path().join("proxy.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners:\n  - name: slow\n    bind: \"{listener}\"\n    target: \"{upstream}\"\n"
        ),
    )
    .unwrap();
    let log = dir.path().join("proxy.log");
    let child = Command::new(bin)
        .args([
            "--mode",
            "local",
            "--outbound-addr",
            "127.0.0.1:0",
            "--inbound-addr",
            "127.0.0.1:0",
        ])
        .arg("--admin-addr")
        .arg(admin.to_string())
        .arg("--config")
        .arg(&config)
        .args(["--shutdown-grace", grace])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut proxy = ChildGuard::new("weft-proxy", child, Some(log));
    let ready = weft_tests::wait_for(STEP, || {
        http::get(admin, "/ready", Duration::from_millis(200))
            .ok()
            .filter(|r| r.status == 200)
    });
    if ready.is_none() {
        proxy.check_running().unwrap();
        panic!("proxy not ready; log:\n{}", proxy.log_tail(40));
    }
    Running {
        proxy,
        listener,
        admin,
        _dir: dir,
    }
}

/// Sends a request through the proxy on a thread; returns its eventual result.
fn request_in_background(addr: SocketAddr) -> mpsc::Receiver<std::io::Result<http::Response>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(http::get(addr, "/slow", Duration::from_secs(10)));
    });
    rx
}

fn assert_drains_and_exits(mut running: Running, trigger: impl FnOnce(&Running)) {
    let rsp = request_in_background(running.listener);
    trigger(&running);
    let started = Instant::now();
    let rsp = rsp
        .recv_timeout(STEP)
        .expect("in-flight request never finished")
        .expect("in-flight request failed");
    assert_eq!(
        rsp.status, 200,
        "the in-flight request completes during the drain"
    );
    assert_eq!(rsp.text(), "slow");
    let status = running.proxy.wait_exit(STEP).unwrap_or_else(|| {
        panic!(
            "proxy still running after the drain; log:\n{}",
            running.proxy.log_tail(40)
        )
    });
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        running.proxy.log_tail(40)
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "drain took {:?}",
        started.elapsed()
    );
    assert!(
        running.proxy.log_tail(20).contains("drained"),
        "{}",
        running.proxy.log_tail(20)
    );
    assert!(TcpStream::connect_timeout(&running.listener, Duration::from_millis(200)).is_err());
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let (upstream, arrived) = slow_upstream(Duration::from_millis(500));
    let running = start_proxy(upstream, "10s");
    assert_drains_and_exits(running, |r| {
        arrived
            .recv_timeout(STEP)
            .expect("request never reached the upstream");
        // Not ready from the moment the drain starts, so Kubernetes stops sending traffic.
        signal(r.proxy.pid(), libc::SIGTERM);
        let not_ready = weft_tests::wait_for(STEP, || {
            http::get(r.admin, "/ready", Duration::from_millis(200))
                .ok()
                .filter(|r| r.status == 503)
        });
        assert!(
            not_ready.is_some(),
            "/ready did not turn 503 while draining"
        );
    });
}

#[test]
fn post_shutdown_drains_in_flight_requests_then_exits_zero() {
    let (upstream, arrived) = slow_upstream(Duration::from_millis(500));
    let running = start_proxy(upstream, "10s");
    assert_drains_and_exits(running, |r| {
        arrived
            .recv_timeout(STEP)
            .expect("request never reached the upstream");
        let mut admin = TcpStream::connect(r.admin).unwrap();
        write!(admin, "POST /shutdown HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
        let mut reply = String::new();
        admin.set_read_timeout(Some(STEP)).unwrap();
        let _ = admin.read_to_string(&mut reply);
        assert!(reply.starts_with("HTTP/1.1 202"), "{reply}");
    });
}

#[test]
fn a_request_longer_than_the_grace_period_is_cut_and_the_process_exits() {
    let (upstream, arrived) = slow_upstream(Duration::from_secs(30));
    let mut running = start_proxy(upstream, "300ms");
    let rsp = request_in_background(running.listener);
    arrived
        .recv_timeout(STEP)
        .expect("request never reached the upstream");
    let started = Instant::now();
    signal(running.proxy.pid(), libc::SIGTERM);
    let status = running
        .proxy
        .wait_exit(STEP)
        .expect("proxy did not exit after the grace period");
    assert!(status.success(), "exit status {status}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(3),
        "exited after {elapsed:?}"
    );
    assert!(
        running.proxy.log_tail(20).contains("grace period over"),
        "{}",
        running.proxy.log_tail(20)
    );
    let cut = rsp
        .recv_timeout(STEP)
        .expect("client never saw the connection end");
    assert!(
        cut.is_err(),
        "the cut request must fail, got {:?}",
        cut.map(|r| r.status)
    );
}
