//! The publisher against a fake API server ([`fake`]): the same kind of mock as the Kubernetes
//! source's tests, which keeps the ConfigMaps and echoes every write on the watch as the API
//! server does. Everything on our side of the HTTP request — kube-runtime's watcher, the
//! apply, the backoff, the board and the metrics — is the real code.
//!
//! Time is paused: retries happen at exact virtual instants, and "nothing happens" is
//! checked by letting [`SETTLE`] of virtual time pass. Every wait is bounded by [`TIMEOUT`].

use serde_json::{json, Value};
use tempfile::TempDir;

use super::*;
use crate::ca::{self, Ca};
use crate::state::decode;

mod fake;

use fake::{FakeApiServer, Request, COLLECTION};

const TIMEOUT: Duration = Duration::from_secs(30);
/// Longer than anything the publisher would do by itself (virtual time).
const SETTLE: Duration = Duration::from_secs(600);

/// A CA generated in a temporary directory (as local mode does).
struct TestCa {
    dir: TempDir,
}

impl TestCa {
    fn new() -> Self {
        TestCa {
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    fn authority(&self) -> Authority {
        ca::local::load_or_create(self.dir.path(), "cluster.local").expect("a CA")
    }

    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).expect("a CA file")
    }
}

/// A running publisher over the fake API server.
struct Harness {
    server: FakeApiServer,
    states: watch::Sender<Arc<State>>,
    ca: Arc<Ca>,
    first_ca: TestCa,
    board: Arc<ProblemBoard>,
    metrics: PublishMetrics,
    _publisher: TrustAnchorPublisher,
}

fn start(server: &FakeApiServer) -> Harness {
    start_with(server, TestCa::new())
}

fn start_with(server: &FakeApiServer, first_ca: TestCa) -> Harness {
    let ca = Arc::new(Ca::new(first_ca.authority(), ca::DEFAULT_LIFETIME));
    let (states, receiver) = watch::channel(Arc::new(State::default()));
    let board = Arc::new(ProblemBoard::default());
    let metrics = PublishMetrics::register(&mut Metrics::default());
    let client = kube::Client::new(server.clone(), "default");
    let publisher = run(
        client,
        receiver,
        ca.subscribe(),
        board.clone(),
        metrics.clone(),
    );
    Harness {
        server: server.clone(),
        states,
        ca,
        first_ca,
        board,
        metrics,
        _publisher: publisher,
    }
}

impl Harness {
    fn publish(&self, state: State) {
        self.states.send_replace(Arc::new(state));
    }

    fn pem(&self) -> String {
        self.ca.authority().trust_bundle_pem()
    }

    /// Every PATCH so far, once there are at least `count`.
    async fn patches(&self, count: usize) -> Vec<Request> {
        let mut patches = self.server.patches.subscribe();
        tokio::time::timeout(TIMEOUT, patches.wait_for(|n| *n >= count))
            .await
            .unwrap_or_else(|_| {
                panic!("expected {count} PATCHes, got {:#?}", self.server.patches())
            })
            .expect("the server is alive");
        self.server.patches()
    }

    /// Lets the publisher do whatever it would do by itself, then says that it sent no
    /// PATCH beyond the first `count`.
    async fn no_more_patches(&self, count: usize) {
        tokio::time::sleep(SETTLE).await;
        let patches = self.server.patches();
        assert_eq!(
            patches.len(),
            count,
            "unexpected PATCHes: {:#?}",
            &patches[count.min(patches.len())..]
        );
    }

    async fn eventually(&self, what: &str, mut check: impl FnMut(&Harness) -> bool) {
        let done = tokio::time::timeout(TIMEOUT, async {
            while !check(self) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        done.unwrap_or_else(|_| {
            panic!(
                "timed out waiting for {what}; the board has {:?}",
                self.board.all()
            )
        });
    }
}

fn namespace(name: &str, labels: Value, terminating: bool) -> Value {
    let mut namespace = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": labels}});
    if terminating {
        namespace["metadata"]["deletionTimestamp"] = json!("2025-06-03T10:00:00Z");
        namespace["status"] = json!({"phase": "Terminating"});
    }
    namespace
}

fn pod(namespace: &str, name: &str, injected: bool) -> Value {
    let annotations = if injected {
        json!({"weft.dev/status": r#"{"version":"0.1.0","sidecar":"native"}"#})
    } else {
        json!({})
    };
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]}})
}

