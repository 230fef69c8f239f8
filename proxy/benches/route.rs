//! HTTPRoute matching and weighted backend choice, per request.
//!
//! `cargo bench -p weft-proxy --bench route` (add `-- --quick` for a short run). The table
//! has 20 rules in three routes with every kind of match (exact, prefix, regex, method,
//! headers, query parameters); each request is one a mesh would see, with a handful of
//! ordinary headers.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use weft_api::proto::discovery::v1 as pb;
use weft_proxy::traffic::route::{Backend, Backends, RouteTable};

/// Counts allocations, so the benchmark can check that `select` and `pick` make none.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// `f`'s result, after checking that it did not allocate once warm: the first search with
/// a regex allocates its matching cache (once per thread), later ones reuse it.
fn without_allocating<T>(what: &str, mut f: impl FnMut() -> T) -> T {
    f();
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let result = f();
    assert_eq!(
        ALLOCATIONS.load(Ordering::Relaxed),
        before,
        "{what} allocated"
    );
    result
}

fn path(kind: pb::PathMatchKind, value: &str) -> Option<pb::PathMatch> {
    Some(pb::PathMatch {
        kind: kind as i32,
        value: value.into(),
    })
}

fn exact(value: &str) -> pb::RouteMatch {
    pb::RouteMatch {
        path: path(pb::PathMatchKind::Exact, value),
        ..Default::default()
    }
}

fn prefix(value: &str) -> pb::RouteMatch {
    pb::RouteMatch {
        path: path(pb::PathMatchKind::Prefix, value),
        ..Default::default()
    }
}

