//! What should exist: which namespaces are meshed, and the ConfigMap each of them gets.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::state::State;

/// The ConfigMap's name, as the injector mounts it.
pub const CONFIG_MAP: &str = "weft-trust-anchors";
/// The key holding the trust bundle (PEM).
pub const KEY: &str = "ca.crt";
/// The namespace label that meshes every new pod of a namespace.
pub const INJECT_LABEL: &str = "weft.dev/inject";
/// The annotation the injector writes on every pod it injected.
pub const STATUS_ANNOTATION: &str = "weft.dev/status";

/// The labels the ConfigMap carries. A ConfigMap without them is applied again.
pub const LABELS: [(&str, &str); 3] = [
    ("app.kubernetes.io/name", CONFIG_MAP),
    ("app.kubernetes.io/part-of", "weft"),
    ("app.kubernetes.io/managed-by", "weft"),
];

/// The namespaces whose proxies need the ConfigMap: those labelled `weft.dev/inject=enabled`
/// (exactly what the webhook selects) and those holding an injected pod, but none being deleted.
pub fn meshed_namespaces(state: &State) -> BTreeSet<String> {
    let labelled = state.namespaces.iter().filter(|(_, namespace)| {
        namespace
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(INJECT_LABEL))
            .is_some_and(|value| value == "enabled")
    });
    let injected = state.pods.iter().filter(|(_, pod)| {
        pod.metadata
            .annotations
            .as_ref()
            .is_some_and(|annotations| annotations.contains_key(STATUS_ANNOTATION))
    });
    labelled
        .map(|(name, _)| name.clone())
        .chain(injected.map(|((namespace, _), _)| namespace.clone()))
        .filter(|name| !state.namespaces.get(name).is_some_and(|ns| terminating(ns)))
        .collect()
}

fn terminating(namespace: &Namespace) -> bool {
    namespace.metadata.deletion_timestamp.is_some()
        || namespace.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating")
}

/// The ConfigMap as applied: only the fields we own.
pub fn config_map(namespace: &str, pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(CONFIG_MAP.into()),
            namespace: Some(namespace.into()),
            labels: Some(
                LABELS
                    .iter()
                    .map(|(k, v)| ((*k).into(), (*v).into()))
                    .collect(),
            ),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(KEY.into(), pem.into())])),
        ..Default::default()
    }
}

/// The namespace and trust bundle of a ConfigMap that carries our labels and key.
pub fn holds(config_map: &ConfigMap) -> Option<(String, String)> {
    let namespace = config_map.metadata.namespace.clone()?;
    let labels = config_map.metadata.labels.as_ref()?;
    if !LABELS
        .iter()
        .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
    {
        return None;
    }
    let pem = config_map.data.as_ref()?.get(KEY)?.clone();
    Some((namespace, pem))
}
