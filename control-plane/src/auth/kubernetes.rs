//! Kubernetes: a projected service-account token checked with the API server's TokenReview
//! (authentication.k8s.io/v1). The review asks for our audience, so a token minted for
//! anything else (the API server's default audience, another mesh) is refused. The control
//! plane's own service account needs `system:auth-delegator` (create tokenreviews).

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::Api;

use super::{AuthError, AuthFuture, Authenticator, ServiceAccount};

/// The audience proxies' projected tokens are minted for, unless configured otherwise.
pub const DEFAULT_AUDIENCE: &str = "weft.dev/identity";

pub struct TokenReviewAuthenticator {
    api: Api<TokenReview>,
    audience: String,
}

impl TokenReviewAuthenticator {
    /// Reviews tokens through `client`, requiring `audience`.
    pub fn new(client: kube::Client, audience: impl Into<String>) -> Self {
        TokenReviewAuthenticator {
            api: Api::all(client),
            audience: audience.into(),
        }
    }

    /// Uses the in-cluster (or kubeconfig) client configuration.
    pub async fn from_environment(audience: impl Into<String>) -> Result<Self, kube::Error> {
        Ok(Self::new(kube::Client::try_default().await?, audience))
    }

    async fn review(&self, token: &str) -> Result<ServiceAccount, AuthError> {
        let request = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let reviewed = self
            .api
            .create(&PostParams::default(), &request)
            .await
            .map_err(|e| {
                AuthError::Unavailable(format!(
                    "TokenReview failed (does the control plane's service account have \
                     system:auth-delegator?): {e}"
                ))
            })?;
        let status = reviewed.status.ok_or_else(|| {
            AuthError::Unavailable("the TokenReview came back without a status".into())
        })?;
        if status.authenticated != Some(true) {
            let why = status
                .error
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "the API server did not authenticate it".into());
            return Err(AuthError::Invalid(why));
        }
        let audiences = status.audiences.unwrap_or_default();
        if !audiences.contains(&self.audience) {
            return Err(AuthError::Invalid(format!(
                "the token is for audiences [{}], not {}",
                audiences.join(", "),
                self.audience
            )));
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        parse_service_account_username(&username).ok_or_else(|| {
            AuthError::Invalid(format!(
                "the token belongs to {username:?}, which is not a service account"
            ))
        })
    }
}

impl Authenticator for TokenReviewAuthenticator {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
        Box::pin(self.review(token))
    }
}

/// `system:serviceaccount:<namespace>:<name>` → the service account.
pub fn parse_service_account_username(username: &str) -> Option<ServiceAccount> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (namespace, name) = rest.split_once(':')?;
    if namespace.is_empty() || name.is_empty() || name.contains(':') {
        return None;
    }
    Some(ServiceAccount {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_usernames() {
        let sa = parse_service_account_username("system:serviceaccount:shop:orders").unwrap();
        assert_eq!(
            (sa.namespace.as_str(), sa.name.as_str()),
            ("shop", "orders")
        );
        for bad in [
            "system:serviceaccount:shop",
            "system:serviceaccount::orders",
            "system:serviceaccount:shop:",
            "system:serviceaccount:a:b:c",
            "kubernetes-admin",
            "system:node:worker-1",
        ] {
            assert_eq!(parse_service_account_username(bad), None, "{bad}");
        }
    }
}
