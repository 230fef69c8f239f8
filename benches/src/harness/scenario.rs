//! The scenarios and how one is run: start the chain, sample idle memory, warm up, measure
//! closed loop then open loop (sampling the proxies' CPU time around each), sample memory
//! after load, tear down.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::pki::{MeshPki, Side};
use super::process::{command, http_status, tcp_open, Managed, Placement};
use super::results::{Measured, ProxyProcess, Round, ScenarioResult, Status};
use super::stalls::StallWatch;
use super::{envoy, ports::free_ports, weft, Forwarding, HarnessError, Hop};
use crate::procfs;
use crate::report::LoadReport;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    Weft,
    Envoy,
}

impl ProxyKind {
    pub fn label(self) -> &'static str {
        match self {
            ProxyKind::Weft => "weft",
            ProxyKind::Envoy => "envoy",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub name: &'static str,
    pub proxy: Option<ProxyKind>,
    pub hops: usize,
    pub description: &'static str,
    /// Run the upstream on the proxies' core instead of the load generator's (calibration:
    /// what crossing cores alone costs).
    pub upstream_on_proxy_core: bool,
    /// Mutual TLS between the two proxies of a 2-hop chain (certificates from [`pki`]).
    pub mtls: bool,
    pub forwarding: Forwarding,
}

/// Every scenario, in the order they run (`direct` first: the others' added latency is
/// computed against it).
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "direct",
        proxy: None,
        hops: 0,
        description: "load -> upstream: the baseline of the generator and the upstream alone",
        upstream_on_proxy_core: false,
        mtls: false,
        forwarding: Forwarding::Http,
    },
    Scenario {
        name: "direct-xcore",
        proxy: None,
        hops: 0,
        description: "load -> upstream on the proxy core: what crossing cores alone costs",
        upstream_on_proxy_core: true,
        mtls: false,
        forwarding: Forwarding::Http,
    },
    Scenario {
        name: "weft-1hop",
        proxy: Some(ProxyKind::Weft),
        hops: 1,
        description: "load -> weft-proxy -> upstream",
        upstream_on_proxy_core: false,
        mtls: false,
        forwarding: Forwarding::Http,
    },
    Scenario {
        name: "weft-2hop",
        proxy: Some(ProxyKind::Weft),
        hops: 2,
        description: "load -> weft-proxy (client side) -> weft-proxy (server side) -> upstream",
        upstream_on_proxy_core: false,
        mtls: false,
        forwarding: Forwarding::Http,
    },
    Scenario {
        name: "envoy-1hop",
        proxy: Some(ProxyKind::Envoy),
        hops: 1,
        description: "load -> Envoy -> upstream",
        upstream_on_proxy_core: false,
        mtls: false,
        forwarding: Forwarding::Http,
    },
    Scenario {
        name: "envoy-2hop",
        proxy: Some(ProxyKind::Envoy),
        hops: 2,
        description: "load -> Envoy (client side) -> Envoy (server side) -> upstream",
        upstream_on_proxy_core: false,
        mtls: false,
        forwarding: Forwarding::Http,
    },
    // The transport floor of one hop: the same chain with the proxy copying opaque TCP.
    // What a 1-hop HTTP scenario costs above its proxy's floor is the proxy's HTTP work.
    Scenario {
        name: "weft-1hop-tcp",
        proxy: Some(ProxyKind::Weft),
        hops: 1,
        description: "load -> weft-proxy (opaque TCP) -> upstream: weft's transport floor",
        upstream_on_proxy_core: false,
        mtls: false,
        forwarding: Forwarding::Tcp,
    },
    Scenario {
        name: "envoy-1hop-tcp",
        proxy: Some(ProxyKind::Envoy),
        hops: 1,
        description: "load -> Envoy (tcp_proxy) -> upstream: Envoy's transport floor",
        upstream_on_proxy_core: false,
        mtls: false,
        forwarding: Forwarding::Tcp,
    },
    Scenario {
        name: "weft-2hop-mtls",
        proxy: Some(ProxyKind::Weft),
        hops: 2,
        description: "load -> weft-proxy (client side) =mTLS, HTTP/2=> weft-proxy (server side, inbound) -> upstream",
        upstream_on_proxy_core: false,
        mtls: true,
        forwarding: Forwarding::Http,
    },
    Scenario {
        name: "envoy-2hop-mtls",
        proxy: Some(ProxyKind::Envoy),
        hops: 2,
        description: "load -> Envoy (client side) =mTLS, HTTP/2=> Envoy (server side) -> upstream",
        upstream_on_proxy_core: false,
        mtls: true,
        forwarding: Forwarding::Http,
    },
];

