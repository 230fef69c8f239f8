//! Real TLS 1.3 handshakes on 127.0.0.1 between `server_config` and `client_config`: what
//! succeeds, and every refusal, on the side that must refuse.

use std::sync::Arc;
use std::time::SystemTime;

use rustls::{CertificateError, ClientConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use weft_tls::ServerIdVerifier;

use super::*;
use crate::identity::testca::hours;
use crate::identity::{peer_identity, LeafError, PeerError};

/// The `PeerError` inside a refusal from our verifiers.
fn peer_error(error: &rustls::Error) -> &PeerError {
    PeerError::inside(error).unwrap_or_else(|| panic!("expected a SPIFFE ID refusal, got {error}"))
}

fn is_expired(error: &rustls::Error) -> bool {
    matches!(
        error,
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. }
        )
    )
}

fn is_unknown_issuer(error: &rustls::Error) -> bool {
    matches!(
        error,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    )
}

/// A server refusal in TLS 1.3 arrives after the client has finished its side of the
/// handshake: the client learns of it on its first read, which must fail, not hang.
async fn client_sees_refusal(
    client: std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
) {
    let Ok(mut client) = client else { return };
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(WAIT, client.read(&mut buf))
        .await
        .expect("client read resolved");
    assert!(
        matches!(read, Err(_) | Ok(0)),
        "client read {read:?} after the server refused it"
    );
}

