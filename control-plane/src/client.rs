//! Connecting to the control plane the way a proxy must: TLS 1.3 with ALPN `h2`, the
//! server's chain verified against the trust bundle, and its URI SAN required to be the
//! control plane's SPIFFE ID (no DNS names are involved). Used by this crate's tests and by
//! other crates' tests that start a control plane in-process; the proxy has its own client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};
use weft_api::proto::identity::v1::identity_client::IdentityClient;
use weft_api::SpiffeId;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Verifies a server's chain against a trust bundle and that the leaf's only URI SAN is the
/// expected SPIFFE ID. The TLS server name is ignored.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: RootCertStore,
    expected: SpiffeId,
    provider: Arc<CryptoProvider>,
}

impl SpiffeServerVerifier {
    pub fn new(bundle: &[CertificateDer<'_>], expected: SpiffeId) -> Result<Self, rustls::Error> {
        let mut roots = RootCertStore::empty();
        for root in bundle {
            roots.add(root.clone().into_owned())?;
        }
        Ok(SpiffeServerVerifier {
            roots,
            expected,
            provider: crate::tls::provider(),
        })
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let uris = uri_sans(end_entity).map_err(|e| {
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                Arc::new(std::io::Error::other(e)),
            )))
        })?;
        if uris != [self.expected.as_str()] {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(std::io::Error::other(format!(
                    "the server's URI SANs are {uris:?}, not [{}]",
                    self.expected
                )))),
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The URI SANs of a certificate.
pub fn uri_sans(cert_der: &[u8]) -> Result<Vec<String>, String> {
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| format!("certificate does not parse: {e}"))?;
    let Some(san) = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subjectAltName: {e}"))?
    else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(uri.to_string()),
            _ => None,
        })
        .collect())
}

/// The client TLS config a proxy uses towards the control plane.
pub fn client_config(
    bundle: &[CertificateDer<'_>],
    server_identity: SpiffeId,
) -> Result<ClientConfig, rustls::Error> {
    let verifier = SpiffeServerVerifier::new(bundle, server_identity)?;
    let mut config = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A gRPC client for the Identity service at `addr`, over TLS verified as above.
pub async fn connect(
    addr: SocketAddr,
    bundle: &[CertificateDer<'_>],
    server_identity: SpiffeId,
) -> anyhow::Result<IdentityClient<Channel>> {
    let config = client_config(bundle, server_identity)?;
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
    Ok(IdentityClient::new(channel))
}