/// How every scenario is run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub duration: Duration,
    pub warmup: Duration,
    /// Idle time between "ready" and the idle memory sample.
    pub settle: Duration,
    pub connections: usize,
    pub rate: f64,
    /// Core and scheduling for the load generator and the upstream.
    pub load_place: Placement,
    /// Core and scheduling for every proxy process.
    pub proxy_place: Placement,
    pub load_bin: PathBuf,
    pub upstream_bin: PathBuf,
    /// `None` (with the reason) when the binary is missing: the scenario is skipped.
    pub weft_bin: Result<PathBuf, String>,
    pub envoy_bin: Result<PathBuf, String>,
    /// Configs and logs of this run.
    pub run_dir: PathBuf,
    /// Before each scenario, wait up to this long for the machine to be less than
    /// `quiet_threshold` busy (zero: just sample and record).
    pub quiet_wait: Duration,
    pub quiet_threshold: f64,
    /// A run during which other work took more than this fraction of the machine is
    /// repeated, up to `retries` times.
    pub noise_threshold: f64,
    /// A run with a whole-machine stall longer than this (ms) is repeated too.
    pub stall_threshold_ms: f64,
    pub retries: u32,
    /// No retries are started after this instant: bounds the whole run on a busy machine.
    pub retry_deadline: Instant,
    /// Measurements per loop and scenario; the median one is reported.
    pub rounds: u32,
}

/// Runs one scenario; failures and skips are recorded in the result, never propagated, so
/// one broken chain does not cost the others' numbers.
pub fn run(s: &Scenario, st: &Settings) -> ScenarioResult {
    let mut result =
        ScenarioResult::new(s.name, s.description, s.proxy.map(ProxyKind::label), s.hops);
    let bin = match s.proxy {
        None => None,
        Some(ProxyKind::Weft) => Some(st.weft_bin.clone()),
        Some(ProxyKind::Envoy) => Some(st.envoy_bin.clone()),
    };
    let bin = match bin {
        Some(Err(why)) => {
            result.status = Status::Skipped;
            result.note = Some(why);
            return result;
        }
        Some(Ok(path)) => Some(path),
        None => None,
    };
    result.machine_busy_before = super::quiet::wait_until_quiet(st.quiet_threshold, st.quiet_wait);
    if let Err(e) = run_chain(s, st, bin, &mut result) {
        result.status = Status::Failed;
        result.note = Some(e.to_string());
    }
    result
}

