//! The proxy's workload identity: the SPIFFE ID it proves with its certificate, the trust
//! bundle it checks peers against, and the rustls configs the data path uses for mTLS.
//!
//! Read in this order: [`mode`] turns the bootstrap flags into a source; [`tls`] holds the
//! current credentials and builds the configs, whose verifiers (from [`weft_tls`]) check
//! peers by SPIFFE ID; [`credentials`] checks our own certificate before it is installed;
//! [`refresh`] keeps a control-plane certificate fresh through [`control_plane`]; [`files`]
//! reloads one from disk.
//!
//! ```text
//! let tls = identity::start(&args.identity, &mut registry).await?;   // None: mTLS off
//! // inbound:  TlsAcceptor::from(tls.server_config()), then peer_identity(peer certs)
//! // outbound: TlsConnector::from(tls.client_config(&expected_id, &[b"h2"]))
//! ```

pub mod control_plane;
pub mod credentials;
pub mod files;
pub mod metrics;
pub mod mode;
pub mod refresh;
pub mod tls;

#[cfg(test)]
mod testca;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use prometheus_client::registry::Registry;

pub use credentials::{Credentials, CredentialsError};
pub use files::FileSource;
pub use metrics::IdentityMetrics;
pub use mode::{ControlPlaneSource, Mode};
pub use tls::Tls;
pub use weft_tls::{leaf_identity, peer_identity, LeafError, PeerError, TrustBundle};

use crate::bootstrap::IdentityArgs;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("identity: {0}")]
    Config(String),
    #[error("identity: certificate files: {0}")]
    Files(CredentialsError),
    #[error("identity: --trust-anchors: {0}")]
    TrustAnchors(CredentialsError),
    #[error("identity: {0}")]
    Watch(#[from] crate::fswatch::WatchError),
    #[error("identity: {0}")]
    Credentials(#[from] CredentialsError),
}

/// Starts the identity source the flags choose and registers its metrics (under
/// `weft_identity_`): `None` when identity is disabled. Returns without waiting for a
/// certificate in control-plane mode — [`Tls::ready`] resolves when the first one is in; in
/// files mode the files are loaded (or start fails) before it returns. The source stops when
/// the last `Arc<Tls>` is dropped.
pub async fn start(
    args: &IdentityArgs,
    registry: &mut Registry,
) -> Result<Option<Arc<Tls>>, IdentityError> {
    start_mode(Mode::from_args(args)?, registry)
}

/// [`start`] for an already resolved [`Mode`].
pub fn start_mode(mode: Mode, registry: &mut Registry) -> Result<Option<Arc<Tls>>, IdentityError> {
    match mode {
        Mode::Disabled => {
            tracing::info!("identity: no certificate source configured; mTLS is off");
            Ok(None)
        }
        Mode::Files(source) => {
            let metrics = IdentityMetrics::new(registry);
            Ok(Some(Arc::new(files::start(source, metrics)?)))
        }
        Mode::ControlPlane(source) => {
            let metrics = IdentityMetrics::new(registry);
            let tls = Tls::empty();
            let anchors = trust_anchors(&source, &tls)?;
            let certifier = control_plane::ControlPlane::new(
                &source.addr,
                &source.control_plane,
                anchors,
                &tls,
                source.identity.clone(),
                source.token_file.clone(),
            )?;
            tracing::info!(
                identity = %source.identity,
                control_plane = %source.addr,
                control_plane_identity = %source.control_plane,
                "identity: requesting a workload certificate from the control plane"
            );
            refresh::spawn(certifier, &tls, metrics, source.identity);
            Ok(Some(Arc::new(tls)))
        }
    }
}

/// The roots of `--trust-anchors`, which the control plane's certificate may chain to (as
/// well as to the workload's own bundle).
pub(crate) fn trust_anchors(
    source: &ControlPlaneSource,
    tls: &Tls,
) -> Result<Arc<TrustBundle>, IdentityError> {
    let roots = credentials::read_certs(&source.trust_anchors, "trust anchor")
        .map_err(IdentityError::TrustAnchors)?;
    let anchors = TrustBundle::new(roots, &tls.state().provider)
        .map_err(|e| IdentityError::TrustAnchors(e.into()))?;
    Ok(Arc::new(anchors))
}
