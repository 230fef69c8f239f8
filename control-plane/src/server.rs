//! Starting the control plane: load the CA, set up authentication, issue our own serving
//! certificate, and serve gRPC over TLS. TCP connections are accepted here and each TLS
//! handshake runs on its own task with a deadline, so a client that sends garbage or nothing
//! costs one task and never stops the server; completed TLS streams are handed to tonic.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::transport::Channel;
use weft_api::proto::identity::v1::identity_client::IdentityClient;
use weft_api::SpiffeId;

use crate::auth::{Authenticator, TokenFile, TokenReviewAuthenticator};
use crate::ca::{self, Authority, Ca, CaError};
use crate::certify::CertifyService;
use crate::discovery::{DiscoveryMetrics, DiscoveryService, Registry, SubscriberInfo};
use crate::index::{self, Index, MeshSettings, Views};
use crate::publish::trust_anchors::{self, PublishMetrics, TrustAnchorPublisher};
use crate::sources;
use crate::state::{Problem, ProblemBoard, State};
use crate::tls::{self, ServingCert};
use crate::watch::watch_files;

/// How long a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Running::shutdown`] lets in-flight RPCs finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Where the issuer and trust bundle come from.
pub enum CaSource {
    /// Local mode: generated once in this directory, then reused (see [`ca::local`]).
    StateDir(PathBuf),
    /// PEM files, e.g. a mounted Kubernetes Secret. Reloaded when they change.
    Files {
        issuer_cert: PathBuf,
        issuer_key: PathBuf,
        trust_bundle: PathBuf,
    },
    /// Already loaded (tests).
    Authority(Box<Authority>),
}

/// How proxies' tokens are checked.
pub enum AuthSource {
    /// Local mode: a YAML token file, reloaded when it changes.
    TokenFile(PathBuf),
    /// Kubernetes: TokenReview with this audience, via the in-cluster client config.
    Kubernetes { audience: String },
    /// Anything else (tests).
    Custom(Arc<dyn Authenticator>),
}

/// Where cluster state (Services, Pods, policies) comes from.
pub enum Source {
    /// Local mode and GitOps: a directory of manifests, watched for changes.
    Manifests(PathBuf),
    /// The Kubernetes API, via the in-cluster client config. The control plane also keeps
    /// the trust anchors ConfigMap in every meshed namespace ([`trust_anchors`]).
    Kubernetes,
    /// An already-built client (tests against a recorded API server); as `Kubernetes`.
    KubernetesClient(kube::Client),
}

/// Everything the control plane needs to start.
pub struct Config {
    pub grpc_addr: SocketAddr,
    pub trust_domain: String,
    /// The control plane's own namespace and service account: its serving certificate names
    /// `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
    pub namespace: String,
    pub service_account: String,
    pub cert_lifetime: Duration,
    pub ca: CaSource,
    pub auth: AuthSource,
    /// Discovery and policy: `None` serves identity only.
    pub source: Option<Source>,
    pub mesh: MeshSettings,
    /// The admin server (/live, /ready, /metrics, /debug/problems, /debug/proxies).
    pub admin_addr: Option<SocketAddr>,
}

pub const DEFAULT_GRPC_ADDR: &str = "0.0.0.0:15012";
/// Istio's control-plane monitoring port.
pub const DEFAULT_ADMIN_ADDR: &str = "0.0.0.0:15014";
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
pub const DEFAULT_NAMESPACE: &str = "weft-system";
pub const DEFAULT_SERVICE_ACCOUNT: &str = "weft-control-plane";

impl Config {
    /// Local mode on an ephemeral 127.0.0.1 port with every other setting at its default:
    /// what an in-process test wants.
    pub fn local(state_dir: impl Into<PathBuf>, token_file: impl Into<PathBuf>) -> Self {
        Config {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            trust_domain: DEFAULT_TRUST_DOMAIN.into(),
            namespace: DEFAULT_NAMESPACE.into(),
            service_account: DEFAULT_SERVICE_ACCOUNT.into(),
            cert_lifetime: ca::DEFAULT_LIFETIME,
            ca: CaSource::StateDir(state_dir.into()),
            auth: AuthSource::TokenFile(token_file.into()),
            source: None,
            mesh: MeshSettings::default(),
            admin_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        }
    }

