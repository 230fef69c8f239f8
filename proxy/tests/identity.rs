//! The identity module through its public entry point, `identity::start`, as `Proxy::start`
//! calls it: files mode with reloads; control-plane mode against an in-test `Identity` gRPC
//! server over TLS (127.0.0.1) that signs with a test CA, and against the real control plane
//! started in-process. Real time throughout, every wait bounded.

#[path = "../src/identity/testca.rs"]
mod testca;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::{Request, Response, Status};
use weft_api::proto::identity::v1::identity_server::{Identity, IdentityServer};
use weft_api::proto::identity::v1::{CertifyRequest, CertifyResponse};
use weft_api::SpiffeId;
use weft_proxy::bootstrap::IdentityArgs;
use weft_proxy::identity::{self, peer_identity, IdentityError, Tls};

use testca::{Leaf, TestCa};

const WAIT: Duration = Duration::from_secs(10);
const CONTROL_PLANE_ID: &str = "spiffe://cluster.local/ns/weft-system/sa/weft-control-plane";

fn id(name: &str) -> SpiffeId {
    SpiffeId::for_service_account("cluster.local", "shop", name).unwrap()
}

/// Polls `check` every 20 ms until it holds, failing with `what` after `limit`.
async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("weft-identity-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    /// Replaces `name` atomically (write aside, rename), as Secret mounts and editors do.
    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        let aside = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&aside, contents).unwrap();
        std::fs::rename(&aside, &path).unwrap();
        path
    }
}

impl TempDir {
    /// Publishes `cert.pem` and `key.pem` together, the way the kubelet updates a Secret
    /// volume: the files are links through `..data`, which one rename points at a new
    /// directory.
    fn publish(&self, leaf: &Leaf) {
        self.publish_raw(&leaf.chain_pem(), &leaf.key_pem());
    }

    fn publish_raw(&self, cert: &str, key: &str) {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let version = format!(
            "..v{}",
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        std::fs::create_dir(self.0.join(&version)).unwrap();
        std::fs::write(self.0.join(&version).join("cert.pem"), cert).unwrap();
        std::fs::write(self.0.join(&version).join("key.pem"), key).unwrap();
        let tmp = self.0.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.0.join("..data")).unwrap();
        for name in ["cert.pem", "key.pem"] {
            let link = self.0.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
            }
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn metric(registry: &Registry, line_prefix: &str) -> Option<f64> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(line_prefix))
        .map(|value| value.trim().parse().unwrap())
}

