//! The Secrets, the control plane and the injector: Deployments, Services and
//! PodDisruptionBudgets.
//!
//! Every pod meets the restricted Pod Security Standard (non-root, no privilege escalation,
//! every capability dropped, RuntimeDefault seccomp, read-only root file system) and opts out
//! of injection itself.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use serde_json::{json, Value};
use weft_injector::annotations as ann;

use super::certs::Certificates;
use super::rbac::{CONTROL_PLANE_SA, INJECTOR_SA};
use super::webhook::{INJECTOR_PORT, INJECTOR_SERVICE};
use super::{labels, InstallArgs, NAMESPACE};

/// The mesh root (`tls.crt`, `tls.key`, `ca.crt`), mounted by the control plane.
pub const ISSUER_SECRET: &str = "weft-identity-issuer";
/// The injector's serving certificate (`tls.crt`, `tls.key`).
pub const INJECTOR_TLS_SECRET: &str = "weft-injector-tls";
/// The trust anchors a proxy checks the control plane with (the injector mounts this
/// ConfigMap, by name, from the pod's namespace; the control plane keeps one in every meshed
/// namespace).
pub const TRUST_ANCHORS_CONFIG_MAP: &str = weft_injector::config::DEFAULT_TRUST_ANCHORS_CONFIG_MAP;
pub const TRUST_ANCHORS_KEY: &str = weft_injector::config::DEFAULT_TRUST_ANCHORS_KEY;

pub const CONTROL_PLANE: &str = "weft-control-plane";
pub const GRPC_PORT: i32 = 15012;
pub const ADMIN_PORT: i32 = 15014;
/// The non-root user Weft's own pods run as.
const USER: i64 = 65532;

const ISSUER_DIR: &str = "/etc/weft/issuer";
/// The injector's default certificate directory.
const INJECTOR_TLS_DIR: &str = "/var/run/weft.dev/injector-tls";

fn meta(name: &str, component: &str) -> ObjectMeta {
    let labels: BTreeMap<String, String> =
        serde_json::from_value(labels(component)).expect("string labels");
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(NAMESPACE.to_owned()),
        labels: Some(labels),
        ..Default::default()
    }
}

fn bytes(pem: &str) -> ByteString {
    ByteString(pem.as_bytes().to_vec())
}

/// The issuer and webhook Secrets, and the trust anchors ConfigMap in `weft-system` (for
/// whatever outside the mesh needs the root, such as a proxy run by hand). Meshed
/// namespaces get theirs from the control plane, not from here: one writer per ConfigMap.
pub fn secrets(certs: &Certificates) -> Vec<Value> {
    let issuer = Secret {
        metadata: meta(ISSUER_SECRET, "control-plane"),
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            ("tls.crt".into(), bytes(&certs.mesh_ca_cert)),
            ("tls.key".into(), bytes(&certs.mesh_ca_key)),
            ("ca.crt".into(), bytes(&certs.mesh_ca_cert)),
        ])),
        ..Default::default()
    };
    let webhook = Secret {
        metadata: meta(INJECTOR_TLS_SECRET, "injector"),
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            ("tls.crt".into(), bytes(&certs.webhook_cert)),
            ("tls.key".into(), bytes(&certs.webhook_key)),
        ])),
        ..Default::default()
    };
    let anchors = ConfigMap {
        metadata: meta(TRUST_ANCHORS_CONFIG_MAP, "trust-anchors"),
        data: Some(BTreeMap::from([(
            TRUST_ANCHORS_KEY.into(),
            certs.mesh_ca_cert.clone(),
        )])),
        ..Default::default()
    };
    let to_value = |v: Result<Value, serde_json::Error>| v.expect("k8s-openapi types serialize");
    vec![
        to_value(serde_json::to_value(issuer)),
        to_value(serde_json::to_value(webhook)),
        to_value(serde_json::to_value(anchors)),
    ]
}

fn pod_security() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": USER,
        "runAsGroup": USER,
        // Mounted Secret files are group-readable by this group.
        "fsGroup": USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

fn container_security() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
    })
}

fn http_probe(path: &str, port: &str, scheme: &str, period: i32) -> Value {
    json!({
        "httpGet": {"path": path, "port": port, "scheme": scheme},
        "periodSeconds": period,
        "timeoutSeconds": 1,
        "failureThreshold": 3,
    })
}

fn with_pull_policy(mut container: Value, args: &InstallArgs) -> Value {
    if let Some(policy) = args.pull_policy() {
        container["imagePullPolicy"] = json!(policy);
    }
    container
}

fn deployment(name: &str, component: &str, replicas: i32, pod_spec: Value) -> Value {
    let mut pod_labels = labels(component);
    pod_labels["app.kubernetes.io/component"] = json!(component);
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels(component)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    // Belt and braces: weft-system is excluded by the webhook already.
                    "annotations": {ann::INJECT: ann::DISABLED},
                },
                "spec": pod_spec,
            },
        },
    })
}

/// At most one pod of a component down at a time when there are several (a node drain
/// never takes them all); nothing when there is one, so a drain isn't blocked.
fn disruption_budget(name: &str, component: &str, replicas: i32) -> Option<Value> {
    (replicas > 1).then(|| {
        json!({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels(component)},
            "spec": {
                "maxUnavailable": 1,
                "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            },
        })
    })
}

fn spread(name: &str) -> Value {
    json!([{
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": {"app.kubernetes.io/name": name}},
    }])
}

