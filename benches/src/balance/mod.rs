//! The load-balancing benchmark behind `weft-balance` (Weft issue 5): latency at a constant
//! rate through a release `weft-proxy` to a Service of three endpoints, one of which answers
//! 50 ms late, with power of two choices over peak-EWMA latency against round robin.
//!
//! The chain, all on loopback:
//!
//! ```text
//! open-loop load ──> weft-proxy static listener ──> Service bench/orders (cluster IP 10.96.0.10:80)
//!  (core 0)            (core 1; its view from the        ├─> 127.0.0.1:P
//!                       real weft-control-plane)         ├─> 127.0.0.2:P
//!                                                        └─> 127.0.0.3:P  (+50 ms)  (core 0)
//! ```
//!
//! The control plane runs in local mode on a generated manifest directory ([`manifests`]):
//! the client pod `web-0`, the Service with its cluster IP, one EndpointSlice with the three
//! endpoints, and a `TrafficPolicy` whose `loadBalancer` is what a run compares. The proxy
//! subscribes as pod `web-0` with a certificate from the control plane, exactly as a
//! sidecar does; its static listener targets the Service's cluster IP, so each request
//! takes the path a transparently redirected call to `orders` takes (the cluster IP is
//! looked up in the view, and the request is balanced over the endpoints).
//!
//! For each balancer and round a fresh proxy is started (nothing learned carries over),
//! warmed up, then loaded open loop at a constant rate; the endpoints count what they
//! answered, which gives the slow endpoint's share.
//!
//! A benchmark, not a test: it reports and never fails because the machine is slow. Every
//! wait has a deadline, and every process it starts dies with it.

pub mod manifests;
pub mod results;
pub mod upstreams;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::harness::ports::free_ports;
use crate::harness::process::{http_status, tcp_open, Managed, Placement, Sched};
use crate::harness::quiet;
use crate::harness::stalls::StallWatch;
use crate::load::{self, LoadConfig};
use crate::procfs;
use manifests::Balancer;
use results::{BalanceResults, RunResult};
use upstreams::Endpoints;

/// How a run is done.
#[derive(Debug, Clone)]
pub struct Options {
    pub control_plane: PathBuf,
    pub weft_proxy: PathBuf,
    pub balancers: Vec<Balancer>,
    pub rounds: u32,
    /// Requests per second, open loop.
    pub rate: f64,
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: usize,
    /// The delay the slow endpoint adds.
    pub slow: Duration,
    /// Core of the load generator and the endpoints, and core of the proxy; `None`: unpinned.
    pub load_core: Option<usize>,
    pub proxy_core: Option<usize>,
    /// Scheduling of the benchmark's processes (proxy, load generator and endpoints).
    pub sched: Sched,
    /// Wait (bounded) for the machine to be less busy than this before each run.
    pub quiet_threshold: f64,
    pub quiet_wait: Duration,
    pub keep_dir: bool,
}

/// The index of the slow endpoint (`127.0.0.3`).
pub const SLOW: usize = 2;

