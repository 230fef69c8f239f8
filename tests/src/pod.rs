//! Meshed pods for the pod tests: a network namespace with `weft-proxy init`'s rules, a
//! `weft-proxy` running as UID 2102 and apps running as `nobody`, plus the calls a test makes
//! into one (an app's GET, a scrape, the nat rules).
//!
//! Every process has a guard inside its [`Pod`], and the pod's namespace is deleted after
//! them, so a failing assertion still removes everything; the logs are printed when it does.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::http;
use crate::metrics::Metrics;
use crate::netns::{self, Netns};
use crate::process::{output_with_timeout, run_ok, ChildGuard};
use crate::{bins, wait_for, TempDir};

/// Pod namespaces are named `weft-t-<pid>-<suffix>`: unique per run (tests in one binary use
/// distinct suffixes), and stale ones are recognisable by [`netns::remove_stale`].
pub const NS_PREFIX: &str = "weft-t-";
/// The proxy's UID: init's default, so the rules skip the proxy's own connections.
pub const PROXY_UID: u32 = 2102;
/// The apps run as `nobody`: an ordinary UID whose traffic the rules redirect.
pub const APP_UID: u32 = 65534;
/// The proxy's admin server; init always leaves it unredirected.
pub const ADMIN_PORT: u16 = 15020;

pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub const METRICS_TIMEOUT: Duration = Duration::from_secs(10);

/// `PATH` for the children: nothing else from the developer's environment.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The binaries, staged where the unprivileged UIDs can execute them.
pub struct Bins {
    pub proxy: PathBuf,
    pub app: PathBuf,
    _staging: TempDir,
}

impl Bins {
    /// Finds `weft-proxy` (see [`bins::weft_proxy`]) and stages it with `test_app`, the test's
    /// `CARGO_BIN_EXE_weft-test-app`. `manifest_dir` is the test's `CARGO_MANIFEST_DIR`.
    pub fn stage(test_app: &Path, manifest_dir: &Path) -> Bins {
        let workspace = manifest_dir
            .parent()
            .expect("tests/ is inside the workspace");
        let proxy = bins::weft_proxy(test_app, workspace);
        let staging = TempDir::new("weft-pod-bin");
        Bins {
            proxy: bins::stage(&proxy, staging.path()),
            app: bins::stage(test_app, staging.path()),
            _staging: staging,
        }
    }
}

/// `program` with a cleared environment: nothing from the developer's environment (WEFT_*,
/// RUST_LOG…) changes what is tested.
pub fn command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear().env("PATH", PATH);
    cmd
}

/// What a client app printed: `weft-test-app get` writes `status=<code>` then the body.
#[derive(Debug)]
pub struct AppResponse {
    pub status: u16,
    pub body: String,
}

/// A pod: a namespace and what runs in it.
pub struct Pod {
    // Fields drop in order: the processes stop before their namespace is deleted.
    children: Vec<ChildGuard>,
    ns: Netns,
}

impl Pod {
    pub fn new(name: &str) -> Pod {
        Pod {
            children: Vec::new(),
            ns: Netns::create(name),
        }
    }

    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    pub fn name(&self) -> &str {
        self.ns.name()
    }