fn renewals(registry: &Registry, result: &str) -> f64 {
    metric(
        registry,
        &format!("weft_identity_renewals_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Handshakes `client` (expecting `expected`) with `server`; returns the certificate the
/// server presented and the identity the server read from the client.
async fn handshake(
    server: &Tls,
    client: &Tls,
    expected: &SpiffeId,
) -> (CertificateDer<'static>, SpiffeId) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server.server_config());
    let connector = TlsConnector::from(client.client_config(expected, &[b"h2"]));
    let accept = async {
        let (tcp, _) = listener.accept().await.unwrap();
        acceptor.accept(tcp).await
    };
    let connect = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        connector
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
    };
    let (s, c) = tokio::time::timeout(WAIT, async { tokio::join!(accept, connect) })
        .await
        .expect("handshake within the bound");
    let (s, c) = (s.expect("server accepts"), c.expect("client connects"));
    let caller = peer_identity(s.get_ref().1.peer_certificates().unwrap()).unwrap();
    (
        c.get_ref().1.peer_certificates().unwrap()[0].clone(),
        caller,
    )
}

// ---------------------------------------------------------------------------------------------
// Files mode
// ---------------------------------------------------------------------------------------------

fn files_args(dir: &TempDir) -> IdentityArgs {
    IdentityArgs {
        identity_cert: Some(dir.0.join("cert.pem")),
        identity_key: Some(dir.0.join("key.pem")),
        identity_trust_bundle: Some(dir.0.join("bundle.pem")),
        namespace: Some("shop".into()),
        service_account: Some("orders".into()),
        ..IdentityArgs::default()
    }
}

/// Key first, then certificate, as two renames: in between, the files hold a mismatched
/// pair, which the reloader refuses (keeping what it has) until the certificate arrives.
fn write_leaf(dir: &TempDir, leaf: &Leaf) {
    dir.write("key.pem", &leaf.key_pem());
    dir.write("cert.pem", &leaf.chain_pem());
}

#[tokio::test]
async fn files_mode_loads_reloads_and_keeps_the_last_good_set() {
    let ca = TestCa::new("mesh root");
    let dir = TempDir::new();
    dir.write("bundle.pem", &ca.root_pem());
    let first = ca.leaf(&[&id("orders").to_string()]);
    dir.publish(&first);

    let mut registry = Registry::default();
    let tls = identity::start(&files_args(&dir), &mut registry)
        .await
        .expect("files load")
        .expect("identity enabled");
    assert!(tls.is_ready());
    assert_eq!(tls.local_identity(), Some(id("orders")));
    assert_eq!(renewals(&registry, "ok"), 1.0);
    let expiry = metric(&registry, "weft_identity_cert_expiration_timestamp_seconds").unwrap();
    let not_after = tls.not_after().unwrap();
    assert_eq!(
        expiry as u64,
        not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    );

    let web = ca.leaf(&[&id("web").to_string()]);
    let client = Tls::from_der(web.chain.clone(), web.key(), vec![ca.root.clone()]).unwrap();
    let (served, caller) = handshake(&tls, &client, &id("orders")).await;
    assert_eq!((served, caller), (first.chain[0].clone(), id("web")));

    // New files: the next handshake uses them.
    let second = ca.leaf(&[&id("orders").to_string()]);
    dir.publish(&second);
    eventually(WAIT, "the new certificate is loaded", || {
        renewals(&registry, "ok") >= 2.0
    })
    .await;
    let (served, _) = handshake(&tls, &client, &id("orders")).await;
    assert_eq!(served, second.chain[0]);

    // Garbage: reported, counted, and the last good certificate stays.
    let errors = renewals(&registry, "error");
    dir.publish_raw(
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
        &second.key_pem(),
    );
    eventually(WAIT, "the bad file is counted", || {
        renewals(&registry, "error") > errors
    })
    .await;
    let (served, _) = handshake(&tls, &client, &id("orders")).await;
    assert_eq!(served, second.chain[0], "the last good certificate stays");

    // So is an expired one: it never replaces a valid certificate.
    let errors = renewals(&registry, "error");
    let now = SystemTime::now();
    let expired = ca.leaf_valid(
        &[&id("orders").to_string()],
        now - testca::hours(2),
        now - testca::hours(1),
    );
    dir.publish(&expired);
    eventually(WAIT, "the expired certificate is counted", || {
        renewals(&registry, "error") > errors
    })
    .await;
    assert!(tls.is_ready());
    let (served, _) = handshake(&tls, &client, &id("orders")).await;
    assert_eq!(served, second.chain[0]);

    // A certificate for another identity than the flags name is refused too.
    let errors = renewals(&registry, "error");
    dir.publish(&ca.leaf(&[&id("payments").to_string()]));
    eventually(WAIT, "the wrong identity is counted", || {
        renewals(&registry, "error") > errors
    })
    .await;
    assert_eq!(tls.local_identity(), Some(id("orders")));
    let (served, _) = handshake(&tls, &client, &id("orders")).await;
    assert_eq!(served, second.chain[0]);
}

#[tokio::test]
async fn files_mode_starts_not_ready_on_an_expired_certificate_and_recovers() {
    // cert-manager late with a renewal while the pod restarts: come up not ready rather than
    // crash, and pick up the renewed file.
    let ca = TestCa::new("mesh root");
    let dir = TempDir::new();
    dir.write("bundle.pem", &ca.root_pem());
    let now = SystemTime::now();
    write_leaf(
        &dir,
        &ca.leaf_valid(
            &[&id("orders").to_string()],
            now - testca::hours(2),
            now - testca::hours(1),
        ),
    );
    let mut registry = Registry::default();
    let tls = identity::start(&files_args(&dir), &mut registry)
        .await
        .expect("an expired but sound certificate does not stop the proxy")
        .unwrap();
    assert!(!tls.is_ready());
    assert_eq!(tls.local_identity(), Some(id("orders")));

    let renewed = ca.leaf(&[&id("orders").to_string()]);
    write_leaf(&dir, &renewed);
    tokio::time::timeout(WAIT, tls.ready())
        .await
        .expect("ready once the renewed files arrive");
    let web = ca.leaf(&[&id("web").to_string()]);
    let client = Tls::from_der(web.chain.clone(), web.key(), vec![ca.root.clone()]).unwrap();
    let (served, _) = handshake(&tls, &client, &id("orders")).await;
    assert_eq!(served, renewed.chain[0]);
}

#[tokio::test]
async fn files_mode_refuses_to_start_on_unusable_files() {
    let ca = TestCa::new("mesh root");
    let other = TestCa::new("other root");
    let dir = TempDir::new();
    let mut registry = Registry::default();

    // Missing.
    let error = identity::start(&files_args(&dir), &mut registry)
        .await
        .unwrap_err();
    assert!(matches!(error, IdentityError::Files(_)), "{error}");
    assert!(error.to_string().contains("cert.pem"), "{error}");

    // Not chaining to the bundle.
    dir.write("bundle.pem", &other.root_pem());
    write_leaf(&dir, &ca.leaf(&[&id("orders").to_string()]));
    let error = identity::start(&files_args(&dir), &mut Registry::default())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("does not verify"), "{error}");
}

// ---------------------------------------------------------------------------------------------
// Control-plane mode
// ---------------------------------------------------------------------------------------------

/// An `Identity` service signing with a test CA, as the control plane does.
struct FakeControlPlane {
    ca: TestCa,
    token: Mutex<String>,
    lifetime: Duration,
    /// Every request: (identity, token).
    seen: Mutex<Vec<(String, String)>>,
}

/// The service as tonic serves it (a local type, so the generated trait can be implemented).
struct Served(Arc<FakeControlPlane>);

#[tonic::async_trait]
impl Identity for Served {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let request = request.into_inner();
        let this = &self.0;
        this.seen
            .lock()
            .unwrap()
            .push((request.identity.clone(), request.token.clone()));
        if request.token != *this.token.lock().unwrap() {
            return Err(Status::unauthenticated("token not valid"));
        }
        let chain = this
            .ca
            .sign_csr(&request.csr_der, this.lifetime)
            .map_err(Status::invalid_argument)?;
        if peer_identity(&chain).map(|id| id.to_string()) != Some(request.identity.clone()) {
            return Err(Status::invalid_argument("the CSR names another identity"));
        }
        let not_after = SystemTime::now() + this.lifetime;
        Ok(Response::new(CertifyResponse {
            chain_der: chain.into_iter().map(|c| c.to_vec()).collect(),
            trust_bundle_der: vec![this.ca.root.to_vec()],
            not_after_unix_ms: not_after
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64,
        }))
    }
}

