//! Inbound views: for each pod, the policies that select it, its default policy and its
//! mTLS mode.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use weft_api::crd::{DEFAULT_POLICY_ANNOTATION, MTLS_MODE_ANNOTATION};
use weft_api::proto::discovery::v1 as pb;
use weft_api::SpiffeId;

use super::fallback::Fallbacks;
use super::{object_problem, ByPod, MeshSettings, Part};
use crate::convert::{self, FieldError};
use crate::state::{NamespacedName, Problem, State};

/// The last good conversion of each AuthorizationPolicy.
pub type LastGood = HashMap<NamespacedName, pb::AuthorizationPolicy>;

/// One namespace's policies, each with the labels it selects (`None`: every pod).
pub(super) type NamespacePolicies =
    BTreeMap<String, Vec<(Option<BTreeMap<String, String>>, pb::AuthorizationPolicy)>>;

pub fn convert_policies(
    state: &State,
    last_good: &mut LastGood,
    problems: &mut Vec<Problem>,
) -> NamespacePolicies {
    last_good.retain(|key, _| state.authorization_policies.contains_key(key));
    let mut by_namespace = NamespacePolicies::new();
    for (key, policy) in &state.authorization_policies {
        let converted = match convert::authorization_policy(policy) {
            Ok(converted) => {
                last_good.insert(key.clone(), converted.clone());
                converted
            }
            Err(errors) => {
                let kept = last_good.get(key).cloned();
                for error in &errors {
                    problems.push(object_problem(
                        "AuthorizationPolicy",
                        key,
                        error,
                        kept.is_some(),
                    ));
                }
                match kept {
                    Some(kept) => kept,
                    None => continue,
                }
            }
        };
        let selector = policy
            .spec
            .selector
            .as_ref()
            .map(|s| s.match_labels.clone());
        by_namespace
            .entry(key.0.clone())
            .or_default()
            .push((selector, converted));
    }
    by_namespace
}

/// What a namespace says about the pods in it.
#[derive(Debug, Clone, Copy)]
pub(super) struct NamespaceDefaults {
    pub default_policy: pb::DefaultPolicy,
    pub mtls_mode: pb::MtlsMode,
}

type Views = (ByPod<Arc<Part<pb::Inbound>>>, ByPod<String>, Fallbacks);

/// Every known pod's inbound view, and every namespace's fallback for pods the state does
/// not know (keeping `previous_fallbacks`' where they did not change).
pub fn views(
    state: &State,
    settings: &MeshSettings,
    policies: &NamespacePolicies,
    previous_fallbacks: Option<&Fallbacks>,
    problems: &mut Vec<Problem>,
) -> Views {
    let settings_default = NamespaceDefaults {
        default_policy: settings.default_policy,
        mtls_mode: settings.mtls_mode,
    };
    let mut namespaces = HashMap::new();
    for (name, namespace) in &state.namespaces {
        let annotations = namespace.metadata.annotations.as_ref();
        let key = (String::new(), name.clone());
        let annotation = |which: &str| annotations.and_then(|a| a.get(which));
        let default_policy = match annotation(DEFAULT_POLICY_ANNOTATION).map(String::as_str) {
            None => settings.default_policy,
            Some(text) => parse_default_policy(text).unwrap_or_else(|error| {
                problems.push(annotation_problem(
                    "Namespace",
                    &key,
                    DEFAULT_POLICY_ANNOTATION,
                    error,
                ));
                settings.default_policy
            }),
        };
        let mtls_mode = match annotation(MTLS_MODE_ANNOTATION).map(String::as_str) {
            None => settings.mtls_mode,
            Some(text) => parse_mtls_mode(text).unwrap_or_else(|error| {
                problems.push(annotation_problem(
                    "Namespace",
                    &key,
                    MTLS_MODE_ANNOTATION,
                    error,
                ));
                settings.mtls_mode
            }),
        };
        namespaces.insert(
            name.clone(),
            NamespaceDefaults {
                default_policy,
                mtls_mode,
            },
        );
    }

    let mut inbound = ByPod::default();
    let mut identities = ByPod::default();
    for (key, pod) in &state.pods {
        let (namespace, name) = key;
        let defaults = namespaces
            .get(namespace)
            .copied()
            .unwrap_or(settings_default);
        let pod_mode = match pod_annotation(pod, MTLS_MODE_ANNOTATION) {
            None => None,
            Some(text) => match parse_mtls_mode(text) {
                Ok(mode) => Some(mode),
                Err(error) => {
                    problems.push(annotation_problem("Pod", key, MTLS_MODE_ANNOTATION, error));
                    None
                }
            },
        };
        let empty = BTreeMap::new();
        let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
        let view = inbound_view(
            namespace,
            name,
            labels,
            container_ports(pod),
            defaults,
            pod_mode,
            policies,
        );
        inbound.insert(namespace, name, Arc::new(Part::new(view)));
        if let Some(id) = pod_identity(&settings.trust_domain, namespace, pod) {
            identities.insert(namespace, name, id);
        }
    }
    let fallbacks = Fallbacks::build(settings_default, &namespaces, policies, previous_fallbacks);
    (inbound, identities, fallbacks)
}

