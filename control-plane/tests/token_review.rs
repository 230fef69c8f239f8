//! Kubernetes mode's TokenReview authenticator.
//!
//! This is the one mock in the control plane's tests: there is no API server here, so a
//! hand-written `tower::Service` stands in for one behind a real `kube::Client`, answering
//! TokenReview creates with API-server responses (tests/data/, hand-written in the shape a
//! real API server returns, including its wrong-audience error text and its 403 Status).
//! Everything on our side of the HTTP request — kube's request building, JSON decoding, the
//! review's interpretation, the gRPC mapping — is the real code.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use common::*;
use http_body_util::BodyExt;
use tonic::Code;
use weft_control_plane::auth::{
    AuthError, Authenticator, TokenReviewAuthenticator, DEFAULT_AUDIENCE,
};
use weft_control_plane::AuthSource;

const AUTHENTICATED: &str = include_str!("data/tokenreview-authenticated.json");
const UNAUTHENTICATED: &str = include_str!("data/tokenreview-unauthenticated.json");
const FORBIDDEN: &str = include_str!("data/tokenreview-forbidden.json");

/// What the fake API server saw: method, path, body.
type Seen = Arc<Mutex<Vec<(String, String, serde_json::Value)>>>;

#[derive(Clone)]
struct FakeApiServer {
    seen: Seen,
}

impl tower::Service<http::Request<kube::client::Body>> for FakeApiServer {
    type Response = http::Response<kube::client::Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<kube::client::Body>) -> Self::Future {
        let seen = self.seen.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let bytes = body.collect().await.unwrap().to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let token = json["spec"]["token"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            seen.lock().unwrap().push((
                parts.method.to_string(),
                parts.uri.path().to_owned(),
                json,
            ));
            let (status, body) = match token.as_str() {
                "good-orders-token" => (201, AUTHENTICATED.to_owned()),
                "wrong-audience-token" => (201, UNAUTHENTICATED.to_owned()),
                // An authenticator that isn't audience-aware: authenticated, no audiences.
                "no-audience-token" => (
                    201,
                    AUTHENTICATED.replace(r#","audiences":["weft.dev/identity"]}}"#, "}}"),
                ),
                "a-person-token" => (
                    201,
                    AUTHENTICATED.replace("system:serviceaccount:shop:orders", "jane@example.com"),
                ),
                _ => (403, FORBIDDEN.to_owned()),
            };
            Ok(http::Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(kube::client::Body::from(body.into_bytes()))
                .unwrap())
        })
    }
}

fn authenticator() -> (TokenReviewAuthenticator, Seen) {
    let seen = Seen::default();
    let client = kube::Client::new(FakeApiServer { seen: seen.clone() }, "default");
    (
        TokenReviewAuthenticator::new(client, DEFAULT_AUDIENCE),
        seen,
    )
}

#[tokio::test]
async fn an_authenticated_review_names_the_service_account() {
    let (auth, seen) = authenticator();
    let account = auth.authenticate("good-orders-token").await.unwrap();
    assert_eq!(
        (account.namespace.as_str(), account.name.as_str()),
        ("shop", "orders")
    );

    let seen = seen.lock().unwrap();
    let (method, path, body) = &seen[0];
    assert_eq!(method, "POST");
    assert_eq!(path, "/apis/authentication.k8s.io/v1/tokenreviews");
    assert_eq!(body["spec"]["token"], "good-orders-token");
    assert_eq!(
        body["spec"]["audiences"],
        serde_json::json!(["weft.dev/identity"])
    );
}

#[tokio::test]
async fn refusals_say_why_and_unavailability_is_told_apart() {
    let (auth, _) = authenticator();
    let err = auth.authenticate("wrong-audience-token").await.unwrap_err();
    assert!(
        matches!(&err, AuthError::Invalid(m) if m.contains("invalid for the target audiences")),
        "{err}"
    );

    let err = auth.authenticate("no-audience-token").await.unwrap_err();
    assert!(
        matches!(&err, AuthError::Invalid(m) if m.contains("not weft.dev/identity")),
        "{err}"
    );

    let err = auth.authenticate("a-person-token").await.unwrap_err();
    assert!(
        matches!(&err, AuthError::Invalid(m) if m.contains("not a service account")),
        "{err}"
    );

    // Our own service account may not create TokenReviews: our problem, not the caller's.
    let err = auth.authenticate("anything-else").await.unwrap_err();
    assert!(
        matches!(&err, AuthError::Unavailable(m) if m.contains("forbidden")),
        "{err}"
    );
    assert!(!err.to_string().contains("anything-else"), "{err}");
}

#[tokio::test]
async fn certify_through_token_review() {
    let env = Env::new();
    let (auth, _) = authenticator();
    let running = weft_control_plane::start(weft_control_plane::Config {
        auth: AuthSource::Custom(Arc::new(auth)),
        ..env.config()
    })
    .await
    .unwrap();
    let response = certify(&running, &orders_id(), "good-orders-token")
        .await
        .unwrap();
    check_leaf(
        &response.chain_der,
        &response.trust_bundle_der,
        &orders_id(),
    );

    let status = certify(&running, &web_id(), "good-orders-token")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = certify(&running, &orders_id(), "wrong-audience-token")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = certify(&running, &orders_id(), "api-server-says-no")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}
