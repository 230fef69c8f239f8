//! `weftctl install`: every document is a valid Kubernetes object of its type, RBAC is
//! least privilege, the webhook trusts the injector's certificate and skips weft-system, and
//! the control plane accepts the issuer it is given.

use std::collections::BTreeMap;
use std::process::Command;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn install(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_weftctl"))
        .arg("install")
        .args(args)
        .output()
        .expect("run weftctl");
    assert!(
        output.status.success(),
        "weftctl install failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The documents of a stream, as JSON (what the API server sees).
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde_json::to_value(serde_yaml::Value::deserialize(d).unwrap()).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// `doc` as `T`, which must hold all of it: nothing dropped, nothing changed.
fn typed<T: DeserializeOwned + Serialize>(doc: &Value) -> T {
    let name = format!("{} {}", doc["kind"], doc["metadata"]["name"]);
    let object: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{name} does not deserialize: {e}"));
    let back = serde_json::to_value(&object).unwrap();
    assert_eq!(
        &back, doc,
        "{name} loses or changes fields through its type"
    );
    object
}

struct Install {
    docs: Vec<Value>,
}

impl Install {
    fn new(args: &[&str]) -> Install {
        Install {
            docs: documents(&install(args)),
        }
    }

    fn all<T: DeserializeOwned + Serialize>(&self, kind: &str) -> Vec<T> {
        self.docs
            .iter()
            .filter(|d| d["kind"] == kind)
            .map(typed)
            .collect()
    }

    fn one<T: DeserializeOwned + Serialize>(&self, kind: &str, name: &str) -> T {
        let doc = self
            .docs
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"));
        typed(doc)
    }

    fn secret_text(&self, name: &str, key: &str) -> String {
        let secret: Secret = self.one("Secret", name);
        let bytes = &secret.data.unwrap()[key].0;
        String::from_utf8(bytes.clone()).unwrap()
    }
}

#[test]
fn every_document_deserializes_into_its_kubernetes_type() {
    let install = Install::new(&[]);
    let mut kinds = BTreeMap::<String, usize>::new();
    for doc in &install.docs {
        let kind = doc["kind"].as_str().expect("a kind").to_owned();
        match kind.as_str() {
            "Namespace" => drop(typed::<Namespace>(doc)),
            "CustomResourceDefinition" => drop(typed::<CustomResourceDefinition>(doc)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(doc)),
            "ClusterRole" => drop(typed::<ClusterRole>(doc)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(doc)),
            "Secret" => drop(typed::<Secret>(doc)),
            "ConfigMap" => drop(typed::<ConfigMap>(doc)),
            "Deployment" => drop(typed::<Deployment>(doc)),
            "Service" => drop(typed::<Service>(doc)),
            "PodDisruptionBudget" => drop(typed::<PodDisruptionBudget>(doc)),
            "MutatingWebhookConfiguration" => drop(typed::<MutatingWebhookConfiguration>(doc)),
            other => panic!("unexpected kind {other}"),
        }
        *kinds.entry(kind).or_default() += 1;
    }
    let want = [
        ("Namespace", 1),
        ("CustomResourceDefinition", 2),
        ("ServiceAccount", 2),
        ("ClusterRole", 1),
        ("ClusterRoleBinding", 1),
        ("Secret", 2),
        ("ConfigMap", 1),
        ("Deployment", 2),
        ("Service", 2),
        ("PodDisruptionBudget", 1),
        ("MutatingWebhookConfiguration", 1),
    ];
    assert_eq!(
        kinds,
        want.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
    );
    assert_eq!(install.docs[0]["kind"], "Namespace", "the namespace first");
    assert_eq!(
        install.docs.last().unwrap()["kind"],
        "MutatingWebhookConfiguration",
        "the webhook last"
    );
    for doc in &install.docs {
        let cluster_scoped = [
            "Namespace",
            "CustomResourceDefinition",
            "ClusterRole",
            "ClusterRoleBinding",
            "MutatingWebhookConfiguration",
        ];
        let namespace = &doc["metadata"]["namespace"];
        if cluster_scoped.contains(&doc["kind"].as_str().unwrap()) {
            assert!(namespace.is_null(), "{doc}");
        } else {
            assert_eq!(namespace, "weft-system", "{}", doc["metadata"]);
        }
    }
}

#[test]
fn the_crds_are_the_generated_files() {
    let install = Install::new(&[]);
    let crds: Vec<CustomResourceDefinition> = install.all("CustomResourceDefinition");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(
        crds.len(),
        files.len(),
        "every CRD in deploy/crds, no other"
    );
    for (crd, file) in crds.iter().zip(&files) {
        let on_disk: CustomResourceDefinition =
            serde_yaml::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        assert_eq!(crd, &on_disk, "{}", file.display());
    }
}

fn no_wildcards(rules: &[PolicyRule], owner: &str) {
    for rule in rules {
        let words = rule
            .verbs
            .iter()
            .chain(rule.resources.iter().flatten())
            .chain(rule.api_groups.iter().flatten())
            .chain(rule.non_resource_urls.iter().flatten());
        for word in words {
            assert!(!word.contains('*'), "{owner}: wildcard in {rule:?}");
        }
    }
}

#[test]
fn rbac_is_least_privilege() {
    let install = Install::new(&[]);
    let roles: Vec<ClusterRole> = install.all("ClusterRole");
    assert_eq!(roles.len(), 1, "one ClusterRole: the control plane's");
    let rules = roles[0].rules.clone().unwrap();
    no_wildcards(&rules, "weft-control-plane");
    let mut granted = Vec::new();
    for rule in &rules {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                let mut verbs = rule.verbs.clone();
                verbs.sort();
                granted.push((format!("{resource}.{group}"), verbs.join(",")));
            }
        }
    }
    granted.sort();
    let watch = "list,watch";
    let mut want = vec![
        ("namespaces.".to_owned(), watch),
        ("pods.".to_owned(), watch),
        ("services.".to_owned(), watch),
        ("serviceaccounts.".to_owned(), watch),
        ("endpointslices.discovery.k8s.io".to_owned(), watch),
        ("authorizationpolicies.policy.weft.dev".to_owned(), watch),
        ("trafficpolicies.policy.weft.dev".to_owned(), watch),
        ("httproutes.gateway.networking.k8s.io".to_owned(), watch),
        ("tokenreviews.authentication.k8s.io".to_owned(), "create"),
        // The trust anchors ConfigMap in every meshed namespace: watched and server-side
        // applied; never deleted.
        ("configmaps.".to_owned(), "create,list,patch,watch"),
    ];
    want.sort();
    let want: Vec<(String, String)> = want.into_iter().map(|(r, v)| (r, v.into())).collect();
    assert_eq!(granted, want);

    let binding: ClusterRoleBinding = install.one("ClusterRoleBinding", "weft-control-plane");
    assert_eq!(binding.role_ref.name, "weft-control-plane");
    let subjects = binding.subjects.unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, "weft-control-plane");
    assert_eq!(subjects[0].namespace.as_deref(), Some("weft-system"));
    assert!(
        install.all::<Value>("Role").is_empty() && install.all::<Value>("RoleBinding").is_empty(),
        "the injector needs no role: /version is public, its Secret is a volume"
    );

    // Every pod runs as its own ServiceAccount, which exists.
    let accounts: Vec<ServiceAccount> = install.all("ServiceAccount");
    let names: Vec<_> = accounts
        .iter()
        .map(|a| a.metadata.name.clone().unwrap())
        .collect();
    for deployment in install.all::<Deployment>("Deployment") {
        let spec = deployment.spec.template.spec.unwrap();
        let account = spec.service_account_name.unwrap();
        assert!(names.contains(&account), "{account} is created");
    }
}