    /// Local mode serving the manifests in `dir` too.
    pub fn with_manifests(mut self, dir: impl Into<PathBuf>) -> Self {
        self.source = Some(Source::Manifests(dir.into()));
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid trust domain or control-plane identity: {0}")]
    Identity(#[from] weft_api::IdentityError),
    #[error("the certificate lifetime must be at least 1s (got {0:?})")]
    Lifetime(Duration),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    TokenFile(#[from] crate::auth::TokenFileError),
    #[error("cannot create the Kubernetes client: {0}")]
    Kubernetes(#[from] kube::Error),
    #[error(transparent)]
    Watch(#[from] crate::watch::WatchError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("manifest directory: {0}")]
    Manifests(crate::watch::WatchError),
}

/// A running control plane. Dropping it stops the server (without waiting);
/// [`Running::shutdown`] stops it and waits for in-flight RPCs.
pub struct Running {
    /// Where gRPC is served (the real port when the configured one was 0).
    pub addr: SocketAddr,
    /// The trust bundle (PEM) at start: what proxies must be given as trust anchors.
    pub bundle_pem: String,
    /// The SPIFFE ID in the control plane's serving certificate; clients must check it.
    pub server_identity: SpiffeId,
    /// Where the admin server listens, if it was asked for.
    pub admin_addr: Option<SocketAddr>,
    ca: Arc<Ca>,
    registry: Arc<Registry>,
    problems: Arc<ProblemBoard>,
    views: watch::Receiver<Option<Arc<Views>>>,
    _kubernetes: Option<sources::kubernetes::KubernetesSource>,
    _trust_anchors: Option<TrustAnchorPublisher>,
    stop: watch::Sender<bool>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    _watchers: Vec<notify::RecommendedWatcher>,
}

impl Running {
    /// The proxies subscribed now, with what each was sent and acknowledged.
    pub fn subscribers(&self) -> Vec<SubscriberInfo> {
        self.registry.subscribers()
    }

    /// The invalid input skipped now.
    pub fn problems(&self) -> Vec<Problem> {
        self.problems.all()
    }

    /// The latest views (`None` until the source's first state).
    pub fn views(&self) -> Option<Arc<Views>> {
        self.views.borrow().clone()
    }

    /// The CA, e.g. to [`Ca::replace`] its issuer in a rotation test.
    pub fn ca(&self) -> &Arc<Ca> {
        &self.ca
    }

    /// The trust bundle now (it changes on rotation).
    pub fn trust_bundle(&self) -> Vec<CertificateDer<'static>> {
        self.ca.authority().trust_bundle().to_vec()
    }

    pub fn trust_bundle_pem(&self) -> String {
        self.ca.authority().trust_bundle_pem()
    }

    /// A verified gRPC client (see [`crate::client::connect`]).
    pub async fn client(&self) -> anyhow::Result<IdentityClient<Channel>> {
        crate::client::connect(
            self.addr,
            &self.trust_bundle(),
            self.server_identity.clone(),
        )
        .await
    }

    /// Stops accepting, lets in-flight RPCs finish (up to [`SHUTDOWN_GRACE`]), and returns.
    pub async fn shutdown(self) -> Result<(), tonic::transport::Error> {
        let _ = self.stop.send(true);
        let mut server = self.server;
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
            Ok(Ok(result)) => result,
            Ok(Err(_panicked)) => Ok(()),
            Err(_) => {
                tracing::warn!("in-flight RPCs outlasted the shutdown grace; cutting them");
                server.abort();
                Ok(())
            }
        }
    }
}

/// Starts the control plane. Returns once it is listening.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let server_identity = SpiffeId::for_service_account(
        &config.trust_domain,
        &config.namespace,
        &config.service_account,
    )?;
    if config.cert_lifetime < Duration::from_secs(1) {
        return Err(StartError::Lifetime(config.cert_lifetime));
    }
    let mut watchers = Vec::new();
    let reload_paths = match &config.ca {
        CaSource::StateDir(dir) => Some([
            dir.join(ca::local::CERT_FILE),
            dir.join(ca::local::KEY_FILE),
            dir.join(ca::local::BUNDLE_FILE),
        ]),
        CaSource::Files {
            issuer_cert,
            issuer_key,
            trust_bundle,
        } => Some([
            issuer_cert.clone(),
            issuer_key.clone(),
            trust_bundle.clone(),
        ]),
        CaSource::Authority(_) => None,
    };
    let authority = match config.ca {
        CaSource::StateDir(dir) => {
            let authority = ca::local::load_or_create(&dir, &config.trust_domain)?;
            tracing::info!(
                bundle = %ca::local::bundle_path(&dir).display(),
                "local CA ready; give proxies this trust bundle"
            );
            authority
        }
        CaSource::Files {
            issuer_cert,
            issuer_key,
            trust_bundle,
        } => Authority::load(&issuer_cert, &issuer_key, &trust_bundle)?,
        CaSource::Authority(authority) => *authority,
    };
    let ca = Arc::new(Ca::new(authority, config.cert_lifetime));
    if let Some(paths) = reload_paths {
        watchers.push(watch_ca_files(paths, ca.clone())?);
    }

    let auth: Arc<dyn Authenticator> = match config.auth {
        AuthSource::TokenFile(path) => Arc::new(TokenFile::watch(&path)?),
        AuthSource::Kubernetes { audience } => {
            Arc::new(TokenReviewAuthenticator::from_environment(audience).await?)
        }
        AuthSource::Custom(auth) => auth,
    };

    // No prefix: `with_prefix("")` would name every family `_weft_cp_*`.
    let mut metrics = prometheus_client::registry::Registry::default();
    metrics.register_collector(Box::new(ca::metrics::CaCollector::new(ca.clone())));
    let problems = Arc::new(ProblemBoard::default());
    metrics.register(
        "weft_cp_invalid_objects",
        "Objects and files skipped as invalid right now (details: /debug/problems)",
        problems.gauge(),
    );
    let registry = Arc::new(Registry::new(DiscoveryMetrics::register(&mut metrics)));
    let (views_tx, views) = watch::channel(None);
    let has_source = config.source.is_some();
    let mut kubernetes = None;
    let mut publisher = None;
    if let Some(source) = config.source {
        let (states_tx, states) = watch::channel(Arc::new(State::default()));
        let kubernetes_source = match source {
            Source::Manifests(dir) => {
                let watcher = sources::manifests::run(dir, states_tx, problems.clone())
                    .await
                    .map_err(StartError::Manifests)?;
                watchers.push(watcher);
                None
            }
            Source::Kubernetes => Some((kube::Client::try_default().await?, states_tx)),
            Source::KubernetesClient(client) => Some((client, states_tx)),
        };
        if let Some((client, states_tx)) = kubernetes_source {
            // Before the source runs, so its first state is a change to the publisher too.
            publisher = Some(trust_anchors::run(
                client.clone(),
                states.clone(),
                ca.subscribe(),
                problems.clone(),
                PublishMetrics::register(&mut metrics),
            ));
            kubernetes = Some(sources::kubernetes::run(client, states_tx, problems.clone()).await);
        }
        tokio::spawn(index::run(
            Index::new(config.mesh.clone()),
            states,
            views_tx,
            problems.clone(),
        ));
    }

    let serving = Arc::new(ServingCert::issue(&ca, &server_identity)?);
    let bundle = tls::client_bundle(&ca)?;
    tokio::spawn(tls::follow_bundle(bundle.clone(), ca.clone()));
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(serving.clone(), bundle)));
    let listener = TcpListener::bind(config.grpc_addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.grpc_addr,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.grpc_addr,
        source,
    })?;

    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(tls::renew_until(
        serving,
        ca.clone(),
        server_identity.clone(),
        stop_rx.clone(),
    ));
    let (conns_tx, conns_rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, acceptor, conns_tx, stop_rx.clone()));
    let certify = CertifyService::new(ca.clone(), auth, config.trust_domain.clone());
    let discovery = DiscoveryService::new(
        views.clone(),
        registry.clone(),
        config.trust_domain.clone(),
        stop_rx.clone(),
    );
    let admin_addr = match config.admin_addr {
        Some(addr) => Some(
            crate::admin::spawn(
                addr,
                crate::admin::Admin {
                    metrics: Arc::new(metrics),
                    problems: problems.clone(),
                    registry: registry.clone(),
                    views: views.clone(),
                    needs_views: has_source,
                    ca: ca.clone(),
                },
                stop_rx.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let mut shutdown = stop_rx;
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(certify.into_server())
            .add_service(discovery.into_server())
            .serve_with_incoming_shutdown(ReceiverStream::new(conns_rx), async move {
                stopped(&mut shutdown).await
            }),
    );
    tracing::info!(%addr, identity = %server_identity, "control plane serving gRPC over TLS");
    Ok(Running {
        addr,
        bundle_pem: ca.authority().trust_bundle_pem(),
        server_identity,
        admin_addr,
        ca,
        registry,
        problems,
        views,
        _kubernetes: kubernetes,
        _trust_anchors: publisher,
        stop,
        server,
        _watchers: watchers,
    })
}

/// Reloads the issuer and bundle when their files change; a version that fails to load or
/// check is reported and the CA keeps the last good one.
fn watch_ca_files(
    [cert, key, bundle]: [PathBuf; 3],
    ca: Arc<Ca>,
) -> Result<notify::RecommendedWatcher, StartError> {
    let paths = [cert.as_path(), key.as_path(), bundle.as_path()];
    let watcher = watch_files(&paths, {
        let (cert, key, bundle) = (cert.clone(), key.clone(), bundle.clone());
        move || match Authority::load(&cert, &key, &bundle) {
            Ok(new) => {
                let current = ca.authority();
                if new.issuer_cert() != current.issuer_cert()
                    || new.trust_bundle() != current.trust_bundle()
                {
                    ca.replace(new);
                }
            }
            Err(error) => {
                tracing::error!(%error, "reloading the CA files failed; keeping the current issuer and trust bundle")
            }
        }
    })?;
    Ok(watcher)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    conns: mpsc::Sender<Result<TlsConn, io::Error>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let conns = conns.clone();
        tokio::spawn(async move {
            let local = tcp.local_addr().ok();
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let identity = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(weft_tls::peer_identity);
                    let info = PeerInfo {
                        local_addr: local,
                        remote_addr: Some(peer),
                        identity,
                    };
                    let _ = conns.send(Ok(TlsConn { tls, info })).await;
                }
                Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// Resolves once `stop` says true or its sender is gone.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// What a handler knows about its caller: the TCP addresses and, when the client presented
/// a workload certificate, its SPIFFE ID. Tonic puts it in every request's extensions.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub local_addr: Option<SocketAddr>,
    pub remote_addr: Option<SocketAddr>,
    pub identity: Option<SpiffeId>,
}

/// A server-side TLS stream with its peer, as tonic wants it.
struct TlsConn {
    tls: TlsStream<TcpStream>,
    info: PeerInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }
}
