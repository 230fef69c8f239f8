//! The push API: `Discovery.Subscribe`. A proxy connects over mTLS with its workload
//! certificate, names its pod, and gets its view at once and again whenever a part of it
//! changes — only the parts that changed, and only if they changed for *that* proxy, which
//! falls out of comparing content hashes per part. The outbound part goes to proxies that
//! take deltas as per-Service full syncs and deltas, split into bounded messages
//! ([`subscriber`]); every subscription sends the same pre-encoded bytes ([`wire`]). Each
//! update is acknowledged; the registry keeps what every proxy was sent and has acked for
//! `/debug/proxies` and `weftctl check`.
//!
//! Who may subscribe: the caller's certificate names a service account; it must be the pod's
//! (when the index knows the pod) and in any case in the pod's namespace, so a workload can
//! read no other namespace's policies.

mod registry;
mod subscriber;
#[cfg(test)]
mod tests;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use weft_api::proto::discovery::v1::{subscribe_request, Hello, SubscribeRequest};
use weft_api::SpiffeId;

use crate::index::Views;
use crate::server::PeerInfo;

pub use registry::{DiscoveryMetrics, Registry, SubscriberInfo};
pub use wire::{DiscoveryServer, Push};

/// How long a new stream may take to say Hello: a client that opens streams and says
/// nothing must not hold tasks forever.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Updates queued per stream. One is in flight while the next is computed; a proxy that
/// reads slowly gets the latest view when it catches up rather than every intermediate one.
const STREAM_BUFFER: usize = 2;

#[derive(Clone)]
pub struct DiscoveryService {
    views: watch::Receiver<Option<Arc<Views>>>,
    registry: Arc<Registry>,
    trust_domain: String,
    /// Ends every stream when the server shuts down (streams would outlast the grace).
    stop: watch::Receiver<bool>,
}

impl DiscoveryService {
    pub fn new(
        views: watch::Receiver<Option<Arc<Views>>>,
        registry: Arc<Registry>,
        trust_domain: impl Into<String>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        DiscoveryService {
            views,
            registry,
            trust_domain: trust_domain.into(),
            stop,
        }
    }

    pub fn into_server(self) -> DiscoveryServer {
        DiscoveryServer::new(self)
    }

    /// Checks the Hello against the caller's identity, waiting for the first views if the
    /// source is still loading.
    async fn authorize(&self, identity: &SpiffeId, hello: &Hello) -> Result<(), Status> {
        if hello.namespace.is_empty() || hello.pod.is_empty() {
            return Err(Status::invalid_argument(
                "Hello must name the namespace and the pod",
            ));
        }
        let Some((namespace, _)) = identity
            .service_account()
            .filter(|_| identity.trust_domain() == self.trust_domain)
        else {
            return Err(Status::permission_denied(format!(
                "{identity} is not a service account of trust domain {}",
                self.trust_domain
            )));
        };
        if namespace != hello.namespace {
            return Err(Status::permission_denied(format!(
                "{identity} may not subscribe for pods of namespace {}",
                hello.namespace
            )));
        }
        let mut views = self.views.clone();
        let views = views
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Status::unavailable("the control plane is shutting down"))?
            .clone()
            .expect("wait_for returned Some");
        match views.identity_of(&hello.namespace, &hello.pod) {
            Some(expected) if expected != identity.as_str() => {
                Err(Status::permission_denied(format!(
                    "pod {}/{} runs as {expected}, not {identity}",
                    hello.namespace, hello.pod
                )))
            }
            _ => Ok(()),
        }
    }
}

impl DiscoveryService {
    /// `Discovery.Subscribe` (served by [`DiscoveryServer`]).
    pub async fn subscribe(
        &self,
        request: Request<Streaming<SubscribeRequest>>,
    ) -> Result<Response<ReceiverStream<Result<Push, Status>>>, Status> {
        let peer = request.extensions().get::<PeerInfo>().cloned();
        let identity = peer
            .as_ref()
            .and_then(|p| p.identity.clone())
            .ok_or_else(|| {
                Status::unauthenticated("subscribe with the workload certificate (mTLS)")
            })?;
        let mut requests = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, requests.message()).await {
            Ok(Ok(Some(SubscribeRequest {
                kind: Some(subscribe_request::Kind::Hello(hello)),
            }))) => hello,
            Ok(Ok(_)) => return Err(Status::invalid_argument("the first message must be Hello")),
            Ok(Err(status)) => return Err(status),
            Err(_) => return Err(Status::deadline_exceeded("no Hello in time")),
        };
        self.authorize(&identity, &hello)
            .await
            .inspect_err(|status| {
                tracing::info!(%identity, namespace = %hello.namespace, pod = %hello.pod,
                reason = status.message(), "subscription refused");
            })?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let remote = peer.and_then(|p| p.remote_addr);
        let handle = self.registry.register(&hello, &identity, remote);
        tracing::info!(%identity, namespace = %hello.namespace, pod = %hello.pod,
            current = %hello.current_version, deltas = hello.outbound_deltas,
            services = %hello.services_version, "proxy subscribed");
        let mut stop = self.stop.clone();
        let subscription = subscriber::run(hello, self.views.clone(), requests, tx, handle);
        tokio::spawn(async move {
            tokio::select! {
                () = subscription => {}
                () = crate::server::stopped(&mut stop) => {}
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
