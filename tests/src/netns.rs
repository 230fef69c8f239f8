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

    /// Adds `cidr` to `dev`. IPv6 addresses skip duplicate address detection (`nodad`): a
    /// tentative address cannot be bound or connected from, and nothing else shares the link.
    pub fn add_address(&self, dev: &str, cidr: &str) {
        let mut args = vec!["addr", "add", cidr, "dev", dev];
        if cidr.contains(':') {
            args.push("nodad");
        }
        self.ip(&args);
    }

    /// Sets the namespaced sysctl `key` (a path under /proc/sys, like
    /// `net/ipv6/neigh/eth0/retrans_time_ms`) to `value` in this namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{key}");
        self.run_in(|| std::fs::write(&path, value))
            .unwrap_or_else(|err| panic!("{}: writing {value} to {path}: {err}", self.name));
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

/// Joins `a` and `b` with a veth pair named `eth0` on both ends, gives each end its addresses
/// (CIDRs such as `10.231.0.1/30` or `fd00:77::1/64`, see [`Netns::add_address`]), brings it
/// up, and returns once each end reaches every address of the other (see [`wait_reachable`]).
/// The pair is created directly inside the two namespaces, so the host never sees it, and it
/// disappears with them.
pub fn connect(a: &Netns, a_cidrs: &[&str], b: &Netns, b_cidrs: &[&str]) {
    run_ok(
        Command::new("ip").args([
            "link", "add", "eth0", "netns", &a.name, "type", "veth", "peer", "name", "eth0",
            "netns", &b.name,
        ]),
        COMMAND_TIMEOUT,
    );
    for (ns, cidrs) in [(a, a_cidrs), (b, b_cidrs)] {
        // Neighbour solicitations lost while the link comes up are retried after 100 ms
        // instead of 1 s (see `wait_reachable`).
        ns.sysctl("net/ipv6/neigh/eth0/retrans_time_ms", "100");
        for cidr in cidrs {
            ns.add_address("eth0", cidr);
        }
        ns.ip(&["link", "set", "eth0", "up"]);
    }
    for (from, to) in [(a, b_cidrs), (b, a_cidrs)] {
        for cidr in to {
            let ip = cidr.split('/').next().unwrap_or(cidr);
            let ip = ip
                .parse()
                .unwrap_or_else(|err| panic!("address {cidr}: {err}"));
            wait_reachable(from, ip);
        }
    }
}

/// How long a fresh link may take to carry traffic.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(5);
/// A port nothing listens on in a fresh namespace: a probe to it is answered with a reset.
const PROBE_PORT: u16 = 9;

/// Waits until a TCP probe from `from` to `ip` is answered (refused or accepted), panicking
/// after [`LINK_TIMEOUT`].
///
/// A veth pair that is up does not carry IPv6 at once: until the kernel has finished setting
/// up IPv6 on the new link (its multicast route among others), a Neighbor Solicitation can be
/// dropped, and then neighbour discovery and the SYN are both retried only after a second,
/// longer than a proxy's 1 s connect timeout. Probing until a connection attempt is answered
/// leaves that to the setup instead of the test's first request. IPv4 is answered at once.
pub fn wait_reachable(from: &Netns, ip: std::net::IpAddr) {
    let addr = std::net::SocketAddr::new(ip, PROBE_PORT);
    let answered = crate::wait_for(LINK_TIMEOUT, || {
        let probe =
            from.run_in(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)));
        match probe {
            Ok(_) => Some(()),
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
            Err(_) => None,
        }
    });
    if answered.is_none() {
        panic!(
            "{} cannot reach {addr} within {LINK_TIMEOUT:?}:\n{}\n{}",
            from.name,
            from.ip(&["addr", "show", "dev", "eth0"]),
            from.ip(&["neigh", "show"])
        );
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