fn now() -> rustls::pki_types::UnixTime {
    rustls::pki_types::UnixTime::now()
}

#[test]
fn the_ca_bundle_verifies_the_injectors_serving_certificate() {
    use rustls::pki_types::{CertificateDer, ServerName};

    let install = Install::new(&[]);
    let webhook: MutatingWebhookConfiguration =
        install.one("MutatingWebhookConfiguration", "weft-injector");
    let hooks = webhook.webhooks.unwrap();
    let hook = &hooks[0];
    assert_eq!(
        hooks[1].client_config, hook.client_config,
        "one injector, one caBundle"
    );
    let service = hook.client_config.service.clone().unwrap();
    let host = format!("{}.{}.svc", service.name, service.namespace);
    assert_eq!(host, "weft-injector.weft-system.svc");
    let bundle = hook.client_config.ca_bundle.clone().expect("caBundle").0;

    let der = |pem_text: &[u8]| -> Vec<CertificateDer<'static>> {
        let mut certs = Vec::new();
        let mut rest = pem_text;
        while let Ok((remaining, pem)) = x509_parser::pem::parse_x509_pem(rest) {
            certs.push(CertificateDer::from(pem.contents));
            rest = remaining;
        }
        certs
    };
    let roots = der(&bundle);
    assert_eq!(roots.len(), 1, "one CA in the bundle");
    let anchors: Vec<_> = roots
        .iter()
        .map(|c| webpki::anchor_from_trusted_cert(c).unwrap().to_owned())
        .collect();

    let serving = der(install
        .secret_text("weft-injector-tls", "tls.crt")
        .as_bytes());
    assert_eq!(serving.len(), 1);
    let leaf = webpki::EndEntityCert::try_from(&serving[0]).expect("a leaf");
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &[],
        now(),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .expect("the caBundle verifies the serving certificate");
    leaf.verify_is_valid_for_subject_name(&ServerName::try_from(host.as_str()).unwrap())
        .expect("for the Service's name");

    // The key in the Secret is the certificate's.
    let key = rcgen::KeyPair::from_pem(&install.secret_text("weft-injector-tls", "tls.key"))
        .expect("a PEM key");
    let (_, cert) = x509_parser::parse_x509_certificate(&serving[0]).unwrap();
    use rcgen::PublicKeyData;
    assert_eq!(key.subject_public_key_info(), cert.public_key().raw);

    // The injector mounts that Secret.
    let injector: Deployment = install.one("Deployment", "weft-injector");
    let volumes = injector.spec.template.spec.unwrap().volumes.unwrap();
    assert!(volumes
        .iter()
        .any(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref())
            == Some("weft-injector-tls")));
}

