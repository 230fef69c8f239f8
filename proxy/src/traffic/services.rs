//! The Services the proxy can call, compiled from the outbound view: looked up by cluster IP
//! and port (transparent mode) or host name and port (local mode), and by namespace, name
//! and port (a route's backendRefs).
//!
//! A new view builds a new table, but what was learned survives it: an endpoint whose
//! address and identity are unchanged keeps its `Arc` (its latency estimate, outlier state
//! and in-flight count), and a Service keeps its circuit breaker (limits updated in place)
//! and its retry budget (unless the budget's settings changed). In-flight requests hold the
//! old table and finish on it.
//!
//! A delta from the control plane compiles what it names, not the mesh:
//! [`ServiceTable::update`] builds the Services it upserts and takes every other Service
//! over as it is, the same `Arc<Target>`s in the same index entries. Only a full sync
//! compiles every Service. When two Services claim one cluster IP or host name, see
//! [`index`] for which one answers.

mod index;
#[cfg(test)]
pub(crate) mod tests;

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
use index::Index;

/// `(namespace, name)`: a Service's key, and the order of the outbound view.
pub type ServiceKey = (String, String);

/// Every callable Service port.
///
/// `Clone` is where a delta starts: a copy of every index entry, an `Arc` and its key each,
/// with no Service compiled again. At 10,000 Services (a port, a cluster IP and three host
/// names each) that is 6 ms, clone and later drop, in a release build, against about 1 s
/// for the rebuild a one-Service delta used to cost. Simpler than sharing the maps
/// themselves between versions, and cheap enough at that size.
#[derive(Debug, Default, Clone)]
pub struct ServiceTable {
    by_addr: Index<SocketAddr>,
    by_host: Index<(String, u16)>,
    /// Every Service, also one without a usable port, so the next update continues it.
    by_name: HashMap<ServiceKey, Arc<Compiled>>,
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

/// One Service in the table: its ports, and the index keys they claim (kept to take the
/// claims back when the Service changes or goes).
#[derive(Debug)]
struct Compiled {
    state: Arc<ServiceState>,
    /// One per port number.
    targets: Vec<Arc<Target>>,
    /// Without repeats (a key is claimed once per Service).
    cluster_ips: Vec<IpAddr>,
    /// Lowercase, without repeats.
    hostnames: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// Boxed: a rejected update is rare, and every `Result` of a table carries the size.
    #[error("Service {service}: {source}")]
    Route {
        service: String,
        source: Box<RouteError>,
    },
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
        let service = self.by_name.get(&(namespace.to_owned(), name.to_owned()))?;
        service.targets.iter().find(|t| t.port == port)
    }

    pub fn is_empty(&self) -> bool {
        self.targets().next().is_none()
    }

    /// Every Service port, in no particular order (for metrics).
    pub fn targets(&self) -> impl Iterator<Item = &Arc<Target>> {
        self.by_name.values().flat_map(|s| s.targets.iter())
    }

    /// Compiles a whole outbound view, keeping what `previous` learned about unchanged
    /// endpoints and Services. Fails (and the caller keeps `previous`) when a route cannot
    /// be used.
    pub fn build(
        outbound: &pb::Outbound,
        previous: &ServiceTable,
    ) -> Result<ServiceTable, TableError> {
        ServiceTable::build_from(&outbound.services, previous)
    }