#[tokio::test]
async fn mutual_tls_succeeds_and_each_side_learns_the_other() {
    let ca = TestCa::new("mesh root");
    let server = tls_with(&ca.leaf(&[&uri("orders")]), &[&ca]);
    let client = tls_with(&ca.leaf(&[&uri("web")]), &[&ca]);
    assert!(server.is_ready() && client.is_ready());
    assert_eq!(server.local_identity(), Some(id("orders")));

    let (s, c) = handshake(
        server.server_config(),
        client.client_config(&id("orders"), &[b"h2"]),
    )
    .await;
    let (s, c) = (s.expect("server accepts"), c.expect("client connects"));
    assert_eq!(peer_identity(&s.peer_certs()), Some(id("web")));
    assert_eq!(peer_identity(&c.peer_certs()), Some(id("orders")));
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[tokio::test]
async fn alpn_follows_what_the_client_offers() {
    let ca = TestCa::new("mesh root");
    let server = tls_with(&ca.leaf(&[&uri("orders")]), &[&ca]);
    let client = tls_with(&ca.leaf(&[&uri("web")]), &[&ca]);
    for (offer, expected) in [
        (&[b"http/1.1".as_slice()][..], Some(&b"http/1.1"[..])),
        (&[][..], None),
    ] {
        let (s, c) = handshake(
            server.server_config(),
            client.client_config(&id("orders"), offer),
        )
        .await;
        c.expect("client connects");
        assert_eq!(
            s.expect("server accepts").get_ref().1.alpn_protocol(),
            expected
        );
    }
}

#[tokio::test]
async fn intermediate_chains_verify() {
    let root = TestCa::new("mesh root");
    let issuer = root.intermediate("mesh issuer");
    let server = tls_with(&issuer.leaf(&[&uri("orders")]), &[&root]);
    let client = tls_with(&issuer.leaf(&[&uri("web")]), &[&root]);
    let (s, c) = handshake(
        server.server_config(),
        client.client_config(&id("orders"), &[]),
    )
    .await;
    c.expect("client connects");
    assert_eq!(
        peer_identity(&s.expect("server accepts").peer_certs()),
        Some(id("web"))
    );
}

#[tokio::test]
async fn client_refuses_a_server_with_another_spiffe_id() {
    let ca = TestCa::new("mesh root");
    let server = tls_with(&ca.leaf(&[&uri("orders")]), &[&ca]);
    let client = tls_with(&ca.leaf(&[&uri("web")]), &[&ca]);
    let (_, c) = handshake(
        server.server_config(),
        client.client_config(&id("payments"), &[]),
    )
    .await;
    let error = expect_err(c, "client");
    match peer_error(tls_error(&error)) {
        PeerError::WrongIdentity { expected, got } => {
            assert_eq!((expected, got), (&id("payments"), &id("orders")))
        }
        other => panic!("wrong refusal: {other}"),
    }
    let text = error.to_string();
    assert!(
        text.contains(&uri("payments")) && text.contains(&uri("orders")),
        "the error names both identities: {text}"
    );
}

#[tokio::test]
async fn an_unknown_ca_is_refused_on_both_sides() {
    let ours = TestCa::new("mesh root");
    let theirs = TestCa::new("someone else's root");
    let good = tls_with(&ours.leaf(&[&uri("web")]), &[&ours]);
    let stranger = tls_with(&theirs.leaf(&[&uri("orders")]), &[&theirs]);

    // A server from another CA, even with the right name.
    let (_, c) = handshake(
        stranger.server_config(),
        good.client_config(&id("orders"), &[]),
    )
    .await;
    assert!(is_unknown_issuer(tls_error(&expect_err(c, "client"))));

    // A client from another CA (trusting our server, so the refusal is the server's).
    let server = tls_with(&ours.leaf(&[&uri("orders")]), &[&ours]);
    let stranger_client = Tls::empty();
    install_unchecked(&stranger_client, &theirs.leaf(&[&uri("web")]), &[&ours]);
    let (s, c) = handshake(
        server.server_config(),
        stranger_client.client_config(&id("orders"), &[]),
    )
    .await;
    assert!(is_unknown_issuer(tls_error(&expect_err(s, "server"))));
    client_sees_refusal(c).await;
}

#[tokio::test]
async fn expired_certificates_are_refused_on_both_sides() {
    let ca = TestCa::new("mesh root");
    let now = SystemTime::now();
    let expired = |name: &str| ca.leaf_valid(&[&uri(name)], now - hours(3), now - hours(1));
    let good_server = tls_with(&ca.leaf(&[&uri("orders")]), &[&ca]);
    let good_client = tls_with(&ca.leaf(&[&uri("web")]), &[&ca]);

    let old_server = tls_with(&ca.leaf(&[&uri("orders")]), &[&ca]);
    install_unchecked(&old_server, &expired("orders"), &[&ca]);
    assert!(
        !old_server.is_ready(),
        "an expired certificate is not ready"
    );
    let (_, c) = handshake(
        old_server.server_config(),
        good_client.client_config(&id("orders"), &[]),
    )
    .await;
    assert!(is_expired(tls_error(&expect_err(c, "client"))));

    let old_client = tls_with(&ca.leaf(&[&uri("web")]), &[&ca]);
    install_unchecked(&old_client, &expired("web"), &[&ca]);
    let (s, c) = handshake(
        good_server.server_config(),
        old_client.client_config(&id("orders"), &[]),
    )
    .await;
    assert!(is_expired(tls_error(&expect_err(s, "server"))));
    client_sees_refusal(c).await;
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let ca = TestCa::new("mesh root");
    let server = tls_with(&ca.leaf(&[&uri("orders")]), &[&ca]);
    // Verifies the server properly, but has no certificate to present.
    let provider = server.state().provider.clone();
    let verifier =
        ServerIdVerifier::new(id("orders"), server.state().bundle.clone(), None, &provider);
    let anonymous = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let (s, c) = handshake(server.server_config(), Arc::new(anonymous)).await;
    assert!(matches!(
        tls_error(&expect_err(s, "server")),
        rustls::Error::NoCertificatesPresented
    ));
    client_sees_refusal(c).await;
}

#[tokio::test]
async fn certificates_with_two_uri_sans_or_none_are_refused_on_both_sides() {
    let ca = TestCa::new("mesh root");
    let good_server = tls_with(&ca.leaf(&[&uri("orders")]), &[&ca]);
    let good_client = tls_with(&ca.leaf(&[&uri("web")]), &[&ca]);
    let cases: [(Vec<String>, LeafError); 3] = [
        (
            vec![uri("orders"), uri("admin")],
            LeafError::SeveralUriSans(2),
        ),
        (vec![], LeafError::NoUriSan),
        (
            vec!["https://orders.shop.svc".into()],
            LeafError::NotSpiffe(weft_api::IdentityError::Scheme(
                "https://orders.shop.svc".into(),
            )),
        ),
    ];
    for (uris, expected) in cases {
        let uris: Vec<&str> = uris.iter().map(String::as_str).collect();
        let odd = ca.leaf(&uris);

        let server = tls_with(&ca.leaf(&[&uri("orders")]), &[&ca]);
        install_unchecked(&server, &odd, &[&ca]);
        let (_, c) = handshake(
            server.server_config(),
            good_client.client_config(&id("orders"), &[]),
        )
        .await;
        match peer_error(tls_error(&expect_err(c, "client"))) {
            PeerError::Leaf(got) => assert_eq!(got, &expected, "{uris:?}"),
            other => panic!("{uris:?}: wrong refusal {other}"),
        }

        let client = tls_with(&ca.leaf(&[&uri("web")]), &[&ca]);
        install_unchecked(&client, &odd, &[&ca]);
        let (s, c) = handshake(
            good_server.server_config(),
            client.client_config(&id("orders"), &[]),
        )
        .await;
        match peer_error(tls_error(&expect_err(s, "server"))) {
            PeerError::Leaf(got) => assert_eq!(got, &expected, "{uris:?}"),
            other => panic!("{uris:?}: wrong refusal {other}"),
        }
        client_sees_refusal(c).await;
    }
}

#[tokio::test]
async fn a_proxy_without_credentials_refuses_every_handshake() {
    let ca = TestCa::new("mesh root");
    let empty = Tls::empty();
    assert!(!empty.is_ready());
    assert_eq!((empty.local_identity(), empty.not_after()), (None, None));
    let good = tls_with(&ca.leaf(&[&uri("web")]), &[&ca]);
    let (s, _) = handshake(
        empty.server_config(),
        good.client_config(&id("orders"), &[]),
    )
    .await;
    expect_err(s, "empty server");
    let server = tls_with(&ca.leaf(&[&uri("orders")]), &[&ca]);
    let (_, c) = handshake(
        server.server_config(),
        empty.client_config(&id("orders"), &[]),
    )
    .await;
    expect_err(c, "empty client");
}

/// Echoes on every accepted connection, reporting each connection's client certificate.
async fn echo_server(
    server: Arc<Tls>,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<CertificateDer<'static>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = TlsAcceptor::from(server.server_config());
            let seen_tx = seen_tx.clone();
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = seen_tx.send(leaf_der(&stream));
                let mut buf = [0u8; 64];
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    if stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

async fn connect(
    client: &Tls,
    addr: std::net::SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client.client_config(&id("orders"), &[b"h2"]));
    tokio::time::timeout(
        WAIT,
        connector.connect(
            rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
            tcp,
        ),
    )
    .await
    .expect("handshake within the bound")
    .expect("handshake succeeds")
}

async fn echo(stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>, text: &[u8]) {
    stream.write_all(text).await.unwrap();
    let mut buf = vec![0u8; text.len()];
    tokio::time::timeout(WAIT, stream.read_exact(&mut buf))
        .await
        .expect("echo within the bound")
        .expect("echo read");
    assert_eq!(buf, text);
}

#[tokio::test]
async fn a_renewal_is_used_by_the_next_handshake_and_open_connections_carry_on() {
    let ca = TestCa::new("mesh root");
    let server_before = ca.leaf(&[&uri("orders")]);
    let client_before = ca.leaf(&[&uri("web")]);
    let server = tls_with(&server_before, &[&ca]);
    let client = tls_with(&client_before, &[&ca]);
    let (addr, mut seen) = echo_server(server.clone()).await;

    let mut first = connect(&client, addr).await;
    echo(&mut first, b"before").await;
    assert_eq!(leaf_der(&first), server_before.chain[0]);
    assert_eq!(seen.recv().await.unwrap(), client_before.chain[0]);
    let config_before = client.client_config(&id("orders"), &[b"h2"]);

    // Both sides renew (new keys, same identities, same bundle).
    let server_after = ca.leaf(&[&uri("orders")]);
    let client_after = ca.leaf(&[&uri("web")]);
    server
        .replace(
            server_after.chain.clone(),
            server_after.key(),
            vec![ca.root.clone()],
        )
        .unwrap();
    client
        .replace(
            client_after.chain.clone(),
            client_after.key(),
            vec![ca.root.clone()],
        )
        .unwrap();
    assert!(
        Arc::ptr_eq(
            &config_before,
            &client.client_config(&id("orders"), &[b"h2"])
        ),
        "a renewal with the same bundle keeps the cached client config"
    );

    let mut second = connect(&client, addr).await;
    echo(&mut second, b"after").await;
    assert_eq!(
        leaf_der(&second),
        server_after.chain[0],
        "the new handshake sees the new server certificate"
    );
    assert_eq!(
        seen.recv().await.unwrap(),
        client_after.chain[0],
        "and presents the new client certificate"
    );
    echo(&mut first, b"still there").await;
}

#[tokio::test]
async fn a_new_bundle_applies_to_the_next_handshake_and_empties_the_config_cache() {
    let old_root = TestCa::new("old root");
    let new_root = TestCa::new("new root");
    let server = tls_with(&old_root.leaf(&[&uri("orders")]), &[&old_root]);
    // A client already renewed under the new root, trusting both.
    let client = tls_with(&new_root.leaf(&[&uri("web")]), &[&old_root, &new_root]);
    let cached = client.client_config(&id("orders"), &[]);
    let (s, _) = handshake(server.server_config(), cached.clone()).await;
    assert!(is_unknown_issuer(tls_error(&expect_err(s, "server"))));

    // The server learns the new root (same certificate): the same server config now accepts.
    let server_leaf = old_root.leaf(&[&uri("orders")]);
    server
        .replace(
            server_leaf.chain.clone(),
            server_leaf.key(),
            vec![old_root.root.clone(), new_root.root.clone()],
        )
        .unwrap();
    let (s, c) = handshake(server.server_config(), cached.clone()).await;
    c.expect("client connects");
    assert_eq!(
        peer_identity(&s.expect("server accepts").peer_certs()),
        Some(id("web"))
    );

    // A bundle change on the client empties its cache.
    let client_leaf = new_root.leaf(&[&uri("web")]);
    client
        .replace(
            client_leaf.chain.clone(),
            client_leaf.key(),
            vec![new_root.root.clone()],
        )
        .unwrap();
    assert!(!Arc::ptr_eq(
        &cached,
        &client.client_config(&id("orders"), &[])
    ));
    // ...and, having dropped the old root, it refuses the old-root server.
    let (_, c) = handshake(
        server.server_config(),
        client.client_config(&id("orders"), &[]),
    )
    .await;
    assert!(is_unknown_issuer(tls_error(&expect_err(c, "client"))));
}

#[tokio::test]
async fn client_configs_are_cached_per_identity_and_alpn() {
    let ca = TestCa::new("mesh root");
    let tls = tls_with(&ca.leaf(&[&uri("web")]), &[&ca]);
    let a = tls.client_config(&id("orders"), &[b"h2"]);
    assert!(Arc::ptr_eq(&a, &tls.client_config(&id("orders"), &[b"h2"])));
    assert!(!Arc::ptr_eq(&a, &tls.client_config(&id("orders"), &[])));
    assert!(!Arc::ptr_eq(
        &a,
        &tls.client_config(&id("payments"), &[b"h2"])
    ));
    assert_eq!(a.alpn_protocols, vec![b"h2".to_vec()]);
    assert!(Arc::ptr_eq(&tls.server_config(), &tls.server_config()));
}

#[tokio::test]
async fn ready_resolves_when_the_first_certificate_arrives() {
    let ca = TestCa::new("mesh root");
    let tls = Arc::new(Tls::empty());
    let waiter = tokio::spawn({
        let tls = tls.clone();
        async move { tls.ready().await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(
        !waiter.is_finished(),
        "ready resolved without a certificate"
    );
    let leaf = ca.leaf(&[&uri("web")]);
    tls.replace(leaf.chain.clone(), leaf.key(), vec![ca.root.clone()])
        .unwrap();
    tokio::time::timeout(WAIT, waiter)
        .await
        .expect("ready resolves")
        .unwrap();
    assert!(tls.is_ready());
    assert_eq!(tls.local_identity(), Some(id("web")));
    let not_after = tls.not_after().unwrap();
    assert!(not_after > SystemTime::now() && not_after < SystemTime::now() + hours(2));
}
