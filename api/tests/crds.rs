//! The CRD manifests in `deploy/crds/` are generated from the Rust types in `src/crd/`: this
//! test renders them and fails when the files differ (drift), and checks that the schemas are
//! ones the API server accepts (structural, no `$ref`, parseable as a
//! `CustomResourceDefinition`).
//!
//! Regenerate after changing a type:
//!
//! ```text
//! WEFT_UPDATE_CRDS=1 cargo test -p weft-api --features crds --test crds
//! ```
//!
//! `HTTPRoute`'s CRD is the Gateway API's own and is installed from upstream, never generated.

use std::path::PathBuf;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::Value;
use weft_api::crd::{AuthorizationPolicy, TrafficPolicy};

const REGENERATE: &str = "WEFT_UPDATE_CRDS=1 cargo test -p weft-api --features crds --test crds";

/// Every generated CRD with the file it lives in.
fn crds() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        (
            "authorizationpolicies.policy.weft.dev.yaml",
            AuthorizationPolicy::crd(),
        ),
        ("trafficpolicies.policy.weft.dev.yaml", TrafficPolicy::crd()),
    ]
}

fn path(file: &str) -> PathBuf {
    let api = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    api.parent().unwrap().join("deploy/crds").join(file)
}

fn render(crd: &CustomResourceDefinition) -> String {
    let yaml = serde_yaml::to_string(crd).expect("a CRD serializes to YAML");
    format!("# Generated from the types in api/src/crd/ — do not edit. Regenerate with:\n#   {REGENERATE}\n{yaml}")
}

#[test]
fn manifests_match_the_types() {
    let update = std::env::var("WEFT_UPDATE_CRDS").is_ok_and(|v| v == "1");
    let mut stale = Vec::new();
    for (file, crd) in crds() {
        let path = path(file);
        let want = render(&crd);
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &want)
                .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(have) if have == want => {}
            Ok(have) => {
                let line = have
                    .lines()
                    .zip(want.lines())
                    .position(|(a, b)| a != b)
                    .unwrap_or_else(|| have.lines().count().min(want.lines().count()))
                    + 1;
                stale.push(format!(
                    "{} differs from the types (first at line {line})",
                    path.display()
                ));
            }
            Err(e) => stale.push(format!("{}: {e}", path.display())),
        }
    }
    assert!(
        stale.is_empty(),
        "CRD manifests are out of date:\n  {}\nRegenerate them with:\n  {REGENERATE}",
        stale.join("\n  ")
    );
}

#[test]
fn manifests_parse_as_custom_resource_definitions() {
    // While regenerating, `manifests_match_the_types` may be writing the files right now:
    // check what it writes instead.
    let update = std::env::var("WEFT_UPDATE_CRDS").is_ok_and(|v| v == "1");
    for (file, crd) in crds() {
        let path = path(file);
        let text = if update {
            render(&crd)
        } else {
            std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!("{}: {e}\nGenerate it with:\n  {REGENERATE}", path.display())
            })
        };
        let parsed: CustomResourceDefinition = serde_yaml::from_str(&text).unwrap_or_else(|e| {
            panic!("{} is not a CustomResourceDefinition: {e}", path.display())
        });
        let name = parsed.metadata.name.as_deref().unwrap_or_default();
        assert_eq!(
            format!("{name}.yaml"),
            file,
            "file name follows metadata.name"
        );
        assert_eq!(parsed.spec.group, "policy.weft.dev");
        assert_eq!(parsed.spec.scope, "Namespaced");
        assert_eq!(parsed.spec.names.kind, crd.spec.names.kind);
        assert_eq!(parsed.spec.versions.len(), 1);
        let version = &parsed.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.served && version.storage);
        assert!(
            version
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .is_some(),
            "{file}: no openAPIV3Schema"
        );
    }
}

/// Kubernetes rejects CRDs whose schemas are not structural
/// (<https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#specifying-a-structural-schema>).
/// We hold our own schemas to a stricter, simpler rule: every node has a `type` (or an
/// `x-kubernetes-*` escape), no `$ref`/`anyOf`/`oneOf`/`allOf`/`not`, `nullable` instead of
/// `type: [x, null]`, enums are strings, and only keywords the API server knows.
#[test]
fn schemas_are_structural() {
    for (file, crd) in crds() {
        let json = serde_json::to_value(&crd).unwrap();
        for (i, version) in json["spec"]["versions"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            let schema = &version["schema"]["openAPIV3Schema"];
            let mut problems = Vec::new();
            check_node(
                schema,
                &format!("spec.versions[{i}].schema.openAPIV3Schema"),
                &mut problems,
            );
            assert!(
                problems.is_empty(),
                "{file}: not structural:\n  {}",
                problems.join("\n  ")
            );
        }
    }
}

/// The keywords of apiextensions/v1 `JSONSchemaProps` we allow (the rest are either unknown
/// to the API server, so silently dropped, or forbidden in structural schemas).
const KEYWORDS: &[&str] = &[
    "type",
    "format",
    "description",
    "title",
    "default",
    "nullable",
    "enum",
    "maximum",
    "minimum",
    "exclusiveMaximum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "uniqueItems",
    "maxProperties",
    "minProperties",
    "multipleOf",
    "required",
    "properties",
    "items",
    "additionalProperties",
    "example",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-validations",
];