#[test]
fn the_webhook_skips_weft_system_and_is_configured_as_documented() {
    let install = Install::new(&[]);
    let namespace: Namespace = install.one("Namespace", "weft-system");
    let labels = namespace.metadata.labels.unwrap();
    assert_eq!(labels["weft.dev/inject"], "disabled");

    let webhook: MutatingWebhookConfiguration =
        install.one("MutatingWebhookConfiguration", "weft-injector");
    let hooks = webhook.webhooks.unwrap();
    assert_eq!(hooks.len(), 2, "namespace opt-in and pod opt-in");
    let selector = |hook: &k8s_openapi::api::admissionregistration::v1::MutatingWebhook,
                    which: &str| {
        let selector = match which {
            "namespace" => hook.namespace_selector.clone(),
            _ => hook.object_selector.clone(),
        };
        let expressions = selector.unwrap().match_expressions.unwrap();
        move |key: &str, op: &str, value: &str| {
            expressions.iter().any(|e: &LabelSelectorRequirement| {
                e.key == key && e.operator == op && e.values.iter().flatten().any(|v| v == value)
            })
        }
    };
    for hook in &hooks {
        let namespace = selector(hook, "namespace");
        assert!(
            namespace("kubernetes.io/metadata.name", "NotIn", "weft-system"),
            "{}: weft-system excluded by name",
            hook.name
        );
        assert!(namespace(
            "kubernetes.io/metadata.name",
            "NotIn",
            "kube-system"
        ));
        assert_eq!(hook.side_effects, "None");
        assert_eq!(hook.admission_review_versions, ["v1"]);
        assert_eq!(hook.failure_policy.as_deref(), Some("Fail"));
        assert_eq!(hook.timeout_seconds, Some(5));
        assert_eq!(hook.reinvocation_policy.as_deref(), Some("IfNeeded"));
        let rules = hook.rules.clone().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].operations.as_deref(),
            Some(&["CREATE".to_owned()][..])
        );
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&["pods".to_owned()][..])
        );
        assert_eq!(rules[0].api_groups.as_deref(), Some(&[String::new()][..]));
    }
    // Labelled namespaces, minus pods labelled out.
    assert!(selector(&hooks[0], "namespace")(
        "weft.dev/inject",
        "In",
        "enabled"
    ));
    assert!(selector(&hooks[0], "object")(
        "weft.dev/inject",
        "NotIn",
        "disabled"
    ));
    // Elsewhere, pods labelled in: disjoint, so no pod is sent twice.
    assert!(selector(&hooks[1], "namespace")(
        "weft.dev/inject",
        "NotIn",
        "enabled"
    ));
    assert!(selector(&hooks[1], "object")(
        "weft.dev/inject",
        "In",
        "enabled"
    ));

    // Weft's own pods opt out too, and the Services reach them.
    let services: Vec<Service> = install.all("Service");
    for deployment in install.all::<Deployment>("Deployment") {
        let template = deployment.spec.template;
        let meta = template.metadata.unwrap();
        assert_eq!(meta.annotations.unwrap()["weft.dev/inject"], "disabled");
        let pod_labels = meta.labels.unwrap();
        let name = deployment.metadata.name.unwrap();
        let service = services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(&name))
            .unwrap_or_else(|| panic!("a Service for {name}"));
        let selector = service.spec.clone().unwrap().selector.unwrap();
        for (k, v) in selector {
            assert_eq!(pod_labels.get(&k), Some(&v), "{name}: selector {k}");
        }
    }

    let ignoring = Install::new(&[
        "--webhook-failure-policy",
        "Ignore",
        "--webhook-timeout-seconds",
        "3",
    ]);
    let webhook: MutatingWebhookConfiguration =
        ignoring.one("MutatingWebhookConfiguration", "weft-injector");
    for hook in webhook.webhooks.unwrap() {
        assert_eq!(hook.failure_policy.as_deref(), Some("Ignore"));
        assert_eq!(hook.timeout_seconds, Some(3));
    }
}

