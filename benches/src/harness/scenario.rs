//! The scenarios and how one is run: start the chain, sample idle memory, warm up, measure
//! closed loop then open loop (sampling the proxies' CPU time around each), sample memory
//! after load, tear down.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::process::{die_with_parent, pinned_command, tcp_open, Managed, Pin};
use super::results::{Measured, ProxyProcess, ScenarioResult, Status};
use super::{envoy, ports::free_ports, weft, HarnessError};
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
}

/// Every scenario, in the order they run (`direct` first: the others' added latency is
/// computed against it).
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "direct",
        proxy: None,
        hops: 0,
        description: "load -> upstream: the baseline of the generator and the upstream alone",
    },
    Scenario {
        name: "weft-1hop",
        proxy: Some(ProxyKind::Weft),
        hops: 1,
        description: "load -> weft-proxy -> upstream",
    },
    Scenario {
        name: "weft-2hop",
        proxy: Some(ProxyKind::Weft),
        hops: 2,
        description: "load -> weft-proxy (client side) -> weft-proxy (server side) -> upstream",
    },
    Scenario {
        name: "envoy-1hop",
        proxy: Some(ProxyKind::Envoy),
        hops: 1,
        description: "load -> Envoy -> upstream",
    },
    Scenario {
        name: "envoy-2hop",
        proxy: Some(ProxyKind::Envoy),
        hops: 2,
        description: "load -> Envoy (client side) -> Envoy (server side) -> upstream",
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
    /// Core for the load generator and the upstream.
    pub load_pin: Pin,
    /// Core for every proxy process.
    pub proxy_pin: Pin,
    pub load_bin: PathBuf,
    pub upstream_bin: PathBuf,
    /// `None` (with the reason) when the binary is missing: the scenario is skipped.
    pub weft_bin: Result<PathBuf, String>,
    pub envoy_bin: Result<PathBuf, String>,
    /// Configs and logs of this run.
    pub run_dir: PathBuf,
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
    let mut upstream = Managed::spawn(
        "upstream",
        &st.upstream_bin,
        &up_args,
        &[],
        st.load_pin,
        &dir,
    )?;
    upstream.wait_ready(Duration::from_secs(10), "accepting connections", || {
        tcp_open(upstream_addr)
    })?;

    // Start from the server side so every hop's target is already listening.
    let mut proxies = Vec::new();
    if let (Some(kind), Some(bin)) = (s.proxy, bin.as_ref()) {
        for hop in (0..s.hops).rev() {
            let listen = ports[1 + hop];
            let target = ports.get(2 + hop).copied().unwrap_or(upstream_addr);
            let name = format!("{}-hop{}", kind.label(), hop + 1);
            let proxy = match kind {
                ProxyKind::Weft => weft::start(bin, &name, listen, target, &dir, st.proxy_pin)?,
                ProxyKind::Envoy => envoy::start(bin, &name, listen, target, &dir, st.proxy_pin)?,
            };
            proxies.push(proxy);
        }
        proxies.reverse();
    }
    let entry = ports.get(1).copied().unwrap_or(upstream_addr);

    sleep(st.settle);
    let idle: Vec<procfs::Memory> = proxies
        .iter()
        .map(|p| procfs::memory(p.pid()))
        .collect::<Result<_, _>>()?;

    // Warm up: connection pools filled, allocators grown, caches hot.
    run_load(st, entry, None, st.warmup)?;
    sleep(Duration::from_millis(300));
    result.closed = Some(measure(st, entry, None, &proxies, &upstream)?);
    sleep(Duration::from_millis(300));
    result.open = Some(measure(st, entry, Some(st.rate), &proxies, &upstream)?);

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

/// One measured run with the proxies' and the upstream's CPU time sampled around it.
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
    let (p0, u0) = (proxy_ticks()?, procfs::cpu_ticks(upstream.pid())?);
    let load = run_load(st, entry, rate, st.duration)?;
    let (p1, u1) = (proxy_ticks()?, procfs::cpu_ticks(upstream.pid())?);

    let us_per_tick = 1e6 / procfs::ticks_per_second() as f64;
    let per_req =
        |ticks: u64| (load.requests > 0).then(|| ticks as f64 * us_per_tick / load.requests as f64);
    let has_proxy = !proxies.is_empty();
    Ok(Measured {
        proxy_cpu_ms: has_proxy.then(|| (p1 - p0) as f64 * us_per_tick / 1000.0),
        proxy_cpu_us_per_req: if has_proxy { per_req(p1 - p0) } else { None },
        upstream_cpu_us_per_req: per_req(u1 - u0),
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
    let mut cmd = pinned_command(&st.load_bin, st.load_pin);
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
    die_with_parent(&mut cmd);
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
