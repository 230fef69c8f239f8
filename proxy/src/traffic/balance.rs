//! Choosing an endpoint for each request to a Service.
//!
//! By default, power of two choices over peak-EWMA load (Linkerd's balancer, after Finagle):
//! pick two endpoints at random and send to the cheaper, where an endpoint's cost is its
//! latency estimate times the requests it has in flight, plus one. Two random candidates are
//! enough to avoid the worst endpoint almost always, cost O(1) whatever the Service's size,
//! and, unlike "always the cheapest", do not herd every proxy in the mesh onto the same
//! endpoint at once. Round robin is the alternative a `TrafficPolicy` may ask for.
//!
//! Either way only endpoints that are ready and not ejected ([`super::outlier`]) are
//! candidates; an endpoint on probation takes exactly one request, its probe. When nothing is
//! eligible the balancer panics (Envoy's word): it chooses among all ready endpoints,
//! ignoring ejection, since sending a request to an endpoint that may be failing beats
//! failing it for certain.
//!
//! The request path calls [`Balancer::choose`], then [`Endpoint::start`] on the endpoint it
//! got (right away: that is when a probation probe is taken), then [`InFlight::finish`] when
//! the response head arrives or the attempt fails.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use weft_api::proto::discovery::v1 as pb;
use weft_api::SpiffeId;

use super::outlier::{Availability, Outlier, OutlierConfig, OutlierStatus};

/// The latency an endpoint is assumed to have before its first response (Linkerd's default).
/// A request inside a cluster usually takes a few milliseconds, so 30 ms is pessimistic
/// enough that a new endpoint (a pod just scaled up, still warming its caches) is not handed
/// a flood before anything is known about it, and optimistic enough that it wins against a
/// busy or slow endpoint and gets its first requests soon. An endpoint that has not answered
/// for a while drifts back to it (see [`Endpoint::rtt`]).
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);

/// The time constant of the latency average (Linkerd's default): an estimate has moved
/// 1 − 1/e (63%) of the way to a new, lower latency after this long. A latency spike (a GC
/// pause, a noisy neighbour) usually lasts seconds, so its peak should still weigh a few
/// seconds later, or the balancer sends traffic straight back into it; but an endpoint that
/// recovered should win its share back within tens of seconds.
pub const DEFAULT_DECAY: Duration = Duration::from_secs(10);

/// Random draws P2C makes for a candidate before scanning the set for one. With half the
/// endpoints out (the most ejection allows by default) eight misses in a row happen once in
/// 256 choices, so the O(n) scan stays rare, and it guarantees an eligible endpoint is found
/// whenever one exists.
const SAMPLE_DRAWS: usize = 8;

/// Times [`Balancer::choose`] picks again when the probation probe it picked was taken by a
/// concurrent request between the look and the reservation.
const PICK_ATTEMPTS: usize = 3;

/// How a request to an endpoint ended, for load and outlier ejection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A 5xx response, a reset, a connect failure or a timeout.
    Failure,
}

/// The balancing policy of a Service (`TrafficPolicy.loadBalancer`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoadBalancer {
    /// Power of two choices over peak-EWMA latency × (in flight + 1).
    #[default]
    P2cEwma,
    /// The next eligible endpoint in order.
    RoundRobin,
}

impl LoadBalancer {
    /// From the proto's enum value; unspecified or unknown values get the default.
    pub fn from_proto(value: i32) -> Self {
        pb::LoadBalancer::try_from(value).map_or(LoadBalancer::default(), LoadBalancer::from)
    }
}

impl From<pb::LoadBalancer> for LoadBalancer {
    fn from(proto: pb::LoadBalancer) -> Self {
        match proto {
            pb::LoadBalancer::RoundRobin => LoadBalancer::RoundRobin,
            pb::LoadBalancer::P2cEwma | pb::LoadBalancer::Unspecified => LoadBalancer::P2cEwma,
        }
    }
}

/// One endpoint's shared state. It outlives view updates: the Service's endpoint set is
/// updated in place by address (keeping the `Arc` when the address and identity are
/// unchanged), so in-flight requests, learned latency and outlier state survive a push.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The SPIFFE ID its proxy must present; `None` when the endpoint is not meshed.
    pub identity: Option<SpiffeId>,
    ready: AtomicBool,
    in_flight: AtomicUsize,
    /// Latency and outlier state, updated together once per response and read together
    /// once per candidate: one short lock, never held across another endpoint's.
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    rtt: PeakEwma,
    outlier: Outlier,
}

