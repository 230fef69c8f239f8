//! The Kubernetes source: every kind Weft reads, watched cluster-wide through the API server
//! with kube-runtime's [`watcher`], published as whole [`State`]s like the manifest source.
//!
//! Each kind has its own watcher over [`DynamicObject`]s, so every object reaches
//! [`crate::state::decode`] as JSON and decodes on its own:
//! - an object that fails to decode is reported (object, field) on the [`ProblemBoard`] under
//!   reporter `kubernetes` and skipped; its last good version, if any, stays in the state;
//! - a kind the API server does not serve (its CRD is not installed: 404 on list) is reported,
//!   counts as having no objects, and is listed again with backoff until it appears;
//! - the watcher's own errors (disconnects, 410 Gone, a forbidden list) are retried by
//!   kube-runtime with [`WatchStreamExt::default_backoff`] and logged; an error listing a
//!   kind is also put on the board until the kind lists.
//!
//! The watcher's relist protocol is followed: between `Init` and `InitDone` a kind's objects
//! are collected aside, and at `InitDone` they replace what the kind held, so objects deleted
//! while the watch was away (and whose DELETED events were therefore missed) disappear.
//!
//! Nothing is published until every kind has finished its first list (or is not served), so
//! the index never computes a view from a half-loaded cluster. After that, changes are
//! published at most every [`PUBLISH_INTERVAL`]: a single change goes out at once, and a burst
//! is coalesced into one state per interval.
//!
//! # RBAC
//!
//! List and watch only, cluster-wide (issue 6 turns this into the control plane's
//! ClusterRole):
//!
//! ```yaml
//! rules:
//! - apiGroups: [""]
//!   resources: [namespaces, pods, services, serviceaccounts]
//!   verbs: [list, watch]
//! - apiGroups: [discovery.k8s.io]
//!   resources: [endpointslices]
//!   verbs: [list, watch]
//! - apiGroups: [policy.weft.dev]
//!   resources: [authorizationpolicies, trafficpolicies]
//!   verbs: [list, watch]
//! - apiGroups: [gateway.networking.k8s.io]
//!   resources: [httproutes]
//!   verbs: [list, watch]
//! ```
//!
//! A forbidden list (403) is reported and retried, and — unlike a missing CRD — holds back
//! the first publication: an empty Pod list because of a missing rule would otherwise look
//! like a cluster without workloads.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::{Stream, StreamExt, StreamMap};
use weft_api::crd::{AuthorizationPolicy, HTTPRoute, TrafficPolicy};

use crate::state::{decode, Kind, Object, ObjectKey, Problem, ProblemBoard, State};

/// The problems this source reports on the board (and their `source`).
pub const REPORTER: &str = "kubernetes";

/// The shortest time between two published states once the initial lists are done.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(50);

/// The most events taken in one go before the publish timer is looked at again.
const BATCH: usize = 1024;

/// The running watches. Dropping it stops them (like dropping the manifest source's
/// watcher), so a source never outlives its owner; they also stop by themselves when every
/// receiver of the state channel is gone.
///
/// A guard rather than a bare `JoinHandle`: a dropped `JoinHandle` detaches its task, which
/// would keep eight watches open against the API server with nobody listening.
#[must_use = "dropping the source stops watching the cluster"]
#[derive(Debug)]
pub struct KubernetesSource {
    task: JoinHandle<()>,
}

