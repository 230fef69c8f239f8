//! Discovery: the proxy's subscription to its view of the mesh. The control plane streams
//! this workload's inbound part (ports, mTLS mode, the authorization policies selecting it)
//! and outbound part (the Services it may call); the proxy applies each version and
//! acknowledges it, or rejects it and keeps enforcing the previous one.
//!
//! Read in this order: [`store`] holds the current [`View`] and merges updates into it
//! (the outbound part whole, or per-Service full syncs and deltas); [`sync`] puts split
//! updates together and asks for a full sync when a delta doesn't fit; [`client`] owns the
//! stream (subscribe, apply, ack, reconnect); [`metrics`] counts it.
//! The data path reads the store through [`crate::authz`].
//!
//! On only with an identity from the control plane (`--control-plane-addr`) and
//! `--pod-name`: the control plane checks that the pod's certificate is the pod's service
//! account, so there is nothing to subscribe with otherwise. Off, there is no store at all,
//! and the data path pays nothing.

pub mod client;
pub mod metrics;
pub mod store;
pub mod sync;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use weft_api::proto::discovery::v1 as pb;
use weft_api::proto::discovery::v1::discovery_client::DiscoveryClient;

pub use metrics::DiscoveryMetrics;
pub use store::{ApplyError, SyncError, View, ViewStore};

use crate::bootstrap::RunArgs;
use crate::drain;
use crate::identity::control_plane::{endpoint, Connector};
use crate::identity::{self, ControlPlaneSource, IdentityError, Tls};
use client::{Backoff, Grpc, Subscriber, DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_CAP};

/// HTTP/2 pings on the stream: a control plane that vanished without closing the connection
/// (its node lost, a network partition) is noticed within `INTERVAL + TIMEOUT`, and the
/// proxy moves on to another replica instead of waiting on a dead stream forever.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("discovery: {0}")]
    Config(String),
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// What the subscription needs from the bootstrap flags.
#[derive(Debug, Clone)]
pub struct Settings {
    pub control_plane: ControlPlaneSource,
    pub namespace: String,
    pub pod: String,
}

impl Settings {
    /// `None` without `--pod-name`. A pod name without a control plane to ask is a startup
    /// error rather than a proxy quietly running without its policies.
    pub fn from_args(
        args: &RunArgs,
        mode: &identity::Mode,
    ) -> Result<Option<Settings>, DiscoveryError> {
        let Some(pod) = &args.pod_name else {
            if matches!(mode, identity::Mode::ControlPlane(_)) {
                tracing::info!("no --pod-name: no view from the control plane, no authorization");
            }
            return Ok(None);
        };
        let identity::Mode::ControlPlane(source) = mode else {
            return Err(DiscoveryError::Config(
                "--pod-name subscribes to the control plane: it needs --control-plane-addr".into(),
            ));
        };
        if pod.is_empty() {
            return Err(DiscoveryError::Config("--pod-name is empty".into()));
        }
        // --namespace, or the namespace of an --identity in the /ns/<ns>/sa/<sa> form.
        let namespace = match (&args.identity.namespace, source.identity.service_account()) {
            (Some(namespace), _) => namespace.clone(),
            (None, Some((namespace, _))) => namespace.to_owned(),
            (None, None) => {
                return Err(DiscoveryError::Config(
                    "--pod-name needs --namespace (the pod's namespace)".into(),
                ))
            }
        };
        Ok(Some(Settings {
            control_plane: source.clone(),
            namespace,
            pod: pod.clone(),
        }))
    }
}

/// Registers the metrics and spawns the subscription task, which stops when `drain` fires.
/// Returns the store the data path reads; it is empty until the first view arrives.
pub fn start(
    settings: Settings,
    tls: Arc<Tls>,
    registry: &mut Registry,
    drain: drain::Watch,
) -> Result<Arc<ViewStore>, DiscoveryError> {
    let source = &settings.control_plane;
    // The control plane is verified as for certificates (its SPIFFE ID, against the trust
    // anchors and our bundle), and we present our workload certificate: it is how the
    // control plane knows which pod is asking.
    let anchors = identity::trust_anchors(source, &tls)?;
    let config = tls.build_client_config(&source.control_plane, &[b"h2"], Some(anchors));
    let channel = endpoint(&source.addr)?
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect_with_connector_lazy(Connector::new(&source.addr, config)?);
    let store = Arc::new(ViewStore::new());
    let subscriber = Subscriber {
        connect: Grpc {
            client: DiscoveryClient::new(channel),
            tls,
        },
        hello: pb::Hello {
            namespace: settings.namespace.clone(),
            pod: settings.pod.clone(),
            current_version: String::new(),
            proxy_version: env!("CARGO_PKG_VERSION").to_owned(),
            outbound_deltas: true,
            ..Default::default()
        },
        store: store.clone(),
        metrics: DiscoveryMetrics::new(registry),
        backoff: Backoff::new(
            DEFAULT_BACKOFF_BASE,
            DEFAULT_BACKOFF_CAP,
            fastrand::Rng::new(),
        ),
    };
    tracing::info!(
        control_plane = %source.addr,
        namespace = %settings.namespace,
        pod = %settings.pod,
        "discovery: subscribing to this pod's view"
    );
    tokio::spawn(subscriber.run(drain));
    Ok(store)
}
