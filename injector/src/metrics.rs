//! The injector's Prometheus metrics (`/metrics`). Labels are bounded: a sidecar mode, a skip
//! reason or an error kind, never a pod or namespace name.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::review::Outcome;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SidecarLabels {
    sidecar: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Handles to every metric; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    injections: Family<SidecarLabels, Counter>,
    skips: Family<ReasonLabels, Counter>,
    errors: Family<KindLabels, Counter>,
    duration: Histogram,
    cert_reloads: Family<ResultLabels, Counter>,
    cert_expiry: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("weft_injector");
        let injections = Family::<SidecarLabels, Counter>::default();
        registry.register(
            "injections",
            "Pods injected, by sidecar mode (native or classic)",
            injections.clone(),
        );
        let skips = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "skips",
            "Reviews allowed without injection, by reason (disabled, host_network, already_injected, not_selected, not_pod_create)",
            skips.clone(),
        );
        let errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "errors",
            "Failures, by kind: bad_review and body_too_large (HTTP 400/413), invalid_annotation (pod refused), unreadable_pod and internal (pod admitted without the sidecar)",
            errors.clone(),
        );
        // 50 µs to ~0.8 s.
        let duration = Histogram::new(exponential_buckets(0.00005, 2.0, 15));
        registry.register(
            "review_duration_seconds",
            "Time to answer a review, from the complete body to the response body",
            duration.clone(),
        );
        let cert_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "cert_reloads",
            "Serving certificate reloads (result ok or error; an error keeps the last good certificate)",
            cert_reloads.clone(),
        );
        let cert_expiry = Gauge::default();
        registry.register(
            "cert_expiration_timestamp_seconds",
            "When the serving certificate in use expires (Unix time)",
            cert_expiry.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            injections,
            skips,
            errors,
            duration,
            cert_reloads,
            cert_expiry,
        }
    }

    /// Counts one answered review.
    pub fn answered(&self, outcome: &Outcome, took: Duration) {
        self.duration.observe(took.as_secs_f64());
        match outcome {
            Outcome::Injected(mode) => {
                let sidecar = match mode {
                    crate::SidecarMode::Native => "native",
                    crate::SidecarMode::Classic => "classic",
                };
                self.injections
                    .get_or_create(&SidecarLabels { sidecar })
                    .inc();
            }
            Outcome::Skipped(reason) => {
                self.skips.get_or_create(&ReasonLabels { reason }).inc();
            }
            Outcome::Denied(_) => self.error("invalid_annotation"),
            Outcome::Failed { kind, .. } => self.error(kind),
        }
    }

    /// Counts an error of this kind.
    pub fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&KindLabels { kind }).inc();
    }

    /// Records a certificate load or reload.
    pub fn cert_loaded(&self, not_after: Option<SystemTime>) {
        self.cert_reloads
            .get_or_create(&ResultLabels { result: "ok" })
            .inc();
        if let Some(t) = not_after.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()) {
            self.cert_expiry.set(t.as_secs() as i64);
        }
    }

    /// Records a reload that failed (the last good certificate stays).
    pub fn cert_failed(&self) {
        self.cert_reloads
            .get_or_create(&ResultLabels { result: "error" })
            .inc();
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
