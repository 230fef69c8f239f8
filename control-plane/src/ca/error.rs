//! What can go wrong loading the CA or signing a CSR. Every message names the file or the
//! input at fault; none ever contains key material.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    // Loading: the operator's files.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error(
        "state directory {dir} is incomplete: {present} exists but {missing} does not; \
         refusing to generate a new CA over an existing one (restore the file, or empty the \
         directory to start a new CA)"
    )]
    IncompleteStateDir {
        dir: PathBuf,
        present: String,
        missing: String,
    },
    #[error("the issuer ({subject}): {reason}")]
    BadIssuer { subject: String, reason: String },

    // Signing: the caller's CSR. These are the client's fault (INVALID_ARGUMENT).
    #[error("the CSR is not a valid PKCS#10 request: {0}")]
    CsrGarbled(String),
    #[error("the CSR's key is {0}; only ECDSA P-256 keys are accepted")]
    CsrKeyType(String),
    #[error("the CSR asks for {requested}; only the caller's identity {identity} (or no name) may be requested")]
    CsrNames { requested: String, identity: String },

    // Signing: our side.
    #[error("signing the certificate for {identity} failed: {reason}")]
    Sign { identity: String, reason: String },
}

impl CaError {
    /// Whether the caller's request was at fault (a bad CSR) rather than the CA.
    pub fn is_bad_request(&self) -> bool {
        matches!(
            self,
            CaError::CsrGarbled(_) | CaError::CsrKeyType(_) | CaError::CsrNames { .. }
        )
    }

    pub(crate) fn bad_file(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        CaError::BadFile {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
