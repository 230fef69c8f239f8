//! One accepted connection, start to end: find its destination, terminate mesh TLS on the
//! inbound side, detect its protocol, and hand it to the HTTP server or the opaque forwarder
//! — with byte counting and an idle timeout. This is the place to start reading the data path.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use weft_api::SpiffeId;

use crate::authz::{Authz, ConnAuthz};
use crate::bootstrap::Mode;
use crate::config::{Config, ConfigStore, MtlsMode, Protocol};
use crate::detect::{detect, Detected};
use crate::drain;
use crate::http::forward::{Destination, Forwarder};
use crate::http::pool::{Pool, Version};
use crate::io::{Activity, MeteredIo, PrefixedIo};
use crate::metrics::{Direction, ErrorKind, Metrics, OpenConnection};
use crate::orig_dst::original_dst;
use crate::tls::{SharedTls, Upstream, ALPN_H2, ALPN_HTTP1};
use crate::wake::OnWake;

/// What outlives a single request on a connection: tunnels (upgrades, `CONNECT`) that take
/// the connection over hold it too, so the drain waits for them, the open-connections gauge
/// counts them, and the idle timeout still applies.
#[derive(Clone)]
pub struct ConnScope {
    pub drain: drain::Watch,
    pub activity: Arc<Activity>,
    pub open: Arc<OpenConnection>,
    /// Tunnels carry opaque bytes, so they get the TCP idle timeout.
    pub tunnel_idle_timeout: std::time::Duration,
}

/// What every connection needs from the process.
pub struct Shared {
    pub mode: Mode,
    pub inbound_app: Option<SocketAddr>,
    pub config: Arc<ConfigStore>,
    pub metrics: Metrics,
    pub pool: Arc<Pool>,
    /// The workload identity; `None` when mTLS is off.
    pub tls: SharedTls,
    /// Inbound authorization with the view from the control plane; `None` without discovery.
    pub authz: Option<Authz>,
    /// Tracing and the access log.
    pub observe: crate::trace::Observer,
}

/// Which listener accepted the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Outbound,
    Inbound,
    /// A listener from the config file, forwarding to its configured target. Carries the
    /// configured bind address, which names it in the config (a wildcard bind accepts on
    /// addresses that differ from it).
    Static {
        bind: SocketAddr,
    },
}

/// The metric label for forward-proxy connections, whose targets are per request.
const FORWARD_PROXY_LABEL: &str = "forward-proxy";

struct Route {
    direction: Direction,
    /// Where every request goes; `None` in forward-proxy mode, where each request says.
    upstream: Option<Upstream>,
    /// The `target` metric label.
    label: String,
    /// Known without looking at the bytes (a static listener's protocol, a skipped port).
    protocol: Protocol,
    /// Inbound only: the destination port, which selects the mTLS mode.
    inbound_port: Option<u16>,
}

pub async fn serve_connection(
    shared: Arc<Shared>,
    role: Role,
    stream: TcpStream,
    local: SocketAddr,
    drain: drain::Watch,
) {
    // One snapshot for the whole connection: it never sees half an update.
    let config = shared.config.load();
    let route = match route(&shared, &config, role, &stream, local) {
        Ok(route) => route,
        Err(reason) => {
            tracing::info!(%local, ?role, reason, "closing connection with no destination");
            let direction = if role == Role::Inbound {
                Direction::Inbound
            } else {
                Direction::Outbound
            };
            shared
                .metrics
                .connection_error(direction, "unknown", ErrorKind::NoDestination);
            return;
        }
    };
    let Some(port) = route.inbound_port else {
        return serve_stream(&shared, &config, route, stream, None, local, drain).await;
    };
    match inbound_tls(&shared, &config, &route, port, stream).await {
        Inbound::Mesh(accepted) if has_view(&shared, port).await => {
            let peer = Some((accepted.client_id, accepted.alpn));
            serve_stream(&shared, &config, route, accepted.stream, peer, local, drain).await
        }
        // A plaintext connection waited for the view to learn the port's mTLS mode.
        Inbound::Plain(stream) => {
            serve_stream(&shared, &config, route, stream, None, local, drain).await
        }
        Inbound::Mesh(_) | Inbound::Refused(ErrorKind::NoPolicy) => shared
            .metrics
            .connection_error(route.direction, &route.label, ErrorKind::NoPolicy),
        Inbound::Refused(kind) => {
            shared
                .metrics
                .connection_error(route.direction, &route.label, kind);
        }
    }
}

