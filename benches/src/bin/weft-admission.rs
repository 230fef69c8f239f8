//! `weft-admission`: admission latency of `weft-injector` (issue 6's target: p99 under 2 ms at
//! 200 reviews/s on one core).
//!
//! Starts the real `weft-injector` binary (next to this one, built in the same profile) with a
//! generated serving certificate, pinned with `taskset -c <injector core>`, and drives it from
//! this process (pinned to the other core) with an **open loop**: review *n* is due at
//! `start + n/R` and goes out on keep-alive HTTPS connection *n mod C*; latency is measured
//! from the intended send time (coordinated omission corrected, like `weft-load`), to the last
//! byte of the response, which must be an `allowed` review carrying a patch. The body is a
//! realistic AdmissionReview: a Deployment's pod (the injector's `deployment_pod.json`
//! fixture) by default, with a fresh `uid` per review.
//!
//! ```sh
//! cargo build --release -p weft-injector && cargo build --release -p weft-bench --features admission
//! target/release/weft-admission                       # 200/s, 3 rounds of 20 s, 4 connections
//! target/release/weft-admission --rate 1000 --duration 10 --http2
//! ```

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use weft_bench::clock::now_ns;
use weft_bench::harness::process::{self, Placement, Sched};
use weft_bench::procfs::cpu_ticks;
use weft_bench::timer::Timer;

const SERVER_NAME: &str = "weft-injector.weft-system.svc";
const DEFAULT_POD: &str = include_str!("../../../injector/tests/fixtures/deployment_pod.json");

#[derive(Debug, Parser)]
#[command(
    name = "weft-admission",
    about = "Admission latency of weft-injector (open loop, HTTPS keep-alive)"
)]
struct Args {
    /// Reviews per second.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Measured seconds per round (after the warm-up).
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Rounds; the round with the median p99 is reported, every round's p99 is listed.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Before starting, wait up to this many seconds for the machine to be under 10 % busy.
    #[arg(long, default_value_t = 60)]
    quiet_wait: u64,
    /// Unmeasured warm-up seconds at the same rate.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Keep-alive connections (the API server keeps a few per webhook).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Use HTTP/2 (one connection, multiplexed) instead of HTTP/1.1.
    #[arg(long)]
    http2: bool,
    /// An AdmissionReview file to send instead of the built-in Deployment pod.
    #[arg(long)]
    review: Option<PathBuf>,
    /// The injector's core (`taskset -c`); the load generator takes --load-core.
    #[arg(long, default_value_t = 1)]
    injector_core: usize,
    #[arg(long, default_value_t = 0)]
    load_core: usize,
    /// Scheduling of the injector and the load generator: `normal`, `nice` (-19) or `fifo`
    /// (SCHED_FIFO 10), to shield the measurement from other work on a shared machine.
    #[arg(long, default_value = "normal", value_parser = ["normal", "nice", "fifo"])]
    sched: String,
    /// The weft-injector binary [default: next to this one].
    #[arg(long)]
    injector: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.rate > 0 && args.duration > 0,
        "--rate and --duration must be positive"
    );
    let injector = match &args.injector {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("weft-injector"),
    };
    anyhow::ensure!(
        injector.is_file(),
        "{} not found: cargo build --release -p weft-injector",
        injector.display()
    );
    let review = match &args.review {
        Some(path) => std::fs::read_to_string(path)?,
        None => DEFAULT_POD.to_owned(),
    };
    let dir = std::env::temp_dir().join(format!("weft-admission-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (ca_der, cert, key) = certificate(&dir)?;
    let addr = free_addr()?;
    let busy =
        weft_bench::harness::quiet::wait_until_quiet(0.10, Duration::from_secs(args.quiet_wait));
    let mut child = start_injector(&injector, &args, addr, &cert, &key, &dir)?;
    pin_self(args.load_core);
    schedule_self(&args.sched)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(run(&args, addr, ca_der, &review, child.id()));
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let mut report = result?;
    report.busy_before = busy.unwrap_or(0.0);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&args, &report);
    }
    Ok(())
}

