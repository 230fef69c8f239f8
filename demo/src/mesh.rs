//! The mesh's processes: `weft-control-plane` serving `examples/manifests` and one
//! `weft-proxy` per workload in local mode, each with its own service-account token, and
//! the guarantee that all of them stop with the demo.
//!
//! Every child runs in one process group of its own (so a Ctrl-C in the terminal reaches the
//! demo alone, which then stops traffic, takes the last figures and stops the children in
//! order) and is told by the kernel to terminate if the demo dies without cleaning up
//! (`PR_SET_PDEATHSIG`). [`Processes`] stops everything when dropped, on every exit path.

use std::fs::File;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::http;

pub const NAMESPACE: &str = "shop";
pub const TRUST_DOMAIN: &str = "cluster.local";
pub const CONTROL_PLANE_GRPC: u16 = 17012;
pub const CONTROL_PLANE_ADMIN: u16 = 17014;
const STARTUP: Duration = Duration::from_secs(30);

/// A pod of the demo: its identity and its ports. Must agree with examples/manifests
/// (pods.yaml lists the same ports).
pub struct Workload {
    pub name: &'static str,
    pub pod: &'static str,
    pub account: &'static str,
    /// Ports are `<block>01` (outbound), `<block>06` (inbound), `<block>20` (admin) and
    /// `<block>80` (the app, when there is one).
    block: u16,
    pub has_app: bool,
}

pub const WORKLOADS: [Workload; 5] = [
    Workload::new("frontend", "frontend-0", "frontend", 171, false),
    Workload::new("orders-v1", "orders-v1-0", "orders", 172, true),
    Workload::new("orders-v2", "orders-v2-0", "orders", 173, true),
    Workload::new("payments", "payments-0", "payments", 174, true),
    Workload::new("scanner", "scanner-0", "scanner", 175, false),
];

pub fn workload(name: &str) -> &'static Workload {
    WORKLOADS
        .iter()
        .find(|w| w.name == name)
        .expect("a demo workload")
}

pub fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

impl Workload {
    const fn new(
        name: &'static str,
        pod: &'static str,
        account: &'static str,
        block: u16,
        has_app: bool,
    ) -> Self {
        Workload {
            name,
            pod,
            account,
            block,
            has_app,
        }
    }

    pub fn outbound(&self) -> SocketAddr {
        localhost(self.block * 100 + 1)
    }
    pub fn inbound(&self) -> SocketAddr {
        localhost(self.block * 100 + 6)
    }
    pub fn admin(&self) -> SocketAddr {
        localhost(self.block * 100 + 20)
    }
    pub fn app(&self) -> SocketAddr {
        localhost(self.block * 100 + 80)
    }

    pub fn identity(&self) -> String {
        format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{}", self.account)
    }

    fn ports(&self) -> Vec<SocketAddr> {
        let mut ports = vec![self.outbound(), self.inbound(), self.admin()];
        if self.has_app {
            ports.push(self.app());
        }
        ports
    }
}

/// Every address the demo listens on, with an error naming the first one that is taken.
pub fn check_ports_free() -> Result<(), String> {
    let mut all = vec![
        localhost(CONTROL_PLANE_GRPC),
        localhost(CONTROL_PLANE_ADMIN),
    ];
    all.extend(WORKLOADS.iter().flat_map(Workload::ports));
    for addr in all {
        TcpListener::bind(addr).map_err(|err| {
            format!("{addr} is not free ({err}); is another weft-demo running? (`ss -ltnp 'sport = {}'` tells what holds it)", addr.port())
        })?;
    }
    Ok(())
}

/// The binaries the demo runs.
pub struct Binaries {
    pub proxy: PathBuf,
    pub control_plane: PathBuf,
    /// Optional: without it the demo skips `weftctl check`.
    pub weftctl: Option<PathBuf>,
}

impl Binaries {
    /// In `dir`, unless `WEFT_PROXY_BIN` or `WEFT_CONTROL_PLANE_BIN` names the binary (as
    /// for the end-to-end tests).
    pub fn find(dir: &Path) -> Result<Binaries, String> {
        let required = |name: &str, var: &str| {
            let path = std::env::var_os(var)
                .map(PathBuf::from)
                .unwrap_or_else(|| dir.join(name));
            if path.is_file() {
                Ok(path)
            } else {
                Err(format!(
                    "{} not found: build it (`cargo build -p {name}`) or point --bin-dir at it",
                    path.display()
                ))
            }
        };
        Ok(Binaries {
            proxy: required("weft-proxy", "WEFT_PROXY_BIN")?,
            control_plane: required("weft-control-plane", "WEFT_CONTROL_PLANE_BIN")?,
            weftctl: Some(dir.join("weftctl")).filter(|p| p.is_file()),
        })
    }
}

struct Running {
    name: String,
    child: Child,
    log: PathBuf,
}

/// The children, stopped on drop: SIGTERM to each, SIGKILL to what remains after 3 s, and
/// a final SIGKILL to the whole process group.
#[derive(Default)]
pub struct Processes {
    group: Option<libc::pid_t>,
    children: Vec<Running>,
}

