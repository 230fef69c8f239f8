//! A webhook serving certificate signed by a test CA, and an HTTPS client that trusts it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The DNS name the certificate carries, as for the injector's Service.
pub const SERVER_NAME: &str = "weft-injector.weft-system.svc";

/// A CA and a leaf it signed, written as `<name>.crt`/`<name>.key` in a directory.
pub struct Pki {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, name);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca_pem = ca.self_signed(&key).unwrap().pem();
        Pki {
            ca_pem,
            issuer: Issuer::new(ca, key),
        }
    }

    pub fn leaf(&self) -> Leaf {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let params = CertificateParams::new(vec![SERVER_NAME.to_string()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

impl Leaf {
    /// Writes `tls.crt` and `tls.key` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }
}

/// A client config trusting these CAs (PEM), offering `alpn`.
pub fn client_config(cas: &[&str], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for pem in cas {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TLS connection; returns the stream and the certificate the server presented.
pub async fn connect(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<(
    tokio_rustls::client::TlsStream<TcpStream>,
    CertificateDer<'static>,
)> {
    let tcp = TcpStream::connect(addr).await?;
    let tls = TlsConnector::from(config)
        .connect(ServerName::try_from(SERVER_NAME).unwrap(), tcp)
        .await?;
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    Ok((tls, presented))
}

/// An HTTP/1.1 keep-alive connection.
pub struct H1 {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl H1 {
    pub async fn connect(addr: std::net::SocketAddr, cas: &[&str]) -> H1 {
        let (tls, _) = connect(addr, client_config(cas, &[b"http/1.1"]))
            .await
            .unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        H1 { sender }
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Response<Bytes> {
        self.sender.ready().await.unwrap();
        let rsp = self.sender.send_request(req).await.unwrap();
        collect(rsp).await
    }

    pub async fn post(&mut self, path: &str, body: impl Into<Bytes>) -> Response<Bytes> {
        self.send(post(path, body)).await
    }

    pub async fn get(&mut self, path: &str) -> Response<Bytes> {
        self.send(get(path)).await
    }

    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

/// An HTTP/2 connection.
pub struct H2 {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

impl H2 {
    pub async fn connect(addr: std::net::SocketAddr, cas: &[&str]) -> H2 {
        let (tls, _) = connect(addr, client_config(cas, &[b"h2"])).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        H2 { sender }
    }

    pub async fn post(&mut self, path: &str, body: impl Into<Bytes>) -> Response<Bytes> {
        self.sender.ready().await.unwrap();
        let rsp = self.sender.send_request(post(path, body)).await.unwrap();
        collect(rsp).await
    }
}

pub fn post(path: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::post(format!("https://{SERVER_NAME}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap()
}

pub fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("https://{SERVER_NAME}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn collect(rsp: Response<hyper::body::Incoming>) -> Response<Bytes> {
    let (parts, body) = rsp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Response::from_parts(parts, body)
}
