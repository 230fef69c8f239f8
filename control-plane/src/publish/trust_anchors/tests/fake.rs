//! A fake API server for the `weft-trust-anchors` ConfigMaps: a hand-written
//! `tower::Service` behind a real `kube::Client`, as in the Kubernetes source's tests. It
//! keeps the ConfigMaps it was given or applied, answers the cluster-wide list with them and
//! streams a `WatchEvent` line for every change, as the API server does — so the publisher
//! also sees the echo of its own writes. Responses have the API server's shapes
//! (`fixtures/`). Other collections (the whole control plane's test) list as empty, or as
//! set in [`Cluster::lists`], and their watches stay open and silent.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

/// More PATCHes than any test expects: the publisher is looping.
const MAX_PATCHES: usize = 32;
pub const COLLECTION: &str = "/api/v1/configmaps";
const CREATED: &str = "2025-06-02T09:31:12Z";

fn fixture(name: &str) -> Value {
    let text = match name {
        "configmaps-empty" => include_str!("fixtures/configmaps-empty.json"),
        "configmap" => include_str!("fixtures/configmap.json"),
        "internal-error" => include_str!("fixtures/internal-error.json"),
        "not-found" => include_str!("fixtures/not-found.json"),
        other => panic!("no fixture {other}"),
    };
    serde_json::from_str(text).expect("fixtures are JSON")
}

/// One request the fake API server received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: Option<String>,
    pub body: Value,
    pub at: Instant,
}

impl Request {
    /// The query's parameters in sorted order.
    pub fn sorted_query(&self) -> String {
        let mut params: Vec<&str> = self.query.split('&').filter(|p| !p.is_empty()).collect();
        params.sort_unstable();
        params.join("&")
    }

    pub fn is_patch(&self) -> bool {
        self.method == "PATCH"
    }
}

type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

#[derive(Default)]
pub struct Cluster {
    pub requests: Vec<Request>,
    /// The ConfigMaps `weft-trust-anchors`, by namespace, as the API server returns them.
    pub objects: BTreeMap<String, Value>,
    pub resource_version: u64,
    /// Open watches on the ConfigMaps, and on anything else (kept open, never sent to).
    pub watches: Vec<mpsc::UnboundedSender<Bytes>>,
    pub other_watches: Vec<mpsc::UnboundedSender<Bytes>>,
    /// Statuses the next PATCHes to a namespace get instead of being applied.
    pub failures: BTreeMap<String, VecDeque<u16>>,
    /// List bodies for other collections (the whole control plane's test); others are empty.
    pub lists: BTreeMap<String, Value>,
}

impl Cluster {
    fn next_version(&mut self) -> String {
        self.resource_version += 1;
        (51_000 + self.resource_version).to_string()
    }

    /// Sends a watch event to every open ConfigMap watch.
    fn notify(&mut self, kind: &str, object: &Value) {
        let line = Bytes::from(format!("{}\n", json!({"type": kind, "object": object})));
        self.watches.retain(|w| w.send(line.clone()).is_ok());
    }

    /// Stores `object` (labels and data merged into what is there, as server-side apply
    /// leaves other managers' fields) and tells the watches.
    fn upsert(&mut self, namespace: &str, labels: &Value, data: &Value) -> Value {
        let version = self.next_version();
        let existed = self.objects.contains_key(namespace);
        let object = self.objects.entry(namespace.to_owned()).or_insert_with(|| {
            let mut object = fixture("configmap");
            object["metadata"]["namespace"] = json!(namespace);
            object["metadata"]["uid"] = json!(format!("uid-{namespace}"));
            object["metadata"]["creationTimestamp"] = json!(CREATED);
            object["metadata"]["labels"] = json!({});
            object["data"] = json!({});
            object
        });
        object["metadata"]["resourceVersion"] = json!(version);
        for (k, v) in labels.as_object().into_iter().flatten() {
            object["metadata"]["labels"][k] = v.clone();
        }
        for (k, v) in data.as_object().into_iter().flatten() {
            object["data"][k] = v.clone();
        }
        let object = object.clone();
        self.notify(if existed { "MODIFIED" } else { "ADDED" }, &object);
        object
    }

    fn list(&mut self) -> Value {
        let mut list = fixture("configmaps-empty");
        list["metadata"]["resourceVersion"] = json!((51_000 + self.resource_version).to_string());
        // List items of built-in kinds come without apiVersion and kind.
        let items: Vec<Value> = self
            .objects
            .values()
            .map(|o| {
                let mut item = o.clone();
                let map = item.as_object_mut().expect("an object");
                map.remove("apiVersion");
                map.remove("kind");
                item
            })
            .collect();
        list["items"] = json!(items);
        list
    }
}

