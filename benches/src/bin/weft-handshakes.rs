//! Full mTLS handshakes per second per core, as a sidecar pays them: TLS 1.3, ECDSA P-256
//! certificates naming SPIFFE IDs, a client certificate required and verified, the server's
//! identity checked — the proxy's own rustls configurations (`weft_proxy::identity::Tls`).
//! Session resumption is off in the mesh (a resumed session would skip the certificate
//! checks), so every new connection between proxies costs exactly one of these.
//!
//! The server and the clients run on two threads pinned to two cores; each thread's own CPU
//! time (`RUSAGE_THREAD`) gives the cost of one handshake on that side, and so how many
//! handshakes one core can do. Bounded by `--seconds`; talks only to 127.0.0.1.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_api::SpiffeId;
use weft_proxy::identity::Tls;

#[derive(Parser)]
#[command(about = "Full mTLS handshakes per second per core, with the proxy's TLS configuration")]
struct Args {
    /// How long to run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Handshakes in flight at once (keeps the server busy while a client waits on the network).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

const SERVER_ID: &str = "spiffe://bench.local/ns/shop/sa/orders";
const CLIENT_ID: &str = "spiffe://bench.local/ns/shop/sa/web";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (server_tls, client_tls) = identities()?;
    let server_id: SpiffeId = SERVER_ID.parse()?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));

    let server = {
        let (stop, accepted) = (stop.clone(), accepted.clone());
        std::thread::spawn(move || -> anyhow::Result<Duration> {
            pin_to_core(1);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let cpu_before = thread_cpu();
            rt.block_on(serve(listener, server_tls, stop, accepted))?;
            Ok(thread_cpu() - cpu_before)
        })
    };
    let client = {
        let stop = stop.clone();
        let concurrency = args.concurrency;
        std::thread::spawn(move || -> anyhow::Result<(u64, Duration)> {
            pin_to_core(0);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let cpu_before = thread_cpu();
            let done = rt.block_on(connect_loop(addr, client_tls, server_id, concurrency, stop))?;
            Ok((done, thread_cpu() - cpu_before))
        })
    };
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(args.seconds));
    stop.store(true, Ordering::Relaxed);
    let (handshakes, client_cpu) = client
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    let wall = started.elapsed();
    let server_cpu = server
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    let accepted = accepted.load(Ordering::Relaxed);

    let per = |cpu: Duration, n: u64| cpu.as_secs_f64() * 1e6 / n.max(1) as f64;
    let (server_us, client_us) = (per(server_cpu, accepted), per(client_cpu, handshakes));
    println!(
        "mutual TLS 1.3 handshakes (ECDSA P-256, SPIFFE IDs checked both ways), {:.1} s",
        wall.as_secs_f64()
    );
    println!("| side | handshakes | CPU µs / handshake | handshakes / s per core |");
    println!("|---|---:|---:|---:|");
    println!(
        "| server (inbound proxy) | {accepted} | {server_us:.0} | {:.0} |",
        1e6 / server_us
    );
    println!(
        "| client (outbound proxy) | {handshakes} | {client_us:.0} | {:.0} |",
        1e6 / client_us
    );
    println!(
        "wall-clock rate: {:.0} handshakes/s",
        handshakes as f64 / wall.as_secs_f64()
    );
    if let Some(path) = args.json {
        let json = serde_json::json!({
            "seconds": wall.as_secs_f64(),
            "server": { "handshakes": accepted, "cpu_us_per_handshake": server_us, "per_core_per_second": 1e6 / server_us },
            "client": { "handshakes": handshakes, "cpu_us_per_handshake": client_us, "per_core_per_second": 1e6 / client_us },
        });
        std::fs::write(&path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn serve(
    listener: std::net::TcpListener,
    tls: Arc<Tls>,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
    while !stop.load(Ordering::Relaxed) {
        let Ok(Ok((tcp, _))) =
            tokio::time::timeout(Duration::from_millis(100), listener.accept()).await
        else {
            continue;
        };
        let (acceptor, accepted) = (acceptor.clone(), accepted.clone());
        // As the proxy's own sockets: a handshake is several small writes, which Nagle and
        // delayed ACKs would otherwise hold for 40 ms.
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            if let Ok(mut stream) = acceptor.accept(tcp).await {
                let mut byte = [0u8; 1];
                if stream.read_exact(&mut byte).await.is_ok()
                    && stream.write_all(&byte).await.is_ok()
                {
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    Ok(())
}

async fn connect_loop(
    addr: SocketAddr,
    tls: Arc<Tls>,
    server_id: SpiffeId,
    concurrency: usize,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<u64> {
    let connector = tokio_rustls::TlsConnector::from(tls.client_config(&server_id, &[]));
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (connector, stop, done) = (connector.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let tcp = tokio::net::TcpStream::connect(addr).await?;
                    tcp.set_nodelay(true)?;
                    let name = ServerName::IpAddress(addr.ip().into());
                    let mut stream = connector.connect(name, tcp).await?;
                    stream.write_all(b"x").await?;
                    let mut byte = [0u8; 1];
                    stream.read_exact(&mut byte).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(done.load(Ordering::Relaxed))
}

/// A root and two leaves, as the control plane would issue them.
fn identities() -> anyhow::Result<(Arc<Tls>, Arc<Tls>)> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let root = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |id: &str| -> anyhow::Result<Arc<Tls>> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = vec![SanType::URI(id.try_into()?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &issuer)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok(Tls::from_der(
            vec![cert.der().clone()],
            key,
            vec![CertificateDer::from(root.der().to_vec())],
        )?)
    };
    Ok((leaf(SERVER_ID)?, leaf(CLIENT_ID)?))
}

fn pin_to_core(core: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        // Best effort: on a one-core machine the figures are still right, only noisier.
        let _ = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// CPU time (user + system) of the calling thread.
fn thread_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}