/// Runs every balancer `rounds` times, alternating them round by round.
pub fn run(opts: &Options) -> anyhow::Result<BalanceResults> {
    let dir = tempfile_dir()?;
    let root = dir.path.clone();
    eprintln!("== load balancing benchmark ({})", root.display());
    let ports = free_ports(4)?;
    let (grpc, cp_admin, endpoint_port) = (ports[0], ports[1], ports[2].port());
    let layout = manifests::write(&root, endpoint_port, opts.balancers[0])?;

    // The control plane first, unpinned: it is idle while the load runs.
    let state = root.join("state");
    let args: Vec<String> = [
        "--state-dir",
        &state.display().to_string(),
        "--token-file",
        &layout.tokens.display().to_string(),
        "--manifests",
        &layout.manifests.display().to_string(),
        "--grpc-addr",
        &grpc.to_string(),
        "--admin-addr",
        &cp_admin.to_string(),
        "--trust-domain",
        manifests::TRUST_DOMAIN,
        "--log",
        "warn",
    ]
    .map(String::from)
    .into();
    let unpinned = Placement {
        core: None,
        sched: Sched::Normal,
    };
    let mut cp = Managed::spawn(
        "control-plane",
        &opts.control_plane,
        &args,
        &[],
        unpinned,
        &root,
    )?;
    cp.wait_ready(Duration::from_secs(60), "GET /ready → 200", || {
        http_status(cp_admin, "/ready") == Some(200)
    })?;
    let anchors = state.join("bundle.crt");
    anyhow::ensure!(anchors.is_file(), "{} not written", anchors.display());

    // The load generator and the endpoints share a core; threads started from here on
    // inherit it.
    if let Some(core) = opts.load_core {
        pin_current_thread(core)?;
    }
    set_current_thread_sched(opts.sched)?;
    let endpoints = Endpoints::start(endpoint_port, SLOW, opts.slow)?;
    eprintln!(
        "   control plane ready; endpoints {} (the last adds {:?})",
        endpoints
            .addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        opts.slow
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    let mut runs = Vec::new();
    for round in 1..=opts.rounds {
        for &balancer in &opts.balancers {
            manifests::set_balancer(&layout, balancer)?;
            let busy = quiet::wait_until_quiet(opts.quiet_threshold, opts.quiet_wait);
            let proxy_dir = root.join(format!("{}-{round}", balancer.slug()));
            std::fs::create_dir_all(&proxy_dir)?;
            let mut proxy = start_proxy(opts, &proxy_dir, grpc, &anchors, &layout, balancer)?;

            // Warm-up: connections opened, latencies learned; not measured.
            let warm = runtime.block_on(load::run(config(opts, proxy.listen, opts.warmup)))?;
            let before = endpoints.counts();
            let own =
                || -> anyhow::Result<u64> {
                    Ok(procfs::cpu_ticks(proxy.process.pid())?
                        + procfs::cpu_ticks(std::process::id())?)
                };
            let cpu_before = procfs::cpu_ticks(proxy.process.pid())?;
            let own_before = own()?;
            let machine_before = quiet::cpu_jiffies();
            let watch = StallWatch::start();
            let started = Instant::now();
            let report = runtime.block_on(load::run(config(opts, proxy.listen, opts.duration)))?;
            let wall = started.elapsed();
            let stalls = watch.stop();
            let cpu_after = procfs::cpu_ticks(proxy.process.pid())?;
            let own_after = own()?;
            let machine_after = quiet::cpu_jiffies();
            let after = endpoints.counts();
            proxy.process.check_alive()?;
            let answered: [u64; 3] = [0, 1, 2].map(|i| after[i] - before[i]);
            let total: u64 = answered.iter().sum();
            let proxy_cpu_s =
                cpu_after.saturating_sub(cpu_before) as f64 / procfs::ticks_per_second() as f64;
            // The machine's busy time minus the benchmark's own (the proxy's, and this
            // process's: load generator and endpoints), over all of its CPU time.
            let other_work = match (machine_before, machine_after) {
                (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                    let others = (b1 - b0).saturating_sub(own_after.saturating_sub(own_before));
                    Some(others as f64 / (t1 - t0) as f64)
                }
                _ => None,
            };
            let run = RunResult {
                balancer,
                round,
                load: report,
                warmup_errors: warm.errors.total(),
                answered,
                slow_share: answered[SLOW] as f64 / total.max(1) as f64,
                proxy_cpu_us_per_req: proxy_cpu_s * 1e6 / total.max(1) as f64,
                machine_busy_before: busy,
                other_work,
                wall_s: wall.as_secs_f64(),
                stalls,
            };
            eprintln!("   {}", run.line());
            runs.push(run);
            drop(proxy);
        }
    }
    drop(endpoints);
    drop(cp);
    if opts.keep_dir {
        let kept = dir.keep();
        eprintln!("   kept {}", kept.display());
    }
    Ok(BalanceResults::new(opts, runs))
}

fn config(opts: &Options, target: SocketAddr, duration: Duration) -> LoadConfig {
    LoadConfig {
        target,
        path: "/".into(),
        connections: opts.connections,
        duration,
        max_requests: None,
        rate: Some(opts.rate),
        request_timeout: Duration::from_secs(5),
        drain: Duration::from_secs(2),
    }
}

struct Proxy {
    process: Managed,
    listen: SocketAddr,
}

/// A fresh weft-proxy subscribed as pod `web-0`, with a static listener to the Service's
/// cluster IP; ready once `/ready` answers 200 (it has its first view) and its view has the
/// Service with `balancer`.
fn start_proxy(
    opts: &Options,
    dir: &Path,
    grpc: SocketAddr,
    anchors: &Path,
    layout: &manifests::Layout,
    balancer: Balancer,
) -> anyhow::Result<Proxy> {
    let ports = free_ports(4)?;
    let (outbound, inbound, admin, listen) = (ports[0], ports[1], ports[2], ports[3]);
    let config = dir.join("proxy.yaml");
    std::fs::write(
        &config,
        format!(
            "# Generated by weft-balance: calls to the Service's cluster IP, as a redirected\n\
             # connection would make them.\n\
             listeners:\n  - name: orders\n    bind: {listen}\n    target: {}\n    protocol: http1\n",
            manifests::CLUSTER_IP_PORT
        ),
    )?;
    let path = |p: &Path| p.display().to_string();
    let args: Vec<String> = vec![
        "--mode".into(),
        "local".into(),
        "--outbound-addr".into(),
        outbound.to_string(),
        "--inbound-addr".into(),
        inbound.to_string(),
        "--admin-addr".into(),
        admin.to_string(),
        "--config".into(),
        path(&config),
        "--workers".into(),
        "1".into(),
        "--control-plane-addr".into(),
        grpc.to_string(),
        "--trust-anchors".into(),
        path(anchors),
        "--trust-domain".into(),
        manifests::TRUST_DOMAIN.into(),
        "--namespace".into(),
        manifests::NAMESPACE.into(),
        "--service-account".into(),
        manifests::CLIENT_ACCOUNT.into(),
        "--identity-token-file".into(),
        path(&layout.proxy_token),
        "--pod-name".into(),
        manifests::CLIENT_POD.into(),
    ];
    let place = Placement {
        core: opts.proxy_core,
        sched: opts.sched,
    };
    // Warnings only: a benchmark should not measure log formatting.
    let env = [("WEFT_LOG", "warn")];
    let mut process = Managed::spawn("weft-proxy", &opts.weft_proxy, &args, &env, place, dir)?;
    let expected = balancer.proto_value();
    process.wait_ready(
        Duration::from_secs(30),
        &format!("GET /ready → 200, {listen} accepting, and loadBalancer {expected} in /config"),
        || {
            http_status(admin, "/ready") == Some(200)
                && tcp_open(listen)
                && http_get(admin, "/config")
                    .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
                    .is_some_and(|config| load_balancer_in(&config) == Some(expected))
        },
    )?;
    Ok(Proxy { process, listen })
}

/// The `loadBalancer` of the first `trafficPolicy` in the proxy's `/config`.
fn load_balancer_in(value: &serde_json::Value) -> Option<i64> {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(policy) = map.get("trafficPolicy").filter(|p| p.is_object()) {
                return policy.get("loadBalancer").and_then(|v| v.as_i64());
            }
            map.values().find_map(load_balancer_in)
        }
        serde_json::Value::Array(items) => items.iter().find_map(load_balancer_in),
        _ => None,
    }
}