/// The control plane: Deployment (issuer from [`ISSUER_SECRET`]), Service (gRPC 15012,
/// admin 15014), and a PodDisruptionBudget when replicated.
pub fn control_plane(args: &InstallArgs) -> Vec<Value> {
    let container = with_pull_policy(
        json!({
            "name": CONTROL_PLANE,
            "image": args.control_plane_image(),
            "command": ["weft-control-plane"],
            "args": [
                "--kubernetes",
                format!("--trust-domain={}", args.trust_domain),
                format!("--namespace={NAMESPACE}"),
                format!("--service-account={CONTROL_PLANE_SA}"),
                format!("--issuer-cert={ISSUER_DIR}/tls.crt"),
                format!("--issuer-key={ISSUER_DIR}/tls.key"),
                format!("--trust-bundle={ISSUER_DIR}/ca.crt"),
                format!("--grpc-addr=0.0.0.0:{GRPC_PORT}"),
                format!("--admin-addr=0.0.0.0:{ADMIN_PORT}"),
                format!("--token-audience={}", weft_injector::config::DEFAULT_TOKEN_AUDIENCE),
                "--log-format=json",
            ],
            "ports": [
                {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
                {"name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
            ],
            "readinessProbe": http_probe("/ready", "admin", "HTTP", 5),
            "livenessProbe": http_probe("/live", "admin", "HTTP", 10),
            "resources": {
                "requests": {"cpu": "100m", "memory": "128Mi"},
                "limits": {"memory": "512Mi"},
            },
            "securityContext": container_security(),
            "volumeMounts": [{"name": "issuer", "mountPath": ISSUER_DIR, "readOnly": true}],
        }),
        args,
    );
    let pod = json!({
        "serviceAccountName": CONTROL_PLANE_SA,
        "securityContext": pod_security(),
        "containers": [container],
        "topologySpreadConstraints": spread(CONTROL_PLANE),
        "volumes": [{
            "name": "issuer",
            "secret": {"secretName": ISSUER_SECRET, "defaultMode": 0o440},
        }],
    });
    let mut objects = vec![
        deployment(
            CONTROL_PLANE,
            "control-plane",
            args.control_plane_replicas,
            pod,
        ),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": CONTROL_PLANE, "namespace": NAMESPACE, "labels": labels("control-plane")},
            "spec": {
                "selector": {"app.kubernetes.io/name": CONTROL_PLANE},
                "ports": [
                    {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"},
                    {"name": "admin", "port": ADMIN_PORT, "targetPort": "admin", "protocol": "TCP", "appProtocol": "http"},
                ],
            },
        }),
    ];
    objects.extend(disruption_budget(
        CONTROL_PLANE,
        "control-plane",
        args.control_plane_replicas,
    ));
    objects
}

/// The injector's flags.
fn injector_args(args: &InstallArgs) -> Vec<String> {
    let mut flags = vec![
        format!("--addr=0.0.0.0:{INJECTOR_PORT}"),
        format!("--tls-cert={INJECTOR_TLS_DIR}/tls.crt"),
        format!("--tls-key={INJECTOR_TLS_DIR}/tls.key"),
        format!("--proxy-image={}", args.proxy_image()),
        format!("--trust-domain={}", args.trust_domain),
    ];
    if let Some(policy) = args.pull_policy() {
        // The proxies it adds are pulled like Weft's own images.
        flags.push(format!("--image-pull-policy={policy}"));
    }
    flags.push("--log-format=json".into());
    flags
}

/// The injector: Deployment (serving certificate from [`INJECTOR_TLS_SECRET`]), Service
/// (443 → 8443), and a PodDisruptionBudget when replicated.
pub fn injector(args: &InstallArgs) -> Vec<Value> {
    let container = with_pull_policy(
        json!({
            "name": INJECTOR_SERVICE,
            "image": args.injector_image(),
            "command": ["weft-injector"],
            "args": injector_args(args),
            "ports": [{"name": "https", "containerPort": INJECTOR_PORT, "protocol": "TCP"}],
            "readinessProbe": http_probe("/ready", "https", "HTTPS", 5),
            "livenessProbe": http_probe("/live", "https", "HTTPS", 10),
            "resources": {
                "requests": {"cpu": "50m", "memory": "32Mi"},
                "limits": {"memory": "128Mi"},
            },
            "securityContext": container_security(),
            "volumeMounts": [{"name": "tls", "mountPath": INJECTOR_TLS_DIR, "readOnly": true}],
        }),
        args,
    );
    let pod = json!({
        "serviceAccountName": INJECTOR_SA,
        "securityContext": pod_security(),
        "containers": [container],
        "topologySpreadConstraints": spread(INJECTOR_SERVICE),
        "volumes": [{
            "name": "tls",
            "secret": {"secretName": INJECTOR_TLS_SECRET, "defaultMode": 0o440},
        }],
    });
    let mut objects = vec![
        deployment(INJECTOR_SERVICE, "injector", args.injector_replicas, pod),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": INJECTOR_SERVICE, "namespace": NAMESPACE, "labels": labels("injector")},
            "spec": {
                "selector": {"app.kubernetes.io/name": INJECTOR_SERVICE},
                "ports": [{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP", "appProtocol": "https"}],
            },
        }),
    ];
    objects.extend(disruption_budget(
        INJECTOR_SERVICE,
        "injector",
        args.injector_replicas,
    ));
    objects
}
