//! Watching files for changes. Directories are watched rather than files, because editors and
//! Kubernetes Secret/ConfigMap mounts replace files by renaming, which a watch on the old inode
//! would never see. Events are filtered to those that can mean new contents and debounced.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Writers change a file in several steps; wait for the burst of events to settle.
const DEBOUNCE: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
#[error("cannot watch {path} for changes: {source}")]
pub struct WatchError {
    pub path: PathBuf,
    pub source: notify::Error,
}

/// Debounced change notifications for watched directories.
pub struct Changes {
    rx: mpsc::UnboundedReceiver<()>,
}

impl Changes {
    /// Resolves after the next burst of changes has settled; `None` once the watcher is gone.
    pub async fn next(&mut self) -> Option<()> {
        self.rx.recv().await?;
        tokio::time::sleep(DEBOUNCE).await;
        while self.rx.try_recv().is_ok() {}
        Some(())
    }
}

/// Watches the directories holding `files`. The returned watcher must be kept alive for as
/// long as changes should be reported.
pub fn watch<'a>(
    files: impl IntoIterator<Item = &'a Path>,
) -> Result<(RecommendedWatcher, Changes), WatchError> {
    let (mut watcher, changes) = watcher(Path::new("."))?;
    let mut dirs: Vec<PathBuf> = files.into_iter().map(dir_of).collect();
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
    Ok((watcher, changes))
}

/// Watches `dir` and everything below it (a manifest directory, a GitOps checkout).
pub fn watch_tree(dir: &Path) -> Result<(RecommendedWatcher, Changes), WatchError> {
    let (mut watcher, changes) = watcher(dir)?;
    watcher
        .watch(dir, RecursiveMode::Recursive)
        .map_err(|source| WatchError {
            path: dir.to_owned(),
            source,
        })?;
    Ok((watcher, changes))
}

/// A watcher reporting events that can mean new contents, watching nothing yet. `path` only
/// names the failure.
fn watcher(path: &Path) -> Result<(RecommendedWatcher, Changes), WatchError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.as_ref().is_ok_and(|e| !changes_files(e.kind)) {
            return;
        }
        // The receiver goes away only when nobody wants changes any more.
        let _ = tx.send(());
    })
    .map_err(|source| WatchError {
        path: path.to_owned(),
        source,
    })?;
    Ok((watcher, Changes { rx }))
}

/// Runs `on_change` (on a tokio task) after anything changes in the directories holding
/// `files`. Changes stop being reported when the returned watcher is dropped.
pub fn watch_files(
    files: &[&Path],
    mut on_change: impl FnMut() + Send + 'static,
) -> Result<RecommendedWatcher, WatchError> {
    let (watcher, mut changes) = watch(files.iter().copied())?;
    tokio::spawn(async move {
        while changes.next().await.is_some() {
            on_change();
        }
    });
    Ok(watcher)
}

/// Whether an event can mean new contents. Opening and reading cannot: the reload itself
/// opens the files, and reacting to that would reload every debounce period forever.
pub fn changes_files(kind: EventKind) -> bool {
    !matches!(
        kind,
        EventKind::Access(
            AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read)
        )
    )
}

fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_is_reported_and_reading_is_not() {
        let dir = std::env::temp_dir().join(format!("weft-fswatch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.yaml");
        std::fs::write(&file, "a").unwrap();
        let (_watcher, mut changes) = watch([file.as_path()]).unwrap();
        std::fs::write(&file, "b").unwrap();
        let changed = tokio::time::timeout(Duration::from_secs(5), changes.next()).await;
        assert_eq!(changed, Ok(Some(())));
        // Reading (as every reload does) must not look like a change.
        let _ = std::fs::read(&file).unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(500), changes.next()).await;
        assert!(quiet.is_err(), "a read was reported as a change");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
