//! Rotation under load, end to end: the real control plane started in-process (local mode,
//! its CA in a state directory) hands out certificates of a few seconds, and three proxies
//! in control-plane mode carry continuous traffic while their certificates — and then the
//! mesh's trust anchor — change underneath them.
//!
//! ```text
//!             ┌ http listener: HTTP/1.1 (over the pooled HTTP/2 mesh connection) ┐
//! load ─> A ──┤                and WebSocket upgrades (one mTLS connection each) ├─> B ─> app
//!       (web) └ tcp listener:  opaque TCP (one mTLS connection each) ────────────┴─> C ─> echo
//!                                                          (B: orders, C: echo; both STRICT)
//! ```
//!
//! In the certificate test a probe workload also handshakes with B and C a few times a second
//! and records each certificate they present. In the trust-anchor test two more proxies, with
//! certificates from files, check at the end which roots B still accepts.
//!
//! Every load loop is bounded in time and count and stops by itself; every wait is bounded.
//! The figures (operations, failures, renewals) are printed: run with `--nocapture`.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::control_plane::{bundle_pem, spiffe_id, ControlPlane, Identity, Root};
use support::load::{http_once, tcp_once, upgrade_once, Kind, Load, Targets, KINDS, OP_LIMIT};
use support::*;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use weft_api::SpiffeId;
use weft_proxy::identity::Tls;

/// Certificates live this long. The CA back-dates them a minute for clock skew, so the
/// proxies renew at their shortest renewal delay, about a second after each issue: three
/// seconds of slack before one expires.
const LIFETIME: Duration = Duration::from_secs(4);

/// The pause between starting one proxy and the next. Proxies renewing every second renew
/// in lockstep if they start together; a third of a second apart, each rotation step has a
/// window in which some proxies already hold what the control plane issues now and others
/// still hold the previous step's — the window in which a wrong rotation order fails.
const STAGGER: Duration = Duration::from_millis(330);

// ---------------------------------------------------------------------------------------------
// The mesh
// ---------------------------------------------------------------------------------------------

struct Mesh {
    cp: ControlPlane,
    app: Upstream,
    _echo: TcpUpstream,
    /// The client side (web), with both static listeners.
    a: TestProxy,
    /// Inbound to the HTTP app (orders), STRICT.
    b: TestProxy,
    /// Inbound to the TCP echo app (echo), STRICT.
    c: TestProxy,
    /// A's static listeners: for B (HTTP, detected) and for C (`protocol: opaque`).
    targets: Targets,
}

impl Mesh {
    async fn start() -> Mesh {
        watch_for_proxy_panics();
        let cp = ControlPlane::start(LIFETIME, &["web", "orders", "echo"]).await;
        let app = Upstream::start("app").await;
        let echo = TcpUpstream::start(TcpBehavior::Echo).await;
        // Handshake and connect limits well above anything a loaded test machine needs: a
        // failure here means rotation broke something, not that the machine was slow.
        let b = proxy()
            .inbound_app(app.addr)
            .config("inboundMtls: {default: strict}\ndetectTimeout: 5s\nconnectTimeout: 5s\n")
            .args(cp.proxy_args("orders"))
            .start()
            .await;
        tokio::time::sleep(STAGGER).await;
        let c = proxy()
            .inbound_app(echo.addr)
            .config(format!(
                "inboundMtls: {{default: strict}}\ndetectTimeout: 5s\nconnectTimeout: 5s\n\
                 skipDetectPorts: [{}]\n",
                echo.addr.port()
            ))
            .args(cp.proxy_args("echo"))
            .start()
            .await;
        tokio::time::sleep(STAGGER).await;
        let targets = Targets {
            http: free_addr(),
            tcp: free_addr(),
        };
        let a = proxy()
            .config(format!(
                "connectTimeout: 5s\nlisteners:\n  \
                 - name: orders\n    bind: \"{}\"\n    target: \"{}\"\n    identity: \"{}\"\n  \
                 - name: echo\n    bind: \"{}\"\n    target: \"{}\"\n    protocol: opaque\n    \
                 identity: \"{}\"\n",
                targets.http,
                b.inbound,
                spiffe_id("orders"),
                targets.tcp,
                c.inbound,
                spiffe_id("echo"),
            ))
            .args(cp.proxy_args("web"))
            .start()
            .await;
        let mesh = Mesh {
            cp,
            app,
            _echo: echo,
            a,
            b,
            c,
            targets,
        };
        for (name, proxy) in mesh.proxies() {
            eventually(WAIT, &format!("proxy {name} to be certified"), || async {
                admin(proxy.admin, http::Method::GET, "/ready", "")
                    .await
                    .status
                    == StatusCode::OK
            })
            .await;
        }
        // One of each before the clock starts: the mesh works at all.
        let Targets { http, tcp } = mesh.targets;
        http_once(http, 0).await.expect("a first HTTP request");
        upgrade_once(http, 0).await.expect("a first upgrade");
        tcp_once(tcp, 0).await.expect("a first opaque connection");
        mesh
    }