    /// [`ServiceTable::build`] from the Services of a view held in another form.
    pub fn build_from<'a>(
        services: impl IntoIterator<Item = &'a pb::Service>,
        previous: &ServiceTable,
    ) -> Result<ServiceTable, TableError> {
        let routed = services
            .into_iter()
            .map(Routed::compile)
            .collect::<Result<Vec<_>, _>>()?;
        let mut table = ServiceTable::default();
        for service in routed {
            table.insert(service.finish(previous));
        }
        Ok(table)
    }

    /// This table with the Services `removed` names taken out and `upserted` compiled in,
    /// continuing what this table learned about them; every other Service is taken over as
    /// it is. A key both removed and upserted is upserted. Fails, changing nothing, when a
    /// route of an upserted Service cannot be used.
    pub fn update<'a>(
        &self,
        upserted: impl IntoIterator<Item = &'a pb::Service>,
        removed: &[ServiceKey],
    ) -> Result<ServiceTable, TableError> {
        let routed = upserted
            .into_iter()
            .map(Routed::compile)
            .collect::<Result<Vec<_>, _>>()?;
        let mut table = self.clone();
        for key in removed {
            table.remove(key);
        }
        for service in routed {
            table.insert(service.finish(self));
        }
        Ok(table)
    }

    /// Puts `service` in, in place of the Service of that key if there is one.
    fn insert(&mut self, service: Arc<Compiled>) {
        let key = (service.state.namespace.clone(), service.state.name.clone());
        self.remove(&key);
        for target in &service.targets {
            for ip in &service.cluster_ips {
                let addr = SocketAddr::new(*ip, target.port);
                self.by_addr.claim(addr, target);
            }
            for host in &service.hostnames {
                self.by_host.claim((host.clone(), target.port), target);
            }
        }
        self.by_name.insert(key, service);
    }

    fn remove(&mut self, key: &ServiceKey) {
        let Some(service) = self.by_name.remove(key) else {
            return;
        };
        for target in &service.targets {
            for ip in &service.cluster_ips {
                let addr = SocketAddr::new(*ip, target.port);
                self.by_addr.release(&addr, &service.state);
            }
            for host in &service.hostnames {
                self.by_host
                    .release(&(host.clone(), target.port), &service.state);
            }
        }
    }
}

/// A Service whose routes compiled: the rest of building it cannot fail. All of an update's
/// routes compile before any Service's state is touched, so a rejected update leaves no
/// trace (a breaker's limits are only updated for an update that is applied).
struct Routed<'a> {
    service: &'a pb::Service,
    ports: Vec<(&'a pb::ServicePort, u16, RouteTable)>,
}

impl<'a> Routed<'a> {
    fn compile(service: &'a pb::Service) -> Result<Routed<'a>, TableError> {
        let mut ports = Vec::with_capacity(service.ports.len());
        for port in &service.ports {
            let Ok(number) = u16::try_from(port.port) else {
                continue;
            };
            let routes = RouteTable::compile(&service.routes, number).map_err(|source| {
                TableError::Route {
                    service: format!("{}/{}", service.namespace, service.name),
                    source: Box::new(source),
                }
            })?;
            ports.push((port, number, routes));
        }
        Ok(Routed { service, ports })
    }

    /// The Service, continuing what `previous` learned about it.
    fn finish(self, previous: &ServiceTable) -> Arc<Compiled> {
        let service = self.service;
        let key = (service.namespace.clone(), service.name.clone());
        let old = previous.by_name.get(&key);
        let state = Arc::new(service_state(service, old.map(|o| o.state.as_ref())));
        let mut targets: Vec<Arc<Target>> = Vec::with_capacity(self.ports.len());
        for (port, number, routes) in self.ports {
            let old_endpoints = old
                .and_then(|o| o.targets.iter().find(|t| t.port == number))
                .map(|t| t.endpoints.as_slice());
            let endpoints = endpoints(service, port, old_endpoints);
            let identity = shared_identity(&endpoints);
            // A port number listed twice: the later one, as when each overwrote the last.
            targets.retain(|t| t.port != number);
            targets.push(Arc::new(Target {
                service: state.clone(),
                port: number,
                label: format!("{}/{}:{number}", service.namespace, service.name),
                routes,
                endpoints,
                identity,
            }));
        }
        let mut cluster_ips: Vec<IpAddr> = service
            .cluster_ips
            .iter()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        cluster_ips.sort_unstable();
        cluster_ips.dedup();
        let mut hostnames: Vec<String> = service
            .hostnames
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        hostnames.sort_unstable();
        hostnames.dedup();
        Arc::new(Compiled {
            state,
            targets,
            cluster_ips,
            hostnames,
        })
    }
}

fn service_state(service: &pb::Service, old: Option<&ServiceState>) -> ServiceState {
    let settings = TrafficSettings::from_proto(service.traffic_policy.as_ref());
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
