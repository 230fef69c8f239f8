//! Starting, pinning, probing and stopping the processes of a scenario.
//!
//! Every child is started through `taskset -c <core>` (which `exec`s, so the pid we hold is
//! the pinned program's), optionally with a raised scheduling priority ([`Sched`]), gets
//! `PR_SET_PDEATHSIG` so it dies with the runner even if the runner is killed, writes its
//! output to a log file in the run directory, and is stopped (SIGTERM, then SIGKILL) when its
//! [`Managed`] handle is dropped.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How a child is scheduled relative to everything else on the machine.
///
/// On a shared 2-core machine another program's compile lands on the benchmark's cores and
/// delays wake-ups by milliseconds, which the open loop (rightly) reports as latency. Every
/// benchmark process — load generator, upstream and proxies alike, so the comparison stays
/// fair — can be given priority over such work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sched {
    /// The default `SCHED_OTHER`, nice 0.
    Normal,
    /// `SCHED_OTHER` at nice -19: favoured by CFS/EEVDF, but others still get time slices.
    Nice,
    /// `SCHED_FIFO` priority 10: preempts any normal task at once. The kernel's RT
    /// throttling (95 % per second by default) still leaves the rest of the system running.
    Fifo,
}

/// Where and how a child runs.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    /// `Some(core)` pins it with `taskset -c core`.
    pub core: Option<usize>,
    pub sched: Sched,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("starting {name} ({program}): {source}")]
    Spawn {
        name: String,
        program: String,
        source: io::Error,
    },
    #[error("{name} exited early ({status}); log {log}:\n{tail}")]
    Exited {
        name: String,
        status: String,
        log: String,
        tail: String,
    },
    #[error("{name} not ready after {secs}s: {what}; log {log}:\n{tail}")]
    NotReady {
        name: String,
        secs: u64,
        what: String,
        log: String,
        tail: String,
    },
}

/// A child process that is stopped and reaped when dropped: SIGTERM first, SIGKILL if it is
/// still running [`STOP_GRACE`] later.
pub struct Managed {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Managed {
    /// Starts `program args…` pinned to `pin`, with output to `<log_dir>/<name>.log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        place: Placement,
        log_dir: &Path,
    ) -> Result<Self, ProcessError> {
        let log = log_dir.join(format!("{name}.log"));
        let spawn_err = |source| ProcessError::Spawn {
            name: name.into(),
            program: program.display().to_string(),
            source,
        };
        let out = File::create(&log).map_err(spawn_err)?;
        let err = out.try_clone().map_err(spawn_err)?;
        let mut cmd = command(program, place);
        cmd.args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd.spawn().map_err(spawn_err)?;
        Ok(Self {
            name: name.into(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has already exited (with its log's tail).
    pub fn check_alive(&mut self) -> Result<(), ProcessError> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(ProcessError::Exited {
                name: self.name.clone(),
                status: status.to_string(),
                log: self.log.display().to_string(),
                tail: log_tail(&self.log),
            }),
            _ => Ok(()),
        }
    }

    /// Polls `probe` every 50 ms until it succeeds, the process exits, or `timeout` passes.
    pub fn wait_ready(
        &mut self,
        timeout: Duration,
        what: &str,
        mut probe: impl FnMut() -> bool,
    ) -> Result<(), ProcessError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            if probe() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ProcessError::NotReady {
                    name: self.name.clone(),
                    secs: timeout.as_secs(),
                    what: what.into(),
                    log: self.log.display().to_string(),
                    tail: log_tail(&self.log),
                });
            }
            sleep(Duration::from_millis(50));
        }
    }
}

/// How long a stopped process gets to exit on SIGTERM before it is killed. weft-proxy drains
/// and exits within milliseconds once the load is gone; an exit (rather than SIGKILL) is what
/// lets a profile-instrumented build write its profile (`benches/pgo.sh`).
const STOP_GRACE: Duration = Duration::from_secs(3);

impl Drop for Managed {
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child, which has not been reaped yet (reaping happens
            // below), so the pid cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `taskset -c core program` when pinned, else `program`; either way with the scheduling
/// of `place` and [`PR_SET_PDEATHSIG`](die_with_parent) applied in the child before exec.
pub fn command(program: &Path, place: Placement) -> Command {
    let mut cmd = match place.core {
        Some(core) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(core.to_string()).arg(program);
            cmd
        }
        None => Command::new(program),
    };
    die_with_parent(&mut cmd);
    let sched = place.sched;
    // SAFETY: only async-signal-safe syscalls on the child itself, between fork and exec.
    // Scheduling policy and nice value survive exec and are inherited by every thread the
    // program starts later.
    unsafe {
        cmd.pre_exec(move || {
            let rc = match sched {
                Sched::Normal => 0,
                Sched::Nice => libc::setpriority(libc::PRIO_PROCESS, 0, -19),
                Sched::Fifo => {
                    let param = libc::sched_param { sched_priority: 10 };
                    libc::sched_setscheduler(0, libc::SCHED_FIFO, &param)
                }
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Asks the kernel to SIGKILL the child when the runner's thread dies, so an interrupted
/// benchmark leaves no proxies or servers behind. `taskset` and the programs it `exec`s keep
/// the setting (only set-uid execs clear it).
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches only the child being set up.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// True when something accepts TCP connections at `addr`.
pub fn tcp_open(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// `GET path` over a fresh connection; the status code, if any response arrived.
pub fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head).ok()?;
    let line = std::str::from_utf8(&head[..n]).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The last lines of a log, for error messages.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Finds `name` on `PATH` (or returns it as is when it contains a `/`).
pub fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

/// Whether `taskset` is available to pin with.
pub fn have_taskset() -> bool {
    which("taskset").is_some()
}
