//! One parsed document: find its pod template (if it is a workload), run the injector's pure
//! mutation on it, and put the result back without losing anything else the document said.
//!
//! Only the template's `metadata` and `spec` go through the k8s-openapi types (that is what
//! [`weft_injector::inject_pod_spec`] takes); the rest of the document stays the YAML it was.
//! A field the types don't know would be lost on the way through, so a template holding one
//! is an error rather than a silent deletion. The new template keeps the original's key order
//! (added keys come after), so a diff of the output shows what was added.

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};
use weft_injector::annotations as ann;
use weft_injector::{inject_pod_spec, InjectConfig};

/// The kinds `inject` meshes: `(apiVersion, kind, path to the pod template)`. A Pod's
/// template is the Pod itself (empty path).
const WORKLOADS: &[(&str, &str, &[&str])] = &[
    ("v1", "Pod", &[]),
    ("apps/v1", "Deployment", &["spec", "template"]),
    ("apps/v1", "StatefulSet", &["spec", "template"]),
    ("apps/v1", "DaemonSet", &["spec", "template"]),
    ("apps/v1", "ReplicaSet", &["spec", "template"]),
    ("batch/v1", "Job", &["spec", "template"]),
    (
        "batch/v1",
        "CronJob",
        &["spec", "jobTemplate", "spec", "template"],
    ),
];

/// What happened to one object.
#[derive(Debug)]
pub enum Outcome {
    /// Not a workload `inject` knows: left as it was.
    NotAWorkload,
    /// A workload left alone, and why.
    Skipped { name: String, reason: String },
    /// Meshed: the new object.
    Injected { name: String, object: Value },
}

/// `kind/name` for messages (`deployment/web`, like kubectl).
pub fn describe(object: &Value) -> String {
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("object");
    let name = object
        .get("metadata")
        .and_then(|m| m.get("name").or_else(|| m.get("generateName")))
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>");
    format!("{}/{name}", kind.to_lowercase())
}

/// Injects `object` if it is a workload. Errors are messages without the document's
/// position (the caller adds it).
pub fn inject(object: &Value, config: &InjectConfig) -> Result<Outcome, String> {
    let api_version = object.get("apiVersion").and_then(Value::as_str);
    let kind = object.get("kind").and_then(Value::as_str);
    let Some((_, _, path)) = WORKLOADS
        .iter()
        .find(|(v, k, _)| Some(*v) == api_version && Some(*k) == kind)
    else {
        return Ok(Outcome::NotAWorkload);
    };
    let name = describe(object);
    let mut object = object.clone();
    let mut template = &mut object;
    let mut at = String::new();
    for key in path.iter() {
        at = join(&at, key);
        template = template
            .get_mut(*key)
            .filter(|v| v.is_mapping())
            .ok_or_else(|| format!("{name}: no {at}"))?;
    }
    let meta_at = join(&at, "metadata");
    let spec_at = join(&at, "spec");
    let empty = Value::Mapping(Mapping::new());
    let meta_value = template.get("metadata").unwrap_or(&empty).clone();
    let spec_value = template
        .get("spec")
        .cloned()
        .ok_or_else(|| format!("{name}: no {spec_at}"))?;
    let meta: ObjectMeta = typed(&meta_value, &meta_at, &name)?;
    let spec: PodSpec = typed(&spec_value, &spec_at, &name)?;
    // The webhook's objectSelector never sends a pod labelled out; the injector never sees it.
    let labelled_out = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(ann::INJECT))
        .is_some_and(|v| v == ann::DISABLED);
    if labelled_out {
        let reason = "the pod opts out (label weft.dev/inject: disabled)".to_owned();
        return Ok(Outcome::Skipped { name, reason });
    }
    // Offline there is no namespace to look at: every workload counts as selected, and only
    // its own `weft.dev/inject: disabled` keeps it out (like `linkerd inject`).
    let (new_meta, new_spec) = match inject_pod_spec(&meta, &spec, true, config) {
        Ok(injected) => injected,
        Err(skip) if skip.is_error() => return Err(format!("{name}: {skip}")),
        Err(skip) => {
            let reason = skip.to_string();
            return Ok(Outcome::Skipped { name, reason });
        }
    };
    let template = template.as_mapping_mut().expect("checked above");
    let new_meta = in_original_order(&meta_value, to_value(&new_meta));
    let new_spec = in_original_order(&spec_value, to_value(&new_spec));
    template.insert("metadata".into(), new_meta);
    template.insert("spec".into(), new_spec);
    Ok(Outcome::Injected { name, object })
}

fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_owned()
    } else {
        format!("{at}.{key}")
    }
}

/// `value` as `T`, refusing one that has fields `T` would drop.
fn typed<T: DeserializeOwned + serde::Serialize>(
    value: &Value,
    at: &str,
    name: &str,
) -> Result<T, String> {
    let parsed: T = serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." {
            at.to_owned()
        } else {
            join(at, &field)
        };
        format!("{name}: {field}: {}", e.inner())
    })?;
    let mut dropped = Vec::new();
    unknown_fields(value, &to_value(&parsed), at, &mut dropped);
    if !dropped.is_empty() {
        return Err(format!(
            "{name}: {} not known to weftctl's Kubernetes types (1.37) and would be lost; \
             remove {} or use a newer weftctl",
            dropped.join(", "),
            if dropped.len() == 1 { "it" } else { "them" }
        ));
    }
    Ok(parsed)
}