#[derive(Debug, serde::Serialize)]
struct Report {
    rate: u32,
    connections: usize,
    protocol: &'static str,
    sched: String,
    review_bytes: usize,
    /// Share of the machine busy in the second before the run.
    busy_before: f64,
    /// The round with the median p99.
    median: Round,
    rounds: Vec<Round>,
    injector_rss_kib: u64,
    /// Mean time inside the review function (`weft_injector_review_duration_seconds`).
    review_mean_us: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
struct Round {
    duration_s: u64,
    completed: u64,
    errors: u64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    /// Share of one core the injector used.
    injector_cpu: f64,
    injector_cpu_us_per_review: f64,
    /// Share of the machine used by anything but the injector and this process.
    other_work: f64,
    stalls: weft_bench::harness::stalls::Stalls,
}

fn print_table(args: &Args, r: &Report) {
    println!(
        "weft-injector admission latency: {} reviews/s, {} round(s) of {} s, {} {} HTTPS connection(s), {}-byte review, sched {}; machine {:.0} % busy before",
        args.rate, r.rounds.len(), args.duration, r.connections, r.protocol, r.review_bytes, r.sched, r.busy_before * 100.0
    );
    let m = &r.median;
    let p99s: Vec<String> = r
        .rounds
        .iter()
        .map(|x| format!("{:.0}", x.p99_us))
        .collect();
    println!("| reviews | errors | p50 µs | p90 µs | p99 µs [rounds] | p99.9 µs | max µs | injector CPU | CPU µs/review | review fn µs | RSS | other work | longest stall |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {:.0} | {:.0} | {:.0} [{}] | {:.0} | {:.0} | {:.1} % | {:.0} | {:.0} | {:.1} MiB | {:.0} % | {:.0} ms |",
        m.completed,
        m.errors,
        m.p50_us,
        m.p90_us,
        m.p99_us,
        p99s.join(" / "),
        m.p999_us,
        m.max_us,
        m.injector_cpu * 100.0,
        m.injector_cpu_us_per_review,
        r.review_mean_us,
        r.injector_rss_kib as f64 / 1024.0,
        m.other_work * 100.0,
        m.stalls.longest_ms,
    );
    println!(
        "target p99 < 2000 µs at {} reviews/s: {}",
        args.rate,
        if m.p99_us < 2000.0 && m.errors == 0 {
            "met"
        } else {
            "NOT met"
        }
    );
}

fn certificate(dir: &Path) -> anyhow::Result<(CertificateDer<'static>, PathBuf, PathBuf)> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let cert = CertificateParams::new(vec![SERVER_NAME.to_string()])?.self_signed(&key)?;
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    Ok((cert.der().clone(), cert_path, key_path))
}

fn free_addr() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

fn start_injector(
    bin: &Path,
    args: &Args,
    addr: SocketAddr,
    cert: &Path,
    key: &Path,
    dir: &Path,
) -> anyhow::Result<Child> {
    let log = std::fs::File::create(dir.join("injector.log"))?;
    let place = Placement {
        core: Some(args.injector_core),
        sched: sched(&args.sched),
    };
    let child = process::command(bin, place)
        .arg("--addr")
        .arg(addr.to_string())
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .args(["--sidecar", "native", "--workers", "1"])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    Ok(child)
}

fn sched(name: &str) -> Sched {
    match name {
        "nice" => Sched::Nice,
        "fifo" => Sched::Fifo,
        _ => Sched::Normal,
    }
}

/// Applies `--sched` to this process (the load generator), as the harness does to children.
fn schedule_self(name: &str) -> std::io::Result<()> {
    // SAFETY: plain syscalls on this process.
    let rc = unsafe {
        match sched(name) {
            Sched::Normal => 0,
            Sched::Nice => libc::setpriority(libc::PRIO_PROCESS, 0, -19),
            Sched::Fifo => {
                let param = libc::sched_param { sched_priority: 10 };
                libc::sched_setscheduler(0, libc::SCHED_FIFO, &param)
            }
        }
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn pin_self(core: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity only touch it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn send(&mut self, req: http::Request<Full<Bytes>>) -> anyhow::Result<(u16, Bytes)> {
        let rsp = match self {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let status = rsp.status().as_u16();
        Ok((status, rsp.into_body().collect().await?.to_bytes()))
    }
}

async fn connect(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    http2: bool,
) -> anyhow::Result<Sender> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![if http2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(SERVER_NAME)?, tcp)
        .await?;
    let io = TokioIo::new(tls);
    Ok(if http2 {
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        Sender::H2(sender)
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        Sender::H1(sender)
    })
}

fn request(review: &str, n: u64) -> http::Request<Full<Bytes>> {
    // A fresh uid per review, as the API server sends.
    let body = review.replacen(
        "0df28fbd-5f5f-11e8-bc74-36e6bb280816",
        &format!("0df28fbd-5f5f-11e8-bc74-{n:012x}"),
        1,
    );
    http::Request::post(format!("https://{SERVER_NAME}/mutate?timeout=10s"))
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid request")
}

fn ok(status: u16, body: &[u8]) -> bool {
    status == 200
        && serde_json::from_slice::<serde_json::Value>(body)
            .map(|v| v["response"]["allowed"] == true && v["response"]["patch"].is_string())
            .unwrap_or(false)
}

async fn wait_ready(addr: SocketAddr, ca: &CertificateDer<'static>) -> anyhow::Result<()> {
    let deadline = now_ns() + 10_000_000_000;
    loop {
        if let Ok(mut s) = connect(addr, ca, false).await {
            let req = http::Request::get(format!("https://{SERVER_NAME}/ready"))
                .body(Full::new(Bytes::new()))?;
            if matches!(s.send(req).await, Ok((200, _))) {
                return Ok(());
            }
        }
        anyhow::ensure!(
            now_ns() < deadline,
            "weft-injector did not become ready in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run(
    args: &Args,
    addr: SocketAddr,
    ca: CertificateDer<'static>,
    review: &str,
    pid: u32,
) -> anyhow::Result<Report> {
    wait_ready(addr, &ca).await?;
    let connections = if args.http2 {
        1
    } else {
        args.connections.max(1)
    };
    let mut senders = Vec::new();
    for _ in 0..connections {
        senders.push(Rc::new(tokio::sync::Mutex::new(
            connect(addr, &ca, args.http2).await?,
        )));
    }
    let local = tokio::task::LocalSet::new();
    let mut next = 0u64;
    local
        .run_until(open_loop(
            args,
            &senders,
            review,
            pid,
            args.warmup,
            &mut next,
        ))
        .await?;
    let mut rounds = Vec::new();
    for _ in 0..args.rounds.max(1) {
        let round = local
            .run_until(open_loop(
                args,
                &senders,
                review,
                pid,
                args.duration,
                &mut next,
            ))
            .await?;
        rounds.push(round);
    }
    let mut by_p99 = rounds.clone();
    by_p99.sort_by(|a, b| a.p99_us.total_cmp(&b.p99_us));
    let median = by_p99[by_p99.len() / 2].clone();
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    let review_mean_us = review_mean(&senders[0]).await.unwrap_or(0.0);
    Ok(Report {
        rate: args.rate,
        connections,
        protocol: if args.http2 { "HTTP/2" } else { "HTTP/1.1" },
        sched: args.sched.clone(),
        review_bytes: review.len(),
        busy_before: 0.0,
        median,
        rounds,
        injector_rss_kib: rss,
        review_mean_us,
    })
}

/// `sum / count` of the injector's review-duration histogram, in µs.
async fn review_mean(sender: &Rc<tokio::sync::Mutex<Sender>>) -> anyhow::Result<f64> {
    let req = http::Request::get(format!("https://{SERVER_NAME}/metrics"))
        .body(Full::new(Bytes::new()))?;
    let (_, body) = sender.lock().await.send(req).await?;
    let text = String::from_utf8_lossy(&body);
    let value = |name: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let sum = value("weft_injector_review_duration_seconds_sum").unwrap_or(0.0);
    let count = value("weft_injector_review_duration_seconds_count").unwrap_or(1.0);
    Ok(sum / count * 1e6)
}

fn self_ticks() -> u64 {
    cpu_ticks(std::process::id()).unwrap_or(0)
}

/// One open-loop window of `seconds`: review `n` is due at `start + n/R`, sent on the
/// connection `n mod C` (HTTP/2: up to 16 streams at once on the one connection).
async fn open_loop(
    args: &Args,
    senders: &[Rc<tokio::sync::Mutex<Sender>>],
    review: &str,
    pid: u32,
    seconds: u64,
    next_uid: &mut u64,
) -> anyhow::Result<Round> {
    let interval = 1_000_000_000 / u64::from(args.rate);
    let total = seconds * u64::from(args.rate);
    let histogram = Rc::new(RefCell::new(Histogram::<u64>::new(3)?));
    let errors = Rc::new(Cell::new(0u64));
    let workers = senders.len() * if args.http2 { 16 } else { 1 };
    let uid_base = *next_uid;
    *next_uid += total;

    let stalls = weft_bench::harness::stalls::StallWatch::start();
    let machine_before = weft_bench::harness::quiet::cpu_jiffies().unwrap_or((0, 0));
    let (injector_before, self_before) = (cpu_ticks(pid).unwrap_or(0), self_ticks());
    let start = now_ns() + 20_000_000;
    let mut handles = Vec::new();
    for w in 0..workers {
        let sender = senders[w % senders.len()].clone();
        let (histogram, errors) = (histogram.clone(), errors.clone());
        let review = review.to_owned();
        let h2 = args.http2;
        handles.push(tokio::task::spawn_local(async move {
            let timer = Timer::new().expect("timerfd");
            let mut n = w as u64;
            while n < total {
                let due = start + n * interval;
                timer.sleep_until(due).await.expect("timerfd");
                let req = request(&review, uid_base + n);
                let result = if h2 {
                    // HTTP/2 senders are cheap clones: don't hold the lock while waiting.
                    let mut s = match &*sender.lock().await {
                        Sender::H2(s) => Sender::H2(s.clone()),
                        Sender::H1(_) => unreachable!(),
                    };
                    s.send(req).await
                } else {
                    sender.lock().await.send(req).await
                };
                let done = now_ns();
                match &result {
                    Ok((status, body)) if ok(*status, body) => {
                        let _ = histogram
                            .borrow_mut()
                            .record(done.saturating_sub(due).max(1));
                    }
                    _ => errors.set(errors.get() + 1),
                }
                n += workers as u64;
            }
        }));
    }
    for h in handles {
        h.await?;
    }
    let window = (now_ns() - start) as f64 / 1e9;
    let injector_ticks = cpu_ticks(pid).unwrap_or(0).saturating_sub(injector_before);
    let own_ticks = self_ticks().saturating_sub(self_before);
    let machine_after = weft_bench::harness::quiet::cpu_jiffies().unwrap_or((0, 0));
    let stalls = stalls.stop();
    // SAFETY: sysconf has no preconditions.
    let tick = 1.0 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let machine_busy = machine_after.0.saturating_sub(machine_before.0);
    let machine_total = machine_after.1.saturating_sub(machine_before.1).max(1);
    let other =
        machine_busy.saturating_sub(injector_ticks + own_ticks) as f64 / machine_total as f64;
    let cpu_s = injector_ticks as f64 * tick;
    let h = histogram.borrow();
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(Round {
        duration_s: seconds,
        completed: h.len(),
        errors: errors.get(),
        p50_us: us(0.5),
        p90_us: us(0.9),
        p99_us: us(0.99),
        p999_us: us(0.999),
        max_us: h.max() as f64 / 1000.0,
        injector_cpu: cpu_s / window,
        injector_cpu_us_per_review: if !h.is_empty() {
            cpu_s * 1e6 / h.len() as f64
        } else {
            0.0
        },
        other_work: other,
        stalls,
    })
}