/// Serves `service` over TLS (ALPN h2) on 127.0.0.1 with a certificate naming `name`.
async fn serve_control_plane(
    service: Arc<FakeControlPlane>,
    cert_ca: &TestCa,
    name: &str,
) -> SocketAddr {
    let leaf = cert_ca.leaf(&[name]);
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(leaf.chain.clone(), leaf.key())
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = IdentityServer::new(Served(service));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let server = server.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let mut server = server.clone();
                        async move { tower::Service::call(&mut server, req).await }
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

struct ControlPlaneSetup {
    fake: Arc<FakeControlPlane>,
    dir: TempDir,
    args: IdentityArgs,
}

async fn control_plane(
    lifetime: Duration,
    served_as: &str,
    anchors: Option<&TestCa>,
) -> ControlPlaneSetup {
    let fake = Arc::new(FakeControlPlane {
        ca: TestCa::new("control plane CA"),
        token: Mutex::new("token-1".into()),
        lifetime,
        seen: Mutex::new(Vec::new()),
    });
    let addr = serve_control_plane(fake.clone(), &fake.ca, served_as).await;
    let dir = TempDir::new();
    let token_file = dir.write("token", "token-1\n");
    let anchors = dir.write("anchors.pem", &anchors.unwrap_or(&fake.ca).root_pem());
    let args = IdentityArgs {
        control_plane_addr: Some(addr.to_string()),
        namespace: Some("shop".into()),
        service_account: Some("web".into()),
        trust_anchors: Some(anchors),
        identity_token_file: token_file,
        ..IdentityArgs::default()
    };
    ControlPlaneSetup { fake, dir, args }
}

fn requests(fake: &FakeControlPlane) -> Vec<(String, String)> {
    fake.seen.lock().unwrap().clone()
}

#[tokio::test]
async fn control_plane_mode_certifies_renews_with_a_fresh_token_and_serves_mtls() {
    // A 3 s certificate (back-dated a minute by the CA, as real CAs do for clock skew) is
    // renewed a second after issue, the shortest renewal delay.
    let setup = control_plane(Duration::from_secs(3), CONTROL_PLANE_ID, None).await;
    let mut registry = Registry::default();
    let tls = identity::start(&setup.args, &mut registry)
        .await
        .expect("starts")
        .expect("identity enabled");
    tokio::time::timeout(WAIT, tls.ready())
        .await
        .expect("a certificate within the bound");
    assert_eq!(tls.local_identity(), Some(id("web")));
    assert_eq!(
        requests(&setup.fake),
        vec![(id("web").to_string(), "token-1".into())]
    );
    assert_eq!(renewals(&registry, "ok"), 1.0);
    let expiry = metric(&registry, "weft_identity_cert_expiration_timestamp_seconds").unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        expiry > now && expiry < now + 4.0,
        "expiry {expiry} vs now {now}"
    );

    // mTLS with a peer of the same mesh works with the issued certificate.
    let peer_leaf = setup.fake.ca.leaf(&[&id("orders").to_string()]);
    let peer = Tls::from_der(
        peer_leaf.chain.clone(),
        peer_leaf.key(),
        vec![setup.fake.ca.root.clone()],
    )
    .unwrap();
    let (_, caller) = handshake(&peer, &tls, &id("orders")).await;
    assert_eq!(caller, id("web"));
    let (served_before, _) = handshake(&tls, &peer, &id("web")).await;

    // The kubelet rotates the token; the renewal reads the new one.
    *setup.fake.token.lock().unwrap() = "token-2".into();
    setup.dir.write("token", "token-2");
    eventually(WAIT, "a renewal with the new token", || {
        requests(&setup.fake)
            .iter()
            .any(|(_, token)| token == "token-2")
    })
    .await;
    eventually(WAIT, "the renewed certificate is installed", || {
        renewals(&registry, "ok") >= 2.0
    })
    .await;
    let (served_after, _) = handshake(&tls, &peer, &id("web")).await;
    assert_ne!(
        served_before, served_after,
        "the next handshake uses the renewed certificate"
    );
    assert!(requests(&setup.fake)
        .iter()
        .all(|(identity, _)| *identity == id("web").to_string()));
}