enum Inbound {
    Mesh(crate::tls::Accepted),
    Plain(TcpStream),
    Refused(ErrorKind),
}

/// Decides whether an inbound connection is mesh mTLS (terminated here), plaintext
/// (accepted where the port is PERMISSIVE), or refused.
///
/// A skipped (opaque) port in PERMISSIVE mode is not inspected at all: waiting for a
/// ClientHello would stall server-speaks-first plaintext clients. Meshed clients of such a
/// port need it to be STRICT, where the proxy waits for their handshake.
///
/// With discovery on, the port's mode is the view's, so a plaintext connection (and any on a
/// skipped port) waits for the first view; a TLS one is accepted first and waits after the
/// handshake ([`has_view`]), where the caller's handshake timeout no longer runs.
async fn inbound_tls(
    shared: &Shared,
    config: &Config,
    route: &Route,
    port: u16,
    stream: TcpStream,
) -> Inbound {
    // A skipped port's mode decides whether to wait for a ClientHello at all.
    let mut mode = None;
    if route.protocol == Protocol::Opaque {
        match inbound_mode(shared, config, port).await {
            Some(known) => mode = Some(known),
            None => return Inbound::Refused(ErrorKind::NoPolicy),
        }
    }
    let inspect = route.protocol != Protocol::Opaque || mode == Some(MtlsMode::Strict);
    if let (Some(tls), true) = (&shared.tls, inspect) {
        if crate::tls::starts_with_client_hello(&stream, config.detect_timeout).await {
            let peer = stream
                .peer_addr()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
            return match crate::tls::accept(tls, stream, peer, config.detect_timeout).await {
                Ok(accepted) => Inbound::Mesh(accepted),
                Err(error) => {
                    tracing::info!(%error, port, "inbound TLS refused");
                    Inbound::Refused(ErrorKind::TlsHandshake)
                }
            };
        }
    }
    let mode = match mode {
        Some(mode) => mode,
        None => match inbound_mode(shared, config, port).await {
            Some(mode) => mode,
            None => return Inbound::Refused(ErrorKind::NoPolicy),
        },
    };
    if mode == MtlsMode::Strict {
        tracing::info!(port, "plaintext connection refused: port is STRICT mTLS");
        return Inbound::Refused(ErrorKind::PlaintextRefused);
    }
    Inbound::Plain(stream)
}

/// The port's inbound mTLS mode: the view's when it sets one, else the config file's.
/// `None` when discovery is on and no view came within [`crate::authz::FIRST_VIEW_WAIT`].
async fn inbound_mode(shared: &Shared, config: &Config, port: u16) -> Option<MtlsMode> {
    let from_view = match &shared.authz {
        None => None,
        Some(_) if !has_view(shared, port).await => return None,
        Some(authz) => authz.views.load().as_ref().and_then(|v| v.mtls_mode(port)),
    };
    Some(from_view.unwrap_or_else(|| config.inbound_mtls.mode(port)))
}

/// Whether the policies for an inbound connection are known, waiting (bounded) for the
/// first view: a pod that has just started must not let connections in unjudged.
async fn has_view(shared: &Shared, port: u16) -> bool {
    let Some(authz) = &shared.authz else {
        return true;
    };
    let known = authz
        .views
        .first(crate::authz::FIRST_VIEW_WAIT)
        .await
        .is_some();
    if !known {
        tracing::info!(
            port,
            "inbound connection refused: no view (policies) from the control plane yet"
        );
    }
    known
}

