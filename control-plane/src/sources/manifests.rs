//! The manifest-directory source: the local mode and GitOps. Every `*.yaml`, `*.yml` and
//! `*.json` file under a directory (recursively; names starting with `.` are skipped, like
//! the `..data` links of a mounted ConfigMap) holds one or more documents, each a Kubernetes
//! object of a kind Weft reads or a `List` of them.
//!
//! Bad input never removes good state:
//! - a file that cannot be read or is not valid YAML keeps every object it held last time;
//! - an object that fails to decode keeps its last good version (when it had one);
//! - the same object in two files: the first file (in path order) wins.
//!
//! Files are re-parsed only when their bytes changed, so editing one policy in a directory
//! that also holds ten thousand pods costs one small parse.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use tokio::sync::watch;

use crate::state::{decode, Object, ObjectKey, Problem, ProblemBoard, State};
use crate::watch::{watch_tree, WatchError};

/// The problems this source reports on the board.
const REPORTER: &str = "manifests";

/// What one file held the last time it was read.
struct FileEntry {
    content_hash: u64,
    /// Decoded objects, including last good versions kept for objects that are now invalid.
    objects: Vec<(ObjectKey, Object)>,
    problems: Vec<Problem>,
}

/// A manifest directory and what each of its files held.
pub struct ManifestDir {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileEntry>,
}

impl ManifestDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ManifestDir {
            dir: dir.into(),
            files: BTreeMap::new(),
        }
    }

    /// Reads what changed since the last call and returns the whole state and its problems.
    pub fn reload(&mut self) -> (State, Vec<Problem>) {
        let mut problems = Vec::new();
        let mut paths = Vec::new();
        if let Err(error) = list_files(&self.dir, &mut paths) {
            // The directory itself went away or is unreadable: keep everything we had.
            problems.push(Problem {
                source: self.dir.display().to_string(),
                object: None,
                field: None,
                message: format!("cannot list the manifest directory: {error}"),
                kept_last_good: !self.files.is_empty(),
            });
            paths = self.files.keys().cloned().collect();
        } else {
            self.files.retain(|path, _| paths.contains(path));
        }
        paths.sort();
        for path in &paths {
            self.refresh_file(path);
        }

        let mut state = State::default();
        let mut seen: BTreeMap<ObjectKey, &Path> = BTreeMap::new();
        for (path, entry) in &self.files {
            problems.extend(entry.problems.iter().cloned());
            for (key, object) in &entry.objects {
                if let Some(first) = seen.get(key) {
                    problems.push(Problem {
                        source: path.display().to_string(),
                        object: Some(key.to_string()),
                        field: None,
                        message: format!("defined again; the one in {} is used", first.display()),
                        kept_last_good: true,
                    });
                    continue;
                }
                seen.insert(key.clone(), path);
                state.insert(key, object.clone());
            }
        }
        (state, problems)
    }

    fn refresh_file(&mut self, path: &Path) {
        let source = path.display().to_string();
        let problem =
            |object: Option<String>, field: Option<String>, message: String, kept| Problem {
                source: source.clone(),
                object,
                field,
                message,
                kept_last_good: kept,
            };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) => {
                let previous = self.files.get_mut(path);
                let kept = previous.as_ref().is_some_and(|p| !p.objects.is_empty());
                let entry = previous.map(|p| std::mem::take(&mut p.objects));
                self.files.insert(
                    path.to_owned(),
                    FileEntry {
                        content_hash: 0,
                        objects: entry.unwrap_or_default(),
                        problems: vec![problem(None, None, format!("cannot read: {error}"), kept)],
                    },
                );
                return;
            }
        };
        let content_hash = hash_of(&text);
        if self
            .files
            .get(path)
            .is_some_and(|entry| entry.content_hash == content_hash)
        {
            return;
        }
        let previous = self.files.remove(path);
        let previous_objects = previous.map(|p| p.objects).unwrap_or_default();
        let documents = match parse_documents(&text) {
            Ok(documents) => documents,
            Err(message) => {
                let kept = !previous_objects.is_empty();
                self.files.insert(
                    path.to_owned(),
                    FileEntry {
                        content_hash,
                        objects: previous_objects,
                        problems: vec![problem(None, None, message, kept)],
                    },
                );
                return;
            }
        };
        let mut objects = Vec::new();
        let mut problems = Vec::new();
        for (index, document) in documents.into_iter().enumerate() {
            match decode(document) {
                Ok(decoded) => objects.push(decoded),
                Err(error) => {
                    let last_good = error
                        .key()
                        .and_then(|key| previous_objects.iter().find(|(k, _)| k == key));
                    let object = match error.key() {
                        Some(key) => key.to_string(),
                        None => format!("document {}", index + 1),
                    };
                    problems.push(problem(
                        Some(object),
                        error.field().map(str::to_owned),
                        error.to_string(),
                        last_good.is_some(),
                    ));
                    if let Some(good) = last_good {
                        objects.push(good.clone());
                    }
                }
            }
        }
        self.files.insert(
            path.to_owned(),
            FileEntry {
                content_hash,
                objects,
                problems,
            },
        );
    }
}