fn to_value<T: serde::Serialize>(value: &T) -> Value {
    serde_yaml::to_value(value).expect("k8s-openapi types serialize")
}

/// Fields of `original` (not null) that `round_trip` lacks.
fn unknown_fields(original: &Value, round_trip: &Value, at: &str, out: &mut Vec<String>) {
    match (original, round_trip) {
        (Value::Mapping(original), Value::Mapping(round_trip)) => {
            for (key, value) in original {
                let name = key
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("{key:?}"));
                match round_trip.get(key) {
                    Some(back) => unknown_fields(value, back, &join(at, &name), out),
                    None if value.is_null() => {}
                    None => out.push(join(at, &name)),
                }
            }
        }
        (Value::Sequence(original), Value::Sequence(round_trip))
            if original.len() == round_trip.len() =>
        {
            for (i, (a, b)) in original.iter().zip(round_trip).enumerate() {
                unknown_fields(a, b, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// `new` with its mappings' keys in `original`'s order where `original` has them (new keys
/// after, in `new`'s order). List items are matched by `name` when they have one, else by
/// position.
fn in_original_order(original: &Value, new: Value) -> Value {
    match (original, new) {
        (Value::Mapping(original), Value::Mapping(mut new)) => {
            let mut ordered = Mapping::with_capacity(new.len());
            for (key, value) in original {
                if let Some(new_value) = new.remove(key) {
                    ordered.insert(key.clone(), in_original_order(value, new_value));
                }
            }
            ordered.extend(new.into_iter().map(|(k, v)| (k, name_first(v))));
            Value::Mapping(ordered)
        }
        (Value::Sequence(original), Value::Sequence(new)) => {
            let name = |v: &Value| v.get("name").and_then(Value::as_str).map(str::to_owned);
            let items = new.into_iter().enumerate().map(|(i, item)| {
                let counterpart = match name(&item) {
                    Some(n) => original.iter().find(|o| name(o).as_deref() == Some(&n)),
                    None => original.get(i),
                };
                match counterpart {
                    Some(o) => in_original_order(o, item),
                    None => name_first(item),
                }
            });
            Value::Sequence(items.collect())
        }
        (_, new) => new,
    }
}

/// Added objects read like hand-written ones: `name` first, the rest in the type's order.
fn name_first(value: Value) -> Value {
    match value {
        Value::Mapping(mapping) => {
            let mut ordered = Mapping::with_capacity(mapping.len());
            let name = Value::from("name");
            if let Some(n) = mapping.get(&name) {
                ordered.insert(name.clone(), n.clone());
            }
            for (k, v) in mapping {
                if k != name {
                    ordered.insert(k, name_first(v));
                }
            }
            Value::Mapping(ordered)
        }
        Value::Sequence(items) => Value::Sequence(items.into_iter().map(name_first).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        serde_yaml::from_str(text).unwrap()
    }

    #[test]
    fn key_order_follows_the_original() {
        let original = yaml("b: 1\na: {y: 1, x: 2}\nlist: [{name: p, z: 1, y: 2}]\n");
        let new =
            yaml("a: {x: 2, y: 1, w: 0}\nb: 1\nc: 3\nlist: [{name: q}, {y: 2, name: p, z: 1}]\n");
        let ordered = in_original_order(&original, new);
        assert_eq!(
            serde_yaml::to_string(&ordered).unwrap(),
            "b: 1\na:\n  y: 1\n  x: 2\n  w: 0\nlist:\n- name: q\n- name: p\n  z: 1\n  y: 2\nc: 3\n"
        );
        let added = in_original_order(&yaml("{}"), yaml("v: [{a: 1, name: x}]"));
        assert_eq!(
            serde_yaml::to_string(&added).unwrap(),
            "v:\n- name: x\n  a: 1\n"
        );
    }

    #[test]
    fn fields_the_types_do_not_know_are_refused() {
        let spec =
            yaml("containers: [{name: app, image: x, imagee: y}]\nfuture: 1\nhostNetwork: null\n");
        let err = typed::<PodSpec>(&spec, "spec", "pod/x").unwrap_err();
        assert!(
            err.contains("spec.containers[0].imagee, spec.future not known"),
            "{err}"
        );
    }

    #[test]
    fn a_wrong_type_names_the_field() {
        let spec = yaml("containers: [{name: app, ports: [{containerPort: http}]}]\n");
        let err = typed::<PodSpec>(&spec, "spec.template.spec", "deployment/x").unwrap_err();
        assert!(
            err.starts_with("deployment/x: spec.template.spec.containers[0].ports[0].containerPort: invalid type"),
            "{err}"
        );
    }
}
