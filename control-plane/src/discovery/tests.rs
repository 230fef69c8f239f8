//! One subscription against views computed by the real index, the proxy played by the test:
//! what it is sent first (a chunked full sync, or nothing outbound when it holds the current
//! Services), the shared delta when it is one version behind, a full sync when further
//! behind or when it asks for one, and the whole view for a proxy without deltas.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tonic::Status;
use weft_api::proto::discovery::v1::{self as pb, subscribe_request, SubscribeRequest};

use super::registry::{DiscoveryMetrics, Registry};
use super::subscriber::{self, Requests};
use super::wire::Push;
use crate::index::{Index, Views, DEFAULT_MAX_CHUNK_BYTES};
use crate::state::{decode, State};

mod unknown_pods;

const SERVICES: usize = 30;
const ENDPOINTS: usize = 40;

/// `SERVICES` Services in `shop` with `ENDPOINTS` endpoints each (about 2.5 KiB encoded,
/// so a full sync takes several messages), pod `orders-1`, and pod-0 of svc-0 ready or not.
fn state(ready: bool, extra: Option<&str>) -> State {
    let mut objects = vec![json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "orders-1", "namespace": "shop", "labels": {"app": "orders"}},
        "spec": {"serviceAccountName": "orders", "containers": [{"name": "app", "image": "x"}]},
    })];
    let names = (0..SERVICES)
        .map(|i| format!("svc-{i:02}"))
        .chain(extra.map(str::to_owned));
    for (s, name) in names.enumerate() {
        objects.push(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"clusterIP": format!("10.96.0.{s}"), "ports": [{"name": "http", "port": 80}]},
        }));
        let endpoints: Vec<_> = (0..ENDPOINTS)
            .map(|e| {
                json!({
                    "addresses": [format!("10.1.{s}.{e}")],
                    "conditions": {"ready": ready || s > 0 || e > 0},
                    "targetRef": {"kind": "Pod", "name": format!("pod-{s}-{e}")},
                })
            })
            .collect();
        objects.push(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-1"), "namespace": "shop",
                "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": endpoints,
        }));
    }
    let mut state = State::default();
    for object in objects {
        let (key, object) = decode(object).expect("valid");
        state.insert(&key, object);
    }
    state
}

/// The proxy's side of the stream, as the test plays it.
struct Proxy {
    requests: mpsc::UnboundedSender<SubscribeRequest>,
    pushes: mpsc::Receiver<Result<Push, Status>>,
    _task: tokio::task::JoinHandle<()>,
}

struct FakeRequests(mpsc::UnboundedReceiver<SubscribeRequest>);

impl Requests for FakeRequests {
    async fn next(&mut self) -> Result<Option<SubscribeRequest>, Status> {
        Ok(self.0.recv().await)
    }
}

fn subscribe(views: &watch::Sender<Option<Arc<Views>>>, hello: pb::Hello) -> Proxy {
    let registry = Arc::new(Registry::new(DiscoveryMetrics::register(
        &mut prometheus_client::registry::Registry::default(),
    )));
    let identity = "spiffe://cluster.local/ns/shop/sa/orders"
        .parse()
        .expect("id");
    let handle = registry.register(&hello, &identity, None);
    let (requests, requests_rx) = mpsc::unbounded_channel();
    let (tx, pushes) = mpsc::channel(2);
    let task = tokio::spawn(subscriber::run(
        hello,
        views.subscribe(),
        FakeRequests(requests_rx),
        tx,
        handle,
    ));
    Proxy {
        requests,
        pushes,
        _task: task,
    }
}

fn hello(deltas: bool, services_version: &str) -> pb::Hello {
    pb::Hello {
        namespace: "shop".into(),
        pod: "orders-1".into(),
        outbound_deltas: deltas,
        services_version: services_version.into(),
        ..Default::default()
    }
}

