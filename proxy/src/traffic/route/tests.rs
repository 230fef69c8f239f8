use http::{HeaderMap, HeaderValue, Method, Uri};
use weft_api::proto::discovery::v1 as pb;

use super::*;

// ---- builders ----

fn route(name: &str, rules: Vec<pb::RouteRule>) -> pb::HttpRoute {
    pb::HttpRoute {
        namespace: "shop".into(),
        name: name.into(),
        ports: Vec::new(),
        hostnames: Vec::new(),
        rules,
    }
}

/// A rule named `name` with one backend of the same name, so a test sees which rule won.
fn rule(name: &str, matches: Vec<pb::RouteMatch>) -> pb::RouteRule {
    pb::RouteRule {
        matches,
        backends: vec![backend(name, 1)],
        request_timeout_ms: None,
        backend_request_timeout_ms: None,
        name: name.into(),
    }
}

fn backend(name: &str, weight: u32) -> pb::BackendRef {
    pb::BackendRef {
        namespace: "shop".into(),
        name: name.into(),
        port: 80,
        weight,
    }
}

fn path(kind: pb::PathMatchKind, value: &str) -> pb::RouteMatch {
    pb::RouteMatch {
        path: Some(pb::PathMatch {
            kind: kind as i32,
            value: value.into(),
        }),
        ..Default::default()
    }
}

fn exact(value: &str) -> pb::RouteMatch {
    path(pb::PathMatchKind::Exact, value)
}

fn prefix(value: &str) -> pb::RouteMatch {
    path(pb::PathMatchKind::Prefix, value)
}

fn regex(value: &str) -> pb::RouteMatch {
    path(pb::PathMatchKind::Regex, value)
}

fn value(name: &str, value: &str, regex: bool) -> pb::ValueMatch {
    pb::ValueMatch {
        name: name.into(),
        value: value.into(),
        regex,
    }
}

fn with_method(mut m: pb::RouteMatch, method: &str) -> pb::RouteMatch {
    m.method = method.into();
    m
}

fn with_headers(mut m: pb::RouteMatch, headers: &[(&str, &str, bool)]) -> pb::RouteMatch {
    m.headers = headers.iter().map(|(n, v, r)| value(n, v, *r)).collect();
    m
}

fn with_query(mut m: pb::RouteMatch, params: &[(&str, &str, bool)]) -> pb::RouteMatch {
    m.query_params = params.iter().map(|(n, v, r)| value(n, v, *r)).collect();
    m
}

fn table(routes: Vec<pb::HttpRoute>) -> RouteTable {
    RouteTable::compile(&routes, 80).expect("routes compile")
}

/// The name of the rule a request selects.
fn select(t: &RouteTable, method: &str, uri: &str, headers: &[(&str, &str)]) -> Option<String> {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let uri: Uri = uri.parse().unwrap();
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    t.select(&method, &uri, &map)
        .map(|r| r.rule_name.clone().unwrap_or_default())
}

fn get(t: &RouteTable, uri: &str) -> Option<String> {
    select(t, "GET", uri, &[])
}

fn some(name: &str) -> Option<String> {
    Some(name.to_owned())
}

// ---- precedence ----

#[test]
fn exact_path_beats_a_longer_prefix_listed_first() {
    let t = table(vec![route(
        "r",
        vec![
            rule("prefix", vec![prefix("/orders/123")]),
            rule("exact", vec![exact("/orders/123")]),
        ],
    )]);
    assert_eq!(get(&t, "/orders/123"), some("exact"));
    assert_eq!(get(&t, "/orders/123/items"), some("prefix"));
}

#[test]
fn longest_prefix_wins_over_list_order() {
    let t = table(vec![route(
        "r",
        vec![
            rule("short", vec![prefix("/api")]),
            rule("long", vec![prefix("/api/v2")]),
        ],
    )]);
    assert_eq!(get(&t, "/api/v2/users"), some("long"));
    assert_eq!(get(&t, "/api/v1/users"), some("short"));
}

