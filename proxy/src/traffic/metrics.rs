//! The state of traffic management, read from the current view's Service table at each
//! scrape: endpoints by state (ejection), circuit-breaker occupancy, retry budgets, and the
//! balancers' counts. Nothing on the request path pays for it. (What the request path counts
//! itself — retries, budget exhaustion, breaker overflows, route matches — is in
//! [`crate::metrics`].)
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `weft_balancer_endpoints` | gauge | `target`, `state` (`serving`, `ejected`, `not_ready`) |
//! | `weft_balancer_panics_total` | counter | `service` |
//! | `weft_outlier_ejections_total` | counter | `service` |
//! | `weft_circuit_breaker_requests` | gauge | `service` (requests admitted and in flight) |
//! | `weft_circuit_breaker_max_requests` | gauge | `service` |
//! | `weft_retry_budget_available` | gauge | `service` (whole retries the budget allows now) |
//!
//! `target` is a Service port (`namespace/name:port`), as on the request metrics; `service`
//! is `namespace/name` for what a Service's ports share. Both are bounded by the Services in
//! the mesh's view.

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use tokio::time::Instant;

use super::balance::Endpoint;
use super::outlier::OutlierStatus;
use super::services::ServiceState;
use crate::discovery::ViewStore;

/// Registered once per proxy with discovery: reads whatever view is current when scraped.
pub struct TrafficCollector {
    views: Arc<ViewStore>,
}

impl std::fmt::Debug for TrafficCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrafficCollector").finish_non_exhaustive()
    }
}

