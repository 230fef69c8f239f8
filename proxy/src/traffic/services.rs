//! The Services the proxy can call, compiled from the outbound view: looked up by cluster IP
//! and port (transparent mode) or host name and port (local mode), and by namespace, name
//! and port (a route's backendRefs).
//!
//! A new view builds a new table, but what was learned survives it: an endpoint whose
//! address and identity are unchanged keeps its `Arc` (its latency estimate, outlier state
//! and in-flight count), and a Service keeps its circuit breaker (limits updated in place)
//! and its retry budget (unless the budget's settings changed). In-flight requests hold the
//! old table and finish on it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use weft_api::proto::discovery::v1 as pb;
use weft_api::SpiffeId;

use super::balance::{Balancer, Endpoint, LoadBalancer};
use super::breaker::{Limits, ServiceBreaker};
use super::budget::RetryBudget;
use super::outlier::OutlierConfig;
use super::policy::TrafficSettings;
use super::route::{RouteError, RouteTable};

/// `(namespace, name, port)`.
type PortKey = (String, String, u16);

/// Every callable Service port.
#[derive(Debug, Default)]
pub struct ServiceTable {
    by_addr: HashMap<SocketAddr, Arc<Target>>,
    by_host: HashMap<(String, u16), Arc<Target>>,
    by_name: HashMap<PortKey, Arc<Target>>,
}

/// What the Service's ports share: its settings and the state that protects it.
#[derive(Debug)]
pub struct ServiceState {
    pub namespace: String,
    pub name: String,
    pub settings: TrafficSettings,
    pub breaker: Arc<ServiceBreaker>,
    pub budget: Arc<RetryBudget>,
    pub balancer: Balancer,
}

/// One port of a Service: where a call to it goes.
#[derive(Debug)]
pub struct Target {
    pub service: Arc<ServiceState>,
    pub port: u16,
    /// `namespace/name:port`, the `target` metric label.
    pub label: String,
    pub routes: RouteTable,
    /// The endpoints, at the port this Service port maps to on each.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// The identity every endpoint presents, when they share one (the usual case: one
    /// service account behind a Service): the `server_id` label of calls to it, known
    /// before the balancer picks an endpoint.
    pub identity: Option<SpiffeId>,
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("Service {service}: {source}")]
    Route { service: String, source: RouteError },
}

impl ServiceTable {
    /// The Service port at a cluster IP and port.
    pub fn by_addr(&self, addr: SocketAddr) -> Option<&Arc<Target>> {
        self.by_addr.get(&addr)
    }

    /// The Service port a host name (`orders.shop.svc.cluster.local`, `orders.shop`) names.
    pub fn by_host(&self, host: &str, port: u16) -> Option<&Arc<Target>> {
        let host = host.strip_suffix('.').unwrap_or(host);
        self.by_host.get(&(host.to_ascii_lowercase(), port))
    }