impl Endpoint {
    /// A ready endpoint with nothing learned yet.
    pub fn new(addr: SocketAddr, identity: Option<SpiffeId>) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            addr,
            identity,
            ready: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
            state: Mutex::default(),
        })
    }

    /// Readiness from the endpoint's EndpointSlice: an endpoint that is not ready is never
    /// chosen, not even when the balancer panics (Kubernetes would not send to it either).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Requests started and not yet finished or dropped.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The latency estimate at `now`.
    pub fn rtt(&self, now: Instant) -> Duration {
        Duration::from_secs_f64(self.lock().rtt.get(now) / NANOS_PER_SEC)
    }

    pub fn outlier_status(&self, now: Instant) -> OutlierStatus {
        self.lock().outlier.status(now)
    }

    /// Marks a request started; the guard records latency and outcome when finished.
    /// Dropped without [`InFlight::finish`] it is cancelled: it releases its place in the
    /// in-flight count and counts as neither success nor failure (the caller went away,
    /// which says nothing about the endpoint).
    pub fn start(self: &Arc<Self>, now: Instant) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let probe = self.lock().outlier.start();
        InFlight {
            endpoint: self.clone(),
            started: now,
            probe,
            finished: false,
        }
    }

    /// The balancer's view of this endpoint at `now`: `None` when it may not be chosen.
    fn look(&self, now: Instant, mode: Mode, consecutive_failures: u32) -> Option<Look> {
        if !self.is_ready() {
            return None;
        }
        let mut state = self.lock();
        let availability = match mode {
            Mode::Panic => Availability::Serving,
            Mode::Normal => state.outlier.availability(now, consecutive_failures),
        };
        let probe = match availability {
            Availability::Serving => false,
            Availability::Probe => true,
            Availability::Tripped => return Some(Look::Tripped),
            Availability::Out => return None,
        };
        let in_flight = self.in_flight() as f64;
        let cost = state.rtt.get(now) * (in_flight + 1.0);
        Some(Look::Eligible { cost, probe })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A request in flight to an endpoint.
#[derive(Debug)]
pub struct InFlight {
    endpoint: Arc<Endpoint>,
    started: Instant,
    /// The probation probe: its outcome decides whether the endpoint comes back.
    probe: bool,
    finished: bool,
}

impl InFlight {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// Whether this request is its endpoint's probation probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Records the request's latency (`now` − start) and outcome. Call it when the response
    /// head arrives (a streaming body's length is not the endpoint's latency) or the attempt
    /// fails; a timeout is a [`Outcome::Failure`] finished when it fires.
    pub fn finish(mut self, now: Instant, outcome: Outcome) {
        let rtt = now.saturating_duration_since(self.started);
        let mut state = self.endpoint.lock();
        state.rtt.observe(rtt, now, outcome);
        state.outlier.record(outcome, self.probe, now);
        drop(state);
        self.finished = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.probe && !self.finished {
            self.endpoint.lock().outlier.cancel_probe();
        }
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

const NANOS_PER_SEC: f64 = 1e9;

/// Peak-EWMA latency: a response slower than the estimate replaces it at once (the balancer
/// reacts to a slowdown on the first slow response); a faster one pulls it down gradually,
/// weighted by the time since the last update (time constant [`DEFAULT_DECAY`]), so the
/// estimate tracks recent latency whatever the request rate.
///
/// Two choices of ours beyond Linkerd's:
/// - A failure never lowers the estimate (a fast 503 or a refused connection is no evidence
///   the endpoint is fast; counting it would make a failing endpoint look cheap and draw
///   more traffic); a slow failure (a timeout) still raises it.
/// - Without responses, the estimate drifts back to [`DEFAULT_RTT`], the figure a new
///   endpoint starts from, with the same time constant: old news fades. Without this, one
///   slow response would keep an endpoint out of P2C's choices for good, since it would get
///   no requests whose responses could lower it. Linkerd decays an idle estimate towards
///   zero instead, which makes an idle endpoint look free and hands it a burst; drifting to
///   the default treats it like a new endpoint.
#[derive(Debug)]
struct PeakEwma {
    /// Nanoseconds, as of `updated`.
    estimate: f64,
    /// The last response that changed the estimate; `None` before the first, while the
    /// estimate is [`DEFAULT_RTT`].
    updated: Option<Instant>,
}

impl Default for PeakEwma {
    fn default() -> Self {
        PeakEwma {
            estimate: DEFAULT_RTT.as_secs_f64() * NANOS_PER_SEC,
            updated: None,
        }
    }
}

impl PeakEwma {
    /// The estimate at `now`, in nanoseconds.
    fn get(&self, now: Instant) -> f64 {
        let Some(updated) = self.updated else {
            return self.estimate;
        };
        let prior = DEFAULT_RTT.as_secs_f64() * NANOS_PER_SEC;
        prior + (self.estimate - prior) * weight(now.saturating_duration_since(updated))
    }

    fn observe(&mut self, rtt: Duration, now: Instant, outcome: Outcome) {
        let rtt = rtt.as_secs_f64() * NANOS_PER_SEC;
        match (self.updated, outcome) {
            // Peak: a slower response replaces the estimate at once.
            _ if rtt > self.estimate => self.estimate = rtt,
            (_, Outcome::Failure) => return,
            // The first measurement replaces the assumed default.
            (None, Outcome::Success) => self.estimate = rtt,
            (Some(updated), Outcome::Success) => {
                let w = weight(now.saturating_duration_since(updated));
                self.estimate = self.estimate * w + rtt * (1.0 - w);
            }
        }
        self.updated = Some(now);
    }
}

/// The weight an estimate `elapsed` old keeps against a new value.
fn weight(elapsed: Duration) -> f64 {
    (-elapsed.as_secs_f64() / DEFAULT_DECAY.as_secs_f64()).exp()
}

/// Whether outlier state is honoured ([`Mode::Normal`]) or ignored because nothing is
/// eligible ([`Mode::Panic`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Normal,
    Panic,
}

#[derive(Clone, Copy, Debug)]
enum Look {
    Eligible {
        cost: f64,
        probe: bool,
    },
    /// Due for an ejection decision.
    Tripped,
}

/// A candidate: the endpoint's index in the set, its cost, and whether it is a probation
/// endpoint whose probe the request takes.
#[derive(Clone, Copy, Debug)]
struct Pick {
    index: usize,
    cost: f64,
    probe: bool,
}

/// A Service's balancer: its policy and round-robin cursor. The endpoint set is the
/// caller's (the current view's), passed to every [`Balancer::choose`]. What is learned
/// (latency, failures, ejections) lives in the endpoints, so a policy change simply builds
/// a new balancer; only the round-robin position starts over.
#[derive(Debug)]
pub struct Balancer {
    kind: LoadBalancer,
    outlier: OutlierConfig,
    /// Round robin's next position (modulo the set's length).
    cursor: AtomicUsize,
    /// Serializes ejection decisions, so two endpoints tripping at once cannot both take the
    /// last place the ejection limit leaves. Taken only when an endpoint trips.
    ejecting: Mutex<()>,
    /// Shared with the balancer the next view builds for the same Service, so the counts
    /// (exported as counters) never go back.
    stats: Arc<BalancerStats>,
}

/// What a Service's balancer did, for `weft_balancer_panics_total` and
/// `weft_outlier_ejections_total`.
#[derive(Debug, Default)]
pub struct BalancerStats {
    panics: AtomicU64,
    ejections: AtomicU64,
}

impl Balancer {
    /// A balancer with the default outlier ejection settings.
    pub fn new(kind: LoadBalancer) -> Self {
        Balancer {
            kind,
            outlier: OutlierConfig::default(),
            cursor: AtomicUsize::new(0),
            ejecting: Mutex::new(()),
            stats: Arc::default(),
        }
    }

    /// Keeps counting where `previous` (the same Service's balancer in the last view) left
    /// off.
    pub fn continuing(mut self, previous: &Balancer) -> Self {
        self.stats = previous.stats.clone();
        self
    }

    /// The Service's outlier ejection settings.
    pub fn with_outlier(mut self, outlier: OutlierConfig) -> Self {
        self.outlier = outlier;
        self
    }

    pub fn kind(&self) -> LoadBalancer {
        self.kind
    }

    pub fn outlier(&self) -> &OutlierConfig {
        &self.outlier
    }

    /// How often `choose` found nothing eligible and chose ignoring ejection.
    pub fn panics(&self) -> u64 {
        self.stats.panics.load(Ordering::Relaxed)
    }

    /// How many endpoints the balancer ejected after a run of failures (a failed probation
    /// probe sends an endpoint back out without a new decision; that is not counted).
    pub fn ejections(&self) -> u64 {
        self.stats.ejections.load(Ordering::Relaxed)
    }

    /// Picks among endpoints that are ready and not ejected (outlier state consulted at
    /// `now`; an endpoint due for probation is eligible for exactly one probe request, which
    /// this reserves for the caller's [`Endpoint::start`]). When none is eligible, picks
    /// among all ready endpoints (panic); `None` only when none is ready.
    ///
    /// Allocates nothing; with P2C it looks at two endpoints (more only when the draws hit
    /// ineligible ones), with round robin at the next ones in order up to an eligible one.
    pub fn choose(
        &self,
        endpoints: &[Arc<Endpoint>],
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Option<Arc<Endpoint>> {
        for _ in 0..PICK_ATTEMPTS {
            let Some(pick) = self.pick(endpoints, now, rng, Mode::Normal) else {
                break;
            };
            let endpoint = &endpoints[pick.index];
            if !pick.probe || endpoint.lock().outlier.reserve_probe(now) {
                return Some(endpoint.clone());
            }
        }
        let pick = self.pick(endpoints, now, rng, Mode::Panic)?;
        self.stats.panics.fetch_add(1, Ordering::Relaxed);
        Some(endpoints[pick.index].clone())
    }

    fn pick(
        &self,
        endpoints: &[Arc<Endpoint>],
        now: Instant,
        rng: &mut fastrand::Rng,
        mode: Mode,
    ) -> Option<Pick> {
        match self.kind {
            // A probation endpoint drawn as a candidate wins outright: its probe decides
            // whether it comes back, and its cost (an estimate from before its ejection)
            // says nothing about it now. Competing on cost, it could wait on probation for
            // as long as faster endpoints are idle, holding a place under the ejection limit.
            LoadBalancer::P2cEwma => {
                let first = self.sample(endpoints, now, rng, mode, None)?;
                if first.probe {
                    return Some(first);
                }
                let Some(second) = self.sample(endpoints, now, rng, mode, Some(first.index)) else {
                    return Some(first);
                };
                Some(if second.probe || second.cost < first.cost {
                    second
                } else {
                    first
                })
            }
            LoadBalancer::RoundRobin => self.next_in_order(endpoints, now, mode),
        }
    }

    /// A random eligible endpoint other than `exclude`: up to [`SAMPLE_DRAWS`] uniform draws,
    /// then the first eligible one from a random start.
    fn sample(
        &self,
        endpoints: &[Arc<Endpoint>],
        now: Instant,
        rng: &mut fastrand::Rng,
        mode: Mode,
        exclude: Option<usize>,
    ) -> Option<Pick> {
        let n = endpoints.len();
        let others = n - usize::from(exclude.is_some());
        if others == 0 {
            return None;
        }
        for _ in 0..SAMPLE_DRAWS {
            let mut index = rng.usize(..others);
            if exclude.is_some_and(|excluded| index >= excluded) {
                index += 1;
            }
            if let Some(pick) = self.look(endpoints, index, now, mode) {
                return Some(pick);
            }
        }
        let start = rng.usize(..n);
        (0..n)
            .map(|k| (start + k) % n)
            .filter(|&index| Some(index) != exclude)
            .find_map(|index| self.look(endpoints, index, now, mode))
    }

    /// Round robin: the first eligible endpoint from the cursor on. The cursor moves past
    /// it, so skipped (ejected) endpoints do not hand their turns to their successor.
    fn next_in_order(&self, endpoints: &[Arc<Endpoint>], now: Instant, mode: Mode) -> Option<Pick> {
        let n = endpoints.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        for skipped in 0..n {
            let index = (start + skipped) % n;
            if let Some(pick) = self.look(endpoints, index, now, mode) {
                if skipped > 0 {
                    self.cursor.fetch_add(skipped, Ordering::Relaxed);
                }
                return Some(pick);
            }
        }
        None
    }

    /// Endpoint `index` as a candidate, deciding its ejection first if it has just tripped.
    fn look(
        &self,
        endpoints: &[Arc<Endpoint>],
        index: usize,
        now: Instant,
        mode: Mode,
    ) -> Option<Pick> {
        let threshold = self.outlier.consecutive_failures;
        let endpoint = &endpoints[index];
        let mut look = endpoint.look(now, mode, threshold)?;
        if let Look::Tripped = look {
            self.decide_ejection(endpoints, index, now);
            look = endpoint.look(now, mode, threshold)?;
        }
        match look {
            Look::Eligible { cost, probe } => Some(Pick { index, cost, probe }),
            Look::Tripped => None,
        }
    }

    /// Ejects tripped endpoint `index` if the Service may lose one more endpoint, counting
    /// with the set as it is now; spares it otherwise.
    fn decide_ejection(&self, endpoints: &[Arc<Endpoint>], index: usize, now: Instant) {
        let _deciding = self.ejecting.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut ready, mut out) = (0, 0);
        for endpoint in endpoints.iter().filter(|e| e.is_ready()) {
            ready += 1;
            out += usize::from(endpoint.lock().outlier.is_out());
        }
        let mut state = endpoints[index].lock();
        let threshold = self.outlier.consecutive_failures;
        if state.outlier.availability(now, threshold) != Availability::Tripped {
            return; // Decided meanwhile, or a success came in.
        }
        if self.outlier.may_eject(out, ready) {
            state.outlier.eject(now, &self.outlier);
            self.stats.ejections.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                endpoint = %endpoints[index].addr,
                status = ?state.outlier.status(now),
                "outlier ejected after {threshold} failures in a row"
            );
        } else {
            state.outlier.spare();
            tracing::debug!(
                endpoint = %endpoints[index].addr,
                out,
                ready,
                "outlier not ejected: the Service is at its ejection limit"
            );
        }
    }
}

#[cfg(test)]
#[path = "tests/balance.rs"]
mod tests;
