//! Identity metrics, under `weft_identity_`:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `weft_identity_cert_expiration_timestamp_seconds` | gauge | — (0 until the first certificate) |
//! | `weft_identity_renewals_total` | counter | `result` (`ok`/`error`): certificates obtained from the control plane, or certificate files (re)loaded |
//!
//! An alert on `weft_identity_cert_expiration_timestamp_seconds - time() < 3600` catches a
//! proxy whose renewals have been failing for most of a certificate's lifetime.

use std::time::SystemTime;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug)]
pub struct IdentityMetrics {
    expiry: Gauge,
    renewals: Family<ResultLabels, Counter>,
}

impl IdentityMetrics {
    /// Creates the families and registers them under `weft_identity_`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = IdentityMetrics {
            expiry: Gauge::default(),
            renewals: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("weft_identity");
        r.register(
            "cert_expiration_timestamp_seconds",
            "When the workload certificate expires, in seconds since the Unix epoch",
            m.expiry.clone(),
        );
        r.register(
            "renewals",
            "Workload certificates obtained or reloaded, by result",
            m.renewals.clone(),
        );
        m
    }

    pub fn renewed(&self, not_after: SystemTime) {
        let secs = not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        self.expiry.set(secs);
        self.renewals
            .get_or_create(&ResultLabels { result: "ok" })
            .inc();
    }

    pub fn failed(&self) {
        self.renewals
            .get_or_create(&ResultLabels { result: "error" })
            .inc();
    }

    #[cfg(test)]
    pub(crate) fn count(&self, result: &'static str) -> u64 {
        self.renewals.get_or_create(&ResultLabels { result }).get()
    }
}
