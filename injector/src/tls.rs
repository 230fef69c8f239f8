//! The webhook's serving certificate: a PEM chain and key from files (a mounted Secret,
//! cert-manager, `weftctl install`'s generated pair), reloaded when they change.
//!
//! The files' directories are watched (`weft-fswatch`), since Secret mounts replace files by
//! renaming. Certificate and key are written one after the other, so a reload can see a new
//! certificate with the old key: such a pair fails the key check, is logged and counted, and
//! the last good pair keeps serving until the event that brings the matching file.
//! Established connections keep the certificate they were made with; new handshakes get the
//! new one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::metrics::Metrics;

/// The ring provider, explicitly: no reliance on a process-wide default.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a certificate/key pair could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate in it")]
    NoCertificate { path: PathBuf },
    #[error("{path}: not a PEM private key: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("{cert} and {key} do not go together: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error(transparent)]
    Watch(#[from] weft_fswatch::WatchError),
}

/// The certificate new handshakes get.
#[derive(Debug)]
pub struct ServingCert {
    current: ArcSwap<CertifiedKey>,
}

impl ServingCert {
    pub fn new(key: CertifiedKey) -> Self {
        ServingCert {
            current: ArcSwap::from_pointee(key),
        }
    }

    /// The pair in use.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Reads a PEM chain (leaf first) and its key, checking that they match; returns the pair
/// and the leaf's expiry when it can be read.
pub fn load(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, Option<SystemTime>), CertError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| CertError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(CertError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| CertError::Key {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    let not_after = x509_parser::parse_x509_certificate(&chain[0])
        .ok()
        .and_then(|(_, c)| {
            let secs = c.validity().not_after.timestamp();
            u64::try_from(secs)
                .ok()
                .map(|s| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s))
        });
    let pair =
        CertifiedKey::from_der(chain, private, provider).map_err(|e| CertError::Mismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
            reason: e.to_string(),
        })?;
    Ok((pair, not_after))
}

/// Loads the pair (an error fails start: better not to serve than to serve nothing), then
/// reloads it whenever the files change. The returned watcher must be kept alive.
pub fn start(
    cert: PathBuf,
    key: PathBuf,
    metrics: Metrics,
) -> Result<(Arc<ServingCert>, notify::RecommendedWatcher), CertError> {
    let provider = provider();
    // Watching starts before the first read, so a change in between is not missed.
    let (watcher, mut changes) = weft_fswatch::watch([cert.as_path(), key.as_path()])?;
    let (pair, not_after) = load(&cert, &key, &provider)?;
    metrics.cert_loaded(not_after);
    log_loaded("serving certificate loaded", &cert, not_after);
    let serving = Arc::new(ServingCert::new(pair));
    let current = serving.clone();
    tokio::spawn(async move {
        while changes.next().await.is_some() {
            match load(&cert, &key, &provider) {
                Ok((pair, not_after)) => {
                    if same(&current.current(), &pair) {
                        continue;
                    }
                    current.current.store(Arc::new(pair));
                    metrics.cert_loaded(not_after);
                    log_loaded("serving certificate reloaded", &cert, not_after);
                }
                Err(error) => {
                    metrics.cert_failed();
                    tracing::error!(%error, "serving certificate unusable; keeping the last good one");
                }
            }
        }
    });
    Ok((serving, watcher))
}

fn same(a: &CertifiedKey, b: &CertifiedKey) -> bool {
    a.cert == b.cert
}

fn log_loaded(message: &'static str, path: &Path, not_after: Option<SystemTime>) {
    let not_after = not_after
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_else(|| "unknown".into());
    tracing::info!(cert = %path.display(), %not_after, "{message}");
}