const TYPES: &[&str] = &["object", "array", "string", "integer", "number", "boolean"];

fn check_node(node: &Value, at: &str, problems: &mut Vec<String>) {
    let Some(map) = node.as_object() else {
        problems.push(format!("{at}: a schema must be an object, got {node}"));
        return;
    };
    for key in map.keys() {
        if !KEYWORDS.contains(&key.as_str()) {
            problems.push(format!("{at}: keyword `{key}` is not allowed"));
        }
    }
    let escaped = [
        "x-kubernetes-int-or-string",
        "x-kubernetes-preserve-unknown-fields",
    ]
    .iter()
    .any(|k| map.get(*k) == Some(&Value::Bool(true)));
    let ty = match map.get("type") {
        Some(Value::String(t)) if TYPES.contains(&t.as_str()) => Some(t.as_str()),
        Some(other) => {
            problems.push(format!(
                "{at}: `type` must be one of {TYPES:?}, got {other}"
            ));
            None
        }
        None => {
            if !escaped {
                problems.push(format!("{at}: no `type`"));
            }
            None
        }
    };
    if let Some(nullable) = map.get("nullable") {
        if !nullable.is_boolean() {
            problems.push(format!("{at}: `nullable` must be a boolean"));
        }
    }
    if let Some(values) = map.get("enum") {
        if ty != Some("string") {
            problems.push(format!("{at}: enums must be `type: string`"));
        }
        match values.as_array() {
            Some(values) if !values.is_empty() => {
                let nullable = map.get("nullable") == Some(&Value::Bool(true));
                for v in values {
                    let allowed = v.is_string() || (v.is_null() && nullable);
                    if !allowed {
                        problems.push(format!("{at}: enum value {v} is not a string"));
                    }
                }
            }
            _ => problems.push(format!("{at}: `enum` must be a non-empty list")),
        }
    }
    if let Some(properties) = map.get("properties") {
        if ty != Some("object") {
            problems.push(format!("{at}: `properties` on a non-object"));
        }
        for (name, child) in properties.as_object().into_iter().flatten() {
            check_node(child, &format!("{at}.properties.{name}"), problems);
        }
    }
    if let Some(items) = map.get("items") {
        if ty != Some("array") {
            problems.push(format!("{at}: `items` on a non-array"));
        }
        check_node(items, &format!("{at}.items"), problems);
    } else if ty == Some("array") {
        problems.push(format!("{at}: an array without `items`"));
    }
    match map.get("additionalProperties") {
        None | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => problems.push(format!(
            "{at}: `additionalProperties: true` is not structural"
        )),
        Some(child) => {
            if map.contains_key("properties") {
                problems.push(format!(
                    "{at}: both `properties` and `additionalProperties`"
                ));
            }
            check_node(child, &format!("{at}.additionalProperties"), problems);
        }
    }
    if let Some(required) = map.get("required") {
        let props = map.get("properties").and_then(Value::as_object);
        for name in required.as_array().into_iter().flatten() {
            let known = name
                .as_str()
                .is_some_and(|n| props.is_some_and(|p| p.contains_key(n)));
            if !known {
                problems.push(format!("{at}: required {name} is not a property"));
            }
        }
    }
}

/// The checker itself: it must catch what it claims to.
#[test]
fn the_structural_check_rejects_what_kubernetes_rejects() {
    let bad = serde_json::json!({
        "type": "object",
        "properties": {
            "a": { "$ref": "#/definitions/A" },
            "b": { "anyOf": [{ "type": "string" }, { "type": "integer" }] },
            "c": { "type": ["string", "null"] },
            "d": { "type": "integer", "enum": [1, 2] },
            "e": { "description": "no type" },
            "f": { "type": "array" },
            "g": { "type": "object", "additionalProperties": true },
            "h": { "x-kubernetes-int-or-string": true },
        },
        "required": ["a", "z"],
    });
    let mut problems = Vec::new();
    check_node(&bad, "root", &mut problems);
    let expected = [
        "root.properties.a: keyword `$ref` is not allowed",
        "root.properties.a: no `type`",
        "root.properties.b: keyword `anyOf` is not allowed",
        "root.properties.b: no `type`",
        "root.properties.c: `type` must be one of",
        "root.properties.d: enums must be `type: string`",
        "root.properties.d: enum value 1 is not a string",
        "root.properties.e: no `type`",
        "root.properties.f: an array without `items`",
        "root.properties.g: `additionalProperties: true` is not structural",
        "root: required \"z\" is not a property",
    ];
    for want in expected {
        assert!(
            problems.iter().any(|p| p.starts_with(want)),
            "missing {want:?} in {problems:#?}"
        );
    }
    assert_eq!(problems.len(), expected.len() + 1, "{problems:#?}"); // d has two enum values
}
