//! The control-plane propagation benchmark behind `weft-propagation` (Weft issue 4): how
//! long a policy edit in the watched manifest directory takes to reach every proxy it
//! affects, with 1,000 and 10,000 proxies subscribed to one control plane, and how much
//! memory and CPU the control plane needs for that.
//!
//! For each mesh size:
//!
//! 1. a manifest directory is generated in a temporary directory ([`mesh`]);
//! 2. the real `weft-control-plane` binary is started on it in local mode (its own process,
//!    killed when the run ends however it ends) and waited for on `/ready`;
//! 3. one simulated proxy per pod connects over its own mTLS connection and subscribes
//!    ([`proxies`]), a bounded number at a time;
//! 4. policies are edited in turn ([`measure`]): a selective one (1 % of the pods) and a
//!    mesh-wide one (every pod), several rounds each;
//! 5. the control plane's RSS, CPU and `/metrics` counters are read alongside.
//!
//! A benchmark, not a test: it reports and never fails because the machine is slow. Every
//! wait has a deadline.

pub mod cplog;
pub mod cpmetrics;
pub mod measure;
pub mod mesh;
pub mod proxies;
pub mod results;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::mpsc;
use weft_api::SpiffeId;
use weft_control_plane::ca::{self, Ca};

use crate::harness::ports::free_ports;
use crate::harness::process::{http_status, Managed, Placement, Sched};
use crate::procfs;
use mesh::{Change, Mesh};
use proxies::{EventKind, Target};
use results::{ChangeSummary, ControlPlane, Percentiles, SizeResult, SubscribePhase};

/// How a run is done (the same for every size).
#[derive(Debug, Clone)]
pub struct Options {
    pub control_plane: PathBuf,
    pub rounds: u32,
    /// The changes made in each round, in order.
    pub changes: Vec<Change>,
    pub connect_concurrency: usize,
    /// Worker threads of the simulated proxies' runtime (1: a current-thread runtime).
    pub client_threads: usize,
    pub change_timeout: Duration,
    pub subscribe_timeout: Duration,
    /// After the last affected proxy got its update, how long to keep watching for updates
    /// that must not come.
    pub quiet: Duration,
    /// How often `/metrics` is polled during a change.
    pub poll: Duration,
    /// The control plane's `--log` filter.
    pub cp_log: String,
    /// Keep the temporary directory (manifests, CA, the control plane's log).
    pub keep_dir: bool,
    /// Extra environment for the control plane (`KEY=VALUE`), e.g. `MALLOC_ARENA_MAX=2` or
    /// heaptrack's `LD_PRELOAD` + `DUMP_HEAPTRACK_OUTPUT` to profile its heap.
    pub cp_env: Vec<(String, String)>,
    /// How the control plane (and, set by the caller, the benchmark itself) is scheduled.
    pub sched: Sched,
    /// A round whose change spread while other work used more than this share of the
    /// machine is repeated, up to `retries` times; the least disturbed attempt is kept.
    pub disturbance_threshold: f64,
    pub retries: u32,
    /// Before each change, wait up to this long for the machine to be under 25 % busy.
    pub quiet_before_change: Duration,
    /// Before each size, wait up to this long for the machine to be less than 25 % busy.
    pub quiet_wait: Duration,
    /// Wait this long after `/ready` before any proxy connects (to attach a profiler).
    pub pause_after_ready: Duration,
    /// Give up when the control plane's RSS grows past this while proxies subscribe.
    pub max_cp_rss_mib: u64,
}

/// The control plane and the directory it runs in. Fields drop in order: the process is
/// killed and reaped (`Managed`'s Drop) before the directory is removed, on every path out
/// of [`run_size`].
struct Running {
    cp: Managed,
    dir: Option<tempfile::TempDir>,
}

