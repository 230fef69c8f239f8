//! Calls back when files change. Watches each file's directory rather than the file,
//! because editors and Kubernetes Secret/ConfigMap mounts replace files by renaming, which a
//! watch on the old inode would never see. Events are filtered to those that can mean new
//! contents: the reload itself opens and reads the files, and reacting to that would reload
//! every debounce period forever (and undo an in-memory `Ca::replace` each time).

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
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
        if event.as_ref().is_ok_and(|e| !changes_files(e.kind)) {
            return;
        }
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

/// Whether an event can mean new contents. Opening, reading and closing after reading
/// cannot.
fn changes_files(kind: EventKind) -> bool {
    !matches!(
        kind,
        EventKind::Access(
            AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read)
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_is_reported_and_reading_is_not() {
        let dir = std::env::temp_dir().join(format!("weft-cp-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tokens.yaml");
        std::fs::write(&file, "a").unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _watcher = watch_files(&[file.as_path()], move || {
            // What every reload does: read the file.
            let _ = std::fs::read(dir.join("tokens.yaml"));
            let _ = tx.send(());
        })
        .unwrap();
        std::fs::write(&file, "b").unwrap();
        let changed = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(changed, Ok(Some(())));
        // The reload's own read must not look like a change (it would reload forever).
        let quiet = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
        assert!(quiet.is_err(), "the reload's read was reported as a change");
        let _ = std::fs::remove_dir_all(file.parent().unwrap());
    }
}
