//! The policy table: each row builds policies from protos, evaluates one request and checks
//! the decision, who decided and what was recorded. Most fields are covered by a pair of rows
//! (a match and a near miss) so that a matcher that always or never matches fails a row.

mod api;
mod errors;
mod support;

use super::RecordKind::{Audit as AUDIT, DryRunDeny as DRY};
use super::*;
use crate::proto::discovery::v1 as pb;
use support::*;

struct Case {
    name: &'static str,
    default: DefaultPolicy,
    policies: Vec<pb::AuthorizationPolicy>,
    req: Req,
    allowed: bool,
    /// `DecidedBy::label()`.
    by: &'static str,
    recorded: &'static [(&'static str, RecordKind)],
}

#[allow(clippy::too_many_arguments)]
fn c(
    name: &'static str,
    default: DefaultPolicy,
    policies: Vec<pb::AuthorizationPolicy>,
    req: Req,
    allowed: bool,
    by: &'static str,
    recorded: &'static [(&'static str, RecordKind)],
) -> Case {
    Case {
        name,
        default,
        policies,
        req,
        allowed,
        by,
        recorded,
    }
}

/// An ALLOW policy `shop/a` with one rule, under a default that would allow: allowed by
/// `shop/a` when the rule matches, denied by `shop/a` when it does not.
fn only(r: Rb) -> Vec<pb::AuthorizationPolicy> {
    vec![allow("shop/a", [r])]
}

const Y: bool = true;
const N: bool = false;
const NONE: &[(&str, RecordKind)] = &[];

