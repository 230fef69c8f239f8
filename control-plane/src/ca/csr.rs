//! Checking a proxy's CSR: well-formed PKCS#10 with a valid self-signature, an ECDSA P-256
//! key, and no name other than the caller's own identity. Only the public key is taken from
//! the CSR; everything else in the certificate is decided by the CA.

use rcgen::{CertificateSigningRequestParams, PublicKeyData, SanType, SignatureAlgorithm};
use rustls::pki_types::CertificateSigningRequestDer;
use weft_api::SpiffeId;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    Oid, OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;

use super::CaError;

/// An uncompressed ECDSA P-256 public point (0x04 || X || Y) taken from a checked CSR.
pub(super) struct P256PublicKey(Vec<u8>);

impl PublicKeyData for P256PublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        // The key's algorithm, not the CSR's signature algorithm: rcgen writes the
        // certificate's SubjectPublicKeyInfo from this, and a P-256 key may sign its CSR with
        // SHA-384.
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// Checks `csr_der` and returns its public key.
pub(super) fn check(csr_der: &[u8], identity: &SpiffeId) -> Result<P256PublicKey, CaError> {
    let (rest, csr) = X509CertificationRequest::from_der(csr_der)
        .map_err(|e| CaError::CsrGarbled(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CaError::CsrGarbled(format!(
            "{} trailing bytes after the request",
            rest.len()
        )));
    }
    let spki = &csr.certification_request_info.subject_pki;
    let key_alg = &spki.algorithm.algorithm;
    if *key_alg != OID_KEY_TYPE_EC_PUBLIC_KEY {
        return Err(CaError::CsrKeyType(key_name(key_alg)));
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .ok_or_else(|| CaError::CsrKeyType("an EC key without a named curve".into()))?;
    if curve != OID_EC_P256 {
        return Err(CaError::CsrKeyType(curve_name(&curve)));
    }
    let point = spki.subject_public_key.data.to_vec();
    if point.len() != 65 || point[0] != 0x04 {
        return Err(CaError::CsrKeyType(
            "a P-256 key that is not an uncompressed point".into(),
        ));
    }

    // rcgen verifies the request's self-signature and reads the names it asks for.
    let params =
        CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
            .map_err(|e| CaError::CsrGarbled(e.to_string()))?;
    let names = &params.params.subject_alt_names;
    let only_identity = match names.as_slice() {
        [] => true,
        [SanType::URI(uri)] => uri.as_str() == identity.as_str(),
        _ => false,
    };
    if !only_identity {
        return Err(CaError::CsrNames {
            requested: names.iter().map(describe).collect::<Vec<_>>().join(", "),
            identity: identity.to_string(),
        });
    }
    Ok(P256PublicKey(point))
}

fn describe(name: &SanType) -> String {
    match name {
        SanType::URI(uri) => format!("URI {}", uri.as_str()),
        SanType::DnsName(dns) => format!("DNS {}", dns.as_str()),
        SanType::Rfc822Name(email) => format!("email {}", email.as_str()),
        SanType::IpAddress(ip) => format!("IP {ip}"),
        other => format!("{other:?}"),
    }
}

fn key_name(oid: &Oid<'_>) -> String {
    if *oid == OID_PKCS1_RSAENCRYPTION {
        "RSA".into()
    } else if *oid == OID_SIG_ED25519 {
        "Ed25519".into()
    } else {
        format!("of type {oid}")
    }
}

fn curve_name(oid: &Oid<'_>) -> String {
    if *oid == OID_NIST_EC_P384 {
        "ECDSA P-384".into()
    } else if *oid == OID_NIST_EC_P521 {
        "ECDSA P-521".into()
    } else {
        format!("an EC key on curve {oid}")
    }
}
