//! Mesh TLS on the data path: telling a ClientHello from plaintext on inbound connections,
//! terminating it, and originating it to meshed upstreams. Which certificates and roots are
//! used is [`crate::identity`]'s business; this module only moves connections through
//! handshakes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};
use weft_api::SpiffeId;

use crate::identity::{peer_identity, Tls};

/// The first byte of every TLS record carrying a handshake (RFC 8446 §5.1). No HTTP request
/// and no common plaintext protocol starts with it.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// ALPN ids the mesh uses on a hop between proxies.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Whether the peer's first byte starts a TLS handshake. Waits at most `timeout` for it: a
/// peer that sends nothing (a server-speaks-first protocol) is not TLS.
pub async fn starts_with_client_hello(stream: &TcpStream, timeout: Duration) -> bool {
    let mut first = [0u8; 1];
    matches!(
        tokio::time::timeout(timeout, stream.peek(&mut first)).await,
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE_RECORD
    )
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake from {peer} failed: {reason}")]
    Inbound { peer: SocketAddr, reason: String },
    #[error(
        "TLS handshake from {peer} ended without a usable SPIFFE ID in the client certificate"
    )]
    NoPeerIdentity { peer: SocketAddr },
    #[error("TLS handshake with {addr} (expecting {identity}) failed: {reason}")]
    Outbound {
        addr: SocketAddr,
        identity: SpiffeId,
        reason: String,
    },
    #[error("TLS handshake with {addr} timed out after {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
}

/// A terminated inbound mesh connection.
pub struct Accepted {
    pub stream: server::TlsStream<TcpStream>,
    /// The caller's identity, from its verified certificate.
    pub client_id: SpiffeId,
    /// The negotiated ALPN protocol, if any.
    pub alpn: Option<Vec<u8>>,
}

/// Terminates mesh TLS: a client certificate is required and verified by the identity's
/// server config; the caller's SPIFFE ID is read from it.
pub async fn accept(
    tls: &Tls,
    stream: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Result<Accepted, HandshakeError> {
    let acceptor = TlsAcceptor::from(tls.server_config());
    let stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Err(_) => {
            return Err(HandshakeError::Timeout {
                addr: peer,
                timeout,
            })
        }
        Ok(Err(e)) => {
            return Err(HandshakeError::Inbound {
                peer,
                reason: e.to_string(),
            })
        }
        Ok(Ok(stream)) => stream,
    };
    let (_, session) = stream.get_ref();
    let client_id = session
        .peer_certificates()
        .and_then(peer_identity)
        .ok_or(HandshakeError::NoPeerIdentity { peer })?;
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    Ok(Accepted {
        stream,
        client_id,
        alpn,
    })
}

/// Originates mesh TLS to `addr`, which must present `identity`. The SNI-less server name is
/// the address: peers are verified by SPIFFE ID, never by DNS name.
pub async fn connect(
    tls: &Tls,
    stream: TcpStream,
    addr: SocketAddr,
    identity: &SpiffeId,
    alpn: &[&[u8]],
    timeout: Duration,
) -> Result<client::TlsStream<TcpStream>, HandshakeError> {
    let connector = TlsConnector::from(tls.client_config(identity, alpn));
    let server_name = ServerName::IpAddress(addr.ip().into());
    match tokio::time::timeout(timeout, connector.connect(server_name, stream)).await {
        Err(_) => Err(HandshakeError::Timeout { addr, timeout }),
        Ok(Err(e)) => Err(HandshakeError::Outbound {
            addr,
            identity: identity.clone(),
            reason: e.to_string(),
        }),
        Ok(Ok(stream)) => Ok(stream),
    }
}

/// Where an upstream connection goes, and who must answer there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub addr: SocketAddr,
    /// Set for meshed upstreams: the connection is mTLS and the peer must be this identity.
    pub identity: Option<SpiffeId>,
}

/// By hand, to feed the hasher one integer for an IPv4 address and port: the connection
/// pool looks its upstream up twice per request, and the derived hash (four separate
/// writes into SipHash for the address alone) was most of the cost of those lookups. It
/// agrees with the derived `Eq`: equal upstreams have equal addresses, ports and identities.
impl std::hash::Hash for Upstream {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self.addr {
            SocketAddr::V4(v4) => {
                state.write_u64((u64::from(v4.ip().to_bits()) << 16) | u64::from(v4.port()))
            }
            SocketAddr::V6(v6) => {
                state.write_u128(v6.ip().to_bits());
                state.write_u16(v6.port());
            }
        }
        if let Some(identity) = &self.identity {
            identity.hash(state);
        }
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.identity {
            Some(id) => write!(f, "{} ({id})", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

impl Upstream {
    pub fn plain(addr: SocketAddr) -> Self {
        Upstream {
            addr,
            identity: None,
        }
    }
}

/// Shared, since every pool and forwarder needs it and it is immutable apart from its
/// certificates (which swap inside it).
pub type SharedTls = Option<Arc<Tls>>;

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// The hand-written hash keeps apart what `Eq` keeps apart, as the pool's maps need.
    #[test]
    fn upstreams_are_told_apart_as_keys() {
        let id: SpiffeId = "spiffe://td/ns/shop/sa/orders".parse().unwrap();
        let upstreams = [
            Upstream::plain("10.0.0.1:80".parse().unwrap()),
            Upstream::plain("10.0.0.1:81".parse().unwrap()),
            Upstream::plain("10.0.0.2:80".parse().unwrap()),
            Upstream::plain("[::1]:80".parse().unwrap()),
            Upstream::plain("[::2]:80".parse().unwrap()),
            Upstream {
                addr: "10.0.0.1:80".parse().unwrap(),
                identity: Some(id.clone()),
            },
            Upstream {
                addr: "[::1]:80".parse().unwrap(),
                identity: Some(id),
            },
        ];
        let map: HashMap<Upstream, usize> = upstreams
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, u)| (u, i))
            .collect();
        assert_eq!(map.len(), upstreams.len());
        for (i, upstream) in upstreams.iter().enumerate() {
            assert_eq!(map.get(&upstream.clone()), Some(&i), "{upstream}");
        }
    }
}
