//! The index: from the cluster [`State`] to what each proxy must know. Per workload (pod) an
//! inbound view — its ports, mTLS mode, default policy and the authorization policies that
//! select it; per mesh one outbound view — every Service with its endpoints (and the identity
//! each must present), routes and traffic policy.
//!
//! Views are recomputed whole from each new state (a few milliseconds for ten thousand pods)
//! and each part carries a content hash, so the push server sends a proxy only the parts
//! whose hash changed: a policy edit reaches only the workloads it selects. The outbound
//! part is kept per Service ([`services`]): each Service encoded and hashed once, and the
//! delta from the previous outbound version computed once, for every subscription to share.
//! Pods the state does not know get their namespace's [`Fallback`], likewise built once per
//! change and shared, which a subscription holds through a [`PodInbound`].
//!
//! An object that fails validation here (a policy pattern that does not parse, a route
//! without backends' ports) is reported and its last good conversion stays in force while
//! the object exists.

mod fallback;
mod hash;
mod inbound;
mod outbound;
pub mod services;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;
use weft_api::proto::discovery::v1 as pb;

use crate::convert::FieldError;
use crate::state::{NamespacedName, Problem, ProblemBoard, State};

pub use fallback::{Fallback, PodInbound};
pub use hash::{content_hash, hex, parse_hex, version};
pub use inbound::{parse_default_policy, parse_mtls_mode};
pub use services::{OutboundView, ServicePart, DEFAULT_MAX_CHUNK_BYTES};

/// The problems the index reports on the board.
const REPORTER: &str = "index";

/// Mesh-wide settings the objects do not carry.
#[derive(Debug, Clone)]
pub struct MeshSettings {
    pub trust_domain: String,
    /// The cluster's DNS suffix: Services are `name.ns.svc.<cluster_domain>`.
    pub cluster_domain: String,
    /// What applies where no ALLOW policy selects a workload and its namespace does not say.
    pub default_policy: pb::DefaultPolicy,
    /// Inbound mTLS where neither the pod nor its namespace says.
    pub mtls_mode: pb::MtlsMode,
}

/// Istio's and Linkerd's defaults: meshing a workload must not break its existing callers,
/// so plaintext is accepted and everything is allowed until a policy says otherwise.
impl Default for MeshSettings {
    fn default() -> Self {
        MeshSettings {
            trust_domain: crate::DEFAULT_TRUST_DOMAIN.into(),
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.into(),
            default_policy: pb::DefaultPolicy::Allow,
            mtls_mode: pb::MtlsMode::Permissive,
        }
    }
}

/// Kubernetes' default cluster domain.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// A message with its content hash.
#[derive(Debug)]
pub struct Part<T> {
    pub message: T,
    pub hash: u64,
}

impl<T: prost::Message> Part<T> {
    fn new(message: T) -> Self {
        let hash = content_hash(&message);
        Part { message, hash }
    }
}

/// Values by namespace and name, looked up with `&str`s: the push server looks every
/// subscriber's pod up on every change, and a `(String, String)` key would cost two
/// allocations per lookup.
#[derive(Debug)]
pub struct ByPod<T>(HashMap<String, HashMap<String, T>>);

impl<T> Default for ByPod<T> {
    fn default() -> Self {
        ByPod(HashMap::new())
    }
}

impl<T> ByPod<T> {
    pub fn get(&self, namespace: &str, name: &str) -> Option<&T> {
        self.0.get(namespace)?.get(name)
    }

