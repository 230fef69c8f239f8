//! The inbound view of pods the state does not know: proxies that subscribed before their Pod
//! reached the state (a sidecar can connect before the watch delivers its Pod), or pods the
//! index has no entry for. What applies to such a pod is what applies to every pod of its
//! namespace: the policies that select every pod (no selector, or an empty one) and the
//! namespace's defaults.
//!
//! Why it is kept apart: that view depends on the namespace only (the pod's name aside), yet
//! a subscription looks its view up on every wake-up, i.e. on every state change anywhere in
//! the mesh. Built per lookup it cost every unknown pod's subscription a copy, an encoding
//! and a hash of its namespace's policies per wake-up. So:
//!
//! - each namespace's [`Fallback`] is built once when the index computes views
//!   ([`Fallbacks::build`]) and keeps the previous generation's `Arc` while its content hash
//!   is the same; namespaces that say nothing share one;
//! - a subscription holds a [`PodInbound`], which stamps its pod's name on a fallback only
//!   when that fallback's hash changed: on other wake-ups an unknown pod costs what a known
//!   one does (a lookup and a hash comparison), and its proxy is sent nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use weft_api::proto::discovery::v1 as pb;

use super::inbound::{selected, NamespaceDefaults, NamespacePolicies};
use super::{content_hash, Part, Views};

/// What applies to a pod the index does not know, but for the pod's name and namespace.
#[derive(Debug)]
pub struct Fallback {
    /// `namespace` and `pod` empty, so that namespaces that say nothing can share one; no
    /// ports, as an unknown pod declares none.
    template: pb::Inbound,
    /// The template's content hash: what tells one version of a fallback from another.
    pub hash: u64,
}

impl Fallback {
    fn new(defaults: NamespaceDefaults, policies: Vec<pb::AuthorizationPolicy>) -> Fallback {
        let template = pb::Inbound {
            namespace: String::new(),
            pod: String::new(),
            ports: Vec::new(),
            mtls_mode: defaults.mtls_mode as i32,
            default_policy: defaults.default_policy as i32,
            policies,
        };
        let hash = content_hash(&template);
        Fallback { template, hash }
    }

    /// The inbound view of pod `pod` of `namespace`: the same message the index would have
    /// built for a pod without labels or ports, so the same hash.
    pub fn view(&self, namespace: &str, pod: &str) -> pb::Inbound {
        pb::Inbound {
            namespace: namespace.to_owned(),
            pod: pod.to_owned(),
            ..self.template.clone()
        }
    }
}

/// Every namespace's fallback, computed once per generation of views.
#[derive(Debug)]
pub struct Fallbacks {
    /// Namespaces whose fallback is not `default` (annotated, or with policies that select
    /// every pod).
    by_namespace: HashMap<String, Arc<Fallback>>,
    /// Any other namespace's: the mesh's defaults and no policy.
    default: Arc<Fallback>,
}

impl Fallbacks {
    /// Builds every namespace's fallback, keeping `previous`'s `Arc` where the content did
    /// not change: a subscription can then tell "unchanged" by the hash alone, and nothing
    /// new is allocated for a state change that did not touch policies or namespaces.
    pub(super) fn build(
        settings_default: NamespaceDefaults,
        namespaces: &HashMap<String, NamespaceDefaults>,
        policies: &NamespacePolicies,
        previous: Option<&Fallbacks>,
    ) -> Fallbacks {
        let default = keep(
            Fallback::new(settings_default, Vec::new()),
            previous.map(|p| &p.default),
        );
        let mut by_namespace = HashMap::new();
        let no_labels = BTreeMap::new();
        for name in namespaces.keys().chain(policies.keys()) {
            if by_namespace.contains_key(name) {
                continue;
            }
            let defaults = namespaces.get(name).copied().unwrap_or(settings_default);
            let fallback = Fallback::new(defaults, selected(name, &no_labels, policies));
            if fallback.hash == default.hash {
                continue;
            }
            let old = previous.and_then(|p| p.by_namespace.get(name));
            by_namespace.insert(name.clone(), keep(fallback, old));
        }
        Fallbacks {
            by_namespace,
            default,
        }
    }

    /// The fallback of pods of `namespace`.
    pub fn of(&self, namespace: &str) -> &Arc<Fallback> {
        self.by_namespace.get(namespace).unwrap_or(&self.default)
    }
}

/// `old` if it has `fresh`'s content, else `fresh`.
fn keep(fresh: Fallback, old: Option<&Arc<Fallback>>) -> Arc<Fallback> {
    match old {
        Some(old) if old.hash == fresh.hash => old.clone(),
        _ => Arc::new(fresh),
    }
}

/// One subscription's inbound view across generations of [`Views`].
#[derive(Debug)]
pub struct PodInbound {
    namespace: String,
    pod: String,
    /// The hash of the fallback this pod's view was last built from, and that view.
    built: Option<(u64, Arc<Part<pb::Inbound>>)>,
}

impl PodInbound {
    pub fn new(namespace: &str, pod: &str) -> PodInbound {
        PodInbound {
            namespace: namespace.to_owned(),
            pod: pod.to_owned(),
            built: None,
        }
    }

    /// The pod's inbound view in `views`: its own when the index knows the pod, else its
    /// namespace's fallback — the same `Arc` as last time while that fallback is unchanged.
    pub fn current(&mut self, views: &Views) -> Arc<Part<pb::Inbound>> {
        if let Some(known) = views.inbound.get(&self.namespace, &self.pod) {
            // Not kept for the day the pod goes: most never do, and would hold it for life.
            self.built = None;
            return known.clone();
        }
        let fallback = views.fallback.of(&self.namespace);
        match &self.built {
            Some((hash, view)) if *hash == fallback.hash => view.clone(),
            _ => {
                let view = Arc::new(Part::new(fallback.view(&self.namespace, &self.pod)));
                self.built = Some((fallback.hash, view.clone()));
                view
            }
        }
    }
}