impl TrafficCollector {
    pub fn new(views: Arc<ViewStore>) -> Self {
        TrafficCollector { views }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    target: String,
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

/// One scrape's figures, gathered before any is written (the format groups by family).
#[derive(Default)]
struct Figures {
    endpoints: Vec<(EndpointLabels, i64)>,
    /// By `namespace/name`: each Service once, though each of its ports points to it.
    services: BTreeMap<String, ServiceFigures>,
}

struct ServiceFigures {
    panics: u64,
    ejections: u64,
    breaker_requests: i64,
    breaker_max_requests: i64,
    budget_available: i64,
}

impl ServiceFigures {
    fn of(service: &ServiceState, now: Instant) -> Self {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        ServiceFigures {
            panics: service.balancer.panics(),
            ejections: service.balancer.ejections(),
            breaker_requests: gauge(service.breaker.requests()),
            breaker_max_requests: gauge(service.breaker.limits().max_requests),
            budget_available: i64::try_from(service.budget.available(now)).unwrap_or(i64::MAX),
        }
    }
}

fn endpoint_state(endpoint: &Endpoint, now: Instant) -> &'static str {
    if !endpoint.is_ready() {
        return "not_ready";
    }
    match endpoint.outlier_status(now) {
        OutlierStatus::Healthy { .. } => "serving",
        OutlierStatus::Ejected { .. } | OutlierStatus::Probation { .. } => "ejected",
    }
}

impl Figures {
    fn gather(views: &ViewStore) -> Figures {
        let mut figures = Figures::default();
        let Some(view) = views.load_full() else {
            return figures;
        };
        let now = Instant::now();
        let mut targets: Vec<_> = view.services.targets().collect();
        targets.sort_by(|a, b| a.label.cmp(&b.label));
        for target in targets {
            let mut counts = [("serving", 0), ("ejected", 0), ("not_ready", 0)];
            for endpoint in &target.endpoints {
                let state = endpoint_state(endpoint, now);
                if let Some(count) = counts.iter_mut().find(|(s, _)| *s == state) {
                    count.1 += 1;
                }
            }
            for (state, count) in counts {
                let labels = EndpointLabels {
                    target: target.label.clone(),
                    state,
                };
                figures.endpoints.push((labels, count));
            }
            let service = &target.service;
            figures
                .services
                .entry(format!("{}/{}", service.namespace, service.name))
                .or_insert_with(|| ServiceFigures::of(service, now));
        }
        figures
    }
}

impl Collector for TrafficCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let figures = Figures::gather(&self.views);
        if figures.endpoints.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "weft_balancer_endpoints",
            "Endpoints of a Service port by state: serving, ejected (outlier ejection or probation), not_ready",
            None,
            MetricType::Gauge,
        )?;
        for (labels, count) in &figures.endpoints {
            ConstGauge::new(*count).encode(family.encode_family(labels)?)?;
        }
        type Pick = fn(&ServiceFigures) -> i64;
        let counters: [(&str, &str, fn(&ServiceFigures) -> u64); 2] = [
            (
                "weft_balancer_panics",
                "Requests for which no endpoint was eligible, so the balancer chose among all ready endpoints ignoring ejection",
                |f| f.panics,
            ),
            (
                "weft_outlier_ejections",
                "Endpoints ejected after consecutive failures",
                |f| f.ejections,
            ),
        ];
        for (name, help, pick) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (service, figures) in &figures.services {
                let labels = ServiceLabels {
                    service: service.clone(),
                };
                ConstCounter::new(pick(figures)).encode(family.encode_family(&labels)?)?;
            }
        }
        let gauges: [(&str, &str, Pick); 3] = [
            (
                "weft_circuit_breaker_requests",
                "Requests the Service's circuit breaker has admitted and that are in flight",
                |f| f.breaker_requests,
            ),
            (
                "weft_circuit_breaker_max_requests",
                "The circuit breaker's limit on requests in flight",
                |f| f.breaker_max_requests,
            ),
            (
                "weft_retry_budget_available",
                "Retries the Service's retry budget would allow now",
                |f| f.budget_available,
            ),
        ];
        for (name, help, pick) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (service, figures) in &figures.services {
                let labels = ServiceLabels {
                    service: service.clone(),
                };
                ConstGauge::new(pick(figures)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;
    use weft_api::proto::discovery::v1 as pb;

    use super::*;

    fn endpoint(address: &str, ready: bool) -> pb::Endpoint {
        pb::Endpoint {
            address: address.into(),
            ready,
            ..Default::default()
        }
    }

    fn update(version: &str) -> pb::ViewUpdate {
        let port = |port: u32| pb::ServicePort {
            port,
            target_port: 8080,
            ..Default::default()
        };
        pb::ViewUpdate {
            version: version.into(),
            inbound: Some(pb::Inbound::default()),
            outbound: Some(pb::Outbound {
                services: vec![pb::Service {
                    namespace: "shop".into(),
                    name: "orders".into(),
                    ports: vec![port(80), port(81)],
                    endpoints: vec![endpoint("10.0.0.1", true), endpoint("10.0.0.2", false)],
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }
    }

    fn scrape(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn reports_the_current_views_services_once_each() {
        let views = Arc::new(ViewStore::new());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(TrafficCollector::new(views.clone())));
        assert_eq!(
            scrape(&registry),
            "# EOF\n",
            "nothing before the first view"
        );

        views.apply(update("1")).unwrap();
        let text = scrape(&registry);
        for line in [
            r#"weft_balancer_endpoints{target="shop/orders:80",state="serving"} 1"#,
            r#"weft_balancer_endpoints{target="shop/orders:80",state="ejected"} 0"#,
            r#"weft_balancer_endpoints{target="shop/orders:81",state="not_ready"} 1"#,
            r#"weft_balancer_panics_total{service="shop/orders"} 0"#,
            r#"weft_outlier_ejections_total{service="shop/orders"} 0"#,
            r#"weft_circuit_breaker_requests{service="shop/orders"} 0"#,
            r#"weft_circuit_breaker_max_requests{service="shop/orders"} "#,
            r#"weft_retry_budget_available{service="shop/orders"} "#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert_eq!(text.matches("weft_balancer_panics_total{").count(), 1);
    }
}
