//! The JSON Patch (RFC 6902) for a mutation: a diff between the pod exactly as the API server
//! sent it and the mutated pod.
//!
//! Two things keep the patch correct and short:
//!
//! - **Carrying back.** The mutation works on k8s-openapi types, which drop fields they don't
//!   know (fields newer than the types, from a newer API server). So the result is first
//!   carried back onto the original JSON: every part the mutation left unchanged, and every
//!   element of a named list (containers, volumes) that it only moved, is taken verbatim from
//!   the original. Nothing the types dropped is lost.
//! - **Named lists.** `json_patch::diff` compares arrays index by index, so inserting
//!   `weft-proxy` before the app's containers would turn into edits of every container after
//!   it. Where a list of named objects only gained elements (the app's keep their order),
//!   the patch adds the new ones at their index and diffs the kept ones in place; everything
//!   else is left to `json_patch::diff`. An injection is then a handful of `add` operations.
//!
//! Applying the patch to the original yields exactly the carried document.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation};
use serde_json::{Map, Value};

/// The patch turning `original` (the raw JSON) into the mutation's result, where
/// `typed_original` is `original` read into k8s-openapi types and written back, and `mutated`
/// is the mutation's result written the same way.
pub fn patch(original: &Value, typed_original: &Value, mutated: &Value) -> Patch {
    let mut ops = Vec::new();
    carried_diff(
        original,
        typed_original,
        mutated,
        &mut PointerBuf::new(),
        &mut ops,
    );
    Patch(ops)
}

/// `diff(original, carry(original, typed, mutated))` without building the carried document
/// where it can: walks the three together, so the parts the mutation left alone cost a
/// comparison instead of a copy.
fn carried_diff(
    original: &Value,
    typed: &Value,
    mutated: &Value,
    pointer: &mut PointerBuf,
    ops: &mut Vec<PatchOperation>,
) {
    if typed == mutated {
        return;
    }
    match (original, typed, mutated) {
        (Value::Object(o), Value::Object(t), Value::Object(m)) => {
            for (key, m_value) in m {
                pointer.push_back(key);
                match (o.get(key), t.get(key)) {
                    (Some(o_value), Some(t_value)) => {
                        carried_diff(o_value, t_value, m_value, pointer, ops)
                    }
                    (Some(o_value), None) => diff(o_value, m_value, pointer, ops),
                    (None, _) => ops.push(PatchOperation::Add(AddOperation {
                        path: pointer.clone(),
                        value: m_value.clone(),
                    })),
                }
                pointer.pop_back();
            }
            // Removed by the mutation; fields the types dropped are not the mutation's doing.
            for key in t
                .keys()
                .filter(|k| !m.contains_key(*k) && o.contains_key(*k))
            {
                pointer.push_back(key);
                ops.push(PatchOperation::Remove(RemoveOperation {
                    path: pointer.clone(),
                }));
                pointer.pop_back();
            }
        }
        (Value::Array(o), Value::Array(t), Value::Array(m))
            if o.len() == t.len() && names(o) == names(t) && only_insertions(t, m) =>
        {
            let mut kept = 0;
            for (index, m_value) in m.iter().enumerate() {
                pointer.push_back(index);
                if kept < t.len() && name(&t[kept]) == name(m_value) {
                    carried_diff(&o[kept], &t[kept], m_value, pointer, ops);
                    kept += 1;
                } else {
                    ops.push(PatchOperation::Add(AddOperation {
                        path: pointer.clone(),
                        value: m_value.clone(),
                    }));
                }
                pointer.pop_back();
            }
        }
        _ => diff(original, &carry(original, typed, mutated), pointer, ops),
    }
}