impl KubernetesSource {
    /// Whether the watches have stopped (every receiver of the state channel was dropped).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for KubernetesSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts watching every kind cluster-wide through `client` and returns at once; the first
/// state is published on `states` when every kind has been listed. Problems go on
/// `problems` under [`REPORTER`].
pub async fn run(
    client: kube::Client,
    states: watch::Sender<Arc<State>>,
    problems: Arc<ProblemBoard>,
) -> KubernetesSource {
    let mut streams = StreamMap::new();
    for kind in Kind::ALL {
        let api = Api::<DynamicObject>::all_with(client.clone(), &api_resource(kind));
        let events: Events = Box::pin(watcher(api, watcher::Config::default()).default_backoff());
        streams.insert(kind, events);
    }
    KubernetesSource {
        task: tokio::spawn(drive(streams, states, problems)),
    }
}

/// The API resource (group, version, plural) each kind is watched at.
pub fn api_resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::Namespace => ApiResource::erase::<Namespace>(&()),
        Kind::Pod => ApiResource::erase::<Pod>(&()),
        Kind::Service => ApiResource::erase::<Service>(&()),
        Kind::EndpointSlice => ApiResource::erase::<EndpointSlice>(&()),
        Kind::ServiceAccount => ApiResource::erase::<ServiceAccount>(&()),
        Kind::AuthorizationPolicy => ApiResource::erase::<AuthorizationPolicy>(&()),
        Kind::TrafficPolicy => ApiResource::erase::<TrafficPolicy>(&()),
        Kind::HTTPRoute => ApiResource::erase::<HTTPRoute>(&()),
    }
}

type Events = Pin<Box<dyn Stream<Item = Result<Event<DynamicObject>, watcher::Error>> + Send>>;

/// Feeds every kind's events into one [`Store`] and flushes it, rate-limited.
async fn drive(
    mut streams: StreamMap<Kind, Events>,
    states: watch::Sender<Arc<State>>,
    board: Arc<ProblemBoard>,
) {
    let mut store = Store::default();
    let mut last_flush: Option<Instant> = None;
    loop {
        let due = store
            .needs_flush()
            .then(|| last_flush.map_or_else(Instant::now, |at| at + PUBLISH_INTERVAL));
        tokio::select! {
            biased;
            () = states.closed() => return,
            () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                store.flush(&states, &board);
                last_flush = Some(Instant::now());
            }
            next = streams.next() => match next {
                Some((kind, event)) => {
                    store.handle(kind, event);
                    // Whatever else has already arrived joins this change: a burst is one
                    // state. Bounded, so a flood cannot hold back publishing.
                    for _ in 0..BATCH {
                        match ready_now(&mut streams).await {
                            Some(Some((kind, event))) => store.handle(kind, event),
                            Some(None) => return,
                            None => break,
                        }
                    }
                }
                // The watcher's streams never end; this is only reachable if that changes.
                None => return,
            },
        }
    }
}

