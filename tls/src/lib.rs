//! SPIFFE certificate verification for rustls, shared by the proxy (its data path and its
//! control-plane client) and the control plane's own clients.
//!
//! Mesh peers have no DNS names. A peer is authenticated by a chain to a [`TrustBundle`] and
//! named by its leaf's single URI SAN, a SPIFFE ID ([`leaf_identity`]):
//!
//! - [`ServerIdVerifier`]: a client's check of a server — the chain verifies for server use
//!   and the SPIFFE ID is the one expected ([`PeerError::WrongIdentity`] otherwise).
//! - [`ClientIdVerifier`]: a server's check of a client — a certificate is required, the
//!   chain verifies for client use and names exactly one SPIFFE ID; read it after the
//!   handshake with [`peer_identity`]. Who may call is authorization's business.
//!
//! Both read the bundle from a [`BundleCell`] on every handshake, so a new bundle applies to
//! the next handshake without a new rustls config. A refusal by SPIFFE ID is a
//! `rustls::Error::InvalidCertificate(CertificateError::Other(..))` wrapping a [`PeerError`].
//!
//! The crypto provider is the caller's (ring in Weft); this crate enables no TLS 1.2.

mod leaf;
mod verify;

#[cfg(test)]
mod tests;

pub use leaf::{leaf_identity, peer_identity, LeafError};
pub use verify::{
    BundleCell, BundleError, ClientIdVerifier, PeerError, ServerIdVerifier, TrustBundle,
};
