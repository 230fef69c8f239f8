//! The MutatingWebhookConfiguration that sends new pods to the injector.
//!
//! - **Who is sent**: pods created in namespaces labelled `weft.dev/inject=enabled` (unless
//!   the pod is labelled `weft.dev/inject=disabled`), and pods labelled
//!   `weft.dev/inject=enabled` in any other namespace — two webhooks with disjoint selectors.
//!   A webhook selects by labels, never annotations: in an unlabelled namespace only the pod
//!   *label* opts in (the annotation alone never reaches the injector). Never `weft-system`
//!   (the injector must not depend on itself to start) nor `kube-system`, excluded by name
//!   (`kubernetes.io/metadata.name`, set by the API server on every namespace) even if
//!   someone labels them.
//! - **What**: `CREATE` of `pods` only; `sideEffects: None` (the injector only answers);
//!   `admissionReviewVersions: [v1]`; `matchPolicy: Equivalent`.
//! - **Reinvocation**: `IfNeeded` — when a later webhook changes the pod, the injector sees it
//!   again, and never injects twice.
//! - **Failure policy**: `Fail` by default — a pod of a meshed namespace is refused while
//!   the injector can't be reached, rather than started without its proxy, which would run
//!   it outside mTLS and authorization policy without anyone noticing. The ReplicaSet or Job
//!   controller retries, so workloads catch up once the injector is back; the injector runs
//!   two replicas with a PodDisruptionBudget for that reason. `--webhook-failure-policy
//!   Ignore` trades that guarantee for availability.

use serde_json::{json, Value};
use weft_injector::annotations as ann;

use super::certs::Certificates;
use super::{labels, FailurePolicy, InstallArgs, NAMESPACE};

pub const INJECTOR_SERVICE: &str = "weft-injector";
pub const INJECTOR_PORT: i32 = 8443;
/// Pods of namespaces labelled `weft.dev/inject=enabled`.
pub const NAMESPACE_WEBHOOK: &str = "namespace.inject.weft.dev";
/// Pods labelled `weft.dev/inject=enabled` elsewhere.
pub const POD_WEBHOOK: &str = "pod.inject.weft.dev";
pub const PATH: &str = "/mutate";

/// The names the serving certificate is for; the API server calls the first.
pub fn dns_names() -> Vec<String> {
    vec![
        format!("{INJECTOR_SERVICE}.{NAMESPACE}.svc"),
        format!("{INJECTOR_SERVICE}.{NAMESPACE}.svc.cluster.local"),
    ]
}

pub fn configuration(args: &InstallArgs, certs: &Certificates) -> Value {
    let failure_policy = match args.webhook_failure_policy {
        FailurePolicy::Fail => "Fail",
        FailurePolicy::Ignore => "Ignore",
    };
    let excluded = json!({
        "key": "kubernetes.io/metadata.name",
        "operator": "NotIn",
        "values": [NAMESPACE, "kube-system"],
    });
    let webhook = |name: &str, namespace_selector: Value, object_selector: Value| {
        json!({
            "name": name,
            "admissionReviewVersions": ["v1"],
            "clientConfig": {
                "service": {
                    "name": INJECTOR_SERVICE,
                    "namespace": NAMESPACE,
                    "path": PATH,
                    "port": 443,
                },
                "caBundle": base64(certs.webhook_ca_cert.as_bytes()),
            },
            "rules": [{
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "operations": ["CREATE"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }],
            "namespaceSelector": {"matchExpressions": namespace_selector},
            "objectSelector": {"matchExpressions": object_selector},
            "sideEffects": "None",
            "timeoutSeconds": args.webhook_timeout_seconds,
            "failurePolicy": failure_policy,
            "matchPolicy": "Equivalent",
            "reinvocationPolicy": "IfNeeded",
        })
    };
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "weft-injector", "labels": labels("injector")},
        "webhooks": [
            // Every pod of a labelled namespace, but those labelled out (the injector also
            // honours the annotation `weft.dev/inject: disabled`).
            webhook(
                NAMESPACE_WEBHOOK,
                json!([
                    {"key": ann::INJECT, "operator": "In", "values": [ann::ENABLED]},
                    excluded,
                ]),
                json!([{"key": ann::INJECT, "operator": "NotIn", "values": [ann::DISABLED]}]),
            ),
            // Pods labelled in, in the other namespaces (disjoint from the first: no pod is
            // sent twice).
            webhook(
                POD_WEBHOOK,
                json!([
                    {"key": ann::INJECT, "operator": "NotIn", "values": [ann::ENABLED]},
                    excluded,
                ]),
                json!([{"key": ann::INJECT, "operator": "In", "values": [ann::ENABLED]}]),
            ),
        ],
    })
}

/// `[]byte` as the API spells it (base64), by k8s-openapi's own encoder.
fn base64(bytes: &[u8]) -> Value {
    serde_json::to_value(k8s_openapi::ByteString(bytes.to_vec())).expect("bytes serialize")
}
