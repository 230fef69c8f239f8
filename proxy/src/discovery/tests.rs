//! The subscription loop against a scripted fake control plane, on paused time: the
//! reconnect schedule, acks and nacks (once per split update, asking for a full sync when a
//! delta doesn't fit), what the Hello says after a reconnect, and stopping with the proxy.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio::time::Instant;
use weft_api::proto::discovery::v1 as pb;
use weft_api::proto::discovery::v1::subscribe_request::Kind;

use super::client::{
    Backoff, Connect, Subscriber, Updates, DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_CAP,
};
use super::{DiscoveryMetrics, ViewStore};
use crate::drain;

/// What the fake does on one subscribe.
enum Attempt {
    /// Fails at once, as an unreachable control plane does.
    Refuse,
    /// Streams these, then ends the stream.
    Stream(Vec<pb::ViewUpdate>),
    /// Streams these, then keeps the stream open.
    Hold(Vec<pb::ViewUpdate>),
}

#[derive(Default)]
struct Log {
    attempts: Vec<Instant>,
    /// What the proxy sent on each stream.
    requests: Vec<mpsc::UnboundedReceiver<pb::SubscribeRequest>>,
}

struct Fake {
    script: VecDeque<Attempt>,
    log: Arc<Mutex<Log>>,
}

struct FakeUpdates {
    queued: VecDeque<pb::ViewUpdate>,
    hold: bool,
}

impl Updates for FakeUpdates {
    async fn next(&mut self) -> Result<Option<pb::ViewUpdate>, tonic::Status> {
        match self.queued.pop_front() {
            Some(update) => Ok(Some(update)),
            None if self.hold => std::future::pending().await,
            None => Ok(None),
        }
    }
}

impl Connect for Fake {
    type Updates = FakeUpdates;

    async fn subscribe(
        &mut self,
        requests: mpsc::UnboundedReceiver<pb::SubscribeRequest>,
    ) -> Result<FakeUpdates, tonic::Status> {
        {
            let mut log = self.log.lock().unwrap();
            log.attempts.push(Instant::now());
            log.requests.push(requests);
        }
        match self.script.pop_front().unwrap_or(Attempt::Refuse) {
            Attempt::Refuse => Err(tonic::Status::unavailable("control plane down")),
            Attempt::Stream(updates) => Ok(FakeUpdates {
                queued: updates.into(),
                hold: false,
            }),
            Attempt::Hold(updates) => Ok(FakeUpdates {
                queued: updates.into(),
                hold: true,
            }),
        }
    }
}

struct Running {
    log: Arc<Mutex<Log>>,
    store: Arc<ViewStore>,
    metrics: DiscoveryMetrics,
    signal: drain::Signal,
    task: tokio::task::JoinHandle<()>,
}

fn start(script: Vec<Attempt>) -> Running {
    let log = Arc::new(Mutex::new(Log::default()));
    let store = Arc::new(ViewStore::new());
    let metrics = DiscoveryMetrics::new(&mut Registry::default());
    let (signal, watch) = drain::channel();
    let subscriber = Subscriber {
        connect: Fake {
            script: script.into(),
            log: log.clone(),
        },
        hello: pb::Hello {
            namespace: "shop".into(),
            pod: "orders-1".into(),
            current_version: String::new(),
            proxy_version: "test".into(),
            outbound_deltas: true,
            ..Default::default()
        },
        store: store.clone(),
        metrics: metrics.clone(),
        backoff: Backoff::new(
            DEFAULT_BACKOFF_BASE,
            DEFAULT_BACKOFF_CAP,
            fastrand::Rng::with_seed(7),
        ),
    };
    let task = tokio::spawn(subscriber.run(watch));
    Running {
        log,
        store,
        metrics,
        signal,
        task,
    }
}

fn view(version: &str, inbound: bool, outbound: bool) -> pb::ViewUpdate {
    pb::ViewUpdate {
        version: version.into(),
        inbound: inbound.then(|| pb::Inbound {
            namespace: "shop".into(),
            pod: "orders-1".into(),
            default_policy: pb::DefaultPolicy::Allow as i32,
            ..Default::default()
        }),
        outbound: outbound.then(pb::Outbound::default),
        ..Default::default()
    }
}

