//! `AuthorizationPolicy` → `pb::AuthorizationPolicy`. Patterns, principals, ports and
//! header names are checked by the proxy's own evaluator (`weft_api::authz`), so the control
//! plane accepts exactly what proxies can enforce.
//!
//! The evaluator stops at the first problem; to report them all, each entry (one pattern,
//! one port, one condition's header) is also compiled on its own, in a one-entry policy.

use weft_api::authz::{AuthzError, Policy};
use weft_api::crd::authorization_policy as crd;
use weft_api::crd::{AuthorizationPolicy, DRY_RUN_ANNOTATION};
use weft_api::proto::discovery::v1 as pb;

use super::{namespace_and_name, Errors, FieldError};

pub fn authorization_policy(
    p: &AuthorizationPolicy,
) -> Result<pb::AuthorizationPolicy, Vec<FieldError>> {
    let mut errors = Errors::default();
    let (namespace, name) = namespace_and_name(&p.metadata, &mut errors);
    let annotation = (p.metadata.annotations.as_ref()).and_then(|a| a.get(DRY_RUN_ANNOTATION));
    let dry_run = match annotation.map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            errors.add(
                format!("metadata.annotations[{DRY_RUN_ANNOTATION}]"),
                format!("expected \"true\" or \"false\", got {other:?}"),
            );
            false
        }
    };
    let action = match p.spec.action {
        crd::PolicyAction::Allow => pb::Action::Allow,
        crd::PolicyAction::Deny => pb::Action::Deny,
        crd::PolicyAction::Audit => pb::Action::Audit,
    };
    let policy = pb::AuthorizationPolicy {
        namespace,
        name,
        action: action as i32,
        dry_run,
        rules: p.spec.rules.iter().map(rule).collect(),
    };

    let before = errors.count();
    for (i, rule) in policy.rules.iter().enumerate() {
        check_rule(rule, &format!("spec.rules[{i}]"), &mut errors);
    }
    // The whole policy, for anything the entry-by-entry checks cannot see.
    if errors.count() == before {
        if let Err(e) = compile(policy.rules.clone()) {
            errors.add(spec_path(e.field()), message(&e));
        }
    }
    errors.finish(policy)
}

fn rule(r: &crd::Rule) -> pb::Rule {
    pb::Rule {
        from: (r.from.iter())
            .map(|s| pb::Source {
                principals: s.principals.clone(),
                not_principals: s.not_principals.clone(),
                namespaces: s.namespaces.clone(),
                not_namespaces: s.not_namespaces.clone(),
            })
            .collect(),
        to: (r.to.iter())
            .map(|o| pb::Operation {
                ports: o.ports.iter().copied().map(u32::from).collect(),
                not_ports: o.not_ports.iter().copied().map(u32::from).collect(),
                methods: o.methods.clone(),
                not_methods: o.not_methods.clone(),
                paths: o.paths.clone(),
                not_paths: o.not_paths.clone(),
            })
            .collect(),
        when: (r.when.iter())
            .map(|c| pb::Condition {
                // The wire format wants header names lower-case.
                header: c.header.to_ascii_lowercase(),
                values: c.values.clone(),
                not_values: c.not_values.clone(),
            })
            .collect(),
    }
}

/// Checks each entry of the listed fields of `$item` alone: as the only entry of a
/// `pb::$Outer` that is the only entry of a rule's `$in` list.
macro_rules! each_entry {
    ($errors:expr, $at:expr, $item:expr, $in:ident: $Outer:ident { $($field:ident: $name:literal),* }) => {
        $(for (k, entry) in $item.$field.iter().enumerate() {
            let outer = pb::$Outer { $field: vec![entry.clone()], ..Default::default() };
            let one = pb::Rule { $in: vec![outer], ..Default::default() };
            check($errors, format!("{}.{}[{k}]", $at, $name), one);
        })*
    };
}