    /// Starts a long-running process in the pod as `uid`, logging to `<logs>/<name>.log`.
    pub fn start(&mut self, name: &str, mut cmd: Command, uid: u32, logs: &Path) {
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

    /// Starts `weft-test-app <args…>` as [`APP_UID`], named `name` in the logs.
    pub fn start_app(&mut self, bins: &Bins, name: &str, args: &[&str], logs: &Path) {
        let mut app = command(&bins.app);
        app.args(args);
        self.start(name, app, APP_UID, logs);
    }

    /// Starts `weft-proxy` in transparent mode as [`PROXY_UID`], with debug logs and `env`
    /// (`WEFT_*` settings) on top; named `weft-proxy-<label>` in the logs.
    pub fn start_proxy(&mut self, bins: &Bins, label: &str, env: &[(&str, &str)], logs: &Path) {
        let mut proxy = command(&bins.proxy);
        proxy
            .env("WEFT_MODE", "transparent")
            .env("WEFT_LOG", "debug")
            .env("RUST_BACKTRACE", "1")
            .envs(env.iter().copied());
        self.start(&format!("weft-proxy-{label}"), proxy, PROXY_UID, logs);
    }

    /// Panics with the log of any process that has exited.
    pub fn assert_running(&mut self) {
        for child in &mut self.children {
            if let Err(err) = child.check_running() {
                panic!("{err}");
            }
        }
    }

    /// Runs `weft-proxy init <flags>` in the pod the way an operator would: `ip netns exec`.
    pub fn init(&self, bins: &Bins, flags: &[&str]) -> String {
        let mut cmd = command(Path::new("ip"));
        cmd.args(["netns", "exec", self.ns.name()])
            .arg(&bins.proxy)
            .arg("init")
            .args(flags);
        run_ok(&mut cmd, netns::COMMAND_TIMEOUT)
    }

    /// Lines of `<save_command> -t nat` (`iptables-save` or `ip6tables-save`) in the pod that
    /// mention Weft's chains.
    pub fn weft_rules(&self, save_command: &str) -> Vec<String> {
        let mut cmd = Command::new(save_command);
        cmd.args(["-t", "nat"]);
        self.ns
            .run_ok(&mut cmd, netns::COMMAND_TIMEOUT)
            .lines()
            .filter(|l| l.contains("WEFT_"))
            .map(str::to_owned)
            .collect()
    }

    /// GET from inside the pod, as root from the test process: loopback, so never redirected.
    pub fn local_get(&self, port: u16, path: &str) -> std::io::Result<http::Response> {
        let addr = ([127, 0, 0, 1], port).into();
        self.ns.run_in(|| http::get(addr, path, REQUEST_TIMEOUT))
    }

    /// The proxy's `/metrics`, parsed.
    pub fn scrape(&self) -> Metrics {
        let response = self
            .local_get(ADMIN_PORT, "/metrics")
            .unwrap_or_else(|err| panic!("scraping {}'s proxy: {err}", self.ns.name()));
        assert_eq!(response.status, 200, "{}", response.text());
        Metrics::parse(&response.text())
            .unwrap_or_else(|err| panic!("{}'s /metrics does not parse: {err}", self.ns.name()))
    }

    /// Waits until the proxy's admin server says ready and the apps accept connections on
    /// 127.0.0.1 at `ports`.
    pub fn wait_ready(&mut self, ports: &[u16]) {
        let addrs: Vec<SocketAddr> = ports
            .iter()
            .map(|&port| ([127, 0, 0, 1], port).into())
            .collect();
        self.wait_ready_at(&addrs);
    }

    /// Waits until the proxy's admin server says ready and `addrs` (in the pod) accept
    /// connections.
    pub fn wait_ready_at(&mut self, addrs: &[SocketAddr]) {
        let ready = wait_for(STARTUP_TIMEOUT, || {
            self.assert_running();
            let proxy_ready = self
                .local_get(ADMIN_PORT, "/ready")
                .is_ok_and(|r| r.status == 200);
            let apps_up = addrs.iter().all(|addr| {
                self.ns
                    .run_in(|| TcpStream::connect_timeout(addr, REQUEST_TIMEOUT).is_ok())
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
                "{} not ready within {STARTUP_TIMEOUT:?} (admin /ready on {ADMIN_PORT}, apps \
                 {addrs:?})\n{}",
                self.ns.name(),
                logs.join("\n")
            );
        }
    }

    /// `weft-test-app get <url>` in the pod, as `uid`, like an app making a call.
    pub fn app_get(&self, bins: &Bins, uid: u32, url: &str) -> AppResponse {
        let mut cmd = command(&bins.app);
        cmd.args(["get", url]).uid(uid).gid(uid).current_dir("/");
        let output = self
            .ns
            .run_in(|| output_with_timeout(&mut cmd, REQUEST_TIMEOUT + Duration::from_secs(5)))
            .unwrap_or_else(|err| panic!("GET {url} from {}: {err}", self.ns.name()));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let (status, body) = stdout
            .split_once('\n')
            .and_then(|(first, body)| Some((first.strip_prefix("status=")?.parse().ok()?, body)))
            .unwrap_or_else(|| {
                panic!(
                    "GET {url} from {} as uid {uid} failed ({}): {stderr}{stdout}",
                    self.ns.name(),
                    output.status
                )
            });
        AppResponse {
            status,
            body: body.to_owned(),
        }
    }

    /// Scrapes until the sum of `name{labels}` reaches `at_least`, and returns the last scrape.
    pub fn wait_for_count(&self, name: &str, labels: &[(&str, &str)], at_least: f64) -> Metrics {
        let mut last = Metrics::default();
        let reached = wait_for(METRICS_TIMEOUT, || {
            last = self.scrape();
            (last.sum(name, labels) >= at_least).then_some(())
        });
        assert!(
            reached.is_some(),
            "{}: {name}{labels:?} stayed at {} (wanted {at_least}); scrape:\n{:#?}",
            self.ns.name(),
            last.sum(name, labels),
            last.select(name, &[]).collect::<Vec<_>>()
        );
        last
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
