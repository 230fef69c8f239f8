//! The subscription loop: one task owns the stream from the control plane, applies every
//! update to the [`ViewStore`] and acknowledges it, and reconnects when the stream ends.
//!
//! The loop is generic over [`Connect`] — "open a subscription" — so the reconnect schedule
//! can be tested with a fake and paused time, as the certificate refresh loop is.
//!
//! - **Keep the last view.** A lost stream changes nothing on the data path: the proxy
//!   enforces what it last applied until the control plane is back and says otherwise.
//! - **Reconnect with backoff.** [`DEFAULT_BACKOFF_BASE`] doubling to [`DEFAULT_BACKOFF_CAP`],
//!   each wait a random point in the upper half of its step ([`Backoff`]); back to the base
//!   after a stream that delivered an update (the control plane was healthy; this is a new
//!   failure, not the same one going on).
//! - **Stop with the proxy.** Both the stream and the wait race the drain signal, so
//!   shutdown never waits for the control plane.
//! - **Outbound deltas.** The Hello asks for the outbound part as per-Service full syncs and
//!   deltas and names the Services version held, so after a reconnect an unchanged mesh
//!   costs no full sync. Each stream's [`Session`] puts split updates together and acks
//!   once per version ([`super::sync`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use weft_api::proto::discovery::v1 as pb;
use weft_api::proto::discovery::v1::discovery_client::DiscoveryClient;
use weft_api::proto::discovery::v1::subscribe_request::Kind;

use super::metrics::DiscoveryMetrics;
use super::store::ViewStore;
use super::sync::{Received, Session};
use crate::drain;
use crate::identity::control_plane::status_message;
use crate::identity::Tls;

/// The first retry comes quickly: most disconnects are a control-plane replica restarting
/// or being rolled, and another replica answers at once.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(100);
/// A proxy is at most this long behind a control plane that has come back (the longest wait
/// between attempts), while a fleet of proxies retrying a control plane that stays down
/// costs it at most one connection per proxy per 5–10 s.
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(10);

/// Opens a subscription: sends what arrives on `requests` (the `Hello`, then `Ack`s) and
/// returns the updates the control plane streams back.
pub(crate) trait Connect: Send + 'static {
    type Updates: Updates;
    fn subscribe(
        &mut self,
        requests: mpsc::UnboundedReceiver<pb::SubscribeRequest>,
    ) -> impl Future<Output = Result<Self::Updates, tonic::Status>> + Send;
}

/// The update stream: `Ok(None)` when the control plane ended it.
pub(crate) trait Updates: Send {
    fn next(
        &mut self,
    ) -> impl Future<Output = Result<Option<pb::ViewUpdate>, tonic::Status>> + Send;
}

impl Updates for tonic::Streaming<pb::ViewUpdate> {
    async fn next(&mut self) -> Result<Option<pb::ViewUpdate>, tonic::Status> {
        self.message().await
    }
}

/// `Discovery.Subscribe` over the channel to the control plane.
pub(crate) struct Grpc {
    pub(crate) client: DiscoveryClient<Channel>,
    pub(crate) tls: Arc<Tls>,
}

impl Connect for Grpc {
    type Updates = tonic::Streaming<pb::ViewUpdate>;

    async fn subscribe(
        &mut self,
        requests: mpsc::UnboundedReceiver<pb::SubscribeRequest>,
    ) -> Result<Self::Updates, tonic::Status> {
        // The control plane knows the pod by its certificate: wait for a valid one (at start,
        // and should one expire without renewal).
        self.tls.ready().await;
        let requests = UnboundedReceiverStream::new(requests);
        Ok(self.client.subscribe(requests).await?.into_inner())
    }
}

/// Exponential backoff with "equal jitter": the n-th wait is a random point in the upper
/// half of `base * 2^n` (capped). Keeping the lower half makes a fleet really back off;
/// the random half spreads out proxies that lost the same control plane at the same moment.
pub(crate) struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    pub(crate) fn new(base: Duration, cap: Duration, rng: fastrand::Rng) -> Backoff {
        Backoff {
            base,
            cap,
            failures: 0,
            rng,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    /// The wait before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let doublings = self.failures.min(20);
        self.failures = self.failures.saturating_add(1);
        let step = self.base.saturating_mul(1 << doublings).min(self.cap);
        step / 2 + (step / 2).mul_f64(self.rng.f64())
    }
}

