//! The refresh schedule on paused time, against a scripted fake certifier: no network, and
//! hours of renewals in milliseconds.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::*;
use crate::identity::metrics::IdentityMetrics;
use crate::identity::refresh::{
    self, backoff, renewal_delay, CertifyError, Issued, ATTEMPT_TIMEOUT, BACKOFF_CAP,
};

#[derive(Clone, Copy, Debug)]
enum Step {
    /// Succeed with a certificate of this (schedule) lifetime.
    Issue(Duration),
    Fail,
    /// Never answer.
    Hang,
}

struct Script {
    steps: VecDeque<Step>,
    then: Step,
    attempts: Vec<Instant>,
    /// Leaf DER of every certificate handed out, in order.
    issued: Vec<CertificateDer<'static>>,
}

#[derive(Clone)]
struct Fake {
    ca: Arc<TestCa>,
    script: Arc<Mutex<Script>>,
}

impl Fake {
    fn new(steps: &[Step], then: Step) -> Fake {
        Fake {
            ca: Arc::new(TestCa::new("fake control plane")),
            script: Arc::new(Mutex::new(Script {
                steps: steps.iter().copied().collect(),
                then,
                attempts: Vec::new(),
                issued: Vec::new(),
            })),
        }
    }

    fn attempts(&self) -> Vec<Instant> {
        self.script.lock().unwrap().attempts.clone()
    }

    fn issued(&self) -> Vec<CertificateDer<'static>> {
        self.script.lock().unwrap().issued.clone()
    }

    fn set_then(&self, then: Step) {
        self.script.lock().unwrap().then = then;
    }
}

impl refresh::Certify for Fake {
    fn certify(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Issued, CertifyError>> + Send {
        let step = {
            let mut script = self.script.lock().unwrap();
            script.attempts.push(Instant::now());
            let then = script.then;
            script.steps.pop_front().unwrap_or(then)
        };
        let this = self.clone();
        async move {
            match step {
                Step::Issue(lifetime) => {
                    // Valid on the wall clock for an hour; the schedule only sees `lifetime`.
                    let leaf = this.ca.leaf(&[&uri("web")]);
                    this.script
                        .lock()
                        .unwrap()
                        .issued
                        .push(leaf.chain[0].clone());
                    let provider = Arc::new(rustls::crypto::ring::default_provider());
                    let bundle =
                        Arc::new(TrustBundle::new(vec![this.ca.root.clone()], &provider).unwrap());
                    let key = leaf.key();
                    let credentials = Credentials::new(leaf.chain, key, bundle, &provider).unwrap();
                    Ok(Issued {
                        credentials,
                        lifetime,
                        remaining: lifetime,
                    })
                }
                Step::Fail => Err(CertifyError::Rpc {
                    code: tonic::Code::Unavailable,
                    message: "control plane down".into(),
                }),
                Step::Hang => std::future::pending().await,
            }
        }
    }
}

struct Running {
    tls: Arc<Tls>,
    metrics: IdentityMetrics,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    start: Instant,
}

fn run(fake: &Fake) -> Running {
    let tls = Arc::new(Tls::empty());
    let metrics = IdentityMetrics::new(&mut Registry::default());
    let (stop, stop_rx) = oneshot::channel();
    let start = Instant::now();
    let task = tokio::spawn(refresh::run(
        fake.clone(),
        tls.state().clone(),
        metrics.clone(),
        id("web"),
        stop_rx,
        fastrand::Rng::with_seed(7),
    ));
    Running {
        tls,
        metrics,
        stop: Some(stop),
        task,
        start,
    }
}

fn current_leaf(tls: &Tls) -> Option<CertificateDer<'static>> {
    tls.state().current().map(|c| c.certified.cert[0].clone())
}

/// Timers fire on millisecond ticks; a paused clock lands at most a tick late.
const TICK: Duration = Duration::from_millis(2);

fn assert_between(what: &str, got: Duration, low: Duration, high: Duration) {
    assert!(
        got + TICK >= low && got <= high + TICK,
        "{what}: {got:?} not within [{low:?}, {high:?}]"
    );
}