impl Proxy {
    /// The next push as the subscriber sent it (its parts still the index's `Arc`s), or
    /// `None` if none comes within 5 s.
    async fn push(&mut self) -> Option<Push> {
        let push = tokio::time::timeout(Duration::from_secs(5), self.pushes.recv())
            .await
            .ok()??;
        Some(push.expect("no error"))
    }

    /// The next message as the proxy decodes it, and its size on the wire.
    async fn message(&mut self) -> Option<(pb::ViewUpdate, usize)> {
        let push = self.push().await?;
        let bytes = push.encode_to_vec();
        Some((
            pb::ViewUpdate::decode(bytes.as_slice()).expect("decodes"),
            bytes.len(),
        ))
    }

    /// Every message of the next update (up to the one without `more`).
    async fn update(&mut self) -> Vec<(pb::ViewUpdate, usize)> {
        let mut messages = Vec::new();
        loop {
            let message = self.message().await.expect("an update");
            let more = message.0.more;
            messages.push(message);
            if !more {
                return messages;
            }
        }
    }

    async fn nothing(&mut self) {
        let next = tokio::time::timeout(Duration::from_millis(200), self.pushes.recv()).await;
        assert!(next.is_err(), "nothing is sent: {next:?}");
    }

    fn nack(&self, version: &str, full_sync: bool) {
        let ack = pb::Ack {
            version: version.into(),
            error: "does not fit".into(),
            full_sync,
        };
        self.requests
            .send(SubscribeRequest {
                kind: Some(subscribe_request::Kind::Ack(ack)),
            })
            .expect("queued");
    }
}

fn publish(
    views: &watch::Sender<Option<Arc<Views>>>,
    index: &mut Index,
    state: &State,
) -> Arc<Views> {
    let computed = Arc::new(index.compute(state).0);
    views.send_replace(Some(computed.clone()));
    computed
}

fn upserted_names(messages: &[(pb::ViewUpdate, usize)]) -> Vec<String> {
    messages
        .iter()
        .flat_map(|(m, _)| m.services.iter().flat_map(|s| &s.upserted))
        .map(|s| format!("{}/{}", s.namespace, s.name))
        .collect()
}

#[tokio::test]
async fn a_new_proxy_gets_a_full_sync_in_bounded_messages_then_only_what_changed() {
    let (views, _) = watch::channel(None);
    let mut index = Index::new(Default::default());
    let first = publish(&views, &mut index, &state(true, None));
    let mut proxy = subscribe(&views, hello(true, ""));

    let sync = proxy.update().await;
    assert!(sync.len() > 3, "{} messages", sync.len());
    let version = &sync[0].0.version;
    for (i, (message, bytes)) in sync.iter().enumerate() {
        assert_eq!(&message.version, version, "every message names the version");
        assert_eq!(message.more, i + 1 < sync.len());
        assert_eq!(
            message.inbound.is_some(),
            i == 0,
            "the inbound part in the first"
        );
        assert!(message.outbound.is_none(), "not the whole view");
        let services = message.services.as_ref().expect("Services in each");
        assert_eq!(services.sync, pb::Sync::Full as i32);
        assert_eq!(services.version, first.outbound.version());
        assert!(
            *bytes <= DEFAULT_MAX_CHUNK_BYTES + 512,
            "message {i} is {bytes} bytes"
        );
    }
    assert_eq!(upserted_names(&sync).len(), SERVICES);

    // One endpoint of svc-00 turns unready: a delta with that Service only, and no inbound.
    let second = publish(&views, &mut index, &state(false, None));
    let delta = proxy.update().await;
    assert_eq!(delta.len(), 1);
    let (message, bytes) = &delta[0];
    assert!(message.inbound.is_none());
    let services = message.services.as_ref().expect("Services");
    assert_eq!(services.sync, pb::Sync::Delta as i32);
    assert_eq!(services.base, first.outbound.version());
    assert_eq!(services.version, second.outbound.version());
    assert_eq!(upserted_names(&delta), ["shop/svc-00"]);
    assert!(!services.upserted[0].endpoints[0].ready);
    assert!(services.removed.is_empty());
    assert!(*bytes < 4096, "{bytes} bytes for one Service");
    proxy.nothing().await;
}