impl Processes {
    /// Starts `cmd` in the demo's process group with stdout and stderr to `log`; prints its pid.
    pub fn spawn(&mut self, name: &str, mut cmd: Command, log: PathBuf) -> Result<(), String> {
        let file = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err_file = file
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(file)
            .stderr(err_file)
            .process_group(self.group.unwrap_or(0));
        // SAFETY: prctl(2) is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            format!(
                "starting {name} ({}): {e}",
                cmd.get_program().to_string_lossy()
            )
        })?;
        let pid = child.id();
        self.group.get_or_insert(pid as libc::pid_t);
        eprintln!("  started {name:<20} pid {pid:<7} log {}", log.display());
        self.children.push(Running {
            name: name.to_owned(),
            child,
            log,
        });
        Ok(())
    }

    /// Waits until `GET admin/ready` answers 200; fails early when a child exits or `stop`
    /// is set. `what` names the process for messages.
    pub fn wait_ready(
        &mut self,
        what: &str,
        admin: SocketAddr,
        stop: &AtomicBool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Err("interrupted while starting".into());
            }
            if let Some(exited) = self.exited() {
                return Err(exited);
            }
            let ready = http::get(admin, "/ready", Duration::from_millis(500));
            if ready.is_ok_and(|r| r.status == 200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = self
                    .children
                    .iter()
                    .find(|r| r.name == what)
                    .map(|r| tail(&r.log, 25))
                    .unwrap_or_default();
                return Err(format!(
                    "{what} not ready after {STARTUP:?}; its log:\n{log}"
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// A child that has exited: its name, status and log tail.
    pub fn exited(&mut self) -> Option<String> {
        self.children.iter_mut().find_map(|r| {
            r.child.try_wait().ok().flatten().map(|status| {
                format!(
                    "{} exited ({status}); its log:\n{}",
                    r.name,
                    tail(&r.log, 25)
                )
            })
        })
    }

    /// Stops every child (idempotent); returns how many were still running.
    pub fn stop(&mut self) -> usize {
        let mut running = 0;
        for r in &mut self.children {
            if matches!(r.child.try_wait(), Ok(None)) {
                running += 1;
                signal(r.child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for r in &mut self.children {
            while matches!(r.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            if matches!(r.child.try_wait(), Ok(None)) {
                eprintln!("  {} did not stop within 3 s: killing it", r.name);
                let _ = r.child.kill();
            }
            let _ = r.child.wait();
        }
        if let Some(group) = self.group.take() {
            // Anything a child may have started in the group (nothing, today).
            signal(-group, libc::SIGKILL);
        }
        self.children.clear();
        running
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions. Unreaped children keep their pid,
    // so it cannot name a recycled process.
    unsafe { libc::kill(pid, sig) };
}

pub fn tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Where the mesh keeps its files: the CA, tokens, logs.
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    fn token(&self, account: &str) -> PathBuf {
        self.dir.join(format!("tokens/{account}"))
    }

    /// One random token per service account, in the control plane's token file and in the
    /// file each proxy reads (what a projected service-account token is in Kubernetes).
    pub fn write_tokens(&self) -> Result<(), String> {
        let io = |e: std::io::Error| format!("{}: {e}", self.dir.display());
        std::fs::create_dir_all(self.dir.join("tokens")).map_err(io)?;
        let mut file = String::from("tokens:\n");
        let mut accounts: Vec<&str> = WORKLOADS.iter().map(|w| w.account).collect();
        accounts.dedup();
        for account in accounts {
            let token: String = std::iter::repeat_with(fastrand::alphanumeric)
                .take(32)
                .collect();
            file.push_str(&format!(
                "  - {{token: \"{token}\", namespace: {NAMESPACE}, serviceAccount: {account}}}\n"
            ));
            std::fs::write(self.token(account), &token).map_err(io)?;
        }
        std::fs::write(self.dir.join("tokens.yaml"), file).map_err(io)
    }

    pub fn control_plane(&self, bin: &Path, manifests: &Path) -> Command {
        let mut cmd = Command::new(bin);
        cmd.arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--token-file")
            .arg(self.dir.join("tokens.yaml"))
            .arg("--manifests")
            .arg(manifests)
            .args(["--grpc-addr", &localhost(CONTROL_PLANE_GRPC).to_string()])
            .args(["--admin-addr", &localhost(CONTROL_PLANE_ADMIN).to_string()])
            .args(["--cert-lifetime", "1h"]);
        cmd
    }

    pub fn proxy(&self, bin: &Path, w: &Workload) -> Command {
        let mut cmd = Command::new(bin);
        cmd.args(["--mode", "local"])
            .args(["--namespace", NAMESPACE, "--service-account", w.account])
            .args(["--pod-name", w.pod])
            .args([
                "--control-plane-addr",
                &localhost(CONTROL_PLANE_GRPC).to_string(),
            ])
            .arg("--trust-anchors")
            .arg(self.dir.join("state/bundle.crt"))
            .arg("--identity-token-file")
            .arg(self.token(w.account))
            .args(["--outbound-addr", &w.outbound().to_string()])
            .args(["--inbound-addr", &w.inbound().to_string()])
            .args(["--admin-addr", &w.admin().to_string()])
            .args(["--shutdown-grace", "1s"]);
        if w.has_app {
            cmd.args(["--inbound-app", &w.app().to_string()]);
        }
        cmd
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }
}

/// Runs a short command (`weftctl check`) in the group, bounded by `timeout`; its stdout.
pub fn run_briefly(mut cmd: Command, timeout: Duration) -> Result<String, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    let mut stdout = child.stdout.take().expect("piped");
    let reader = thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let deadline = Instant::now() + timeout;
    while matches!(child.try_wait(), Ok(None)) {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("did not finish within {timeout:?}"));
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(reader.join().unwrap_or_default())
}
