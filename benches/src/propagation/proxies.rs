//! Simulated proxies: one task per pod, each with its own TCP + mTLS connection and its own
//! `Discovery.Subscribe` stream, exactly as a sidecar connects (`connect_discovery` with the
//! workload certificate of the pod's service account) and, like it, taking the outbound part
//! as per-Service full syncs and deltas (`Hello.outbound_deltas`). A proxy acknowledges every
//! update the moment it has decoded its last message (a large one comes split), and reports
//! what it got to the benchmark as an [`Event`]. It keeps no Services: what an update
//! carried is all the benchmark checks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use weft_api::proto::discovery::v1::{
    subscribe_request, Ack, Hello, SubscribeRequest, Sync, ViewUpdate,
};
use weft_api::SpiffeId;
use weft_control_plane::client::{connect_discovery, WorkloadCert};

use super::mesh;

/// How long one attempt to connect and get the first view may take.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts per proxy before it is reported as failed.
const ATTEMPTS: u32 = 3;

/// Where the control plane is and how to trust it.
pub struct Target {
    pub addr: SocketAddr,
    pub bundle: Vec<CertificateDer<'static>>,
    pub server_identity: SpiffeId,
}

/// What one update held, as far as the benchmark cares.
#[derive(Debug, Clone)]
pub struct Update {
    pub version: String,
    pub inbound: bool,
    pub outbound: bool,
    /// The round of `app-7-callers` in the inbound view, if that policy selects this pod.
    pub selective_round: Option<u32>,
    /// The round of `mesh-callers` in the inbound view.
    pub mesh_round: Option<u32>,
    /// Whether pod-0's endpoint of svc-0 is ready, when the update has an outbound view.
    pub endpoint_ready: Option<bool>,
    /// The outbound part was a delta (`Services.sync`), not a full sync or the whole view.
    pub delta: bool,
    /// The encoded size of the update (protobuf bytes, before gRPC framing and TLS), over
    /// all its messages.
    pub bytes: usize,
    /// The messages it came in, and the largest.
    pub messages: usize,
    pub largest_message: usize,
}

impl Update {
    /// `update` is the update's messages put together; `sizes` their encoded sizes.
    fn of(update: &ViewUpdate, sizes: &[usize]) -> Self {
        let mut selective_round = None;
        let mut mesh_round = None;
        for policy in update.inbound.iter().flat_map(|i| &i.policies) {
            let round = policy
                .rules
                .iter()
                .flat_map(|r| &r.from)
                .flat_map(|s| &s.principals)
                .find_map(|p| mesh::round_of(p));
            match policy.name.as_str() {
                mesh::SELECTIVE_POLICY => selective_round = round,
                mesh::MESH_POLICY => mesh_round = round,
                _ => {}
            }
        }
        let endpoint_ready = update
            .outbound
            .iter()
            .flat_map(|o| &o.services)
            .chain(update.services.iter().flat_map(|s| &s.upserted))
            .filter(|s| s.namespace == mesh::NAMESPACE && s.name == mesh::FLIPPED_SERVICE)
            .flat_map(|s| &s.endpoints)
            .find(|e| e.workload == mesh::FLIPPED_WORKLOAD)
            .map(|e| e.ready);
        Update {
            version: update.version.clone(),
            endpoint_ready,
            inbound: update.inbound.is_some(),
            outbound: update.outbound.is_some() || update.services.is_some(),
            delta: update
                .services
                .as_ref()
                .is_some_and(|s| s.sync == Sync::Delta as i32),
            selective_round,
            mesh_round,
            bytes: sizes.iter().sum(),
            messages: sizes.len(),
            largest_message: sizes.iter().copied().max().unwrap_or(0),
        }
    }
}

/// Reads the messages of the next update (up to the one without `more`) and puts them
/// together as the proxy does; `None` when the stream ends between updates.
async fn next_update(
    updates: &mut Streaming<ViewUpdate>,
) -> Result<Option<(ViewUpdate, Vec<usize>)>, tonic::Status> {
    let Some(mut update) = updates.message().await? else {
        return Ok(None);
    };
    let mut sizes = vec![prost::Message::encoded_len(&update)];
    while update.more {
        let Some(next) = updates.message().await? else {
            return Err(tonic::Status::unavailable(
                "the stream ended within an update",
            ));
        };
        sizes.push(prost::Message::encoded_len(&next));
        if next.inbound.is_some() {
            update.inbound = next.inbound;
        }
        match (&mut update.services, next.services) {
            (Some(so_far), Some(more)) => {
                so_far.upserted.extend(more.upserted);
                so_far.removed.extend(more.removed);
            }
            (so_far, more) => *so_far = more.or(so_far.take()),
        }
        update.more = next.more;
    }
    Ok(Some((update, sizes)))
}

#[derive(Debug)]
pub enum EventKind {
    /// Connected, subscribed, got the first view and acked it; `took` is from the first
    /// connect attempt.
    Subscribed { first: Update, took: Duration },
    /// Gave up after [`ATTEMPTS`].
    Failed(String),
    /// An update after the first; acked at once.
    Update(Update),
    /// The stream ended or failed.
    Ended(String),
}

