//! Turning one untyped object (a YAML document, a watch event's JSON) into a typed
//! [`Object`]: check its apiVersion and kind, fill the default namespace, and deserialize it
//! with the path of the failing field in the error.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{Kind, Object, ObjectKey};

/// Where a namespaced object without `metadata.namespace` lives, as with `kubectl apply`.
pub const DEFAULT_NAMESPACE: &str = "default";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not an object (a YAML mapping with apiVersion and kind)")]
    NotAnObject,
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("unsupported kind {kind:?} (apiVersion {api_version:?}); Weft reads Namespace, Pod, Service, ServiceAccount (v1), EndpointSlice (discovery.k8s.io/v1), AuthorizationPolicy and TrafficPolicy (policy.weft.dev/v1alpha1) and HTTPRoute (gateway.networking.k8s.io/v1)")]
    UnsupportedKind { api_version: String, kind: String },
    #[error("{key}: apiVersion {found:?} is not supported; use {expected:?}")]
    ApiVersion {
        key: ObjectKey,
        found: String,
        expected: &'static str,
    },
    #[error("{key}: field {field}: {message}")]
    Field {
        key: ObjectKey,
        field: String,
        message: String,
    },
}

impl DecodeError {
    /// The object, when it could be named: a bad version of a named object leaves the last
    /// good one in place.
    pub fn key(&self) -> Option<&ObjectKey> {
        match self {
            DecodeError::ApiVersion { key, .. } | DecodeError::Field { key, .. } => Some(key),
            _ => None,
        }
    }

    pub fn field(&self) -> Option<&str> {
        match self {
            DecodeError::Field { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// Decodes one object. `List` documents are the caller's business (see the manifest source).
pub fn decode(mut value: Value) -> Result<(ObjectKey, Object), DecodeError> {
    let map = value.as_object_mut().ok_or(DecodeError::NotAnObject)?;
    let text = |map: &serde_json::Map<String, Value>, field: &'static str| {
        map.get(field)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or(DecodeError::Missing(field))
    };
    let api_version = text(map, "apiVersion")?;
    let kind_name = text(map, "kind")?;
    let kind = Kind::from_name(&kind_name).ok_or_else(|| DecodeError::UnsupportedKind {
        api_version: api_version.clone(),
        kind: kind_name.clone(),
    })?;
    let metadata = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()))
        .as_object_mut()
        .ok_or(DecodeError::Missing("metadata"))?;
    let name = text(metadata, "name").map_err(|_| DecodeError::Missing("metadata.name"))?;
    let namespace = if kind.namespaced() {
        let namespace = metadata
            .get("namespace")
            .and_then(Value::as_str)
            .filter(|ns| !ns.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE)
            .to_owned();
        metadata.insert("namespace".into(), Value::String(namespace.clone()));
        namespace
    } else {
        String::new()
    };
    let key = ObjectKey {
        kind,
        namespace,
        name,
    };
    if api_version != kind.api_version() {
        return Err(DecodeError::ApiVersion {
            key,
            found: api_version,
            expected: kind.api_version(),
        });
    }
    let object = match kind {
        Kind::Namespace => Object::Namespace(Arc::new(typed(&key, value)?)),
        Kind::Pod => Object::Pod(Arc::new(typed(&key, value)?)),
        Kind::Service => Object::Service(Arc::new(typed(&key, value)?)),
        Kind::EndpointSlice => Object::EndpointSlice(Arc::new(typed(&key, value)?)),
        Kind::ServiceAccount => Object::ServiceAccount(Arc::new(typed(&key, value)?)),
        Kind::AuthorizationPolicy => Object::AuthorizationPolicy(Arc::new(typed(&key, value)?)),
        Kind::TrafficPolicy => Object::TrafficPolicy(Arc::new(typed(&key, value)?)),
        Kind::HTTPRoute => Object::HTTPRoute(Arc::new(typed(&key, value)?)),
    };
    Ok((key, object))
}

fn typed<T: DeserializeOwned>(key: &ObjectKey, value: Value) -> Result<T, DecodeError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let field = error.path().to_string();
        DecodeError::Field {
            key: key.clone(),
            field,
            message: error.into_inner().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fills_the_default_namespace() {
        let (key, object) =
            decode(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}}))
                .expect("valid");
        assert_eq!(key.namespace, "default");
        let Object::Service(service) = object else {
            panic!("a Service")
        };
        assert_eq!(service.metadata.namespace.as_deref(), Some("default"));
    }

    #[test]
    fn names_the_failing_field() {
        let error = decode(json!({
            "apiVersion": "policy.weft.dev/v1alpha1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {"rules": [{"from": [{"principals": ["a"], "principal": ["b"]}]}]}
        }))
        .expect_err("unknown field");
        assert_eq!(error.field(), Some("spec.rules[0].from[0].principal"));
        assert_eq!(
            error.key().map(|k| k.to_string()).as_deref(),
            Some("AuthorizationPolicy shop/p")
        );
        assert!(
            error.to_string().contains("unknown field `principal`"),
            "{error}"
        );
    }

    #[test]
    fn rejects_wrong_versions_and_kinds() {
        let error = decode(
            json!({"apiVersion": "policy.weft.dev/v1", "kind": "TrafficPolicy",
            "metadata": {"name": "t"}}),
        )
        .expect_err("version");
        assert!(matches!(
            error,
            DecodeError::ApiVersion {
                expected: "policy.weft.dev/v1alpha1",
                ..
            }
        ));
        let error = decode(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d"}}))
        .expect_err("kind");
        assert!(matches!(error, DecodeError::UnsupportedKind { .. }));
        assert_eq!(
            decode(json!([1, 2])).expect_err("list"),
            DecodeError::NotAnObject
        );
        assert_eq!(
            decode(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {}})).expect_err("name"),
            DecodeError::Missing("metadata.name")
        );
    }
}
