//! Local mode's CA: a self-signed ECDSA P-256 root generated on first start and kept in the
//! state directory (`ca.crt`, `ca.key` with mode 0600, `bundle.crt`). Later starts load it.
//! It is never regenerated behind the operator's back: a directory holding some but not all
//! of the files, or a file that doesn't read or parse, is an error naming the file.
//!
//! `bundle.crt` is what local-mode proxies are given as their trust anchors. It starts as a
//! copy of `ca.crt`; to rotate, add the new root to it, put the new issuer in `ca.crt` and
//! `ca.key`, restart, and later drop the old root.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

use super::{random_serial, Authority, CaError, CLOCK_SKEW};

pub const CERT_FILE: &str = "ca.crt";
pub const KEY_FILE: &str = "ca.key";
pub const BUNDLE_FILE: &str = "bundle.crt";

/// How long a generated local root is valid.
pub const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The trust bundle's path in a state directory.
pub fn bundle_path(dir: &Path) -> PathBuf {
    dir.join(BUNDLE_FILE)
}

/// Loads the CA kept in `dir`, generating it first if `dir` holds none of its files.
pub fn load_or_create(dir: &Path, trust_domain: &str) -> Result<Authority, CaError> {
    let files = [CERT_FILE, KEY_FILE, BUNDLE_FILE].map(|name| dir.join(name));
    let mut present = Vec::new();
    for path in &files {
        match fs::symlink_metadata(path) {
            Ok(_) => present.push(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => present.push(false),
            Err(source) => {
                return Err(CaError::Read {
                    path: path.clone(),
                    source,
                })
            }
        }
    }
    let [cert, key, bundle] = &files;
    if present.iter().all(|p| *p) {
        warn_if_key_readable_by_others(key);
        return Authority::load(cert, key, bundle);
    }
    if let Some(found) = present.iter().position(|p| *p) {
        let missing = present.iter().position(|p| !*p).expect("not all present");
        return Err(CaError::IncompleteStateDir {
            dir: dir.to_owned(),
            present: files[found].display().to_string(),
            missing: files[missing].display().to_string(),
        });
    }
    generate(dir, trust_domain)
}

fn generate(dir: &Path, trust_domain: &str) -> Result<Authority, CaError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| CaError::Write {
            path: dir.to_owned(),
            source,
        })?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| CaError::Sign {
        identity: "the local root CA".into(),
        reason: e.to_string(),
    })?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Weft");
    name.push(
        DnType::CommonName,
        format!("Weft local root CA for {trust_domain}"),
    );
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = (now + ROOT_LIFETIME).into();
    params.serial_number = Some(random_serial().map_err(|reason| CaError::Sign {
        identity: "the local root CA".into(),
        reason,
    })?);
    let cert = params.self_signed(&key).map_err(|e| CaError::Sign {
        identity: "the local root CA".into(),
        reason: e.to_string(),
    })?;

    // Key first: a crash part-way leaves an incomplete directory, which the next start
    // reports instead of silently making a second CA.
    write_new(&dir.join(KEY_FILE), key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&dir.join(CERT_FILE), cert.pem().as_bytes(), 0o644)?;
    write_new(&dir.join(BUNDLE_FILE), cert.pem().as_bytes(), 0o644)?;
    tracing::info!(dir = %dir.display(), "generated a new local root CA");
    Authority::new(cert.der().clone(), key, vec![cert.der().clone()])
}

/// Writes `path` whole or not at all (a temporary file renamed into place), refusing to
/// replace an existing file.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    let err = |source| CaError::Write {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    // hard_link + unlink: like rename, but fails if `path` appeared meanwhile.
    fs::hard_link(&tmp, path).map_err(err)?;
    fs::remove_file(&tmp).map_err(err)?;
    Ok(())
}

fn warn_if_key_readable_by_others(key: &Path) {
    if let Ok(meta) = fs::metadata(key) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %key.display(),
                mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "the CA key is readable by other users; chmod 600 it"
            );
        }
    }
}