fn state_of(objects: &[Value]) -> State {
    let mut state = State::default();
    for object in objects {
        let (key, object) = decode(object.clone()).expect("a valid object");
        state.insert(&key, object);
    }
    state
}

/// `shop` is labelled, `payments` has an injected pod; the others are not meshed.
fn cluster() -> Vec<Value> {
    vec![
        namespace("shop", json!({"weft.dev/inject": "enabled"}), false),
        namespace("payments", json!({}), false),
        namespace("plain", json!({}), false),
        namespace("legacy", json!({"weft.dev/inject": "disabled"}), false),
        namespace("leaving", json!({"weft.dev/inject": "enabled"}), true),
        pod("shop", "web-0", true),
        pod("payments", "api-0", true),
        pod("plain", "job-0", false),
        pod("leaving", "old-0", true),
    ]
}

fn expected_body(namespace: &str, pem: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "weft-trust-anchors",
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/managed-by": "weft",
                "app.kubernetes.io/name": "weft-trust-anchors",
                "app.kubernetes.io/part-of": "weft",
            },
        },
        "data": {"ca.crt": pem},
    })
}

#[track_caller]
fn assert_apply(request: &Request, namespace: &str, pem: &str) {
    assert_eq!(request.method, "PATCH");
    assert_eq!(
        request.path,
        format!("/api/v1/namespaces/{namespace}/configmaps/weft-trust-anchors")
    );
    assert_eq!(
        request.sorted_query(),
        "fieldManager=weft-control-plane&force=true"
    );
    assert_eq!(
        request.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert_eq!(request.body, expected_body(namespace, pem));
}

/// `patches` sorted by namespace (those in flight together have no order).
fn by_namespace(patches: &[Request]) -> Vec<Request> {
    let mut patches = patches.to_vec();
    patches.sort_by(|a, b| a.path.cmp(&b.path));
    patches
}

#[tokio::test(start_paused = true)]
async fn meshed_namespaces_get_the_trust_anchors_and_no_other_does() {
    let server = FakeApiServer::new();
    let harness = start(&server);

    // Nothing before the source's first state: an empty cluster is not "nothing meshed".
    harness.no_more_patches(0).await;
    let requests = server.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.method == "GET" && r.path == COLLECTION),
        "{requests:#?}"
    );
    for request in &requests {
        assert!(
            request
                .query
                .contains("fieldSelector=metadata.name%3Dweft-trust-anchors"),
            "only our ConfigMaps are listed and watched: {request:?}"
        );
    }

    harness.publish(state_of(&cluster()));
    let patches = by_namespace(&harness.patches(2).await);
    let pem = harness.pem();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    assert_apply(&patches[0], "payments", &pem);
    assert_apply(&patches[1], "shop", &pem);
    harness.no_more_patches(2).await;

    assert!(server
        .requests()
        .iter()
        .all(|r| r.method == "GET" || r.is_patch()));
    assert_eq!(harness.metrics.applies("ok"), 2);
    assert_eq!(harness.metrics.applies("error"), 0);
    assert!(harness.board.all().is_empty(), "{:?}", harness.board.all());
}

#[tokio::test(start_paused = true)]
async fn nothing_is_rewritten_when_nothing_changed() {
    let server = FakeApiServer::new();
    let harness = start(&server);
    harness.publish(state_of(&cluster()));
    harness.patches(2).await;
    // The watch has echoed both writes; now other changes that leave the anchors alone:
    // more pods, a namespace gaining an unrelated label, the same CA loaded again.
    let mut objects = cluster();
    objects.push(pod("shop", "web-1", true));
    objects.push(pod("payments", "api-1", true));
    objects[2] = namespace("plain", json!({"team": "platform"}), false);
    harness.publish(state_of(&objects));
    harness.ca.replace(harness.first_ca.authority());
    harness.no_more_patches(2).await;

    // A namespace that stops being meshed keeps its ConfigMap (no DELETE, no PATCH), and
    // when it is meshed again the ConfigMap is still current.
    let unmeshed: Vec<Value> = cluster()
        .into_iter()
        .filter(|o| o["metadata"]["name"] != "api-0")
        .collect();
    harness.publish(state_of(&unmeshed));
    harness.no_more_patches(2).await;
    harness.publish(state_of(&cluster()));
    harness.no_more_patches(2).await;
    assert!(server
        .requests()
        .iter()
        .all(|r| r.method == "GET" || r.is_patch()));
    assert_eq!(server.with(|c| c.objects.len()), 2);
}