#[tokio::test(start_paused = true)]
async fn renews_at_seventy_percent_of_the_lifetime_give_or_take_ten() {
    let lifetime = Duration::from_secs(1000);
    let fake = Fake::new(&[], Step::Issue(lifetime));
    let r = run(&fake);
    tokio::time::sleep(Duration::from_secs(20_000)).await;

    let attempts = fake.attempts();
    assert_eq!(attempts[0], r.start, "certifies at start");
    assert!(
        attempts.len() >= 25,
        "{} renewals in 20000 s",
        attempts.len()
    );
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    for gap in &gaps {
        assert_between(
            "renewal gap",
            *gap,
            lifetime.mul_f64(0.6),
            lifetime.mul_f64(0.8),
        );
    }
    let spread = *gaps.iter().max().unwrap() - *gaps.iter().min().unwrap();
    assert!(
        spread > Duration::from_secs(50),
        "renewals are jittered: spread {spread:?}"
    );
    let mean = gaps.iter().sum::<Duration>() / gaps.len() as u32;
    assert_between(
        "mean gap",
        mean,
        Duration::from_secs(650),
        Duration::from_secs(750),
    );

    assert_eq!(
        current_leaf(&r.tls).as_ref(),
        fake.issued().last(),
        "the newest certificate is in use"
    );
    assert_eq!(r.metrics.count("ok"), attempts.len() as u64);
    assert_eq!(r.metrics.count("error"), 0);
}

#[tokio::test(start_paused = true)]
async fn failed_renewals_back_off_exponentially_and_keep_the_certificate() {
    let lifetime = Duration::from_secs(1000);
    let fake = Fake::new(&[Step::Issue(lifetime)], Step::Fail);
    let r = run(&fake);
    // Stop short of expiry: the first certificate must still be in use.
    tokio::time::sleep(Duration::from_secs(990)).await;

    let first = fake.issued()[0].clone();
    assert_eq!(
        current_leaf(&r.tls),
        Some(first),
        "a failed renewal keeps the valid certificate"
    );
    assert!(r.tls.is_ready());

    let attempts = fake.attempts();
    let renewal = attempts[1] - attempts[0];
    assert_between(
        "first renewal",
        renewal,
        lifetime.mul_f64(0.6),
        lifetime.mul_f64(0.8),
    );
    let gaps: Vec<Duration> = attempts[1..].windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() >= 6, "only {} retries", gaps.len());
    for (i, gap) in gaps.iter().enumerate() {
        let base = Duration::from_secs(1 << i.min(6)).min(BACKOFF_CAP);
        assert_between(
            &format!("retry {}", i + 1),
            *gap,
            base.mul_f64(0.8),
            base.mul_f64(1.2).min(BACKOFF_CAP),
        );
    }
    assert_eq!(r.metrics.count("ok"), 1);
    assert_eq!(r.metrics.count("error"), gaps.len() as u64 + 1);
}

#[tokio::test(start_paused = true)]
async fn retries_never_sleep_past_expiry_and_an_expired_certificate_is_dropped() {
    let lifetime = Duration::from_secs(100);
    let fake = Fake::new(&[Step::Issue(lifetime)], Step::Fail);
    let r = run(&fake);
    tokio::time::sleep(Duration::from_secs(99)).await;
    assert!(r.tls.is_ready(), "valid until expiry");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let expiry = r.start + lifetime;
    let attempts = fake.attempts();
    let last_before = attempts.iter().rev().find(|t| **t < expiry).unwrap();
    let at_expiry = attempts
        .iter()
        .find(|t| **t >= expiry)
        .expect("an attempt at expiry");
    assert!(
        *at_expiry - expiry <= TICK,
        "the retry after {:?} was due after expiry and must be brought forward to it, not {:?}",
        *last_before - r.start,
        *at_expiry - r.start
    );
    assert!(!r.tls.is_ready(), "an expired certificate is not ready");
    assert_eq!(
        r.tls.local_identity(),
        None,
        "an expired certificate is no longer presented"
    );

    // Retries go on at the capped backoff; the first success restores readiness.
    tokio::time::sleep(Duration::from_secs(600)).await;
    let after: Vec<Instant> = fake
        .attempts()
        .into_iter()
        .filter(|t| *t > expiry)
        .collect();
    assert!(
        after.len() >= 8,
        "retries continue after expiry: {}",
        after.len()
    );
    for gap in after.windows(2).map(|w| w[1] - w[0]) {
        assert!(gap <= BACKOFF_CAP + TICK, "gap {gap:?} over the cap");
    }
    fake.set_then(Step::Issue(lifetime));
    tokio::time::timeout(Duration::from_secs(61), r.tls.ready())
        .await
        .expect("ready again after the next successful attempt");
    assert_eq!(r.tls.local_identity(), Some(id("web")));
}

