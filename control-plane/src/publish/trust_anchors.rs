//! Keeps the ConfigMap `weft-trust-anchors` (key `ca.crt`: the CA's trust bundle, PEM) present
//! and current in every meshed namespace, as istiod does with `istio-ca-root-cert`. Injected
//! proxies mount it from their own namespace (the injector's defaults
//! `--trust-anchors-config-map`/`--trust-anchors-key`); a pod whose namespace lacks it stays in
//! `ContainerCreating`.
//!
//! **Meshed** ([`meshed_namespaces`]): a namespace labelled `weft.dev/inject=enabled`, or one
//! holding a pod annotated `weft.dev/status` (an injected pod, whichever way it was injected),
//! unless it is being deleted (the API server refuses new content there).
//!
//! **What triggers an apply.** The task reacts to three inputs: the cluster state the
//! Kubernetes source publishes (namespaces and pods), the CA's trust bundle
//! ([`crate::ca::Ca::subscribe`]: rotation), and a watch on the ConfigMaps themselves. A
//! namespace is applied to when it is meshed and its ConfigMap does not hold the current
//! bundle with our labels as far as the task knows: what it last applied there, or what the
//! watch last showed. Unchanged ConfigMaps are never rewritten, whatever else changes, and a
//! restart re-applies nothing that is already current (the watch's first list says so).
//!
//! **Why a watch on the ConfigMaps** (cluster-wide, field selector
//! `metadata.name=weft-trust-anchors`) rather than re-applying on the source's relists: relists
//! only happen when a watch breaks, so a deleted or hand-edited ConfigMap would stay missing
//! or wrong for an unbounded time, and every new pod of the namespace would hang meanwhile.
//! The field selector makes the API server send only these objects — one per namespace at
//! most — so the watch costs one connection and almost no memory. It also tells a restarted
//! control plane what is already in place. Until its first list is done nothing is applied.
//!
//! **How.** Server-side apply (`PATCH …?fieldManager=weft-control-plane&force=true`, content
//! type `application/apply-patch+yaml`) of exactly `data.ca.crt` and our labels: it creates the
//! ConfigMap or updates it, takes the fields over from whoever set them before (such as
//! `weftctl install`), and leaves alone anything else a user added. At most [`MAX_IN_FLIGHT`]
//! applies run at once, each on its own task, so a slow or failing namespace holds up no other.
//! A failed apply is logged, counted, put on the [`ProblemBoard`] (`/debug/problems`,
//! `weftctl check`) and retried after [`backoff`]: 1 s, doubling up to [`MAX_BACKOFF`] (no
//! jitter: [`MAX_IN_FLIGHT`] already spreads a mass retry). Retries stop when the namespace
//! stops being meshed or is deleted.
//!
//! **Never deleted.** A namespace that stops being meshed keeps its ConfigMap: its pods (and
//! any pod still being created) may mount it. Delete it by hand once no injected pod is left.
//!
//! Metric: `weft_cp_trust_anchor_applies_total{result="ok"|"error"}`.
//!
//! # RBAC
//!
//! ```yaml
//! - apiGroups: [""]
//!   resources: [configmaps]
//!   verbs: [get, list, watch, create, patch, update]
//! ```
//!
//! This task needs `list` and `watch` (the watch), `patch` (the apply) and `create` (an apply
//! that creates the object is also authorized as a create). It never `get`s or `update`s;
//! `weftctl install` grants those two as well.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry as Metrics;
use tokio::sync::watch;
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_stream::{Stream, StreamExt};

use crate::ca::Authority;
use crate::state::{Problem, ProblemBoard, State};

mod desired;

pub use desired::{
    config_map, holds, meshed_namespaces, CONFIG_MAP, INJECT_LABEL, KEY, LABELS, STATUS_ANNOTATION,
};

/// Our server-side apply field manager.
pub const FIELD_MANAGER: &str = "weft-control-plane";
/// The problems this task reports on the board (and their `source`).
pub const REPORTER: &str = "trust-anchors";
/// Applies running at once.
pub const MAX_IN_FLIGHT: usize = 8;
/// The first retry's delay; each further failure doubles it.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot apply ConfigMap {namespace}/weft-trust-anchors: {source}")]
    Apply {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("the apply task for namespace {namespace} failed: {source}")]
    Task {
        namespace: String,
        #[source]
        source: JoinError,
    },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// `weft_cp_trust_anchor_applies_total{result}`.
#[derive(Clone, Debug, Default)]
pub struct PublishMetrics {
    applies: Family<ResultLabel, Counter>,
}