#[tokio::test(start_paused = true)]
async fn a_new_trust_bundle_is_applied_in_every_meshed_namespace() {
    let server = FakeApiServer::new();
    let harness = start(&server);
    harness.publish(state_of(&cluster()));
    harness.patches(2).await;

    // Rotation, step 1: the bundle gets the new root next to the old one.
    let new_root = TestCa::new();
    drop(new_root.authority()); // generates the new root's files
    let old_root = harness.first_ca.file("ca.crt");
    let bundle = format!("{old_root}{}", new_root.file("ca.crt"));
    let rotated = Authority::from_pem(&old_root, &harness.first_ca.file("ca.key"), &bundle)
        .expect("the old issuer under a two-root bundle");
    harness.ca.replace(rotated);
    let pem = harness.pem();
    assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 2);

    let patches = harness.patches(4).await;
    let rotated = by_namespace(&patches[2..]);
    assert_apply(&rotated[0], "payments", &pem);
    assert_apply(&rotated[1], "shop", &pem);
    harness.no_more_patches(4).await;
    assert_eq!(harness.metrics.applies("ok"), 4);
}

#[tokio::test(start_paused = true)]
async fn a_failed_apply_is_retried_with_backoff_and_holds_up_no_other_namespace() {
    let server = FakeApiServer::new();
    server.fail("shop", &[500, 500]);
    let harness = start(&server);
    harness.publish(state_of(&cluster()));
    let pem = harness.pem();

    let first = by_namespace(&harness.patches(2).await);
    assert_apply(&first[0], "payments", &pem);
    assert_apply(&first[1], "shop", &pem);
    // payments went out with shop's first attempt, not after its retries.
    assert_eq!(first[0].at, first[1].at);
    harness
        .eventually("the failure on the board", |h| !h.board.all().is_empty())
        .await;
    let problems = harness.board.all();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].source, "trust-anchors");
    assert_eq!(
        problems[0].object.as_deref(),
        Some("ConfigMap shop/weft-trust-anchors")
    );
    assert!(
        problems[0]
            .message
            .contains("etcdserver: request timed out"),
        "{problems:?}"
    );
    assert!(!problems[0].kept_last_good);

    // 1 s after the first failure, then 2 s after the second.
    let patches = harness.patches(4).await;
    assert_apply(&patches[2], "shop", &pem);
    assert_apply(&patches[3], "shop", &pem);
    let waited = |a: &Request, b: &Request| b.at.duration_since(a.at);
    let (first_retry, second_retry) = (
        waited(&first[1], &patches[2]),
        waited(&patches[2], &patches[3]),
    );
    assert!(
        first_retry >= backoff(1) && first_retry < backoff(1) + Duration::from_millis(20),
        "{first_retry:?}"
    );
    assert!(
        second_retry >= backoff(2) && second_retry < backoff(2) + Duration::from_millis(20),
        "{second_retry:?}"
    );
    assert_eq!(backoff(2), Duration::from_secs(2));
    harness
        .eventually("the board cleared", |h| h.board.all().is_empty())
        .await;
    harness.no_more_patches(4).await;
    assert_eq!(harness.metrics.applies("ok"), 2);
    assert_eq!(harness.metrics.applies("error"), 2);
}

