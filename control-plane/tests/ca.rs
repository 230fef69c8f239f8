//! Where the CA comes from: the local state directory (generated once, reused, never
//! silently regenerated) and issuer files (a root or an intermediate; bundles with several
//! roots; rotation while running).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use weft_control_plane::ca::{local, Authority, CaError};
use weft_control_plane::{CaSource, StartError};

#[tokio::test]
async fn the_state_dir_ca_is_generated_once_and_reused() {
    let env = Env::new();
    let first = env.start().await;
    let state = env.state();
    for file in [local::CERT_FILE, local::KEY_FILE, local::BUNDLE_FILE] {
        assert!(state.join(file).is_file(), "{file} written");
    }
    let mode = std::fs::metadata(state.join(local::KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "ca.key is private");
    assert_eq!(
        std::fs::read_to_string(local::bundle_path(&state)).unwrap(),
        first.bundle_pem,
        "bundle.crt is the published bundle"
    );
    let key_before = std::fs::read(state.join(local::KEY_FILE)).unwrap();
    let issued_before = certify(&first, &orders_id(), ORDERS_TOKEN).await.unwrap();
    first.shutdown().await.unwrap();

    let second = env.start().await;
    assert_eq!(
        second.bundle_pem,
        std::fs::read_to_string(local::bundle_path(&state)).unwrap()
    );
    assert_eq!(
        std::fs::read(state.join(local::KEY_FILE)).unwrap(),
        key_before,
        "the key was not regenerated"
    );
    // A certificate from the restarted control plane chains to the first run's bundle.
    let issued_after = certify(&second, &orders_id(), ORDERS_TOKEN).await.unwrap();
    check_leaf(
        &issued_after.chain_der,
        &issued_before.trust_bundle_der,
        &orders_id(),
    );
    assert_eq!(
        issued_after.trust_bundle_der,
        issued_before.trust_bundle_der
    );
}

#[tokio::test]
async fn a_corrupt_or_missing_state_file_is_an_error_not_a_new_ca() {
    for (file, damage) in [
        (local::CERT_FILE, "corrupt"),
        (local::KEY_FILE, "corrupt"),
        (local::BUNDLE_FILE, "corrupt"),
        (local::KEY_FILE, "unreadable"),
        (local::BUNDLE_FILE, "missing"),
        (local::CERT_FILE, "missing"),
    ] {
        let env = Env::new();
        env.start().await.shutdown().await.unwrap();
        let state = env.state();
        let path = state.join(file);
        match damage {
            "corrupt" => {
                std::fs::write(&path, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap()
            }
            // A directory where the file should be: unreadable even for root.
            "unreadable" => {
                std::fs::remove_file(&path).unwrap();
                std::fs::create_dir(&path).unwrap();
            }
            "missing" => std::fs::remove_file(&path).unwrap(),
            _ => unreachable!(),
        }
        let snapshot: Vec<_> = [local::CERT_FILE, local::KEY_FILE, local::BUNDLE_FILE]
            .iter()
            .map(|f| std::fs::read(state.join(f)).ok())
            .collect();

        let err = match weft_control_plane::start(env.config()).await {
            Ok(_) => panic!("{damage} {file}: started anyway"),
            Err(err) => err,
        };
        let message = err.to_string();
        assert!(
            message.contains(path.to_str().unwrap()),
            "{damage} {file}: the error names the file: {message}"
        );
        assert!(matches!(err, StartError::Ca(_)), "{damage} {file}: {err:?}");
        let after: Vec<_> = [local::CERT_FILE, local::KEY_FILE, local::BUNDLE_FILE]
            .iter()
            .map(|f| std::fs::read(state.join(f)).ok())
            .collect();
        assert_eq!(snapshot, after, "{damage} {file}: nothing was rewritten");
    }
}

#[tokio::test]
async fn the_issuer_can_be_a_root_from_files() {
    let env = Env::new();
    let root = TestCa::root("Files Root");
    let source = root.files(env.dir.path(), &[&root]);
    let running = weft_control_plane::start(files_config(&env, source))
        .await
        .unwrap();
    let response = certify(&running, &orders_id(), ORDERS_TOKEN).await.unwrap();
    check_leaf(
        &response.chain_der,
        &response.trust_bundle_der,
        &orders_id(),
    );
    assert_eq!(response.chain_der[1], root.der.to_vec(), "leaf + root");
    assert_eq!(response.trust_bundle_der, vec![root.der.to_vec()]);
    assert!(running.ca().authority().issuer_is_root());
}

#[tokio::test]
async fn the_issuer_can_be_an_intermediate_and_the_bundle_can_hold_two_roots() {
    let env = Env::new();
    let old_root = TestCa::root("Old Root");
    let new_root = TestCa::root("New Root");
    let intermediate = TestCa::intermediate("Weft Issuer", &new_root);
    let source = intermediate.files(env.dir.path(), &[&old_root, &new_root]);
    let running = weft_control_plane::start(files_config(&env, source))
        .await
        .unwrap();
    assert!(!running.ca().authority().issuer_is_root());

    let response = certify(&running, &orders_id(), ORDERS_TOKEN).await.unwrap();
    // The whole bundle, in order.
    assert_eq!(
        response.trust_bundle_der,
        vec![old_root.der.to_vec(), new_root.der.to_vec()]
    );
    // Leaf + intermediate, chaining to the new root alone.
    assert_eq!(response.chain_der[1], intermediate.der.to_vec());
    check_leaf(&response.chain_der, &[new_root.der.to_vec()], &orders_id());
    assert_eq!(running.bundle_pem, bundle_pem(&[&old_root, &new_root]));
}

#[test]
fn issuer_files_that_do_not_fit_together_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let root = TestCa::root("Root A");
    let other = TestCa::root("Root B");
    let intermediate = TestCa::intermediate("Issuer under A", &root);
    let load = |source: CaSource| match source {
        CaSource::Files {
            issuer_cert,
            issuer_key,
            trust_bundle,
        } => Authority::load(&issuer_cert, &issuer_key, &trust_bundle),
        _ => unreachable!(),
    };

    // An intermediate whose root is not in the bundle.
    let err = load(intermediate.files(dir.path(), &[&other])).unwrap_err();
    assert!(err.to_string().contains("Root B"), "{err}");
    assert!(err.to_string().contains("issuer.crt"), "{err}");

    // A key that belongs to another certificate.
    let source = root.files(dir.path(), &[&root]);
    std::fs::write(dir.path().join("issuer.key"), &other.key_pem).unwrap();
    let err = load(source).unwrap_err();
    assert!(err.to_string().contains("does not belong"), "{err}");

    // A SEC1 key gets a conversion hint.
    let source = root.files(dir.path(), &[&root]);
    std::fs::write(
        dir.path().join("issuer.key"),
        "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB\n-----END EC PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = load(source).unwrap_err();
    assert!(matches!(err, CaError::BadFile { .. }), "{err:?}");
    assert!(err.to_string().contains("issuer.key"), "{err}");

    // A leaf certificate is not an issuer.
    let leaf = rcgen::CertificateParams::new(vec!["leaf.example".to_string()])
        .unwrap()
        .self_signed(&p256())
        .unwrap();
    let source = root.files(dir.path(), &[&root]);
    std::fs::write(dir.path().join("issuer.crt"), leaf.pem()).unwrap();
    let err = load(source).unwrap_err();
    assert!(err.to_string().contains("not a CA"), "{err}");

    // An empty bundle.
    let source = root.files(dir.path(), &[&root]);
    std::fs::write(dir.path().join("bundle.pem"), "").unwrap();
    let err = load(source).unwrap_err();
    assert!(err.to_string().contains("bundle.pem"), "{err}");
}

#[tokio::test]
async fn trust_anchor_rotation_while_running() {
    let env = Env::new();
    let old_root = TestCa::root("Old Root");
    let new_root = TestCa::root("New Root");
    let new_issuer = TestCa::intermediate("New Issuer", &new_root);
    // Loaded in memory: no file watcher to race with the replacements below.
    let mut config = files_config(
        &env,
        CaSource::Authority(Box::new(
            Authority::from_pem(&old_root.cert_pem, &old_root.key_pem, &old_root.cert_pem).unwrap(),
        )),
    );
    config.cert_lifetime = Duration::from_secs(3600);
    let running = weft_control_plane::start(config).await.unwrap();
    let old_cert = server_cert_issuer(&running).await;

    // 1. Add the new root, 2. switch the issuer to one under it (both at once here, as the
    // files a Secret update would bring).
    let rotated = Authority::from_pem(
        &new_issuer.cert_pem,
        &new_issuer.key_pem,
        &bundle_pem(&[&old_root, &new_root]),
    )
    .unwrap();
    running.ca().replace(rotated);
    let response = certify(&running, &orders_id(), ORDERS_TOKEN).await.unwrap();
    assert_eq!(response.chain_der[1], new_issuer.der.to_vec());
    assert_eq!(response.trust_bundle_der.len(), 2);
    check_leaf(&response.chain_der, &[new_root.der.to_vec()], &orders_id());
    // The control plane re-issues its own serving certificate under the new issuer.
    let switched = eventually(Duration::from_secs(5), || async {
        server_cert_issuer(&running).await != old_cert
    })
    .await;
    assert!(
        switched,
        "the serving certificate was not re-issued after rotation"
    );

    // 3. Drop the old root.
    running.ca().replace(
        Authority::from_pem(
            &new_issuer.cert_pem,
            &new_issuer.key_pem,
            &new_root.cert_pem,
        )
        .unwrap(),
    );
    let response = certify(&running, &orders_id(), ORDERS_TOKEN).await.unwrap();
    assert_eq!(response.trust_bundle_der, vec![new_root.der.to_vec()]);
}

#[tokio::test]
async fn issuer_files_are_reloaded_when_they_change() {
    let env = Env::new();
    let old_root = TestCa::root("Old Root");
    let new_root = TestCa::root("New Root");
    let running = weft_control_plane::start(files_config(
        &env,
        old_root.files(env.dir.path(), &[&old_root]),
    ))
    .await
    .unwrap();
    // A half-done update (new cert, old key) is refused and the old issuer stays.
    std::fs::write(env.dir.path().join("issuer.crt"), &new_root.cert_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let response = certify(&running, &orders_id(), ORDERS_TOKEN).await.unwrap();
    assert_eq!(response.chain_der[1], old_root.der.to_vec());
    // Completing it (key and bundle) switches over.
    std::fs::write(
        env.dir.path().join("bundle.pem"),
        bundle_pem(&[&old_root, &new_root]),
    )
    .unwrap();
    std::fs::write(env.dir.path().join("issuer.key"), &new_root.key_pem).unwrap();
    let switched = eventually(Duration::from_secs(5), || async {
        running.ca().authority().issuer_cert().as_ref() == new_root.der.as_ref()
    })
    .await;
    assert!(switched, "the new issuer files were not picked up");
    let response = certify(&running, &orders_id(), ORDERS_TOKEN).await.unwrap();
    assert_eq!(response.chain_der[1], new_root.der.to_vec());
    assert_eq!(response.trust_bundle_der.len(), 2);
}

/// The issuer name of the serving certificate the control plane presents right now.
async fn server_cert_issuer(running: &weft_control_plane::Running) -> Vec<u8> {
    use x509_parser::prelude::FromDer;
    // Trust every root the CA has had, so the handshake works on both sides of a rotation.
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
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&leaf).unwrap();
    cert.issuer().as_raw().to_vec()
}
