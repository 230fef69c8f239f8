//! A test PKI: a CA per test, leaf certificates with SPIFFE IDs (or deliberately wrong ones),
//! written to files in the layout `weft-proxy`'s files identity mode reads.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

use super::TempDir;

pub const TRUST_DOMAIN: &str = "test.local";

pub fn spiffe(ns: &str, sa: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/{sa}")
}

pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert_pem = params.self_signed(&key).unwrap().pem();
        TestCa {
            issuer: Issuer::new(params, key),
            cert_pem,
        }
    }

    /// A leaf for `id`, valid from an hour ago for a day.
    pub fn issue(&self, id: &str) -> Leaf {
        let now = OffsetDateTime::now_utc();
        self.issue_with(
            vec![SanType::URI(id.try_into().unwrap())],
            now - Duration::hours(1),
            now + Duration::days(1),
        )
    }

    pub fn issue_with(
        &self,
        sans: Vec<SanType>,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        leaf_params(&mut params, not_before, not_after);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Signs a certificate signing request as a control plane does: the names the CSR asks
    /// for, valid from a minute ago for an hour. Returns the leaf's DER.
    pub fn sign_csr(&self, csr_der: &[u8]) -> Result<Vec<u8>, String> {
        let der = CertificateSigningRequestDer::from(csr_der.to_vec());
        let mut csr = CertificateSigningRequestParams::from_der(&der).map_err(|e| e.to_string())?;
        let now = OffsetDateTime::now_utc();
        leaf_params(
            &mut csr.params,
            now - Duration::minutes(1),
            now + Duration::hours(1),
        );
        let cert = csr.signed_by(&self.issuer).map_err(|e| e.to_string())?;
        Ok(cert.der().to_vec())
    }

    pub fn root_der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).unwrap()
    }
}

fn leaf_params(
    params: &mut CertificateParams,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) {
    params.is_ca = IsCa::ExplicitNoCa;
    params.not_before = not_before;
    params.not_after = not_after;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
}

pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Leaf {
    pub fn chain_der(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap()
    }

    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap()
    }
}

/// A workload's certificate, key and trust bundle on disk.
pub struct IdentityFiles {
    _dir: TempDir,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
}

impl IdentityFiles {
    pub fn new(leaf: &Leaf, bundle: &[&TestCa]) -> IdentityFiles {
        let dir = TempDir::new();
        let (cert, key, bundle_path) = (
            dir.path().join("cert.pem"),
            dir.path().join("key.pem"),
            dir.path().join("bundle.pem"),
        );
        std::fs::write(&cert, &leaf.cert_pem).unwrap();
        std::fs::write(&key, &leaf.key_pem).unwrap();
        let roots: String = bundle.iter().map(|ca| ca.cert_pem.as_str()).collect();
        std::fs::write(&bundle_path, roots).unwrap();
        IdentityFiles {
            _dir: dir,
            cert,
            key,
            bundle: bundle_path,
        }
    }

    /// The proxy flags for files mode.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--identity-cert".into(),
            self.cert.display().to_string(),
            "--identity-key".into(),
            self.key.display().to_string(),
            "--identity-trust-bundle".into(),
            self.bundle.display().to_string(),
        ]
    }
}