fn run_chain(
    s: &Scenario,
    st: &Settings,
    bin: Option<PathBuf>,
    result: &mut ScenarioResult,
) -> Result<(), HarnessError> {
    let dir = st.run_dir.join(s.name);
    std::fs::create_dir_all(&dir)?;
    // ports[0] is the upstream, ports[1..] the hops' listeners, client side first.
    let ports = free_ports(1 + s.hops)?;
    let upstream_addr = ports[0];
    let up_args = vec!["--addr".to_string(), upstream_addr.to_string()];
    let upstream_place = if s.upstream_on_proxy_core {
        st.proxy_place
    } else {
        st.load_place
    };
    let mut upstream = Managed::spawn(
        "upstream",
        &st.upstream_bin,
        &up_args,
        &[],
        upstream_place,
        &dir,
    )?;
    upstream.wait_ready(Duration::from_secs(10), "accepting connections", || {
        tcp_open(upstream_addr)
    })?;

    // The mTLS chains: a root and one certificate per side, in the scenario's directory.
    let pki = match s.mtls {
        true => Some(MeshPki::generate(&dir)?),
        false => None,
    };

    // Start from the server side so every hop's target is already listening.
    let mut proxies = Vec::new();
    if let (Some(kind), Some(bin)) = (s.proxy, bin.as_ref()) {
        for hop in (0..s.hops).rev() {
            let listen = ports[1 + hop];
            let target = ports.get(2 + hop).copied().unwrap_or(upstream_addr);
            let name = format!("{}-hop{}", kind.label(), hop + 1);
            // The first hop originates the mesh hop's mTLS, the last one terminates it.
            let tls = pki
                .as_ref()
                .map(|p| p.hop(if hop == 0 { Side::Client } else { Side::Server }));
            let spec = Hop {
                name: &name,
                listen,
                target,
                forwarding: s.forwarding,
                tls,
            };
            let place = st.proxy_place;
            let proxy = match kind {
                ProxyKind::Weft => weft::start(bin, &spec, &dir, place)?,
                ProxyKind::Envoy => envoy::start(bin, &spec, &dir, place)?,
            };
            proxies.push(proxy);
        }
        proxies.reverse();
    }
    if s.mtls {
        // The server side must refuse plaintext, or the chain is not measuring mTLS.
        let server_side = ports[s.hops];
        if let Some(status) = http_status(server_side, "/") {
            return Err(HarnessError::Io(std::io::Error::other(format!(
                "the server-side proxy at {server_side} answered a plaintext request \
                 ({status}); the chain is not mutual TLS"
            ))));
        }
    }
    let entry = ports.get(1).copied().unwrap_or(upstream_addr);

    sleep(st.settle);
    let idle: Vec<procfs::Memory> = proxies
        .iter()
        .map(|p| procfs::memory(p.pid()))
        .collect::<Result<_, _>>()?;

    // Warm up: connection pools filled, allocators grown, caches hot.
    run_load(st, entry, None, st.warmup)?;
    // A pause between runs: lets the kernel's RT throttling / fair-server accounting (with
    // `--sched fifo`) and any deferred work from the previous run settle.
    sleep(Duration::from_secs(1));
    result.closed = Some(measure_rounds(st, entry, None, &proxies, &upstream)?);
    sleep(Duration::from_secs(1));
    result.open = Some(measure_rounds(
        st,
        entry,
        Some(st.rate),
        &proxies,
        &upstream,
    )?);

    for (proxy, idle) in proxies.iter_mut().zip(idle) {
        proxy.check_alive()?;
        result.proxies.push(ProxyProcess {
            name: proxy.name.clone(),
            pid: proxy.pid(),
            exe: procfs::exe(proxy.pid()),
            idle,
            after_load: procfs::memory(proxy.pid())?,
        });
    }
    upstream.check_alive()?;
    Ok(())
}

/// The longest wait for quiet before a retry (the wait before a scenario may be longer).
const RETRY_WAIT: Duration = Duration::from_secs(20);

/// `st.rounds` measured runs (each [`measure_quietly`]); the reported one is the median
/// round — by p99 in the open loop, by throughput in the closed loop — so one lucky or
/// unlucky run does not decide a comparison. Every round's key figures are kept.
fn measure_rounds(
    st: &Settings,
    entry: SocketAddr,
    rate: Option<f64>,
    proxies: &[Managed],
    upstream: &Managed,
) -> Result<Measured, HarnessError> {
    let mut runs = Vec::new();
    for round in 0..st.rounds.max(1) {
        if round > 0 {
            sleep(Duration::from_secs(1));
        }
        runs.push(measure_quietly(st, entry, rate, proxies, upstream)?);
    }
    let key = |m: &Measured| match rate {
        Some(_) => m.load.latency.p99_us,
        None => m.load.rps,
    };
    runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let rounds: Vec<Round> = runs.iter().map(Round::of).collect();
    let mut median = runs.swap_remove(runs.len() / 2);
    median.rounds = rounds;
    Ok(median)
}

