//! The verifiers called directly, without sockets: what they accept and every refusal.
//! (Real handshakes through them are tested where the configs are built, in the proxy.)

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, SanType,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::CertificateError;
use weft_api::SpiffeId;

use super::*;

fn id(name: &str) -> SpiffeId {
    SpiffeId::for_service_account("cluster.local", "shop", name).unwrap()
}

fn uri(name: &str) -> String {
    id(name).to_string()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A CA that signs with a fresh P-256 key; rcgen's default validity covers now.
struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
}

impl Authority {
    fn root(name: &str) -> Authority {
        Authority::signed(name, None)
    }

    fn intermediate(&self, name: &str) -> Authority {
        Authority::signed(name, Some(self))
    }

    /// Named, so that roots are told apart by subject as well as by key.
    fn signed(name: &str, parent: Option<&Authority>) -> Authority {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = match parent {
            None => params.self_signed(&key),
            Some(parent) => params.signed_by(&key, &parent.issuer),
        };
        Authority {
            cert: cert.unwrap().der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    fn bundle(&self) -> Arc<TrustBundle> {
        Arc::new(TrustBundle::new(vec![self.cert.clone()], &provider()).unwrap())
    }

    /// A workload certificate for both usages naming these URIs.
    fn leaf(&self, uris: &[&str]) -> CertificateDer<'static> {
        let both = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.leaf_for(uris, both)
    }

    fn leaf_for(
        &self,
        uris: &[&str],
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> CertificateDer<'static> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = usages;
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        params.signed_by(&key, &self.issuer).unwrap().der().clone()
    }
}

fn cell(bundle: Option<Arc<TrustBundle>>) -> BundleCell {
    Arc::new(ArcSwapOption::new(bundle))
}

fn check_server(
    verifier: &ServerIdVerifier,
    chain: &[CertificateDer<'static>],
) -> Result<(), rustls::Error> {
    // An address, as callers pass: it is never compared with anything.
    let name = ServerName::try_from("127.0.0.1").unwrap();
    verifier
        .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
        .map(|_| ())
}

fn check_client(
    verifier: &ClientIdVerifier,
    chain: &[CertificateDer<'static>],
) -> Result<(), rustls::Error> {
    verifier
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .map(|_| ())
}

/// The `PeerError` inside a refusal by SPIFFE ID.
fn peer_error(result: &Result<(), rustls::Error>) -> &PeerError {
    match result {
        Err(error) => {
            PeerError::inside(error).unwrap_or_else(|| panic!("not a PeerError: {error}"))
        }
        Ok(()) => panic!("accepted what should have been refused"),
    }
}

fn unknown_issuer(result: Result<(), rustls::Error>) -> bool {
    matches!(
        result,
        Err(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer
        ))
    )
}

#[test]
fn peer_identity_is_the_single_uri_san() {
    let ca = Authority::root("mesh root");
    assert_eq!(peer_identity(&[ca.leaf(&[&uri("web")])]), Some(id("web")));
    assert_eq!(peer_identity(&[ca.leaf(&[&uri("a"), &uri("b")])]), None);
    assert_eq!(peer_identity(&[ca.leaf(&[])]), None);
    assert_eq!(peer_identity(&[]), None);
    assert_eq!(
        leaf_identity(&CertificateDer::from(vec![0u8; 8])),
        Err(LeafError::BadDer)
    );
}

#[test]
fn a_server_is_accepted_only_under_the_expected_spiffe_id() {
    let ca = Authority::root("mesh root");
    let provider = provider();
    let orders = ServerIdVerifier::with_bundle(id("orders"), ca.bundle(), &provider);
    assert!(check_server(&orders, &[ca.leaf(&[&uri("orders")])]).is_ok());

    let refused = check_server(&orders, &[ca.leaf(&[&uri("payments")])]);
    let message = refused.as_ref().unwrap_err().to_string();
    match peer_error(&refused) {
        PeerError::WrongIdentity { expected, got } => {
            assert_eq!((expected, got), (&id("orders"), &id("payments")));
        }
        other => panic!("wrong refusal: {other}"),
    }
    assert!(
        message.contains(&uri("orders")) && message.contains(&uri("payments")),
        "{message}"
    );
}

#[test]
fn the_chain_is_checked_before_the_name() {
    let ca = Authority::root("mesh root");
    let stranger = Authority::root("someone else's root");
    let provider = provider();
    let server = ServerIdVerifier::with_bundle(id("orders"), ca.bundle(), &provider);
    let client = ClientIdVerifier::new(cell(Some(ca.bundle())), &provider);
    // Another CA's certificate is refused for its issuer, whatever it names.
    for uris in [vec![uri("orders")], vec![uri("web")], vec![]] {
        let uris: Vec<&str> = uris.iter().map(String::as_str).collect();
        let leaf = [stranger.leaf(&uris)];
        assert!(unknown_issuer(check_server(&server, &leaf)));
        assert!(unknown_issuer(check_client(&client, &leaf)));
    }
    // Intermediates presented after the leaf are used.
    let sub = ca.intermediate("mesh intermediate");
    let chain = [sub.leaf(&[&uri("orders")]), sub.cert.clone()];
    assert!(check_server(&server, &chain).is_ok());
    assert!(check_client(&client, &chain).is_ok());
    assert!(unknown_issuer(check_server(&server, &chain[..1])));
}

#[test]
fn a_leaf_without_exactly_one_spiffe_id_is_refused_on_both_sides() {
    let ca = Authority::root("mesh root");
    let provider = provider();
    let server = ServerIdVerifier::with_bundle(id("orders"), ca.bundle(), &provider);
    let client = ClientIdVerifier::new(cell(Some(ca.bundle())), &provider);
    assert!(client.client_auth_mandatory());
    assert!(check_client(&client, &[ca.leaf(&[&uri("web")])]).is_ok());
    // Refused, on both sides, for the reason `leaf_identity` gives (each reason is checked
    // end to end in the proxy's handshake tests).
    let several = [uri("orders"), uri("admin")];
    let odd: [&[&str]; 3] = [
        &[&several[0], &several[1]],
        &[],
        &["https://orders.shop.svc"],
    ];
    for uris in odd {
        let leaf = [ca.leaf(uris)];
        let reason = leaf_identity(&leaf[0]).unwrap_err();
        for (side, result) in [
            ("server", check_server(&server, &leaf)),
            ("client", check_client(&client, &leaf)),
        ] {
            match peer_error(&result) {
                PeerError::Leaf(got) => assert_eq!(got, &reason, "{side}: {uris:?}"),
                other => panic!("{side}: {uris:?}: wrong refusal {other}"),
            }
        }
    }
}

#[test]
fn the_bundle_is_read_at_each_verification_and_anchors_come_first() {
    let old = Authority::root("old root");
    let new = Authority::root("new root");
    let provider = provider();
    let bundle = cell(None);
    let client = ClientIdVerifier::new(bundle.clone(), &provider);
    let server = ServerIdVerifier::new(id("orders"), bundle.clone(), None, &provider);
    let anchored =
        ServerIdVerifier::new(id("orders"), bundle.clone(), Some(old.bundle()), &provider);
    let from_old = [old.leaf(&[&uri("orders")])];
    let from_new = [new.leaf(&[&uri("orders")])];

    // No bundle yet: everything is refused, except what chains to the anchors.
    assert!(check_client(&client, &from_old).is_err());
    assert!(check_server(&server, &from_old).is_err());
    assert!(check_server(&anchored, &from_old).is_ok());
    assert!(check_server(&anchored, &from_new).is_err());

    // A bundle installed in the cell applies to the very next verification.
    bundle.store(Some(new.bundle()));
    assert!(check_client(&client, &from_new).is_ok());
    assert!(check_server(&server, &from_new).is_ok());
    assert!(unknown_issuer(check_server(&server, &from_old)));
    assert!(check_server(&anchored, &from_old).is_ok());
    assert!(check_server(&anchored, &from_new).is_ok());
}

#[test]
fn bundles_refuse_empty_or_unusable_roots_and_check_both_usages() {
    let provider = provider();
    assert!(matches!(
        TrustBundle::new(vec![], &provider),
        Err(BundleError::Empty)
    ));
    assert!(matches!(
        TrustBundle::new(vec![CertificateDer::from(b"no".to_vec())], &provider),
        Err(BundleError::BadRoot(_))
    ));

    let ca = Authority::root("mesh root");
    let bundle = ca.bundle();
    assert_eq!(bundle.roots(), std::slice::from_ref(&ca.cert));
    let now = UnixTime::now();
    assert!(bundle.check_usable(&[ca.leaf(&[&uri("web")])], now).is_ok());
    // A mesh certificate serves inbound and presents itself outbound: it needs both usages.
    for usage in [
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ] {
        let one_way = ca.leaf_for(&[&uri("web")], vec![usage.clone()]);
        assert!(
            bundle.check_usable(&[one_way], now).is_err(),
            "{usage:?} alone"
        );
    }
    assert!(matches!(
        bundle.check_usable(&[], now),
        Err(rustls::Error::NoCertificatesPresented)
    ));
}
