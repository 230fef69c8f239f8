//! The outbound view: every Service with its ports, endpoints (each with the identity its
//! proxy must present), the HTTPRoutes attached to it and its TrafficPolicy.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weft_api::proto::discovery::v1 as pb;

use super::inbound::pod_identity;
use super::{object_problem, MeshSettings};
use crate::convert::{self, FieldError};
use crate::state::{NamespacedName, Problem, State};

/// The label EndpointSlices carry naming their Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The injector records what it injected in this annotation; a pod without it has no proxy,
/// so callers must not expect mTLS from it.
pub const STATUS_ANNOTATION: &str = "weft.dev/status";

/// The last good conversion of routes and traffic policies.
#[derive(Default)]
pub struct LastGood {
    routes: HashMap<NamespacedName, Vec<(NamespacedName, pb::HttpRoute)>>,
    traffic: HashMap<NamespacedName, pb::TrafficPolicy>,
}

/// Sort key for precedence, as Gateway API orders conflicting routes: oldest first, then by
/// namespace and name.
type Age = (Option<Time>, NamespacedName);

pub fn view(
    state: &State,
    settings: &MeshSettings,
    last_good: &mut LastGood,
    problems: &mut Vec<Problem>,
) -> pb::Outbound {
    let routes = attached_routes(state, last_good, problems);
    let traffic = traffic_policies(state, last_good, problems);
    let endpoints = endpoints_by_service(state, settings);
    let services = state
        .services
        .iter()
        .map(|(key, service)| {
            let (namespace, name) = key;
            let spec = service.spec.as_ref();
            let mut cluster_ips: Vec<String> = spec
                .and_then(|s| {
                    s.cluster_ips
                        .clone()
                        .or_else(|| s.cluster_ip.clone().map(|ip| vec![ip]))
                })
                .unwrap_or_default();
            cluster_ips.retain(|ip| !ip.is_empty() && ip != "None");
            let ports = spec
                .and_then(|s| s.ports.as_ref())
                .into_iter()
                .flatten()
                .map(|port| pb::ServicePort {
                    name: port.name.clone().unwrap_or_default(),
                    port: u32::try_from(port.port).unwrap_or(0),
                    target_port: match &port.target_port {
                        Some(IntOrString::Int(n)) => u32::try_from(*n).unwrap_or(0),
                        Some(IntOrString::String(_)) => 0,
                        None => u32::try_from(port.port).unwrap_or(0),
                    },
                    app_protocol: port.app_protocol.clone().unwrap_or_default(),
                })
                .collect();
            pb::Service {
                namespace: namespace.clone(),
                name: name.clone(),
                cluster_ips,
                hostnames: vec![
                    format!("{name}.{namespace}.svc.{}", settings.cluster_domain),
                    format!("{name}.{namespace}.svc"),
                    format!("{name}.{namespace}"),
                ],
                ports,
                endpoints: endpoints.get(key).cloned().unwrap_or_default(),
                routes: routes.get(key).cloned().unwrap_or_default(),
                traffic_policy: traffic.get(key).cloned(),
            }
        })
        .collect();
    pb::Outbound { services }
}

fn endpoints_by_service(
    state: &State,
    settings: &MeshSettings,
) -> HashMap<NamespacedName, Vec<pb::Endpoint>> {
    let mut by_service: HashMap<NamespacedName, Vec<pb::Endpoint>> = HashMap::new();
    for ((namespace, _), slice) in &state.endpoint_slices {
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        let endpoints = by_service
            .entry((namespace.clone(), service.clone()))
            .or_default();
        add_slice(state, settings, namespace, slice, endpoints);
    }
    // The same endpoint listed twice (two slices during a migration) is kept once. Endpoints
    // sharing an address but not their ports are different (hostNetwork pods on one node;
    // local mode, where every sidecar listens on 127.0.0.1): all are kept.
    let ports = |e: &pb::Endpoint| {
        let mut ports: Vec<(String, u32)> =
            e.ports.iter().map(|p| (p.name.clone(), p.port)).collect();
        ports.sort();
        ports
    };
    for endpoints in by_service.values_mut() {
        endpoints.sort_by_cached_key(|e| (e.address.clone(), ports(e)));
        endpoints.dedup_by(|a, b| a.address == b.address && ports(a) == ports(b));
    }
    by_service
}

