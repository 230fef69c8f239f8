//! The issuer (certificate + key) and the trust bundle, loaded and checked together: the
//! key must belong to the certificate, the certificate must be a CA that is valid now, and it
//! must be a root of the bundle or be signed directly by one. Catching a mismatch here turns
//! "every proxy fails its handshakes" into one clear error at start.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::CaError;

/// An issuer and the trust bundle its certificates are verified against.
pub struct Authority {
    pub(super) issuer: Issuer<'static, KeyPair>,
    issuer_der: CertificateDer<'static>,
    issuer_subject: String,
    issuer_not_after: SystemTime,
    self_signed: bool,
    bundle: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("issuer", &self.issuer_subject)
            .field("self_signed", &self.self_signed)
            .field("roots", &self.bundle.len())
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Loads the issuer certificate (PEM; the first certificate in the file is the issuer),
    /// its key (PEM, PKCS#8) and the trust bundle (PEM, one or more roots).
    pub fn load(cert_path: &Path, key_path: &Path, bundle_path: &Path) -> Result<Self, CaError> {
        let cert = read_certs(cert_path)?;
        if cert.len() > 1 {
            tracing::warn!(
                path = %cert_path.display(),
                extra = cert.len() - 1,
                "the issuer certificate file holds more than one certificate; the first is the \
                 issuer and the others are ignored (the chain handed out is leaf + issuer)"
            );
        }
        let key = parse_key(&read(key_path)?, key_path)?;
        let bundle = read_certs(bundle_path)?;
        let issuer = cert
            .into_iter()
            .next()
            .expect("read_certs returns at least one");
        Self::new(issuer, key, bundle).map_err(|e| match e {
            CaError::BadIssuer { subject, reason } => CaError::BadFile {
                path: cert_path.to_owned(),
                reason: format!(
                    "the issuer \"{subject}\" (key {}, trust bundle {}): {reason}",
                    key_path.display(),
                    bundle_path.display()
                ),
            },
            other => other,
        })
    }

    /// The same from PEM text in memory (tests, rotation).
    pub fn from_pem(cert_pem: &str, key_pem: &str, bundle_pem: &str) -> Result<Self, CaError> {
        let label = Path::new("<issuer certificate>");
        let issuer = parse_certs(cert_pem.as_bytes(), label)?.remove(0);
        let key = parse_key(key_pem.as_bytes(), Path::new("<issuer key>"))?;
        let bundle = parse_certs(bundle_pem.as_bytes(), Path::new("<trust bundle>"))?;
        Self::new(issuer, key, bundle)
    }

