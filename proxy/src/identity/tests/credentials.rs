//! What may be installed: every check a renewal or a file reload must pass.

use std::time::SystemTime;

use super::*;
use crate::identity::testca::hours;
use crate::identity::{CredentialsError, IdentityError, LeafError};

fn refused(result: Result<Arc<Tls>, IdentityError>) -> CredentialsError {
    match result {
        Err(IdentityError::Credentials(e)) => e,
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("bad credentials were accepted"),
    }
}

#[test]
fn refuses_what_peers_would_refuse() {
    let ca = TestCa::new("mesh root");
    let other = TestCa::new("other root");
    let good = ca.leaf(&[&uri("web")]);
    let roots = || vec![ca.root.clone()];

    let stranger = ca.leaf(&[&uri("web")]);
    let e = refused(Tls::from_der(good.chain.clone(), stranger.key(), roots()));
    assert!(matches!(e, CredentialsError::KeyMismatch), "{e}");

    let e = refused(Tls::from_der(
        good.chain.clone(),
        good.key(),
        vec![other.root.clone()],
    ));
    assert!(matches!(e, CredentialsError::Untrusted { .. }), "{e}");
    assert!(e.to_string().contains(&uri("web")), "{e}");

    let now = SystemTime::now();
    let expired = ca.leaf_valid(&[&uri("web")], now - hours(2), now - hours(1));
    // Expired and from the wrong CA: the chain problem is reported, not the date.
    let e = refused(Tls::from_der(
        expired.chain.clone(),
        expired.key(),
        vec![other.root.clone()],
    ));
    assert!(matches!(e, CredentialsError::Untrusted { .. }), "{e}");

    // A mesh certificate serves inbound and presents itself outbound: it needs both usages.
    for usages in [
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth],
        vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth],
    ] {
        let one_way = ca.leaf_usages(&[&uri("web")], usages.clone());
        let e = refused(Tls::from_der(one_way.chain.clone(), one_way.key(), roots()));
        assert!(
            matches!(e, CredentialsError::Untrusted { .. }),
            "{usages:?}: {e}"
        );
    }

    let two = ca.leaf(&[&uri("web"), &uri("admin")]);
    let e = refused(Tls::from_der(two.chain.clone(), two.key(), roots()));
    assert!(
        matches!(e, CredentialsError::Leaf(LeafError::SeveralUriSans(2))),
        "{e}"
    );

    let none = ca.leaf(&[]);
    let e = refused(Tls::from_der(none.chain.clone(), none.key(), roots()));
    assert!(
        matches!(e, CredentialsError::Leaf(LeafError::NoUriSan)),
        "{e}"
    );

    let e = refused(Tls::from_der(vec![], good.key(), roots()));
    assert!(matches!(e, CredentialsError::EmptyChain), "{e}");
    let e = refused(Tls::from_der(good.chain.clone(), good.key(), vec![]));
    assert!(matches!(e, CredentialsError::EmptyBundle), "{e}");
    let e = refused(Tls::from_der(
        good.chain.clone(),
        good.key(),
        vec![CertificateDer::from(b"not a certificate".to_vec())],
    ));
    assert!(matches!(e, CredentialsError::BadRoot(_)), "{e}");

    assert!(Tls::from_der(good.chain.clone(), good.key(), roots()).is_ok());
}

#[test]
fn an_expired_certificate_is_taken_only_when_there_is_nothing_better() {
    let ca = TestCa::new("mesh root");
    let now = SystemTime::now();
    let expired = ca.leaf_valid(&[&uri("web")], now - hours(2), now - hours(1));
    let future = ca.leaf_valid(&[&uri("web")], now + hours(1), now + hours(2));

    // Nothing installed: taken, but not ready (peers would refuse it anyway).
    let tls = Tls::from_der(expired.chain.clone(), expired.key(), vec![ca.root.clone()]).unwrap();
    assert!(!tls.is_ready());
    assert_eq!(tls.local_identity(), Some(id("web")));
    let tls = Tls::from_der(future.chain.clone(), future.key(), vec![ca.root.clone()]).unwrap();
    assert!(
        !tls.is_ready(),
        "a certificate from the future is not ready either"
    );

    // A valid one replaces it; an expired one never replaces a valid one.
    let good = ca.leaf(&[&uri("web")]);
    tls.replace(good.chain.clone(), good.key(), vec![ca.root.clone()])
        .unwrap();
    assert!(tls.is_ready());
    let e = tls
        .replace(expired.chain.clone(), expired.key(), vec![ca.root.clone()])
        .unwrap_err();
    assert!(
        matches!(
            e,
            IdentityError::Credentials(CredentialsError::NotCurrent { .. })
        ),
        "{e}"
    );
    assert!(e.to_string().contains("not now"), "{e}");
    assert_eq!(
        tls.state().current().unwrap().certified.cert[0],
        good.chain[0]
    );
}

#[test]
fn a_refused_replacement_keeps_the_current_credentials() {
    let ca = TestCa::new("mesh root");
    let good = ca.leaf(&[&uri("web")]);
    let tls = tls_with(&good, &[&ca]);
    let bad = ca.leaf(&[&uri("web")]);
    assert!(tls
        .replace(good.chain.clone(), bad.key(), vec![ca.root.clone()])
        .is_err());
    assert_eq!(
        tls.state().current().unwrap().certified.cert[0],
        good.chain[0]
    );
    assert!(tls.is_ready());
}
