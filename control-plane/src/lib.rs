//! Weft's control plane. Today: the identity CA and its `Certify` gRPC service, which signs
//! short-lived certificates naming a workload's service account as a SPIFFE ID for proxies
//! that prove that account with a token. Discovery and policy push come next.
//!
//! Start one in-process (tests, other crates' tests) with [`start`]:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let running = weft_control_plane::start(weft_control_plane::Config::local(
//!     "/tmp/weft-state",          // CA generated here on first start, reused after
//!     "/tmp/weft-tokens.yaml",    // tokens: [{token, namespace, serviceAccount}]
//! ))
//! .await?;
//! // running.addr: 127.0.0.1:<port>, gRPC over TLS 1.3 (ALPN h2).
//! // running.bundle_pem: the trust anchors proxies verify everything against.
//! // running.server_identity: the URI SAN the server's certificate must carry.
//! let mut client = running.client().await?;
//! # let _ = &mut client; Ok(()) }
//! ```

mod admin;
pub mod auth;
pub mod ca;
pub mod certify;
pub mod client;
pub mod convert;
pub mod discovery;
pub mod index;
pub mod publish;
mod server;
pub mod sources;
pub mod state;
mod tls;
mod watch;

pub use server::{
    start, AuthSource, CaSource, Config, PeerInfo, Running, Source, StartError, DEFAULT_ADMIN_ADDR,
    DEFAULT_GRPC_ADDR, DEFAULT_NAMESPACE, DEFAULT_SERVICE_ACCOUNT, DEFAULT_TRUST_DOMAIN,
    HANDSHAKE_TIMEOUT, SHUTDOWN_GRACE,
};
pub use tls::provider;
pub use watch::WatchError;
