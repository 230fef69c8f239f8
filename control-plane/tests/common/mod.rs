//! Helpers shared by the control plane's integration tests: CSRs, token files, CAs made
//! with rcgen, and checks of what the control plane hands out.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::{CertificateDer, UnixTime};
use weft_api::proto::identity::v1::{CertifyRequest, CertifyResponse};
use weft_api::SpiffeId;
use weft_control_plane::{AuthSource, CaSource, Config, Running};
use weft_tls::TrustBundle;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

pub const ORDERS_TOKEN: &str = "token-orders-7f3a";
pub const WEB_TOKEN: &str = "token-web-19c2";

pub fn orders_id() -> SpiffeId {
    "spiffe://cluster.local/ns/shop/sa/orders".parse().unwrap()
}

pub fn web_id() -> SpiffeId {
    "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap()
}

/// A token file holding `entries` of (token, namespace, service account).
pub fn write_tokens(path: &Path, entries: &[(&str, &str, &str)]) {
    let mut yaml = String::from("tokens:\n");
    for (token, ns, sa) in entries {
        yaml.push_str(&format!(
            "  - token: \"{token}\"\n    namespace: {ns}\n    serviceAccount: {sa}\n"
        ));
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A temporary directory with a token file for orders and web.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
        };
        write_tokens(
            &env.tokens(),
            &[(ORDERS_TOKEN, "shop", "orders"), (WEB_TOKEN, "shop", "web")],
        );
        env
    }

    pub fn tokens(&self) -> PathBuf {
        self.dir.path().join("tokens.yaml")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn config(&self) -> Config {
        Config::local(self.state(), self.tokens())
    }

    pub async fn start(&self) -> Running {
        weft_control_plane::start(self.config()).await.unwrap()
    }
}

/// A PKCS#10 CSR over `key` asking for `sans`.
pub fn csr(key: &KeyPair, sans: Vec<SanType>) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params.serialize_request(key).unwrap().der().to_vec()
}

pub fn uri(text: &str) -> SanType {
    SanType::URI(text.try_into().unwrap())
}

pub fn p256() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

pub fn request(identity: &SpiffeId, token: &str, csr_der: Vec<u8>) -> CertifyRequest {
    CertifyRequest {
        identity: identity.to_string(),
        token: token.into(),
        csr_der,
    }
}

/// Certify with a fresh P-256 key asking for exactly `identity`.
pub async fn certify(
    running: &Running,
    identity: &SpiffeId,
    token: &str,
) -> Result<CertifyResponse, tonic::Status> {
    let key = p256();
    let mut client = running.client().await.unwrap();
    client
        .certify(request(
            identity,
            token,
            csr(&key, vec![uri(identity.as_str())]),
        ))
        .await
        .map(|r| r.into_inner())
}

pub fn ders(list: &[Vec<u8>]) -> Vec<CertificateDer<'static>> {
    list.iter()
        .map(|d| CertificateDer::from(d.clone()))
        .collect()
}

/// Verifies `chain` (leaf first) against `bundle` as a TLS peer would (with the trust bundle
/// proxies verify with), for server and client use, and checks everything the leaf must be.
/// Returns the leaf's validity in Unix seconds.
pub fn check_leaf(chain: &[Vec<u8>], bundle: &[Vec<u8>], identity: &SpiffeId) -> (i64, i64) {
    assert_eq!(chain.len(), 2, "the chain is leaf + issuer");
    let chain = ders(chain);
    TrustBundle::new(ders(bundle), &weft_control_plane::provider())
        .expect("a usable trust bundle")
        .check_usable(&chain, UnixTime::now())
        .expect("the leaf chains to the trust bundle for server and client auth");

    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    let names = &leaf
        .subject_alternative_name()
        .unwrap()
        .expect("a SAN extension")
        .value
        .general_names;
    assert_eq!(names.len(), 1, "exactly one SAN: {names:?}");
    match &names[0] {
        GeneralName::URI(u) => assert_eq!(*u, identity.as_str()),
        other => panic!("the SAN is {other:?}"),
    }
    assert!(!leaf.is_ca());
    let usage = leaf.key_usage().unwrap().expect("key usage").value;
    assert!(usage.digital_signature());
    assert!(!usage.key_cert_sign());
    let eku = leaf.extended_key_usage().unwrap().expect("EKU").value;
    assert!(eku.server_auth && eku.client_auth);
    let spki = leaf.public_key();
    assert_eq!(
        spki.algorithm.algorithm,
        x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
    );
    assert_eq!(
        spki.algorithm
            .parameters
            .as_ref()
            .unwrap()
            .as_oid()
            .unwrap(),
        x509_parser::oid_registry::OID_EC_P256
    );
    (
        leaf.validity().not_before.timestamp(),
        leaf.validity().not_after.timestamp(),
    )
}

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A CA certificate (root when `parent` is None) and its key, as PEM.
pub struct TestCa {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    params: CertificateParams,
    key: KeyPair,
}

impl TestCa {
    pub fn root(name: &str) -> Self {
        Self::make(name, None)
    }

    pub fn intermediate(name: &str, parent: &TestCa) -> Self {
        Self::make(name, Some(parent))
    }

    fn make(name: &str, parent: Option<&TestCa>) -> Self {
        let key = p256();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(30);
        let cert = match parent {
            None => params.self_signed(&key).unwrap(),
            Some(parent) => {
                let issuer = rcgen::Issuer::from_params(&parent.params, &parent.key);
                params.signed_by(&key, &issuer).unwrap()
            }
        };
        TestCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            params,
            key,
        }
    }

    /// Writes `issuer.crt`, `issuer.key` into `dir` and returns a Files source with the
    /// given bundle.
    pub fn files(&self, dir: &Path, bundle: &[&TestCa]) -> CaSource {
        let cert = dir.join("issuer.crt");
        let key = dir.join("issuer.key");
        let bundle_path = dir.join("bundle.pem");
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        std::fs::write(&bundle_path, bundle_pem(bundle)).unwrap();
        CaSource::Files {
            issuer_cert: cert,
            issuer_key: key,
            trust_bundle: bundle_path,
        }
    }
}

pub fn bundle_pem(roots: &[&TestCa]) -> String {
    roots.iter().map(|r| r.cert_pem.as_str()).collect()
}

/// Polls `check` every 20 ms until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn files_config(env: &Env, source: CaSource) -> Config {
    Config {
        ca: source,
        auth: AuthSource::TokenFile(env.tokens()),
        ..env.config()
    }
}