fn invalid(version: &str) -> pb::ViewUpdate {
    let mut update = view(version, true, false);
    if let Some(inbound) = &mut update.inbound {
        inbound.policies.push(pb::AuthorizationPolicy {
            namespace: "shop".into(),
            name: "broken".into(),
            action: pb::Action::Deny as i32,
            rules: vec![pb::Rule {
                from: vec![pb::Source {
                    principals: vec!["a*b".into()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    update
}

fn gaps(log: &Mutex<Log>) -> Vec<Duration> {
    let log = log.lock().unwrap();
    log.attempts.windows(2).map(|w| w[1] - w[0]).collect()
}

/// Everything the proxy has sent on stream `i` so far.
fn sent(log: &Mutex<Log>, i: usize) -> Vec<Kind> {
    let mut log = log.lock().unwrap();
    let mut out = Vec::new();
    while let Ok(request) = log.requests[i].try_recv() {
        out.push(request.kind.unwrap());
    }
    out
}

#[tokio::test(start_paused = true)]
async fn reconnects_with_exponential_jittered_backoff_up_to_the_cap() {
    let run = start(vec![]);
    tokio::time::sleep(Duration::from_secs(120)).await;
    let gaps = gaps(&run.log);
    assert!(gaps.len() > 12, "{gaps:?}");
    for (i, gap) in gaps.iter().enumerate() {
        let step = DEFAULT_BACKOFF_BASE
            .saturating_mul(1 << i.min(20))
            .min(DEFAULT_BACKOFF_CAP);
        assert!(
            *gap >= step / 2 && *gap <= step,
            "wait {i} was {gap:?}, step {step:?}: {gaps:?}"
        );
    }
    assert_eq!(run.metrics.reconnects(), gaps.len() as u64);
    assert!(!run.metrics.is_connected());
    assert!(!run.store.is_applied());
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_delivered_an_update_resets_the_backoff() {
    let mut script: Vec<Attempt> = (0..6).map(|_| Attempt::Refuse).collect();
    script.push(Attempt::Stream(vec![view("v1", true, true)]));
    let run = start(script);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let gaps = gaps(&run.log);
    assert!(gaps[5] >= Duration::from_millis(1600), "{gaps:?}");
    // Attempt 6 streamed v1 and ended; the wait before attempt 7 starts over.
    assert!(gaps[6] <= DEFAULT_BACKOFF_BASE, "{gaps:?}");
    assert!(
        gaps[8] >= 2 * DEFAULT_BACKOFF_BASE,
        "then grows again: {gaps:?}"
    );
    assert_eq!(run.store.load().as_ref().unwrap().version, "v1");

    let hello = |kind: &Kind| match kind {
        Kind::Hello(hello) => hello.clone(),
        other => panic!("expected a Hello first, got {other:?}"),
    };
    let first = sent(&run.log, 0);
    assert_eq!(hello(&first[0]).current_version, "");
    assert_eq!(hello(&first[0]).pod, "orders-1");
    let streamed = sent(&run.log, 6);
    assert_eq!(
        streamed[1],
        Kind::Ack(pb::Ack {
            version: "v1".into(),
            error: String::new(),
            ..Default::default()
        })
    );
    // After a reconnect the control plane learns what the proxy still enforces.
    assert_eq!(hello(&sent(&run.log, 7)[0]).current_version, "v1");
}

#[tokio::test(start_paused = true)]
async fn acks_applied_updates_and_nacks_rejected_ones() {
    let run = start(vec![Attempt::Hold(vec![
        view("v1", true, true),
        invalid("v2"),
        view("v3", false, true),
    ])]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = sent(&run.log, 0);
    let acks: Vec<pb::Ack> = sent
        .into_iter()
        .filter_map(|kind| match kind {
            Kind::Ack(ack) => Some(ack),
            Kind::Hello(_) => None,
        })
        .collect();
    assert_eq!(acks.len(), 3, "{acks:?}");
    assert_eq!(
        (acks[0].version.as_str(), acks[0].error.as_str()),
        ("v1", "")
    );
    assert_eq!(acks[1].version, "v2");
    assert!(acks[1].error.contains("shop/broken"), "{:?}", acks[1].error);
    assert_eq!(
        (acks[2].version.as_str(), acks[2].error.as_str()),
        ("v3", "")
    );
    assert_eq!(run.store.load().as_ref().unwrap().version, "v3");
    assert_eq!(run.metrics.updates("applied"), 2);
    assert_eq!(run.metrics.updates("rejected"), 1);
    assert!(run.metrics.is_connected());
    assert_eq!(gaps(&run.log).len(), 0, "an open stream is not reopened");
}

#[tokio::test(start_paused = true)]
async fn stops_when_the_proxy_drains_mid_stream_and_mid_backoff() {
    for script in [vec![Attempt::Hold(vec![])], vec![]] {
        let run = start(script);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        assert_eq!(
            run.signal.drain(Duration::from_secs(5)).await,
            drain::Drained::Graceful
        );
        assert!(started.elapsed() < Duration::from_millis(10));
        tokio::time::timeout(Duration::from_secs(1), run.task)
            .await
            .expect("the task ends")
            .unwrap();
        assert!(!run.metrics.is_connected());
    }
}

#[test]
fn discovery_is_on_with_a_pod_name_in_control_plane_mode_only() {
    use clap::Parser;
    let settings = |extra: &[&str]| {
        let mut argv = vec!["weft-proxy"];
        argv.extend_from_slice(extra);
        let args = crate::bootstrap::Cli::try_parse_from(argv).unwrap().run;
        let mode = crate::identity::Mode::from_args(&args.identity).unwrap();
        super::Settings::from_args(&args, &mode)
    };
    let control_plane = [
        "--control-plane-addr",
        "cp:15012",
        "--trust-anchors",
        "/anchors.pem",
    ];
    let with = |more: &[&'static str]| [&control_plane[..], more].concat();

    let off = settings(&with(&[
        "--namespace",
        "shop",
        "--service-account",
        "orders",
    ]));
    assert!(off.unwrap().is_none(), "no --pod-name: no discovery");
    let on = settings(&with(&[
        "--namespace",
        "shop",
        "--service-account",
        "orders",
        "--pod-name",
        "orders-1",
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(
        (on.namespace.as_str(), on.pod.as_str()),
        ("shop", "orders-1")
    );
    assert_eq!(on.control_plane.addr, "cp:15012");
    let from_identity = settings(&with(&[
        "--identity",
        "spiffe://td/ns/billing/sa/batch",
        "--pod-name",
        "batch-1",
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(from_identity.namespace, "billing");

    let error = settings(&["--pod-name", "orders-1"]).unwrap_err();
    assert!(
        error.to_string().contains("--control-plane-addr"),
        "{error}"
    );
}

fn services_message(
    version: &str,
    sync: pb::Sync,
    base: &str,
    services_version: &str,
    names: &[&str],
    more: bool,
) -> pb::ViewUpdate {
    pb::ViewUpdate {
        version: version.into(),
        services: Some(pb::Services {
            sync: sync as i32,
            base: base.into(),
            version: services_version.into(),
            upserted: names
                .iter()
                .map(|name| pb::Service {
                    namespace: "shop".into(),
                    name: name.to_string(),
                    ..Default::default()
                })
                .collect(),
            removed: vec![],
        }),
        more,
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn acks_a_split_update_once_and_asks_for_a_full_sync_when_a_delta_does_not_fit() {
    let mut first = services_message("v1", pb::Sync::Full, "", "s1", &["a"], true);
    first.inbound = view("v1", true, false).inbound;
    let last = services_message("v1", pb::Sync::Full, "", "s1", &["b"], false);
    let off_base = services_message("v2", pb::Sync::Delta, "s0", "s2", &["c"], false);
    let run = start(vec![
        Attempt::Stream(vec![first, last, off_base]),
        Attempt::Hold(vec![]),
    ]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acks: Vec<pb::Ack> = sent(&run.log, 0)
        .into_iter()
        .filter_map(|kind| match kind {
            Kind::Ack(ack) => Some(ack),
            Kind::Hello(hello) => {
                assert!(hello.outbound_deltas, "the proxy takes deltas");
                assert_eq!(hello.services_version, "");
                None
            }
        })
        .collect();
    assert_eq!(acks.len(), 2, "one per update, not per message: {acks:?}");
    assert_eq!(
        (acks[0].version.as_str(), acks[0].error.as_str()),
        ("v1", "")
    );
    assert!(!acks[0].full_sync);
    assert_eq!(acks[1].version, "v2");
    assert!(acks[1].error.contains("\"s0\""), "{:?}", acks[1].error);
    assert!(acks[1].full_sync, "asks for a full sync");
    let view = run.store.load_full().expect("v1 stays");
    assert_eq!(view.version, "v1");
    assert_eq!(view.outbound.services.len(), 2);

    // After the reconnect the Hello names the Services held, so an unchanged mesh costs no
    // full sync.
    let hello = match &sent(&run.log, 1)[0] {
        Kind::Hello(hello) => hello.clone(),
        other => panic!("expected a Hello, got {other:?}"),
    };
    assert_eq!(
        (
            hello.current_version.as_str(),
            hello.services_version.as_str()
        ),
        ("v1", "s1")
    );
}
