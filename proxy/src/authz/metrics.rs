//! `weft_authz_decisions_total{target, policy, decision}`: every inbound request (and opaque
//! connection) decided with a view, by the policy that decided it (`namespace/name` or
//! `default`) and `decision` — `allow`, `deny`, or what was recorded without being enforced:
//! `audit` (an AUDIT policy matched) and `dry_run_deny` (a dry-run policy would have denied).
//!
//! The labels are bounded by the pod's ports and the policies that select it; callers and
//! paths go to the log line, never into a label.

use std::sync::{Mutex, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use weft_api::authz::DecidedBy;

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
        self.counter(target, policy, decision).inc();
    }

    fn counter(&self, target: &str, policy: String, decision: &'static str) -> Counter {
        self.decisions
            .get_or_create(&DecisionLabels {
                target: target.to_owned(),
                policy,
                decision,
            })
            .clone()
    }
}

/// One connection's `allow` counters, by the policy that decided. An allowed request, the
/// common case, is counted without formatting the policy's label and looking the label set
/// up in the family, which was most of what authorization cost per request.
#[derive(Debug, Default)]
pub(super) struct AllowCounters(Mutex<Vec<(DecidedBy, Counter)>>);

impl AllowCounters {
    /// Deciders remembered per connection. A connection sees one or two; one that outlives
    /// many policy changes has the others counted without the shortcut.
    const MAX: usize = 8;

    /// Counts a request `decided_by` allowed, on `target`.
    pub(super) fn count(&self, metrics: &AuthzMetrics, target: &str, decided_by: &DecidedBy) {
        let mut known = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, counter)) = known.iter().find(|(by, _)| by == decided_by) {
            counter.inc();
            return;
        }
        let counter = metrics.counter(target, decided_by.label(), "allow");
        counter.inc();
        if known.len() < Self::MAX {
            known.push((decided_by.clone(), counter));
        }
    }
}

#[cfg(test)]
mod tests {
    use weft_api::authz::{DefaultPolicy, PolicyRef};

    use super::*;

    #[test]
    fn allowed_requests_count_by_deciding_policy() {
        let mut registry = Registry::default();
        let metrics = AuthzMetrics::new(&mut registry);
        let policy = |name: &str| {
            DecidedBy::Policy(PolicyRef {
                namespace: "shop".into(),
                name: name.into(),
            })
        };
        let counters = AllowCounters::default();
        let mut decided = vec![
            policy("a"),
            policy("a"),
            policy("b"),
            // Both are labelled `default`.
            DecidedBy::Default(DefaultPolicy::Allow),
            DecidedBy::Default(DefaultPolicy::Authenticated),
        ];
        // More deciders than are remembered, each twice.
        for i in 0..AllowCounters::MAX + 2 {
            decided.push(policy(&format!("p{i}")));
            decided.push(policy(&format!("p{i}")));
        }
        for by in &decided {
            counters.count(&metrics, "app", by);
        }
        // Another connection to the same target adds to the same series.
        AllowCounters::default().count(&metrics, "app", &policy("a"));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let line = |policy: &str, n: u32| {
            format!(
                "weft_authz_decisions_total{{target=\"app\",policy=\"{policy}\",decision=\"allow\"}} {n}\n"
            )
        };
        let mut expected = vec![line("shop/a", 3), line("shop/b", 1), line("default", 2)];
        expected.extend((0..AllowCounters::MAX + 2).map(|i| line(&format!("shop/p{i}"), 2)));
        for line in &expected {
            assert!(text.contains(line.as_str()), "missing {line} in\n{text}");
        }
        let series = text
            .lines()
            .filter(|l| l.starts_with("weft_authz_decisions_total{"))
            .count();
        assert_eq!(series, expected.len(), "{text}");
    }
}
