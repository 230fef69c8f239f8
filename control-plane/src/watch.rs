//! Calls back when files change. Watches each file's directory rather than the file,
//! because editors and Kubernetes Secret/ConfigMap mounts replace files by renaming, which a
//! watch on the old inode would never see.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Editors write a file in several steps; wait for the burst of events to settle.
const DEBOUNCE: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
#[error("cannot watch {path} for changes: {source}")]
pub struct WatchError {
    pub path: PathBuf,
    pub source: notify::Error,
}

/// Runs `on_change` (on a tokio task) after anything changes in the directories holding
/// `paths`. Reloading stops when the returned watcher is dropped. Needs a tokio runtime.
pub fn watch_files(
    paths: &[&Path],
    mut on_change: impl FnMut() + Send + 'static,
) -> Result<notify::RecommendedWatcher, WatchError> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // The receiver only goes away with the watcher.
        let _ = tx.send(event.is_ok());
    })
    .map_err(|source| WatchError {
        path: paths.first().map(|p| p.to_path_buf()).unwrap_or_default(),
        source,
    })?;
    let mut dirs: Vec<PathBuf> = paths
        .iter()
        .map(|path| match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError {
                path: dir.clone(),
                source,
            })?;
    }
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            on_change();
        }
    });
    Ok(watcher)
}