/// Appends to `ops` the operations turning `left` (at `pointer`) into `right`.
fn diff(left: &Value, right: &Value, pointer: &mut PointerBuf, ops: &mut Vec<PatchOperation>) {
    if left == right {
        return;
    }
    match (left, right) {
        (Value::Object(l), Value::Object(r)) => {
            for (key, r_value) in r {
                pointer.push_back(key);
                match l.get(key) {
                    Some(l_value) => diff(l_value, r_value, pointer, ops),
                    None => ops.push(PatchOperation::Add(AddOperation {
                        path: pointer.clone(),
                        value: r_value.clone(),
                    })),
                }
                pointer.pop_back();
            }
            for key in l.keys().filter(|k| !r.contains_key(*k)) {
                pointer.push_back(key);
                ops.push(PatchOperation::Remove(RemoveOperation {
                    path: pointer.clone(),
                }));
                pointer.pop_back();
            }
        }
        (Value::Array(l), Value::Array(r)) if only_insertions(l, r) => {
            // In order, so each index is final by the time it is written.
            let mut kept = l.iter().peekable();
            for (index, r_value) in r.iter().enumerate() {
                pointer.push_back(index);
                match kept.peek() {
                    Some(l_value) if name(l_value) == name(r_value) => {
                        diff(l_value, r_value, pointer, ops);
                        kept.next();
                    }
                    _ => ops.push(PatchOperation::Add(AddOperation {
                        path: pointer.clone(),
                        value: r_value.clone(),
                    })),
                }
                pointer.pop_back();
            }
        }
        _ => {
            for mut op in json_patch::diff(left, right).0 {
                let path = match &mut op {
                    PatchOperation::Add(o) => &mut o.path,
                    PatchOperation::Remove(o) => &mut o.path,
                    PatchOperation::Replace(o) => &mut o.path,
                    PatchOperation::Move(o) => &mut o.path,
                    PatchOperation::Copy(o) => &mut o.path,
                    PatchOperation::Test(o) => &mut o.path,
                };
                *path = pointer.concat(path);
                ops.push(op);
            }
        }
    }
}

/// Whether `right` is `left` with named elements inserted: every element named, names
/// unique, and `left`'s names appearing in `right` in the same order.
fn only_insertions(left: &[Value], right: &[Value]) -> bool {
    let (Some(l), Some(r)) = (names(left), names(right)) else {
        return false;
    };
    let unique = r.iter().enumerate().all(|(i, n)| !r[..i].contains(n));
    let mut rest = r.iter();
    unique && l.iter().all(|n| rest.any(|m| m == n))
}

/// `mutated`, with whatever the mutation did not change taken from `original` (see the module
/// documentation).
pub fn carry(original: &Value, typed_original: &Value, mutated: &Value) -> Value {
    if typed_original == mutated {
        return original.clone();
    }
    match (original, typed_original, mutated) {
        (Value::Object(orig), Value::Object(left), Value::Object(right)) => {
            let mut out = Map::new();
            for (key, right_value) in right {
                let value = match (orig.get(key), left.get(key)) {
                    (Some(o), Some(l)) => carry(o, l, right_value),
                    _ => right_value.clone(),
                };
                out.insert(key.clone(), value);
            }
            // Fields the types did not know are not the mutation's business: keep them.
            for (key, value) in orig {
                if !left.contains_key(key) && !out.contains_key(key) {
                    out.insert(key.clone(), value.clone());
                }
            }
            Value::Object(out)
        }
        (Value::Array(orig), Value::Array(left), Value::Array(right))
            if orig.len() == left.len() && right.iter().all(|v| name(v).is_some()) =>
        {
            right
                .iter()
                .map(|r| {
                    let same = left.iter().position(|l| name(l) == name(r));
                    match same {
                        Some(i) => carry(&orig[i], &left[i], r),
                        None => r.clone(),
                    }
                })
                .collect()
        }
        _ => mutated.clone(),
    }
}

fn names(values: &[Value]) -> Option<Vec<&str>> {
    values.iter().map(name).collect()
}