#[derive(Debug)]
pub struct Event {
    pub proxy: usize,
    /// When the update was received and decoded (its ack is queued right after).
    pub at: Instant,
    pub kind: EventKind,
}

/// One workload certificate per service account (100 in all), shared by its pods.
pub fn certificates(ca: &weft_control_plane::ca::Ca) -> anyhow::Result<Vec<Arc<WorkloadCert>>> {
    (0..mesh::APPS)
        .map(|app| {
            let id = SpiffeId::for_service_account(
                mesh::TRUST_DOMAIN,
                mesh::NAMESPACE,
                &mesh::service_account(app),
            )?;
            Ok(Arc::new(WorkloadCert::issue(ca, &id)?))
        })
        .collect()
}

/// Starts proxies for pods `0..count`, at most `concurrency` of them connecting (and
/// receiving their first view) at once. Every proxy runs until the runtime is dropped.
pub fn spawn_all(
    count: usize,
    concurrency: usize,
    target: Arc<Target>,
    certs: Arc<Vec<Arc<WorkloadCert>>>,
    events: mpsc::UnboundedSender<Event>,
) {
    let gate = Arc::new(Semaphore::new(concurrency));
    for proxy in 0..count {
        let (gate, target, events) = (gate.clone(), target.clone(), events.clone());
        let cert = certs[mesh::app_of(proxy)].clone();
        tokio::spawn(async move {
            let Ok(permit) = gate.acquire_owned().await else {
                return;
            };
            let started = Instant::now();
            let mut last_error = String::new();
            for _ in 0..ATTEMPTS {
                match tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscribe(&target, &cert, proxy))
                    .await
                {
                    Ok(Ok(mut proxy_stream)) => {
                        let _ = events.send(Event {
                            proxy,
                            at: Instant::now(),
                            kind: EventKind::Subscribed {
                                first: proxy_stream.first.take().expect("set by subscribe"),
                                took: started.elapsed(),
                            },
                        });
                        drop(permit);
                        proxy_stream.serve(proxy, &events).await;
                        return;
                    }
                    Ok(Err(error)) => last_error = format!("{error:#}"),
                    Err(_) => last_error = format!("no first view within {SUBSCRIBE_TIMEOUT:?}"),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let _ = events.send(Event {
                proxy,
                at: Instant::now(),
                kind: EventKind::Failed(last_error),
            });
        });
    }
}

/// A subscribed proxy.
struct ProxyStream {
    /// Kept so the channel (and its connection) lives as long as the stream.
    _client: weft_api::proto::discovery::v1::discovery_client::DiscoveryClient<
        tonic::transport::Channel,
    >,
    acks: mpsc::Sender<SubscribeRequest>,
    updates: Streaming<ViewUpdate>,
    first: Option<Update>,
}

async fn subscribe(
    target: &Target,
    cert: &WorkloadCert,
    proxy: usize,
) -> anyhow::Result<ProxyStream> {
    let cert = WorkloadCert {
        chain: cert.chain.clone(),
        key: cert.key.clone_key(),
    };
    let mut client = connect_discovery(
        target.addr,
        &target.bundle,
        target.server_identity.clone(),
        cert,
    )
    .await?;
    let (acks, rx) = mpsc::channel(4);
    acks.send(SubscribeRequest {
        kind: Some(subscribe_request::Kind::Hello(Hello {
            namespace: mesh::NAMESPACE.into(),
            pod: mesh::pod_name(proxy),
            current_version: String::new(),
            proxy_version: "weft-propagation".into(),
            outbound_deltas: true,
            ..Default::default()
        })),
    })
    .await?;
    let mut updates = client
        .subscribe(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let (first, sizes) = next_update(&mut updates)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the stream ended before the first view"))?;
    let update = Update::of(&first, &sizes);
    ack(&acks, first.version).await?;
    Ok(ProxyStream {
        _client: client,
        acks,
        updates,
        first: Some(update),
    })
}

async fn ack(acks: &mpsc::Sender<SubscribeRequest>, version: String) -> anyhow::Result<()> {
    acks.send(SubscribeRequest {
        kind: Some(subscribe_request::Kind::Ack(Ack {
            version,
            error: String::new(),
            ..Default::default()
        })),
    })
    .await
    .map_err(|_| anyhow::anyhow!("the request stream is closed"))
}

impl ProxyStream {
    /// Acks every update until the stream ends.
    async fn serve(mut self, proxy: usize, events: &mpsc::UnboundedSender<Event>) {
        let ended = loop {
            match next_update(&mut self.updates).await {
                Ok(Some((update, sizes))) => {
                    let at = Instant::now();
                    let info = Update::of(&update, &sizes);
                    if let Err(error) = ack(&self.acks, update.version).await {
                        break format!("{error:#}");
                    }
                    let _ = events.send(Event {
                        proxy,
                        at,
                        kind: EventKind::Update(info),
                    });
                }
                Ok(None) => break "the control plane ended the stream".to_owned(),
                Err(status) => break format!("stream failed: {status}"),
            }
        };
        let _ = events.send(Event {
            proxy,
            at: Instant::now(),
            kind: EventKind::Ended(ended),
        });
    }
}