    fn proxies(&self) -> [(&'static str, &TestProxy); 3] {
        [("A", &self.a), ("B", &self.b), ("C", &self.c)]
    }

    /// Each proxy's identity metrics now.
    async fn identity(&self) -> [Identity; 3] {
        let mut out = [Identity::default(); 3];
        for (slot, (_, proxy)) in out.iter_mut().zip(self.proxies()) {
            *slot = Identity::of(proxy).await;
        }
        out
    }

    /// Waits until every proxy has renewed at least `n` times since `base`.
    async fn renewed(&self, base: &[Identity; 3], n: f64, limit: Duration, what: &str) {
        let deadline = Instant::now() + limit;
        loop {
            let now = self.identity().await;
            let since: Vec<(f64, f64)> = now
                .iter()
                .zip(base)
                .map(|(now, base)| {
                    (
                        now.renewals_ok - base.renewals_ok,
                        now.renewals_error - base.renewals_error,
                    )
                })
                .collect();
            if since.iter().all(|(ok, _)| *ok >= n) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not within {limit:?}: {what}; renewals (ok, failed) of A, B, C since: {since:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Inbound TLS handshakes B and C refused.
    async fn refused_handshakes(&self) -> f64 {
        let mut total = 0.0;
        for proxy in [&self.b, &self.c] {
            total += proxy.metrics().await.sum(
                "weft_errors_total",
                &[("direction", "inbound"), ("kind", "tls_handshake")],
            );
        }
        total
    }
}

fn print_identity(label: &str, before: &[Identity; 3], after: &[Identity; 3]) {
    for ((name, before), after) in ["A", "B", "C"].iter().zip(before).zip(after) {
        eprintln!(
            "{label}: proxy {name}: {} renewals ok, {} failed; certificate expiry moved {} s",
            after.renewals_ok - before.renewals_ok,
            after.renewals_error - before.renewals_error,
            after.expiry - before.expiry
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Watching the certificates the servers present
// ---------------------------------------------------------------------------------------------

/// How often the probe handshakes with each server.
const PROBE_EVERY: Duration = Duration::from_millis(200);

/// A workload of its own (`probe`, with a certificate from the mesh's root) that completes an
/// mTLS handshake with each server proxy every `PROBE_EVERY`, verifying it as the data path
/// does (chain and SPIFFE ID), and records every distinct certificate presented.
struct Probe {
    /// Per server: the distinct leaf certificates seen.
    seen: Arc<Mutex<Vec<HashSet<Vec<u8>>>>>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Probe {
    fn start(root: &Root, servers: Vec<(SocketAddr, &str)>, limit: Duration) -> Probe {
        let (cert, key) = root.leaf(&spiffe_id("probe"));
        let tls = Tls::from_der(
            CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap(),
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            vec![root.der()],
        )
        .unwrap();
        let servers: Vec<(SocketAddr, SpiffeId)> = servers
            .into_iter()
            .map(|(addr, account)| (addr, spiffe_id(account).parse().unwrap()))
            .collect();
        let seen = Arc::new(Mutex::new(vec![HashSet::new(); servers.len()]));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + limit;
        let task = tokio::spawn({
            let (seen, failures, stop) = (seen.clone(), failures.clone(), stop.clone());
            async move {
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    for (i, (addr, expected)) in servers.iter().enumerate() {
                        match server_leaf(&tls, *addr, expected).await {
                            Ok(leaf) => {
                                seen.lock().unwrap()[i].insert(leaf);
                            }
                            Err(error) => failures
                                .lock()
                                .unwrap()
                                .push(format!("probe of {expected}: {error}")),
                        }
                    }
                    tokio::time::sleep(PROBE_EVERY).await;
                }
            }
        });
        Probe {
            seen,
            failures,
            stop,
            task,
        }
    }

    /// Stops probing; returns how many distinct certificates each server presented, and the
    /// failed handshakes.
    async fn stop(self) -> (Vec<usize>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        within(OP_LIMIT * 3, "the probe to stop", self.task)
            .await
            .expect("probe task");
        let seen = self.seen.lock().unwrap().iter().map(HashSet::len).collect();
        let failures = self.failures.lock().unwrap().clone();
        (seen, failures)
    }
}

/// One mTLS handshake with `addr`, which must prove `expected`; returns its leaf certificate.
async fn server_leaf(tls: &Tls, addr: SocketAddr, expected: &SpiffeId) -> Result<Vec<u8>, String> {
    let handshake = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let stream = TlsConnector::from(tls.client_config(expected, &[]))
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let leaf = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .ok_or("no server certificate")?
            .to_vec();
        Ok(leaf)
    };
    tokio::time::timeout(OP_LIMIT, handshake)
        .await
        .unwrap_or_else(|_| Err(format!("no handshake within {OP_LIMIT:?}")))
}

// ---------------------------------------------------------------------------------------------
// Certificate rotation
// ---------------------------------------------------------------------------------------------

/// How long the load runs in the certificate-rotation test.
const RUN: Duration = Duration::from_secs(12);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_every_second_under_load_with_zero_failures() {
    let mesh = Mesh::start().await;
    let before = mesh.identity().await;
    let load = Load::start(mesh.targets, RUN);
    let probe = Probe::start(
        &mesh.cp.root(),
        vec![(mesh.b.inbound, "orders"), (mesh.c.inbound, "echo")],
        RUN,
    );
    tokio::time::sleep(RUN).await;
    let (load, elapsed) = load.stop().await;
    let (presented, probe_failures) = probe.stop().await;
    let after = mesh.identity().await;
    let tally = load.tally();

    eprintln!(
        "certificate rotation: {} operations in {elapsed:?}: {tally}; longest gap between \
         successes: upgrade {:?}, opaque tcp {:?}",
        tally.total(),
        load.longest_gap(Kind::Upgrade),
        load.longest_gap(Kind::Tcp)
    );
    print_identity("certificate rotation", &before, &after);
    eprintln!(
        "certificate rotation: distinct certificates presented to the probe: B {}, C {}",
        presented[0], presented[1]
    );

    load.assert_no_failures(&tally);
    // Enough traffic of every kind that "no failures" means something.
    for kind in KINDS {
        assert!(tally.ok(kind) >= 50, "too little {kind:?} traffic: {tally}");
    }
    for ((name, before), after) in ["A", "B", "C"].iter().zip(&before).zip(&after) {
        let renewals = after.renewals_ok - before.renewals_ok;
        assert!(
            renewals >= 5.0,
            "proxy {name} renewed {renewals} times in {elapsed:?}"
        );
        assert_eq!(
            after.renewals_error, before.renewals_error,
            "proxy {name} had failed renewals"
        );
        assert!(
            after.expiry - before.expiry >= 5.0,
            "proxy {name}'s certificate expiry moved from {} to {}",
            before.expiry,
            after.expiry
        );
    }
    // The servers really presented each new certificate, and each was valid.
    assert!(probe_failures.is_empty(), "{probe_failures:#?}");
    for (name, count) in ["B", "C"].iter().zip(&presented) {
        assert!(*count >= 5, "proxy {name} presented {count} certificates");
    }
    assert_eq!(mesh.refused_handshakes().await, 0.0);
    // Every operation crossed the mesh with A's identity.
    let web = spiffe_id("web");
    let from_web = [
        ("direction", "inbound"),
        ("tls", "true"),
        ("client_id", web.as_str()),
    ];
    assert!(
        mesh.b.metrics().await.sum("weft_requests_total", &from_web)
            >= (tally.ok(Kind::Http) + tally.ok(Kind::Upgrade)) as f64
    );
    assert!(
        mesh.c
            .metrics()
            .await
            .sum("weft_tcp_connections_opened_total", &from_web)
            >= tally.ok(Kind::Tcp) as f64
    );
    assert!(proxy_panics().is_empty(), "{:?}", proxy_panics());
}

// ---------------------------------------------------------------------------------------------
// Trust-anchor rotation
// ---------------------------------------------------------------------------------------------

/// A proxy in files mode calling B as `web`, with the given certificate and trust bundle.
struct FilesClient {
    proxy: TestProxy,
    listener: SocketAddr,
    _dir: TempDir,
}

impl FilesClient {
    async fn start(mesh: &Mesh, (cert, key): (String, String), bundle: &[&Root]) -> FilesClient {
        let dir = TempDir::new();
        let file = |name: &str, contents: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, contents).unwrap();
            path.display().to_string()
        };
        let args = [
            "--identity-cert".to_string(),
            file("cert.pem", &cert),
            "--identity-key".into(),
            file("key.pem", &key),
            "--identity-trust-bundle".into(),
            file("bundle.pem", &bundle_pem(bundle)),
        ];
        let listener = free_addr();
        let proxy = proxy()
            .config(format!(
                "connectTimeout: 5s\nlisteners:\n  - name: orders\n    bind: \"{listener}\"\n    \
                 target: \"{}\"\n    identity: \"{}\"\n",
                mesh.b.inbound,
                spiffe_id("orders")
            ))
            .args(args)
            .start()
            .await;
        FilesClient {
            proxy,
            listener,
            _dir: dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trust_anchor_rotates_under_load_with_zero_failures() {
    let mesh = Mesh::start().await;
    // The control plane's own root, read from its state directory while it runs (which must
    // not make it reload, and so undo, anything).
    let old = mesh.cp.root();
    let new = Root::generate("Weft rotation test: new root");
    let before = mesh.identity().await;
    let load = Load::start(mesh.targets, Duration::from_secs(40));

    let steps = [
        ("1. add the new root", &old, vec![&old, &new]),
        ("2. issue from the new root", &new, vec![&old, &new]),
        ("3. drop the old root", &new, vec![&new]),
    ];
    for (step, issuer, bundle) in steps {
        let started = Instant::now();
        let (base, counts) = (mesh.identity().await, load.tally());
        mesh.cp.running.ca().replace(issuer.authority(&bundle));
        // Twice each: one renewal may have been in flight when the issuer changed.
        mesh.renewed(
            &base,
            2.0,
            Duration::from_secs(15),
            &format!("step {step}: every proxy to renew twice"),
        )
        .await;
        let tally = load.tally().since(&counts);
        eprintln!(
            "trust anchor rotation: step {step}: {:?}: {tally}",
            started.elapsed()
        );
        print_identity(
            &format!("trust anchor rotation: step {step}"),
            &base,
            &mesh.identity().await,
        );
        load.load().assert_no_failures(&tally);
        // Still what this step set: nothing reloaded the state directory over it.
        let authority = mesh.cp.running.ca().authority();
        assert_eq!(
            authority.trust_bundle().len(),
            bundle.len(),
            "step {step}: the control plane's trust bundle"
        );
        assert_eq!(
            authority.trust_bundle_pem(),
            bundle_pem(&bundle),
            "step {step}: the control plane's trust bundle"
        );
        assert_eq!(
            authority.issuer_cert(),
            &issuer.der(),
            "step {step}: the control plane's issuer"
        );
    }
    // A little more load with the old root gone everywhere.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (load, elapsed) = load.stop().await;
    let tally = load.tally();
    eprintln!(
        "trust anchor rotation: {} operations in {elapsed:?}: {tally}; longest gap between \
         successes: upgrade {:?}, opaque tcp {:?}",
        tally.total(),
        load.longest_gap(Kind::Upgrade),
        load.longest_gap(Kind::Tcp)
    );
    print_identity("trust anchor rotation", &before, &mesh.identity().await);
    load.assert_no_failures(&tally);
    for kind in KINDS {
        assert!(tally.ok(kind) >= 20, "too little {kind:?} traffic: {tally}");
    }
    assert_eq!(mesh.refused_handshakes().await, 0.0);
    assert_eq!(mesh.cp.running.trust_bundle(), vec![new.der()]);

    // New handshakes work: A's certificate (now from the new root) is accepted by C, whose
    // bundle holds only the new root, and C's by A; the same for an upgrade to B.
    let Targets { http, tcp } = mesh.targets;
    tcp_once(tcp, 1).await.expect("a fresh opaque connection");
    upgrade_once(http, 1).await.expect("a fresh upgrade");
    http_once(http, 1).await.expect("an HTTP request");

    // B accepts a client certificate from the new root...
    let fresh = FilesClient::start(&mesh, new.leaf(&spiffe_id("web")), &[&new]).await;
    let reply = get_once(fresh.listener, "/new-root").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.text(), "app");
    // ...and refuses one from the old root, though the caller trusts both roots (so it gets
    // as far as presenting its certificate).
    let stale = FilesClient::start(&mesh, old.leaf(&spiffe_id("web")), &[&old, &new]).await;
    let reply = get_once(stale.listener, "/old-root").await;
    assert_eq!(
        reply.status,
        StatusCode::BAD_GATEWAY,
        "B accepted a client certificate from the dropped root: {}",
        reply.text()
    );
    eventually(WAIT, "B to count the refused handshake", || async {
        mesh.refused_handshakes().await >= 1.0
    })
    .await;
    assert!(
        mesh.app.seen_path("/old-root").is_none(),
        "the old root's certificate reached the app"
    );
    for client in [fresh, stale] {
        client.proxy.shutdown().await;
    }
    assert!(proxy_panics().is_empty(), "{:?}", proxy_panics());
}
