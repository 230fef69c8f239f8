//! The SPIFFE ID a certificate names: its leaf's one URI SAN, and nothing else (no DNS names,
//! no subject).

use rustls::pki_types::CertificateDer;
use weft_api::SpiffeId;
use x509_parser::extensions::GeneralName;

/// Why a certificate does not name one SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeafError {
    #[error("the certificate is not valid DER X.509")]
    BadDer,
    #[error("the certificate has no URI SAN, so it names no SPIFFE ID")]
    NoUriSan,
    #[error("the certificate has {0} URI SANs; a SPIFFE certificate has exactly one")]
    SeveralUriSans(usize),
    #[error("the certificate's URI SAN is not a SPIFFE ID: {0}")]
    NotSpiffe(#[from] weft_api::IdentityError),
}

/// The SPIFFE ID a certificate names: its one URI SAN.
pub fn leaf_identity(der: &CertificateDer<'_>) -> Result<SpiffeId, LeafError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| LeafError::BadDer)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| LeafError::BadDer)?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(LeafError::NoUriSan),
        [uri] => Ok(uri.parse()?),
        several => Err(LeafError::SeveralUriSans(several.len())),
    }
}

/// The caller's SPIFFE ID from its verified certificate chain (the leaf's single URI SAN).
/// `None` for an empty chain or a leaf that does not name exactly one SPIFFE ID — which the
/// inbound verifier already refuses, so after a handshake this is always `Some`.
pub fn peer_identity(certs: &[CertificateDer<'_>]) -> Option<SpiffeId> {
    leaf_identity(certs.first()?).ok()
}