#[test]
fn longest_prefix_wins_over_method_and_headers() {
    let t = table(vec![route(
        "r",
        vec![
            rule(
                "specific",
                vec![with_headers(
                    with_method(prefix("/api"), "GET"),
                    &[("x-a", "1", false)],
                )],
            ),
            rule("long", vec![prefix("/api/v2")]),
        ],
    )]);
    assert_eq!(select(&t, "GET", "/api/v2", &[("x-a", "1")]), some("long"));
}

#[test]
fn method_match_beats_more_headers_and_list_order() {
    let t = table(vec![route(
        "r",
        vec![
            rule(
                "headers",
                vec![with_headers(
                    prefix("/"),
                    &[("x-a", "1", false), ("x-b", "2", false)],
                )],
            ),
            rule("method", vec![with_method(prefix("/"), "POST")]),
        ],
    )]);
    let headers = [("x-a", "1"), ("x-b", "2")];
    assert_eq!(select(&t, "POST", "/", &headers), some("method"));
    assert_eq!(select(&t, "GET", "/", &headers), some("headers"));
}

#[test]
fn more_header_matches_beat_more_query_matches_and_list_order() {
    let t = table(vec![route(
        "r",
        vec![
            rule(
                "query",
                vec![with_query(
                    prefix("/"),
                    &[("a", "1", false), ("b", "2", false), ("c", "3", false)],
                )],
            ),
            rule(
                "one-header",
                vec![with_headers(prefix("/"), &[("x-a", "1", false)])],
            ),
            rule(
                "two-headers",
                vec![with_headers(
                    prefix("/"),
                    &[("x-a", "1", false), ("x-b", "2", false)],
                )],
            ),
        ],
    )]);
    let uri = "/?a=1&b=2&c=3";
    assert_eq!(
        select(&t, "GET", uri, &[("x-a", "1"), ("x-b", "2")]),
        some("two-headers")
    );
    assert_eq!(select(&t, "GET", uri, &[("x-a", "1")]), some("one-header"));
    assert_eq!(select(&t, "GET", uri, &[]), some("query"));
}

#[test]
fn more_query_matches_win_over_list_order() {
    let t = table(vec![route(
        "r",
        vec![
            rule("one", vec![with_query(prefix("/"), &[("a", "1", false)])]),
            rule(
                "two",
                vec![with_query(
                    prefix("/"),
                    &[("a", "1", false), ("b", "2", false)],
                )],
            ),
        ],
    )]);
    assert_eq!(get(&t, "/?a=1&b=2"), some("two"));
    assert_eq!(get(&t, "/?a=1"), some("one"));
}

#[test]
fn oldest_route_wins_a_tie_even_with_a_later_rule_index() {
    // The newer route's tying rule comes first in its list; the older route's second.
    let t = table(vec![
        route(
            "old",
            vec![
                rule("old-other", vec![exact("/nothing")]),
                rule("old", vec![prefix("/x")]),
            ],
        ),
        route("new", vec![rule("new", vec![prefix("/x")])]),
    ]);
    assert_eq!(get(&t, "/x"), some("old"));
    let r = RouteTable::compile(
        &[
            route("new", vec![rule("new", vec![prefix("/x")])]),
            route("old", vec![rule("old", vec![prefix("/x")])]),
        ],
        80,
    )
    .unwrap();
    assert_eq!(get(&r, "/x"), some("new"), "input order is age order");
}

#[test]
fn first_rule_wins_a_tie_within_a_route() {
    let t = table(vec![route(
        "r",
        vec![
            rule("first", vec![prefix("/x")]),
            rule("second", vec![prefix("/x")]),
        ],
    )]);
    assert_eq!(get(&t, "/x"), some("first"));
}

#[test]
fn precedence_is_per_match_not_per_rule() {
    // Rule "a" comes first but only its weak match fits; rule "b"'s exact match wins.
    let t = table(vec![route(
        "r",
        vec![
            rule("a", vec![exact("/other"), prefix("/")]),
            rule("b", vec![prefix("/nope"), exact("/x")]),
        ],
    )]);
    assert_eq!(get(&t, "/x"), some("b"));
    assert_eq!(get(&t, "/other"), some("a"));
}

