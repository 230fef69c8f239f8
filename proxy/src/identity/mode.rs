//! Which identity source the bootstrap flags choose, checked as a whole so that a conflicting
//! or incomplete set is a startup error rather than a proxy quietly running without mTLS.

use std::path::PathBuf;

use weft_api::SpiffeId;

use super::files::FileSource;
use super::IdentityError;
use crate::bootstrap::IdentityArgs;

pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// Where the workload certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// No identity flags: no mTLS.
    Disabled,
    /// `--identity-cert`, `--identity-key`, `--identity-trust-bundle`.
    Files(FileSource),
    /// `--control-plane-addr`.
    ControlPlane(ControlPlaneSource),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneSource {
    pub addr: String,
    pub identity: SpiffeId,
    pub control_plane: SpiffeId,
    pub token_file: PathBuf,
    pub trust_anchors: PathBuf,
}

fn config(message: impl Into<String>) -> IdentityError {
    IdentityError::Config(message.into())
}

impl Mode {
    pub fn from_args(args: &IdentityArgs) -> Result<Mode, IdentityError> {
        let trust_domain = trust_domain(args)?;
        let identity = workload_identity(args, &trust_domain)?;
        let files = [
            &args.identity_cert,
            &args.identity_key,
            &args.identity_trust_bundle,
        ];
        let files_mode = files.iter().any(|f| f.is_some());
        match (&args.control_plane_addr, files_mode) {
            (Some(_), true) => Err(config(
                "--control-plane-addr and --identity-cert/--identity-key/--identity-trust-bundle \
                 choose different certificate sources; give one",
            )),
            (None, true) => {
                let (Some(cert), Some(key), Some(bundle)) = (
                    &args.identity_cert,
                    &args.identity_key,
                    &args.identity_trust_bundle,
                ) else {
                    let missing: Vec<&str> = [
                        "--identity-cert",
                        "--identity-key",
                        "--identity-trust-bundle",
                    ]
                    .into_iter()
                    .zip(files)
                    .filter(|(_, f)| f.is_none())
                    .map(|(name, _)| name)
                    .collect();
                    return Err(config(format!(
                        "certificate files need --identity-cert, --identity-key and \
                         --identity-trust-bundle together; missing {}",
                        missing.join(", ")
                    )));
                };
                only_with_control_plane(args)?;
                Ok(Mode::Files(FileSource {
                    cert: cert.clone(),
                    key: key.clone(),
                    bundle: bundle.clone(),
                    expected: identity,
                }))
            }
            (Some(addr), false) => {
                check_addr(addr)?;
                let identity = identity.ok_or_else(|| {
                    config(
                        "--control-plane-addr needs this workload's identity: --identity, or \
                         --namespace and --service-account",
                    )
                })?;
                let trust_anchors = args.trust_anchors.clone().ok_or_else(|| {
                    config("--control-plane-addr needs --trust-anchors (the control plane's roots)")
                })?;
                let control_plane = match &args.control_plane_identity {
                    Some(id) => id.clone(),
                    None => SpiffeId::for_service_account(
                        &trust_domain,
                        "weft-system",
                        "weft-control-plane",
                    )
                    .map_err(|e| config(e.to_string()))?,
                };
                Ok(Mode::ControlPlane(ControlPlaneSource {
                    addr: addr.clone(),
                    identity,
                    control_plane,
                    token_file: args.identity_token_file.clone(),
                    trust_anchors,
                }))
            }
            (None, false) => {
                only_with_control_plane(args)?;
                Ok(Mode::Disabled)
            }
        }
    }
}

/// `--trust-domain`, else `--identity`'s, else `cluster.local`; they must agree.
fn trust_domain(args: &IdentityArgs) -> Result<String, IdentityError> {
    let explicit = match &args.trust_domain {
        Some(td) => {
            let id: SpiffeId = format!("spiffe://{td}")
                .parse()
                .map_err(|e| config(format!("--trust-domain {td:?}: {e}")))?;
            if !id.path().is_empty() {
                return Err(config(format!(
                    "--trust-domain {td:?} must be a name, not a path"
                )));
            }
            Some(td.clone())
        }
        None => None,
    };
    match (explicit, &args.identity) {
        (Some(td), Some(id)) if id.trust_domain() != td => Err(config(format!(
            "--identity {id} is not in --trust-domain {td}"
        ))),
        (Some(td), _) => Ok(td),
        (None, Some(id)) => Ok(id.trust_domain().to_owned()),
        (None, None) => Ok(DEFAULT_TRUST_DOMAIN.to_owned()),
    }
}

/// `--identity`, or the service account's ID; both may be given only if they agree.
fn workload_identity(
    args: &IdentityArgs,
    trust_domain: &str,
) -> Result<Option<SpiffeId>, IdentityError> {
    let from_account = match (&args.namespace, &args.service_account) {
        (Some(ns), Some(sa)) => Some(
            SpiffeId::for_service_account(trust_domain, ns, sa)
                .map_err(|e| config(format!("--namespace/--service-account: {e}")))?,
        ),
        (None, None) => None,
        (Some(_), None) => return Err(config("--namespace needs --service-account")),
        (None, Some(_)) => return Err(config("--service-account needs --namespace")),
    };
    match (&args.identity, from_account) {
        (Some(explicit), Some(account)) if *explicit != account => Err(config(format!(
            "--identity {explicit} contradicts --namespace/--service-account ({account})"
        ))),
        (Some(explicit), _) => Ok(Some(explicit.clone())),
        (None, account) => Ok(account),
    }
}

fn only_with_control_plane(args: &IdentityArgs) -> Result<(), IdentityError> {
    if args.trust_anchors.is_some() {
        return Err(config(
            "--trust-anchors is only used with --control-plane-addr",
        ));
    }
    if args.control_plane_identity.is_some() {
        return Err(config(
            "--control-plane-identity is only used with --control-plane-addr",
        ));
    }
    Ok(())
}

fn check_addr(addr: &str) -> Result<(), IdentityError> {
    match addr.parse::<http::uri::Authority>() {
        Ok(authority) if authority.port_u16().is_some() && !authority.host().is_empty() => Ok(()),
        _ => Err(config(format!(
            "--control-plane-addr {addr:?} is not host:port"
        ))),
    }
}
