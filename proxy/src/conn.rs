//! One accepted connection, start to end: find its destination, detect its protocol, and hand
//! it to the HTTP server or the opaque forwarder — with byte counting and an idle timeout.
//! This is the place to start reading the data path.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::TcpStream;

use crate::bootstrap::Mode;
use crate::config::{Config, ConfigStore, Protocol};
use crate::detect::{detect, Detected};
use crate::drain;
use crate::http::forward::{Destination, Forwarder};
use crate::http::pool::{Pool, Version};
use crate::io::{Activity, MeteredIo, PrefixedIo};
use crate::metrics::{Direction, ErrorKind, Metrics, OpenConnection, TargetMetrics};
use crate::orig_dst::original_dst;

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
    destination: Destination,
    /// Connection-level metrics (bytes, open connections).
    metrics: TargetMetrics,
    /// Known without looking at the bytes (a static listener's protocol, a skipped port).
    protocol: Protocol,
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
                .for_target(direction, "unknown")
                .error(ErrorKind::NoDestination);
            return;
        }
    };
    let open = Arc::new(route.metrics.connection_opened());
    let activity = Arc::new(Activity::default());
    let mut io = MeteredIo::new(
        stream,
        route.metrics.tcp_read_bytes.clone(),
        route.metrics.tcp_write_bytes.clone(),
        activity.clone(),
    );
    let mut prefix = BytesMut::new();
    let detected = match route.protocol {
        Protocol::Http1 => Detected::Http1,
        Protocol::Http2 => Detected::Http2,
        Protocol::Opaque => Detected::Opaque,
        Protocol::Auto => match detect(&mut io, &mut prefix, config.detect_timeout).await {
            Ok(detected) => detected,
            Err(error) => {
                tracing::debug!(%error, "connection failed during detection");
                route.metrics.error(ErrorKind::Io);
                return;
            }
        },
    };
    let io = PrefixedIo::new(prefix.freeze(), io);

    let result = match (detected, route.destination) {
        (Detected::Opaque, Destination::Fixed { addr, .. }) => {
            with_idle_timeout(
                &activity,
                config.tcp_idle_timeout,
                forward_opaque(io, addr, &config),
            )
            .await
        }
        (Detected::Opaque, Destination::FromRequest) => {
            tracing::info!(%local, "non-HTTP traffic on the forward proxy has no destination");
            Err(ErrorKind::NoDestination)
        }
        (Detected::Http1 | Detected::Http2, destination) => {
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
            });
            let serving = crate::http::server::serve(io, forwarder, &config);
            with_idle_timeout(&activity, config.http_idle_timeout, serving).await
        }
    };
    if let Err(kind) = result {
        route.metrics.error(kind);
    }
}

async fn forward_opaque<I>(io: I, target: SocketAddr, config: &Config) -> Result<(), ErrorKind>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    crate::tcp::forward(io, target, config.connect_timeout)
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
    tokio::select! {
        result = serving => result,
        _ = activity.idle(timeout) => Err(ErrorKind::IdleTimeout),
    }
}

fn route(
    shared: &Shared,
    config: &Config,
    role: Role,
    stream: &TcpStream,
    local: SocketAddr,
) -> Result<Route, &'static str> {
    let fixed = |direction, addr: SocketAddr, label: &str, protocol| {
        let metrics = shared.metrics.for_target(direction, label);
        Route {
            direction,
            destination: Destination::Fixed {
                addr,
                metrics: metrics.clone(),
            },
            metrics,
            protocol,
        }
    };
    let by_port = |addr: SocketAddr| {
        if config.skip_detect_ports.contains(&addr.port()) {
            Protocol::Opaque
        } else {
            Protocol::Auto
        }
    };
    match (role, shared.mode) {
        (Role::Static { bind }, _) => {
            let listener = config
                .listener(bind)
                .ok_or("static listener was removed from the config")?;
            // `auto` defers to the skip list like any other destination port.
            let protocol = match listener.protocol {
                Protocol::Auto => by_port(listener.target),
                declared => declared,
            };
            Ok(fixed(
                Direction::Outbound,
                listener.target,
                &listener.name,
                protocol,
            ))
        }
        (Role::Outbound, Mode::Transparent) => match original_dst(stream, local) {
            Ok(dst) if dst != local => Ok(fixed(
                Direction::Outbound,
                dst,
                &dst.to_string(),
                by_port(dst),
            )),
            // Not redirected: a client that was pointed at the proxy directly.
            _ => Ok(forward_proxy(shared)),
        },
        (Role::Outbound, Mode::Local) => Ok(forward_proxy(shared)),
        (Role::Inbound, Mode::Transparent) => {
            let dst = original_dst(stream, local)
                .map_err(|_| "no original destination (connection was not redirected)")?;
            if dst == local {
                return Err("connection was addressed to the inbound listener itself");
            }
            let app = SocketAddr::new(loopback_like(dst.ip()), dst.port());
            Ok(fixed(
                Direction::Inbound,
                app,
                &app.to_string(),
                by_port(dst),
            ))
        }
        (Role::Inbound, Mode::Local) => {
            let app = shared
                .inbound_app
                .ok_or("local mode without --inbound-app: inbound traffic has nowhere to go")?;
            Ok(fixed(
                Direction::Inbound,
                app,
                &app.to_string(),
                by_port(app),
            ))
        }
    }
}

fn forward_proxy(shared: &Shared) -> Route {
    Route {
        direction: Direction::Outbound,
        destination: Destination::FromRequest,
        metrics: shared
            .metrics
            .for_target(Direction::Outbound, FORWARD_PROXY_LABEL),
        protocol: Protocol::Auto,
    }
}

/// Inbound traffic is delivered to the app over loopback, in the address family it came in.
fn loopback_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}
