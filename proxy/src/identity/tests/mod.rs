//! Unit tests of the identity module: the refresh schedule on paused time against a fake
//! certifier, real TLS handshakes on 127.0.0.1 (every refusal), credential checks, and the
//! bootstrap flag combinations.

mod credentials;
mod files;
mod handshake;
mod mode;
mod refresh;

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};
use weft_api::SpiffeId;

use super::credentials::{validity, Credentials};
use super::testca::{Leaf, TestCa};
use super::{leaf_identity, Tls, TrustBundle};

/// The bound on any single wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

fn id(name: &str) -> SpiffeId {
    SpiffeId::for_service_account("cluster.local", "shop", name).unwrap()
}

fn uri(name: &str) -> String {
    id(name).to_string()
}

/// A store holding `leaf` (checked) with `roots` as its bundle.
fn tls_with(leaf: &Leaf, roots: &[&TestCa]) -> Arc<Tls> {
    Tls::from_der(
        leaf.chain.clone(),
        leaf.key(),
        roots.iter().map(|ca| ca.root.clone()).collect(),
    )
    .expect("valid test credentials")
}

/// Puts `leaf` in the store without any checks, to make a proxy present what a correct one
/// never would (expired, wrong names).
fn install_unchecked(tls: &Tls, leaf: &Leaf, roots: &[&TestCa]) {
    let provider = tls.state().provider.clone();
    let key = provider.key_provider.load_private_key(leaf.key()).unwrap();
    let (not_before, not_after) = validity(&leaf.chain[0]).unwrap();
    let bundle =
        TrustBundle::new(roots.iter().map(|ca| ca.root.clone()).collect(), &provider).unwrap();
    tls.state().install(Credentials {
        certified: Arc::new(CertifiedKey::new(leaf.chain.clone(), key)),
        identity: leaf_identity(&leaf.chain[0])
            .unwrap_or_else(|_| "spiffe://placeholder".parse().unwrap()),
        not_before,
        not_after,
        bundle: Arc::new(bundle),
    });
}

type Handshake = (
    std::io::Result<server::TlsStream<TcpStream>>,
    std::io::Result<client::TlsStream<TcpStream>>,
);

/// One handshake over 127.0.0.1 between a server and a client config.
async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Handshake {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = async {
        let (tcp, _) = listener.accept().await.unwrap();
        TlsAcceptor::from(server).accept(tcp).await
    };
    let connect = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        TlsConnector::from(client)
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
    };
    tokio::time::timeout(WAIT, async { tokio::join!(accept, connect) })
        .await
        .expect("handshake finished within the bound")
}

/// The rustls error inside a failed handshake.
fn tls_error(result: &std::io::Error) -> &rustls::Error {
    result
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a rustls error: {result:?}"))
}

fn expect_err<T>(result: std::io::Result<T>, side: &str) -> std::io::Error {
    match result {
        Ok(_) => panic!("the {side} accepted a handshake it should have refused"),
        Err(e) => e,
    }
}

fn leaf_der<T>(stream: &T) -> CertificateDer<'static>
where
    T: PeerCerts,
{
    stream.peer_certs()[0].clone()
}

trait PeerCerts {
    fn peer_certs(&self) -> Vec<CertificateDer<'static>>;
}

impl PeerCerts for server::TlsStream<TcpStream> {
    fn peer_certs(&self) -> Vec<CertificateDer<'static>> {
        self.get_ref().1.peer_certificates().unwrap().to_vec()
    }
}

impl PeerCerts for client::TlsStream<TcpStream> {
    fn peer_certs(&self) -> Vec<CertificateDer<'static>> {
        self.get_ref().1.peer_certificates().unwrap().to_vec()
    }
}