/// A measured run, repeated (up to `st.retries` more times, after waiting for quiet) while
/// other work on the machine took more than `st.noise_threshold` of it; the least disturbed
/// attempt is kept. Latency tails on a shared 2-core machine are otherwise mostly a record
/// of someone else's compiler.
fn measure_quietly(
    st: &Settings,
    entry: SocketAddr,
    rate: Option<f64>,
    proxies: &[Managed],
    upstream: &Managed,
) -> Result<Measured, HarnessError> {
    let mut best: Option<Measured> = None;
    for attempt in 1..=1 + st.retries {
        let mut m = measure(st, entry, rate, proxies, upstream)?;
        m.attempts = attempt;
        let noise = m.other_busy.unwrap_or(0.0);
        let stall = m.stalls.longest_ms;
        let clean = noise <= st.noise_threshold && stall <= st.stall_threshold_ms;
        if best
            .as_ref()
            .is_none_or(|b| m.disturbance() < b.disturbance())
        {
            best = Some(m);
        }
        if clean {
            break;
        }
        if attempt > st.retries || Instant::now() >= st.retry_deadline {
            break;
        }
        eprintln!(
            "   disturbed run (other work {:.0}% of the machine, longest stall {stall:.0} ms); retrying",
            noise * 100.0
        );
        super::quiet::wait_until_quiet(st.quiet_threshold, st.quiet_wait.min(RETRY_WAIT));
    }
    Ok(best.expect("at least one attempt"))
}

/// One measured run with the proxies' and the upstream's CPU time sampled around it, and
/// the machine's, to tell how much *other* work ran meanwhile.
fn measure(
    st: &Settings,
    entry: SocketAddr,
    rate: Option<f64>,
    proxies: &[Managed],
    upstream: &Managed,
) -> Result<Measured, HarnessError> {
    let proxy_ticks = || -> Result<u64, HarnessError> {
        let mut sum = 0;
        for p in proxies {
            sum += procfs::cpu_ticks(p.pid())?;
        }
        Ok(sum)
    };
    let sys0 = super::quiet::cpu_jiffies();
    let c0 = procfs::children_ticks();
    let (p0, u0) = (proxy_ticks()?, procfs::cpu_ticks(upstream.pid())?);
    let watch = StallWatch::start();
    let load = run_load(st, entry, rate, st.duration);
    let stalls = watch.stop();
    let load = load?;
    let (p1, u1) = (proxy_ticks()?, procfs::cpu_ticks(upstream.pid())?);
    let c1 = procfs::children_ticks();
    let sys1 = super::quiet::cpu_jiffies();
    // Busy time of the whole machine minus the benchmark's own processes. /proc/stat's
    // jiffies are USER_HZ, the same unit as the per-process ticks.
    let ours = (p1 - p0) + (u1 - u0) + (c1 - c0);
    let other_busy = match (sys0, sys1) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
            Some(((b1 - b0).saturating_sub(ours)) as f64 / (t1 - t0) as f64)
        }
        _ => None,
    };

    let us_per_tick = 1e6 / procfs::ticks_per_second() as f64;
    let per_req =
        |ticks: u64| (load.requests > 0).then(|| ticks as f64 * us_per_tick / load.requests as f64);
    let has_proxy = !proxies.is_empty();
    Ok(Measured {
        proxy_cpu_ms: has_proxy.then(|| (p1 - p0) as f64 * us_per_tick / 1000.0),
        proxy_cpu_us_per_req: if has_proxy { per_req(p1 - p0) } else { None },
        upstream_cpu_us_per_req: per_req(u1 - u0),
        other_busy,
        stalls,
        attempts: 1,
        rounds: Vec::new(),
        load,
    })
}

/// Runs `weft-load` (pinned with the upstream) and parses its JSON report. Bounded: killed
/// if it has not finished well after its own window and drain.
fn run_load(
    st: &Settings,
    target: SocketAddr,
    rate: Option<f64>,
    duration: Duration,
) -> Result<LoadReport, HarnessError> {
    let mut cmd = command(&st.load_bin, st.load_place);
    cmd.arg("--target")
        .arg(target.to_string())
        .arg("--connections")
        .arg(st.connections.to_string())
        .arg("--duration")
        .arg(duration.as_secs_f64().to_string())
        .arg("--json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(r) = rate {
        cmd.arg("--rate").arg(r.to_string());
    }
    let mut child = cmd.spawn()?;
    let deadline = Instant::now() + duration + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(HarnessError::Load(
                "weft-load did not finish in time".into(),
            ));
        }
        sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut stdout)?;
    }
    if let Some(mut err) = child.stderr.take() {
        err.read_to_string(&mut stderr)?;
    }
    if !status.success() {
        return Err(HarnessError::Load(format!("{status}: {}", stderr.trim())));
    }
    serde_json::from_str(&stdout)
        .map_err(|e| HarnessError::Load(format!("unreadable report ({e}): {stdout}")))
}