    fn insert(&mut self, namespace: &str, name: &str, value: T) {
        match self.0.get_mut(namespace) {
            Some(pods) => {
                pods.insert(name.to_owned(), value);
            }
            None => {
                let pods = HashMap::from([(name.to_owned(), value)]);
                self.0.insert(namespace.to_owned(), pods);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.0.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Everything the push server needs, computed from one state.
#[derive(Debug)]
pub struct Views {
    inbound: ByPod<Arc<Part<pb::Inbound>>>,
    /// Each pod's SPIFFE ID: a proxy may only subscribe for a pod that runs as its identity.
    identities: ByPod<String>,
    /// For pods the state does not know (yet): what applies to any pod of the namespace,
    /// per namespace, the same `Arc`s as the previous views' where unchanged.
    fallback: Arc<fallback::Fallbacks>,
    /// The same `Arc` as the previous views' when the outbound view did not change.
    pub outbound: Arc<OutboundView>,
}

impl Views {
    /// The inbound view of pod `name` in `namespace`; a pod the index does not know gets the
    /// policies that select every pod of its namespace. Built afresh for such a pod on each
    /// call: a subscription, which asks on every change, holds a [`PodInbound`] instead.
    pub fn inbound_for(&self, namespace: &str, name: &str) -> Arc<Part<pb::Inbound>> {
        match self.inbound.get(namespace, name) {
            Some(view) => view.clone(),
            None => Arc::new(Part::new(self.fallback_of(namespace).view(namespace, name))),
        }
    }

    /// What applies to the pods of `namespace` the index does not know, but for their names.
    pub fn fallback_of(&self, namespace: &str) -> &Arc<Fallback> {
        self.fallback.of(namespace)
    }

    /// The SPIFFE ID pod `name` runs as, if the index knows the pod.
    pub fn identity_of(&self, namespace: &str, name: &str) -> Option<&str> {
        self.identities.get(namespace, name).map(String::as_str)
    }

    pub fn workloads(&self) -> usize {
        self.inbound.len()
    }
}

/// Computes views, keeping the last good conversion of objects that became invalid.
pub struct Index {
    settings: MeshSettings,
    last_good: inbound::LastGood,
    last_good_outbound: outbound::LastGood,
    /// The last outbound view: the next one's delta is computed against it.
    last_outbound: Option<Arc<OutboundView>>,
    /// The last fallbacks: the next views keep those that did not change.
    last_fallbacks: Option<Arc<fallback::Fallbacks>>,
    max_chunk_bytes: usize,
}

impl Default for Index {
    fn default() -> Self {
        Index::new(MeshSettings::default())
    }
}

impl Index {
    pub fn new(settings: MeshSettings) -> Self {
        Index {
            settings,
            last_good: Default::default(),
            last_good_outbound: Default::default(),
            last_outbound: None,
            last_fallbacks: None,
            max_chunk_bytes: DEFAULT_MAX_CHUNK_BYTES,
        }
    }

    /// Splits outbound updates into messages of at most this many bytes of Services
    /// ([`DEFAULT_MAX_CHUNK_BYTES`]).
    pub fn with_max_chunk_bytes(mut self, bytes: usize) -> Self {
        self.max_chunk_bytes = bytes.max(1);
        self
    }

    pub fn compute(&mut self, state: &State) -> (Views, Vec<Problem>) {
        let mut problems = Vec::new();
        let policies = inbound::convert_policies(state, &mut self.last_good, &mut problems);
        let (inbound, identities, fallback) = inbound::views(
            state,
            &self.settings,
            &policies,
            self.last_fallbacks.as_deref(),
            &mut problems,
        );
        let fallback = Arc::new(fallback);
        self.last_fallbacks = Some(fallback.clone());
        let services = outbound::view(
            state,
            &self.settings,
            &mut self.last_good_outbound,
            &mut problems,
        );
        let outbound = OutboundView::build(
            &services.services,
            self.last_outbound.as_ref(),
            self.max_chunk_bytes,
        );
        self.last_outbound = Some(outbound.clone());
        let views = Views {
            inbound,
            identities,
            fallback,
            outbound,
        };
        (views, problems)
    }
}

/// A problem found by the index in one object.
fn object_problem(
    kind: &str,
    (ns, name): &NamespacedName,
    error: &FieldError,
    kept: bool,
) -> Problem {
    Problem {
        source: "index".into(),
        object: Some(format!("{kind} {ns}/{name}")),
        field: Some(error.field.clone()),
        message: error.message.clone(),
        kept_last_good: kept,
    }
}

/// Recomputes views whenever the state changes, off the async threads. Publishes `None`
/// until the source has produced its first state.
pub async fn run(
    mut index: Index,
    mut states: watch::Receiver<Arc<State>>,
    views: watch::Sender<Option<Arc<Views>>>,
    problems: Arc<ProblemBoard>,
) {
    loop {
        let state = states.borrow_and_update().clone();
        let started = std::time::Instant::now();
        let computed = tokio::task::spawn_blocking(move || {
            let result = index.compute(&state);
            (index, result)
        })
        .await;
        let Ok((returned, (computed, found))) = computed else {
            tracing::error!("computing views panicked; the index stops and the last views stay");
            return;
        };
        index = returned;
        tracing::debug!(
            workloads = computed.workloads(),
            services = computed.outbound.services.len(),
            outbound = %computed.outbound.version(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "views computed"
        );
        problems.set(REPORTER, found);
        views.send_replace(Some(Arc::new(computed)));
        if states.changed().await.is_err() {
            return;
        }
    }
}
