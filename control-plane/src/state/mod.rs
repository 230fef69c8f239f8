//! The cluster state the index reads: the Kubernetes objects Weft cares about, by kind, as
//! the latest valid version of each. Both sources (the Kubernetes API and a manifest
//! directory) produce a [`State`]; neither ever puts an object in it that failed to decode,
//! and a bad new version of an object leaves the last good one in place.

mod decode;
mod problems;

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use weft_api::crd::{AuthorizationPolicy, HTTPRoute, TrafficPolicy};

pub use decode::{decode, DecodeError, DEFAULT_NAMESPACE};
pub use problems::{Problem, ProblemBoard};

/// The kinds Weft reads, with the apiVersion each is read at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Kind {
    Namespace,
    Pod,
    Service,
    EndpointSlice,
    ServiceAccount,
    AuthorizationPolicy,
    TrafficPolicy,
    HTTPRoute,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::ServiceAccount,
        Kind::AuthorizationPolicy,
        Kind::TrafficPolicy,
        Kind::HTTPRoute,
    ];

    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Namespace | Kind::Pod | Kind::Service | Kind::ServiceAccount => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::AuthorizationPolicy | Kind::TrafficPolicy => "policy.weft.dev/v1alpha1",
            Kind::HTTPRoute => "gateway.networking.k8s.io/v1",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::TrafficPolicy => "TrafficPolicy",
            Kind::HTTPRoute => "HTTPRoute",
        }
    }

    pub fn from_name(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    pub fn namespaced(self) -> bool {
        self != Kind::Namespace
    }
}

/// Names one object: its kind, namespace (empty for a Namespace) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind.as_str(), self.name)
        } else {
            write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
        }
    }
}

/// One decoded object, shared: building a new [`State`] from ten thousand unchanged pods
/// copies pointers, not pods.
#[derive(Debug, Clone)]
pub enum Object {
    Namespace(Arc<Namespace>),
    Pod(Arc<Pod>),
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    ServiceAccount(Arc<ServiceAccount>),
    AuthorizationPolicy(Arc<AuthorizationPolicy>),
    TrafficPolicy(Arc<TrafficPolicy>),
    HTTPRoute(Arc<HTTPRoute>),
}

/// `(namespace, name)`.
pub type NamespacedName = (String, String);

/// The latest valid version of every object, by kind. Cheap to clone (objects are shared).
#[derive(Debug, Clone, Default)]
pub struct State {
    pub namespaces: BTreeMap<String, Arc<Namespace>>,
    pub pods: BTreeMap<NamespacedName, Arc<Pod>>,
    pub services: BTreeMap<NamespacedName, Arc<Service>>,
    pub endpoint_slices: BTreeMap<NamespacedName, Arc<EndpointSlice>>,
    pub service_accounts: BTreeMap<NamespacedName, Arc<ServiceAccount>>,
    pub authorization_policies: BTreeMap<NamespacedName, Arc<AuthorizationPolicy>>,
    pub traffic_policies: BTreeMap<NamespacedName, Arc<TrafficPolicy>>,
    pub http_routes: BTreeMap<NamespacedName, Arc<HTTPRoute>>,
}

impl State {
    /// Adds or replaces an object under `key` (whose namespace and name the decoder filled).
    pub fn insert(&mut self, key: &ObjectKey, object: Object) {
        let nn = || (key.namespace.clone(), key.name.clone());
        match object {
            Object::Namespace(o) => {
                self.namespaces.insert(key.name.clone(), o);
            }
            Object::Pod(o) => {
                self.pods.insert(nn(), o);
            }
            Object::Service(o) => {
                self.services.insert(nn(), o);
            }
            Object::EndpointSlice(o) => {
                self.endpoint_slices.insert(nn(), o);
            }
            Object::ServiceAccount(o) => {
                self.service_accounts.insert(nn(), o);
            }
            Object::AuthorizationPolicy(o) => {
                self.authorization_policies.insert(nn(), o);
            }
            Object::TrafficPolicy(o) => {
                self.traffic_policies.insert(nn(), o);
            }
            Object::HTTPRoute(o) => {
                self.http_routes.insert(nn(), o);
            }
        }
    }

    pub fn remove(&mut self, key: &ObjectKey) {
        let nn = (key.namespace.clone(), key.name.clone());
        match key.kind {
            Kind::Namespace => drop(self.namespaces.remove(&key.name)),
            Kind::Pod => drop(self.pods.remove(&nn)),
            Kind::Service => drop(self.services.remove(&nn)),
            Kind::EndpointSlice => drop(self.endpoint_slices.remove(&nn)),
            Kind::ServiceAccount => drop(self.service_accounts.remove(&nn)),
            Kind::AuthorizationPolicy => drop(self.authorization_policies.remove(&nn)),
            Kind::TrafficPolicy => drop(self.traffic_policies.remove(&nn)),
            Kind::HTTPRoute => drop(self.http_routes.remove(&nn)),
        }
    }

    /// How many objects of each kind, for logs and the admin page.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        BTreeMap::from([
            ("Namespace", self.namespaces.len()),
            ("Pod", self.pods.len()),
            ("Service", self.services.len()),
            ("EndpointSlice", self.endpoint_slices.len()),
            ("ServiceAccount", self.service_accounts.len()),
            ("AuthorizationPolicy", self.authorization_policies.len()),
            ("TrafficPolicy", self.traffic_policies.len()),
            ("HTTPRoute", self.http_routes.len()),
        ])
    }
}
