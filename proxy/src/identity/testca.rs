//! A throwaway certificate authority for tests: roots, intermediates and workload
//! certificates minted with rcgen, any URI SANs, any validity. Used by the unit tests and,
//! through `#[path]`, by `proxy/tests/identity.rs` (so it only uses external crates).
#![allow(dead_code)]

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};

pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// This CA's certificate.
    pub cert: CertificateDer<'static>,
    /// Intermediates between this CA and the root, nearest first (empty for a root).
    parents: Vec<CertificateDer<'static>>,
    /// The self-signed root at the top.
    pub root: CertificateDer<'static>,
}

/// A workload certificate and its key.
#[derive(Clone)]
pub struct Leaf {
    /// Leaf first, then intermediates (never the root).
    pub chain: Vec<CertificateDer<'static>>,
    pub key_pkcs8: Vec<u8>,
}

fn at(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

pub fn hours(n: u64) -> Duration {
    Duration::from_secs(n * 3600)
}

impl Leaf {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_pkcs8.clone().into())
    }

    pub fn chain_pem(&self) -> String {
        self.chain.iter().map(|c| pem("CERTIFICATE", c)).collect()
    }

    pub fn key_pem(&self) -> String {
        pem("PRIVATE KEY", &self.key_pkcs8)
    }
}

pub fn pem(label: &str, der: &[u8]) -> String {
    use std::fmt::Write as _;
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        let _ = writeln!(out, "{}", std::str::from_utf8(line).unwrap());
    }
    let _ = writeln!(out, "-----END {label}-----");
    out
}

fn new_key() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generate P-256 key")
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = at(now - hours(24));
    params.not_after = at(now + hours(24 * 365));
    params
}

impl TestCa {
    /// A self-signed root.
    pub fn new(name: &str) -> TestCa {
        let key = new_key();
        let params = ca_params(name);
        let cert = params
            .self_signed(&key)
            .expect("self-sign root")
            .der()
            .clone();
        TestCa {
            issuer: Issuer::new(params, key),
            cert: cert.clone(),
            parents: Vec::new(),
            root: cert,
        }
    }

    /// An intermediate CA under this one.
    pub fn intermediate(&self, name: &str) -> TestCa {
        let key = new_key();
        let params = ca_params(name);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign intermediate")
            .der()
            .clone();
        TestCa {
            issuer: Issuer::new(params, key),
            cert,
            parents: self.chain_above(),
            root: self.root.clone(),
        }
    }

    /// The certificates a leaf of this CA carries after itself.
    fn chain_above(&self) -> Vec<CertificateDer<'static>> {
        if self.cert == self.root {
            Vec::new()
        } else {
            std::iter::once(self.cert.clone())
                .chain(self.parents.iter().cloned())
                .collect()
        }
    }

    pub fn root_pem(&self) -> String {
        pem("CERTIFICATE", &self.root)
    }

    /// A workload certificate valid from an hour ago for two hours, with these URI SANs.
    pub fn leaf(&self, uris: &[&str]) -> Leaf {
        let now = SystemTime::now();
        self.leaf_valid(uris, now - hours(1), now + hours(1))
    }

    pub fn leaf_valid(&self, uris: &[&str], not_before: SystemTime, not_after: SystemTime) -> Leaf {
        self.leaf_with(uris, not_before, not_after, None)
    }

    /// A leaf listing only these extended key usages (a mesh certificate needs both).
    pub fn leaf_usages(&self, uris: &[&str], usages: Vec<ExtendedKeyUsagePurpose>) -> Leaf {
        let now = SystemTime::now();
        self.leaf_with(uris, now - hours(1), now + hours(1), Some(usages))
    }

    fn leaf_with(
        &self,
        uris: &[&str],
        not_before: SystemTime,
        not_after: SystemTime,
        usages: Option<Vec<ExtendedKeyUsagePurpose>>,
    ) -> Leaf {
        let key = new_key();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().expect("IA5 URI")))
            .collect();
        self.finish(&mut params, not_before, not_after);
        if let Some(usages) = usages {
            params.extended_key_usages = usages;
        }
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Leaf {
            chain: std::iter::once(cert.der().clone())
                .chain(self.chain_above())
                .collect(),
            key_pkcs8: key.serialize_der(),
        }
    }

    /// Signs a CSR as a control plane would; the CSR's SANs are kept. Returns the chain.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        lifetime: Duration,
    ) -> Result<Vec<CertificateDer<'static>>, String> {
        let der = CertificateSigningRequestDer::from(csr_der.to_vec());
        let mut csr = CertificateSigningRequestParams::from_der(&der).map_err(|e| e.to_string())?;
        let now = SystemTime::now();
        self.finish(
            &mut csr.params,
            now - Duration::from_secs(60),
            now + lifetime,
        );
        let cert = csr.signed_by(&self.issuer).map_err(|e| e.to_string())?;
        Ok(std::iter::once(cert.der().clone())
            .chain(self.chain_above())
            .collect())
    }

    fn finish(
        &self,
        params: &mut CertificateParams,
        not_before: SystemTime,
        not_after: SystemTime,
    ) {
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = at(not_before);
        params.not_after = at(not_after);
    }
}
