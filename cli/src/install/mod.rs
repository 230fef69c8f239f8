//! `weftctl install`: every manifest a cluster needs, as one multi-document YAML stream in
//! apply order: the namespace, the CRDs, RBAC, the Secrets and ConfigMap holding the
//! certificates, the control plane and the injector, and last the webhook (so it is never
//! registered before the injector it calls exists).
//!
//! Objects are written as JSON (readable, like the YAML they become), then decoded into
//! their k8s-openapi types and printed from those: a field the type doesn't have is an
//! error here ([`to_typed`]), never a manifest the API server would reject or silently trim.

mod certs;
mod components;
mod rbac;
mod webhook;

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

pub use certs::Certificates;

/// Where everything runs. Fixed: proxies, the control plane's identity
/// (`spiffe://<td>/ns/weft-system/sa/weft-control-plane`) and the webhook's DNS name use it.
pub const NAMESPACE: &str = "weft-system";
/// The weftctl (and so the Weft) version: images are tagged with it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
const REGISTRY: &str = "ghcr.io/weft-dev";

/// The CRDs, exactly the generated files in `deploy/crds/` (`api/tests/crds.rs` keeps them
/// equal to the types).
pub const CRDS: &[(&str, &str)] = &[
    (
        "authorizationpolicies.policy.weft.dev",
        include_str!("../../../deploy/crds/authorizationpolicies.policy.weft.dev.yaml"),
    ),
    (
        "trafficpolicies.policy.weft.dev",
        include_str!("../../../deploy/crds/trafficpolicies.policy.weft.dev.yaml"),
    ),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "PascalCase")]
pub enum FailurePolicy {
    /// Pod creation in meshed namespaces fails while the injector can't be reached.
    Fail,
    /// Pods are created without the sidecar while the injector can't be reached.
    Ignore,
}

/// Spelt as in Kubernetes.
#[derive(Clone, Copy, Debug, ValueEnum)]
#[value(rename_all = "PascalCase")]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

#[derive(Args, Debug, Clone)]
pub struct InstallArgs {
    /// The mesh's SPIFFE trust domain: identities are spiffe://<domain>/ns/<ns>/sa/<sa>.
    #[arg(long, value_name = "DOMAIN", default_value = weft_injector::config::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// The control plane's image.
    #[arg(long, value_name = "IMAGE", default_value_t = format!("{REGISTRY}/weft-control-plane:{VERSION}"))]
    pub control_plane_image: String,
    /// The injector's image.
    #[arg(long, value_name = "IMAGE", default_value_t = format!("{REGISTRY}/weft-injector:{VERSION}"))]
    pub injector_image: String,
    /// The image the injector adds to pods (proxy and init container).
    #[arg(long, value_name = "IMAGE", default_value = weft_injector::config::DEFAULT_PROXY_IMAGE)]
    pub proxy_image: String,
    /// Tag the default images (those not set by the three flags above) with TAG instead of
    /// weftctl's version.
    #[arg(long, value_name = "TAG")]
    pub image_tag: Option<String>,
    /// `imagePullPolicy` of every Weft container (default: Kubernetes' own).
    #[arg(long, value_enum, value_name = "POLICY")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Control plane replicas (stateless apart from the CA key in its Secret).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub control_plane_replicas: i32,
    /// Injector replicas. With --webhook-failure-policy Fail, run 2 or more so a node drain
    /// doesn't stop pod creation in meshed namespaces.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub injector_replicas: i32,
    /// What the API server does when the injector doesn't answer: `Fail` (the default)
    /// refuses the pod, so no pod of a meshed namespace ever runs without its proxy (and
    /// so without mTLS and authorization); `Ignore` creates it unmeshed.
    #[arg(long, value_enum, default_value = "Fail")]
    pub webhook_failure_policy: FailurePolicy,
    /// How long the API server waits for the injector (1 to 30 seconds).
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    pub webhook_timeout_seconds: i32,
    /// Keep the generated certificates in DIR and reuse them on later runs (files ca.crt,
    /// ca.key, webhook-ca.crt, webhook.crt, webhook.key). Without it every run makes a new
    /// mesh root, and re-applying it cuts running proxies off from the control plane until
    /// they restart.
    #[arg(long, value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,
    /// No longer needed, and ignored with a note on stderr: the control plane now keeps the
    /// trust anchors ConfigMap (weft-trust-anchors) in every meshed namespace itself. Still
    /// accepted so that existing scripts keep working; two writers of one ConfigMap would
    /// fight over it (and `kubectl apply --server-side` would report a conflict).
    #[arg(long = "mesh-namespace", value_name = "NAMESPACE", hide = true)]
    pub mesh_namespaces: Vec<String>,
}

