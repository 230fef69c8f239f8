//! Who is subscribed, what each was sent and what each acknowledged — for `/debug/proxies`,
//! `weftctl check` and the `weft_cp_*` metrics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry as Metrics;
use weft_api::proto::discovery::v1::{Ack, Hello};
use weft_api::SpiffeId;

/// One subscribed proxy as the admin endpoint shows it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriberInfo {
    pub namespace: String,
    pub pod: String,
    pub identity: String,
    pub proxy_version: String,
    /// Whether it takes the outbound part as per-Service deltas (false: a proxy built
    /// before them, sent the whole outbound view on every change).
    pub outbound_deltas: bool,
    pub remote: Option<String>,
    pub connected_at_unix: u64,
    pub sent_version: String,
    pub acked_version: String,
    /// The last NACK's reason, if the proxy rejected its latest update.
    pub rejected: Option<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartLabel {
    part: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// How an update carried the outbound part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sync {
    /// The whole view, to a proxy that doesn't take deltas.
    Whole,
    /// Every Service, to a proxy that had no set this control plane could build on.
    Full,
    /// The Services changed since the version the proxy had.
    Delta,
}

impl Sync {
    fn label(self) -> &'static str {
        match self {
            Sync::Whole => "whole",
            Sync::Full => "full",
            Sync::Delta => "delta",
        }
    }
}

/// One update as sent (once, however many messages it took).
#[derive(Debug)]
pub(super) struct Sent<'a> {
    pub version: &'a str,
    pub inbound: bool,
    pub outbound: Option<Sync>,
}

/// The push server's metrics.
#[derive(Clone)]
pub struct DiscoveryMetrics {
    subscribers: Gauge,
    pushes: Family<PartLabel, Counter>,
    outbound_syncs: Family<KindLabel, Counter>,
    acks: Family<ResultLabel, Counter>,
    ack_latency: Histogram,
}

impl DiscoveryMetrics {
    pub fn register(metrics: &mut Metrics) -> Self {
        let this = DiscoveryMetrics {
            subscribers: Gauge::default(),
            pushes: Family::default(),
            outbound_syncs: Family::default(),
            acks: Family::default(),
            // 1 ms .. ~16 s.
            ack_latency: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
        };
        metrics.register(
            "weft_cp_subscribers",
            "Proxies subscribed to their view",
            this.subscribers.clone(),
        );
        metrics.register(
            "weft_cp_pushes",
            "View parts sent to proxies (part: inbound, outbound)",
            this.pushes.clone(),
        );
        metrics.register(
            "weft_cp_outbound_syncs",
            "Outbound parts sent, by form (kind: delta, full, whole); a full sync or a whole \
             view costs the size of the mesh, a delta what changed",
            this.outbound_syncs.clone(),
        );
        metrics.register(
            "weft_cp_acks",
            "Updates proxies acknowledged (result: applied) or rejected (result: rejected)",
            this.acks.clone(),
        );
        metrics.register(
            "weft_cp_push_ack_seconds",
            "Time from sending an update until the proxy acknowledged it",
            this.ack_latency.clone(),
        );
        this
    }
}

struct Entry {
    info: SubscriberInfo,
    sent_at: Option<(String, Instant)>,
}

/// Every open subscription.
pub struct Registry {
    next_id: AtomicU64,
    entries: Mutex<BTreeMap<u64, Entry>>,
    metrics: DiscoveryMetrics,
}

impl Registry {
    pub fn new(metrics: DiscoveryMetrics) -> Self {
        Registry {
            next_id: AtomicU64::new(0),
            entries: Mutex::new(BTreeMap::new()),
            metrics,
        }
    }

    pub fn subscribers(&self) -> Vec<SubscriberInfo> {
        self.lock().values().map(|e| e.info.clone()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        // Poisoned only by a panic while holding it; the map is still consistent.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn register(
        self: &Arc<Self>,
        hello: &Hello,
        identity: &SpiffeId,
        remote: Option<SocketAddr>,
    ) -> Handle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let info = SubscriberInfo {
            namespace: hello.namespace.clone(),
            pod: hello.pod.clone(),
            identity: identity.to_string(),
            proxy_version: hello.proxy_version.clone(),
            outbound_deltas: hello.outbound_deltas,
            remote: remote.map(|r| r.to_string()),
            connected_at_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            sent_version: String::new(),
            acked_version: hello.current_version.clone(),
            rejected: None,
        };
        self.lock().insert(
            id,
            Entry {
                info,
                sent_at: None,
            },
        );
        self.metrics.subscribers.inc();
        Handle {
            id,
            workload: format!("{}/{}", hello.namespace, hello.pod),
            registry: self.clone(),
        }
    }
}

/// A subscription's entry; removed when dropped.
pub(super) struct Handle {
    id: u64,
    workload: String,
    registry: Arc<Registry>,
}

impl Handle {
    pub fn workload(&self) -> &str {
        &self.workload
    }

    pub fn sent(&self, update: &Sent<'_>) {
        let metrics = &self.registry.metrics;
        if update.inbound {
            metrics
                .pushes
                .get_or_create(&PartLabel { part: "inbound" })
                .inc();
        }
        if let Some(sync) = update.outbound {
            metrics
                .pushes
                .get_or_create(&PartLabel { part: "outbound" })
                .inc();
            metrics
                .outbound_syncs
                .get_or_create(&KindLabel { kind: sync.label() })
                .inc();
        }
        if let Some(entry) = self.registry.lock().get_mut(&self.id) {
            entry.info.sent_version = update.version.to_owned();
            entry.sent_at = Some((update.version.to_owned(), Instant::now()));
        }
    }

    pub fn acked(&self, ack: &Ack) {
        let metrics = &self.registry.metrics;
        let mut entries = self.registry.lock();
        let Some(entry) = entries.get_mut(&self.id) else {
            return;
        };
        if let Some((version, at)) = &entry.sent_at {
            if *version == ack.version {
                metrics.ack_latency.observe(at.elapsed().as_secs_f64());
            }
        }
        if ack.error.is_empty() {
            metrics
                .acks
                .get_or_create(&ResultLabel { result: "applied" })
                .inc();
            entry.info.acked_version = ack.version.clone();
            entry.info.rejected = None;
        } else {
            metrics
                .acks
                .get_or_create(&ResultLabel { result: "rejected" })
                .inc();
            tracing::warn!(workload = %self.workload, version = %ack.version, error = %ack.error,
                "proxy rejected its view; it keeps enforcing the previous one");
            entry.info.rejected = Some(ack.error.clone());
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if self.registry.lock().remove(&self.id).is_some() {
            self.registry.metrics.subscribers.dec();
        }
        tracing::info!(workload = %self.workload, "proxy unsubscribed");
    }
}
