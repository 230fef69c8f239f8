//! Local mode's tokens: a YAML file mapping each token to a service account,
//!
//! ```yaml
//! tokens:
//!   - token: "s3cret-orders"
//!     namespace: shop
//!     serviceAccount: orders
//! ```
//!
//! reloaded when it changes. A version that doesn't read or parse is reported (logged, and
//! kept in [`TokenFile::last_error`]) and ignored: the last good tokens stay in force.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::Deserialize;

use super::{AuthError, AuthFuture, Authenticator, ServiceAccount};
use crate::watch::{watch_files, WatchError};

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(transparent)]
    Watch(#[from] WatchError),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    #[serde(default)]
    tokens: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Entry {
    token: String,
    namespace: String,
    service_account: String,
}

type Tokens = HashMap<String, ServiceAccount>;

struct State {
    tokens: RwLock<Arc<Tokens>>,
    last_error: Mutex<Option<String>>,
}

/// The token-file authenticator.
pub struct TokenFile {
    path: PathBuf,
    state: Arc<State>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl TokenFile {
    /// Reads the file once; it is not reloaded.
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let tokens = read(path)?;
        tracing::info!(path = %path.display(), tokens = tokens.len(), "token file loaded");
        Ok(TokenFile {
            path: path.to_owned(),
            state: Arc::new(State {
                tokens: RwLock::new(Arc::new(tokens)),
                last_error: Mutex::new(None),
            }),
            _watcher: None,
        })
    }

    /// Reads the file and reloads it whenever it changes. Needs a tokio runtime.
    pub fn watch(path: &Path) -> Result<Self, TokenFileError> {
        let mut this = Self::load(path)?;
        let state = this.state.clone();
        let watched = path.to_owned();
        this._watcher = Some(watch_files(&[path], move || {
            reload(&watched, &state);
        })?);
        Ok(this)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many tokens are in force.
    pub fn len(&self) -> usize {
        self.state.tokens.read().expect("not poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Why the last reload was refused, until a later one succeeds.
    pub fn last_error(&self) -> Option<String> {
        self.state.last_error.lock().expect("not poisoned").clone()
    }

    /// Re-reads the file now (what the watcher does on a change).
    pub fn reload(&self) {
        reload(&self.path, &self.state);
    }

    fn lookup(&self, token: &str) -> Option<ServiceAccount> {
        let tokens = self.state.tokens.read().expect("not poisoned").clone();
        tokens.get(token).cloned()
    }
}

impl Authenticator for TokenFile {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
        let found = self.lookup(token).ok_or_else(|| {
            AuthError::Invalid(format!("the token is not in {}", self.path.display()))
        });
        Box::pin(std::future::ready(found))
    }
}

fn reload(path: &Path, state: &State) {
    match read(path) {
        Ok(tokens) => {
            let mut current = state.tokens.write().expect("not poisoned");
            let changed = **current != tokens;
            *current = Arc::new(tokens);
            drop(current);
            *state.last_error.lock().expect("not poisoned") = None;
            if changed {
                tracing::info!(path = %path.display(), "token file reloaded");
            }
        }
        Err(error) => {
            tracing::error!(%error, "token file reload failed; keeping the last good tokens");
            *state.last_error.lock().expect("not poisoned") = Some(error.to_string());
        }
    }
}

fn read(path: &Path) -> Result<Tokens, TokenFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text).map_err(|reason| TokenFileError::Invalid {
        path: path.to_owned(),
        reason,
    })
}

/// Parses the file's text. Errors name the entry at fault, never a token.
fn parse(text: &str) -> Result<Tokens, String> {
    let file: FileFormat = if text.trim().is_empty() {
        FileFormat { tokens: Vec::new() }
    } else {
        serde_yaml::from_str(text).map_err(|e| e.to_string())?
    };
    let mut tokens = HashMap::with_capacity(file.tokens.len());
    for (i, entry) in file.tokens.into_iter().enumerate() {
        let at = format!(
            "tokens[{i}] ({}/{})",
            entry.namespace, entry.service_account
        );
        if entry.token.is_empty() {
            return Err(format!("{at}: the token is empty"));
        }
        // The same rules the SPIFFE ID built from them will have to pass.
        let id = weft_api::SpiffeId::for_service_account(
            "check.invalid",
            &entry.namespace,
            &entry.service_account,
        )
        .map_err(|e| format!("{at}: not a usable namespace/service account: {e}"))?;
        if id.service_account() != Some((&entry.namespace, &entry.service_account)) {
            return Err(format!(
                "{at}: a namespace or service account name cannot contain '/'"
            ));
        }
        let account = ServiceAccount {
            namespace: entry.namespace,
            name: entry.service_account,
        };
        if tokens.insert(entry.token, account).is_some() {
            return Err(format!("{at}: the same token appears twice"));
        }
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries_and_refuses_bad_ones() {
        let ok = parse(
            "tokens:\n  - {token: a, namespace: shop, serviceAccount: orders}\n  - {token: b, namespace: shop, serviceAccount: web}\n",
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok["b"].name, "web");
        assert!(parse("").unwrap().is_empty());

        let dup = parse("tokens:\n  - {token: a, namespace: x, serviceAccount: y}\n  - {token: a, namespace: x, serviceAccount: z}\n");
        assert!(dup.unwrap_err().contains("tokens[1] (x/z)"));
        let unknown =
            parse("tokens:\n  - {token: a, namespace: x, serviceAccount: y, role: admin}\n");
        assert!(unknown.unwrap_err().contains("role"));
        let bad_ns = parse("tokens:\n  - {token: a, namespace: 'x/y', serviceAccount: y}\n");
        assert!(bad_ns.unwrap_err().contains("tokens[0]"));
        let empty = parse("tokens:\n  - {token: '', namespace: x, serviceAccount: y}\n");
        assert!(empty.unwrap_err().contains("empty"));
    }

    #[test]
    fn errors_never_echo_a_token() {
        let err = parse("tokens:\n  - {token: sekrit, namespace: x, serviceAccount: y}\n  - {token: sekrit, namespace: x, serviceAccount: y}\n")
            .unwrap_err();
        assert!(!err.contains("sekrit"), "{err}");
    }
}
