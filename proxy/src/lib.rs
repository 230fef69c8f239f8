//! Weft's sidecar proxy.
//!
//! Read in this order to follow a connection: [`listener`] accepts it, [`conn`] finds its
//! destination and detects its protocol ([`detect`]), then [`http`] serves and forwards its
//! requests over pooled upstream connections, or [`tcp`] copies its bytes; inbound, [`authz`]
//! decides each request first. [`config`] holds the snapshot every connection reads,
//! [`discovery`] the view the control plane pushes, [`identity`] the workload certificate,
//! [`admin`] the operator's endpoints, [`drain`] the graceful shutdown. [`trace`] (spans) and
//! [`access_log`] record each request.

pub mod access_log;
pub mod admin;
pub mod authz;
pub mod bootstrap;
pub mod config;
pub mod conn;
pub mod connect;
pub mod detect;
pub mod discovery;
pub mod drain;
pub mod duration;
pub mod http;
pub mod identity;
pub mod init;
pub mod io;
pub mod listener;
pub mod metrics;
pub mod orig_dst;
pub mod tcp;
pub mod tls;
pub mod trace;
pub mod traffic;
pub mod wait_ready;
pub mod wake;

/// File watching, shared with the control plane.
pub use weft_fswatch as fswatch;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;

use crate::admin::{Admin, SetLogFilter};
use crate::bootstrap::RunArgs;
use crate::config::{Config, ConfigStore};
use crate::conn::{Role, Shared};
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Watch(#[from] fswatch::WatchError),
    #[error(transparent)]
    Bind(#[from] listener::BindError),
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error(transparent)]
    Discovery(#[from] discovery::DiscoveryError),
    #[error(transparent)]
    Trace(#[from] trace::TraceError),
    #[error("cannot install signal handler: {0}")]
    Signal(std::io::Error),
}

/// A started proxy: listeners bound, ready for traffic.
pub struct Proxy {
    /// The bound addresses (resolved, so port 0 in the arguments becomes a real port).
    pub outbound_addrs: Vec<SocketAddr>,
    pub inbound_addrs: Vec<SocketAddr>,
    pub admin_addr: SocketAddr,
    admin: Arc<Admin>,
    drain_signal: drain::Signal,
    drain_watch: drain::Watch,
    grace: Duration,
    /// Tracing and the access log, flushed after the drain.
    observe: trace::Observer,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Proxy {
    /// Binds every listener and reports ready. Fails on a bad config file or a busy address.
    pub async fn start(args: RunArgs, set_log_filter: SetLogFilter) -> Result<Proxy, StartError> {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        metrics.proxy_info(args.identity.namespace.as_deref(), args.pod_name.as_deref());
        let initial = match &args.config {
            Some(path) => config::load_file(path)?,
            None => Config::default(),
        };
        let store = ConfigStore::new(initial);
        let observe = trace::Observer::start(&args, &store, &mut registry)?;
        let watcher = match &args.config {
            Some(path) => Some(config::spawn_reloader(
                path.clone(),
                store.clone(),
                metrics.clone(),
            )?),
            None => None,
        };
        let identity_mode = identity::Mode::from_args(&args.identity)?;
        let discovery = discovery::Settings::from_args(&args, &identity_mode)?;
        let tls = identity::start_mode(identity_mode, &mut registry)?;
        let (drain_signal, drain_watch) = drain::channel();
        let authz = match (discovery, &tls) {
            (Some(settings), Some(tls)) => {
                let views =
                    discovery::start(settings, tls.clone(), &mut registry, drain_watch.clone())?;
                registry.register_collector(Box::new(traffic::metrics::TrafficCollector::new(
                    views.clone(),
                )));
                Some(authz::Authz::new(
                    views,
                    authz::AuthzMetrics::new(&mut registry),
                ))
            }
            // Discovery settings exist only in control-plane mode, which always has a Tls.
            _ => None,
        };
        let shared = Arc::new(Shared {
            mode: args.mode,
            inbound_app: args.inbound_app,
            config: store.clone(),
            metrics,
            pool: http::pool::Pool::new(tls.clone()),
            tls: tls.clone(),
            authz: authz.clone(),
            observe: observe.clone(),
        });

        let admin_listener = listener::bind(args.admin_addr).await?;
        let admin_addr = local_addr(&admin_listener, args.admin_addr)?;
        let admin = Arc::new(Admin {
            registry,
            ready: Default::default(),
            draining: Default::default(),
            shutdown: Default::default(),
            config: store,
            identity: tls.clone(),
            views: authz.map(|authz| authz.views),
            bootstrap: args.clone(),
            log_filter: std::sync::Mutex::new(args.log.clone()),
            set_log_filter,
        });
        admin::spawn(admin_listener, admin.clone());

        let mut bound = [Vec::new(), Vec::new()];
        for (i, (addrs, role)) in [
            (&args.outbound_addr, Role::Outbound),
            (&args.inbound_addr, Role::Inbound),
        ]
        .into_iter()
        .enumerate()
        {
            for addr in addrs {
                let listener = listener::bind(*addr).await?;
                bound[i].push(local_addr(&listener, *addr)?);
                listener::spawn_accept_loop(
                    listener,
                    role,
                    shared.clone(),
                    drain_watch.clone(),
                    None,
                );
            }
        }
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(listener::supervise_static_listeners(
            shared,
            drain_watch.clone(),
            started_tx,
        ));
        let _ = started_rx.await;
        // Ready once the listeners are up; with mTLS on, /ready also waits for a certificate,
        // and with discovery for the first view.
        admin.ready.store(true, Ordering::Release);
        let [outbound_addrs, inbound_addrs] = bound;
        tracing::info!(mode = ?args.mode, ?outbound_addrs, ?inbound_addrs, %admin_addr, "proxy ready");
        Ok(Proxy {
            outbound_addrs,
            inbound_addrs,
            admin_addr,
            admin,
            drain_signal,
            drain_watch,
            grace: args.shutdown_grace,
            observe,
            _watcher: watcher,
        })
    }

    /// Serves until SIGTERM, SIGINT or `POST /shutdown`, then drains.
    pub async fn run_until_shutdown(self) -> Result<drain::Drained, StartError> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(StartError::Signal)?;
        let mut int = signal(SignalKind::interrupt()).map_err(StartError::Signal)?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
            _ = self.admin.shutdown.notified() => tracing::info!("shutdown requested on the admin server"),
        }
        Ok(self.shutdown().await)
    }

    /// Stops accepting, lets in-flight work finish within the grace period, and reports how
    /// the drain ended. `/ready` answers 503 from the start of the drain.
    pub async fn shutdown(self) -> drain::Drained {
        self.admin.draining.store(true, Ordering::Release);
        drop(self.drain_watch);
        tracing::info!(grace = ?self.grace, "draining");
        let drained = self.drain_signal.drain(self.grace).await;
        match drained {
            drain::Drained::Graceful => tracing::info!("drained"),
            drain::Drained::Forced => {
                tracing::warn!("grace period over; cutting remaining connections")
            }
        }
        // Spans and log lines of the last requests; bounded, the process is about to exit.
        self.observe.flush(Duration::from_secs(2)).await;
        drained
    }
}

fn local_addr(
    listener: &tokio::net::TcpListener,
    addr: SocketAddr,
) -> Result<SocketAddr, StartError> {
    listener
        .local_addr()
        .map_err(|source| StartError::Bind(listener::BindError { addr, source }))
}
