//! Opening upstream TCP connections, with a timeout and errors that say which kind of failure
//! it was (refused and timed out mean different things to an operator).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::metrics::ErrorKind;

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
}

impl ConnectError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ConnectError::Refused { .. } => ErrorKind::ConnectRefused,
            ConnectError::Timeout { .. } => ErrorKind::ConnectTimeout,
            ConnectError::Io { .. } => ErrorKind::ConnectError,
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
