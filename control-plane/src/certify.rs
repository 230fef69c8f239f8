//! The `Certify` RPC: authenticate the token, check the caller asks for its own identity,
//! sign the CSR. Status codes are the ones `identity.proto` documents:
//!
//! | failure | code |
//! |---|---|
//! | token unknown, expired, wrong audience | `UNAUTHENTICATED` |
//! | token for another identity than `request.identity` | `PERMISSION_DENIED` |
//! | garbled CSR, wrong key type, extra names; `identity` not a SPIFFE ID | `INVALID_ARGUMENT` |
//! | the token could not be checked (API server away) | `UNAVAILABLE` |
//! | signing failed on our side | `INTERNAL` |

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use tonic::{Request, Response, Status};
use tracing::Instrument;
use weft_api::proto::identity::v1::identity_server::{Identity, IdentityServer};
use weft_api::proto::identity::v1::{CertifyRequest, CertifyResponse};
use weft_api::SpiffeId;

use crate::auth::{AuthError, Authenticator};
use crate::ca::Ca;

pub struct CertifyService {
    ca: Arc<Ca>,
    auth: Arc<dyn Authenticator>,
    trust_domain: String,
}

impl CertifyService {
    pub fn new(ca: Arc<Ca>, auth: Arc<dyn Authenticator>, trust_domain: impl Into<String>) -> Self {
        CertifyService {
            ca,
            auth,
            trust_domain: trust_domain.into(),
        }
    }

    /// The tonic service to add to a server.
    pub fn into_server(self) -> IdentityServer<Self> {
        IdentityServer::new(self)
    }

    async fn certify(&self, request: CertifyRequest) -> Result<CertifyResponse, Status> {
        let account = self.auth.authenticate(&request.token).await.map_err(|e| {
            tracing::info!(requested = %request.identity, error = %e, "certify refused");
            match e {
                AuthError::Invalid(_) => Status::unauthenticated(e.to_string()),
                AuthError::Unavailable(_) => Status::unavailable(e.to_string()),
            }
        })?;
        let identity =
            SpiffeId::for_service_account(&self.trust_domain, &account.namespace, &account.name)
                .ok()
                .filter(|id| id.service_account() == Some((&account.namespace, &account.name)))
                .ok_or_else(|| {
                    Status::permission_denied(format!(
                        "service account {account} cannot be named as a SPIFFE ID"
                    ))
                })?;
        let requested: SpiffeId = request.identity.parse().map_err(|e| {
            Status::invalid_argument(format!("the requested identity is not valid: {e}"))
        })?;
        if requested != identity {
            tracing::info!(%requested, token_identity = %identity, "certify refused: identity mismatch");
            return Err(Status::permission_denied(format!(
                "the token is for {identity}, but the request asks for {requested}"
            )));
        }
        let issued = self.ca.sign(&request.csr_der, &identity).map_err(|e| {
            if e.is_bad_request() {
                tracing::info!(%identity, error = %e, "certify refused: bad CSR");
                Status::invalid_argument(e.to_string())
            } else {
                tracing::error!(%identity, error = %e, "signing failed");
                Status::internal(e.to_string())
            }
        })?;
        let not_after_ms = issued
            .not_after
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        tracing::info!(
            %identity,
            not_after = %humantime::format_rfc3339_seconds(issued.not_after),
            "certificate issued"
        );
        Ok(CertifyResponse {
            chain_der: issued.chain.into_iter().map(|c| c.to_vec()).collect(),
            trust_bundle_der: issued
                .trust_bundle
                .into_iter()
                .map(|c| c.to_vec())
                .collect(),
            not_after_unix_ms: not_after_ms,
        })
    }
}

#[tonic::async_trait]
impl Identity for CertifyService {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let peer = request
            .extensions()
            .get::<crate::server::PeerInfo>()
            .and_then(|p| p.remote_addr)
            .map(|addr| addr.to_string())
            .unwrap_or_default();
        CertifyService::certify(self, request.into_inner())
            .instrument(tracing::info_span!("certify", %peer))
            .await
            .map(Response::new)
    }
}