/// Splits a file into its documents (as JSON values), expanding `kind: List`.
fn parse_documents(text: &str) -> Result<Vec<serde_json::Value>, String> {
    let mut documents = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value =
            serde_yaml::Value::deserialize(document).map_err(|e| format!("invalid YAML: {e}"))?;
        if value.is_null() {
            continue;
        }
        let json = serde_json::to_value(&value)
            .map_err(|e| format!("a document is not representable as JSON: {e}"))?;
        match json.get("kind").and_then(|k| k.as_str()) {
            Some("List") => {
                let items = json
                    .get("items")
                    .and_then(|i| i.as_array())
                    .cloned()
                    .unwrap_or_default();
                documents.extend(items);
            }
            _ => documents.push(json),
        }
    }
    Ok(documents)
}

fn list_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follows symlinks: ConfigMap mounts link files into a hidden timestamped directory.
        let meta = std::fs::metadata(&path)?;
        if meta.is_dir() {
            list_files(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

fn hash_of(text: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// Loads `dir` now, then reloads it on every change, publishing each new state. Returns the
/// watcher, which must be kept alive, after the first load.
pub async fn run(
    dir: PathBuf,
    states: watch::Sender<Arc<State>>,
    problems: Arc<ProblemBoard>,
) -> Result<notify::RecommendedWatcher, WatchError> {
    let (watcher, mut changes) = watch_tree(&dir)?;
    let source = Arc::new(Mutex::new(ManifestDir::new(dir)));
    publish(&source, &states, &problems).await;
    tokio::spawn(async move {
        while changes.next().await.is_some() {
            if states.is_closed() {
                return;
            }
            publish(&source, &states, &problems).await;
        }
    });
    Ok(watcher)
}

async fn publish(
    source: &Arc<Mutex<ManifestDir>>,
    states: &watch::Sender<Arc<State>>,
    problems: &ProblemBoard,
) {
    let source = source.clone();
    // Parsing a large directory is CPU work: keep it off the RPC-serving threads.
    let reloaded = tokio::task::spawn_blocking(move || {
        // A panic in an earlier reload poisons the lock; the file cache is still usable.
        let mut source = source.lock().unwrap_or_else(|p| p.into_inner());
        source.reload()
    })
    .await;
    match reloaded {
        Ok((state, found)) => {
            tracing::debug!(objects = ?state.counts(), "manifest directory loaded");
            problems.set(REPORTER, found);
            states.send_replace(Arc::new(state));
        }
        Err(error) => {
            tracing::error!(%error, "reloading the manifest directory failed; keeping the last state");
        }
    }
}

#[cfg(test)]
mod tests;