#[test]
fn a_regex_outranks_every_prefix_and_yields_to_exact() {
    let t = table(vec![route(
        "r",
        vec![
            rule("catch-all", vec![prefix("/")]),
            rule("users", vec![prefix("/users")]),
            rule("by-id", vec![regex(r"/users/\d+")]),
            rule("me", vec![exact("/users/42")]),
        ],
    )]);
    assert_eq!(get(&t, "/users/7"), some("by-id"));
    assert_eq!(get(&t, "/users/42"), some("me"));
    assert_eq!(get(&t, "/users/me"), some("users"));
    assert_eq!(get(&t, "/"), some("catch-all"));
}

// ---- path ----

#[test]
fn prefix_matches_whole_segments() {
    let t = table(vec![route("r", vec![rule("foo", vec![prefix("/foo")])])]);
    for yes in ["/foo", "/foo/", "/foo/bar", "/foo/bar/baz", "/foo?x=1"] {
        assert_eq!(get(&t, yes), some("foo"), "{yes}");
    }
    for no in ["/foobar", "/fo", "/", "/bar/foo", "/Foo"] {
        assert_eq!(get(&t, no), None, "{no}");
    }
}

#[test]
fn a_trailing_slash_in_a_prefix_is_ignored() {
    let t = table(vec![route("r", vec![rule("foo", vec![prefix("/foo/")])])]);
    for yes in ["/foo", "/foo/", "/foo/bar"] {
        assert_eq!(get(&t, yes), some("foo"), "{yes}");
    }
    assert_eq!(get(&t, "/foobar"), None);
}

#[test]
fn prefix_slash_matches_every_path() {
    let t = table(vec![route("r", vec![rule("all", vec![prefix("/")])])]);
    for uri in ["/", "/a", "/a/b/c", "*"] {
        assert_eq!(get(&t, uri), some("all"), "{uri}");
    }
}

#[test]
fn exact_path_is_exact_and_ignores_the_query() {
    let t = table(vec![route("r", vec![rule("abc", vec![exact("/abc")])])]);
    assert_eq!(get(&t, "/abc"), some("abc"));
    assert_eq!(get(&t, "/abc?x=1"), some("abc"));
    for no in ["/abc/", "/Abc", "/abcd", "/ab"] {
        assert_eq!(get(&t, no), None, "{no}");
    }
}

#[test]
fn a_regex_must_match_the_whole_path() {
    let t = table(vec![route("r", vec![rule("re", vec![regex(r"/foo/\d+")])])]);
    assert_eq!(get(&t, "/foo/4"), some("re"));
    assert_eq!(get(&t, "/foo/4321?q=a"), some("re"));
    for no in ["/bar/foo/4", "/foo/4abc", "/foo/4/bar", "/foo/bar"] {
        assert_eq!(get(&t, no), None, "{no}");
    }
}

#[test]
fn regex_alternation_is_anchored_as_a_whole() {
    // `^a|b$` would match "/ax"; the group keeps both ends anchored for every branch.
    let t = table(vec![route("r", vec![rule("re", vec![regex("/a|/b")])])]);
    assert_eq!(get(&t, "/a"), some("re"));
    assert_eq!(get(&t, "/b"), some("re"));
    assert_eq!(get(&t, "/ax"), None);
    assert_eq!(get(&t, "/xb"), None);
}

#[test]
fn regex_dialect_is_ascii_and_accepts_common_syntax() {
    let t = table(vec![route(
        "r",
        vec![rule("re", vec![regex(r"(?i)/API/v[0-9]+/\w+\s?")])],
    )]);
    assert_eq!(get(&t, "/api/v2/users"), some("re"));
    let e = RouteTable::compile(&[route("r", vec![rule("re", vec![regex(r"/\p{L}+")])])], 80)
        .unwrap_err();
    assert!(e.reason.contains("invalid regular expression"), "{e}");
}

