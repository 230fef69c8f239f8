//! Patterns, labels, the no-view policy, and the promise that the allow path does not
//! allocate.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use super::support::*;
use crate::authz::*;

#[test]
fn patterns_parse() {
    let ok = [
        ("*", Pattern::Any),
        ("GET", Pattern::Exact("GET".into())),
        ("/api/*", Pattern::Prefix("/api/".into())),
        ("*.css", Pattern::Suffix(".css".into())),
    ];
    for (text, want) in ok {
        let got: Pattern = text.parse().unwrap();
        assert_eq!(got, want, "{text}");
        assert_eq!(got.to_string(), text, "Display round-trips");
    }
    let bad = [
        ("", PatternError::Empty),
        ("**", PatternError::Wildcard),
        ("***", PatternError::Wildcard),
        ("a*b", PatternError::Wildcard),
        ("*a*", PatternError::Wildcard),
        ("a**", PatternError::Wildcard),
    ];
    for (text, want) in bad {
        assert_eq!(text.parse::<Pattern>(), Err(want), "{text:?}");
    }
}

#[test]
fn patterns_match() {
    let p = |s: &str| s.parse::<Pattern>().unwrap();
    let cases = [
        ("*", "", true),
        ("*", "anything", true),
        ("GET", "GET", true),
        ("GET", "get", false),
        ("GET", "GETX", false),
        ("/api*", "/api", true),
        ("/api*", "/api/v1", true),
        ("/api*", "/ap", false),
        ("/api*", "/v1/api", false),
        ("*.css", ".css", true),
        ("*.css", "/a/b.css", true),
        ("*.css", "/a.css/x", false),
    ];
    for (pattern, value, want) in cases {
        assert_eq!(p(pattern).matches(value), want, "{pattern:?} on {value:?}");
    }
}

#[test]
fn labels() {
    let policy = PolicyRef {
        namespace: "shop".into(),
        name: "deny-admin".into(),
    };
    assert_eq!(policy.to_string(), "shop/deny-admin");
    assert_eq!(DecidedBy::Policy(policy).label(), "shop/deny-admin");
    assert_eq!(DecidedBy::Default(DefaultPolicy::Deny).label(), "default");
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap()
}

#[test]
fn serialized_like_the_crd() {
    assert_eq!(json(&Action::Allow), "\"ALLOW\"");
    assert_eq!(json(&Action::Audit), "\"AUDIT\"");
    assert_eq!(json(&DefaultPolicy::Authenticated), "\"authenticated\"");
    let policy = PolicyRef {
        namespace: "a".into(),
        name: "b".into(),
    };
    assert_eq!(json(&policy), r#"{"namespace":"a","name":"b"}"#);
}

#[test]
fn allow_all_allows_everything() {
    let policy = WorkloadPolicy::allow_all();
    for req in [get("/"), get("/").plaintext(), tcp().plaintext().port(1)] {
        let decision = req.eval(&policy);
        let want = Decision {
            allowed: true,
            decided_by: DecidedBy::Default(DefaultPolicy::Allow),
            recorded: vec![],
        };
        assert_eq!(decision, want, "{req:?}");
    }
}

/// Counts this thread's allocations so that tests running in parallel do not interfere.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations(f: impl FnOnce() -> Decision) -> (usize, Decision) {
    let before = ALLOCATIONS.with(Cell::get);
    let decision = f();
    (ALLOCATIONS.with(Cell::get) - before, decision)
}

#[test]
fn the_allow_path_does_not_allocate() {
    // Every kind of matcher is exercised (and misses) before the default allows; a dry-run
    // DENY forces the shadow pass, which allows too.
    let policy = workload(
        AUTHN,
        vec![
            deny("shop/d", [rule().principals(&[ADMIN]).ports(&[9090])]),
            deny(
                "shop/e",
                [rule()
                    .namespaces(&["ops"])
                    .or_from()
                    .not_principals(&["spiffe://*"])],
            ),
            deny(
                "shop/f",
                [rule()
                    .principals(&[ADMIN])
                    .methods(&["DELETE"])
                    .or_to()
                    .paths(&["/admin*"])],
            ),
            deny(
                "shop/g",
                [rule()
                    .namespaces(&["shop"])
                    .when("x-user", &["evil*"], &["good"])],
            ),
            dry(deny("shop/h", [rule().ports(&[8080]).not_paths(&["*"])])),
            audit(
                "shop/i",
                [rule().namespaces(&["shop"]).when("x-audit", &["*"], &[])],
            ),
        ],
    );
    let requests = [
        get("/api/orders?page=2").header("x-user", "good"),
        get("/").header("x-user", "alice").header("x-user", "bob"),
        tcp().by(ODD).port(8081),
    ];
    for req in requests {
        let (allocated, decision) = {
            // Build the borrowed request outside the measured region.
            let caller = req.caller_id();
            let headers = req.headers();
            let request = req.request(caller.as_ref(), &headers);
            allocations(|| policy.evaluate(&request))
        };
        assert!(decision.allowed, "{req:?}: {decision:?}");
        assert_eq!(decision.decided_by, DecidedBy::Default(AUTHN));
        assert_eq!(allocated, 0, "{req:?} allocated");
    }
    // The counter works: recording allocates.
    let req = get("/").header("x-audit", "1");
    let (caller, headers) = (req.caller_id(), req.headers());
    let request = req.request(caller.as_ref(), &headers);
    let (allocated, decision) = allocations(|| policy.evaluate(&request));
    assert_eq!(decision.recorded.len(), 1);
    assert!(allocated > 0);
}
