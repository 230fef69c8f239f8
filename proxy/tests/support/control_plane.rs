//! The real control plane started in-process in local mode (its CA generated in a state
//! directory, tokens from a token file), and what tests of proxies certified by it need:
//! the proxies' flags, their identity metrics, and CA roots to rotate to.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use weft_control_plane::ca::Authority;

use super::{within, TempDir, TestProxy, WAIT};

/// The SPIFFE ID of service account `account` in namespace `shop` of the default trust
/// domain.
pub fn spiffe_id(account: &str) -> String {
    format!("spiffe://cluster.local/ns/shop/sa/{account}")
}

pub struct ControlPlane {
    pub running: weft_control_plane::Running,
    dir: TempDir,
    anchors: PathBuf,
}

impl ControlPlane {
    /// Starts a control plane on 127.0.0.1 issuing certificates valid for `lifetime` to the
    /// service accounts `accounts` of namespace `shop`.
    pub async fn start(lifetime: Duration, accounts: &[&str]) -> ControlPlane {
        let dir = TempDir::new();
        let mut tokens = String::from("tokens:\n");
        for account in accounts {
            tokens.push_str(&format!(
                "  - {{token: {account}-token, namespace: shop, serviceAccount: {account}}}\n"
            ));
        }
        let token_file = dir.path().join("tokens.yaml");
        std::fs::write(&token_file, tokens).unwrap();
        let mut config = weft_control_plane::Config::local(dir.path().join("state"), token_file);
        config.cert_lifetime = lifetime;
        let running = within(
            WAIT,
            "the control plane to start",
            weft_control_plane::start(config),
        )
        .await
        .expect("the control plane starts");
        assert!(running.addr.ip().is_loopback(), "{}", running.addr);
        let anchors = dir.path().join("anchors.pem");
        std::fs::write(&anchors, &running.bundle_pem).unwrap();
        // The proxies' token files live apart from the control plane's own files.
        std::fs::create_dir(dir.path().join("pods")).unwrap();
        ControlPlane {
            running,
            dir,
            anchors,
        }
    }

    /// The flags of a proxy in control-plane mode certified as `account` (given the trust
    /// bundle of the control plane's start as its trust anchors).
    pub fn proxy_args(&self, account: &str) -> Vec<String> {
        let token = self.dir.path().join("pods").join(account);
        std::fs::write(&token, format!("{account}-token\n")).unwrap();
        [
            "--control-plane-addr",
            &self.running.addr.to_string(),
            "--trust-anchors",
            &self.anchors.display().to_string(),
            "--namespace",
            "shop",
            "--service-account",
            account,
            "--identity-token-file",
            &token.display().to_string(),
        ]
        .map(String::from)
        .into()
    }

    /// The root the control plane generated, with its key, read from its state directory.
    pub fn root(&self) -> Root {
        Root::load(&self.dir.path().join("state"))
    }
}

/// A proxy's identity metrics at one moment.
#[derive(Debug, Default, Clone, Copy)]
pub struct Identity {
    pub renewals_ok: f64,
    pub renewals_error: f64,
    /// `weft_identity_cert_expiration_timestamp_seconds`.
    pub expiry: f64,
}

impl Identity {
    pub async fn of(proxy: &TestProxy) -> Identity {
        let m = proxy.metrics().await;
        Identity {
            renewals_ok: m.value("weft_identity_renewals_total", &[("result", "ok")]),
            renewals_error: m.value("weft_identity_renewals_total", &[("result", "error")]),
            expiry: m.value("weft_identity_cert_expiration_timestamp_seconds", &[]),
        }
    }
}

/// A root CA with its key: to make the control plane issue from it, and to sign test leaves.
pub struct Root {
    pub cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Root {
    /// A new self-signed ECDSA P-256 root, valid for a day.
    pub fn generate(name: &str) -> Root {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + time::Duration::days(1);
        let cert = params.self_signed(&key).unwrap();
        Root {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The root kept in a local-mode state directory (`ca.crt`, `ca.key`).
    pub fn load(state_dir: &Path) -> Root {
        let cert_pem = std::fs::read_to_string(state_dir.join("ca.crt")).unwrap();
        let key_pem = std::fs::read_to_string(state_dir.join("ca.key")).unwrap();
        let key = KeyPair::from_pem(&key_pem).unwrap();
        Root {
            issuer: Issuer::from_ca_cert_pem(&cert_pem, key).unwrap(),
            cert_pem,
            key_pem,
        }
    }

    pub fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).unwrap()
    }

    /// A workload certificate for `id`, valid for an hour: (certificate PEM, key PEM).
    pub fn leaf(&self, id: &str) -> (String, String) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + time::Duration::hours(1);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// The control plane's CA issuing from this root, with `bundle` as the trust bundle.
    pub fn authority(&self, bundle: &[&Root]) -> Authority {
        Authority::from_pem(&self.cert_pem, &self.key_pem, &bundle_pem(bundle)).unwrap()
    }
}

/// The roots' certificates, concatenated.
pub fn bundle_pem(roots: &[&Root]) -> String {
    roots.iter().map(|root| root.cert_pem.as_str()).collect()
}
