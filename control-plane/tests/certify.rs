//! The Certify service end to end: a real control plane in-process on 127.0.0.1, real TLS
//! (the client verifies the server's chain against the bundle and its SPIFFE ID), real gRPC.

mod common;

use std::time::Duration;

use common::*;
use rcgen::{KeyPair, SanType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

#[tokio::test]
async fn a_valid_token_for_its_own_identity_gets_a_p256_leaf_naming_only_that_identity() {
    let env = Env::new();
    let running = env.start().await;
    let before = now_unix();
    let response = certify(&running, &orders_id(), ORDERS_TOKEN).await.unwrap();

    let (not_before, not_after) = check_leaf(
        &response.chain_der,
        &response.trust_bundle_der,
        &orders_id(),
    );
    // 24 h by default, valid from a minute ago for clock skew.
    assert!(
        (not_after - before - 24 * 3600).abs() <= 2,
        "{not_after} vs {before}"
    );
    assert!((before - 60 - not_before).abs() <= 2);
    assert_eq!(response.not_after_unix_ms, not_after * 1000);
    // The bundle in the response is the one the control plane publishes.
    assert_eq!(
        ders(&response.trust_bundle_der),
        running.trust_bundle(),
        "response bundle = published bundle"
    );
    assert_eq!(running.bundle_pem, running.trust_bundle_pem());
    // Local mode's issuer is the root itself: the chain is leaf + root.
    assert_eq!(response.chain_der[1], response.trust_bundle_der[0]);
}

#[tokio::test]
async fn a_csr_without_names_is_fine_and_serials_differ() {
    let env = Env::new();
    let running = env.start().await;
    let mut client = running.client().await.unwrap();
    let key = p256();
    let first = client
        .certify(request(&web_id(), WEB_TOKEN, csr(&key, vec![])))
        .await
        .unwrap()
        .into_inner();
    check_leaf(&first.chain_der, &first.trust_bundle_der, &web_id());
    let second = client
        .certify(request(&web_id(), WEB_TOKEN, csr(&key, vec![])))
        .await
        .unwrap()
        .into_inner();
    let serial = |der: &[u8]| {
        use x509_parser::prelude::FromDer;
        x509_parser::certificate::X509Certificate::from_der(der)
            .unwrap()
            .1
            .raw_serial()
            .to_vec()
    };
    assert_ne!(serial(&first.chain_der[0]), serial(&second.chain_der[0]));
    assert!(
        serial(&first.chain_der[0]).len() >= 16,
        "random 128-bit serials"
    );
}

#[tokio::test]
async fn an_unknown_token_is_unauthenticated() {
    let env = Env::new();
    let running = env.start().await;
    let status = certify(&running, &orders_id(), "no-such-token")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(!status.message().contains("no-such-token"), "{status:?}");
    let status = certify(&running, &orders_id(), "").await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

#[tokio::test]
async fn a_token_for_one_service_account_cannot_get_anothers_identity() {
    let env = Env::new();
    let running = env.start().await;
    // Web's token, orders' identity, and a CSR naming orders.
    let status = certify(&running, &orders_id(), WEB_TOKEN)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains(web_id().as_str()), "{status:?}");
    assert!(
        status.message().contains(orders_id().as_str()),
        "{status:?}"
    );

    // Another trust domain for the same account is another identity too.
    let other_td: weft_api::SpiffeId = "spiffe://other.example/ns/shop/sa/orders".parse().unwrap();
    let status = certify(&running, &other_td, ORDERS_TOKEN)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // An identity that isn't a SPIFFE ID at all.
    let mut client = running.client().await.unwrap();
    let mut req = request(&orders_id(), ORDERS_TOKEN, csr(&p256(), vec![]));
    req.identity = "orders".into();
    let status = client.certify(req).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

#[tokio::test]
async fn garbled_csrs_are_invalid_arguments() {
    let env = Env::new();
    let running = env.start().await;
    let mut client = running.client().await.unwrap();
    let good = csr(&p256(), vec![uri(orders_id().as_str())]);
    let mut bad_signature = good.clone();
    let last = bad_signature.len() - 1;
    bad_signature[last] ^= 0x01;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("random bytes", b"\x30\x82\x01\x00not a csr at all".to_vec()),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("bad signature", bad_signature),
        ("trailing bytes", [good.clone(), vec![0, 0]].concat()),
        ("a PEM CSR instead of DER", {
            let key = p256();
            let mut params = rcgen::CertificateParams::default();
            params.subject_alt_names = vec![];
            params
                .serialize_request(&key)
                .unwrap()
                .pem()
                .unwrap()
                .into_bytes()
        }),
    ];
    for (what, csr_der) in cases {
        let status = client
            .certify(request(&orders_id(), ORDERS_TOKEN, csr_der))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    }
    // The good one still works on the same connection.
    client
        .certify(request(&orders_id(), ORDERS_TOKEN, good))
        .await
        .unwrap();
}

#[tokio::test]
async fn csrs_with_other_key_types_are_invalid_arguments() {
    let env = Env::new();
    let running = env.start().await;
    let mut client = running.client().await.unwrap();
    let rsa = KeyPair::from_pem(include_str!("data/rsa-2048-test-key.pem")).unwrap();
    let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let ed25519 = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    for (what, key, expect) in [
        ("RSA", rsa, "RSA"),
        ("P-384", p384, "P-384"),
        ("Ed25519", ed25519, "Ed25519"),
    ] {
        let status = client
            .certify(request(
                &orders_id(),
                ORDERS_TOKEN,
                csr(&key, vec![uri(orders_id().as_str())]),
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(status.message().contains(expect), "{what}: {status:?}");
    }
}

#[tokio::test]
async fn csrs_asking_for_other_names_are_invalid_arguments() {
    let env = Env::new();
    let running = env.start().await;
    let mut client = running.client().await.unwrap();
    let id = orders_id();
    let cases: Vec<(&str, Vec<SanType>)> = vec![
        (
            "an extra DNS name",
            vec![
                uri(id.as_str()),
                SanType::DnsName("orders.shop.svc".try_into().unwrap()),
            ],
        ),
        (
            "an extra URI",
            vec![uri(id.as_str()), uri(web_id().as_str())],
        ),
        ("another identity only", vec![uri(web_id().as_str())]),
        (
            "only a DNS name",
            vec![SanType::DnsName("evil.example".try_into().unwrap())],
        ),
        (
            "an IP address",
            vec![SanType::IpAddress([127, 0, 0, 1].into())],
        ),
        (
            "the identity twice",
            vec![uri(id.as_str()), uri(id.as_str())],
        ),
    ];
    for (what, sans) in cases {
        let status = client
            .certify(request(&id, ORDERS_TOKEN, csr(&p256(), sans)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(status.message().contains(id.as_str()), "{what}: {status:?}");
    }
}

#[tokio::test]
async fn the_lifetime_setting_is_honoured() {
    let env = Env::new();
    let mut config = env.config();
    config.cert_lifetime = Duration::from_secs(90);
    let running = weft_control_plane::start(config).await.unwrap();
    let before = now_unix();
    let response = certify(&running, &orders_id(), ORDERS_TOKEN).await.unwrap();
    let (_, not_after) = check_leaf(
        &response.chain_der,
        &response.trust_bundle_der,
        &orders_id(),
    );
    assert!(
        (not_after - before - 90).abs() <= 2,
        "{}",
        not_after - before
    );

    let mut config = env.config();
    config.cert_lifetime = Duration::from_millis(10);
    let err = weft_control_plane::start(config)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("at least 1s"), "{err}");
}

#[tokio::test]
async fn the_server_presents_its_own_spiffe_id_and_clients_check_it() {
    let env = Env::new();
    let running = env.start().await;
    assert_eq!(
        running.server_identity.as_str(),
        "spiffe://cluster.local/ns/weft-system/sa/weft-control-plane"
    );
    // A client expecting another identity refuses the server.
    let wrong =
        weft_control_plane::client::connect(running.addr, &running.trust_bundle(), web_id()).await;
    assert!(
        wrong.is_err(),
        "connected to a server with the wrong identity"
    );
    // A client trusting another root refuses it too.
    let other = TestCa::root("someone else's root");
    let wrong = weft_control_plane::client::connect(
        running.addr,
        std::slice::from_ref(&other.der),
        running.server_identity.clone(),
    )
    .await;
    assert!(
        wrong.is_err(),
        "connected to a server that chains to an unknown root"
    );
    // The server's certificate: TLS 1.3, h2, leaf + issuer, only the URI SAN.
    let (chain, version, alpn) = server_handshake(&running).await;
    assert_eq!(version, rustls::ProtocolVersion::TLSv1_3);
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let chain: Vec<Vec<u8>> = chain.iter().map(|c| c.to_vec()).collect();
    let bundle: Vec<Vec<u8>> = running.trust_bundle().iter().map(|c| c.to_vec()).collect();
    check_leaf(&chain, &bundle, &running.server_identity);
}

#[tokio::test]
async fn the_serving_certificate_is_renewed_before_it_expires() {
    let env = Env::new();
    let mut config = env.config();
    config.cert_lifetime = Duration::from_secs(2);
    let running = weft_control_plane::start(config).await.unwrap();
    let (first, _, _) = server_handshake(&running).await;
    let renewed = eventually(Duration::from_secs(5), || async {
        server_handshake(&running).await.0[0] != first[0]
    })
    .await;
    assert!(renewed, "the serving certificate was not renewed");
    // Still serving, with a valid certificate (the handshake inside `certify` verifies it).
    certify(&running, &orders_id(), ORDERS_TOKEN).await.unwrap();
}

/// Handshakes with the server (verifying it) and returns what it presented.
async fn server_handshake(
    running: &weft_control_plane::Running,
) -> (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::ProtocolVersion,
    Option<Vec<u8>>,
) {
    let config = weft_control_plane::client::client_config(
        &running.trust_bundle(),
        running.server_identity.clone(),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    let tls = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(
            rustls::pki_types::ServerName::IpAddress(running.addr.ip().into()),
            tcp,
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let (_, conn) = tls.get_ref();
    (
        conn.peer_certificates().unwrap().to_vec(),
        conn.protocol_version().unwrap(),
        conn.alpn_protocol().map(|p| p.to_vec()),
    )
}

#[tokio::test]
async fn garbage_and_plaintext_do_not_stop_the_server() {
    let env = Env::new();
    let running = env.start().await;
    // Garbage, an HTTP/2 preface in plaintext, and a client that connects and says nothing.
    let silent = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    for junk in [
        &b"\x16\x03\x01\x00\x05hello garbage that is not TLS"[..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let mut tcp = tokio::net::TcpStream::connect(running.addr).await.unwrap();
        tcp.write_all(junk).await.unwrap();
        let mut buf = [0u8; 256];
        // The server answers with a TLS alert or just closes; either way, within the bound.
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the server kept a garbage connection open");
    }
    // TLS 1.2 is refused.
    let tls12 = rustls::ClientConfig::builder_with_provider(weft_control_plane::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(
            weft_control_plane::client::verifier(
                &running.trust_bundle(),
                running.server_identity.clone(),
            )
            .unwrap(),
        ))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    let refused = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls12)).connect(
            rustls::pki_types::ServerName::IpAddress(running.addr.ip().into()),
            tcp,
        ),
    )
    .await
    .unwrap();
    assert!(refused.is_err(), "a TLS 1.2 handshake succeeded");

    certify(&running, &orders_id(), ORDERS_TOKEN).await.unwrap();
    drop(silent);
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let env = Env::new();
    let running = env.start().await;
    let addr = running.addr;
    certify(&running, &orders_id(), ORDERS_TOKEN).await.unwrap();
    tokio::time::timeout(Duration::from_secs(15), running.shutdown())
        .await
        .expect("shutdown is bounded")
        .unwrap();
    // The listener is gone: connecting fails (or is reset at once).
    let gone = eventually(Duration::from_secs(5), || async {
        match tokio::net::TcpStream::connect(addr).await {
            Err(_) => true,
            Ok(mut tcp) => {
                let mut buf = [0u8; 1];
                matches!(
                    tokio::time::timeout(Duration::from_millis(200), tcp.read(&mut buf)).await,
                    Ok(Ok(0)) | Ok(Err(_))
                )
            }
        }
    })
    .await;
    assert!(gone, "still accepting after shutdown");
}