// ---- headers, query, method ----

#[test]
fn header_names_are_case_insensitive_values_are_not() {
    let t = table(vec![route(
        "r",
        vec![rule(
            "h",
            vec![with_headers(prefix("/"), &[("X-Canary", "Yes", false)])],
        )],
    )]);
    assert_eq!(select(&t, "GET", "/", &[("x-canary", "Yes")]), some("h"));
    assert_eq!(select(&t, "GET", "/", &[("X-CANARY", "Yes")]), some("h"));
    assert_eq!(select(&t, "GET", "/", &[("x-canary", "yes")]), None);
    assert_eq!(select(&t, "GET", "/", &[]), None);
}

#[test]
fn header_regex_matches_the_whole_value() {
    let t = table(vec![route(
        "r",
        vec![rule(
            "h",
            vec![with_headers(prefix("/"), &[("x-v", "v[12]", true)])],
        )],
    )]);
    assert_eq!(select(&t, "GET", "/", &[("x-v", "v2")]), some("h"));
    assert_eq!(select(&t, "GET", "/", &[("x-v", "v3")]), None);
    assert_eq!(select(&t, "GET", "/", &[("x-v", "v22")]), None);
    assert_eq!(select(&t, "GET", "/", &[("x-v", "xv1")]), None);
}

#[test]
fn a_repeated_header_is_matched_as_its_joined_values() {
    let t = table(vec![route(
        "r",
        vec![
            rule(
                "exact",
                vec![with_headers(prefix("/e"), &[("x-a", "1, 2", false)])],
            ),
            rule(
                "regex",
                vec![with_headers(prefix("/r"), &[("x-a", "1, [0-9]", true)])],
            ),
            rule(
                "cookie",
                vec![with_headers(prefix("/c"), &[("cookie", "a=1; b=2", false)])],
            ),
        ],
    )]);
    let twice = [("x-a", "1"), ("x-a", "2")];
    assert_eq!(select(&t, "GET", "/e", &twice), some("exact"));
    assert_eq!(select(&t, "GET", "/r", &twice), some("regex"));
    assert_eq!(select(&t, "GET", "/e", &[("x-a", "1")]), None);
    assert_eq!(
        select(&t, "GET", "/e", &[("x-a", "1"), ("x-a", "2"), ("x-a", "3")]),
        None
    );
    let crumbs = [("cookie", "a=1"), ("cookie", "b=2")];
    assert_eq!(select(&t, "GET", "/c", &crumbs), some("cookie"));
}

#[test]
fn only_the_first_entry_for_a_header_name_counts() {
    // The second entry for X-A is ignored, for matching and for precedence.
    let t = table(vec![route(
        "r",
        vec![
            rule(
                "one",
                vec![with_headers(prefix("/"), &[("x-b", "1", false)])],
            ),
            rule(
                "dup",
                vec![with_headers(
                    prefix("/"),
                    &[("x-a", "1", false), ("X-A", "2", false)],
                )],
            ),
        ],
    )]);
    assert_eq!(select(&t, "GET", "/", &[("x-a", "1")]), some("dup"));
    // One header match each, so list order decides: counting the duplicate would make
    // "dup" outrank "one".
    assert_eq!(
        select(&t, "GET", "/", &[("x-a", "1"), ("x-b", "1")]),
        some("one")
    );
}

#[test]
fn only_the_first_entry_for_a_query_param_name_counts() {
    let t = table(vec![route(
        "r",
        vec![
            rule("one", vec![with_query(prefix("/"), &[("b", "1", false)])]),
            rule(
                "dup",
                vec![with_query(
                    prefix("/"),
                    &[("a", "1", false), ("a", "2", false)],
                )],
            ),
        ],
    )]);
    assert_eq!(get(&t, "/?a=1"), some("dup"));
    assert_eq!(get(&t, "/?a=1&b=1"), some("one"));
}