#[tokio::test]
async fn control_plane_refusals_leave_the_proxy_not_ready() {
    // A refused token.
    let setup = control_plane(Duration::from_secs(3600), CONTROL_PLANE_ID, None).await;
    setup.dir.write("token", "stolen");
    let mut registry = Registry::default();
    let tls = identity::start(&setup.args, &mut registry)
        .await
        .unwrap()
        .unwrap();
    eventually(WAIT, "the refusal is counted", || {
        renewals(&registry, "error") >= 1.0
    })
    .await;
    assert!(!tls.is_ready());
    assert_eq!(requests(&setup.fake).len(), 1);

    // A control plane presenting another SPIFFE ID is never sent the token.
    let setup = control_plane(
        Duration::from_secs(3600),
        "spiffe://cluster.local/ns/shop/sa/impostor",
        None,
    )
    .await;
    let mut registry = Registry::default();
    let tls = identity::start(&setup.args, &mut registry)
        .await
        .unwrap()
        .unwrap();
    eventually(WAIT, "the failed handshake is counted", || {
        renewals(&registry, "error") >= 1.0
    })
    .await;
    assert!(!tls.is_ready());
    assert!(
        requests(&setup.fake).is_empty(),
        "the token went to an impostor"
    );

    // Nor is one whose certificate does not chain to the trust anchors.
    let stranger = TestCa::new("stranger");
    let setup = control_plane(Duration::from_secs(3600), CONTROL_PLANE_ID, Some(&stranger)).await;
    let mut registry = Registry::default();
    let tls = identity::start(&setup.args, &mut registry)
        .await
        .unwrap()
        .unwrap();
    eventually(WAIT, "the failed handshake is counted", || {
        renewals(&registry, "error") >= 1.0
    })
    .await;
    assert!(!tls.is_ready());
    assert!(
        requests(&setup.fake).is_empty(),
        "the token went to an unverified server"
    );
}