#[test]
fn the_control_plane_accepts_its_issuer_and_serves_the_documented_ports() {
    let install = Install::new(&["--trust-domain", "prod.example"]);
    let cert = install.secret_text("weft-identity-issuer", "tls.crt");
    let key = install.secret_text("weft-identity-issuer", "tls.key");
    let bundle = install.secret_text("weft-identity-issuer", "ca.crt");
    let authority = weft_control_plane::ca::Authority::from_pem(&cert, &key, &bundle)
        .expect("the control plane accepts the generated issuer");
    assert!(authority.issuer_is_root());
    assert!(authority.issuer_subject().contains("prod.example"));
    // Proxies get the same root as their trust anchors.
    let anchors: ConfigMap = install.one("ConfigMap", "weft-trust-anchors");
    assert_eq!(anchors.data.unwrap()["ca.crt"], bundle);

    let service: Service = install.one("Service", "weft-control-plane");
    let ports: BTreeMap<_, _> = service
        .spec
        .unwrap()
        .ports
        .unwrap()
        .into_iter()
        .map(|p| (p.name.unwrap(), p.port))
        .collect();
    assert_eq!(
        ports,
        BTreeMap::from([("grpc".into(), 15012), ("admin".into(), 15014)])
    );

    let deployment: Deployment = install.one("Deployment", "weft-control-plane");
    let pod = deployment.spec.template.spec.unwrap();
    let args = pod.containers[0].args.clone().unwrap();
    for want in [
        "--kubernetes",
        "--trust-domain=prod.example",
        "--issuer-cert=/etc/weft/issuer/tls.crt",
        "--issuer-key=/etc/weft/issuer/tls.key",
        "--trust-bundle=/etc/weft/issuer/ca.crt",
    ] {
        assert!(args.iter().any(|a| a == want), "{want} in {args:?}");
    }
}

