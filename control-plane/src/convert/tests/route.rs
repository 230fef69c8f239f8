//! Unit tests of `convert::route` (a child module: private items are visible).

use super::*;
use crate::convert::testing::{lines, parse};

type Converted = Result<Vec<((String, String), pb::HttpRoute)>, Vec<FieldError>>;

fn convert(spec: &str) -> Converted {
    let head = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
                metadata: {name: split, namespace: shop}\nspec:\n";
    http_route(&parse(&format!("{head}{spec}")))
}

fn key(namespace: &str, name: &str) -> (String, String) {
    (namespace.into(), name.into())
}

fn path(kind: pb::PathMatchKind, value: &str) -> pb::RouteMatch {
    let path = pb::PathMatch {
        kind: kind as i32,
        value: value.into(),
    };
    pb::RouteMatch {
        path: Some(path),
        ..Default::default()
    }
}

fn value(name: &str, value: &str, regex: bool) -> pb::ValueMatch {
    pb::ValueMatch {
        name: name.into(),
        value: value.into(),
        regex,
    }
}

fn backend(namespace: &str, name: &str, port: u32, weight: u32) -> pb::BackendRef {
    let (namespace, name) = key(namespace, name);
    pb::BackendRef {
        namespace,
        name,
        port,
        weight,
    }
}

#[test]
fn a_weighted_split_with_every_kind_of_match() {
    let spec = r#"
  parentRefs:
  - {name: gw}
  - {group: gateway.networking.k8s.io, kind: Gateway, name: gw}
  - {group: example.com, kind: Mesh, name: m}
  - {group: "", kind: Service, name: reviews, port: 9080}
  - {group: core, kind: Service, name: ratings, namespace: other}
  hostnames: [reviews.shop]
  rules:
  - name: canary
    matches:
    - path: {type: Exact, value: /health}
      method: GET
    - path: {type: RegularExpression, value: "^/v[0-9]+/.*"}
      headers:
      - {name: X-Canary, value: "yes"}
      - {type: RegularExpression, name: User-Agent, value: ".*Firefox.*"}
      queryParams: [{name: Debug, value: "1"}]
    - path: {value: /api}
    - headers: [{type: Exact, name: x-a, value: b}]
    backendRefs:
    - {name: reviews-v2, port: 9080, weight: 90}
    - {group: "", kind: Service, name: reviews-v3, namespace: canary, port: 9081, weight: 0}
    - {group: core, name: reviews-v1, port: 9080}
    timeouts: {request: 10s, backendRequest: 2s}
  - backendRefs: [{name: reviews-v1, port: 9080, weight: 1000000}]
    timeouts: {request: 0s, backendRequest: 1m}
"#;
    use pb::PathMatchKind::{Exact, Prefix, Regex};
    let route = pb::HttpRoute {
        namespace: "shop".into(),
        name: "split".into(),
        ports: vec![9080],
        hostnames: vec!["reviews.shop".into()],
        rules: vec![
            pb::RouteRule {
                matches: vec![
                    pb::RouteMatch {
                        method: "GET".into(),
                        ..path(Exact, "/health")
                    },
                    pb::RouteMatch {
                        headers: vec![
                            value("x-canary", "yes", false),
                            value("user-agent", ".*Firefox.*", true),
                        ],
                        query_params: vec![value("Debug", "1", false)],
                        ..path(Regex, "^/v[0-9]+/.*")
                    },
                    path(Prefix, "/api"),
                    pb::RouteMatch {
                        headers: vec![value("x-a", "b", false)],
                        ..path(Prefix, "/")
                    },
                ],
                backends: vec![
                    backend("shop", "reviews-v2", 9080, 90),
                    backend("canary", "reviews-v3", 9081, 0),
                    backend("shop", "reviews-v1", 9080, 1),
                ],
                request_timeout_ms: Some(10_000),
                backend_request_timeout_ms: Some(2_000),
                name: "canary".into(),
            },
            pb::RouteRule {
                backends: vec![backend("shop", "reviews-v1", 9080, 1_000_000)],
                // "0s": no timeout, kept apart from unset.
                request_timeout_ms: Some(0),
                backend_request_timeout_ms: Some(60_000),
                ..Default::default()
            },
        ],
    };
    let ratings = pb::HttpRoute {
        ports: vec![],
        ..route.clone()
    };
    assert_eq!(
        convert(spec).unwrap(),
        [
            (key("shop", "reviews"), route),
            (key("other", "ratings"), ratings)
        ]
    );
}