/// One mesh size, start to finish. Must be called from the main thread: the control plane
/// is started with `PR_SET_PDEATHSIG`, which fires when the *thread* that started it exits.
pub fn run_size(opts: &Options, proxies: usize, pods: usize) -> anyhow::Result<SizeResult> {
    anyhow::ensure!(
        proxies <= pods,
        "--proxies {proxies} is more than --pods {pods}"
    );
    raise_fd_limit(proxies)?;
    let machine_busy_before = crate::harness::quiet::wait_until_quiet(0.25, opts.quiet_wait);
    let dir = tempfile::Builder::new()
        .prefix("weft-propagation-")
        .tempdir()
        .context("creating the temporary directory")?;
    let root = dir.path().to_owned();
    eprintln!("== {proxies} proxies, {pods} pods ({})", root.display());
    let mesh = Mesh::create(&root, pods).context("writing the manifests")?;

    let state = root.join("state");
    let authority = ca::local::load_or_create(&state, mesh::TRUST_DOMAIN)?;
    let bundle = authority.trust_bundle().to_vec();
    let ca = Ca::new(authority, ca::DEFAULT_LIFETIME);
    let tokens = root.join("tokens.yaml");
    std::fs::write(&tokens, "tokens: []\n")?;
    let ports = free_ports(2)?;
    let (grpc, admin) = (ports[0], ports[1]);
    let args: Vec<String> = [
        "--state-dir",
        &state.display().to_string(),
        "--token-file",
        &tokens.display().to_string(),
        "--manifests",
        &mesh.manifests.display().to_string(),
        "--grpc-addr",
        &grpc.to_string(),
        "--admin-addr",
        &admin.to_string(),
        "--trust-domain",
        mesh::TRUST_DOMAIN,
        "--log-format",
        "json",
        "--log",
        &cplog::filter(&opts.cp_log),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let started = Instant::now();
    let env: Vec<(&str, &str)> = opts
        .cp_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let cp = Managed::spawn(
        "control-plane",
        &opts.control_plane,
        &args,
        &env,
        Placement {
            core: None,
            sched: opts.sched,
        },
        &root,
    )?;
    let mut running = Running { cp, dir: Some(dir) };
    if opts.keep_dir {
        if let Some(dir) = running.dir.take() {
            let kept = dir.keep();
            eprintln!("   keeping {}", kept.display());
        }
    }
    running
        .cp
        .wait_ready(Duration::from_secs(300), "GET /ready → 200", || {
            http_status(admin, "/ready") == Some(200)
        })?;
    let ready_s = started.elapsed().as_secs_f64();
    let pid = running.cp.pid();
    std::thread::sleep(Duration::from_millis(500));
    let ready_mem = procfs::memory(pid)?;
    eprintln!(
        "   control plane (pid {pid}) ready after {ready_s:.1} s, RSS {:.1} MiB",
        ready_mem.rss_kib as f64 / 1024.0
    );
    if !opts.pause_after_ready.is_zero() {
        eprintln!(
            "   pausing {:?} (attach a profiler to pid {pid} now)",
            opts.pause_after_ready
        );
        std::thread::sleep(opts.pause_after_ready);
    }

    let certs = Arc::new(proxies::certificates(&ca)?);
    let target = Arc::new(Target {
        addr: grpc,
        bundle,
        server_identity: SpiffeId::for_service_account(
            mesh::TRUST_DOMAIN,
            weft_control_plane::DEFAULT_NAMESPACE,
            weft_control_plane::DEFAULT_SERVICE_ACCOUNT,
        )?,
    });
    let runtime = if opts.client_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.client_threads)
            .enable_all()
            .build()?
    };
    let result = runtime.block_on(drive(
        opts,
        &mesh,
        &mut running,
        admin,
        target,
        certs,
        proxies,
    ));
    // Closes every simulated proxy's connection before the control plane is killed.
    drop(runtime);
    let (subscribe, changes, control_plane, disconnected_at_end) = result?;
    drop(running);
    let summaries = opts
        .changes
        .iter()
        .copied()
        .filter(|c| changes.iter().any(|r| r.change == *c))
        .map(|c| {
            let rounds: Vec<_> = changes.iter().filter(|r| r.change == c).collect();
            ChangeSummary::of(c, &rounds, nproc())
        })
        .collect();
    Ok(SizeResult {
        proxies,
        pods,
        services: mesh::APPS,
        ready_s,
        machine_busy_before,
        control_plane: ControlPlane {
            ready: ready_mem,
            ..control_plane
        },
        subscribe,
        changes,
        summaries,
        disconnected_at_end,
    })
}

type Driven = (
    SubscribePhase,
    Vec<results::ChangeResult>,
    ControlPlane,
    usize,
);

