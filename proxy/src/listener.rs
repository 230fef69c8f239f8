//! Accept loops: the fixed outbound and inbound listeners, and the static listeners from the
//! config file, which come and go as the file changes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::conn::{serve_connection, Role, Shared};
use crate::drain;

/// Pause after an accept error (usually EMFILE) so a full fd table doesn't become a hot loop.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Binds a listener as `TcpListener::bind` does (SO_REUSEADDR, backlog 1024), except that an
/// IPv6 listener is IPv6-only (IPV6_V6ONLY): `[::]:15006` must not also claim IPv4, or it
/// could not be bound next to `0.0.0.0:15006`, and an IPv4 connection accepted on it would
/// look IPv6 (`::ffff:a.b.c.d`) to `SO_ORIGINAL_DST`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    bind_socket(addr).map_err(|source| BindError { addr, source })
}

fn bind_socket(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Accepts until draining starts or `stop` fires; each connection runs in its own task and
/// holds the drain open until it ends.
pub fn spawn_accept_loop(
    listener: TcpListener,
    role: Role,
    shared: Arc<Shared>,
    drain: drain::Watch,
    stop: Option<oneshot::Receiver<()>>,
) {
    let local = match listener.local_addr() {
        Ok(addr) => addr,
        Err(error) => {
            tracing::error!(%error, ?role, "listener has no local address; not serving it");
            return;
        }
    };
    tokio::spawn(async move {
        let stop = async {
            match stop {
                Some(rx) => drop(rx.await),
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stop);
        tracing::info!(%local, ?role, "listening");
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = drain.signaled() => break,
                _ = &mut stop => break,
            };
            match accepted {
                Ok((stream, _peer)) => {
                    // The accepted socket's own local address: for a wildcard listener it is
                    // the address the client reached, which SO_ORIGINAL_DST is compared with.
                    let local = stream.local_addr().unwrap_or(local);
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve_connection(
                        shared.clone(),
                        role,
                        stream,
                        local,
                        drain.clone(),
                    ));
                }
                Err(error) => {
                    tracing::warn!(%error, %local, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            }
        }
        tracing::info!(%local, ?role, "stopped listening");
    });
}

/// Keeps the running static listeners equal to the config's: binds new ones, stops removed
/// ones (their open connections carry on). A listener that cannot bind is reported and tried
/// again on the next config change; the others are unaffected.
/// `started` fires once the listeners of the initial config are bound (or failed to bind), so
/// the proxy reports ready only when a client can use them.
pub async fn supervise_static_listeners(
    shared: Arc<Shared>,
    drain: drain::Watch,
    started: oneshot::Sender<()>,
) {
    let mut started = Some(started);
    let mut changes = shared.config.subscribe();
    let mut running: HashMap<SocketAddr, oneshot::Sender<()>> = HashMap::new();
    loop {
        let wanted: Vec<SocketAddr> = changes
            .borrow_and_update()
            .listeners
            .iter()
            .map(|l| l.bind)
            .collect();
        running.retain(|addr, _| wanted.contains(addr));
        for addr in wanted {
            if running.contains_key(&addr) {
                continue;
            }
            match bind(addr).await {
                Ok(listener) => {
                    let (stop_tx, stop_rx) = oneshot::channel();
                    spawn_accept_loop(
                        listener,
                        Role::Static { bind: addr },
                        shared.clone(),
                        drain.clone(),
                        Some(stop_rx),
                    );
                    running.insert(addr, stop_tx);
                }
                Err(error) => tracing::error!(%error, "static listener not started"),
            }
        }
        if let Some(started) = started.take() {
            let _ = started.send(());
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = drain.signaled() => return,
        }
    }
}
