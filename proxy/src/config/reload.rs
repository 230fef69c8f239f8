//! Reloads the config file when it changes. Watches the file's directory rather than the
//! file, because editors and Kubernetes ConfigMap mounts replace files by renaming, which
//! a watch on the old inode would never see. A file that fails to read or validate is
//! reported and ignored: the last good snapshot stays in force.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{load_file, ConfigStore};
use crate::metrics::Metrics;

/// Editors write a file in several steps; wait for the burst of events to settle.
const DEBOUNCE: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
#[error("cannot watch {path} for changes: {source}")]
pub struct WatchError {
    path: PathBuf,
    source: notify::Error,
}

/// Starts watching `path` and swaps each valid new version into `store`. The returned
/// watcher must be kept alive for as long as reloads should happen.
pub fn spawn_reloader(
    path: PathBuf,
    store: Arc<ConfigStore>,
    metrics: Metrics,
) -> Result<notify::RecommendedWatcher, WatchError> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // The receiver only goes away at shutdown, when there is nothing left to reload.
        let _ = tx.send(event.is_ok());
    })
    .map_err(|source| WatchError {
        path: path.clone(),
        source,
    })?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|source| WatchError {
            path: dir.clone(),
            source,
        })?;

    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            match load_file(&path) {
                Ok(config) if *store.load() == config => {}
                Ok(config) => {
                    store.store(config);
                    metrics.config_reload(true);
                    tracing::info!(path = %path.display(), "config reloaded");
                }
                Err(error) => {
                    metrics.config_reload(false);
                    tracing::error!(%error, "config reload failed; keeping the last good config");
                }
            }
        }
    });
    Ok(watcher)
}