#[tokio::test]
async fn control_plane_mode_needs_readable_trust_anchors() {
    let setup = control_plane(Duration::from_secs(3600), CONTROL_PLANE_ID, None).await;
    let mut args = setup.args.clone();
    args.trust_anchors = Some(setup.dir.0.join("missing.pem"));
    let error = identity::start(&args, &mut Registry::default())
        .await
        .unwrap_err();
    assert!(matches!(error, IdentityError::TrustAnchors(_)), "{error}");
    assert!(error.to_string().contains("missing.pem"), "{error}");
}

#[tokio::test]
async fn no_identity_flags_means_no_identity() {
    let mut registry = Registry::default();
    assert!(identity::start(&IdentityArgs::default(), &mut registry)
        .await
        .unwrap()
        .is_none());
    assert_eq!(metric(&registry, "weft_identity_renewals_total"), None);
}

// ---------------------------------------------------------------------------------------------
// Against the real control plane
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn certifies_against_the_real_control_plane_and_two_proxies_talk_mtls() {
    let dir = TempDir::new();
    let tokens = dir.write(
        "tokens.yaml",
        "tokens:\n  - {token: web-token, namespace: shop, serviceAccount: web}\n  \
         - {token: orders-token, namespace: shop, serviceAccount: orders}\n",
    );
    let mut config = weft_control_plane::Config::local(dir.0.join("state"), tokens);
    config.cert_lifetime = Duration::from_secs(2);
    let cp = weft_control_plane::start(config)
        .await
        .expect("control plane starts");
    assert_eq!(cp.server_identity.as_str(), CONTROL_PLANE_ID);
    let anchors = dir.write("anchors.pem", &cp.bundle_pem);
    let args = |account: &str, token: &str| IdentityArgs {
        control_plane_addr: Some(cp.addr.to_string()),
        namespace: Some("shop".into()),
        service_account: Some(account.into()),
        trust_anchors: Some(anchors.clone()),
        identity_token_file: dir.write(&format!("{account}-{token}"), token),
        ..IdentityArgs::default()
    };

    let mut web_registry = Registry::default();
    let web = identity::start(&args("web", "web-token"), &mut web_registry)
        .await
        .unwrap()
        .unwrap();
    let orders = identity::start(&args("orders", "orders-token"), &mut Registry::default())
        .await
        .unwrap()
        .unwrap();
    for tls in [&web, &orders] {
        tokio::time::timeout(WAIT, tls.ready())
            .await
            .expect("certified within the bound");
    }
    assert_eq!(web.local_identity(), Some(id("web")));
    let (_, caller) = handshake(&orders, &web, &id("orders")).await;
    assert_eq!(caller, id("web"));

    // 2 s certificates: renewed (and still talking) within the bound.
    let first = web.not_after();
    eventually(WAIT, "a renewal", || {
        renewals(&web_registry, "ok") >= 2.0 && web.not_after() != first
    })
    .await;
    let (_, caller) = handshake(&orders, &web, &id("orders")).await;
    assert_eq!(caller, id("web"));

    // A token for one account cannot get another's identity.
    let mut registry = Registry::default();
    let thief = identity::start(&args("web", "orders-token"), &mut registry)
        .await
        .unwrap()
        .unwrap();
    eventually(WAIT, "the refusal is counted", || {
        renewals(&registry, "error") >= 1.0
    })
    .await;
    assert!(!thief.is_ready());
}
