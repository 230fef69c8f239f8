//! The certificates `weftctl install` puts in its Secrets, made with rcgen (ECDSA P-256):
//!
//! - the **mesh root**: a self-signed CA the control plane issues workload certificates
//!   from, and the trust anchor every proxy is given;
//! - the **webhook CA** and the injector's **serving certificate** signed by it, for
//!   `weft-injector.weft-system.svc`. The API server trusts the webhook CA through the
//!   MutatingWebhookConfiguration's `caBundle`; its key is thrown away after signing, so no
//!   one can mint another serving certificate with it.
//!
//! Without `--ca-dir` every run generates new ones. With it, they are kept in the directory
//! (`ca.crt`, `ca.key`, `webhook-ca.crt`, `webhook.crt`, `webhook.key`; keys mode 0600) and
//! reused, so re-applying `weftctl install` keeps the mesh's trust anchor. A group of files
//! (mesh: the first two; webhook: the other three) that is partly there is an error naming
//! the files, never silently regenerated.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// How long generated certificates are valid. Rotate by generating new ones (see the docs).
pub const LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// `notBefore` is this far in the past, for clocks slightly behind ours.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

pub const MESH_CA_CERT: &str = "ca.crt";
pub const MESH_CA_KEY: &str = "ca.key";
pub const WEBHOOK_CA_CERT: &str = "webhook-ca.crt";
pub const WEBHOOK_CERT: &str = "webhook.crt";
pub const WEBHOOK_KEY: &str = "webhook.key";

/// Everything `install` needs, as PEM.
pub struct Certificates {
    /// The mesh root: the control plane's issuer and the proxies' trust anchor.
    pub mesh_ca_cert: String,
    pub mesh_ca_key: String,
    /// The webhook's `caBundle`.
    pub webhook_ca_cert: String,
    /// The injector's serving certificate and key.
    pub webhook_cert: String,
    pub webhook_key: String,
}

/// New certificates: a mesh root for `trust_domain` and a webhook serving certificate for
/// `dns_names` (the first is the name the API server calls).
pub fn generate(trust_domain: &str, dns_names: &[String]) -> anyhow::Result<Certificates> {
    let (mesh_ca_cert, mesh_ca_key) = generate_mesh_ca(trust_domain)?;
    let [webhook_ca_cert, webhook_cert, webhook_key] = generate_webhook(dns_names)?;
    Ok(Certificates {
        mesh_ca_cert,
        mesh_ca_key,
        webhook_ca_cert,
        webhook_cert,
        webhook_key,
    })
}

/// The certificates kept in `dir`, each group generated (and written) if none of its files
/// are there yet.
pub fn load_or_create(
    dir: &Path,
    trust_domain: &str,
    dns_names: &[String],
) -> anyhow::Result<Certificates> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;

    let [mesh_ca_cert, mesh_ca_key] = match read_group(dir, [MESH_CA_CERT, MESH_CA_KEY])? {
        Some(files) => files,
        None => {
            let (cert, key) = generate_mesh_ca(trust_domain)?;
            // Key first: a crash in between leaves an incomplete group, which the next run
            // reports instead of silently making a second root.
            write_new(&dir.join(MESH_CA_KEY), &key, 0o600)?;
            write_new(&dir.join(MESH_CA_CERT), &cert, 0o644)?;
            [cert, key]
        }
    };
    check_key_pair(&mesh_ca_cert, &mesh_ca_key, &dir.join(MESH_CA_CERT), true)?;

    let names = [WEBHOOK_CA_CERT, WEBHOOK_CERT, WEBHOOK_KEY];
    let [webhook_ca_cert, webhook_cert, webhook_key] = match read_group(dir, names)? {
        Some(files) => files,
        None => {
            let [ca, cert, key] = generate_webhook(dns_names)?;
            write_new(&dir.join(WEBHOOK_KEY), &key, 0o600)?;
            write_new(&dir.join(WEBHOOK_CERT), &cert, 0o644)?;
            write_new(&dir.join(WEBHOOK_CA_CERT), &ca, 0o644)?;
            [ca, cert, key]
        }
    };
    let cert_path = dir.join(WEBHOOK_CERT);
    check_key_pair(&webhook_cert, &webhook_key, &cert_path, false)?;
    check_serving_cert(&webhook_cert, &webhook_ca_cert, &dns_names[0], &cert_path)?;
    Ok(Certificates {
        mesh_ca_cert,
        mesh_ca_key,
        webhook_ca_cert,
        webhook_cert,
        webhook_key,
    })
}