/// Serves a connection whose bytes are in the clear: a plain TCP stream, or one whose mesh TLS
/// has been terminated (`peer`: the caller's identity and the negotiated ALPN).
async fn serve_stream<S>(
    shared: &Shared,
    config: &Arc<Config>,
    route: Route,
    stream: S,
    peer: Option<(SpiffeId, Option<Vec<u8>>)>,
    local: SocketAddr,
    drain: drain::Watch,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client_id, alpn) = match peer {
        Some((id, alpn)) => (Some(id), alpn),
        None => (None, None),
    };
    let labelled_peer = match route.direction {
        Direction::Inbound => client_id.as_ref(),
        Direction::Outbound => route.upstream.as_ref().and_then(|u| u.identity.as_ref()),
    };
    let metrics = shared
        .metrics
        .for_target(route.direction, &route.label, labelled_peer);
    if let Some(id) = &client_id {
        tracing::debug!(client_id = %id, target = %route.label, "mesh connection accepted");
    }
    let authz: Option<ConnAuthz> = match (&shared.authz, route.inbound_port) {
        (Some(authz), Some(port)) => Some(authz.connection(client_id.clone(), port, &route.label)),
        _ => None,
    };
    let open = Arc::new(metrics.connection_opened());
    let activity = Arc::new(Activity::default());
    let mut io = MeteredIo::new(
        stream,
        metrics.tcp_read_bytes().clone(),
        metrics.tcp_write_bytes().clone(),
        activity.clone(),
    );
    let mut prefix = BytesMut::new();
    // On a mesh hop, ALPN has already said what the peer will speak.
    let protocol = match alpn.as_deref() {
        Some(ALPN_H2) => Protocol::Http2,
        Some(ALPN_HTTP1) => Protocol::Http1,
        _ => route.protocol,
    };
    let detected = match protocol {
        Protocol::Http1 => Detected::Http1,
        Protocol::Http2 => Detected::Http2,
        Protocol::Opaque => Detected::Opaque,
        Protocol::Auto => match detect(&mut io, &mut prefix, config.detect_timeout).await {
            Ok(detected) => detected,
            Err(error) => {
                tracing::debug!(%error, "connection failed during detection");
                metrics.error(ErrorKind::Io);
                return;
            }
        },
    };
    let io = PrefixedIo::new(prefix.freeze(), io);

    let result = match (detected, route.upstream) {
        (Detected::Opaque, Some(_)) if authz.as_ref().is_some_and(|a| !a.allows_tcp()) => {
            // Denied: closed without connecting upstream, so the app never sees it.
            Ok(())
        }
        (Detected::Opaque, Some(upstream)) => {
            let forwarding = forward_opaque(io, upstream, &shared.tls, config);
            with_idle_timeout(&activity, config.tcp_idle_timeout, forwarding).await
        }
        (Detected::Opaque, None) => {
            tracing::info!(%local, "non-HTTP traffic on the forward proxy has no destination");
            Err(ErrorKind::NoDestination)
        }
        (Detected::Http1 | Detected::Http2, upstream) => {
            let destination = match upstream {
                Some(upstream) => Destination::Fixed {
                    upstream,
                    metrics: metrics.clone(),
                },
                None => Destination::FromRequest,
            };
            let forwarder = Arc::new(Forwarder {
                direction: route.direction,
                destination,
                version: if detected == Detected::Http2 {
                    Version::Http2
                } else {
                    Version::Http1
                },
                pool: shared.pool.clone(),
                metrics: shared.metrics.clone(),
                connect_timeout: config.connect_timeout,
                listener: local,
                scope: ConnScope {
                    drain,
                    activity: activity.clone(),
                    open,
                    tunnel_idle_timeout: config.tcp_idle_timeout,
                },
                authz,
                observe: shared
                    .observe
                    .connection(config, route.direction, client_id.as_ref()),
                services: match route.direction {
                    Direction::Outbound => shared.authz.as_ref().map(|a| a.views.clone()),
                    Direction::Inbound => None,
                },
            });
            let serving = crate::http::server::serve(io, forwarder, config);
            with_idle_timeout(&activity, config.http_idle_timeout, serving).await
        }
    };
    if let Err(kind) = result {
        metrics.error(kind);
    }
}

