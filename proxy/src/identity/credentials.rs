//! A workload's credentials — certificate chain, private key and the trust bundle they came
//! with — checked before they are ever used: the key belongs to the leaf, the leaf names
//! exactly one SPIFFE ID, and the chain verifies against the bundle for both directions of
//! mTLS (a mesh certificate serves inbound and presents itself outbound). Whatever fails
//! here is never installed, so a bad renewal or a half-written file cannot replace good
//! credentials.
//!
//! Time is judged separately ([`Credentials::is_current`]): the chain is verified at a moment
//! inside the leaf's validity, so an expired but otherwise sound set can still be told apart
//! from a broken one. Whether such a set may be installed is the caller's policy (files mode
//! takes it when it has nothing better, so the proxy comes up not ready and recovers when the
//! file is renewed; a renewal never replaces a current certificate with it).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::sign::CertifiedKey;
use weft_api::SpiffeId;
use weft_tls::{leaf_identity, BundleError, LeafError, TrustBundle};

/// Why a set of credentials was refused.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM {what}")]
    NoPem { path: PathBuf, what: &'static str },
    #[error("{path} is not valid PEM: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("the certificate chain is empty")]
    EmptyChain,
    #[error("the trust bundle is empty")]
    EmptyBundle,
    #[error("the trust bundle holds an unusable root: {0}")]
    BadRoot(rustls::Error),
    #[error("leaf certificate: {0}")]
    Leaf(#[from] LeafError),
    #[error("the private key cannot be used: {0}")]
    Key(rustls::Error),
    #[error("the private key does not belong to the leaf certificate")]
    KeyMismatch,
    #[error("the certificate ({identity}) does not verify against its trust bundle: {reason}")]
    Untrusted { identity: SpiffeId, reason: String },
    #[error("the certificate names {got} but this proxy is {expected}")]
    WrongIdentity { expected: SpiffeId, got: SpiffeId },
    #[error(
        "the certificate for {identity} is valid from {} until {}, not now",
        humantime::format_rfc3339_seconds(*not_before),
        humantime::format_rfc3339_seconds(*not_after)
    )]
    NotCurrent {
        identity: SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    },
}

impl From<BundleError> for CredentialsError {
    fn from(error: BundleError) -> Self {
        match error {
            BundleError::Empty => CredentialsError::EmptyBundle,
            BundleError::BadRoot(e) => CredentialsError::BadRoot(e),
        }
    }
}

/// A validated certificate, its key and the bundle it chains to.
pub struct Credentials {
    pub(crate) certified: Arc<CertifiedKey>,
    pub(crate) identity: SpiffeId,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
    pub(crate) bundle: Arc<TrustBundle>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Credentials")
            .field("identity", &self.identity.as_str())
            .field(
                "not_after",
                &humantime::format_rfc3339_seconds(self.not_after),
            )
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Checks and assembles credentials; `chain` is leaf first.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundle: Arc<TrustBundle>,
        provider: &CryptoProvider,
    ) -> Result<Self, CredentialsError> {
        let leaf = chain.first().ok_or(CredentialsError::EmptyChain)?;
        let identity = leaf_identity(leaf)?;
        let (not_before, not_after) = validity(leaf)?;
        let signing_key = provider
            .key_provider
            .load_private_key(key)
            .map_err(CredentialsError::Key)?;
        let certified = CertifiedKey::new(chain, signing_key);
        certified
            .keys_match()
            .map_err(|_| CredentialsError::KeyMismatch)?;
        let now = SystemTime::now();
        let at = if not_before <= now && now < not_after {
            now
        } else {
            // Soundness apart from time: judge the chain in the middle of the leaf's life.
            not_before + not_after.duration_since(not_before).unwrap_or_default() / 2
        };
        let at = UnixTime::since_unix_epoch(
            at.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        );
        bundle
            .check_usable(&certified.cert, at)
            .map_err(|e| CredentialsError::Untrusted {
                identity: identity.clone(),
                reason: e.to_string(),
            })?;
        Ok(Credentials {
            certified: Arc::new(certified),
            identity,
            not_before,
            not_after,
            bundle,
        })
    }

    /// Reads a PEM chain, a PEM key and a PEM bundle (files mode).
    pub fn from_pem_files(
        cert: &Path,
        key: &Path,
        bundle: &Path,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, CredentialsError> {
        let chain = read_certs(cert, "certificate")?;
        let key = read_key(key)?;
        let roots = read_certs(bundle, "trust bundle root")?;
        let bundle = Arc::new(TrustBundle::new(roots, provider)?);
        Credentials::new(chain, key, bundle, provider)
    }

    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// Whether the leaf is valid now (not expired, not from the future).
    pub fn is_current(&self) -> bool {
        let now = SystemTime::now();
        self.not_before <= now && now < self.not_after
    }

    /// `Err(NotCurrent)` unless [`Credentials::is_current`].
    pub fn check_current(self) -> Result<Self, CredentialsError> {
        if self.is_current() {
            Ok(self)
        } else {
            Err(CredentialsError::NotCurrent {
                identity: self.identity.clone(),
                not_before: self.not_before,
                not_after: self.not_after,
            })
        }
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The whole validity period, `not_before` to `not_after`.
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }

    /// Whether `other` holds the same chain and bundle (a reload that changed nothing).
    pub(crate) fn same_as(&self, other: &Credentials) -> bool {
        self.certified.cert == other.certified.cert && self.bundle.roots() == other.bundle.roots()
    }
}

pub(crate) fn validity(der: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), LeafError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| LeafError::BadDer)?;
    let time = |t: i64| {
        let secs = u64::try_from(t).unwrap_or(0);
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    };
    Ok((
        time(cert.validity().not_before.timestamp()),
        time(cert.validity().not_after.timestamp()),
    ))
}

pub(crate) fn read_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, CredentialsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CredentialsError::Pem {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CredentialsError::NoPem {
            path: path.to_owned(),
            what,
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, CredentialsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => CredentialsError::NoPem {
            path: path.to_owned(),
            what: "private key",
        },
        other => CredentialsError::Pem {
            path: path.to_owned(),
            reason: other.to_string(),
        },
    })
}

fn read(path: &Path) -> Result<Vec<u8>, CredentialsError> {
    std::fs::read(path).map_err(|source| CredentialsError::Read {
        path: path.to_owned(),
        source,
    })
}