fn generate_mesh_ca(trust_domain: &str) -> anyhow::Result<(String, String)> {
    let key = new_key()?;
    let params = ca_params(&format!("Weft root CA for {trust_domain}"));
    let cert = params
        .self_signed(&key)
        .context("signing the mesh root CA")?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// `[webhook CA, serving certificate, serving key]`.
fn generate_webhook(dns_names: &[String]) -> anyhow::Result<[String; 3]> {
    let ca_key = new_key()?;
    let ca_params = ca_params("Weft injector webhook CA");
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .context("signing the webhook CA")?;
    let issuer = Issuer::new(ca_params, ca_key);

    let key = new_key()?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Weft");
    name.push(DnType::CommonName, dns_names[0].clone());
    params.distinguished_name = name;
    params.subject_alt_names = dns_names
        .iter()
        .map(|n| Ok(SanType::DnsName(n.clone().try_into()?)))
        .collect::<Result<_, rcgen::Error>>()
        .context("the webhook's DNS names")?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params);
    let cert = params
        .signed_by(&key, &issuer)
        .context("signing the webhook serving certificate")?;
    Ok([ca_cert.pem(), cert.pem(), key.serialize_pem()])
}

fn new_key() -> anyhow::Result<KeyPair> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating a P-256 key")
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Weft");
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params);
    params
}

fn set_validity(params: &mut CertificateParams) {
    let now = SystemTime::now();
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = (now + LIFETIME).into();
}

/// The files of a group, `None` when none exist; an error when only some do.
fn read_group<const N: usize>(dir: &Path, names: [&str; N]) -> anyhow::Result<Option<[String; N]>> {
    let paths = names.map(|n| dir.join(n));
    let present = paths.iter().filter(|p| p.exists()).count();
    if present == 0 {
        return Ok(None);
    }
    if present < N {
        let missing: Vec<_> = paths.iter().filter(|p| !p.exists()).collect();
        bail!(
            "{} is incomplete: {} missing (of {}). Restore the missing files, or remove the \
             others to generate a new set — a new mesh root means every proxy must restart",
            dir.display(),
            missing
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            names.join(", ")
        );
    }
    let mut texts = Vec::with_capacity(N);
    for path in &paths {
        texts
            .push(fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?);
    }
    Ok(Some(texts.try_into().expect("N texts")))
}

fn parse_cert<'a>(
    pem: &'a x509_parser::pem::Pem,
    path: &Path,
) -> anyhow::Result<X509Certificate<'a>> {
    pem.parse_x509()
        .map_err(|e| anyhow::anyhow!("{}: not an X.509 certificate: {e}", path.display()))
}

fn read_pem(text: &str, path: &Path) -> anyhow::Result<x509_parser::pem::Pem> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(text.as_bytes())
        .map_err(|e| anyhow::anyhow!("{}: not PEM: {e}", path.display()))?;
    Ok(pem)
}

/// The key belongs to the certificate, which is valid now (and a CA when `ca`).
fn check_key_pair(cert_pem: &str, key_pem: &str, path: &Path, ca: bool) -> anyhow::Result<()> {
    let pem = read_pem(cert_pem, path)?;
    let cert = parse_cert(&pem, path)?;
    let key_path = path.with_extension("key");
    let key = KeyPair::from_pem(key_pem)
        .map_err(|e| anyhow::anyhow!("{}: not a private key: {e}", key_path.display()))?;
    if key.subject_public_key_info() != cert.public_key().raw {
        bail!(
            "{} does not belong to {}",
            key_path.display(),
            path.display()
        );
    }
    if !cert.validity().is_valid() {
        bail!(
            "{} is not valid now (valid from {} to {})",
            path.display(),
            cert.validity().not_before,
            cert.validity().not_after
        );
    }
    if ca && !cert.is_ca() {
        bail!("{} is not a CA certificate", path.display());
    }
    Ok(())
}

/// The serving certificate names `dns_name` and is signed by the webhook CA.
fn check_serving_cert(
    cert_pem: &str,
    ca_pem: &str,
    dns_name: &str,
    path: &Path,
) -> anyhow::Result<()> {
    let pem = read_pem(cert_pem, path)?;
    let cert = parse_cert(&pem, path)?;
    let ca_path = path.with_file_name(WEBHOOK_CA_CERT);
    let ca_pem = read_pem(ca_pem, &ca_path)?;
    let ca = parse_cert(&ca_pem, &ca_path)?;
    cert.verify_signature(Some(ca.public_key())).map_err(|e| {
        anyhow::anyhow!(
            "{} is not signed by {}: {e}",
            path.display(),
            ca_path.display()
        )
    })?;
    let names_it = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .is_some_and(|san| {
            san.value
                .general_names
                .iter()
                .any(|n| matches!(n, GeneralName::DNSName(d) if *d == dns_name))
        });
    if !names_it {
        bail!(
            "{} is not for {dns_name}: remove the webhook files to generate a new one",
            path.display()
        );
    }
    Ok(())
}

/// Writes `path` whole or not at all, refusing to replace an existing file.
fn write_new(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        drop(file);
        // hard_link + unlink: like rename, but fails if `path` appeared meanwhile.
        fs::hard_link(&tmp, path)?;
        fs::remove_file(&tmp)
    };
    write().with_context(|| format!("writing {}", path.display()))
}