fn add_slice(
    state: &State,
    settings: &MeshSettings,
    namespace: &str,
    slice: &EndpointSlice,
    out: &mut Vec<pb::Endpoint>,
) {
    let ports: Vec<pb::NamedPort> = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|port| {
            Some(pb::NamedPort {
                name: port.name.clone().unwrap_or_default(),
                port: u32::try_from(port.port?).ok()?,
            })
        })
        .collect();
    for endpoint in slice.endpoints.iter().flatten() {
        let pod_ref = endpoint
            .target_ref
            .as_ref()
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .and_then(|r| {
                let pod_namespace = r.namespace.clone().unwrap_or_else(|| namespace.to_owned());
                Some((pod_namespace, r.name.clone()?))
            });
        let pod = pod_ref.as_ref().and_then(|key| state.pods.get(key));
        let identity = pod
            .filter(|pod| is_meshed(pod))
            .zip(pod_ref.as_ref())
            .and_then(|(pod, (ns, _))| pod_identity(&settings.trust_domain, ns, pod))
            .unwrap_or_default();
        let ready = endpoint
            .conditions
            .as_ref()
            .and_then(|c| c.ready)
            .unwrap_or(true);
        let workload = pod_ref
            .as_ref()
            .map(|(ns, name)| format!("{ns}/{name}"))
            .unwrap_or_default();
        for address in &endpoint.addresses {
            out.push(pb::Endpoint {
                address: address.clone(),
                ports: ports.clone(),
                identity: identity.clone(),
                ready,
                workload: workload.clone(),
            });
        }
    }
}

fn is_meshed(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(STATUS_ANNOTATION))
}

fn attached_routes(
    state: &State,
    last_good: &mut LastGood,
    problems: &mut Vec<Problem>,
) -> HashMap<NamespacedName, Vec<pb::HttpRoute>> {
    last_good
        .routes
        .retain(|key, _| state.http_routes.contains_key(key));
    let mut attached: HashMap<NamespacedName, Vec<(Age, pb::HttpRoute)>> = HashMap::new();
    for (key, route) in &state.http_routes {
        let converted = match convert::http_route(route) {
            Ok(converted) => {
                last_good.routes.insert(key.clone(), converted.clone());
                converted
            }
            Err(errors) => {
                let kept = last_good.routes.get(key).cloned();
                report(problems, "HTTPRoute", key, &errors, kept.is_some());
                match kept {
                    Some(kept) => kept,
                    None => continue,
                }
            }
        };
        let age = (route.metadata.creation_timestamp.clone(), key.clone());
        for (service, route) in converted {
            attached
                .entry(service)
                .or_default()
                .push((age.clone(), route));
        }
    }
    attached
        .into_iter()
        .map(|(service, mut routes)| {
            routes.sort_by(|a, b| a.0.cmp(&b.0));
            (service, routes.into_iter().map(|(_, r)| r).collect())
        })
        .collect()
}

fn traffic_policies(
    state: &State,
    last_good: &mut LastGood,
    problems: &mut Vec<Problem>,
) -> HashMap<NamespacedName, pb::TrafficPolicy> {
    last_good
        .traffic
        .retain(|key, _| state.traffic_policies.contains_key(key));
    let mut by_service: BTreeMap<NamespacedName, Vec<(Age, pb::TrafficPolicy)>> = BTreeMap::new();
    for (key, policy) in &state.traffic_policies {
        let converted = match convert::traffic_policy(policy) {
            Ok(converted) => {
                last_good.traffic.insert(key.clone(), converted.clone());
                converted
            }
            Err(errors) => {
                let kept = last_good.traffic.get(key).cloned();
                report(problems, "TrafficPolicy", key, &errors, kept.is_some());
                match kept {
                    Some(kept) => kept,
                    None => continue,
                }
            }
        };
        let service = (key.0.clone(), policy.spec.target_ref.name.clone());
        let age = (policy.metadata.creation_timestamp.clone(), key.clone());
        by_service
            .entry(service)
            .or_default()
            .push((age, converted));
    }
    by_service
        .into_iter()
        .map(|(service, mut policies)| {
            policies.sort_by(|a, b| a.0.cmp(&b.0));
            for ((_, loser), _) in &policies[1..] {
                let error = FieldError {
                    field: "spec.targetRef".into(),
                    message: format!(
                        "Service {}/{} already has an older TrafficPolicy ({}); this one is ignored",
                        service.0, service.1, policies[0].0 .1 .1
                    ),
                };
                problems.push(object_problem("TrafficPolicy", loser, &error, false));
            }
            let (_, winner) = policies.swap_remove(0);
            (service, winner)
        })
        .collect()
}

fn report(
    problems: &mut Vec<Problem>,
    kind: &str,
    key: &NamespacedName,
    errors: &[FieldError],
    kept: bool,
) {
    for error in errors {
        problems.push(object_problem(kind, key, error, kept));
    }
}