fn name(value: &Value) -> Option<&str> {
    value.get("name")?.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_stay_with_their_container() {
        let original = json!({"spec": {"containers": [
            {"name": "app", "image": "a", "futureField": {"x": 1}}
        ], "futureSpecField": true}});
        let typed = json!({"spec": {"containers": [{"name": "app", "image": "a"}]}});
        let mutated = json!({"spec": {"containers": [
            {"name": "weft-proxy", "image": "p"}, {"name": "app", "image": "a"}
        ]}});
        let p = patch(&original, &typed, &mutated);
        let mut doc = original.clone();
        json_patch::patch(&mut doc, &p).unwrap();
        assert_eq!(
            doc,
            json!({"spec": {"containers": [
                {"name": "weft-proxy", "image": "p"},
                {"name": "app", "image": "a", "futureField": {"x": 1}}
            ], "futureSpecField": true}})
        );
    }

    #[test]
    fn insertions_into_named_lists_are_adds() {
        let original = json!({"spec": {"containers": [{"name": "a", "x": 1}, {"name": "b"}]}});
        let mutated = json!({"spec": {"containers": [
            {"name": "p"}, {"name": "a", "x": 2}, {"name": "q"}, {"name": "b"}
        ]}});
        let p = patch(&original, &original, &mutated);
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!([
                {"op": "add", "path": "/spec/containers/0", "value": {"name": "p"}},
                {"op": "replace", "path": "/spec/containers/1/x", "value": 2},
                {"op": "add", "path": "/spec/containers/2", "value": {"name": "q"}},
            ])
        );
        let mut doc = original.clone();
        json_patch::patch(&mut doc, &p).unwrap();
        assert_eq!(doc, mutated);
    }

    #[test]
    fn other_array_changes_fall_back_to_a_plain_diff() {
        let original =
            json!({"a": [{"name": "x"}, {"name": "y"}], "b": [1, 2, 3], "c": [{"name": "k"}]});
        let mutated = json!({"a": [{"name": "y"}, {"name": "x"}], "b": [0, 1, 2, 3], "c": [{"name": "k"}, {"name": "k"}]});
        let p = patch(&original, &original, &mutated);
        let mut doc = original.clone();
        json_patch::patch(&mut doc, &p).unwrap();
        assert_eq!(doc, mutated);
    }

    /// The fast path agrees with diffing the carried document.
    #[test]
    fn the_walk_matches_the_carried_diff() {
        let original = json!({"metadata": {"annotations": {"a": "1"}, "x-new": 1},
            "spec": {"containers": [{"name": "app", "future": true, "image": "a"}],
                     "volumes": [{"name": "v", "emptyDir": {}}], "keep": [1, 2]}});
        let typed = json!({"metadata": {"annotations": {"a": "1"}},
            "spec": {"containers": [{"name": "app", "image": "a"}],
                     "volumes": [{"name": "v", "emptyDir": {}}], "keep": [1, 2]}});
        let mutated = json!({"metadata": {"annotations": {"a": "1", "b": "2"}},
            "spec": {"initContainers": [{"name": "i"}],
                     "containers": [{"name": "p"}, {"name": "app", "image": "a"}],
                     "volumes": [{"name": "v", "emptyDir": {}}, {"name": "w"}], "keep": [1, 2]}});
        let fast = patch(&original, &typed, &mutated);
        let mut slow = Vec::new();
        diff(
            &original,
            &carry(&original, &typed, &mutated),
            &mut PointerBuf::new(),
            &mut slow,
        );
        assert_eq!(fast, Patch(slow));
        let mut doc = original.clone();
        json_patch::patch(&mut doc, &fast).unwrap();
        assert_eq!(doc, carry(&original, &typed, &mutated));
    }

    #[test]
    fn unchanged_documents_give_an_empty_patch() {
        let original = json!({"a": [1, 2], "b": {"c": "d"}, "extra": 1});
        let typed = json!({"a": [1, 2], "b": {"c": "d"}});
        assert!(patch(&original, &typed, &typed).0.is_empty());
    }
}
