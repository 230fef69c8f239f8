//! Unit tests of `convert::authz` (a child module: private items are visible).

use super::*;
use crate::convert::testing::{lines, parse};
use weft_api::authz::PatternError;
use weft_api::SpiffeId;

fn convert(annotations: &str, spec: &str) -> Result<pb::AuthorizationPolicy, Vec<FieldError>> {
    let yaml = format!(
        "apiVersion: policy.weft.dev/v1alpha1\nkind: AuthorizationPolicy\n\
         metadata: {{name: frontend, namespace: shop, annotations: {{{annotations}}}}}\n\
         spec:\n{spec}"
    );
    authorization_policy(&parse(&yaml))
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn every_field_converts() {
    let spec = r#"
  selector: {matchLabels: {app: frontend}}
  action: DENY
  rules:
  - from:
    - principals: ["spiffe://cluster.local/ns/shop/sa/web", "spiffe://cluster.local/ns/ops/*"]
      notPrincipals: ["*/sa/evil"]
      namespaces: [shop, "team-*"]
      notNamespaces: [kube-system]
    - namespaces: ["*"]
    to:
    - ports: [8080, 9090]
      notPorts: [15020]
      methods: [GET, HEAD]
      notMethods: [DELETE]
      paths: ["/api/*", /health]
      notPaths: ["*.php"]
    when:
    - header: X-Tenant
      values: [acme, "beta-*"]
      notValues: [blocked]
  - {}
"#;
    assert_eq!(
        convert("weft.dev/dry-run: 'true'", spec).unwrap(),
        pb::AuthorizationPolicy {
            namespace: "shop".into(),
            name: "frontend".into(),
            action: pb::Action::Deny as i32,
            dry_run: true,
            rules: vec![
                pb::Rule {
                    from: vec![
                        pb::Source {
                            principals: strings(&[
                                "spiffe://cluster.local/ns/shop/sa/web",
                                "spiffe://cluster.local/ns/ops/*",
                            ]),
                            not_principals: strings(&["*/sa/evil"]),
                            namespaces: strings(&["shop", "team-*"]),
                            not_namespaces: strings(&["kube-system"]),
                        },
                        pb::Source {
                            namespaces: strings(&["*"]),
                            ..Default::default()
                        },
                    ],
                    to: vec![pb::Operation {
                        ports: vec![8080, 9090],
                        not_ports: vec![15020],
                        methods: strings(&["GET", "HEAD"]),
                        not_methods: strings(&["DELETE"]),
                        paths: strings(&["/api/*", "/health"]),
                        not_paths: strings(&["*.php"]),
                    }],
                    when: vec![pb::Condition {
                        header: "x-tenant".into(),
                        values: strings(&["acme", "beta-*"]),
                        not_values: strings(&["blocked"]),
                    }],
                },
                pb::Rule::default(),
            ],
        }
    );
}

#[test]
fn actions_and_dry_run() {
    let action = |spec: &str| convert("", spec).unwrap().action;
    assert_eq!(action("  rules: []\n"), pb::Action::Allow as i32);
    assert_eq!(action("  action: ALLOW\n"), pb::Action::Allow as i32);
    assert_eq!(action("  action: AUDIT\n"), pb::Action::Audit as i32);
    let dry_run = |annotations: &str| convert(annotations, "  {}\n").unwrap().dry_run;
    assert!(!dry_run(""));
    assert!(!dry_run("weft.dev/dry-run: 'false'"));
    assert!(!dry_run("other: 'true'"));
    assert!(dry_run("weft.dev/dry-run: 'true'"));
}

#[test]
fn every_problem_is_reported() {
    let spec = r#"
  rules:
  - from:
    - principals: ["spiffe://cluster.local/ns/shop/sa/web", "frontend", "a*b"]
      notPrincipals: [""]
      namespaces: ["**"]
    - notNamespaces: ["*a*"]
    to:
    - ports: [0, 80]
      notPorts: [0]
      methods: ["G*T"]
      notMethods: [""]
      paths: ["/a*b"]
      notPaths: ["/ok", "*x*"]
  - when:
    - header: ":authority"
      values: ["a**"]
      notValues: [ok, "b*c"]
    - header: x-empty
    - header: "bad header"
"#;
    // The evaluator's own wording, where it exposes it.
    let wildcard = PatternError::Wildcard.to_string();
    let header = "not a valid HTTP header name (pseudo-headers like :authority are not \
                  request headers)";
    let port = "a port must be 1 to 65535";
    let empty = PatternError::Empty.to_string();
    let (f, t, w) = (
        "spec.rules[0].from",
        "spec.rules[0].to[0]",
        "spec.rules[1].when",
    );
    let got = lines(convert("weft.dev/dry-run: 'yes'", spec));
    let spiffe = "frontend".parse::<SpiffeId>().unwrap_err();
    assert_eq!(
        got,
        vec![
            "metadata.annotations[weft.dev/dry-run]: expected \"true\" or \"false\", got \"yes\""
                .to_string(),
            format!("{f}[0].principals[1]: \"frontend\": {spiffe}"),
            format!("{f}[0].principals[2]: \"a*b\": {wildcard}"),
            format!("{f}[0].notPrincipals[0]: {empty}"),
            format!("{f}[0].namespaces[0]: \"**\": {wildcard}"),
            format!("{f}[1].notNamespaces[0]: \"*a*\": {wildcard}"),
            format!("{t}.ports[0]: \"0\": {port}"),
            format!("{t}.notPorts[0]: \"0\": {port}"),
            format!("{t}.methods[0]: \"G*T\": {wildcard}"),
            format!("{t}.notMethods[0]: {empty}"),
            format!("{t}.paths[0]: \"/a*b\": {wildcard}"),
            format!("{t}.notPaths[1]: \"*x*\": {wildcard}"),
            format!("{w}[0].header: \":authority\": {header}"),
            format!("{w}[0].values[0]: \"a**\": {wildcard}"),
            format!("{w}[0].notValues[1]: \"b*c\": {wildcard}"),
            format!("{w}[1]: \"x-empty\": a condition needs values or not_values"),
            format!("{w}[2].header: \"bad header\": {header}"),
            format!("{w}[2]: \"bad header\": a condition needs values or not_values"),
        ]
    );
}

#[test]
fn metadata_is_required() {
    let yaml = "apiVersion: policy.weft.dev/v1alpha1\nkind: AuthorizationPolicy\n\
                metadata: {}\nspec: {rules: [{from: [{principals: [a*b]}]}]}\n";
    let got = lines(authorization_policy(&parse(yaml)));
    assert_eq!(
        got[..2],
        ["metadata.name: required", "metadata.namespace: required"]
    );
    assert_eq!(got.len(), 3, "and the pattern: {got:?}");
}

#[test]
fn evaluator_paths_become_yaml_paths() {
    assert_eq!(
        spec_path("rules[0].from[1].not_principals[2]"),
        "spec.rules[0].from[1].notPrincipals[2]"
    );
    assert_eq!(spec_path("rules[3].when[0]"), "spec.rules[3].when[0]");
}
