//! Finding the binaries under test and staging them where any UID can run them.
//!
//! Cargo tells an integration test where its *own* package's binaries are
//! (`CARGO_BIN_EXE_weft-test-app`) but not where another package's are, and `cargo test`
//! builds another package's binaries only as test harnesses, never the real executable.
//! `weft-proxy` is therefore looked up next to `weft-test-app` (both land in
//! `target/<profile>/`) and must be built first: `cargo build -p weft-proxy` (or
//! `cargo build --workspace`). A binary older than the proxy's sources is refused rather than
//! silently tested. `WEFT_PROXY_BIN` overrides the lookup (and the age check), e.g. to test a
//! release build.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The `weft-proxy` binary to test, given the path of this package's `weft-test-app` and the
/// workspace root. Panics with the command to run when it is missing or stale.
pub fn weft_proxy(test_app: &Path, workspace: &Path) -> PathBuf {
    workspace_binary(
        "weft-proxy",
        "WEFT_PROXY_BIN",
        &workspace.join("proxy/src"),
        test_app,
    )
}

/// The `weft-control-plane` binary, found and checked like [`weft_proxy`]
/// (`WEFT_CONTROL_PLANE_BIN` overrides).
pub fn weft_control_plane(test_app: &Path, workspace: &Path) -> PathBuf {
    workspace_binary(
        "weft-control-plane",
        "WEFT_CONTROL_PLANE_BIN",
        &workspace.join("control-plane/src"),
        test_app,
    )
}

fn workspace_binary(name: &str, override_var: &str, sources: &Path, test_app: &Path) -> PathBuf {
    if let Some(path) = std::env::var_os(override_var) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{override_var}={} is not a file",
            path.display()
        );
        return path;
    }
    let path = test_app.with_file_name(name);
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|err| {
            panic!(
                "{}: {err}; build it first with `cargo build -p {name}` (same profile as \
                 the tests), or point {override_var} at a {name} binary",
                path.display()
            )
        });
    // Only the crate's own sources: every change there relinks the binary, so an older binary
    // is certainly stale (tests and other crates may change without relinking it).
    if let Some((newest, file)) = newest_file(sources) {
        assert!(
            built >= newest,
            "{} is older than {}: rebuild it with `cargo build -p {name}` (or set \
             {override_var} to test a specific binary)",
            path.display(),
            file.display()
        );
    }
    path
}

/// The most recently modified file under `dir` (recursively), with its modification time.
fn newest_file(dir: &Path) -> Option<(SystemTime, PathBuf)> {
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        let candidate = if meta.is_dir() {
            newest_file(&path)
        } else {
            meta.modified().ok().map(|time| (time, path))
        };
        if let Some(candidate) = candidate {
            let newer = match &newest {
                Some((time, _)) => candidate.0 > *time,
                None => true,
            };
            if newer {
                newest = Some(candidate);
            }
        }
    }
    newest
}

/// Links (or copies) `binary` into `dir`, which the caller created world-readable, so that
/// children running as unprivileged UIDs can execute it even when the checkout lives under a
/// directory only root may enter (such as /root).
pub fn stage(binary: &Path, dir: &Path) -> PathBuf {
    let name = binary
        .file_name()
        .unwrap_or_else(|| panic!("{} has no file name", binary.display()));
    let staged = dir.join(name);
    if std::fs::hard_link(binary, &staged).is_err() {
        std::fs::copy(binary, &staged).unwrap_or_else(|err| {
            panic!(
                "copying {} to {}: {err}",
                binary.display(),
                staged.display()
            )
        });
    }
    staged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_newest_file() {
        let dir = crate::TempDir::new("weft-bins-unit");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("old"), "").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(dir.path().join("sub/new"), "").unwrap();
        let (_, file) = newest_file(dir.path()).unwrap();
        assert_eq!(file, dir.path().join("sub/new"));
    }
}
