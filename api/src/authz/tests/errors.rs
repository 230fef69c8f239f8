//! `from_proto` rejects what it cannot enforce and says which policy, which field, which
//! value and why.

use super::support::*;
use crate::authz::{AuthzError, DefaultPolicy, Policy, WorkloadPolicy};
use crate::proto::discovery::v1 as pb;

fn with_action(action: i32) -> pb::AuthorizationPolicy {
    pb::AuthorizationPolicy {
        action,
        ..allow("shop/p", [rule()])
    }
}

fn inbound(default_policy: i32, policies: Vec<pb::AuthorizationPolicy>) -> pb::Inbound {
    pb::Inbound {
        namespace: "shop".into(),
        pod: "orders-0".into(),
        default_policy,
        policies,
        ..Default::default()
    }
}

#[rustfmt::skip]
#[test]
fn bad_policies_name_policy_field_value_and_reason() {
    let cases: Vec<(pb::AuthorizationPolicy, &str, &str, &str, &str)> = vec![
        // (policy, its "ns/name", field, value, reason contains)
        (with_action(pb::Action::Unspecified.into()), "shop/p", "action", "ACTION_UNSPECIFIED", "ALLOW, DENY or AUDIT"),
        (with_action(9), "shop/p", "action", "9", "unknown action"),
        (allow("shop/", [rule()]), "shop/", "name", "", "must not be empty"),
        (allow("/p", [rule()]), "/p", "namespace", "", "must not be empty"),
        (allow("shop/p", [rule(), rule().principals(&[FRONTEND]).or_from().principals(&[ADMIN, "spiffe://x/*/y"])]), "shop/p", "rules[1].from[1].principals[1]", "spiffe://x/*/y", "`*` may only be"),
        (allow("shop/p", [rule().principals(&["frontend"])]), "shop/p", "rules[0].from[0].principals[0]", "frontend", "spiffe://"),
        (deny("shop/p", [rule().not_principals(&["spiffe://*", "spiffe://Cluster.local/ns/a/sa/b"])]), "shop/p", "rules[0].from[0].not_principals[1]", "spiffe://Cluster.local/ns/a/sa/b", "lowercase"),
        (allow("shop/p", [rule().namespaces(&[""])]), "shop/p", "rules[0].from[0].namespaces[0]", "", "must not be empty"),
        (allow("shop/p", [rule().not_namespaces(&["**"])]), "shop/p", "rules[0].from[0].not_namespaces[0]", "**", "`*` may only be"),
        (allow("shop/p", [rule().ports(&[0])]), "shop/p", "rules[0].to[0].ports[0]", "0", "1 to 65535"),
        (allow("shop/p", [rule().not_ports(&[80, 65536])]), "shop/p", "rules[0].to[0].not_ports[1]", "65536", "1 to 65535"),
        (allow("shop/p", [rule().methods(&["G*T"])]), "shop/p", "rules[0].to[0].methods[0]", "G*T", "`*` may only be"),
        (allow("shop/p", [rule().not_methods(&[""])]), "shop/p", "rules[0].to[0].not_methods[0]", "", "must not be empty"),
        (allow("shop/p", [rule().methods(&["GET"]).or_to().paths(&["/a", "/a*b"])]), "shop/p", "rules[0].to[1].paths[1]", "/a*b", "`*` may only be"),
        (allow("shop/p", [rule().not_paths(&["*/x*"])]), "shop/p", "rules[0].to[0].not_paths[0]", "*/x*", "`*` may only be"),
        (allow("shop/p", [rule().when("bad header", &["x"], &[])]), "shop/p", "rules[0].when[0].header", "bad header", "header name"),
        (allow("shop/p", [rule().when("x-a", &["1"], &[]).when(":authority", &["x"], &[])]), "shop/p", "rules[0].when[1].header", ":authority", "header name"),
        (allow("shop/p", [rule().when("x-a", &["*x*"], &[])]), "shop/p", "rules[0].when[0].values[0]", "*x*", "`*` may only be"),
        (allow("shop/p", [rule().when("x-a", &[], &[""])]), "shop/p", "rules[0].when[0].not_values[0]", "", "must not be empty"),
        (allow("shop/p", [rule().when("x-a", &[], &[])]), "shop/p", "rules[0].when[0]", "x-a", "needs values or not_values"),
    ];
    for (proto, policy, field, value, reason) in cases {
        let err = Policy::from_proto(&proto).unwrap_err();
        assert_eq!((err.policy(), err.field(), err.value()), (policy, field, value), "{err}");
        let text = err.to_string();
        assert!(text.starts_with(&format!("authorization policy {policy}: {field} {value:?}: ")), "{text}");
        assert!(text.contains(reason), "{text} should say {reason:?}");
        // The same policy inside an inbound view fails the view with the same error.
        let in_view = WorkloadPolicy::from_proto(&inbound(1, vec![allow("shop/ok", [rule()]), proto]));
        assert_eq!(in_view.unwrap_err(), err);
    }
}

#[test]
fn unknown_default_policy_is_an_inbound_error() {
    let err = WorkloadPolicy::from_proto(&inbound(7, vec![])).unwrap_err();
    assert!(matches!(err, AuthzError::Inbound { .. }), "{err:?}");
    assert_eq!(
        (err.policy(), err.field(), err.value()),
        ("", "default_policy", "7")
    );
    assert_eq!(
        err.to_string(),
        "inbound view of shop/orders-0: default_policy \"7\": unknown default policy (a newer \
         control plane?)"
    );
}

#[test]
fn default_policies_from_proto() {
    let cases = [
        (pb::DefaultPolicy::Unspecified, DefaultPolicy::Allow),
        (pb::DefaultPolicy::Allow, DefaultPolicy::Allow),
        (
            pb::DefaultPolicy::Authenticated,
            DefaultPolicy::Authenticated,
        ),
        (pb::DefaultPolicy::Deny, DefaultPolicy::Deny),
    ];
    for (proto, want) in cases {
        let got = WorkloadPolicy::from_proto(&inbound(proto.into(), vec![])).unwrap();
        assert_eq!(got.default, want, "{proto:?}");
    }
}

#[test]
fn valid_edge_values_compile() {
    let p = dry(deny(
        "shop/edge",
        [rule()
            .principals(&["*", "spiffe://cluster.local/ns/a/*", "*/sa/b", FRONTEND])
            .ports(&[1, 65535])
            .when("X-Upper-Case", &["*"], &[])],
    ));
    let policy = Policy::from_proto(&p).unwrap();
    assert_eq!(policy.id.to_string(), "shop/edge");
    assert_eq!(policy.action, crate::authz::Action::Deny);
    assert!(policy.dry_run);
}