async fn forward_opaque<I>(
    io: I,
    upstream: Upstream,
    tls: &SharedTls,
    config: &Config,
) -> Result<(), ErrorKind>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    crate::tcp::forward(io, &upstream, tls, config.connect_timeout)
        .await
        .map(drop)
        .map_err(|error| {
            tracing::info!(%error, "opaque connection failed");
            match error {
                crate::tcp::ForwardError::Connect(e) => e.kind(),
                crate::tcp::ForwardError::Io { .. } => ErrorKind::Io,
            }
        })
}

/// Runs `serving` until it ends or no byte has moved either way for `timeout`.
pub async fn with_idle_timeout(
    activity: &Activity,
    timeout: std::time::Duration,
    serving: impl std::future::Future<Output = Result<(), ErrorKind>>,
) -> Result<(), ErrorKind> {
    // The idle watchdog is polled only when its timer fires (see `OnWake`), not at every
    // wake-up of the connection's I/O; the fixed order only breaks ties.
    tokio::select! {
        biased;
        result = serving => result,
        _ = OnWake::new(activity.idle(timeout)) => Err(ErrorKind::IdleTimeout),
    }
}

fn route(
    shared: &Shared,
    config: &Config,
    role: Role,
    stream: &TcpStream,
    local: SocketAddr,
) -> Result<Route, &'static str> {
    let by_port = |port: u16| {
        if config.skip_detect_ports.contains(&port) {
            Protocol::Opaque
        } else {
            Protocol::Auto
        }
    };
    let inbound = |app: SocketAddr, port: u16| Route {
        direction: Direction::Inbound,
        upstream: Some(Upstream::plain(app)),
        label: app.to_string(),
        protocol: by_port(port),
        inbound_port: Some(port),
    };
    match (role, shared.mode) {
        (Role::Static { bind }, _) => {
            let listener = config
                .listener(bind)
                .ok_or("static listener was removed from the config")?;
            // `auto` defers to the skip list like any other destination port.
            let protocol = match listener.protocol {
                Protocol::Auto => by_port(listener.target.port()),
                declared => declared,
            };
            Ok(Route {
                direction: Direction::Outbound,
                upstream: Some(Upstream {
                    addr: listener.target,
                    identity: listener.identity.clone(),
                }),
                label: listener.name.clone(),
                protocol,
                inbound_port: None,
            })
        }
        (Role::Outbound, Mode::Transparent) => match original_dst(stream, local) {
            Ok(dst) if dst != local => Ok(Route {
                direction: Direction::Outbound,
                upstream: Some(Upstream::plain(dst)),
                label: dst.to_string(),
                protocol: by_port(dst.port()),
                inbound_port: None,
            }),
            // Not redirected: a client that was pointed at the proxy directly.
            _ => Ok(forward_proxy()),
        },
        (Role::Outbound, Mode::Local) => Ok(forward_proxy()),
        (Role::Inbound, Mode::Transparent) => {
            let dst = original_dst(stream, local)
                .map_err(|_| "no original destination (connection was not redirected)")?;
            if dst == local {
                return Err("connection was addressed to the inbound listener itself");
            }
            Ok(inbound(
                SocketAddr::new(loopback_like(dst.ip()), dst.port()),
                dst.port(),
            ))
        }
        (Role::Inbound, Mode::Local) => {
            let app = shared
                .inbound_app
                .ok_or("local mode without --inbound-app: inbound traffic has nowhere to go")?;
            Ok(inbound(app, app.port()))
        }
    }
}

fn forward_proxy() -> Route {
    Route {
        direction: Direction::Outbound,
        upstream: None,
        label: FORWARD_PROXY_LABEL.to_owned(),
        protocol: Protocol::Auto,
        inbound_port: None,
    }
}

/// Inbound traffic is delivered to the app over loopback, in the address family it came in.
fn loopback_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}