impl InstallArgs {
    fn image(&self, explicit: &str, component: &str) -> String {
        match &self.image_tag {
            Some(tag) if explicit == format!("{REGISTRY}/{component}:{VERSION}") => {
                format!("{REGISTRY}/{component}:{tag}")
            }
            _ => explicit.to_owned(),
        }
    }

    pub fn control_plane_image(&self) -> String {
        self.image(&self.control_plane_image, "weft-control-plane")
    }

    pub fn injector_image(&self) -> String {
        self.image(&self.injector_image, "weft-injector")
    }

    pub fn proxy_image(&self) -> String {
        self.image(&self.proxy_image, "weft-proxy")
    }

    pub fn pull_policy(&self) -> Option<&'static str> {
        self.image_pull_policy.map(|p| match p {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        })
    }

    fn check(&self) -> anyhow::Result<()> {
        if !(1..=30).contains(&self.webhook_timeout_seconds) {
            bail!(
                "--webhook-timeout-seconds must be between 1 and 30 (the API server's limits), got {}",
                self.webhook_timeout_seconds
            );
        }
        if self.control_plane_replicas < 1 || self.injector_replicas < 1 {
            bail!("--control-plane-replicas and --injector-replicas must be at least 1");
        }
        weft_api::SpiffeId::for_service_account(
            &self.trust_domain,
            NAMESPACE,
            rbac::CONTROL_PLANE_SA,
        )
        .map_err(|e| anyhow::anyhow!("--trust-domain {:?}: {e}", self.trust_domain))?;
        Ok(())
    }
}

pub fn run(args: &InstallArgs) -> anyhow::Result<()> {
    args.check()?;
    if !args.mesh_namespaces.is_empty() {
        eprintln!(
            "weftctl install: --mesh-namespace is no longer needed and is ignored: the control \
             plane creates the ConfigMap weft-trust-anchors in every namespace labelled \
             weft.dev/inject=enabled (and every namespace with an injected pod)"
        );
    }
    let dns = webhook::dns_names();
    let certs = match &args.ca_dir {
        Some(dir) => certs::load_or_create(dir, &args.trust_domain, &dns)?,
        None => certs::generate(&args.trust_domain, &dns)?,
    };
    print!("{}", render(args, &certs)?);
    Ok(())
}

/// The whole stream.
pub fn render(args: &InstallArgs, certs: &Certificates) -> anyhow::Result<String> {
    let mut out = format!(
        "# Weft {VERSION}, generated by `weftctl install`. It holds private keys (the mesh's \
         root CA\n# and the injector's serving key): apply it, don't commit it.\n"
    );
    let mut emit = |yaml: String| {
        out.push_str("---\n");
        out.push_str(&yaml);
    };
    emit(typed_yaml::<k8s_openapi::api::core::v1::Namespace>(
        namespace(),
    )?);
    for (_, crd) in CRDS {
        emit((*crd).to_owned());
    }
    for object in rbac::objects() {
        emit(object_yaml(object)?);
    }
    for object in components::secrets(certs) {
        emit(object_yaml(object)?);
    }
    for object in components::control_plane(args) {
        emit(object_yaml(object)?);
    }
    for object in components::injector(args) {
        emit(object_yaml(object)?);
    }
    emit(object_yaml(webhook::configuration(args, certs))?);
    Ok(out)
}