#[tokio::test]
async fn a_reconnecting_proxy_gets_nothing_a_delta_or_a_full_sync_by_what_it_holds() {
    let (views, _) = watch::channel(None);
    let mut index = Index::new(Default::default());
    let v1 = publish(&views, &mut index, &state(true, None));
    let v2 = publish(&views, &mut index, &state(false, None));

    // Holds the current Services: the first update is the inbound part alone.
    let mut current = subscribe(&views, hello(true, &v2.outbound.version()));
    let update = current.update().await;
    assert_eq!(update.len(), 1);
    assert!(update[0].0.inbound.is_some());
    assert!(update[0].0.services.is_none());

    // One version behind: the delta every such proxy shares.
    let mut behind = subscribe(&views, hello(true, &v1.outbound.version()));
    let update = behind.update().await;
    assert_eq!(update.len(), 1);
    assert_eq!(upserted_names(&update), ["shop/svc-00"]);
    let services = update[0].0.services.as_ref().expect("Services");
    assert_eq!(services.sync, pb::Sync::Delta as i32);

    // Two versions behind (a Service was added since), or a version unknown here: a full sync.
    let v3 = publish(&views, &mut index, &state(false, Some("new")));
    current.update().await;
    behind.update().await;
    for held in [v1.outbound.version(), "garbage".to_owned()] {
        let mut far = subscribe(&views, hello(true, &held));
        let update = far.update().await;
        let services = update[0].0.services.as_ref().expect("Services");
        assert_eq!(services.sync, pb::Sync::Full as i32);
        assert_eq!(services.version, v3.outbound.version());
        assert_eq!(upserted_names(&update).len(), SERVICES + 1);
    }
}

#[tokio::test]
async fn a_proxy_that_asks_for_a_full_sync_gets_one_with_both_parts_once() {
    let (views, _) = watch::channel(None);
    let mut index = Index::new(Default::default());
    publish(&views, &mut index, &state(true, None));
    let mut proxy = subscribe(&views, hello(true, ""));
    let sync = proxy.update().await;
    let first_version = sync[0].0.version.clone();
    publish(&views, &mut index, &state(false, None));
    let delta = proxy.update().await;

    // The proxy could not apply the delta: it asks, and the answer is a full sync with the
    // inbound part too.
    proxy.nack(&delta[0].0.version, true);
    let again = proxy.update().await;
    assert!(again[0].0.inbound.is_some());
    assert_eq!(
        again[0].0.services.as_ref().expect("Services").sync,
        pb::Sync::Full as i32
    );
    assert_eq!(upserted_names(&again).len(), SERVICES);

    // A rejection without the request changes nothing; a request about that very full sync
    // is not answered with the same messages again.
    proxy.nack(&first_version, false);
    proxy.nothing().await;
    proxy.nack(&again[0].0.version, true);
    proxy.nothing().await;
}

#[tokio::test]
async fn a_proxy_without_deltas_gets_the_whole_view_in_one_message() {
    let (views, _) = watch::channel(None);
    let mut index = Index::new(Default::default());
    let v1 = publish(&views, &mut index, &state(true, None));
    let mut proxy = subscribe(&views, hello(false, ""));
    let update = proxy.update().await;
    assert_eq!(update.len(), 1);
    let (message, _) = &update[0];
    assert!(message.services.is_none());
    let outbound = message.outbound.as_ref().expect("whole view");
    assert_eq!(outbound.services, v1.outbound.decode().expect("decodes"));
    publish(&views, &mut index, &state(false, None));
    let update = proxy.update().await;
    assert_eq!(
        update[0]
            .0
            .outbound
            .as_ref()
            .expect("whole again")
            .services
            .len(),
        SERVICES
    );
}
