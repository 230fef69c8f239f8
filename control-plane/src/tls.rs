//! The control plane's own TLS: TLS 1.3 only, ALPN `h2`, a client certificate optional (a
//! proxy has none before its first Certify; Subscribe requires one, checked against the
//! current trust bundle). The server certificate is issued by our own CA to the
//! control plane's SPIFFE ID, with a fresh in-memory key, and renewed at half its lifetime
//! or as soon as the CA's issuer is replaced. Proxies verify it against the trust bundle and
//! check that its URI SAN is the control plane's identity; it carries no DNS name.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rcgen::KeyPair;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::sync::watch;
use weft_api::SpiffeId;

use weft_tls::{BundleCell, ClientIdVerifier, TrustBundle};

use crate::ca::{Ca, CaError};

/// The ring provider, explicitly: no reliance on a process-wide default.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The current serving certificate; swapped in place, so new handshakes get the new one and
/// established connections are untouched.
#[derive(Debug)]
pub(crate) struct ServingCert {
    current: RwLock<Arc<CertifiedKey>>,
    not_after: RwLock<SystemTime>,
}

impl ServingCert {
    pub(crate) fn issue(ca: &Ca, identity: &SpiffeId) -> Result<Self, CaError> {
        let (key, not_after) = issue(ca, identity)?;
        Ok(ServingCert {
            current: RwLock::new(key),
            not_after: RwLock::new(not_after),
        })
    }

    fn renew(&self, ca: &Ca, identity: &SpiffeId) -> Result<SystemTime, CaError> {
        let (key, not_after) = issue(ca, identity)?;
        *self.current.write().expect("not poisoned") = key;
        *self.not_after.write().expect("not poisoned") = not_after;
        Ok(not_after)
    }

    pub(crate) fn not_after(&self) -> SystemTime {
        *self.not_after.read().expect("not poisoned")
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("not poisoned").clone())
    }
}

fn issue(ca: &Ca, identity: &SpiffeId) -> Result<(Arc<CertifiedKey>, SystemTime), CaError> {
    let failed = |reason: String| CaError::Sign {
        identity: identity.to_string(),
        reason,
    };
    let key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| failed(e.to_string()))?;
    let issued = ca.issue_for_key(&key, identity)?;
    let signing_key = provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            key.serialize_der(),
        )))
        .map_err(|e| failed(e.to_string()))?;
    Ok((
        Arc::new(CertifiedKey::new(issued.chain, signing_key)),
        issued.not_after,
    ))
}

pub(crate) fn server_config(cert: Arc<ServingCert>, bundle: BundleCell) -> ServerConfig {
    let provider = provider();
    let verifier = Arc::new(ClientIdVerifier::optional(bundle, &provider));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

/// The trust bundle client certificates are checked against, as rustls verifiers want it.
pub(crate) fn client_bundle(ca: &Ca) -> Result<BundleCell, CaError> {
    let bundle = trust_bundle(ca)?;
    Ok(Arc::new(arc_swap::ArcSwapOption::from_pointee(bundle)))
}

fn trust_bundle(ca: &Ca) -> Result<TrustBundle, CaError> {
    TrustBundle::new(ca.authority().trust_bundle().to_vec(), &provider()).map_err(|e| {
        CaError::Sign {
            identity: "trust bundle".into(),
            reason: e.to_string(),
        }
    })
}

/// Swaps the bundle whenever the CA's changes (a rotation adds a root).
pub(crate) async fn follow_bundle(bundle: BundleCell, ca: Arc<Ca>) {
    let mut changes = ca.subscribe();
    while changes.changed().await.is_ok() {
        match trust_bundle(&ca) {
            Ok(new) => bundle.store(Some(Arc::new(new))),
            Err(error) => tracing::error!(%error, "new trust bundle unusable; keeping the old one"),
        }
    }
}

/// Keeps `cert` fresh until `stop` fires: renews at half the remaining lifetime, at once
/// when the CA's issuer changes, and retries a failed renewal every few seconds (the old
/// certificate stays in use meanwhile).
pub(crate) async fn renew_until(
    cert: Arc<ServingCert>,
    ca: Arc<Ca>,
    identity: SpiffeId,
    mut stop: watch::Receiver<bool>,
) {
    let mut issuer_changes = ca.subscribe();
    issuer_changes.mark_unchanged();
    let mut wait = renew_after(cert.not_after());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = issuer_changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = crate::server::stopped(&mut stop) => return,
        }
        wait = match cert.renew(&ca, &identity) {
            Ok(not_after) => {
                tracing::info!(
                    %identity,
                    not_after = %humantime::format_rfc3339_seconds(not_after),
                    "control plane serving certificate renewed"
                );
                renew_after(not_after)
            }
            Err(error) => {
                tracing::error!(%error, "renewing the control plane's serving certificate failed; retrying");
                Duration::from_secs(5)
            }
        };
    }
}

fn renew_after(not_after: SystemTime) -> Duration {
    let left = not_after
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    (left / 2).max(Duration::from_millis(500))
}
