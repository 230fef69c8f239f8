//! Finding the binaries under test and staging them where any UID can run them.
//!
//! Cargo tells an integration test where its *own* package's binaries are
//! (`CARGO_BIN_EXE_weft-test-app`) but not where another package's are, and it builds another
//! package's binaries only when asked. `weft-proxy` is therefore looked up next to
//! `weft-test-app` (both land in `target/<profile>/`), and must have been built first:
//! `cargo build -p weft-proxy` (or `cargo build --workspace`). `WEFT_PROXY_BIN` overrides the
//! lookup, e.g. to test a release build.

use std::path::{Path, PathBuf};

/// The `weft-proxy` binary to test, given the path of this package's `weft-test-app`.
/// Panics with the command to run when it has not been built.
pub fn weft_proxy(test_app: &Path) -> PathBuf {
    if let Some(path) = std::env::var_os("WEFT_PROXY_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "WEFT_PROXY_BIN={} is not a file",
            path.display()
        );
        return path;
    }
    let path = test_app.with_file_name("weft-proxy");
    assert!(
        path.is_file(),
        "{} not found: build it first with `cargo build -p weft-proxy` (same profile as the \
         tests), or point WEFT_PROXY_BIN at a weft-proxy binary",
        path.display()
    );
    path
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
