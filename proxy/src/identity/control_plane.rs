//! Certificates from the control plane: a fresh ECDSA P-256 key per request, generated in
//! memory and never written anywhere; a CSR naming our SPIFFE ID; `Certify` over gRPC on a
//! TLS connection that must reach the control plane's own SPIFFE ID.

use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};
use weft_api::proto::identity::v1::identity_client::IdentityClient;
use weft_api::proto::identity::v1::CertifyRequest;
use weft_api::SpiffeId;
use weft_tls::TrustBundle;

use super::credentials::{Credentials, CredentialsError};
use super::refresh::{CertifyError, Issued};
use super::tls::Tls;
use super::IdentityError;

/// A control plane that does not accept a TCP connection within this long is down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The [`super::refresh::Certify`] that asks the control plane.
pub(crate) struct ControlPlane {
    client: IdentityClient<Channel>,
    identity: SpiffeId,
    token_file: PathBuf,
    provider: Arc<CryptoProvider>,
}

impl ControlPlane {
    /// Prepares the channel; nothing is connected until the first request.
    pub(crate) fn new(
        addr: &str,
        control_plane: &SpiffeId,
        anchors: Arc<TrustBundle>,
        tls: &Tls,
        identity: SpiffeId,
        token_file: PathBuf,
    ) -> Result<Self, IdentityError> {
        // Our own bundle is trusted too once we have one: it is how a rotated trust anchor
        // reaches a proxy whose anchors file predates the rotation.
        let mut config = tls.build_client_config(control_plane, &[b"h2"], Some(anchors));
        // The control plane is a server like any other, but it must not need our (maybe
        // missing, maybe expired) certificate: present none.
        config.client_auth_cert_resolver = Arc::new(NoClientCert);
        let connector = Connector::new(addr, config)?;
        Ok(ControlPlane {
            client: IdentityClient::new(endpoint(addr)?.connect_with_connector_lazy(connector)),
            identity,
            token_file,
            provider: tls.state().provider.clone(),
        })
    }

    async fn read_token(&self) -> Result<String, CertifyError> {
        let token = tokio::fs::read_to_string(&self.token_file)
            .await
            .map_err(|source| CertifyError::Token {
                path: self.token_file.clone(),
                source,
            })?;
        let token = token.trim();
        if token.is_empty() {
            return Err(CertifyError::EmptyToken(self.token_file.clone()));
        }
        Ok(token.to_owned())
    }
}

impl super::refresh::Certify for ControlPlane {
    async fn certify(&mut self) -> Result<Issued, CertifyError> {
        // Re-read every time: the kubelet rotates projected tokens in place.
        let token = self.read_token().await?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let csr = csr(&self.identity, &key)?;
        let response = self
            .client
            .certify(CertifyRequest {
                identity: self.identity.to_string(),
                token,
                csr_der: csr,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        let chain = response
            .chain_der
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        let roots = response
            .trust_bundle_der
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        let bundle =
            Arc::new(TrustBundle::new(roots, &self.provider).map_err(CredentialsError::from)?);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        // The leaf's own dates are authoritative; `not_after_unix_ms` is for clients that
        // don't parse X.509.
        let credentials = Credentials::new(chain, key, bundle, &self.provider)?.check_current()?;
        if credentials.identity() != &self.identity {
            return Err(CredentialsError::WrongIdentity {
                expected: self.identity.clone(),
                got: credentials.identity().clone(),
            }
            .into());
        }
        let remaining = credentials
            .not_after()
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        Ok(Issued {
            lifetime: credentials.lifetime(),
            remaining,
            credentials,
        })
    }
}

/// A PKCS#10 request whose only name is the SPIFFE ID, as a URI SAN (the subject is empty:
/// the SAN is the identity, and a CA must not be asked to vouch for anything else).
pub(crate) fn csr(identity: &SpiffeId, key: &KeyPair) -> Result<Vec<u8>, rcgen::Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(identity.as_str().try_into()?)];
    Ok(params.serialize_request(key)?.der().to_vec())
}

/// The gRPC endpoint for `--control-plane-addr` (`host:port`), with the connect timeout.
pub(crate) fn endpoint(addr: &str) -> Result<Endpoint, IdentityError> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| IdentityError::Config(format!("--control-plane-addr {addr:?}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT))
}

/// A failed call, with the transport error that caused it.
fn status_error(status: tonic::Status) -> CertifyError {
    CertifyError::Rpc {
        code: status.code(),
        message: status_message(&status),
    }
}

/// A status's message followed by its causes (tonic's own message for a connection failure
/// is only "transport error").
pub(crate) fn status_message(status: &tonic::Status) -> String {
    let mut message = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        message.push_str(": ");
        message.push_str(&error.to_string());
        source = error.source();
    }
    message
}

/// The name sent as SNI: the host of `host:port` (not verified; the SPIFFE ID is).
fn server_name(addr: &str) -> Result<ServerName<'static>, IdentityError> {
    let bad = |why: &str| IdentityError::Config(format!("--control-plane-addr {addr:?}: {why}"));
    let authority: http::uri::Authority = addr.parse().map_err(|_| bad("expected host:port"))?;
    if authority.port_u16().is_none() {
        return Err(bad("the port is missing"));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) => Ok(ServerName::IpAddress(ip.into())),
        Err(_) => ServerName::try_from(host.to_owned()).map_err(|_| bad("invalid host name")),
    }
}

/// Presents no client certificate.
#[derive(Debug)]
struct NoClientCert;

impl rustls::client::ResolvesClientCert for NoClientCert {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

/// TCP then TLS to the control plane, for tonic's channel (which reconnects through it).
#[derive(Clone)]
pub(crate) struct Connector {
    addr: Arc<str>,
    server_name: ServerName<'static>,
    tls: TlsConnector,
}

impl Connector {
    /// Connects to `addr` (`host:port`) with `config`, whose verifier must check the control
    /// plane's SPIFFE ID (the SNI sent is the host, never verified).
    pub(crate) fn new(addr: &str, config: rustls::ClientConfig) -> Result<Self, IdentityError> {
        Ok(Connector {
            addr: addr.into(),
            server_name: server_name(addr)?,
            tls: TlsConnector::from(Arc::new(config)),
        })
    }
}

type Connecting = Pin<
    Box<
        dyn Future<Output = std::io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>>
            + Send,
    >,
>;

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(&*this.addr).await?;
            tcp.set_nodelay(true)?;
            let stream = this.tls.connect(this.server_name.clone(), tcp).await?;
            Ok(TokioIo::new(stream))
        })
    }
}
