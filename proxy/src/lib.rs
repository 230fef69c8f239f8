//! Weft's sidecar proxy.
//!
//! Read in this order to follow a connection: [`listener`] accepts it, [`conn`] finds its
//! destination and detects its protocol ([`detect`]), then [`http`] serves and forwards its
//! requests over pooled upstream connections, or [`tcp`] copies its bytes. [`config`] holds
//! the snapshot every connection reads, [`admin`] the operator's endpoints, [`drain`] the
//! graceful shutdown.

pub mod admin;
pub mod bootstrap;
pub mod config;
pub mod conn;
pub mod connect;
pub mod detect;
pub mod drain;
pub mod duration;
pub mod http;
pub mod init;
pub mod io;
pub mod listener;
pub mod metrics;
pub mod orig_dst;
pub mod tcp;

use std::sync::atomic::Ordering;
use std::sync::Arc;

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
    Watch(#[from] config::reload::WatchError),
    #[error(transparent)]
    Bind(#[from] listener::BindError),
    #[error("cannot install signal handler: {0}")]
    Signal(std::io::Error),
}

/// Runs the proxy until SIGTERM, SIGINT or `POST /shutdown`, then drains.
pub async fn run(args: RunArgs, set_log_filter: SetLogFilter) -> Result<(), StartError> {
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let initial = match &args.config {
        Some(path) => config::load_file(path)?,
        None => Config::default(),
    };
    let store = ConfigStore::new(initial);
    // Kept alive for the life of the proxy: dropping it stops reloads.
    let _watcher = match &args.config {
        Some(path) => Some(config::spawn_reloader(
            path.clone(),
            store.clone(),
            metrics.clone(),
        )?),
        None => None,
    };
    let shared = Arc::new(Shared {
        mode: args.mode,
        inbound_app: args.inbound_app,
        config: store.clone(),
        metrics,
        pool: http::pool::Pool::new(),
    });
    let (drain_signal, drain_watch) = drain::channel();

    let admin = Arc::new(Admin {
        registry,
        ready: Default::default(),
        draining: Default::default(),
        shutdown: Default::default(),
        config: store,
        bootstrap: args.clone(),
        log_filter: std::sync::Mutex::new(args.log.clone()),
        set_log_filter,
    });
    admin::spawn(listener::bind(args.admin_addr).await?, admin.clone());
    for (addrs, role) in [
        (&args.outbound_addr, Role::Outbound),
        (&args.inbound_addr, Role::Inbound),
    ] {
        for addr in addrs {
            let listener = listener::bind(*addr).await?;
            listener::spawn_accept_loop(listener, role, shared.clone(), drain_watch.clone(), None);
        }
    }
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(listener::supervise_static_listeners(
        shared,
        drain_watch.clone(),
        started_tx,
    ));
    let _ = started_rx.await;
    admin.ready.store(true, Ordering::Release);
    tracing::info!(mode = ?args.mode, "proxy ready");

    wait_for_shutdown(&admin).await?;
    admin.draining.store(true, Ordering::Release);
    drop(drain_watch);
    tracing::info!(grace = ?args.shutdown_grace, "draining");
    match drain_signal.drain(args.shutdown_grace).await {
        drain::Drained::Graceful => tracing::info!("drained; exiting"),
        drain::Drained::Forced => {
            tracing::warn!("grace period over; cutting remaining connections")
        }
    }
    Ok(())
}

async fn wait_for_shutdown(admin: &Admin) -> Result<(), StartError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(StartError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(StartError::Signal)?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
        _ = admin.shutdown.notified() => tracing::info!("shutdown requested on the admin server"),
    }
    Ok(())
}
