//! Network namespaces as pods.
//!
//! A [`Netns`] is created with `ip netns add` and deleted when dropped. Work happens inside it
//! without `ip netns exec`: [`Netns::run_in`] moves a fresh thread into the namespace
//! (`setns(2)` changes only the calling thread), so sockets opened there and children spawned
//! from there live in the namespace. That lets a child also get its own UID through
//! `CommandExt::uid`, which `ip netns exec` (it must itself be root) cannot combine.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Child, Command};
use std::time::Duration;

use crate::process::{self, run_ok};

/// How long one `ip` or `iptables` command may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// A network namespace owned by the test; deleted on drop.
pub struct Netns {
    name: String,
    handle: File,
}

impl Netns {
    /// Creates the namespace `name` with its loopback up.
    pub fn create(name: &str) -> Netns {
        run_ok(
            Command::new("ip").args(["netns", "add", name]),
            COMMAND_TIMEOUT,
        );
        // The guard exists from here on, so a failure below still deletes the namespace.
        let handle = match File::open(format!("/run/netns/{name}")) {
            Ok(handle) => handle,
            Err(err) => {
                delete(name);
                panic!("opening /run/netns/{name}: {err}");
            }
        };
        let ns = Netns {
            name: name.to_owned(),
            handle,
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> args…`, panicking with its stderr on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        run_ok(
            Command::new("ip").arg("-n").arg(&self.name).args(args),
            COMMAND_TIMEOUT,
        )
    }

    /// Runs `f` on a thread that has entered this namespace, and returns its result.
    pub fn run_in<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let fd = self.handle.as_raw_fd();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: setns(2) on a valid namespace fd affects only this thread.
                    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                        panic!("setns: {}", std::io::Error::last_os_error());
                    }
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Spawns `cmd` inside the namespace (with whatever UID, env and stdio `cmd` sets).
    pub fn spawn(&self, cmd: &mut Command) -> Child {
        let described = process::describe(cmd);
        self.run_in(|| cmd.spawn())
            .unwrap_or_else(|err| panic!("spawning `{described}` in {}: {err}", self.name))
    }

    /// Runs `cmd` to completion inside the namespace and returns its stdout; panics on failure.
    pub fn run_ok(&self, cmd: &mut Command, timeout: Duration) -> String {
        self.run_in(|| run_ok(cmd, timeout))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete(&self.name);
    }
}

fn delete(name: &str) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "del", name]);
    match process::output_with_timeout(&mut cmd, COMMAND_TIMEOUT) {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "warning: ip netns del {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(err) => eprintln!("warning: ip netns del {name}: {err}"),
    }
}

/// Joins `a` and `b` with a veth pair named `eth0` on both ends, addresses it (`10.x.y.z/30`
/// style CIDRs, one per end) and brings it up. The pair is created directly inside the two
/// namespaces, so the host never sees it, and it disappears with them.
pub fn connect(a: &Netns, a_cidr: &str, b: &Netns, b_cidr: &str) {
    run_ok(
        Command::new("ip").args([
            "link", "add", "eth0", "netns", &a.name, "type", "veth", "peer", "name", "eth0",
            "netns", &b.name,
        ]),
        COMMAND_TIMEOUT,
    );
    for (ns, cidr) in [(a, a_cidr), (b, b_cidr)] {
        ns.ip(&["addr", "add", cidr, "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
    }
}

/// Deletes namespaces named `<prefix><pid>-…` whose creating test process (`pid`) is gone,
/// after killing what still runs in them: what a test killed by SIGKILL could not clean up.
pub fn remove_stale(prefix: &str) {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let pids = process::output_with_timeout(
            Command::new("ip").args(["netns", "pids", &name]),
            COMMAND_TIMEOUT,
        );
        if let Ok(out) = pids {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse() {
                    process::signal(pid, libc::SIGKILL);
                }
            }
        }
        eprintln!("removing stale namespace {name} left by a killed test run");
        delete(&name);
    }
}
