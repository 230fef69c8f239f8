//! Reloads the config file when it changes. A file that fails to read or validate is reported
//! and ignored: the last good snapshot stays in force.

use std::path::PathBuf;
use std::sync::Arc;

use super::{load_file, ConfigStore};
use crate::fswatch::{self, WatchError};
use crate::metrics::Metrics;

/// Starts watching `path` and swaps each valid new version into `store`. The returned
/// watcher must be kept alive for as long as reloads should happen.
pub fn spawn_reloader(
    path: PathBuf,
    store: Arc<ConfigStore>,
    metrics: Metrics,
) -> Result<notify::RecommendedWatcher, WatchError> {
    let (watcher, mut changes) = fswatch::watch([path.as_path()])?;
    tokio::spawn(async move {
        while changes.next().await.is_some() {
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