#[test]
fn repeated_parents_merge_their_ports() {
    let refs = [
        ("a", "80"),
        ("b", "null"),
        ("a", "8080"),
        ("a", "80"),
        ("b", "81"),
    ];
    let refs = refs.iter().chain(&[("c", "1"), ("c", "null")]);
    let refs: String = refs
        .map(|(n, p)| format!("  - {{group: '', kind: Service, name: {n}, port: {p}}}\n"))
        .collect();
    let ports: Vec<_> = (convert(&format!("  parentRefs:\n{refs}"))
        .unwrap()
        .into_iter())
    .map(|((_, name), route)| (name, route.ports))
    .collect();
    let want = [
        ("a".into(), vec![80, 8080]),
        ("b".into(), vec![]),
        ("c".into(), vec![]),
    ];
    assert_eq!(ports, want);
}

#[test]
fn defaults_and_routes_without_a_service_parent() {
    let spec = "  parentRefs: [{group: '', kind: Service, name: a}]\n\
                \x20 rules: [{matches: [{path: {}}, {}]}, {}]\n";
    let (_, route) = convert(spec).unwrap().remove(0);
    let every = path(pb::PathMatchKind::Prefix, "/");
    assert_eq!(route.rules[0].matches, [every.clone(), every]);
    assert_eq!(route.rules[1], pb::RouteRule::default());
    assert_eq!(convert("  parentRefs: [{name: gw}]\n").unwrap(), []);
    assert_eq!(convert("  rules: [{}]\n").unwrap(), []);
}

#[test]
fn every_problem_is_reported() {
    let spec = r#"
  parentRefs:
  - {kind: Service, name: a}
  - {group: apps, kind: Service, name: b}
  - {group: "", kind: Service, name: "", port: 0}
  rules:
  - matches:
    - path: {type: Prefix, value: /}
      method: get
    - path: {type: Exact, value: health}
      headers:
      - {name: "", value: x}
      - {type: Regex, name: "bad name", value: x}
      - {type: RegularExpression, name: x, value: "a(b"}
      queryParams: [{type: RegularExpression, name: "q:", value: "[z-a]"}]
    - path: {value: api}
    - path: {type: RegularExpression, value: "(?<x"}
    backendRefs:
    - {group: apps, kind: Deployment, name: "", port: 0, weight: 1000001}
    - {name: no-port}
    timeouts: {request: 1s, backendRequest: 1500ms}
  - timeouts: {request: 1x}
"#;
    let (m, b) = ("spec.rules[0].matches", "spec.rules[0].backendRefs");
    let bad_name = "is not a valid name (letters, digits and !#$%&'*+-.^_`|~)";
    let expected = [
        "spec.parentRefs[0].group: a Service parent needs group \"\" (core): without one the Gateway API means gateway.networking.k8s.io".to_string(),
        "spec.parentRefs[1].group: unsupported group \"apps\" for kind Service: use \"\" (core)".into(),
        "spec.parentRefs[2].name: required".into(),
        "spec.parentRefs[2].port: must be between 1 and 65535".into(),
        format!("{m}[0].path.type: unsupported path match type \"Prefix\": expected Exact, PathPrefix or RegularExpression"),
        format!("{m}[0].method: unsupported method \"get\": expected one of GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH"),
        format!("{m}[1].path.value: must start with \"/\""),
        format!("{m}[1].headers[0].name: required"),
        format!("{m}[1].headers[1].name: \"bad name\" {bad_name}"),
        format!("{m}[1].headers[1].type: unsupported match type \"Regex\": expected Exact or RegularExpression"),
        format!("{m}[1].headers[2].value: invalid regular expression \"a(b\": unclosed group"),
        format!("{m}[1].queryParams[0].name: \"q:\" {bad_name}"),
        format!("{m}[1].queryParams[0].value: invalid regular expression \"[z-a]\": invalid character class range, the start must be <= the end"),
        format!("{m}[2].path.value: must start with \"/\""),
        format!("{m}[3].path.value: invalid regular expression \"(?<x\": unclosed capture group name"),
        format!("{b}[0].group: unsupported group \"apps\": only \"\" (core) is supported"),
        format!("{b}[0].kind: unsupported kind \"Deployment\": only Service is supported"),
        format!("{b}[0].name: required"),
        format!("{b}[0].port: must be between 1 and 65535"),
        format!("{b}[0].weight: 1000001 is more than the maximum of 1000000"),
        format!("{b}[1].port: required for a Service backend"),
        "spec.rules[0].timeouts.backendRequest: must not exceed timeouts.request (1500ms > 1000ms)".into(),
        "spec.rules[1].timeouts.request: invalid duration \"1x\": expected 1 to 4 groups of up to 5 digits and a unit (h, m, s or ms), like \"1h30m\" or \"250ms\"".into(),
    ];
    assert_eq!(lines(convert(spec)), expected);
    let no_namespace = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
                        metadata: {name: r}\nspec: {}\n";
    assert_eq!(
        lines(http_route(&parse(no_namespace))),
        ["metadata.namespace: required"]
    );
}
