//! The CA's validity, for operators: `/debug/ca` (and `weftctl check`) and, read at each
//! scrape from the issuer in use:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `weft_cp_ca_issuer_expiration_timestamp_seconds` | gauge | — |
//! | `weft_cp_ca_trust_anchor_expiration_timestamp_seconds` | gauge | — (the earliest root of the trust bundle) |
//!
//! Workload certificates are clamped to the issuer's expiry, so an issuer a day from expiry
//! hands out certificates that expire with it: alert well before,
//! e.g. `weft_cp_ca_issuer_expiration_timestamp_seconds - time() < 30 * 86400`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::{Authority, Ca};

/// What `/debug/ca` shows.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaStatus {
    pub issuer: CertStatus,
    /// Whether the issuer is a root itself (local mode) rather than an intermediate.
    pub issuer_is_root: bool,
    /// The roots of the trust bundle proxies verify against, in file order.
    pub trust_anchors: Vec<CertStatus>,
    /// How long workload certificates are issued for (at most until the issuer expires).
    pub workload_cert_lifetime_seconds: u64,
    /// The control plane's clock, which the expiry times are to be compared with.
    pub now_unix: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertStatus {
    pub subject: String,
    pub not_after_unix: u64,
}

impl CaStatus {
    pub fn of(ca: &Ca) -> CaStatus {
        let authority = ca.authority();
        CaStatus {
            issuer: CertStatus {
                subject: authority.issuer_subject().to_owned(),
                not_after_unix: unix(authority.issuer_not_after()),
            },
            issuer_is_root: authority.issuer_is_root(),
            trust_anchors: trust_anchors(&authority),
            workload_cert_lifetime_seconds: ca.lifetime().as_secs(),
            now_unix: unix(SystemTime::now()),
        }
    }
}

fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The bundle's roots with their expiry. The bundle was parsed when it was loaded, so a
/// certificate that doesn't parse here cannot happen; it would be shown as expired.
fn trust_anchors(authority: &Authority) -> Vec<CertStatus> {
    authority
        .trust_bundle()
        .iter()
        .map(|der| match x509_parser::parse_x509_certificate(der) {
            Ok((_, cert)) => CertStatus {
                subject: cert.subject().to_string(),
                not_after_unix: u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0),
            },
            Err(_) => CertStatus {
                subject: "(unparsable certificate)".into(),
                not_after_unix: 0,
            },
        })
        .collect()
}

/// The `weft_cp_ca_*` gauges, computed at each scrape from the issuer in use.
pub struct CaCollector {
    ca: Arc<Ca>,
}

impl CaCollector {
    pub fn new(ca: Arc<Ca>) -> Self {
        CaCollector { ca }
    }
}

impl std::fmt::Debug for CaCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaCollector").finish_non_exhaustive()
    }
}

impl Collector for CaCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = CaStatus::of(&self.ca);
        let gauge = |secs: u64| ConstGauge::new(i64::try_from(secs).unwrap_or(i64::MAX));
        gauge(status.issuer.not_after_unix).encode(encoder.encode_descriptor(
            "weft_cp_ca_issuer_expiration_timestamp_seconds",
            "When the issuer that signs workload certificates expires, in seconds since the Unix epoch",
            None,
            MetricType::Gauge,
        )?)?;
        if let Some(first) = status.trust_anchors.iter().map(|a| a.not_after_unix).min() {
            gauge(first).encode(encoder.encode_descriptor(
                "weft_cp_ca_trust_anchor_expiration_timestamp_seconds",
                "When the first root of the trust bundle expires, in seconds since the Unix epoch",
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}
