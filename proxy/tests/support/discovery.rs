//! A small control plane for tests: the `Identity` service (signing CSRs with a test CA from
//! [`super::pki`]) and the `Discovery` service, on one port over real mTLS, as the real
//! control plane serves them. Client certificates are optional (a proxy's first `Certify`
//! has none) and `Subscribe` refuses a caller without one.
//!
//! A test pushes view updates; the server records every `Hello` (with the caller's SPIFFE
//! ID) and every `Ack`, and can be stopped (every connection cut) and restarted on the same
//! port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tonic::codegen::tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use weft_api::proto::discovery::v1 as pb;
use weft_api::proto::discovery::v1::discovery_server::{Discovery, DiscoveryServer};
use weft_api::proto::discovery::v1::subscribe_request::Kind;
use weft_api::proto::identity::v1::identity_server::{Identity, IdentityServer};
use weft_api::proto::identity::v1::{CertifyRequest, CertifyResponse};
use weft_proxy::identity::peer_identity;

use super::pki::{spiffe, TestCa, TRUST_DOMAIN};
use super::{eventually, TempDir, WAIT};

/// The token every test proxy presents.
const TOKEN: &str = "test-token";

/// A `Hello` as the server received it.
#[derive(Debug, Clone)]
pub struct HelloSeen {
    /// The SPIFFE ID of the client certificate.
    pub caller: String,
    pub hello: pb::Hello,
}

struct State {
    ca: TestCa,
    /// Every update pushed so far, merged: what a new subscriber gets first.
    current: Mutex<Option<pb::ViewUpdate>>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<Result<pb::ViewUpdate, Status>>>>,
    hellos: Mutex<Vec<HelloSeen>>,
    acks: Mutex<Vec<pb::Ack>>,
}

pub struct TestControlPlane {
    pub addr: SocketAddr,
    state: Arc<State>,
    acceptor: TlsAcceptor,
    /// The accept loop, which owns every connection; aborted by `stop`.
    serving: Mutex<Option<tokio::task::JoinHandle<()>>>,
    _dir: TempDir,
    anchors: PathBuf,
    token: PathBuf,
}

