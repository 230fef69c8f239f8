//! `weft_authz_decisions_total{target, policy, decision}`: every inbound request (and opaque
//! connection) decided with a view, by the policy that decided it (`namespace/name` or
//! `default`) and `decision` — `allow`, `deny`, or what was recorded without being enforced:
//! `audit` (an AUDIT policy matched) and `dry_run_deny` (a dry-run policy would have denied).
//!
//! The labels are bounded by the pod's ports and the policies that select it; callers and
//! paths go to the log line, never into a label.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    target: String,
    policy: String,
    decision: &'static str,
}

#[derive(Clone, Debug, Default)]
pub struct AuthzMetrics {
    decisions: Family<DecisionLabels, Counter>,
}

impl AuthzMetrics {
    /// Creates the family and registers it as `weft_authz_decisions_total`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = AuthzMetrics::default();
        registry.sub_registry_with_prefix("weft_authz").register(
            "decisions",
            "Authorization decisions on inbound requests and connections, by deciding policy",
            m.decisions.clone(),
        );
        m
    }

    pub fn count(&self, target: &str, policy: String, decision: &'static str) {
        self.decisions
            .get_or_create(&DecisionLabels {
                target: target.to_owned(),
                policy,
                decision,
            })
            .inc();
    }
}