#[test]
fn ca_dir_keeps_the_certificates_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("certs");
    let ca = ca_dir.to_str().unwrap();
    let first = Install::new(&["--ca-dir", ca]);
    let second = Install::new(&["--ca-dir", ca]);
    for (secret, key) in [
        ("weft-identity-issuer", "tls.key"),
        ("weft-injector-tls", "tls.crt"),
    ] {
        assert_eq!(
            first.secret_text(secret, key),
            second.secret_text(secret, key),
            "{secret}"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(ca_dir.join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "keys are private");

    // Without it, every run is a new root.
    assert_ne!(
        Install::new(&[]).secret_text("weft-identity-issuer", "tls.crt"),
        Install::new(&[]).secret_text("weft-identity-issuer", "tls.crt")
    );

    // Half a set is refused, never regenerated.
    std::fs::remove_file(ca_dir.join("ca.key")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_weftctl"))
        .args(["install", "--ca-dir", ca])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("ca.key missing"), "{err}");
}

#[test]
fn image_flags_reach_the_deployments() {
    let install = Install::new(&[
        "--image-tag",
        "1.2.3",
        "--injector-image",
        "registry.local/injector:dev",
        "--image-pull-policy",
        "IfNotPresent",
    ]);
    let image = |name: &str| {
        let d: Deployment = install.one("Deployment", name);
        let c = d.spec.template.spec.unwrap().containers[0].clone();
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        (c.image.unwrap(), c.args.unwrap())
    };
    assert_eq!(
        image("weft-control-plane").0,
        "ghcr.io/weft-dev/weft-control-plane:1.2.3"
    );
    let (injector, args) = image("weft-injector");
    assert_eq!(injector, "registry.local/injector:dev");
    assert!(
        args.iter()
            .any(|a| a == "--proxy-image=ghcr.io/weft-dev/weft-proxy:1.2.3"),
        "{args:?}"
    );
}

#[test]
fn bad_flags_are_refused() {
    for flags in [
        &["--webhook-timeout-seconds", "31"][..],
        &["--trust-domain", "Not A Domain"][..],
        &["--injector-replicas", "0"][..],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_weftctl"))
            .arg("install")
            .args(flags)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{flags:?}");
        assert!(output.stdout.is_empty(), "{flags:?}");
    }
}

#[test]
fn meshed_namespaces_get_their_trust_anchors_from_the_control_plane() {
    // The names the injector mounts are the ones the control plane publishes.
    let config = weft_injector::InjectConfig::default();
    use weft_control_plane::publish::trust_anchors;
    assert_eq!(config.trust_anchors.config_map, trust_anchors::CONFIG_MAP);
    assert_eq!(config.trust_anchors.key, trust_anchors::KEY);
    assert_eq!(config.trust_anchors.config_map, "weft-trust-anchors");
    assert_eq!(config.trust_anchors.key, "ca.crt");

    // `install` writes one copy, in weft-system, and none in meshed namespaces: the control
    // plane is the one writer there. `--mesh-namespace` is still accepted, and says so.
    let output = Command::new(env!("CARGO_BIN_EXE_weftctl"))
        .args(["install", "--mesh-namespace", "shop"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--mesh-namespace is no longer needed and is ignored"),
        "{stderr}"
    );
    let docs = documents(&String::from_utf8(output.stdout).unwrap());
    let maps: Vec<ConfigMap> = docs
        .iter()
        .filter(|d| d["kind"] == "ConfigMap")
        .map(typed)
        .collect();
    assert_eq!(maps.len(), 1);
    assert_eq!(maps[0].metadata.name.as_deref(), Some("weft-trust-anchors"));
    assert_eq!(maps[0].metadata.namespace.as_deref(), Some("weft-system"));
    assert!(
        docs.iter()
            .all(|d| d["metadata"]["namespace"].is_null()
                || d["metadata"]["namespace"] == "weft-system"),
        "nothing outside weft-system"
    );
    // Without the flag, no note.
    let quiet = Command::new(env!("CARGO_BIN_EXE_weftctl"))
        .arg("install")
        .output()
        .unwrap();
    assert!(
        quiet.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&quiet.stderr)
    );
}

#[test]
fn help_explains_the_command() {
    let output = Command::new(env!("CARGO_BIN_EXE_weftctl"))
        .args(["install", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    for want in [
        "private keys",
        "--ca-dir",
        "--trust-domain",
        "--webhook-failure-policy",
        "kubectl apply -f -",
    ] {
        assert!(help.contains(want), "--help lacks {want:?}:\n{help}");
    }
    // Deprecated: accepted but not advertised.
    assert!(!help.contains("--mesh-namespace"), "{help}");
}