/// The common labels of a component's objects.
pub fn labels(component: &str) -> Value {
    json!({
        "app.kubernetes.io/name": format!("weft-{component}"),
        "app.kubernetes.io/part-of": "weft",
        "app.kubernetes.io/version": VERSION,
    })
}

fn namespace() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": NAMESPACE,
            "labels": {
                "app.kubernetes.io/part-of": "weft",
                // The webhook also excludes it by name; this says so to anyone reading.
                weft_injector::annotations::INJECT: weft_injector::annotations::DISABLED,
                // Every Weft pod meets the restricted Pod Security Standard.
                "pod-security.kubernetes.io/enforce": "restricted",
            },
        },
    })
}

/// Prints `object` through the k8s-openapi type its `kind` names.
fn object_yaml(object: Value) -> anyhow::Result<String> {
    use k8s_openapi::api::{admissionregistration::v1 as admission, apps::v1 as apps};
    use k8s_openapi::api::{core::v1 as core, rbac::v1 as rbac};
    let kind = object["kind"].as_str().unwrap_or_default().to_owned();
    match kind.as_str() {
        "Namespace" => typed_yaml::<core::Namespace>(object),
        "ServiceAccount" => typed_yaml::<core::ServiceAccount>(object),
        "Secret" => typed_yaml::<core::Secret>(object),
        "ConfigMap" => typed_yaml::<core::ConfigMap>(object),
        "Service" => typed_yaml::<core::Service>(object),
        "ClusterRole" => typed_yaml::<rbac::ClusterRole>(object),
        "ClusterRoleBinding" => typed_yaml::<rbac::ClusterRoleBinding>(object),
        "Role" => typed_yaml::<rbac::Role>(object),
        "RoleBinding" => typed_yaml::<rbac::RoleBinding>(object),
        "Deployment" => typed_yaml::<apps::Deployment>(object),
        "PodDisruptionBudget" => {
            typed_yaml::<k8s_openapi::api::policy::v1::PodDisruptionBudget>(object)
        }
        "MutatingWebhookConfiguration" => {
            typed_yaml::<admission::MutatingWebhookConfiguration>(object)
        }
        other => bail!("install: no type for kind {other:?}"),
    }
}

fn typed_yaml<T: DeserializeOwned + Serialize>(object: Value) -> anyhow::Result<String> {
    let typed: T = to_typed(&object)?;
    serde_yaml::to_string(&typed).context("serializing a manifest")
}

/// `object` as `T`, failing when `T` would drop or change any of it.
pub fn to_typed<T: DeserializeOwned + Serialize>(object: &Value) -> anyhow::Result<T> {
    let name = format!("{} {}", object["kind"], object["metadata"]["name"]);
    let typed: T = serde_json::from_value(object.clone())
        .with_context(|| format!("install: {name} doesn't fit its type"))?;
    let back = serde_json::to_value(&typed)?;
    if back != *object {
        bail!("install: {name} changes through its type:\n{object:#}\nbecame\n{back:#}");
    }
    Ok(typed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: InstallArgs,
    }

    fn args(flags: &[&str]) -> InstallArgs {
        Cli::parse_from(std::iter::once("install").chain(flags.iter().copied())).args
    }

    #[test]
    fn every_object_fits_its_type() {
        let args = args(&[]);
        let certs = certs::generate("cluster.local", &webhook::dns_names()).unwrap();
        render(&args, &certs).expect("renders");
    }

    #[test]
    fn a_misspelt_field_is_caught() {
        let object = json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "x"}, "automountServiceAcountToken": true,
        });
        let err = object_yaml(object).unwrap_err().to_string();
        assert!(err.contains("changes through its type"), "{err}");
    }

    #[test]
    fn image_tag_retags_only_default_images() {
        let a = args(&["--image-tag", "9.9.9", "--injector-image", "my/injector:1"]);
        assert_eq!(
            a.control_plane_image(),
            format!("{REGISTRY}/weft-control-plane:9.9.9")
        );
        assert_eq!(a.injector_image(), "my/injector:1");
        assert_eq!(a.proxy_image(), format!("{REGISTRY}/weft-proxy:9.9.9"));
    }
}
