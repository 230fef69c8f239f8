//! Discovery metrics, under `weft_discovery_`:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `weft_discovery_connected` | gauge | — (1 while the stream to the control plane is open) |
//! | `weft_discovery_updates_total` | counter | `result` (`applied`/`rejected`) |
//! | `weft_discovery_reconnects_total` | counter | — |
//! | `weft_discovery_last_update_timestamp_seconds` | gauge | — (when the current view was applied; 0 before) |
//! | `weft_discovery_view_info` | gauge | `version` (1 for the version enforced now; one series) |
//!
//! `time() - weft_discovery_last_update_timestamp_seconds` alone says little (a quiet mesh
//! sends no updates); alert on `weft_discovery_connected == 0` for a while, or on rejected
//! updates, which mean this proxy enforces an older policy than the control plane wants.

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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

#[derive(Clone, Debug, Default)]
pub struct DiscoveryMetrics {
    connected: Gauge,
    updates: Family<ResultLabels, Counter>,
    reconnects: Counter,
    last_update: Gauge,
    info: Family<VersionLabels, Gauge>,
}

impl DiscoveryMetrics {
    /// Creates the families and registers them under `weft_discovery_`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = DiscoveryMetrics::default();
        let r = registry.sub_registry_with_prefix("weft_discovery");
        r.register(
            "connected",
            "1 while the stream from the control plane is open",
            m.connected.clone(),
        );
        r.register(
            "updates",
            "View updates received, by result",
            m.updates.clone(),
        );
        r.register(
            "reconnects",
            "Subscriptions opened again after the stream ended or could not be opened",
            m.reconnects.clone(),
        );
        r.register(
            "last_update_timestamp_seconds",
            "When the view enforced now was applied, in seconds since the Unix epoch",
            m.last_update.clone(),
        );
        r.register(
            "view_info",
            "The version of the view enforced now",
            m.info.clone(),
        );
        m
    }

    pub fn connected(&self, connected: bool) {
        self.connected.set(i64::from(connected));
    }

    pub fn reconnecting(&self) {
        self.reconnects.inc();
    }

    pub fn applied(&self, version: &str) {
        self.count("applied");
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        self.last_update.set(now);
        // One series: the previous version's goes.
        self.info.clear();
        self.info
            .get_or_create(&VersionLabels {
                version: version.to_owned(),
            })
            .set(1);
    }

    pub fn rejected(&self) {
        self.count("rejected");
    }

    fn count(&self, result: &'static str) {
        self.updates.get_or_create(&ResultLabels { result }).inc();
    }

    #[cfg(test)]
    pub(crate) fn updates(&self, result: &'static str) -> u64 {
        self.updates.get_or_create(&ResultLabels { result }).get()
    }

    #[cfg(test)]
    pub(crate) fn reconnects(&self) -> u64 {
        self.reconnects.get()
    }

    #[cfg(test)]
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.get() == 1
    }
}