/// Why a subscription ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Ended {
    #[error("the control plane answered {code:?}: {message}")]
    Rpc { code: tonic::Code, message: String },
    #[error("the control plane ended the stream")]
    Closed,
}

impl From<tonic::Status> for Ended {
    fn from(status: tonic::Status) -> Self {
        Ended::Rpc {
            code: status.code(),
            message: status_message(&status),
        }
    }
}

/// The loop's state: see the module docs.
pub(crate) struct Subscriber<C> {
    pub(crate) connect: C,
    /// `namespace`, `pod`, `proxy_version` and `outbound_deltas`; `current_version` and
    /// `services_version` are filled in per stream.
    pub(crate) hello: pb::Hello,
    pub(crate) store: Arc<ViewStore>,
    pub(crate) metrics: DiscoveryMetrics,
    pub(crate) backoff: Backoff,
}

impl<C: Connect> Subscriber<C> {
    /// Subscribes, and subscribes again whenever the stream ends, until `drain` fires.
    pub(crate) async fn run(mut self, drain: drain::Watch) {
        loop {
            let (delivered, ended) = tokio::select! {
                biased;
                _ = drain.signaled() => break,
                ended = self.session() => ended,
            };
            self.metrics.connected(false);
            if delivered {
                self.backoff.reset();
            }
            let delay = self.backoff.next_delay();
            let enforced = self.current_version();
            tracing::warn!(error = %ended, retry_in = ?delay, enforced, "discovery stream ended; enforcing the last view meanwhile");
            tokio::select! {
                biased;
                _ = drain.signaled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
            self.metrics.reconnecting();
        }
        self.metrics.connected(false);
    }

    /// One stream, from `Hello` to its end. Returns whether it delivered an update.
    async fn session(&mut self) -> (bool, Ended) {
        let (requests, requests_rx) = mpsc::unbounded_channel();
        let current = self.store.load_full();
        let hello = pb::Hello {
            current_version: current
                .as_ref()
                .map(|view| view.version.clone())
                .unwrap_or_default(),
            services_version: current
                .as_ref()
                .filter(|_| self.hello.outbound_deltas)
                .map(|view| view.services_version.clone())
                .unwrap_or_default(),
            ..self.hello.clone()
        };
        // The receiver is still here: sending cannot fail.
        let _ = requests.send(request(Kind::Hello(hello)));
        let mut updates = match self.connect.subscribe(requests_rx).await {
            Ok(updates) => updates,
            Err(status) => return (false, status.into()),
        };
        self.metrics.connected(true);
        tracing::info!(
            enforced = self.current_version(),
            "subscribed to the view from the control plane"
        );
        let mut delivered = false;
        let mut session = Session::new();
        loop {
            let update = match updates.next().await {
                Ok(Some(update)) => update,
                Ok(None) => return (delivered, Ended::Closed),
                Err(status) => return (delivered, status.into()),
            };
            delivered = true;
            let Some(ack) = self.receive(&mut session, update) else {
                continue;
            };
            if requests.send(request(Kind::Ack(ack))).is_err() {
                return (delivered, Ended::Closed);
            }
        }
    }

    /// Takes one message; returns the ack to send, if the message completed an update.
    fn receive(&self, session: &mut Session, update: pb::ViewUpdate) -> Option<pb::Ack> {
        match session.receive(&self.store, update) {
            Received::Partial | Received::Dropped => None,
            Received::Applied(view) => {
                self.metrics.applied(&view.version);
                tracing::info!(
                    version = view.version,
                    policies = view.inbound.policies.len(),
                    services = view.outbound.services.len(),
                    services_version = view.services_version,
                    "view applied"
                );
                Some(pb::Ack {
                    version: view.version.clone(),
                    ..Default::default()
                })
            }
            Received::Rejected {
                version,
                error,
                full_sync,
            } => {
                self.metrics.rejected();
                tracing::warn!(version, %error, full_sync, enforced = self.current_version(),
                    "view update rejected; enforcing the previous view");
                Some(pb::Ack {
                    version,
                    error: error.to_string(),
                    full_sync,
                })
            }
        }
    }

    fn current_version(&self) -> String {
        self.store
            .load()
            .as_ref()
            .map(|view| view.version.clone())
            .unwrap_or_default()
    }
}

fn request(kind: Kind) -> pb::SubscribeRequest {
    pb::SubscribeRequest { kind: Some(kind) }
}