/// Compiles each entry of `rule` on its own, adding an error for every one the evaluator
/// rejects.
fn check_rule(rule: &pb::Rule, at: &str, errors: &mut Errors) {
    for (j, s) in rule.from.iter().enumerate() {
        each_entry!(errors, format!("{at}.from[{j}]"), s, from: Source {
            principals: "principals", not_principals: "notPrincipals",
            namespaces: "namespaces", not_namespaces: "notNamespaces"
        });
    }
    for (j, o) in rule.to.iter().enumerate() {
        each_entry!(errors, format!("{at}.to[{j}]"), o, to: Operation {
            ports: "ports", not_ports: "notPorts", methods: "methods",
            not_methods: "notMethods", paths: "paths", not_paths: "notPaths"
        });
    }
    for (j, c) in rule.when.iter().enumerate() {
        let at = format!("{at}.when[{j}]");
        let when = |header: &str, values: Vec<String>, not_values: Vec<String>| pb::Rule {
            when: vec![pb::Condition {
                header: header.to_owned(),
                values,
                not_values,
            }],
            ..Default::default()
        };
        // The header (with a pattern that always compiles), then the condition as a whole;
        // the evaluator reports these at `rules[0].when[0]`, `rules[0].when[0].header`.
        let mut whole = vec![when(&c.header, vec!["*".into()], Vec::new())];
        if c.values.is_empty() && c.not_values.is_empty() {
            whole.push(when(PLACEHOLDER_HEADER, Vec::new(), Vec::new()));
        }
        for one in whole {
            if let Err(e) = compile(vec![one]) {
                let rest = e
                    .field()
                    .strip_prefix("rules[0].when[0]")
                    .unwrap_or_default();
                // Name the real header, not the stand-in.
                let message = format!("{:?}: {}", c.header, reason(&e));
                errors.add(format!("{at}{}", camel(rest)), message);
            }
        }
        // Then each pattern on its own, under a header that always compiles.
        for (k, v) in c.values.iter().enumerate() {
            let one = when(PLACEHOLDER_HEADER, vec![v.clone()], Vec::new());
            check(errors, format!("{at}.values[{k}]"), one);
        }
        for (k, v) in c.not_values.iter().enumerate() {
            let one = when(PLACEHOLDER_HEADER, Vec::new(), vec![v.clone()]);
            check(errors, format!("{at}.notValues[{k}]"), one);
        }
    }
}

/// Adds the evaluator's error on `one` (a rule with a single entry), if any, at `field`.
fn check(errors: &mut Errors, field: String, one: pb::Rule) {
    if let Err(e) = compile(vec![one]) {
        errors.add(field, message(&e));
    }
}

/// A valid header name, for checking a condition's patterns apart from its header.
const PLACEHOLDER_HEADER: &str = "x-weft-check";

/// Runs the evaluator's compiler on `rules` in a stand-in policy (its name and namespace are
/// checked above, so errors about them cannot come from here).
fn compile(rules: Vec<pb::Rule>) -> Result<Policy, AuthzError> {
    Policy::from_proto(&pb::AuthorizationPolicy {
        namespace: "check".into(),
        name: "check".into(),
        action: pb::Action::Allow as i32,
        dry_run: false,
        rules,
    })
}

/// The evaluator's paths are relative to the policy and use the proto's snake_case names;
/// ours are YAML paths: `spec.` and camelCase.
fn spec_path(field: &str) -> String {
    format!("spec.{}", camel(field))
}

/// `rules[0].from[1].not_principals[2]` → `rules[0].from[1].notPrincipals[2]`.
fn camel(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut upper = false;
    for c in path.chars() {
        match c {
            '_' => upper = true,
            c if upper => {
                out.push(c.to_ascii_uppercase());
                upper = false;
            }
            c => out.push(c),
        }
    }
    out
}

/// The offending value and why, e.g. `"a*b": ...`.
fn message(e: &AuthzError) -> String {
    match e.value() {
        "" => reason(e).to_owned(),
        value => format!("{value:?}: {}", reason(e)),
    }
}

fn reason(e: &AuthzError) -> &str {
    match e {
        AuthzError::Policy { reason, .. } | AuthzError::Inbound { reason, .. } => reason,
    }
}

#[cfg(test)]
#[path = "tests/authz.rs"]
mod tests;
