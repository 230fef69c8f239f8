//! The Kubernetes source against a fake API server.
//!
//! This is the one mock the project allows: no API server can run here, so a hand-written
//! `tower::Service` stands in for one behind a real `kube::Client`. It answers each kind's
//! list with a recorded API-server response (`fixtures/`, in the exact shape the API server
//! sends: `v1.PodList` and friends, whose items carry no apiVersion or kind for built-in
//! kinds, and a `v1.Status` 404 for a resource that is not served) and each watch with a
//! stream of `WatchEvent` lines the test writes (also from `fixtures/`). Everything on our
//! side of the HTTP request — kube-runtime's watcher with its relist protocol and backoff,
//! decoding, the publish gate and coalescing, the problem board — is the real code.
//!
//! Every wait is bounded by [`TIMEOUT`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::UnboundedReceiverStream;
use weft_api::crd::PolicyAction;

use super::*;
use crate::state::NamespacedName;

const TIMEOUT: Duration = Duration::from_secs(10);

/// A recorded response body by name.
fn fixture(name: &str) -> &'static str {
    match name {
        "namespaces" => include_str!("fixtures/namespaces.json"),
        "pods" => include_str!("fixtures/pods.json"),
        "services" => include_str!("fixtures/services.json"),
        "endpointslices" => include_str!("fixtures/endpointslices.json"),
        "serviceaccounts" => include_str!("fixtures/serviceaccounts.json"),
        "authorizationpolicies" => include_str!("fixtures/authorizationpolicies.json"),
        "trafficpolicies" => include_str!("fixtures/trafficpolicies.json"),
        "httproutes" => include_str!("fixtures/httproutes.json"),
        "not-found" => include_str!("fixtures/not-found.json"),
        "gone" => include_str!("fixtures/gone.json"),
        "pod-added" => include_str!("fixtures/pod-added.json"),
        "service-modified" => include_str!("fixtures/service-modified.json"),
        "serviceaccount-deleted" => include_str!("fixtures/serviceaccount-deleted.json"),
        "policy-unknown-field" => include_str!("fixtures/policy-unknown-field.json"),
        "policy-wrong-type" => include_str!("fixtures/policy-wrong-type.json"),
        "policy-fixed" => include_str!("fixtures/policy-fixed.json"),
        other => panic!("no fixture {other}"),
    }
}

/// Where the API server serves each kind cluster-wide, written out rather than derived from
/// [`api_resource`] so that a wrong group or plural fails here.
fn collection(kind: Kind) -> &'static str {
    match kind {
        Kind::Namespace => "/api/v1/namespaces",
        Kind::Pod => "/api/v1/pods",
        Kind::Service => "/api/v1/services",
        Kind::EndpointSlice => "/apis/discovery.k8s.io/v1/endpointslices",
        Kind::ServiceAccount => "/api/v1/serviceaccounts",
        Kind::AuthorizationPolicy => "/apis/policy.weft.dev/v1alpha1/authorizationpolicies",
        Kind::TrafficPolicy => "/apis/policy.weft.dev/v1alpha1/trafficpolicies",
        Kind::HTTPRoute => "/apis/gateway.networking.k8s.io/v1/httproutes",
    }
}

fn list_fixture(kind: Kind) -> &'static str {
    let plural = collection(kind).rsplit('/').next().expect("a path");
    fixture(plural)
}

type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// One kind's resource on the fake API server.
struct Collection {
    /// The status and body every list request gets.
    list: (u16, String),
    /// When set, list requests wait for a permit before they are answered.
    hold: Option<Arc<Notify>>,
    /// The open watch's event stream.
    watch: Option<mpsc::UnboundedSender<Bytes>>,
    watches: usize,
}

#[derive(Clone)]
struct FakeApiServer {
    collections: Arc<Mutex<HashMap<&'static str, Collection>>>,
    /// `METHOD path?query` of every request.
    requests: Arc<Mutex<Vec<String>>>,
}

impl FakeApiServer {
    /// A cluster holding every fixture.
    fn cluster() -> Self {
        let collections = Kind::ALL
            .into_iter()
            .map(|kind| {
                let collection_state = Collection {
                    list: (200, list_fixture(kind).to_owned()),
                    hold: None,
                    watch: None,
                    watches: 0,
                };
                (collection(kind), collection_state)
            })
            .collect();
        FakeApiServer {
            collections: Arc::new(Mutex::new(collections)),
            requests: Arc::default(),
        }
    }

