//! Proving which service account a proxy runs as. The proxy sends a token; an
//! [`Authenticator`] turns it into a namespace and service account or says why not.
//!
//! - [`TokenFile`]: local mode, a YAML file mapping tokens to service accounts.
//! - [`TokenReviewAuthenticator`]: Kubernetes, the API server's TokenReview.

mod kubernetes;
mod token_file;

use std::future::Future;
use std::pin::Pin;

pub use kubernetes::{parse_service_account_username, TokenReviewAuthenticator, DEFAULT_AUDIENCE};
pub use token_file::{TokenFile, TokenFileError};

/// A Kubernetes service account.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why a token was not accepted. Messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The token is unknown, expired, for another audience, or not a service account's:
    /// the caller's fault (UNAUTHENTICATED).
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token could not be checked right now (the API server is unreachable, or refused
    /// the review): our fault, worth retrying (UNAVAILABLE).
    #[error("the token could not be checked: {0}")]
    Unavailable(String),
}

pub type AuthFuture<'a> =
    Pin<Box<dyn Future<Output = Result<ServiceAccount, AuthError>> + Send + 'a>>;

/// Checks a token and says which service account it proves.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a>;
}
