//! The index: from the cluster [`State`] to what each proxy must know. Per workload (pod) an
//! inbound view — its ports, mTLS mode, default policy and the authorization policies that
//! select it; per mesh one outbound view — every Service with its endpoints (and the identity
//! each must present), routes and traffic policy.
//!
//! Views are recomputed whole from each new state (a few milliseconds for ten thousand pods)
//! and each part carries a content hash, so the push server sends a proxy only the parts
//! whose hash changed: a policy edit reaches only the workloads it selects.
//!
//! An object that fails validation here (a policy pattern that does not parse, a route
//! without backends' ports) is reported and its last good conversion stays in force while
//! the object exists.

mod hash;
mod inbound;
mod outbound;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;
use weft_api::proto::discovery::v1 as pb;

use crate::convert::FieldError;
use crate::state::{NamespacedName, Problem, ProblemBoard, State};

pub use hash::{content_hash, version};
pub use inbound::{parse_default_policy, parse_mtls_mode};

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

/// Everything the push server needs, computed from one state.
#[derive(Debug)]
pub struct Views {
    inbound: HashMap<NamespacedName, Arc<Part<pb::Inbound>>>,
    /// Each pod's SPIFFE ID: a proxy may only subscribe for a pod that runs as its identity.
    identities: HashMap<NamespacedName, String>,
    /// For pods the state does not know (yet): what applies to any pod of the namespace.
    fallback: inbound::Fallback,
    pub outbound: Arc<Part<pb::Outbound>>,
}

impl Views {
    /// The inbound view of pod `name` in `namespace`; a pod the index does not know gets the
    /// policies that select every pod of its namespace.
    pub fn inbound_for(&self, namespace: &str, name: &str) -> Arc<Part<pb::Inbound>> {
        match self.inbound.get(&(namespace.to_owned(), name.to_owned())) {
            Some(view) => view.clone(),
            None => Arc::new(Part::new(self.fallback.view(namespace, name))),
        }
    }

    /// The SPIFFE ID pod `name` runs as, if the index knows the pod.
    pub fn identity_of(&self, namespace: &str, name: &str) -> Option<&str> {
        self.identities
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(String::as_str)
    }

    pub fn workloads(&self) -> usize {
        self.inbound.len()
    }
}

/// Computes views, keeping the last good conversion of objects that became invalid.
#[derive(Default)]
pub struct Index {
    settings: MeshSettings,
    last_good: inbound::LastGood,
    last_good_outbound: outbound::LastGood,
}

impl Index {
    pub fn new(settings: MeshSettings) -> Self {
        Index {
            settings,
            ..Index::default()
        }
    }

    pub fn compute(&mut self, state: &State) -> (Views, Vec<Problem>) {
        let mut problems = Vec::new();
        let policies = inbound::convert_policies(state, &mut self.last_good, &mut problems);
        let (inbound, identities, fallback) =
            inbound::views(state, &self.settings, policies, &mut problems);
        let outbound = outbound::view(
            state,
            &self.settings,
            &mut self.last_good_outbound,
            &mut problems,
        );
        let views = Views {
            inbound,
            identities,
            fallback,
            outbound: Arc::new(Part::new(outbound)),
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
            services = computed.outbound.message.services.len(),
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
