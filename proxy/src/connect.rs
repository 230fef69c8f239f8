//! Opening upstream TCP connections, with a timeout and errors that say which kind of failure
//! it was (refused and timed out mean different things to an operator).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::metrics::ErrorKind;
use crate::tls::{HandshakeError, SharedTls, Upstream};
use weft_api::SpiffeId;

/// Cloneable so that requests waiting on one connection attempt can all get its failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    #[error("connection to {addr} refused")]
    Refused { addr: SocketAddr },
    #[error("connection to {addr} timed out after {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("connection to {addr} failed: {source}")]
    Io {
        addr: SocketAddr,
        source: std::sync::Arc<std::io::Error>,
    },
    #[error(transparent)]
    Tls(#[from] HandshakeError),
    #[error(
        "{addr} is a meshed upstream ({identity}) but this proxy has no identity to connect with"
    )]
    NoIdentity {
        addr: SocketAddr,
        identity: SpiffeId,
    },
}

impl ConnectError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ConnectError::Refused { .. } => ErrorKind::ConnectRefused,
            ConnectError::Timeout { .. } => ErrorKind::ConnectTimeout,
            ConnectError::Io { .. } => ErrorKind::ConnectError,
            ConnectError::Tls(_) | ConnectError::NoIdentity { .. } => ErrorKind::TlsHandshake,
        }
    }
}

pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(ConnectError::Timeout { addr, timeout }),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(ConnectError::Refused { addr })
        }
        Ok(Err(source)) => {
            return Err(ConnectError::Io {
                addr,
                source: source.into(),
            })
        }
        Ok(Ok(stream)) => stream,
    };
    // Proxied request/response traffic is latency-bound; Nagle only adds delay.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Connects to `upstream`: plain TCP, or mesh TLS with `alpn` when the upstream has an
/// identity. One `timeout` bounds both the TCP connect and the handshake, and either one
/// running out is a [`ConnectError::Timeout`]: to the caller a peer that accepts and never
/// finishes the handshake is as unreachable as one that never accepts.
pub async fn connect_upstream(
    upstream: &Upstream,
    tls: &SharedTls,
    alpn: &[&[u8]],
    timeout: Duration,
) -> Result<UpstreamIo, ConnectError> {
    let started = tokio::time::Instant::now();
    let tcp = connect(upstream.addr, timeout).await?;
    let Some(identity) = &upstream.identity else {
        return Ok(UpstreamIo::Plain(tcp));
    };
    let Some(tls) = tls else {
        return Err(ConnectError::NoIdentity {
            addr: upstream.addr,
            identity: identity.clone(),
        });
    };
    let remaining = timeout.saturating_sub(started.elapsed());
    match crate::tls::connect(tls, tcp, upstream.addr, identity, alpn, remaining).await {
        Ok(stream) => Ok(UpstreamIo::Tls(Box::new(stream))),
        Err(HandshakeError::Timeout { addr, .. }) => Err(ConnectError::Timeout { addr, timeout }),
        Err(other) => Err(other.into()),
    }
}

/// An upstream connection: plain TCP or mesh TLS.
pub enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl UpstreamIo {
    /// The ALPN protocol the peer chose, for TLS connections.
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            UpstreamIo::Plain(_) => None,
            UpstreamIo::Tls(s) => s.get_ref().1.alpn_protocol(),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            UpstreamIo::Plain($s) => {
                let $s = std::pin::Pin::new($s);
                $e
            }
            UpstreamIo::Tls($s) => {
                let $s = std::pin::Pin::new($s.as_mut());
                $e
            }
        }
    };
}

impl tokio::io::AsyncRead for UpstreamIo {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl tokio::io::AsyncWrite for UpstreamIo {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }
    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}