/// The next event if one is ready now, without waiting.
async fn ready_now<S: Stream + Unpin>(stream: &mut S) -> Option<Option<S::Item>> {
    std::future::poll_fn(|cx| match Pin::new(&mut *stream).poll_next(cx) {
        Poll::Ready(next) => Poll::Ready(Some(next)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// What is known about one kind.
#[derive(Default)]
struct KindState {
    /// Whether the first list is done (or the kind is not served): the gate for publishing.
    listed: bool,
    /// The objects of this kind in the state, last good versions included.
    keys: BTreeSet<ObjectKey>,
    /// Objects whose current version failed to decode.
    invalid: BTreeMap<ObjectKey, Problem>,
    /// Between the watcher's `Init` and `InitDone`: the relist so far.
    relist: Option<Relist>,
    /// Why the kind cannot be listed (not served, forbidden), until it lists again.
    unlisted: Option<Problem>,
    /// The last watcher error logged, so a retry loop warns once and then stays quiet.
    last_error: Option<String>,
}

#[derive(Default)]
struct Relist {
    objects: Vec<(ObjectKey, Object)>,
    invalid: BTreeMap<ObjectKey, Problem>,
}

/// Every kind's objects and problems, and what changed since the last flush.
#[derive(Default)]
struct Store {
    state: State,
    kinds: BTreeMap<Kind, KindState>,
    state_changed: bool,
    problems_changed: bool,
    published: bool,
}

impl Store {
    fn ready(&self) -> bool {
        Kind::ALL
            .iter()
            .all(|kind| self.kinds.get(kind).is_some_and(|k| k.listed))
    }

    fn needs_flush(&self) -> bool {
        self.problems_changed || (self.state_changed && self.ready())
    }

    fn flush(&mut self, states: &watch::Sender<Arc<State>>, board: &ProblemBoard) {
        if self.problems_changed {
            board.set(REPORTER, self.problems());
            self.problems_changed = false;
        }
        if self.state_changed && self.ready() {
            if !self.published {
                tracing::info!(objects = ?self.state.counts(), "every kind listed; publishing the cluster state");
                self.published = true;
            } else {
                tracing::debug!(objects = ?self.state.counts(), "cluster state changed");
            }
            states.send_replace(Arc::new(self.state.clone()));
            self.state_changed = false;
        }
    }

    /// Every current problem, kind by kind.
    fn problems(&self) -> Vec<Problem> {
        self.kinds
            .values()
            .flat_map(|k| k.unlisted.iter().chain(k.invalid.values()))
            .cloned()
            .collect()
    }

    fn handle(&mut self, kind: Kind, event: Result<Event<DynamicObject>, watcher::Error>) {
        match event {
            Ok(Event::Init) => {
                self.kinds.entry(kind).or_default().relist = Some(Relist::default());
            }
            Ok(Event::InitApply(object)) => {
                let (key, decoded) = decode_object(kind, object);
                let entry = self.kinds.entry(kind).or_default();
                match &mut entry.relist {
                    Some(relist) => match decoded {
                        Ok(object) => relist.objects.push((key, object)),
                        Err(mut problem) => {
                            problem.kept_last_good = entry.keys.contains(&key);
                            relist.invalid.insert(key, problem);
                        }
                    },
                    // Not expected (InitApply always follows Init); apply it as a change.
                    None => self.apply(kind, key, decoded),
                }
            }
            Ok(Event::InitDone) => self.finish_relist(kind),
            Ok(Event::Apply(object)) => {
                let (key, decoded) = decode_object(kind, object);
                self.apply(kind, key, decoded);
            }
            Ok(Event::Delete(object)) => {
                let key = key_of(kind, &object);
                let entry = self.kinds.entry(kind).or_default();
                if entry.keys.remove(&key) {
                    self.state.remove(&key);
                    self.state_changed = true;
                }
                if entry.invalid.remove(&key).is_some() {
                    self.problems_changed = true;
                }
            }
            Err(error) => self.watch_failed(kind, error),
        }
    }

    fn apply(&mut self, kind: Kind, key: ObjectKey, decoded: Result<Object, Problem>) {
        let entry = self.kinds.entry(kind).or_default();
        match decoded {
            Ok(object) => {
                self.state.insert(&key, object);
                self.state_changed = true;
                if entry.invalid.remove(&key).is_some() {
                    self.problems_changed = true;
                }
                entry.keys.insert(key);
            }
            Err(mut problem) => {
                problem.kept_last_good = entry.keys.contains(&key);
                if entry.invalid.get(&key) != Some(&problem) {
                    entry.invalid.insert(key, problem);
                    self.problems_changed = true;
                }
            }
        }
    }

    /// `InitDone`: the relist replaces what the kind held. Objects that were not listed are
    /// gone; objects listed in a version that fails to decode keep their last good one.
    fn finish_relist(&mut self, kind: Kind) {
        let entry = self.kinds.entry(kind).or_default();
        let relist = entry.relist.take().unwrap_or_default();
        let mut keys: BTreeSet<ObjectKey> = relist
            .invalid
            .keys()
            .filter(|key| entry.keys.contains(*key))
            .cloned()
            .collect();
        keys.extend(relist.objects.iter().map(|(key, _)| key.clone()));
        for gone in entry.keys.difference(&keys) {
            self.state.remove(gone);
        }
        for (key, object) in relist.objects {
            self.state.insert(&key, object);
        }
        entry.keys = keys;
        entry.invalid = relist.invalid;
        entry.listed = true;
        entry.unlisted = None;
        if entry.last_error.take().is_some() {
            tracing::info!(kind = kind.as_str(), "listed again after errors");
        }
        self.state_changed = true;
        self.problems_changed = true;
    }

    fn watch_failed(&mut self, kind: Kind, error: watcher::Error) {
        let entry = self.kinds.entry(kind).or_default();
        let message = error.to_string();
        if entry.last_error.as_deref() != Some(message.as_str()) {
            tracing::warn!(kind = kind.as_str(), %error, "watching failed; retrying with backoff");
            entry.last_error = Some(message);
        } else {
            tracing::debug!(kind = kind.as_str(), %error, "watching still fails; retrying with backoff");
        }
        let watcher::Error::InitialListFailed(kube::Error::Api(status)) = &error else {
            // Disconnects and 410 Gone: kube-runtime resumes or relists by itself.
            return;
        };
        entry.relist = None;
        let problem = if status.code == 404 {
            // Not served: no object of this kind can exist (deleting a CRD deletes its
            // objects), so the kind is empty and must not hold back the others.
            for key in std::mem::take(&mut entry.keys) {
                self.state.remove(&key);
                self.state_changed = true;
            }
            entry.invalid.clear();
            entry.listed = true;
            kind_problem(
                format!(
                    "{} ({}) is not served by the API server (is its CRD installed?); \
                     treated as having none, and listed again with backoff",
                    kind.as_str(),
                    kind.api_version()
                ),
                false,
            )
        } else {
            let consequence = if entry.listed {
                "keeping the objects listed last"
            } else {
                "nothing is published until every kind has been listed"
            };
            kind_problem(
                format!(
                    "cannot list {} ({}): {} {}: {}; retrying with backoff, {consequence}",
                    kind.as_str(),
                    kind.api_version(),
                    status.code,
                    status.reason,
                    status.message
                ),
                entry.listed && !entry.keys.is_empty(),
            )
        };
        if entry.unlisted.as_ref() != Some(&problem) {
            entry.unlisted = Some(problem);
            self.problems_changed = true;
        }
    }
}

/// A problem with a whole kind (its list), not one object.
fn kind_problem(message: String, kept_last_good: bool) -> Problem {
    Problem {
        source: REPORTER.into(),
        object: None,
        field: None,
        message,
        kept_last_good,
    }
}

/// The object's key, from its metadata (decoding may fail; the key is still needed).
fn key_of(kind: Kind, object: &DynamicObject) -> ObjectKey {
    let namespace = if kind.namespaced() {
        object
            .metadata
            .namespace
            .clone()
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| crate::state::DEFAULT_NAMESPACE.into())
    } else {
        String::new()
    };
    ObjectKey {
        kind,
        namespace,
        name: object.metadata.name.clone().unwrap_or_default(),
    }
}

/// Decodes one watched object through [`decode`], as the manifest source decodes a document.
/// The problem's `kept_last_good` is the caller's to fill.
fn decode_object(kind: Kind, object: DynamicObject) -> (ObjectKey, Result<Object, Problem>) {
    let key = key_of(kind, &object);
    let problem = |field: Option<String>, message: String| Problem {
        source: REPORTER.into(),
        object: Some(key.to_string()),
        field,
        message,
        kept_last_good: false,
    };
    let mut json = match serde_json::to_value(&object) {
        Ok(json) => json,
        Err(error) => {
            let problem = problem(None, format!("not representable as JSON: {error}"));
            return (key, Err(problem));
        }
    };
    // List items of built-in kinds come without apiVersion and kind; the watch says which.
    if let Value::Object(map) = &mut json {
        map.entry("apiVersion")
            .or_insert_with(|| kind.api_version().into());
        map.entry("kind").or_insert_with(|| kind.as_str().into());
    }
    match decode(json) {
        Ok((decoded_key, object)) if decoded_key == key => (key, Ok(object)),
        Ok((decoded_key, _)) => {
            let problem = problem(None, format!("decoded as {decoded_key}, not as watched"));
            (key, Err(problem))
        }
        Err(error) => {
            let problem = problem(error.field().map(str::to_owned), error.to_string());
            (key, Err(problem))
        }
    }
}

#[cfg(test)]
mod tests;
