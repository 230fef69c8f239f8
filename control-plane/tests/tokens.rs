//! Local mode's token file: reloaded on change, a bad edit reported and ignored.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tonic::Code;
use weft_control_plane::auth::{Authenticator, TokenFile};
use weft_control_plane::AuthSource;

#[tokio::test]
async fn the_token_file_is_reloaded_and_a_bad_edit_keeps_the_last_good_tokens() {
    let env = Env::new();
    write_tokens(&env.tokens(), &[(ORDERS_TOKEN, "shop", "orders")]);
    let tokens = Arc::new(TokenFile::watch(&env.tokens()).unwrap());
    let running = weft_control_plane::start(weft_control_plane::Config {
        auth: AuthSource::Custom(tokens.clone()),
        ..env.config()
    })
    .await
    .unwrap();
    certify(&running, &orders_id(), ORDERS_TOKEN).await.unwrap();
    let status = certify(&running, &web_id(), WEB_TOKEN).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // Add web, drop orders.
    write_tokens(&env.tokens(), &[(WEB_TOKEN, "shop", "web")]);
    let reloaded = eventually(Duration::from_secs(5), || async {
        certify(&running, &web_id(), WEB_TOKEN).await.is_ok()
    })
    .await;
    assert!(reloaded, "the new token was not picked up");
    let status = certify(&running, &orders_id(), ORDERS_TOKEN)
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unauthenticated,
        "removed tokens stop working"
    );

    // A bad edit: reported, and web's token keeps working.
    std::fs::write(env.tokens(), "tokens:\n  - token: x\n    namespace: shop\n").unwrap();
    let reported = eventually(Duration::from_secs(5), || async {
        tokens.last_error().is_some()
    })
    .await;
    assert!(reported, "the bad edit was not reported");
    let error = tokens.last_error().unwrap();
    assert!(error.contains("tokens.yaml"), "{error}");
    assert!(error.contains("serviceAccount"), "{error}");
    certify(&running, &web_id(), WEB_TOKEN).await.unwrap();

    // Fixing it clears the error.
    write_tokens(
        &env.tokens(),
        &[(WEB_TOKEN, "shop", "web"), (ORDERS_TOKEN, "shop", "orders")],
    );
    let fixed = eventually(Duration::from_secs(5), || async {
        tokens.last_error().is_none()
    })
    .await;
    assert!(fixed);
    certify(&running, &orders_id(), ORDERS_TOKEN).await.unwrap();
}

#[tokio::test]
async fn a_token_file_that_is_bad_at_start_is_an_error_naming_it() {
    let env = Env::new();
    std::fs::write(env.tokens(), "tokens: [{token: a, namespace: shop}]\n").unwrap();
    let err = weft_control_plane::start(env.config())
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("tokens.yaml"), "{err}");

    std::fs::remove_file(env.tokens()).unwrap();
    let err = weft_control_plane::start(env.config())
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("tokens.yaml"), "{err}");
}

#[tokio::test]
async fn lookups() {
    let env = Env::new();
    let tokens = TokenFile::load(&env.tokens()).unwrap();
    assert_eq!(tokens.len(), 2);
    let sa = tokens.authenticate(ORDERS_TOKEN).await.unwrap();
    assert_eq!(
        (sa.namespace.as_str(), sa.name.as_str()),
        ("shop", "orders")
    );
    let err = tokens.authenticate("nope").await.unwrap_err();
    assert!(matches!(
        err,
        weft_control_plane::auth::AuthError::Invalid(_)
    ));
    // Case matters; no prefix matching.
    assert!(tokens
        .authenticate(&ORDERS_TOKEN.to_uppercase())
        .await
        .is_err());
    assert!(tokens.authenticate(&ORDERS_TOKEN[..5]).await.is_err());
}
