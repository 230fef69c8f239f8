//! Opaque TCP forwarding: bytes both ways until both sides are done, propagating half-close
//! (a client that shuts down its write side still gets the rest of the response).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::connect::{connect_upstream, ConnectError};
use crate::tls::{SharedTls, Upstream};

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("forwarding to {target} failed: {source}")]
    Io {
        target: SocketAddr,
        source: std::io::Error,
    },
}

/// Connects to `target` (over mesh TLS of its own, with no ALPN, when it is meshed) and
/// copies bytes both ways. Returns the bytes sent to and received from the target.
pub async fn forward<D>(
    mut downstream: D,
    target: &Upstream,
    tls: &SharedTls,
    connect_timeout: Duration,
) -> Result<(u64, u64), ForwardError>
where
    D: AsyncRead + AsyncWrite + Unpin,
{
    let mut upstream = connect_upstream(target, tls, &[], connect_timeout).await?;
    tokio::io::copy_bidirectional(&mut downstream, &mut upstream)
        .await
        .map_err(|source| ForwardError::Io {
            target: target.addr,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn half_close_still_delivers_the_reply() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = server.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap(); // waits for the client's FIN
            s.write_all(&got).await.unwrap();
            s.write_all(b" (echoed after EOF)").await.unwrap();
        });
        let (mut client, proxy_side) = tokio::io::duplex(1024);
        let fwd = tokio::spawn(async move {
            forward(
                proxy_side,
                &Upstream::plain(target),
                &None,
                Duration::from_secs(1),
            )
            .await
        });
        client.write_all(b"ping").await.unwrap();
        client.shutdown().await.unwrap();
        let mut reply = String::new();
        client.read_to_string(&mut reply).await.unwrap();
        assert_eq!(reply, "ping (echoed after EOF)");
        let (to_target, from_target) = fwd.await.unwrap().unwrap();
        assert_eq!((to_target, from_target), (4, 23));
    }

    #[tokio::test]
    async fn refused_is_named() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = l.local_addr().unwrap();
        drop(l);
        let (_c, p) = tokio::io::duplex(16);
        let err = forward(p, &Upstream::plain(target), &None, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ForwardError::Connect(ConnectError::Refused { .. })),
            "{err}"
        );
    }
}