fn regex(value: &str) -> pb::RouteMatch {
    pb::RouteMatch {
        path: path(pb::PathMatchKind::Regex, value),
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

fn header(mut m: pb::RouteMatch, name: &str, v: &str, regex: bool) -> pb::RouteMatch {
    m.headers.push(value(name, v, regex));
    m
}

fn query(mut m: pb::RouteMatch, name: &str, v: &str, regex: bool) -> pb::RouteMatch {
    m.query_params.push(value(name, v, regex));
    m
}

fn method(mut m: pb::RouteMatch, method: &str) -> pb::RouteMatch {
    m.method = method.into();
    m
}

fn rule(name: &str, matches: Vec<pb::RouteMatch>) -> pb::RouteRule {
    pb::RouteRule {
        matches,
        backends: vec![
            pb::BackendRef {
                namespace: "shop".into(),
                name: format!("{name}-v1"),
                port: 80,
                weight: 90,
            },
            pb::BackendRef {
                namespace: "shop".into(),
                name: format!("{name}-v2"),
                port: 80,
                weight: 10,
            },
        ],
        request_timeout_ms: Some(10_000),
        backend_request_timeout_ms: None,
        name: name.into(),
    }
}

fn route(name: &str, rules: Vec<pb::RouteRule>) -> pb::HttpRoute {
    pb::HttpRoute {
        namespace: "shop".into(),
        name: name.into(),
        ports: vec![80],
        hostnames: Vec::new(),
        rules,
    }
}

/// 20 rules; `catch_all` adds a last rule without matches.
fn routes(catch_all: bool) -> Vec<pb::HttpRoute> {
    let mut last = vec![
        rule(
            "search",
            vec![query(prefix("/api/v1/search"), "q", ".+", true)],
        ),
        rule("login", vec![exact("/login")]),
        rule("docs", vec![prefix("/docs")]),
    ];
    if catch_all {
        last.push(rule("default", vec![]));
    }
    vec![
        route(
            "orders",
            vec![
                rule("health", vec![exact("/healthz")]),
                rule("orders-v1", vec![prefix("/api/v1/orders")]),
                rule(
                    "orders-canary",
                    vec![header(prefix("/api/v2/orders"), "x-canary", "true", false)],
                ),
                rule("items", vec![regex("/api/v[12]/orders/[0-9]+/items")]),
                rule("create", vec![method(prefix("/api/v1/orders"), "POST")]),
                rule("debug", vec![query(prefix("/api"), "debug", "1", false)]),
                rule(
                    "testers",
                    vec![header(prefix("/"), "x-user", "[a-z]+-[0-9]{3}", true)],
                ),
                rule("static", vec![prefix("/static")]),
                rule("status", vec![exact("/api/v1/status")]),
                rule("payments", vec![prefix("/api/v1/payments")]),
            ],
        ),
        route(
            "users",
            vec![
                rule("users", vec![prefix("/api/v1/users")]),
                rule("user", vec![regex("/api/v1/users/[0-9a-f]{8}")]),
                rule("delete", vec![method(prefix("/api/v1/users"), "DELETE")]),
                rule(
                    "tenant",
                    vec![header(prefix("/api/v1/users"), "x-tenant", "acme", false)],
                ),
                rule(
                    "pages",
                    vec![query(prefix("/api/v1/users"), "page", "[0-9]+", true)],
                ),
                rule("accounts", vec![prefix("/api/v1/accounts")]),
            ],
        ),
        route("default", last),
    ]
}

/// The headers of an ordinary request, plus `extra`.
fn headers(extra: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    let common = [
        ("host", "orders.shop.svc.cluster.local"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "application/json"),
        ("x-request-id", "5f0c9a1e-8b7d-4c2e-9f3a-1d2b3c4d5e6f"),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
    ];
    for (name, value) in common.iter().chain(extra) {
        map.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    map
}

fn select(c: &mut Criterion) {
    let table = RouteTable::compile(&routes(true), 80).unwrap();
    let no_default = RouteTable::compile(&routes(false), 80).unwrap();
    let plain = headers(&[]);
    let cases: [(&str, &RouteTable, Method, &str, HeaderMap, Option<&str>); 6] = [
        (
            "exact",
            &table,
            Method::GET,
            "/healthz",
            plain.clone(),
            Some("health"),
        ),
        (
            "prefix",
            &table,
            Method::GET,
            "/api/v1/users/abc/profile",
            plain.clone(),
            Some("users"),
        ),
        (
            "regex",
            &table,
            Method::GET,
            "/api/v1/orders/12345/items",
            plain.clone(),
            Some("items"),
        ),
        (
            "header",
            &table,
            Method::GET,
            "/api/v2/orders/9",
            headers(&[("x-canary", "true")]),
            Some("orders-canary"),
        ),
        (
            "catch_all",
            &table,
            Method::GET,
            "/something/else?x=1",
            plain.clone(),
            Some("default"),
        ),
        (
            "no_match",
            &no_default,
            Method::GET,
            "/something/else?x=1",
            plain.clone(),
            None,
        ),
    ];
    let mut group = c.benchmark_group("route_select");
    for (name, table, method, uri, headers, expected) in cases {
        let uri: Uri = uri.parse().unwrap();
        let chosen = without_allocating(name, || table.select(&method, &uri, &headers));
        assert_eq!(chosen.and_then(|r| r.rule_name.as_deref()), expected);
        group.bench_function(name, |b| {
            b.iter(|| {
                table
                    .select(black_box(&method), black_box(&uri), black_box(&headers))
                    .is_some()
            })
        });
    }
    group.finish();
}

fn pick(c: &mut Criterion) {
    let backend = |name: &str| Backend {
        namespace: "shop".into(),
        name: name.into(),
        port: 80,
    };
    let split: Backends = [(backend("v1"), 90), (backend("v2"), 10)]
        .into_iter()
        .collect();
    let single: Backends = [(backend("v1"), 1)].into_iter().collect();
    let mut rng = fastrand::Rng::with_seed(42);
    without_allocating("pick", || split.pick(&mut rng).map(|b| b.port));
    let mut group = c.benchmark_group("backends_pick");
    group.bench_function("90_10", |b| {
        b.iter(|| black_box(&split).pick(&mut rng).map(|b| b.port))
    });
    group.bench_function("single", |b| {
        b.iter(|| black_box(&single).pick(&mut rng).map(|b| b.port))
    });
    group.finish();
}

criterion_group!(benches, select, pick);
criterion_main!(benches);