async fn drive(
    opts: &Options,
    mesh: &Mesh,
    running: &mut Running,
    admin: SocketAddr,
    target: Arc<Target>,
    certs: Arc<Vec<Arc<weft_control_plane::client::WorkloadCert>>>,
    count: usize,
) -> anyhow::Result<Driven> {
    let pid = running.cp.pid();
    let (tx, mut events) = mpsc::unbounded_channel();
    let cp_before = procfs::cpu_ticks(pid)?;
    let self_before = measure::self_cpu();
    let started = Instant::now();
    proxies::spawn_all(count, opts.connect_concurrency, target, certs, tx);

    let mut live = vec![false; count];
    let (mut subscribed, mut failed) = (0usize, 0usize);
    let mut first_failure = None;
    let mut took_ms = Vec::with_capacity(count);
    let (mut first_view_bytes, mut first_view_messages, mut largest_message_bytes) = (0, 0, 0);
    let deadline = started + opts.subscribe_timeout;
    let mut next_report = Instant::now() + Duration::from_secs(5);
    while subscribed + failed < count {
        let event = tokio::select! {
            event = events.recv() => event.context("every simulated proxy is gone")?,
            _ = tokio::time::sleep_until(deadline.into()) => {
                eprintln!("   subscribe deadline: {subscribed} of {count} subscribed, {failed} failed");
                break;
            }
        };
        match event.kind {
            EventKind::Subscribed { first, took } => {
                live[event.proxy] = true;
                subscribed += 1;
                took_ms.push(took.as_secs_f64() * 1e3);
                first_view_bytes = first_view_bytes.max(first.bytes);
                first_view_messages = first_view_messages.max(first.messages);
                largest_message_bytes = largest_message_bytes.max(first.largest_message);
            }
            EventKind::Failed(why) => {
                failed += 1;
                if first_failure.is_none() {
                    eprintln!("   proxy {} failed to subscribe: {why}", event.proxy);
                    first_failure = Some(why);
                }
            }
            EventKind::Ended(why) => {
                live[event.proxy] = false;
                eprintln!("   proxy {} disconnected: {why}", event.proxy);
            }
            EventKind::Update(_) => {}
        }
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(5);
            eprintln!(
                "   {subscribed} subscribed after {:.0} s (CP RSS {:.0} MiB)",
                started.elapsed().as_secs_f64(),
                procfs::memory(pid).map(|m| m.rss_kib).unwrap_or(0) as f64 / 1024.0
            );
        }
        running.cp.check_alive()?;
        if (subscribed + failed) % 100 == 0 {
            let rss = procfs::memory(pid).map(|m| m.rss_kib).unwrap_or(0);
            anyhow::ensure!(
                rss <= opts.max_cp_rss_mib * 1024,
                "the control plane's RSS reached {} MiB with {subscribed} proxies subscribed, over \
                 --max-cp-rss-mib {}: stopped so the machine does not run out of memory",
                rss / 1024,
                opts.max_cp_rss_mib
            );
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let cp_cpu_s = (procfs::cpu_ticks(pid)? - cp_before) as f64 / procfs::ticks_per_second() as f64;
    let client_cpu_s = (measure::self_cpu() - self_before).as_secs_f64();
    eprintln!(
        "   {subscribed} subscribed in {seconds:.1} s ({failed} failed); first view {} KiB in {first_view_messages} message(s), the largest {:.1} KiB; CP CPU {cp_cpu_s:.1} s, simulated proxies {client_cpu_s:.1} s",
        first_view_bytes / 1024,
        largest_message_bytes as f64 / 1024.0
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    let subscribed_mem = procfs::memory(pid)?;
    let simulated = procfs::memory(std::process::id())?;
    let cp_counted = cpmetrics::scrape(admin).await?;
    let metric_names_as_documented = cpmetrics::names_as_documented(admin).await?;
    if !metric_names_as_documented {
        eprintln!(
            "   note: the control plane's /metrics names its series _weft_cp_* (not weft_cp_*)"
        );
    }
    eprintln!(
        "   CP RSS {:.1} MiB (peak {:.1} MiB); it counts {} subscribers; the simulated proxies' RSS {:.1} MiB",
        subscribed_mem.rss_kib as f64 / 1024.0,
        subscribed_mem.hwm_kib as f64 / 1024.0,
        cp_counted.subscribers,
        simulated.rss_kib as f64 / 1024.0,
    );
    let subscribe = SubscribePhase {
        subscribed,
        failed,
        first_failure,
        seconds,
        per_proxy: Percentiles::of(&took_ms),
        first_view_bytes,
        first_view_messages,
        largest_message_bytes,
        cp_cpu_s,
        client_cpu_s,
        cp_counted,
    };

    let mut log = cplog::Cursor::new(
        mesh.manifests
            .parent()
            .expect("in the run directory")
            .join("control-plane.log"),
    );
    let mut ctx = measure::Context {
        mesh,
        events: &mut events,
        live: &mut live,
        cp_pid: pid,
        admin,
        log: &mut log,
        timeout: opts.change_timeout,
        quiet: opts.quiet,
        poll: opts.poll,
        max_cp_rss_kib: opts.max_cp_rss_mib * 1024,
    };
    let mut changes = Vec::new();
    let mut aborted = false;
    let mut edit = 0;
    'rounds: for round in 1..=opts.rounds {
        for &change in &opts.changes {
            let mut kept: Option<results::ChangeResult> = None;
            for attempt in 0..=opts.retries {
                measure::wait_until_quiet(0.25, opts.quiet_before_change).await;
                edit += 1;
                let mut r = measure::change(&mut ctx, change, edit).await?;
                r.round = round;
                let disturbance = r.disturbance(nproc());
                if attempt < opts.retries
                    && disturbance > opts.disturbance_threshold
                    && r.aborted.is_none()
                {
                    eprintln!(
                        "   round {round} {}: other work used {:.0} % of the machine while it spread ({:.0} ms); repeating",
                        change.name(),
                        disturbance * 100.0,
                        r.latency.max_ms
                    );
                }
                let better = kept
                    .as_ref()
                    .is_none_or(|k| disturbance < k.disturbance(nproc()));
                let attempts = attempt + 1;
                let done = disturbance <= opts.disturbance_threshold || r.aborted.is_some();
                if better || r.aborted.is_some() {
                    kept = Some(r);
                }
                if let Some(k) = kept.as_mut() {
                    k.attempts = attempts;
                }
                if done {
                    break;
                }
            }
            let r = kept.expect("at least one attempt");
            eprintln!(
                "   round {round} {:<28} {:>5}/{:<5} p50 {:>6.0} ms  p99 {:>6.0} ms  max {:>6.0} ms  CP acks {:>6} ms  views at {:>5} ms  unaffected {}  wrong {}  CP CPU {:.0} ms  sim CPU {:.0} ms  other work {:.0} % ({} edit(s))  CP RSS {:.0} MiB (peak {:.0}){}",
                change.name(),
                r.received,
                r.expected,
                r.latency.p50_ms,
                r.latency.p99_ms,
                r.latency.max_ms,
                r.cp_all_acked_ms
                    .map(|v| format!("{v:.0}"))
                    .unwrap_or_else(|| "–".into()),
                r.breakdown
                    .views_published_ms
                    .map(|v| format!("{v:.0}"))
                    .unwrap_or_else(|| "–".into()),
                r.unaffected_updates,
                r.wrong_content,
                r.cp_cpu_ms,
                r.client_cpu_ms,
                r.disturbance(nproc()) * 100.0,
                r.attempts,
                r.cp_memory_after.rss_kib as f64 / 1024.0,
                r.cp_memory_after.hwm_kib as f64 / 1024.0,
                if r.counts_match { "" } else { "  COUNTERS DIFFER" },
            );
            aborted = r.aborted.is_some();
            changes.push(r);
            if aborted {
                break 'rounds;
            }
            running.cp.check_alive()?;
        }
    }
    measure::drain_stray(&mut ctx);
    let end = if aborted {
        Default::default()
    } else {
        procfs::memory(pid)?
    };
    let simulated = procfs::memory(std::process::id())?;
    let disconnected = (0..count).filter(|p| !live[*p]).count() - failed;
    Ok((
        subscribe,
        changes,
        ControlPlane {
            pid,
            exe: procfs::exe(pid),
            ready: Default::default(),
            subscribed: subscribed_mem,
            end,
            metric_names_as_documented,
            simulated_proxies: simulated,
        },
        disconnected,
    ))
}

/// Each proxy holds one socket here and the control plane one more; raise the soft limit
/// to the hard one (the control plane inherits it).
fn raise_fd_limit(proxies: usize) -> anyhow::Result<()> {
    // SAFETY: getrlimit/setrlimit with a valid pointer.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        anyhow::bail!("getrlimit: {}", std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            anyhow::bail!("setrlimit: {}", std::io::Error::last_os_error());
        }
    }
    let need = proxies as u64 + 256;
    anyhow::ensure!(
        limit.rlim_cur >= need,
        "{proxies} proxies need about {need} file descriptors; the limit is {} (raise the hard limit)",
        limit.rlim_cur
    );
    Ok(())
}

fn nproc() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