impl PublishMetrics {
    pub fn register(metrics: &mut Metrics) -> Self {
        let this = PublishMetrics::default();
        // Both series from the start, so `increase(…{result="error"}[…])` has a series.
        for result in ["ok", "error"] {
            drop(this.applies.get_or_create(&ResultLabel { result }));
        }
        metrics.register(
            "weft_cp_trust_anchor_applies",
            "Server-side applies of the weft-trust-anchors ConfigMap in meshed namespaces \
             (result: ok, error)",
            this.applies.clone(),
        );
        this
    }

    /// Applies counted so far with `result` (`ok`, `error`).
    pub fn applies(&self, result: &'static str) -> u64 {
        self.applies.get_or_create(&ResultLabel { result }).get()
    }
}

/// The delay before the `attempt`th retry (1-based): 1 s, 2 s, 4 s … [`MAX_BACKOFF`].
pub fn backoff(attempt: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

/// The running task. Dropping it stops publishing (ConfigMaps already written stay).
#[must_use = "dropping the publisher stops publishing the trust anchors"]
#[derive(Debug)]
pub struct TrustAnchorPublisher {
    task: JoinHandle<()>,
}

impl TrustAnchorPublisher {
    /// Whether the task has stopped (its state or CA channel closed).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for TrustAnchorPublisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts publishing and returns at once. `states` is the Kubernetes source's channel: its
/// value at the time of the call is taken to be the placeholder from before the first list,
/// and nothing is applied until the next one. `anchors` is [`crate::ca::Ca::subscribe`].
pub fn run(
    client: kube::Client,
    states: watch::Receiver<Arc<State>>,
    anchors: watch::Receiver<Arc<Authority>>,
    board: Arc<ProblemBoard>,
    metrics: PublishMetrics,
) -> TrustAnchorPublisher {
    let api = Api::<ConfigMap>::all(client.clone());
    let selector = format!("metadata.name={CONFIG_MAP}");
    let events: Events =
        Box::pin(watcher(api, watcher::Config::default().fields(&selector)).default_backoff());
    let publisher = Publisher {
        client,
        board,
        metrics,
        desired: String::new(),
        meshed: BTreeSet::new(),
        current: BTreeMap::new(),
        relist: None,
        failing: BTreeMap::new(),
        in_flight: HashMap::new(),
        state_seen: false,
        listed: false,
        watch_problem: None,
        last_watch_error: None,
        reported: Vec::new(),
    };
    TrustAnchorPublisher {
        task: tokio::spawn(publisher.drive(events, states, anchors)),
    }
}

type Events = Pin<Box<dyn Stream<Item = Result<Event<ConfigMap>, watcher::Error>> + Send>>;

/// One finished apply.
struct Applied {
    namespace: String,
    pem: String,
    result: Result<(), PublishError>,
}

/// A namespace whose last apply failed.
struct Failure {
    attempts: u32,
    retry_at: Instant,
    message: String,
}

struct Publisher {
    client: kube::Client,
    board: Arc<ProblemBoard>,
    metrics: PublishMetrics,
    /// The trust bundle to publish (PEM).
    desired: String,
    meshed: BTreeSet<String>,
    /// What each namespace's ConfigMap holds with our labels, as far as we know: what we
    /// last applied there, or what the watch last showed. Absent: missing, or not ours.
    current: BTreeMap<String, String>,
    /// Between the watch's `Init` and `InitDone`: the relist so far.
    relist: Option<BTreeMap<String, String>>,
    failing: BTreeMap<String, Failure>,
    /// Namespaces with an apply running, by its task.
    in_flight: HashMap<tokio::task::Id, String>,
    /// Whether the source has published its first state.
    state_seen: bool,
    /// Whether the ConfigMap watch has listed once.
    listed: bool,
    /// Why the ConfigMaps cannot be listed, until they are.
    watch_problem: Option<Problem>,
    /// The last watch error logged, so a retry loop warns once.
    last_watch_error: Option<String>,
    /// What is on the board now.
    reported: Vec<Problem>,
}

impl Publisher {
    async fn drive(
        mut self,
        mut events: Events,
        mut states: watch::Receiver<Arc<State>>,
        mut anchors: watch::Receiver<Arc<Authority>>,
    ) {
        let authority = anchors.borrow_and_update().clone();
        self.set_anchors(&authority);
        let mut applies = JoinSet::new();
        loop {
            self.dispatch(&mut applies);
            self.report();
            let retry = self.next_retry();
            tokio::select! {
                changed = states.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let state = states.borrow_and_update().clone();
                    self.state_seen = true;
                    self.set_meshed(meshed_namespaces(&state));
                }
                changed = anchors.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let authority = anchors.borrow_and_update().clone();
                    self.set_anchors(&authority);
                }
                event = events.next() => match event {
                    Some(event) => self.observe(event),
                    // The watcher's stream never ends; this is only reachable if that changes.
                    None => return,
                },
                Some(done) = applies.join_next_with_id(), if !applies.is_empty() => {
                    let applied = match done {
                        Ok((id, applied)) => {
                            self.in_flight.remove(&id);
                            applied
                        }
                        Err(error) => {
                            let namespace = self.in_flight.remove(&error.id()).unwrap_or_default();
                            Applied {
                                pem: String::new(),
                                result: Err(PublishError::Task {
                                    namespace: namespace.clone(),
                                    source: error,
                                }),
                                namespace,
                            }
                        }
                    };
                    self.finished(applied);
                }
                () = tokio::time::sleep_until(retry.unwrap_or_else(Instant::now)),
                    if retry.is_some() => {}
            }
        }
    }

    fn ready(&self) -> bool {
        self.state_seen && self.listed
    }

    fn needs_apply(&self, namespace: &str) -> bool {
        self.current.get(namespace) != Some(&self.desired)
            && !self.in_flight.values().any(|n| n == namespace)
    }

    /// Starts an apply for every meshed namespace that needs one and is not backing off.
    fn dispatch(&mut self, applies: &mut JoinSet<Applied>) {
        if !self.ready() {
            return;
        }
        let now = Instant::now();
        let due: Vec<String> = self
            .meshed
            .iter()
            .filter(|ns| self.needs_apply(ns))
            .filter(|ns| self.failing.get(*ns).is_none_or(|f| f.retry_at <= now))
            .take(MAX_IN_FLIGHT.saturating_sub(self.in_flight.len()))
            .cloned()
            .collect();
        for namespace in due {
            tracing::debug!(
                namespace = %namespace,
                config_map = CONFIG_MAP,
                "applying the trust anchors"
            );
            let task = apply(self.client.clone(), namespace.clone(), self.desired.clone());
            let id = applies.spawn(task).id();
            self.in_flight.insert(id, namespace);
        }
    }

    /// When the next backed-off namespace may be retried (none while every slot is busy: a
    /// finishing apply wakes the loop then).
    fn next_retry(&self) -> Option<Instant> {
        if !self.ready() || self.in_flight.len() >= MAX_IN_FLIGHT {
            return None;
        }
        self.failing
            .iter()
            .filter(|(ns, _)| self.meshed.contains(*ns) && self.needs_apply(ns))
            .map(|(_, failure)| failure.retry_at)
            .min()
    }

    fn finished(&mut self, applied: Applied) {
        let Applied {
            namespace,
            pem,
            result,
        } = applied;
        match result {
            Ok(()) => {
                self.metrics
                    .applies
                    .get_or_create(&ResultLabel { result: "ok" })
                    .inc();
                let roots = pem.matches("-----BEGIN CERTIFICATE-----").count();
                match self.failing.remove(&namespace) {
                    Some(failure) => tracing::info!(
                        namespace = %namespace,
                        config_map = CONFIG_MAP,
                        roots,
                        failed_attempts = failure.attempts,
                        "published the trust anchors after failures"
                    ),
                    None => tracing::info!(
                        namespace = %namespace,
                        config_map = CONFIG_MAP,
                        roots,
                        "published the trust anchors"
                    ),
                }
                self.current.insert(namespace, pem);
            }
            Err(error) => {
                self.metrics
                    .applies
                    .get_or_create(&ResultLabel { result: "error" })
                    .inc();
                if !self.meshed.contains(&namespace) {
                    tracing::debug!(
                        namespace = %namespace,
                        %error,
                        "applying the trust anchors failed; the namespace is no longer meshed, \
                         not retrying"
                    );
                    self.failing.remove(&namespace);
                    return;
                }
                let failure = self.failing.entry(namespace.clone()).or_insert(Failure {
                    attempts: 0,
                    retry_at: Instant::now(),
                    message: String::new(),
                });
                failure.attempts += 1;
                let delay = backoff(failure.attempts);
                failure.retry_at = Instant::now() + delay;
                failure.message = error.to_string();
                tracing::warn!(
                    namespace = %namespace,
                    config_map = CONFIG_MAP,
                    attempt = failure.attempts,
                    retry_in = ?delay,
                    %error,
                    "applying the trust anchors failed; retrying with backoff"
                );
            }
        }
    }

    fn set_meshed(&mut self, meshed: BTreeSet<String>) {
        for gone in self.meshed.difference(&meshed) {
            tracing::info!(
                namespace = %gone,
                config_map = CONFIG_MAP,
                "namespace no longer meshed; its trust anchors ConfigMap is left in place"
            );
            self.failing.remove(gone);
        }
        self.meshed = meshed;
    }

    fn set_anchors(&mut self, authority: &Authority) {
        let pem = authority.trust_bundle_pem();
        if pem == self.desired {
            return;
        }
        if !self.desired.is_empty() {
            tracing::info!(
                roots = authority.trust_bundle().len(),
                namespaces = self.meshed.len(),
                "the trust bundle changed; publishing it to every meshed namespace"
            );
        }
        self.desired = pem;
    }

    fn observe(&mut self, event: Result<Event<ConfigMap>, watcher::Error>) {
        match event {
            Ok(Event::Init) => self.relist = Some(BTreeMap::new()),
            Ok(Event::InitApply(config_map)) => match (&mut self.relist, holds(&config_map)) {
                (Some(relist), Some((namespace, pem))) => drop(relist.insert(namespace, pem)),
                (Some(_), None) => {}
                // Not expected (InitApply always follows Init); take it as a change.
                (None, _) => self.changed(&config_map),
            },
            Ok(Event::InitDone) => {
                // Objects missing from the relist were deleted while the watch was away.
                self.current = self.relist.take().unwrap_or_default();
                if !self.listed {
                    tracing::info!(
                        existing = self.current.len(),
                        "trust anchors ConfigMaps listed; publishing"
                    );
                }
                self.listed = true;
                self.watch_problem = None;
                if self.last_watch_error.take().is_some() {
                    tracing::info!(
                        config_map = CONFIG_MAP,
                        "ConfigMaps listed again after errors"
                    );
                }
            }
            Ok(Event::Apply(config_map)) => self.changed(&config_map),
            Ok(Event::Delete(config_map)) => {
                let Some(namespace) = config_map.metadata.namespace else {
                    return;
                };
                self.current.remove(&namespace);
                if self.meshed.contains(&namespace) {
                    tracing::info!(
                        namespace = %namespace,
                        config_map = CONFIG_MAP,
                        "the trust anchors ConfigMap was deleted; recreating it"
                    );
                }
            }
            Err(error) => self.watch_failed(error),
        }
    }

    /// A ConfigMap was created or changed (by us or anyone else).
    fn changed(&mut self, config_map: &ConfigMap) {
        match holds(config_map) {
            Some((namespace, pem)) => {
                if pem != self.desired && self.meshed.contains(&namespace) {
                    tracing::debug!(
                        namespace = %namespace,
                        config_map = CONFIG_MAP,
                        "the ConfigMap holds other trust anchors; applying ours"
                    );
                }
                self.current.insert(namespace, pem);
            }
            None => {
                if let Some(namespace) = &config_map.metadata.namespace {
                    if self.current.remove(namespace).is_some() && self.meshed.contains(namespace) {
                        tracing::info!(
                            namespace = %namespace,
                            config_map = CONFIG_MAP,
                            "the ConfigMap lost its trust anchors or labels; applying them again"
                        );
                    }
                }
            }
        }
    }

    fn watch_failed(&mut self, error: watcher::Error) {
        let message = error.to_string();
        if self.last_watch_error.as_deref() != Some(message.as_str()) {
            tracing::warn!(
                config_map = CONFIG_MAP,
                %error,
                "watching the trust anchors ConfigMaps failed; retrying with backoff"
            );
            self.last_watch_error = Some(message);
        }
        if let watcher::Error::InitialListFailed(error) = &error {
            let consequence = if self.listed {
                "applying from what was seen last"
            } else {
                "nothing is published until they list"
            };
            self.relist = None;
            self.watch_problem = Some(Problem {
                source: REPORTER.into(),
                object: None,
                field: None,
                message: format!(
                    "cannot list the ConfigMaps {CONFIG_MAP}: {error}; retrying with backoff, \
                     {consequence}"
                ),
                kept_last_good: self.listed,
            });
        }
    }

    /// Puts the current failures on the board, when they changed.
    fn report(&mut self) {
        let problems: Vec<Problem> = self
            .watch_problem
            .iter()
            .cloned()
            .chain(self.failing.iter().map(|(namespace, failure)| Problem {
                source: REPORTER.into(),
                object: Some(format!("ConfigMap {namespace}/{CONFIG_MAP}")),
                field: None,
                message: format!("{}; retrying with backoff", failure.message),
                kept_last_good: self.current.contains_key(namespace),
            }))
            .collect();
        if problems != self.reported {
            self.board.set(REPORTER, problems.clone());
            self.reported = problems;
        }
    }
}

async fn apply(client: kube::Client, namespace: String, pem: String) -> Applied {
    let api = Api::<ConfigMap>::namespaced(client, &namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let result = api
        .patch(
            CONFIG_MAP,
            &params,
            &Patch::Apply(config_map(&namespace, &pem)),
        )
        .await
        .map(drop)
        .map_err(|source| PublishError::Apply {
            namespace: namespace.clone(),
            source,
        });
    Applied {
        namespace,
        pem,
        result,
    }
}

#[cfg(test)]
mod tests;
