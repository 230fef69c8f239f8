//! The identity CA: signs workload certificates whose only name is a SPIFFE ID.
//!
//! Every chain handed out is exactly `[leaf, issuer]`. When the issuer is an intermediate,
//! that is the chain a peer needs to reach a root of the trust bundle; when the issuer is a
//! root itself (local mode), the root rides along in the chain, which peers ignore — one
//! shape for both cases keeps clients simple.
//!
//! The issuer can be replaced while running ([`Ca::replace`]) for trust-anchor rotation:
//! add the new root to the bundle, switch to an issuer under the new root, then drop the
//! old root. Each issuance uses one [`Authority`] snapshot for both the chain and the
//! bundle it returns.

mod authority;
mod csr;
mod error;
pub mod local;
pub mod metrics;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    PublicKeyData, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use tokio::sync::watch;
use weft_api::SpiffeId;

pub use authority::Authority;
pub use error::CaError;

/// Clocks in a cluster disagree a little; a certificate valid from a minute ago works on a
/// peer whose clock is behind.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The default certificate lifetime.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A signed certificate and what a proxy needs with it.
#[derive(Debug, Clone)]
pub struct Issued {
    /// `[leaf, issuer]`, DER.
    pub chain: Vec<CertificateDer<'static>>,
    /// The roots peers' certificates chain to.
    pub trust_bundle: Vec<CertificateDer<'static>>,
    pub not_after: SystemTime,
}

/// The CA. Cheap to share behind an `Arc`.
pub struct Ca {
    authority: watch::Sender<Arc<Authority>>,
    lifetime: Duration,
}

impl Ca {
    /// `lifetime` is how long each certificate is valid (clamped to the issuer's own expiry).
    pub fn new(authority: Authority, lifetime: Duration) -> Self {
        Ca {
            authority: watch::Sender::new(Arc::new(authority)),
            lifetime,
        }
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The current issuer and trust bundle.
    pub fn authority(&self) -> Arc<Authority> {
        self.authority.borrow().clone()
    }

    /// Switches to a new issuer and/or trust bundle; certificates issued from now on use it.
    pub fn replace(&self, authority: Authority) {
        tracing::info!(
            issuer = authority.issuer_subject(),
            roots = authority.trust_bundle().len(),
            "CA issuer and trust bundle replaced"
        );
        self.authority.send_replace(Arc::new(authority));
    }

    /// Notified whenever [`Ca::replace`] runs.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Authority>> {
        self.authority.subscribe()
    }

    /// Checks a proxy's CSR (`csr_der`, PKCS#10) and signs a certificate for `identity`.
    pub fn sign(&self, csr_der: &[u8], identity: &SpiffeId) -> Result<Issued, CaError> {
        let key = csr::check(csr_der, identity)?;
        self.issue(&key, identity)
    }

    /// Signs a certificate for `identity` over a key the caller holds (the control plane's
    /// own serving certificate).
    pub fn issue_for_key(&self, key: &KeyPair, identity: &SpiffeId) -> Result<Issued, CaError> {
        self.issue(key, identity)
    }

    fn issue(&self, key: &impl PublicKeyData, identity: &SpiffeId) -> Result<Issued, CaError> {
        let authority = self.authority();
        let failed = |reason: String| CaError::Sign {
            identity: identity.to_string(),
            reason,
        };
        let now = SystemTime::now();
        let not_after = round_up_to_second(now + self.lifetime).min(authority.issuer_not_after());
        let mut params = CertificateParams::default();
        // No subject: the URI SAN is the name (and rcgen marks it critical, as RFC 5280
        // requires for an empty subject).
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            identity
                .as_str()
                .try_into()
                .map_err(|e: rcgen::Error| failed(e.to_string()))?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial().map_err(failed)?);
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = not_after.into();
        let leaf = params
            .signed_by(key, &authority.issuer)
            .map_err(|e| failed(e.to_string()))?;
        Ok(Issued {
            chain: vec![leaf.der().clone(), authority.issuer_cert().clone()],
            trust_bundle: authority.trust_bundle().to_vec(),
            not_after,
        })
    }
}

/// 16 random bytes, positive and without a leading zero byte.
fn random_serial() -> Result<SerialNumber, String> {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| "the system random number generator failed".to_string())?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// X.509 times have whole seconds; round up so a certificate is never valid for less than
/// its lifetime and the reported expiry is the real one.
fn round_up_to_second(t: SystemTime) -> SystemTime {
    let since = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = since.as_secs() + u64::from(since.subsec_nanos() > 0);
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}