impl TestControlPlane {
    /// Starts on 127.0.0.1 with a new CA, serving as the default control-plane identity of
    /// the test trust domain.
    pub async fn start() -> TestControlPlane {
        let ca = TestCa::new("test control plane CA");
        let serving = ca.issue(&spiffe("weft-system", "weft-control-plane"));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(ca.root_der()).unwrap();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(serving.chain_der(), serving.key_der())
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let dir = TempDir::new();
        let anchors = dir.path().join("anchors.pem");
        std::fs::write(&anchors, &ca.cert_pem).unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, TOKEN).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cp = TestControlPlane {
            addr: listener.local_addr().unwrap(),
            state: Arc::new(State {
                ca,
                current: Mutex::new(None),
                subscribers: Mutex::new(Vec::new()),
                hellos: Mutex::new(Vec::new()),
                acks: Mutex::new(Vec::new()),
            }),
            acceptor: TlsAcceptor::from(Arc::new(config)),
            serving: Mutex::new(None),
            _dir: dir,
            anchors,
            token,
        };
        cp.serve(listener);
        cp
    }

    fn serve(&self, listener: TcpListener) {
        let (state, acceptor) = (self.state.clone(), self.acceptor.clone());
        let task = tokio::spawn(async move {
            // Owned by this task: aborting it drops the set, which aborts every connection.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        if let Ok((tcp, _)) = accepted {
                            connections.spawn(serve_connection(state.clone(), acceptor.clone(), tcp));
                        }
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        *self.serving.lock().unwrap() = Some(task);
    }

    /// Cuts every connection and stops listening.
    pub async fn stop(&self) {
        let task = self.serving.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        self.state.subscribers.lock().unwrap().clear();
    }

    /// Listens again on the same port.
    pub async fn restart(&self) {
        let mut listener = None;
        eventually(WAIT, "the control plane's port to be free again", || {
            listener = std::net::TcpListener::bind(self.addr).ok();
            std::future::ready(listener.is_some())
        })
        .await;
        let listener = listener.unwrap();
        listener.set_nonblocking(true).unwrap();
        self.serve(TcpListener::from_std(listener).unwrap());
    }

    /// The flags of a proxy certified by this control plane as service account `account`
    /// of namespace `shop`, subscribing to its view as pod `pod` (none: no discovery).
    pub fn proxy_args(&self, account: &str, pod: Option<&str>) -> Vec<String> {
        let mut args: Vec<String> = [
            "--control-plane-addr",
            &self.addr.to_string(),
            "--trust-anchors",
            &self.anchors.display().to_string(),
            "--trust-domain",
            TRUST_DOMAIN,
            "--namespace",
            "shop",
            "--service-account",
            account,
            "--identity-token-file",
            &self.token.display().to_string(),
        ]
        .map(String::from)
        .into();
        if let Some(pod) = pod {
            args.extend(["--pod-name".into(), pod.into()]);
        }
        args
    }

    /// The CA that issues workload certificates (for meshed test clients in files mode).
    pub fn ca(&self) -> &TestCa {
        &self.state.ca
    }

    /// Sends `update` to every subscribed proxy, and to later subscribers merged into the
    /// current view (absent parts keep the ones pushed before).
    pub fn push(&self, update: pb::ViewUpdate) {
        {
            let mut current = self.state.current.lock().unwrap();
            let merged = match current.take() {
                None => update.clone(),
                Some(previous) => pb::ViewUpdate {
                    version: update.version.clone(),
                    inbound: update.inbound.clone().or(previous.inbound),
                    outbound: update.outbound.clone().or(previous.outbound),
                    ..Default::default()
                },
            };
            *current = Some(merged);
        }
        self.state
            .subscribers
            .lock()
            .unwrap()
            .retain(|tx| tx.send(Ok(update.clone())).is_ok());
    }

    /// Subscriptions open now (as far as the server can tell).
    pub fn subscribers(&self) -> usize {
        let mut subscribers = self.state.subscribers.lock().unwrap();
        subscribers.retain(|tx| !tx.is_closed());
        subscribers.len()
    }

    pub fn hellos(&self) -> Vec<HelloSeen> {
        self.state.hellos.lock().unwrap().clone()
    }

    pub fn acks(&self) -> Vec<pb::Ack> {
        self.state.acks.lock().unwrap().clone()
    }

    /// Waits for the proxy to acknowledge `version`, and returns the ack.
    pub async fn ack(&self, version: &str) -> pb::Ack {
        let mut found = None;
        eventually(WAIT, &format!("an ack of version {version}"), || {
            found = self.acks().into_iter().find(|a| a.version == version);
            std::future::ready(found.is_some())
        })
        .await;
        found.unwrap()
    }

    /// Waits for `n` hellos in all.
    pub async fn hello(&self, n: usize) -> HelloSeen {
        eventually(WAIT, &format!("{n} hellos"), || {
            std::future::ready(self.hellos().len() >= n)
        })
        .await;
        self.hellos()[n - 1].clone()
    }
}

/// The caller's SPIFFE ID, from the connection's client certificate.
#[derive(Clone)]
struct Caller(Option<String>);

async fn serve_connection(state: Arc<State>, acceptor: TlsAcceptor, tcp: tokio::net::TcpStream) {
    let Ok(stream) = tokio::time::timeout(WAIT, acceptor.accept(tcp)).await else {
        return;
    };
    let Ok(stream) = stream else {
        return;
    };
    let caller = Caller(
        stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(peer_identity)
            .map(|id| id.to_string()),
    );
    let identity = IdentityServer::new(Served(state.clone()));
    let discovery = DiscoveryServer::new(Served(state));
    let service =
        hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(caller.clone());
            let (mut identity, mut discovery) = (identity.clone(), discovery.clone());
            async move {
                if req.uri().path().starts_with("/weft.identity.v1.Identity/") {
                    tower::Service::call(&mut identity, req).await
                } else {
                    tower::Service::call(&mut discovery, req).await
                }
            }
        });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// The services (a local type, so the generated traits can be implemented).