#[tokio::test(start_paused = true)]
async fn not_ready_until_the_first_certificate_then_ready_resolves() {
    let fake = Fake::new(
        &[Step::Fail, Step::Fail],
        Step::Issue(Duration::from_secs(3600)),
    );
    let r = run(&fake);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!r.tls.is_ready(), "not ready before the first certificate");
    assert_eq!(r.tls.not_after(), None);
    tokio::time::timeout(Duration::from_secs(10), r.tls.ready())
        .await
        .expect("ready within the backoff");
    let attempts = fake.attempts();
    assert_eq!(attempts.len(), 3);
    assert_between(
        "first retry",
        attempts[1] - attempts[0],
        Duration::from_millis(800),
        Duration::from_millis(1200),
    );
    assert_between(
        "second retry",
        attempts[2] - attempts[1],
        Duration::from_millis(1600),
        Duration::from_millis(2400),
    );
    assert_eq!((r.metrics.count("error"), r.metrics.count("ok")), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn a_hung_control_plane_counts_as_a_failure_after_the_attempt_timeout() {
    let fake = Fake::new(&[Step::Hang], Step::Issue(Duration::from_secs(3600)));
    let r = run(&fake);
    tokio::time::timeout(Duration::from_secs(30), r.tls.ready())
        .await
        .expect("ready after the timeout and one backoff");
    let attempts = fake.attempts();
    assert_between(
        "retry after a hang",
        attempts[1] - attempts[0],
        ATTEMPT_TIMEOUT + Duration::from_millis(800),
        ATTEMPT_TIMEOUT + Duration::from_millis(1200),
    );
    assert_eq!(r.metrics.count("error"), 1);
}

#[tokio::test(start_paused = true)]
async fn the_loop_stops_with_its_owner_even_mid_attempt() {
    // Waiting for a renewal hours away.
    let fake = Fake::new(&[], Step::Issue(Duration::from_secs(24 * 3600)));
    let mut r = run(&fake);
    r.tls.ready().await;
    drop(r.stop.take());
    tokio::time::timeout(Duration::from_secs(1), r.task)
        .await
        .expect("stopped while sleeping")
        .unwrap();

    // Stuck in a certify call that never answers.
    let fake = Fake::new(&[], Step::Hang);
    let mut r = run(&fake);
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(r.stop.take());
    tokio::time::timeout(Duration::from_millis(100), r.task)
        .await
        .expect("stopped mid-attempt")
        .unwrap();

    // Through the public owner: dropping the Tls ends the task `spawn` started.
    let fake = Fake::new(&[], Step::Issue(Duration::from_secs(3600)));
    let tls = Tls::empty();
    let metrics = IdentityMetrics::new(&mut Registry::default());
    let task = refresh::spawn(fake, &tls, metrics, id("web"));
    tls.ready().await;
    drop(tls);
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("stopped with the Tls")
        .unwrap();
}

#[test]
fn renewal_counts_from_not_before_and_never_spins() {
    let mut rng = fastrand::Rng::with_seed(1);
    let lifetime = Duration::from_secs(1000);
    for _ in 0..1000 {
        // Half the lifetime already gone (a back-dated certificate): renew at 60-80% overall.
        let delay = renewal_delay(lifetime, lifetime / 2, &mut rng);
        assert!(
            delay >= Duration::from_secs(100) && delay <= Duration::from_secs(300),
            "{delay:?}"
        );
        // Nearly expired on arrival: renew soon, but not in a busy loop.
        let delay = renewal_delay(lifetime, Duration::from_secs(10), &mut rng);
        assert_eq!(delay, Duration::from_secs(1));
        let delay = renewal_delay(lifetime, Duration::from_millis(100), &mut rng);
        assert_eq!(delay, Duration::from_millis(50));
    }
}

#[test]
fn backoff_doubles_from_one_second_to_the_one_minute_cap() {
    let mut rng = fastrand::Rng::with_seed(2);
    for failures in 1..=40u32 {
        let base = Duration::from_secs(1u64 << (failures - 1).min(10)).min(BACKOFF_CAP);
        let delays: Vec<Duration> = (0..100).map(|_| backoff(failures, &mut rng)).collect();
        for delay in &delays {
            assert!(
                *delay >= base.mul_f64(0.8) && *delay <= base.mul_f64(1.2).min(BACKOFF_CAP),
                "{failures}: {delay:?}"
            );
        }
        // Jittered, so proxies that failed together do not retry together.
        let spread = *delays.iter().max().unwrap() - *delays.iter().min().unwrap();
        assert!(
            spread >= base.mul_f64(0.15),
            "{failures}: spread {spread:?}"
        );
    }
}