fn inbound_view(
    namespace: &str,
    pod: &str,
    labels: &BTreeMap<String, String>,
    ports: Vec<pb::WorkloadPort>,
    defaults: NamespaceDefaults,
    pod_mode: Option<pb::MtlsMode>,
    policies: &NamespacePolicies,
) -> pb::Inbound {
    pb::Inbound {
        namespace: namespace.to_owned(),
        pod: pod.to_owned(),
        ports,
        mtls_mode: pod_mode.unwrap_or(defaults.mtls_mode) as i32,
        default_policy: defaults.default_policy as i32,
        policies: selected(namespace, labels, policies),
    }
}

/// The policies of `namespace` that select a pod with `labels`, in the order of `policies`.
pub(super) fn selected(
    namespace: &str,
    labels: &BTreeMap<String, String>,
    policies: &NamespacePolicies,
) -> Vec<pb::AuthorizationPolicy> {
    policies
        .get(namespace)
        .into_iter()
        .flatten()
        .filter(|(selector, _)| match selector {
            None => true,
            Some(wanted) => wanted.iter().all(|(k, v)| labels.get(k) == Some(v)),
        })
        .map(|(_, policy)| policy.clone())
        .collect()
}

fn container_ports(pod: &Pod) -> Vec<pb::WorkloadPort> {
    let mut ports: Vec<pb::WorkloadPort> = pod
        .spec
        .iter()
        .flat_map(|spec| &spec.containers)
        .flat_map(|container| container.ports.iter().flatten())
        .filter_map(|port| {
            Some(pb::WorkloadPort {
                port: u32::try_from(port.container_port).ok()?,
                name: port.name.clone().unwrap_or_default(),
                mtls_mode: pb::MtlsMode::Unspecified as i32,
            })
        })
        .collect();
    ports.sort_by_key(|p| p.port);
    ports.dedup_by_key(|p| p.port);
    ports
}

/// The identity a pod's proxy proves: its service account's SPIFFE ID.
pub fn pod_identity(trust_domain: &str, namespace: &str, pod: &Pod) -> Option<String> {
    let account = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.service_account_name.as_deref())
        .filter(|sa| !sa.is_empty())
        .unwrap_or("default");
    SpiffeId::for_service_account(trust_domain, namespace, account)
        .ok()
        .map(|id| id.as_str().to_owned())
}

fn pod_annotation<'a>(pod: &'a Pod, which: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(which))
        .map(String::as_str)
}

pub fn parse_default_policy(text: &str) -> Result<pb::DefaultPolicy, String> {
    match text {
        "allow" => Ok(pb::DefaultPolicy::Allow),
        "authenticated" => Ok(pb::DefaultPolicy::Authenticated),
        "deny" => Ok(pb::DefaultPolicy::Deny),
        other => Err(format!("{other:?} is not allow, authenticated or deny")),
    }
}

pub fn parse_mtls_mode(text: &str) -> Result<pb::MtlsMode, String> {
    match text {
        "strict" => Ok(pb::MtlsMode::Strict),
        "permissive" => Ok(pb::MtlsMode::Permissive),
        other => Err(format!("{other:?} is not strict or permissive")),
    }
}

fn annotation_problem(
    kind: &str,
    key: &NamespacedName,
    annotation: &str,
    message: String,
) -> Problem {
    let error = FieldError {
        field: format!("metadata.annotations[{annotation}]"),
        message: format!("{message}; the default applies"),
    };
    let mut problem = object_problem(kind, key, &error, false);
    if key.0.is_empty() {
        problem.object = Some(format!("{kind} {}", key.1));
    }
    problem
}
