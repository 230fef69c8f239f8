//! Least-privilege RBAC: one ServiceAccount per component, and the control plane's
//! ClusterRole with exactly the verbs its code uses.
//!
//! - The control plane watches the cluster (`control-plane/src/sources/kubernetes.rs`: list
//!   and watch only — kube-runtime's watcher never `get`s), checks proxies' tokens with
//!   TokenReview (`control-plane/src/auth/kubernetes.rs`: `create` on `tokenreviews`, the
//!   one rule of `system:auth-delegator` it needs; the other, subjectaccessreviews, it doesn't),
//!   and keeps the ConfigMap `weft-trust-anchors` in every meshed namespace
//!   (`control-plane/src/publish/trust_anchors.rs`: it watches them and server-side applies
//!   them — `list`, `watch`, `patch`, and `create` for an apply that creates). Its configmaps
//!   rule is exactly those four: never `get`, `update` or `delete`, and it has to be
//!   cluster-wide because meshed namespaces come and go.
//! - The injector reads the API server's version (`/version`, a non-resource URL every
//!   authenticated client may read through the default `system:public-info-viewer`), and its
//!   serving certificate from a mounted Secret (a volume, no API access). It gets a
//!   ServiceAccount and no role.

use serde_json::{json, Value};

use super::{labels, NAMESPACE};

pub const CONTROL_PLANE_SA: &str = "weft-control-plane";
pub const INJECTOR_SA: &str = "weft-injector";

/// The control plane's rules, one per API group.
pub fn control_plane_rules() -> Value {
    let watch = json!(["list", "watch"]);
    json!([
        {
            "apiGroups": [""],
            "resources": ["namespaces", "pods", "services", "serviceaccounts"],
            "verbs": watch,
        },
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": watch,
        },
        {
            "apiGroups": ["policy.weft.dev"],
            "resources": ["authorizationpolicies", "trafficpolicies"],
            "verbs": watch,
        },
        {
            "apiGroups": ["gateway.networking.k8s.io"],
            "resources": ["httproutes"],
            "verbs": watch,
        },
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "verbs": ["list", "watch", "create", "patch"],
        },
        {
            "apiGroups": ["authentication.k8s.io"],
            "resources": ["tokenreviews"],
            "verbs": ["create"],
        },
    ])
}

/// ServiceAccounts, the control plane's ClusterRole and its binding.
pub fn objects() -> Vec<Value> {
    let account = |name: &str, component: &str| {
        json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels(component)},
        })
    };
    vec![
        account(CONTROL_PLANE_SA, "control-plane"),
        account(INJECTOR_SA, "injector"),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "weft-control-plane", "labels": labels("control-plane")},
            "rules": control_plane_rules(),
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "weft-control-plane", "labels": labels("control-plane")},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "weft-control-plane",
            },
            "subjects": [{
                "kind": "ServiceAccount",
                "name": CONTROL_PLANE_SA,
                "namespace": NAMESPACE,
            }],
        }),
    ]
}