#[tokio::test(start_paused = true)]
async fn a_deleted_or_edited_config_map_is_put_back() {
    let server = FakeApiServer::new();
    let harness = start(&server);
    harness.publish(state_of(&cluster()));
    harness.patches(2).await;
    let pem = harness.pem();

    server.delete("shop");
    let patches = harness.patches(3).await;
    assert_apply(&patches[2], "shop", &pem);
    harness.no_more_patches(3).await;

    // Someone edits the anchors, or strips our labels.
    server.edit(
        "payments",
        json!({}),
        json!({"ca.crt": "not a certificate"}),
    );
    let patches = harness.patches(4).await;
    assert_apply(&patches[3], "payments", &pem);
    server.edit(
        "shop",
        json!({"app.kubernetes.io/managed-by": "someone-else"}),
        json!({}),
    );
    let patches = harness.patches(5).await;
    assert_apply(&patches[4], "shop", &pem);
    harness.no_more_patches(5).await;

    // Outside the mesh, a deletion is none of our business.
    server.edit("plain", json!({}), json!({"ca.crt": "copied by hand"}));
    server.delete("plain");
    harness.no_more_patches(5).await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_rewrites_only_what_is_not_current() {
    let server = FakeApiServer::new();
    let first_ca = TestCa::new();
    let pem = first_ca.authority().trust_bundle_pem();
    // What a previous control plane left: shop's ConfigMap is current and ours; payments'
    // is the copy an older `weftctl install --mesh-namespace` made, without our labels.
    let ours = json!({
        "app.kubernetes.io/managed-by": "weft",
        "app.kubernetes.io/name": "weft-trust-anchors",
        "app.kubernetes.io/part-of": "weft",
    });
    server.edit("shop", ours, json!({"ca.crt": pem}));
    let install = json!({
        "app.kubernetes.io/name": "weft-trust-anchors",
        "app.kubernetes.io/part-of": "weft",
        "app.kubernetes.io/version": "0.1.0",
    });
    server.edit("payments", install, json!({"ca.crt": pem}));

    let harness = start_with(&server, first_ca);
    harness.publish(state_of(&cluster()));
    let patches = harness.patches(1).await;
    assert_apply(&patches[0], "payments", &pem);
    harness.no_more_patches(1).await;
}

#[test]
fn meshed_means_labelled_or_holding_an_injected_pod_and_not_being_deleted() {
    let meshed = meshed_namespaces(&state_of(&cluster()));
    assert_eq!(meshed.into_iter().collect::<Vec<_>>(), ["payments", "shop"]);
    // A pod's namespace counts even when the Namespace itself is not (yet) known.
    let meshed = meshed_namespaces(&state_of(&[pod("orphan", "p", true)]));
    assert!(meshed.contains("orphan"));
    // The label's value must be exactly `enabled`, as the webhook's selector wants.
    let meshed = meshed_namespaces(&state_of(&[namespace(
        "x",
        json!({"weft.dev/inject": "true"}),
        false,
    )]));
    assert!(meshed.is_empty());
}

#[test]
fn backoff_doubles_up_to_its_limit() {
    let delays: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
    assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 120, 120]);
    assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
}

#[test]
fn the_metric_has_both_results_from_the_start() {
    let mut registry = Metrics::default();
    let metrics = PublishMetrics::register(&mut registry);
    metrics
        .applies
        .get_or_create(&ResultLabel { result: "ok" })
        .inc();
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
    assert!(
        text.contains("# TYPE weft_cp_trust_anchor_applies counter"),
        "{text}"
    );
    assert!(
        text.contains(r#"weft_cp_trust_anchor_applies_total{result="ok"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"weft_cp_trust_anchor_applies_total{result="error"} 0"#),
        "{text}"
    );
}

/// Refuses every token: this test never certifies anything.
struct NoTokens;

impl crate::auth::Authenticator for NoTokens {
    fn authenticate<'a>(&'a self, _token: &'a str) -> crate::auth::AuthFuture<'a> {
        Box::pin(async { Err(crate::auth::AuthError::Invalid("no tokens here".into())) })
    }
}

/// The whole control plane in Kubernetes mode publishes too (real time: it serves sockets).
#[tokio::test]
async fn the_control_plane_publishes_in_kubernetes_mode() {
    let server = FakeApiServer::new();
    let namespaces = json!({
        "kind": "NamespaceList", "apiVersion": "v1", "metadata": {"resourceVersion": "48210"},
        "items": [
            {"metadata": {"name": "shop", "labels": {"weft.dev/inject": "enabled"}},
             "status": {"phase": "Active"}},
            {"metadata": {"name": "plain"}, "status": {"phase": "Active"}},
        ],
    });
    server.with(|c| c.lists.insert("/api/v1/namespaces".into(), namespaces));
    let state_dir = tempfile::tempdir().expect("a temporary directory");
    let mut config = crate::Config::local(state_dir.path(), state_dir.path().join("no-tokens"));
    config.auth = crate::AuthSource::Custom(Arc::new(NoTokens));
    config.source = Some(crate::Source::KubernetesClient(kube::Client::new(
        server.clone(),
        "default",
    )));
    let running = crate::start(config)
        .await
        .expect("the control plane starts");

    let mut patches = server.patches.subscribe();
    tokio::time::timeout(TIMEOUT, patches.wait_for(|n| *n >= 1))
        .await
        .expect("a PATCH in time")
        .expect("the server is alive");
    let patches = server.patches();
    assert_eq!(patches.len(), 1, "{patches:#?}");
    assert_apply(&patches[0], "shop", &running.trust_bundle_pem());
    assert!(running.problems().is_empty(), "{:?}", running.problems());
    running.shutdown().await.expect("shuts down");
}