    fn with<T>(&self, kind: Kind, f: impl FnOnce(&mut Collection) -> T) -> T {
        let mut collections = self.collections.lock().expect("lock");
        f(collections.get_mut(collection(kind)).expect("a collection"))
    }

    /// Answers `kind`'s list requests with `status` and `body` from now on.
    fn set_list(&self, kind: Kind, status: u16, body: String) {
        self.with(kind, |c| c.list = (status, body));
    }

    /// Holds `kind`'s list requests until the returned `Notify` is notified.
    fn hold_list(&self, kind: Kind) -> Arc<Notify> {
        let hold = Arc::new(Notify::new());
        self.with(kind, |c| c.hold = Some(hold.clone()));
        hold
    }

    fn watches(&self, kind: Kind) -> usize {
        self.with(kind, |c| c.watches)
    }

    /// Sends one watch event (a fixture, pretty-printed JSON) down `kind`'s open watch, once
    /// there is one.
    async fn send(&self, kind: Kind, event: &str) {
        let event: serde_json::Value = serde_json::from_str(event).expect("a JSON event");
        let line = Bytes::from(format!("{event}\n"));
        let sent = tokio::time::timeout(TIMEOUT, async {
            loop {
                let open = self.with(kind, |c| c.watch.clone().filter(|w| !w.is_closed()));
                if let Some(watch) = open {
                    if watch.send(line.clone()).is_ok() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        sent.unwrap_or_else(|_| panic!("no {} watch was opened", kind.as_str()));
    }

    async fn answer(
        self,
        request: http::Request<kube::client::Body>,
    ) -> http::Response<ResponseBody> {
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        self.requests
            .lock()
            .expect("lock")
            .push(format!("{} {path}?{query}", request.method()));
        let watching = query.split('&').any(|param| param == "watch=true");
        let hold = {
            let mut collections = self.collections.lock().expect("lock");
            let Some(collection) = collections.get_mut(path.as_str()) else {
                return respond(404, full(fixture("not-found").to_owned()));
            };
            if watching {
                let (events, stream) = mpsc::unbounded_channel();
                collection.watch = Some(events);
                collection.watches += 1;
                let frames = UnboundedReceiverStream::new(stream)
                    .map(|line| Ok::<_, Infallible>(Frame::data(line)));
                return respond(200, StreamBody::new(frames).boxed_unsync());
            }
            collection.hold.clone()
        };
        if let Some(hold) = hold {
            hold.notified().await;
        }
        let (status, body) = self.collections.lock().expect("lock")[path.as_str()]
            .list
            .clone();
        respond(status, full(body))
    }
}

fn full(body: String) -> ResponseBody {
    Full::new(Bytes::from(body)).boxed_unsync()
}

fn respond(status: u16, body: ResponseBody) -> http::Response<ResponseBody> {
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body)
        .expect("a response")
}

impl tower::Service<http::Request<kube::client::Body>> for FakeApiServer {
    type Response = http::Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<kube::client::Body>) -> Self::Future {
        let server = self.clone();
        Box::pin(async move { Ok(server.answer(request).await) })
    }
}

/// A running source over the fake API server.
struct Harness {
    states: watch::Receiver<Arc<State>>,
    board: Arc<ProblemBoard>,
    _source: KubernetesSource,
}

async fn start(server: &FakeApiServer) -> Harness {
    let client = kube::Client::new(server.clone(), "default");
    let (sender, states) = watch::channel(Arc::new(State::default()));
    let board = Arc::new(ProblemBoard::default());
    let source = run(client, sender, board.clone()).await;
    Harness {
        states,
        board,
        _source: source,
    }
}

impl Harness {
    /// The first published state (the initial lists).
    async fn initial(&mut self) -> Arc<State> {
        tokio::time::timeout(TIMEOUT, self.states.changed())
            .await
            .expect("the initial lists were published in time")
            .expect("the source is running");
        self.states.borrow_and_update().clone()
    }

    /// The first published state that satisfies `check`.
    async fn published(
        &mut self,
        what: &str,
        check: impl FnMut(&Arc<State>) -> bool,
    ) -> Arc<State> {
        tokio::time::timeout(TIMEOUT, self.states.wait_for(check))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .expect("the source is running")
            .clone()
    }

    /// The first problem on the board about `object` (`None`: about a whole kind).
    async fn problem(&self, object: Option<&str>, text: &str) -> Problem {
        let found = tokio::time::timeout(TIMEOUT, async {
            loop {
                let problems = self.board.all();
                if let Some(problem) = problems
                    .into_iter()
                    .find(|p| p.object.as_deref() == object && p.message.contains(text))
                {
                    return problem;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!(
                "no problem {object:?} {text:?}; the board has {:?}",
                self.board.all()
            )
        })
    }

    async fn no_problem_about(&self, object: &str) {
        let gone = tokio::time::timeout(TIMEOUT, async {
            while self
                .board
                .all()
                .iter()
                .any(|p| p.object.as_deref() == Some(object))
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        gone.unwrap_or_else(|_| panic!("{object} is still reported: {:?}", self.board.all()));
    }
}

fn nn(namespace: &str, name: &str) -> NamespacedName {
    (namespace.to_owned(), name.to_owned())
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn initial_lists_of_every_kind_are_published() {
    let server = FakeApiServer::cluster();
    let mut harness = start(&server).await;
    let state = harness.initial().await;

    let shop = &state.namespaces["shop"];
    assert_eq!(
        shop.metadata.labels.as_ref().expect("labels")["weft.dev/inject"],
        "enabled"
    );

    let pod = &state.pods[&nn("shop", "web-6d9f7c5b8-x2k4p")];
    assert_eq!(
        pod.metadata.labels.clone().expect("labels"),
        labels(&[
            ("app", "web"),
            ("pod-template-hash", "6d9f7c5b8"),
            ("version", "v1")
        ])
    );
    let spec = pod.spec.as_ref().expect("a pod spec");
    assert_eq!(spec.service_account_name.as_deref(), Some("web"));
    let status = pod.status.as_ref().expect("a pod status");
    assert_eq!(status.pod_ip.as_deref(), Some("10.244.1.17"));

    let service = &state.services[&nn("shop", "web")];
    let spec = service.spec.as_ref().expect("a service spec");
    assert_eq!(
        spec.selector.clone().expect("a selector"),
        labels(&[("app", "web")])
    );
    assert_eq!(spec.ports.as_ref().expect("ports")[0].port, 80);

    let slice = &state.endpoint_slices[&nn("shop", "web-7hq2d")];
    assert_eq!(
        slice.metadata.labels.as_ref().expect("labels")["kubernetes.io/service-name"],
        "web"
    );
    assert_eq!(
        slice.endpoints.as_ref().expect("endpoints")[0].addresses,
        vec!["10.244.1.17".to_owned()]
    );
    assert_eq!(slice.ports.as_ref().expect("ports")[0].port, Some(8080));

    assert!(state.service_accounts.contains_key(&nn("shop", "web")));
    assert!(state.service_accounts.contains_key(&nn("shop", "default")));

    let policy = &state.authorization_policies[&nn("shop", "web-from-frontend")];
    assert_eq!(policy.spec.action, PolicyAction::Allow);
    let selector = policy.spec.selector.as_ref().expect("a selector");
    assert_eq!(selector.match_labels, labels(&[("app", "web")]));
    assert_eq!(
        policy.spec.rules[0].from[0].principals,
        vec!["spiffe://cluster.local/ns/shop/sa/frontend".to_owned()]
    );

    let traffic = &state.traffic_policies[&nn("shop", "web")];
    assert_eq!(traffic.spec.target_ref.name, "web");
    let retries = traffic.spec.retries.as_ref().expect("retries");
    assert_eq!(retries.attempts, Some(2));

    let route = &state.http_routes[&nn("shop", "web-canary")];
    assert_eq!(route.spec.parent_refs[0].name, "web");
    let weights: Vec<_> = route.spec.rules[0]
        .backend_refs
        .iter()
        .map(|b| (b.name.as_str(), b.weight))
        .collect();
    assert_eq!(weights, vec![("web-v1", Some(90)), ("web-v2", Some(10))]);

    assert_eq!(harness.board.all(), vec![]);

    // Least privilege: cluster-wide list and watch of exactly these resources, nothing else.
    let requests = server.requests.lock().expect("lock").clone();
    for request in &requests {
        assert!(request.starts_with("GET "), "{request}");
        let path = request[4..].split('?').next().expect("a path");
        assert!(
            Kind::ALL.iter().any(|k| collection(*k) == path),
            "{request}"
        );
    }
    for kind in Kind::ALL {
        let listed = requests.iter().any(|r| {
            r.starts_with(&format!("GET {}?", collection(kind))) && !r.contains("watch=true")
        });
        assert!(listed, "{} was not listed: {requests:?}", kind.as_str());
    }
}

#[tokio::test]
async fn watch_events_add_modify_and_delete_objects() {
    let server = FakeApiServer::cluster();
    let mut harness = start(&server).await;
    harness.initial().await;

    server.send(Kind::Pod, fixture("pod-added")).await;
    server
        .send(Kind::Service, fixture("service-modified"))
        .await;
    server
        .send(Kind::ServiceAccount, fixture("serviceaccount-deleted"))
        .await;
    let state = harness
        .published(
            "the added pod, the new selector and the deleted account",
            |s| {
                s.pods.len() == 2
                    && !s.service_accounts.contains_key(&nn("shop", "default"))
                    && s.services[&nn("shop", "web")]
                        .spec
                        .as_ref()
                        .and_then(|spec| spec.selector.as_ref())
                        .is_some_and(|selector| selector.len() == 2)
            },
        )
        .await;
    let pod = &state.pods[&nn("shop", "web-6d9f7c5b8-q8v3n")];
    assert_eq!(pod.metadata.labels.as_ref().expect("labels")["app"], "web");
    let selector = state.services[&nn("shop", "web")]
        .spec
        .as_ref()
        .and_then(|spec| spec.selector.clone());
    assert_eq!(selector, Some(labels(&[("app", "web"), ("version", "v2")])));
    assert!(state.service_accounts.contains_key(&nn("shop", "web")));

    // A single change goes out well under a second after it happened.
    let sent = Instant::now();
    let deleted = fixture("pod-added").replace("\"ADDED\"", "\"DELETED\"");
    server.send(Kind::Pod, &deleted).await;
    harness
        .published("the deleted pod", |s| s.pods.len() == 1)
        .await;
    assert!(
        sent.elapsed() < Duration::from_millis(500),
        "{:?}",
        sent.elapsed()
    );
}

#[tokio::test]
async fn an_invalid_authorization_policy_is_reported_and_its_last_good_version_stays() {
    let server = FakeApiServer::cluster();
    let mut harness = start(&server).await;
    harness.initial().await;

    server
        .send(Kind::AuthorizationPolicy, fixture("policy-unknown-field"))
        .await;
    let problem = harness
        .problem(
            Some("AuthorizationPolicy shop/web-from-frontend"),
            "unknown field",
        )
        .await;
    assert_eq!(problem.source, "kubernetes");
    assert_eq!(
        problem.field.as_deref(),
        Some("spec.rules[0].from[0].principal")
    );
    assert!(
        problem.message.contains("unknown field `principal`"),
        "{problem:?}"
    );
    assert!(problem.kept_last_good, "{problem:?}");

    server
        .send(Kind::AuthorizationPolicy, fixture("policy-wrong-type"))
        .await;
    let problem = harness
        .problem(Some("AuthorizationPolicy shop/deny-legacy"), "invalid type")
        .await;
    assert_eq!(problem.field.as_deref(), Some("spec.rules[0].to[0].ports"));
    assert!(!problem.kept_last_good, "a new object has nothing to keep");

    // Neither bad version is in force: the last good one is.
    let state = harness.states.borrow().clone();
    let policy = &state.authorization_policies[&nn("shop", "web-from-frontend")];
    assert_eq!(policy.spec.rules[0].to[0].methods, vec!["GET".to_owned()]);
    assert!(!state
        .authorization_policies
        .contains_key(&nn("shop", "deny-legacy")));

    // The watch goes on: a fixed version applies and its problem goes away.
    server
        .send(Kind::AuthorizationPolicy, fixture("policy-fixed"))
        .await;
    let state = harness
        .published("the fixed policy", |s| {
            s.authorization_policies[&nn("shop", "web-from-frontend")]
                .spec
                .rules[0]
                .to[0]
                .methods
                .len()
                == 2
        })
        .await;
    assert_eq!(state.authorization_policies.len(), 1);
    harness
        .no_problem_about("AuthorizationPolicy shop/web-from-frontend")
        .await;
    let problems = harness.board.all();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(
        problems[0].object.as_deref(),
        Some("AuthorizationPolicy shop/deny-legacy")
    );
}

#[tokio::test]
async fn a_missing_crd_is_reported_and_the_other_kinds_still_publish() {
    let server = FakeApiServer::cluster();
    server.set_list(Kind::HTTPRoute, 404, fixture("not-found").to_owned());
    let mut harness = start(&server).await;
    let state = harness.initial().await;
    assert!(state.http_routes.is_empty());
    assert!(state.pods.contains_key(&nn("shop", "web-6d9f7c5b8-x2k4p")));
    assert!(state
        .authorization_policies
        .contains_key(&nn("shop", "web-from-frontend")));

    let problem = harness
        .problem(
            None,
            "HTTPRoute (gateway.networking.k8s.io/v1) is not served by the API server",
        )
        .await;
    assert_eq!(problem.source, "kubernetes");
    assert!(!problem.kept_last_good);

    // The other kinds' watches work.
    server
        .send(Kind::Service, fixture("service-modified"))
        .await;
    harness
        .published("the modified service", |s| {
            s.services[&nn("shop", "web")]
                .spec
                .as_ref()
                .and_then(|spec| spec.selector.as_ref())
                .is_some_and(|selector| selector.len() == 2)
        })
        .await;

    // The CRD is installed: the kind is listed again (after the watcher's backoff).
    server.set_list(Kind::HTTPRoute, 200, fixture("httproutes").to_owned());
    let state = harness
        .published("the routes once the CRD is there", |s| {
            !s.http_routes.is_empty()
        })
        .await;
    assert!(state.http_routes.contains_key(&nn("shop", "web-canary")));
    let cleared = tokio::time::timeout(TIMEOUT, async {
        while !harness.board.all().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(cleared.is_ok(), "{:?}", harness.board.all());
}

#[tokio::test]
async fn nothing_is_published_before_every_initial_list_is_done() {
    let server = FakeApiServer::cluster();
    let release = server.hold_list(Kind::TrafficPolicy);
    let mut harness = start(&server).await;

    // Every other kind listed (its watch opens only after its InitDone was consumed) and
    // changed since; still nothing may be published.
    let others_watching = tokio::time::timeout(TIMEOUT, async {
        while Kind::ALL
            .iter()
            .any(|k| *k != Kind::TrafficPolicy && server.watches(*k) == 0)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(others_watching.is_ok(), "the other kinds were not listed");
    server.send(Kind::Pod, fixture("pod-added")).await;
    tokio::time::sleep(PUBLISH_INTERVAL * 4).await;
    assert!(
        !harness.states.has_changed().expect("the source is running"),
        "published before TrafficPolicy was listed"
    );

    release.notify_one();
    let state = harness.initial().await;
    assert!(state.traffic_policies.contains_key(&nn("shop", "web")));
    assert_eq!(state.pods.len(), 2, "the change made while waiting is in");
}

#[tokio::test]
async fn a_relist_drops_objects_deleted_while_disconnected() {
    let server = FakeApiServer::cluster();
    let mut harness = start(&server).await;
    harness.initial().await;

    // While the watch is away: `default` is deleted, the policy gets an invalid version.
    let mut accounts: serde_json::Value =
        serde_json::from_str(fixture("serviceaccounts")).expect("JSON");
    accounts["items"]
        .as_array_mut()
        .expect("items")
        .retain(|item| item["metadata"]["name"] != "default");
    accounts["metadata"]["resourceVersion"] = "48977".into();
    server.set_list(Kind::ServiceAccount, 200, accounts.to_string());
    let mut policies: serde_json::Value =
        serde_json::from_str(fixture("authorizationpolicies")).expect("JSON");
    let invalid: serde_json::Value =
        serde_json::from_str(fixture("policy-unknown-field")).expect("JSON");
    policies["items"][0] = invalid["object"].clone();
    server.set_list(Kind::AuthorizationPolicy, 200, policies.to_string());

    // The watches come back with 410 Gone: the watcher relists (after its backoff).
    server.send(Kind::ServiceAccount, fixture("gone")).await;
    server
        .send(Kind::AuthorizationPolicy, fixture("gone"))
        .await;

    let state = harness
        .published("the relisted service accounts", |s| {
            !s.service_accounts.contains_key(&nn("shop", "default"))
        })
        .await;
    assert!(state.service_accounts.contains_key(&nn("shop", "web")));
    let problem = harness
        .problem(
            Some("AuthorizationPolicy shop/web-from-frontend"),
            "unknown field",
        )
        .await;
    assert!(problem.kept_last_good);
    let state = harness.states.borrow().clone();
    let policy = &state.authorization_policies[&nn("shop", "web-from-frontend")];
    assert_eq!(
        policy.spec.rules[0].to[0].methods,
        vec!["GET".to_owned()],
        "last good"
    );
    assert!(server.watches(Kind::ServiceAccount) >= 2, "watching again");
}

/// The publish timing, with the watchers replaced by streams the test feeds and time paused,
/// so every publication is seen.
#[tokio::test(start_paused = true)]
async fn bursts_are_coalesced_and_a_single_change_goes_out_at_once() {
    let mut streams = StreamMap::new();
    let mut feeds = BTreeMap::new();
    for kind in Kind::ALL {
        let (feed, events) = mpsc::unbounded_channel();
        let events: Events = Box::pin(UnboundedReceiverStream::new(events));
        streams.insert(kind, events);
        feed.send(Ok(Event::Init)).expect("feed");
        feeds.insert(kind, feed);
    }
    let (sender, mut states) = watch::channel(Arc::new(State::default()));
    let task = tokio::spawn(drive(streams, sender, Arc::new(ProblemBoard::default())));
    let published = Arc::new(Mutex::new(Vec::<(Instant, usize)>::new()));
    let observer = tokio::spawn({
        let published = published.clone();
        async move {
            while states.changed().await.is_ok() {
                let labels = states
                    .borrow_and_update()
                    .pods
                    .values()
                    .next()
                    .map_or(0, |pod| {
                        pod.metadata.labels.as_ref().map_or(0, BTreeMap::len)
                    });
                published
                    .lock()
                    .expect("lock")
                    .push((Instant::now(), labels));
            }
        }
    });

    let pod = |labels: usize| {
        let mut event: serde_json::Value =
            serde_json::from_str(fixture("pod-added")).expect("JSON");
        let labels: serde_json::Map<_, _> = (0..labels)
            .map(|i| (format!("l{i}"), serde_json::Value::from("x")))
            .collect();
        event["object"]["metadata"]["labels"] = labels.into();
        serde_json::from_value::<DynamicObject>(event["object"].take()).expect("a pod")
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        published.lock().expect("lock").is_empty(),
        "nothing is listed yet"
    );
    let started = Instant::now();
    for feed in feeds.values() {
        feed.send(Ok(Event::InitDone)).expect("feed");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A burst: fifty changes, 10 ms later fifty more.
    for labels in 1..=100 {
        feeds[&Kind::Pod]
            .send(Ok(Event::Apply(pod(labels))))
            .expect("feed");
        if labels == 50 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let single_sent = Instant::now();
    feeds[&Kind::Pod]
        .send(Ok(Event::Apply(pod(7))))
        .expect("feed");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let published = published.lock().expect("lock").clone();
    let at: Vec<_> = published
        .iter()
        .map(|(at, labels)| (at.duration_since(started), *labels))
        .collect();
    let second = Duration::from_secs(1);
    assert_eq!(
        at,
        vec![
            // The initial lists, at once.
            (Duration::ZERO, 0),
            // The burst: what had arrived together goes out at once as one state, the rest
            // one interval later as another.
            (second, 50),
            (second + PUBLISH_INTERVAL, 100),
            // A single change after a quiet time: at once.
            (single_sent.duration_since(started), 7),
        ]
    );
    task.abort();
    observer.abort();
}