struct Served(Arc<State>);

#[tonic::async_trait]
impl Identity for Served {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let request = request.into_inner();
        if request.token != TOKEN {
            return Err(Status::unauthenticated("token not valid"));
        }
        let leaf = self
            .0
            .ca
            .sign_csr(&request.csr_der)
            .map_err(Status::invalid_argument)?;
        let not_after = std::time::SystemTime::now() + Duration::from_secs(3600);
        Ok(Response::new(CertifyResponse {
            chain_der: vec![leaf],
            trust_bundle_der: vec![self.0.ca.root_der().to_vec()],
            not_after_unix_ms: not_after
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64,
        }))
    }
}

#[tonic::async_trait]
impl Discovery for Served {
    type SubscribeStream = UnboundedReceiverStream<Result<pb::ViewUpdate, Status>>;

    async fn subscribe(
        &self,
        request: Request<Streaming<pb::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = request
            .extensions()
            .get::<Caller>()
            .and_then(|c| c.0.clone());
        let Some(caller) = caller else {
            return Err(Status::unauthenticated("no client certificate"));
        };
        let mut requests = request.into_inner();
        let Some(pb::SubscribeRequest {
            kind: Some(Kind::Hello(hello)),
        }) = requests.message().await?
        else {
            return Err(Status::invalid_argument("expected a Hello first"));
        };
        let state = &self.0;
        state
            .hellos
            .lock()
            .unwrap()
            .push(HelloSeen { caller, hello });
        let (tx, rx) = mpsc::unbounded_channel();
        if let Some(current) = state.current.lock().unwrap().clone() {
            let _ = tx.send(Ok(current));
        }
        state.subscribers.lock().unwrap().push(tx);
        let state = state.clone();
        tokio::spawn(async move {
            while let Ok(Some(request)) = requests.message().await {
                if let Some(Kind::Ack(ack)) = request.kind {
                    state.acks.lock().unwrap().push(ack);
                }
            }
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}

// ---------------------------------------------------------------------------------------------
// Views
// ---------------------------------------------------------------------------------------------

/// An update with both parts: this inbound part and no services.
pub fn view(version: &str, inbound: pb::Inbound) -> pb::ViewUpdate {
    pb::ViewUpdate {
        version: version.into(),
        inbound: Some(inbound),
        outbound: Some(pb::Outbound::default()),
        ..Default::default()
    }
}

/// The inbound part of pod `orders-1` with these policies, default ALLOW, mTLS unspecified
/// (the config file decides).
pub fn inbound(policies: Vec<pb::AuthorizationPolicy>) -> pb::Inbound {
    pb::Inbound {
        namespace: "shop".into(),
        pod: "orders-1".into(),
        default_policy: pb::DefaultPolicy::Allow as i32,
        policies,
        ..Default::default()
    }
}

/// Policy `shop/<name>` with one rule: from these principals (none: anyone) to these paths
/// (none: any).
pub fn policy(
    name: &str,
    action: pb::Action,
    principals: &[&str],
    paths: &[&str],
) -> pb::AuthorizationPolicy {
    let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    pb::AuthorizationPolicy {
        namespace: "shop".into(),
        name: name.into(),
        action: action as i32,
        dry_run: false,
        rules: vec![pb::Rule {
            from: if principals.is_empty() {
                vec![]
            } else {
                vec![pb::Source {
                    principals: strings(principals),
                    ..Default::default()
                }]
            },
            to: if paths.is_empty() {
                vec![]
            } else {
                vec![pb::Operation {
                    paths: strings(paths),
                    ..Default::default()
                }]
            },
            when: vec![],
        }],
    }
}
