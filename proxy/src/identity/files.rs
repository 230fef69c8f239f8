//! Files mode: the certificate, key and trust bundle come from PEM files (cert-manager, a
//! mounted Secret, the benchmarks) and are reloaded when they change.
//!
//! Like the config reloader, it watches the files' directories rather than the files:
//! Secret mounts and editors replace files by renaming, which a watch on the old inode never
//! sees. The three files are written one after another, so a reload may see a new
//! certificate with the old key; such a set fails its checks, is reported, and the last good
//! set stays until the next event brings the matching file.
//!
//! A sound but expired certificate is taken at start (the proxy comes up not ready instead
//! of crash-looping while cert-manager is late with a renewal, and recovers when the file is
//! renewed), but a reload never replaces a valid certificate with one that is not.

use std::path::PathBuf;

use weft_api::SpiffeId;

use super::credentials::{Credentials, CredentialsError};
use super::metrics::IdentityMetrics;
use super::tls::{Source, State, Tls};
use super::IdentityError;
use crate::fswatch;

/// Where files mode reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSource {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
    /// When set (`--identity` or `--namespace`/`--service-account`), the certificate must
    /// name this ID.
    pub expected: Option<SpiffeId>,
}

impl FileSource {
    fn load(&self, state: &State) -> Result<Credentials, CredentialsError> {
        let credentials =
            Credentials::from_pem_files(&self.cert, &self.key, &self.bundle, &state.provider)?;
        match &self.expected {
            Some(expected) if credentials.identity() != expected => {
                Err(CredentialsError::WrongIdentity {
                    expected: expected.clone(),
                    got: credentials.identity().clone(),
                })
            }
            _ => Ok(credentials),
        }
    }
}

/// Loads the files (failing start if they are unusable) and starts watching them.
pub(crate) fn start(source: FileSource, metrics: IdentityMetrics) -> Result<Tls, IdentityError> {
    let tls = Tls::empty();
    let state = tls.state().clone();
    // Watching starts before the first read, so a change in between is not missed.
    let (watcher, mut changes) = fswatch::watch([
        source.cert.as_path(),
        source.key.as_path(),
        source.bundle.as_path(),
    ])?;
    tls.set_source(Source::Watcher(watcher));

    let credentials = source.load(&state).map_err(|e| {
        metrics.failed();
        IdentityError::Files(e)
    })?;
    log_loaded(&credentials, "workload certificate loaded from files");
    metrics.renewed(credentials.not_after());
    state.install(credentials);

    tokio::spawn(async move {
        while changes.next().await.is_some() {
            reload(&source, &state, &metrics);
        }
    });
    Ok(tls)
}

fn reload(source: &FileSource, state: &State, metrics: &IdentityMetrics) {
    match source.load(state) {
        Ok(credentials) => {
            if state
                .current()
                .is_some_and(|current| current.same_as(&credentials))
            {
                return;
            }
            let not_after = credentials.not_after();
            match state.install_if_no_worse(credentials) {
                Ok(()) => {
                    if let Some(installed) = state.current() {
                        log_loaded(&installed, "workload certificate reloaded from files");
                    }
                    metrics.renewed(not_after);
                }
                Err(error) => refused(source, state, metrics, &error),
            }
        }
        Err(error) => refused(source, state, metrics, &error),
    }
}

fn refused(
    source: &FileSource,
    state: &State,
    metrics: &IdentityMetrics,
    error: &CredentialsError,
) {
    metrics.failed();
    let current = state.current();
    tracing::error!(
        %error,
        cert = %source.cert.display(),
        keeping = ?current.as_ref().map(|c| c.identity().to_string()),
        "certificate files unusable; keeping the last good certificate"
    );
}

fn log_loaded(credentials: &Credentials, message: &'static str) {
    let not_after = humantime::format_rfc3339_seconds(credentials.not_after());
    if credentials.is_current() {
        tracing::info!(identity = %credentials.identity(), %not_after, "{message}");
    } else {
        // Taken because there is nothing better: not ready, peers refuse it, and the next
        // good file replaces it.
        tracing::warn!(
            identity = %credentials.identity(),
            %not_after,
            "{message}, but it is not valid now; not ready until it is renewed"
        );
    }
}
