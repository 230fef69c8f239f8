//! The mesh PKI of the mTLS scenarios: one root and two workload certificates, as the control
//! plane would issue them — ECDSA P-256, the SPIFFE ID as the only URI SAN, usable as both
//! TLS server and client — written as PEM (PKCS#8 keys) into the scenario's directory, where
//! both weft-proxy (files identity mode) and Envoy (`filename:` data sources) read them.

use std::io;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};

/// The client side of the mesh hop (proxy A, next to the caller).
pub const CLIENT_ID: &str = "spiffe://bench.local/ns/shop/sa/web";
/// The server side of the mesh hop (proxy B, next to the upstream).
pub const SERVER_ID: &str = "spiffe://bench.local/ns/shop/sa/orders";

/// A workload's SPIFFE ID and its certificate and key files.
#[derive(Debug, Clone)]
pub struct Identity {
    pub id: &'static str,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct MeshPki {
    /// The trust bundle: the root certificate.
    pub root: PathBuf,
    pub client: Identity,
    pub server: Identity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Originates the mTLS connection (proxy A).
    Client,
    /// Terminates it (proxy B).
    Server,
}

/// What one proxy of an mTLS chain needs: its side, its own identity, the identity its peer
/// must present, and the roots to verify the peer with.
#[derive(Debug, Clone, Copy)]
pub struct HopTls<'a> {
    pub side: Side,
    pub own: &'a Identity,
    pub peer_id: &'static str,
    pub root: &'a Path,
}

fn pki_err(e: rcgen::Error) -> io::Error {
    io::Error::other(format!("generating the benchmark certificates: {e}"))
}

impl MeshPki {
    /// Generates the root and both leaves and writes them into `dir`.
    pub fn generate(dir: &Path) -> io::Result<Self> {
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(pki_err)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(pki_err)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "weft-bench root");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root_pem = ca.self_signed(&ca_key).map_err(pki_err)?.pem();
        let issuer = Issuer::new(ca, ca_key);
        let root = dir.join("root.pem");
        std::fs::write(&root, root_pem)?;

        let leaf = |name: &str, id: &'static str| -> io::Result<Identity> {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(pki_err)?;
            let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err)?;
            params.distinguished_name.push(DnType::CommonName, name);
            params.subject_alt_names = vec![SanType::URI(id.try_into().map_err(pki_err)?)];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = params.signed_by(&key, &issuer).map_err(pki_err)?;
            let files = Identity {
                id,
                cert: dir.join(format!("{name}.pem")),
                key: dir.join(format!("{name}.key")),
            };
            std::fs::write(&files.cert, cert.pem())?;
            // `serialize_pem` is PKCS#8 ("BEGIN PRIVATE KEY").
            std::fs::write(&files.key, key.serialize_pem())?;
            Ok(files)
        };
        Ok(Self {
            root,
            client: leaf("web", CLIENT_ID)?,
            server: leaf("orders", SERVER_ID)?,
        })
    }

    /// The settings for the proxy on `side` of the mesh hop.
    pub fn hop(&self, side: Side) -> HopTls<'_> {
        let (own, peer_id) = match side {
            Side::Client => (&self.client, SERVER_ID),
            Side::Server => (&self.server, CLIENT_ID),
        };
        HopTls {
            side,
            own,
            peer_id,
            root: &self.root,
        }
    }
}