#[derive(Clone)]
pub struct FakeApiServer {
    cluster: Arc<Mutex<Cluster>>,
    /// How many PATCHes have been received.
    pub patches: Arc<watch::Sender<usize>>,
}

impl FakeApiServer {
    pub fn new() -> Self {
        FakeApiServer {
            cluster: Arc::default(),
            patches: Arc::new(watch::Sender::new(0)),
        }
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut Cluster) -> T) -> T {
        f(&mut self.cluster.lock().expect("lock"))
    }

    pub fn requests(&self) -> Vec<Request> {
        self.with(|c| c.requests.clone())
    }

    pub fn patches(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(Request::is_patch)
            .collect()
    }

    /// The next PATCHes to `namespace` are answered with these statuses, in order.
    pub fn fail(&self, namespace: &str, statuses: &[u16]) {
        self.with(|c| {
            c.failures
                .insert(namespace.into(), statuses.iter().copied().collect())
        });
    }

    /// Someone (not Weft) creates or edits the ConfigMap in `namespace`.
    pub fn edit(&self, namespace: &str, labels: Value, data: Value) {
        self.with(|c| c.upsert(namespace, &labels, &data));
    }

    /// Someone deletes the ConfigMap in `namespace`.
    pub fn delete(&self, namespace: &str) {
        self.with(|c| {
            let mut object = c.objects.remove(namespace).expect("a ConfigMap to delete");
            object["metadata"]["resourceVersion"] = json!(c.next_version());
            c.notify("DELETED", &object);
        });
    }

    async fn answer(
        self,
        request: http::Request<kube::client::Body>,
    ) -> http::Response<ResponseBody> {
        let (parts, body) = request.into_parts();
        let body = body.collect().await.expect("a request body").to_bytes();
        let request = Request {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: if body.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&body).expect("a JSON request body")
            },
            at: Instant::now(),
        };
        let watching = request.query.split('&').any(|p| p == "watch=true");
        let mut cluster = self.cluster.lock().expect("lock");
        cluster.requests.push(request.clone());
        match request.method.as_str() {
            "GET" if watching => {
                let (events, stream) = mpsc::unbounded_channel();
                if request.path == COLLECTION {
                    cluster.watches.push(events);
                } else {
                    cluster.other_watches.push(events);
                }
                let frames = UnboundedReceiverStream::new(stream)
                    .map(|line| Ok::<_, Infallible>(Frame::data(line)));
                respond(200, StreamBody::new(frames).boxed_unsync())
            }
            "GET" if request.path == COLLECTION => respond(200, json_body(&cluster.list())),
            "GET" => {
                let list = cluster
                    .lists
                    .get(&request.path)
                    .cloned()
                    .unwrap_or_else(|| {
                        json!({"kind": "List", "apiVersion": "v1",
                           "metadata": {"resourceVersion": "1"}, "items": []})
                    });
                respond(200, json_body(&list))
            }
            "PATCH" => {
                drop(cluster);
                self.patches.send_modify(|n| *n += 1);
                // A publisher that applies in a loop never lets paused time advance, so no
                // timeout would end the test: fail its applies instead (the panic is the
                // apply task's), which the test then sees as too many PATCHes.
                assert!(
                    *self.patches.borrow() <= MAX_PATCHES,
                    "runaway: over {MAX_PATCHES} PATCHes"
                );
                let mut cluster = self.cluster.lock().expect("lock");
                let namespace = request
                    .path
                    .strip_prefix("/api/v1/namespaces/")
                    .and_then(|rest| rest.strip_suffix("/configmaps/weft-trust-anchors"))
                    .expect("PATCHes only go to weft-trust-anchors")
                    .to_owned();
                let failure = cluster
                    .failures
                    .get_mut(&namespace)
                    .and_then(VecDeque::pop_front);
                if let Some(status) = failure {
                    let mut error = fixture("internal-error");
                    error["code"] = json!(status);
                    return respond(status, json_body(&error));
                }
                let metadata = &request.body["metadata"];
                let object = cluster.upsert(&namespace, &metadata["labels"], &request.body["data"]);
                respond(200, json_body(&object))
            }
            _ => respond(404, json_body(&fixture("not-found"))),
        }
    }
}

fn json_body(value: &Value) -> ResponseBody {
    Full::new(Bytes::from(value.to_string())).boxed_unsync()
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