    /// Checks that `key` belongs to `issuer_der`, that the issuer is a CA valid now, and that
    /// it is a root of `bundle` or is signed directly by one.
    pub fn new(
        issuer_der: CertificateDer<'static>,
        key: KeyPair,
        bundle: Vec<CertificateDer<'static>>,
    ) -> Result<Self, CaError> {
        let (_, cert) = X509Certificate::from_der(&issuer_der).map_err(|e| CaError::BadIssuer {
            subject: "?".into(),
            reason: format!("the certificate does not parse: {e}"),
        })?;
        let subject = cert.subject().to_string();
        let bad = |reason: String| CaError::BadIssuer {
            subject: subject.clone(),
            reason,
        };
        if !cert.is_ca() {
            return Err(bad(
                "it is not a CA certificate (basicConstraints cA is not set)".into(),
            ));
        }
        if let Ok(Some(usage)) = cert.key_usage() {
            if !usage.value.key_cert_sign() {
                return Err(bad(
                    "its key usage does not allow signing certificates".into()
                ));
            }
        }
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(bad(
                "the private key does not belong to this certificate".into()
            ));
        }
        let now = SystemTime::now();
        let not_before = to_system_time(cert.validity().not_before.timestamp());
        let not_after = to_system_time(cert.validity().not_after.timestamp());
        if now > not_after {
            return Err(bad(format!("it expired at {}", cert.validity().not_after)));
        }
        if now < not_before {
            return Err(bad(format!(
                "it is not valid until {}",
                cert.validity().not_before
            )));
        }
        if bundle.is_empty() {
            return Err(bad("the trust bundle is empty".into()));
        }
        let mut roots = Vec::with_capacity(bundle.len());
        for (i, der) in bundle.iter().enumerate() {
            let (_, root) = X509Certificate::from_der(der).map_err(|e| {
                bad(format!(
                    "trust bundle certificate #{} does not parse: {e}",
                    i + 1
                ))
            })?;
            roots.push(root);
        }
        let self_signed = cert.subject() == cert.issuer() && cert.verify_signature(None).is_ok();
        let chains = if self_signed {
            bundle
                .iter()
                .any(|root| root.as_ref() == issuer_der.as_ref())
        } else {
            roots.iter().any(|root| {
                root.subject() == cert.issuer()
                    && cert.verify_signature(Some(root.public_key())).is_ok()
            })
        };
        if !chains {
            let held: Vec<String> = roots.iter().map(|r| r.subject().to_string()).collect();
            return Err(bad(format!(
                "it {} in the trust bundle, which holds [{}]",
                if self_signed {
                    "is a self-signed root that is not".to_string()
                } else {
                    format!("is signed by \"{}\", which is not a root", cert.issuer())
                },
                held.join("; ")
            )));
        }
        let issuer = Issuer::from_ca_cert_der(&issuer_der, key).map_err(|e| bad(e.to_string()))?;
        Ok(Authority {
            issuer,
            issuer_subject: subject,
            issuer_not_after: not_after,
            self_signed,
            issuer_der,
            bundle,
        })
    }

    /// The issuer's certificate: the second (and last) certificate of every chain handed out.
    pub fn issuer_cert(&self) -> &CertificateDer<'static> {
        &self.issuer_der
    }

    /// Whether the issuer is a root itself. The chain is leaf + issuer either way; a peer
    /// that finds the root in its chain simply ignores it.
    pub fn issuer_is_root(&self) -> bool {
        self.self_signed
    }

    pub fn issuer_subject(&self) -> &str {
        &self.issuer_subject
    }

    pub fn issuer_not_after(&self) -> SystemTime {
        self.issuer_not_after
    }

    /// The roots peers' certificates must chain to, in file order.
    pub fn trust_bundle(&self) -> &[CertificateDer<'static>] {
        &self.bundle
    }

    /// The trust bundle as PEM, for proxies started by hand or by tests.
    pub fn trust_bundle_pem(&self) -> String {
        certs_to_pem(&self.bundle)
    }
}

fn certs_to_pem(certs: &[CertificateDer<'_>]) -> String {
    certs
        .iter()
        .map(|c| pem_block("CERTIFICATE", c.as_ref()))
        .collect()
}

fn pem_block(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn read(path: &Path) -> Result<Vec<u8>, CaError> {
    std::fs::read(path).map_err(|source| CaError::Read {
        path: path.to_owned(),
        source,
    })
}

pub(super) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaError> {
    parse_certs(&read(path)?, path)
}

pub(super) fn parse_certs(
    pem: &[u8],
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaError::bad_file(path, format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(CaError::bad_file(path, "holds no CERTIFICATE PEM block"));
    }
    for (i, cert) in certs.iter().enumerate() {
        X509Certificate::from_der(cert).map_err(|e| {
            CaError::bad_file(path, format!("certificate #{} does not parse: {e}", i + 1))
        })?;
    }
    Ok(certs)
}

pub(super) fn parse_key(pem: &[u8], path: &Path) -> Result<KeyPair, CaError> {
    let key = PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| CaError::bad_file(path, format!("holds no private key PEM block ({e})")))?;
    match &key {
        PrivateKeyDer::Pkcs8(_) => KeyPair::try_from(&key)
            .map_err(|e| CaError::bad_file(path, format!("unusable private key: {e}"))),
        _ => Err(CaError::bad_file(
            path,
            "the key is not PKCS#8 (\"BEGIN PRIVATE KEY\"); convert it with \
             `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pkcs8`",
        )),
    }
}

fn to_system_time(unix_seconds: i64) -> SystemTime {
    if unix_seconds >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix_seconds as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(unix_seconds.unsigned_abs())
    }
}
