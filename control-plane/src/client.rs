//! Connecting to the control plane the way a proxy must: TLS 1.3 with ALPN `h2`, the
//! server's chain verified against the trust bundle, and its URI SAN required to be the
//! control plane's SPIFFE ID (no DNS names are involved) — by the proxy's own verifier,
//! [`weft_tls::ServerIdVerifier`]. Used by this crate's tests and by other crates' tests that
//! start a control plane in-process; the proxy builds its client from its identity store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rcgen::KeyPair;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};
use weft_api::proto::discovery::v1::discovery_client::DiscoveryClient;
use weft_api::proto::identity::v1::identity_client::IdentityClient;
use weft_api::SpiffeId;
use weft_tls::{BundleError, ServerIdVerifier, TrustBundle};

use crate::ca::{Ca, CaError};

/// The verifier a proxy uses towards the control plane: the chain must verify against
/// `bundle` and the leaf's only URI SAN must be `expected`. The TLS server name is ignored.
pub fn verifier(
    bundle: &[CertificateDer<'_>],
    expected: SpiffeId,
) -> Result<ServerIdVerifier, BundleError> {
    let provider = crate::tls::provider();
    let roots = bundle
        .iter()
        .map(|root| root.clone().into_owned())
        .collect();
    let bundle = Arc::new(TrustBundle::new(roots, &provider)?);
    Ok(ServerIdVerifier::with_bundle(expected, bundle, &provider))
}

/// The client TLS config a proxy uses towards the control plane.
pub fn client_config(
    bundle: &[CertificateDer<'_>],
    server_identity: SpiffeId,
) -> Result<ClientConfig, BundleError> {
    let mut config = builder(bundle, server_identity)?.with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// TLS 1.3 with the control plane's identity checked; the client side still to choose.
fn builder(
    bundle: &[CertificateDer<'_>],
    server_identity: SpiffeId,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, BundleError> {
    let verifier = verifier(bundle, server_identity)?;
    Ok(ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier)))
}

/// A gRPC client for the Identity service at `addr`, over TLS verified as above.
pub async fn connect(
    addr: SocketAddr,
    bundle: &[CertificateDer<'_>],
    server_identity: SpiffeId,
) -> anyhow::Result<IdentityClient<Channel>> {
    let config = client_config(bundle, server_identity)?;
    Ok(IdentityClient::new(channel(addr, config).await?))
}

/// A workload certificate and its key, as a proxy holds them after Certify.
pub struct WorkloadCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl WorkloadCert {
    /// Issued straight from `ca` (tests and the propagation benchmark, which simulate many
    /// proxies without running Certify for each).
    pub fn issue(ca: &Ca, identity: &SpiffeId) -> Result<Self, CaError> {
        let failed = |reason: String| CaError::Sign {
            identity: identity.to_string(),
            reason,
        };
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| failed(e.to_string()))?;
        let issued = ca.issue_for_key(&key, identity)?;
        Ok(WorkloadCert {
            chain: issued.chain,
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }
}

/// A Discovery client that proves `cert`'s identity (mTLS).
pub async fn connect_discovery(
    addr: SocketAddr,
    bundle: &[CertificateDer<'_>],
    server_identity: SpiffeId,
    cert: WorkloadCert,
) -> anyhow::Result<DiscoveryClient<Channel>> {
    let mut config =
        builder(bundle, server_identity)?.with_client_auth_cert(cert.chain, cert.key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(DiscoveryClient::new(channel(addr, config).await?))
}

/// A channel to `addr` over TLS with `config`.
pub async fn channel(addr: SocketAddr, config: ClientConfig) -> anyhow::Result<Channel> {
    let connector = TlsConnector::from(Arc::new(config));
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            async move {
                let tcp = TcpStream::connect(addr).await?;
                let tls = connector
                    .connect(ServerName::IpAddress(addr.ip().into()), tcp)
                    .await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await?;
    Ok(channel)
}