#[test]
fn query_param_names_are_case_sensitive() {
    let t = table(vec![route(
        "r",
        vec![rule(
            "q",
            vec![with_query(prefix("/"), &[("Debug", "1", false)])],
        )],
    )]);
    assert_eq!(get(&t, "/?Debug=1"), some("q"));
    assert_eq!(get(&t, "/?debug=1"), None);
    assert_eq!(get(&t, "/?DEBUG=1"), None);
    assert_eq!(get(&t, "/?Debug=2"), None);
    assert_eq!(get(&t, "/"), None);
}

#[test]
fn query_values_are_decoded_and_the_first_occurrence_counts() {
    let t = table(vec![route(
        "r",
        vec![
            rule(
                "exact",
                vec![with_query(prefix("/e"), &[("q", "a b/c", false)])],
            ),
            rule(
                "regex",
                vec![with_query(prefix("/r"), &[("q", "a b.*", true)])],
            ),
            rule(
                "empty",
                vec![with_query(prefix("/n"), &[("flag", "", false)])],
            ),
        ],
    )]);
    assert_eq!(get(&t, "/e?x=1&q=a%20b%2Fc"), some("exact"));
    assert_eq!(get(&t, "/e?q=a+b/c"), some("exact"));
    assert_eq!(get(&t, "/e?q=a%20b%2fc&q=zzz"), some("exact"));
    assert_eq!(get(&t, "/e?q=zzz&q=a+b/c"), None, "the first value counts");
    assert_eq!(
        get(&t, "/e?%71=a+b/c"),
        some("exact"),
        "names are decoded too"
    );
    assert_eq!(get(&t, "/r?q=a%20bcd"), some("regex"));
    assert_eq!(get(&t, "/r?q=xa%20b"), None);
    assert_eq!(get(&t, "/n?flag"), some("empty"));
    assert_eq!(get(&t, "/n?flag=1"), None);
}

#[test]
fn method_is_matched_exactly() {
    let t = table(vec![route(
        "r",
        vec![rule("post", vec![with_method(prefix("/"), "POST")])],
    )]);
    assert_eq!(select(&t, "POST", "/", &[]), some("post"));
    assert_eq!(select(&t, "GET", "/", &[]), None);
    assert_eq!(select(&t, "PUT", "/", &[]), None);
}

#[test]
fn all_conditions_of_a_match_must_hold() {
    let m = with_query(
        with_headers(with_method(prefix("/a"), "GET"), &[("x-h", "1", false)]),
        &[("q", "1", false)],
    );
    let t = table(vec![route("r", vec![rule("all", vec![m])])]);
    assert_eq!(select(&t, "GET", "/a?q=1", &[("x-h", "1")]), some("all"));
    assert_eq!(select(&t, "POST", "/a?q=1", &[("x-h", "1")]), None);
    assert_eq!(select(&t, "GET", "/b?q=1", &[("x-h", "1")]), None);
    assert_eq!(select(&t, "GET", "/a?q=2", &[("x-h", "1")]), None);
    assert_eq!(select(&t, "GET", "/a?q=1", &[("x-h", "2")]), None);
}

#[test]
fn a_rule_without_matches_matches_everything_as_prefix_slash() {
    let t = table(vec![route(
        "r",
        vec![rule("default", vec![]), rule("api", vec![prefix("/api")])],
    )]);
    assert_eq!(get(&t, "/anything/at/all?x=1"), some("default"));
    assert_eq!(select(&t, "DELETE", "/", &[]), some("default"));
    // As `/`, it yields to a longer prefix listed after it.
    assert_eq!(get(&t, "/api/x"), some("api"));
}

#[test]
fn no_match_is_none() {
    let t = table(vec![route(
        "r",
        vec![rule("a", vec![prefix("/a")]), rule("b", vec![exact("/b")])],
    )]);
    assert!(!t.is_empty());
    assert_eq!(get(&t, "/c"), None);
    assert_eq!(get(&t, "/b/c"), None);
}

// ---- compile ----

