//! Certificate verification by SPIFFE ID. Mesh peers have no DNS names: a peer is
//! authenticated by a chain to the current trust bundle and named by its leaf's single URI
//! SAN. The verifiers here read the bundle on every handshake, so a new bundle (trust-anchor
//! rotation) applies to the next handshake without rebuilding any rustls config, and
//! established connections are left alone.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};
use weft_api::SpiffeId;

use crate::leaf::{leaf_identity, LeafError};

/// Why a set of roots cannot be a [`TrustBundle`].
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("the trust bundle is empty")]
    Empty,
    #[error("the trust bundle holds an unusable root: {0}")]
    BadRoot(rustls::Error),
}

/// The roots that peers' certificates must chain to, with the verifier built for them (built
/// once per bundle, not per handshake).
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
    store: Arc<RootCertStore>,
    client: Arc<dyn ClientCertVerifier>,
    algs: WebPkiSupportedAlgorithms,
}

impl std::fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustBundle")
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl TrustBundle {
    /// A bundle of one or more roots (several while an anchor is being rotated).
    pub fn new(
        roots: Vec<CertificateDer<'static>>,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, BundleError> {
        if roots.is_empty() {
            return Err(BundleError::Empty);
        }
        let mut store = RootCertStore::empty();
        for root in &roots {
            store.add(root.clone()).map_err(BundleError::BadRoot)?;
        }
        let store = Arc::new(store);
        let client = WebPkiClientVerifier::builder_with_provider(store.clone(), provider.clone())
            .build()
            .map_err(|e| BundleError::BadRoot(rustls::Error::General(e.to_string())))?;
        Ok(TrustBundle {
            roots,
            store,
            client,
            algs: provider.signature_verification_algorithms,
        })
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The chain is good for a server (serverAuth, when the leaf lists usages).
    fn verify_as_server(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.store,
            intermediates,
            now,
            self.algs.all,
        )
    }

    /// The chain is good for a client (clientAuth, when the leaf lists usages).
    fn verify_as_client(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        self.client
            .verify_client_cert(end_entity, intermediates, now)
            .map(|_| ())
    }

    /// Whether our own chain (leaf first) will be accepted by peers holding this bundle, in
    /// both directions.
    pub fn check_usable(
        &self,
        chain: &[CertificateDer<'static>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or(rustls::Error::NoCertificatesPresented)?;
        self.verify_as_server(leaf, intermediates, now)?;
        self.verify_as_client(leaf, intermediates, now)
    }
}

/// The current trust bundle, shared by the store and every verifier. While it is empty
/// (before the first credentials are installed) every handshake is refused.
pub type BundleCell = Arc<ArcSwapOption<TrustBundle>>;

/// Why a peer's certificate was refused after (or instead of) chain verification.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer presented {got} but {expected} was expected")]
    WrongIdentity { expected: SpiffeId, got: SpiffeId },
    #[error("peer certificate does not name a SPIFFE ID: {0}")]
    Leaf(#[from] LeafError),
}

impl PeerError {
    /// The refusal by SPIFFE ID a failed verification carries, if that is why it failed
    /// (rather than the chain, the dates or the handshake).
    pub fn inside(error: &rustls::Error) -> Option<&PeerError> {
        match error {
            rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
                other.0.downcast_ref::<PeerError>()
            }
            _ => None,
        }
    }
}

fn refuse(error: PeerError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
}

fn no_bundle() -> rustls::Error {
    rustls::Error::General("no trust bundle yet: this proxy has no certificate".into())
}

/// Outbound (and the control-plane connection): the server must chain to the current bundle
/// (or to `anchors`, for the control plane) and its only URI SAN must be `expected`.
#[derive(Debug)]
pub struct ServerIdVerifier {
    expected: SpiffeId,
    bundle: BundleCell,
    /// Extra roots tried first: the control plane's trust anchors, which must work before the
    /// proxy has any bundle of its own.
    anchors: Option<Arc<TrustBundle>>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerIdVerifier {
    pub fn new(
        expected: SpiffeId,
        bundle: BundleCell,
        anchors: Option<Arc<TrustBundle>>,
        provider: &CryptoProvider,
    ) -> Self {
        ServerIdVerifier {
            expected,
            bundle,
            anchors,
            algs: provider.signature_verification_algorithms,
        }
    }

    /// Against one bundle that never changes (a client of the control plane that holds only
    /// its trust anchors).
    pub fn with_bundle(
        expected: SpiffeId,
        bundle: Arc<TrustBundle>,
        provider: &CryptoProvider,
    ) -> Self {
        let cell = Arc::new(ArcSwapOption::new(Some(bundle)));
        ServerIdVerifier::new(expected, cell, None, provider)
    }

    fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let current = self.bundle.load_full();
        let mut first_error = None;
        for bundle in self.anchors.iter().chain(current.iter()) {
            match bundle.verify_as_server(end_entity, intermediates, now) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or_else(no_bundle))
    }
}

impl ServerCertVerifier for ServerIdVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The name the caller connected with is an address or a host name; it says nothing
        // about who the peer is. The SPIFFE ID does.
        self.verify_chain(end_entity, intermediates, now)?;
        let got = leaf_identity(end_entity).map_err(|e| refuse(e.into()))?;
        if got != self.expected {
            return Err(refuse(PeerError::WrongIdentity {
                expected: self.expected.clone(),
                got,
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Inbound: a client certificate is required, must chain to the current bundle and must name
/// exactly one SPIFFE ID. Which IDs may call is authorization's business, after the handshake.
#[derive(Debug)]
pub struct ClientIdVerifier {
    bundle: BundleCell,
    algs: WebPkiSupportedAlgorithms,
    mandatory: bool,
}

impl ClientIdVerifier {
    pub fn new(bundle: BundleCell, provider: &CryptoProvider) -> Self {
        ClientIdVerifier {
            bundle,
            algs: provider.signature_verification_algorithms,
            mandatory: true,
        }
    }

    /// A client certificate is checked when one is offered, but clients without one are let
    /// in too: the control plane serves proxies that have no certificate yet (their first
    /// Certify) and, on the same port, proxies that prove their identity (Subscribe).
    pub fn optional(bundle: BundleCell, provider: &CryptoProvider) -> Self {
        ClientIdVerifier {
            mandatory: false,
            ..ClientIdVerifier::new(bundle, provider)
        }
    }
}

impl ClientCertVerifier for ClientIdVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Optional in TLS 1.3, and our clients have one certificate to offer anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let bundle = self.bundle.load_full().ok_or_else(no_bundle)?;
        bundle.verify_as_client(end_entity, intermediates, now)?;
        leaf_identity(end_entity).map_err(|e| refuse(e.into()))?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