#[rustfmt::skip]
fn cases() -> Vec<Case> {
    vec![
        // ---- from: principals and namespaces ----
        c("principal exact", ALLOW, only(rule().principals(&[FRONTEND])), get("/"), Y, "shop/a", NONE),
        c("principal exact, other caller", ALLOW, only(rule().principals(&[FRONTEND])), get("/").by(ADMIN), N, "shop/a", NONE),
        c("principal prefix", ALLOW, only(rule().principals(&["spiffe://cluster.local/ns/shop/*"])), get("/"), Y, "shop/a", NONE),
        c("principal prefix, miss", ALLOW, only(rule().principals(&["spiffe://cluster.local/ns/shop/*"])), get("/").by(ADMIN), N, "shop/a", NONE),
        c("principal suffix", ALLOW, only(rule().principals(&["*/sa/admin"])), get("/").by(ADMIN), Y, "shop/a", NONE),
        c("principal suffix, miss", ALLOW, only(rule().principals(&["*/sa/admin"])), get("/"), N, "shop/a", NONE),
        c("principal any, mesh caller", ALLOW, only(rule().principals(&["*"])), get("/").by(ODD), Y, "shop/a", NONE),
        c("principal any, plaintext", ALLOW, only(rule().principals(&["*"])), get("/").plaintext(), N, "shop/a", NONE),
        c("not_principals, other caller", ALLOW, only(rule().not_principals(&[ADMIN])), get("/"), Y, "shop/a", NONE),
        c("not_principals, listed caller", ALLOW, only(rule().not_principals(&[ADMIN])), get("/").by(ADMIN), N, "shop/a", NONE),
        c("not_principals, plaintext", ALLOW, only(rule().not_principals(&["*"])), get("/").plaintext(), Y, "shop/a", NONE),
        c("namespace exact", ALLOW, only(rule().namespaces(&["shop"])), get("/"), Y, "shop/a", NONE),
        c("namespace exact, other", ALLOW, only(rule().namespaces(&["shop"])), get("/").by(ADMIN), N, "shop/a", NONE),
        c("namespace is the ns segment", ALLOW, only(rule().namespaces(&["op*"])), get("/").by(ADMIN), Y, "shop/a", NONE),
        c("namespace, plaintext", ALLOW, only(rule().namespaces(&["*"])), get("/").plaintext(), N, "shop/a", NONE),
        c("namespace, ID without one", ALLOW, only(rule().namespaces(&["*"])), get("/").by(ODD), N, "shop/a", NONE),
        c("not_namespaces, other", ALLOW, only(rule().not_namespaces(&["ops"])), get("/"), Y, "shop/a", NONE),
        c("not_namespaces, listed", ALLOW, only(rule().not_namespaces(&["ops"])), get("/").by(ADMIN), N, "shop/a", NONE),
        c("not_namespaces, plaintext", ALLOW, only(rule().not_namespaces(&["*"])), get("/").plaintext(), Y, "shop/a", NONE),
        c("source fields AND", ALLOW, only(rule().principals(&["spiffe://cluster.local/*"]).namespaces(&["ops"])), get("/").by(ADMIN), Y, "shop/a", NONE),
        c("source fields AND, one fails", ALLOW, only(rule().principals(&["spiffe://cluster.local/*"]).namespaces(&["ops"])), get("/"), N, "shop/a", NONE),
        c("from entries OR", ALLOW, only(rule().principals(&[ADMIN]).or_from().namespaces(&["shop"])), get("/"), Y, "shop/a", NONE),
        c("from entries OR, none", ALLOW, only(rule().principals(&[ADMIN]).or_from().namespaces(&["shop"])), get("/").by(ODD), N, "shop/a", NONE),
        // ---- to: ports, methods, paths ----
        c("port", ALLOW, only(rule().ports(&[8080])), get("/"), Y, "shop/a", NONE),
        c("port, other", ALLOW, only(rule().ports(&[8080])), get("/").port(9090), N, "shop/a", NONE),
        c("not_ports, other", ALLOW, only(rule().not_ports(&[9090])), get("/"), Y, "shop/a", NONE),
        c("not_ports, listed", ALLOW, only(rule().not_ports(&[9090])), get("/").port(9090), N, "shop/a", NONE),
        c("method", ALLOW, only(rule().methods(&["GET", "HEAD"])), get("/"), Y, "shop/a", NONE),
        c("method, other", ALLOW, only(rule().methods(&["GET", "HEAD"])), get("/").method("POST"), N, "shop/a", NONE),
        c("method is case-sensitive", ALLOW, only(rule().methods(&["GET"])), get("/").method("get"), N, "shop/a", NONE),
        c("not_methods, other", ALLOW, only(rule().not_methods(&["DELETE"])), get("/"), Y, "shop/a", NONE),
        c("not_methods, listed", ALLOW, only(rule().not_methods(&["DELETE"])), get("/").method("DELETE"), N, "shop/a", NONE),
        c("path exact", ALLOW, only(rule().paths(&["/api"])), get("/api"), Y, "shop/a", NONE),
        c("path exact, longer", ALLOW, only(rule().paths(&["/api"])), get("/api/x"), N, "shop/a", NONE),
        c("path exact ignores query", ALLOW, only(rule().paths(&["/api"])), get("/api?page=2"), Y, "shop/a", NONE),
        c("path prefix", ALLOW, only(rule().paths(&["/api/*"])), get("/api/orders"), Y, "shop/a", NONE),
        c("path prefix, miss", ALLOW, only(rule().paths(&["/api/*"])), get("/apix"), N, "shop/a", NONE),
        c("path suffix", ALLOW, only(rule().paths(&["*.css"])), get("/static/site.css?v=3"), Y, "shop/a", NONE),
        c("path suffix, only in query", ALLOW, only(rule().paths(&["*.css"])), get("/x?f=a.css"), N, "shop/a", NONE),
        c("path any", ALLOW, only(rule().paths(&["*"])), get("/whatever"), Y, "shop/a", NONE),
        c("not_paths, other", ALLOW, only(rule().not_paths(&["/admin*"])), get("/api?next=/admin"), Y, "shop/a", NONE),
        c("not_paths, listed", ALLOW, only(rule().not_paths(&["/admin*"])), get("/admin/users"), N, "shop/a", NONE),
        c("operation fields AND", ALLOW, only(rule().ports(&[8080]).methods(&["GET"]).paths(&["/api*"])), get("/api"), Y, "shop/a", NONE),
        c("operation fields AND, port", ALLOW, only(rule().ports(&[8080]).methods(&["GET"]).paths(&["/api*"])), get("/api").port(81), N, "shop/a", NONE),
        c("operation fields AND, method", ALLOW, only(rule().ports(&[8080]).methods(&["GET"]).paths(&["/api*"])), get("/api").method("PUT"), N, "shop/a", NONE),
        c("to entries OR", ALLOW, only(rule().methods(&["POST"]).or_to().paths(&["/public*"])), get("/public/x"), Y, "shop/a", NONE),
        c("to entries OR, none", ALLOW, only(rule().methods(&["POST"]).or_to().paths(&["/public*"])), get("/private"), N, "shop/a", NONE),
        // ---- when ----
        c("when values", ALLOW, only(rule().when("x-env", &["prod*"], &[])), get("/").header("x-env", "production"), Y, "shop/a", NONE),
        c("when values, miss", ALLOW, only(rule().when("x-env", &["prod*"], &[])), get("/").header("x-env", "dev"), N, "shop/a", NONE),
        c("when values, missing header", ALLOW, only(rule().when("x-env", &["*"], &[])), get("/"), N, "shop/a", NONE),
        c("when values, repeated header", ALLOW, only(rule().when("x-env", &["prod"], &[])), get("/").header("x-env", "dev").header("x-env", "prod"), Y, "shop/a", NONE),
        c("when not_values, other", ALLOW, only(rule().when("x-env", &[], &["dev"])), get("/").header("x-env", "prod"), Y, "shop/a", NONE),
        c("when not_values, listed", ALLOW, only(rule().when("x-env", &[], &["dev"])), get("/").header("x-env", "dev"), N, "shop/a", NONE),
        c("when not_values, repeated header", ALLOW, only(rule().when("x-env", &[], &["dev"])), get("/").header("x-env", "prod").header("x-env", "dev"), N, "shop/a", NONE),
        c("when not_values, missing header", ALLOW, only(rule().when("x-env", &[], &["dev"])), get("/"), Y, "shop/a", NONE),
        c("when values and not_values", ALLOW, only(rule().when("x-env", &["p*"], &["preview"])), get("/").header("x-env", "preview"), N, "shop/a", NONE),
        c("when header name any case", ALLOW, only(rule().when("X-Env", &["prod"], &[])), get("/").header("x-env", "prod"), Y, "shop/a", NONE),
        c("when conditions AND", ALLOW, only(rule().when("x-a", &["1"], &[]).when("x-b", &["2"], &[])), get("/").header("x-a", "1").header("x-b", "2"), Y, "shop/a", NONE),
        c("when conditions AND, one fails", ALLOW, only(rule().when("x-a", &["1"], &[]).when("x-b", &["2"], &[])), get("/").header("x-a", "1"), N, "shop/a", NONE),
        c("when non-UTF-8 value", ALLOW, vec![deny("shop/d", [rule().when("x-user", &["evil*"], &[])])], get("/").header_bytes("x-user", b"evil\xff"), N, "shop/d", NONE),
        c("rule lists AND", ALLOW, only(rule().principals(&[FRONTEND]).paths(&["/api*"]).when("x-a", &["1"], &[])), get("/api").header("x-a", "1"), Y, "shop/a", NONE),
        c("rule lists AND, from fails", ALLOW, only(rule().principals(&[FRONTEND]).paths(&["/api*"])), get("/api").by(ADMIN), N, "shop/a", NONE),
        c("rule lists AND, to fails", ALLOW, only(rule().principals(&[FRONTEND]).paths(&["/api*"])), get("/web"), N, "shop/a", NONE),
        c("rule lists AND, when fails", ALLOW, only(rule().principals(&[FRONTEND]).when("x-a", &["1"], &[])), get("/"), N, "shop/a", NONE),
        c("rules OR", ALLOW, vec![allow("shop/a", [rule().paths(&["/a"]), rule().paths(&["/b"])])], get("/b"), Y, "shop/a", NONE),
        // ---- order ----
        c("DENY wins over ALLOW", ALLOW, vec![allow("shop/a", [rule()]), deny("shop/z", [rule().paths(&["/admin*"])])], get("/admin"), N, "shop/z", NONE),
        c("unmatched DENY, matched ALLOW", ALLOW, vec![allow("shop/a", [rule()]), deny("shop/z", [rule().paths(&["/admin*"])])], get("/api"), Y, "shop/a", NONE),
        c("first matching DENY decides", ALLOW, vec![deny("shop/y", [rule()]), deny("shop/x", [rule()])], get("/"), N, "shop/x", NONE),
        c("ALLOW required, first named", ALLOW, vec![allow("shop/c", [rule().paths(&["/c"])]), allow("shop/b", [rule().paths(&["/b"])])], get("/x"), N, "shop/b", NONE),
        c("ALLOW sorted by namespace", ALLOW, vec![allow("shop/a", [rule().paths(&["/a"])]), allow("billing/z", [rule().paths(&["/z"])])], get("/x"), N, "billing/z", NONE),
        c("first matching ALLOW decides", DENY, vec![allow("shop/c", [rule()]), allow("shop/a", [rule().paths(&["/a"])]), allow("shop/b", [rule()])], get("/x"), Y, "shop/b", NONE),
        c("ALLOW overrides default deny", DENY, only(rule().paths(&["/ok"])), get("/ok"), Y, "shop/a", NONE),
        c("default allow", ALLOW, vec![], get("/"), Y, "default", NONE),
        c("default allow, plaintext", ALLOW, vec![], get("/").plaintext(), Y, "default", NONE),
        c("default deny", DENY, vec![], get("/"), N, "default", NONE),
        c("default authenticated, caller", AUTHN, vec![], get("/").by(ODD), Y, "default", NONE),
        c("default authenticated, plaintext", AUTHN, vec![], tcp().plaintext(), N, "default", NONE),
        c("unmatched DENY falls to default", AUTHN, vec![deny("shop/d", [rule().paths(&["/x"])])], get("/").plaintext(), N, "default", NONE),
        c("ALLOW without rules allows nothing", ALLOW, vec![allow("shop/a", [])], get("/"), N, "shop/a", NONE),
        c("DENY without rules denies nothing", ALLOW, vec![deny("shop/d", [])], get("/"), Y, "default", NONE),
        c("ALLOW rules: [{}] allows all", DENY, vec![allow("shop/a", [rule()])], tcp().plaintext(), Y, "shop/a", NONE),
        c("DENY rules: [{}] denies all", ALLOW, vec![deny("shop/d", [rule()])], tcp().plaintext(), N, "shop/d", NONE),
        // ---- opaque TCP ----
        c("TCP: ALLOW on ports", DENY, only(rule().ports(&[8080])), tcp(), Y, "shop/a", NONE),
        c("TCP: ALLOW with methods never matches", DENY, only(rule().ports(&[8080]).methods(&["GET"])), tcp(), N, "shop/a", NONE),
        c("TCP: ALLOW with not_paths never matches", DENY, only(rule().not_paths(&["/admin"])), tcp(), N, "shop/a", NONE),
        c("TCP: ALLOW with when never matches", DENY, only(rule().principals(&[FRONTEND]).when("x-a", &[], &["1"])), tcp(), N, "shop/a", NONE),
        c("TCP: HTTP in one to entry spoils the rule", DENY, only(rule().ports(&[8080]).or_to().methods(&["GET"])), tcp(), N, "shop/a", NONE),
        c("TCP: another ALLOW rule still matches", DENY, vec![allow("shop/a", [rule().methods(&["GET"]), rule().principals(&[FRONTEND])])], tcp(), Y, "shop/a", NONE),
        c("TCP: DENY ignores methods", ALLOW, vec![deny("shop/d", [rule().methods(&["POST"])])], tcp(), N, "shop/d", NONE),
        c("HTTP: the same DENY on GET", ALLOW, vec![deny("shop/d", [rule().methods(&["POST"])])], get("/"), Y, "default", NONE),
        c("TCP: DENY ignores when", ALLOW, vec![deny("shop/d", [rule().principals(&[FRONTEND]).when("x-a", &["1"], &[])])], tcp(), N, "shop/d", NONE),
        c("TCP: DENY still checks ports", ALLOW, vec![deny("shop/d", [rule().ports(&[9090]).paths(&["/x"])])], tcp(), Y, "default", NONE),
        c("TCP: DENY still checks from", ALLOW, vec![deny("shop/d", [rule().principals(&[ADMIN]).paths(&["/x"])])], tcp(), Y, "default", NONE),
        // ---- AUDIT ----
        c("AUDIT records", ALLOW, vec![audit("shop/au", [rule().principals(&[FRONTEND])])], get("/"), Y, "default", &[("shop/au", AUDIT)]),
        c("AUDIT, no match", ALLOW, vec![audit("shop/au", [rule().principals(&[FRONTEND])])], get("/").by(ADMIN), Y, "default", NONE),
        c("AUDIT is no ALLOW policy", DENY, vec![audit("shop/au", [rule()])], get("/"), N, "default", &[("shop/au", AUDIT)]),
        c("AUDIT on a denied request", ALLOW, vec![audit("shop/au", [rule()]), deny("shop/d", [rule()])], get("/"), N, "shop/d", &[("shop/au", AUDIT)]),
        c("AUDIT, several in order", ALLOW, vec![audit("shop/b", [rule()]), audit("shop/a", [rule()]), audit("shop/c", [rule().paths(&["/c"])])], get("/"), Y, "default", &[("shop/a", AUDIT), ("shop/b", AUDIT)]),
        c("TCP: AUDIT ignores paths", ALLOW, vec![audit("shop/au", [rule().paths(&["/admin"])])], tcp(), Y, "default", &[("shop/au", AUDIT)]),
        c("AUDIT without rules", ALLOW, vec![audit("shop/au", [])], get("/"), Y, "default", NONE),
        // ---- dry run ----
        c("dry-run DENY records", ALLOW, vec![dry(deny("shop/d", [rule().paths(&["/admin*"])]))], get("/admin"), Y, "default", &[("shop/d", DRY)]),
        c("dry-run DENY, no match", ALLOW, vec![dry(deny("shop/d", [rule().paths(&["/admin*"])]))], get("/api"), Y, "default", NONE),
        c("dry-run ALLOW required", ALLOW, vec![dry(allow("shop/a", [rule().principals(&[ADMIN])]))], get("/"), Y, "default", &[("shop/a", DRY)]),
        c("dry-run ALLOW matches", ALLOW, vec![dry(allow("shop/a", [rule().principals(&[FRONTEND])]))], get("/"), Y, "default", NONE),
        c("dry-run DENY under an enforced ALLOW", DENY, vec![allow("shop/a", [rule()]), dry(deny("shop/d", [rule()]))], get("/"), Y, "shop/a", &[("shop/d", DRY)]),
        c("dry-run ALLOW beside a matching ALLOW", DENY, vec![allow("shop/a", [rule()]), dry(allow("shop/b", [rule().paths(&["/b"])]))], get("/"), Y, "shop/a", NONE),
        c("dry-run ALLOW beside a missed ALLOW", DENY, vec![allow("shop/b", [rule().paths(&["/b"])]), dry(allow("shop/a", [rule()]))], get("/"), N, "shop/b", NONE),
        c("dry-run on a denied request", ALLOW, vec![deny("shop/d", [rule()]), dry(deny("shop/c", [rule()]))], get("/"), N, "shop/d", NONE),
        c("dry-run ALLOW that would allow", DENY, vec![dry(allow("shop/a", [rule()]))], get("/"), N, "default", NONE),
        c("dry-run AUDIT records", ALLOW, vec![dry(audit("shop/au", [rule()]))], get("/"), Y, "default", &[("shop/au", AUDIT)]),
        c("audit and dry-run both", ALLOW, vec![audit("shop/au", [rule()]), dry(deny("shop/d", [rule()]))], tcp(), Y, "default", &[("shop/au", AUDIT), ("shop/d", DRY)]),
    ]
}

#[test]
fn policy_table() {
    let cases = cases();
    let mut failures = Vec::new();
    for case in &cases {
        let decision = case
            .req
            .eval(&workload(case.default, case.policies.clone()));
        let recorded: Vec<(String, RecordKind)> = (decision.recorded.iter())
            .map(|r| (r.policy.to_string(), r.kind))
            .collect();
        let expected: Vec<(String, RecordKind)> = (case.recorded.iter())
            .map(|(p, k)| (p.to_string(), *k))
            .collect();
        let by = decision.decided_by.label();
        if decision.allowed != case.allowed || by != case.by || recorded != expected {
            failures.push(format!(
                "{}: got allowed={} by={by} recorded={recorded:?}; want allowed={} by={} \
                 recorded={expected:?}",
                case.name, decision.allowed, case.allowed, case.by,
            ));
        }
        if by == "default" {
            assert_eq!(
                decision.decided_by,
                DecidedBy::Default(case.default),
                "{}",
                case.name
            );
        }
        if recorded.is_empty() {
            assert_eq!(decision.recorded.capacity(), 0, "{}: allocated", case.name);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