#[test]
fn only_routes_for_the_port_or_for_every_port_are_compiled() {
    let mut on_80 = route("on-80", vec![rule("on-80", vec![prefix("/eighty")])]);
    on_80.ports = vec![80, 8080];
    let mut on_90 = route("on-90", vec![rule("on-90", vec![prefix("/")])]);
    on_90.ports = vec![90];
    let every = route("every", vec![rule("every", vec![prefix("/every")])]);
    let routes = [on_80, on_90, every];

    let t = RouteTable::compile(&routes, 80).unwrap();
    assert_eq!(get(&t, "/eighty"), some("on-80"));
    assert_eq!(get(&t, "/every"), some("every"));
    assert_eq!(get(&t, "/other"), None, "the port-90 route is not attached");

    let t = RouteTable::compile(&routes, 90).unwrap();
    assert_eq!(get(&t, "/eighty"), some("on-90"));
    let t = RouteTable::compile(&routes, 443).unwrap();
    assert_eq!(get(&t, "/every"), some("every"));
    assert_eq!(get(&t, "/eighty"), None);

    let only_90 = RouteTable::compile(&routes[1..2], 80).unwrap();
    assert!(only_90.is_empty());
}

#[test]
fn an_empty_list_compiles_to_an_empty_table() {
    let t = RouteTable::compile(&[], 80).unwrap();
    assert!(t.is_empty());
    assert_eq!(get(&t, "/"), None);
}

#[test]
fn a_bad_regex_is_an_error_naming_the_route_and_rule() {
    let routes = [
        route("good", vec![rule("fine", vec![prefix("/")])]),
        route(
            "bad",
            vec![
                rule("ok", vec![prefix("/")]),
                rule(
                    "broken",
                    vec![with_headers(prefix("/"), &[("x-a", "a(b", true)])],
                ),
            ],
        ),
    ];
    let e = RouteTable::compile(&routes, 80).unwrap_err();
    assert_eq!(e.route.to_string(), "shop/bad");
    assert_eq!(e.rule, 1);
    assert_eq!(e.rule_name.as_deref(), Some("broken"));
    assert_eq!(
        e.to_string(),
        "HTTPRoute shop/bad rule 1 (broken): matches[0].headers[0].value: invalid regular \
         expression \"a(b\": unclosed group"
    );
    let e = RouteTable::compile(&[route("p", vec![rule("", vec![regex("[")])])], 80).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("HTTPRoute shop/p rule 0: matches[0].path: invalid"),
        "{e}"
    );
    let e = RouteTable::compile(
        &[route(
            "q",
            vec![rule(
                "q",
                vec![with_query(prefix("/"), &[("a", "*", true)])],
            )],
        )],
        80,
    )
    .unwrap_err();
    assert!(
        e.reason.starts_with("matches[0].queryParams[0].value"),
        "{e}"
    );
}

#[test]
fn other_untrusted_input_is_an_error_not_a_panic() {
    let bad = |m: pb::RouteMatch| {
        RouteTable::compile(&[route("r", vec![rule("x", vec![m])])], 80).unwrap_err()
    };
    let mut unknown = prefix("/");
    unknown.path.as_mut().unwrap().kind = 42;
    assert!(bad(unknown).reason.contains("unsupported kind 42"));
    assert!(bad(with_method(prefix("/"), "G T"))
        .reason
        .contains("invalid method"));
    assert!(bad(with_headers(prefix("/"), &[("bad name", "1", false)]))
        .reason
        .contains("invalid header name"));
    let mut r = rule("x", vec![]);
    r.backends[0].port = 70000;
    let e = RouteTable::compile(&[route("r", vec![r])], 80).unwrap_err();
    assert!(e.reason.contains("backends[0].port"), "{e}");
}

#[test]
fn a_match_without_a_path_is_prefix_slash() {
    let t = table(vec![route(
        "r",
        vec![rule(
            "m",
            vec![with_method(pb::RouteMatch::default(), "GET")],
        )],
    )]);
    assert_eq!(get(&t, "/any/thing"), some("m"));
}