/// `GET path` over a fresh connection; the body, if a whole 200 response arrived.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// Pins the calling thread (and the threads it starts later) to `core`.
fn pin_current_thread(core: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context(format!("pinning to core {core}"));
        }
    }
    Ok(())
}

/// Gives the calling thread (and the threads it starts later, which inherit it) the
/// scheduling the benchmark's child processes get ([`crate::harness::process::command`]).
fn set_current_thread_sched(sched: Sched) -> anyhow::Result<()> {
    // SAFETY: plain syscalls on the calling thread.
    let rc = unsafe {
        match sched {
            Sched::Normal => 0,
            Sched::Nice => libc::setpriority(libc::PRIO_PROCESS, 0, -19),
            Sched::Fifo => {
                let param = libc::sched_param { sched_priority: 10 };
                libc::sched_setscheduler(0, libc::SCHED_FIFO, &param)
            }
        }
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .context(format!("setting {sched:?} scheduling"));
    }
    Ok(())
}

/// A temporary directory removed on drop unless kept.
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    fn keep(mut self) -> PathBuf {
        self.keep = true;
        self.path.clone()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn tempfile_dir() -> anyhow::Result<TempDir> {
    let path = std::env::temp_dir().join(format!("weft-balance-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
    Ok(TempDir { path, keep: false })
}