    /// A route's backend.
    pub fn by_name(&self, namespace: &str, name: &str, port: u16) -> Option<&Arc<Target>> {
        self.by_name
            .get(&(namespace.to_owned(), name.to_owned(), port))
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Every Service port, in no particular order (for metrics).
    pub fn targets(&self) -> impl Iterator<Item = &Arc<Target>> {
        self.by_name.values()
    }

    /// Compiles `outbound`, keeping what `previous` learned about unchanged endpoints and
    /// Services. Fails (and the caller keeps `previous`) when a route cannot be used.
    pub fn build(
        outbound: &pb::Outbound,
        previous: &ServiceTable,
    ) -> Result<ServiceTable, TableError> {
        let mut table = ServiceTable::default();
        for service in &outbound.services {
            let state = Arc::new(service_state(service, previous));
            for port in &service.ports {
                let Ok(number) = u16::try_from(port.port) else {
                    continue;
                };
                let key = (service.namespace.clone(), service.name.clone(), number);
                let routes = RouteTable::compile(&service.routes, number).map_err(|source| {
                    TableError::Route {
                        service: format!("{}/{}", service.namespace, service.name),
                        source,
                    }
                })?;
                let old = previous.by_name.get(&key);
                let endpoints = endpoints(service, port, old.map(|t| t.endpoints.as_slice()));
                let identity = shared_identity(&endpoints);
                let target = Arc::new(Target {
                    service: state.clone(),
                    port: number,
                    label: format!("{}/{}:{number}", service.namespace, service.name),
                    routes,
                    endpoints,
                    identity,
                });
                for ip in &service.cluster_ips {
                    if let Ok(ip) = ip.parse::<IpAddr>() {
                        table
                            .by_addr
                            .insert(SocketAddr::new(ip, number), target.clone());
                    }
                }
                for host in &service.hostnames {
                    table
                        .by_host
                        .insert((host.to_ascii_lowercase(), number), target.clone());
                }
                table.by_name.insert(key, target);
            }
        }
        Ok(table)
    }
}

fn service_state(service: &pb::Service, previous: &ServiceTable) -> ServiceState {
    let settings = TrafficSettings::from_proto(service.traffic_policy.as_ref());
    let old = previous
        .by_name
        .iter()
        .find(|((ns, name, _), _)| *ns == service.namespace && *name == service.name)
        .map(|(_, target)| &target.service);
    let limits = Limits::from_proto(settings.circuit_breaker.as_ref());
    let breaker = match old {
        Some(old) => {
            old.breaker.update(limits);
            old.breaker.clone()
        }
        None => Arc::new(ServiceBreaker::new(limits)),
    };
    let budget = match old {
        Some(old) if old.settings.retry.budget == settings.retry.budget => old.budget.clone(),
        _ => Arc::new(RetryBudget::new(settings.retry.budget)),
    };
    let mut balancer = Balancer::new(LoadBalancer::from_proto(settings.load_balancer as i32))
        .with_outlier(OutlierConfig::from_proto(
            settings.outlier_detection.as_ref(),
        ));
    if let Some(old) = old {
        balancer = balancer.continuing(&old.balancer);
    }
    ServiceState {
        namespace: service.namespace.clone(),
        name: service.name.clone(),
        settings,
        breaker,
        budget,
        balancer,
    }
}

fn shared_identity(endpoints: &[Arc<Endpoint>]) -> Option<SpiffeId> {
    let first = endpoints.first()?.identity.clone()?;
    endpoints
        .iter()
        .all(|e| e.identity.as_ref() == Some(&first))
        .then_some(first)
}

/// The Service port's endpoints: each address at the port the EndpointSlice names for this
/// Service port (by port name), else the Service's numeric target port.
fn endpoints(
    service: &pb::Service,
    port: &pb::ServicePort,
    previous: Option<&[Arc<Endpoint>]>,
) -> Vec<Arc<Endpoint>> {
    let mut out = Vec::with_capacity(service.endpoints.len());
    for endpoint in &service.endpoints {
        let Ok(ip) = endpoint.address.parse::<IpAddr>() else {
            continue;
        };
        let named = endpoint
            .ports
            .iter()
            .find(|p| p.name == port.name)
            .or_else(|| (endpoint.ports.len() == 1).then(|| &endpoint.ports[0]))
            .map(|p| p.port)
            .unwrap_or(port.target_port);
        let Ok(number) = u16::try_from(named) else {
            continue;
        };
        if number == 0 {
            continue;
        }
        let addr = SocketAddr::new(ip, number);
        // An identity that does not parse is not trusted as "no identity" (plaintext): the
        // endpoint is skipped instead.
        let identity = match endpoint.identity.as_str() {
            "" => None,
            text => match text.parse::<SpiffeId>() {
                Ok(id) => Some(id),
                Err(error) => {
                    tracing::warn!(%addr, %error, "skipping an endpoint with an invalid identity");
                    continue;
                }
            },
        };
        let reused = previous.and_then(|old| {
            old.iter()
                .find(|e| e.addr == addr && e.identity == identity)
                .cloned()
        });
        let endpoint_state = reused.unwrap_or_else(|| Endpoint::new(addr, identity));
        endpoint_state.set_ready(endpoint.ready);
        out.push(endpoint_state);
    }
    out
}