#[test]
fn rule_fields_come_from_the_wire() {
    let mut r = rule("", vec![]);
    r.request_timeout_ms = Some(0);
    r.backend_request_timeout_ms = Some(1500);
    let mut unset = rule("named", vec![prefix("/u")]);
    unset.backends = vec![];
    let t = table(vec![route("orders", vec![r, unset])]);
    let m = HeaderMap::new();
    let chosen = t.select(&Method::GET, &"/".parse().unwrap(), &m).unwrap();
    assert_eq!(chosen.route.to_string(), "shop/orders");
    assert_eq!(chosen.rule_name, None);
    assert_eq!(chosen.request_timeout, Some(None), "0s: no timeout");
    assert_eq!(
        chosen.backend_request_timeout,
        Some(Some(Duration::from_millis(1500)))
    );
    let u = t.select(&Method::GET, &"/u".parse().unwrap(), &m).unwrap();
    assert_eq!(u.rule_name.as_deref(), Some("named"));
    assert_eq!((u.request_timeout, u.backend_request_timeout), (None, None));
    assert_eq!(u.backends.pick(&mut fastrand::Rng::with_seed(1)), None);
    assert_eq!(t.rules().len(), 2);
}

// ---- backends ----

fn backends(weights: &[(&str, u32)]) -> Backends {
    let refs: Vec<_> = weights.iter().map(|(n, w)| backend(n, *w)).collect();
    Backends::compile(&refs).unwrap()
}

#[test]
fn a_90_10_split_lands_within_a_point() {
    let b = backends(&[("v1", 90), ("v2", 10)]);
    let mut rng = fastrand::Rng::with_seed(7);
    let n = 100_000;
    let v2 = (0..n)
        .filter(|_| b.pick(&mut rng).unwrap().name == "v2")
        .count();
    let share = v2 as f64 * 100.0 / n as f64;
    assert!((9.0..=11.0).contains(&share), "v2 got {share:.2}%");
}

#[test]
fn weight_zero_is_never_picked() {
    let b = backends(&[("zero", 0), ("one", 1), ("also-zero", 0), ("three", 3)]);
    let mut rng = fastrand::Rng::with_seed(3);
    let mut seen = [0usize; 2];
    for _ in 0..10_000 {
        match b.pick(&mut rng).unwrap().name.as_str() {
            "one" => seen[0] += 1,
            "three" => seen[1] += 1,
            other => panic!("picked {other}"),
        }
    }
    assert!(seen[0] > 2_000 && seen[1] > 7_000, "{seen:?}");
    assert_eq!(b.all().len(), 4, "all() lists weight-0 backends too");
}

#[test]
fn all_zero_or_no_backends_pick_none() {
    let mut rng = fastrand::Rng::with_seed(1);
    assert_eq!(backends(&[("a", 0), ("b", 0)]).pick(&mut rng), None);
    assert_eq!(backends(&[]).pick(&mut rng), None);
}

#[test]
fn a_single_weighted_backend_is_always_picked() {
    let b = backends(&[("a", 0), ("only", 5)]);
    let mut rng = fastrand::Rng::with_seed(1);
    assert!((0..100).all(|_| b.pick(&mut rng).unwrap().name == "only"));
}

#[test]
fn large_weights_do_not_overflow() {
    let b = backends(&[("a", u32::MAX), ("b", u32::MAX), ("c", 1)]);
    let mut rng = fastrand::Rng::with_seed(1);
    for _ in 0..1000 {
        assert!(b.pick(&mut rng).is_some());
    }
}

#[test]
fn backends_from_an_iterator() {
    let b: Backends = [(
        Backend {
            namespace: "shop".into(),
            name: "orders".into(),
            port: 8080,
        },
        1,
    )]
    .into_iter()
    .collect();
    let picked = b.pick(&mut fastrand::Rng::with_seed(1)).unwrap();
    assert_eq!((picked.name.as_str(), picked.port), ("orders", 8080));
}
