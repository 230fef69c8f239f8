//! Helpers for Weft's end-to-end tests: network namespaces as pods (with their proxy and apps),
//! guarded child processes, a tiny blocking HTTP/1.1 client and server, a TCP echo server, and
//! a Prometheus text parser.
//!
//! Everything is blocking and bounded: every wait has a deadline, every child and namespace
//! has a guard that removes it on drop, so a failing test fails fast and leaves nothing
//! behind. Helpers that only make sense inside a test panic with context instead of
//! returning errors; the guards' `Drop`s never panic.

pub mod bins;
pub mod http;
pub mod metrics;
pub mod netns;
pub mod pod;
pub mod process;
pub mod tcp;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Whether the tests run as root (needed for namespaces, iptables and changing UID).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Polls `check` every 50 ms until it returns `Some`, or `None` once `timeout` has passed.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A scratch directory, removed on drop. One made with [`TempDir::for_logs`] is kept (and its
/// path printed) when the test is panicking, for the logs.
pub struct TempDir {
    path: PathBuf,
    keep_on_panic: bool,
}

impl TempDir {
    /// Creates `<tmp>/<prefix>-<pid>-<n>`, readable and searchable by every UID.
    pub fn new(prefix: &str) -> TempDir {
        TempDir::create(prefix, false)
    }

    /// Like [`TempDir::new`], but kept when the test fails.
    pub fn for_logs(prefix: &str) -> TempDir {
        TempDir::create(prefix, true)
    }

    fn create(prefix: &str, keep_on_panic: bool) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|err| panic!("creating {}: {err}", path.display()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|err| panic!("chmod {}: {err}", path.display()));
        TempDir {
            path,
            keep_on_panic,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep_on_panic && std::thread::panicking() {
            eprintln!("keeping {} for its logs", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
