//! Outlier ejection: passive health checking from the outcomes of real requests.
//!
//! An endpoint that fails `consecutive_failures` requests in a row is taken out of its
//! Service's rotation for `base_ejection × n`, where `n` counts its ejections (Envoy's rule,
//! so an endpoint that keeps failing stays out longer and longer, up to [`MAX_EJECTION`]).
//! When that time has passed it is on probation: exactly one request may go to it; a success
//! puts it back in rotation, a failure ejects it again for longer. The count of ejections
//! decays while the endpoint stays healthy, so one bad afternoon is not held against it
//! forever.
//!
//! This module is the per-endpoint state machine only: plain data, no locks, no clock (every
//! call is given `now`). The endpoint ([`super::balance::Endpoint`]) keeps it under its short
//! lock, feeds it each request's [`Outcome`], and the balancer consults it when choosing.
//! The balancer also makes the ejection decision itself, because the limit on how many
//! endpoints may be out at once ([`OutlierConfig::max_ejection_percent`]) is a property of
//! the Service's current endpoint set, which only the balancer sees.

use std::time::Duration;

use tokio::time::Instant;
use weft_api::proto::discovery::v1 as pb;

use super::balance::Outcome;

/// Failures in a row before an endpoint is ejected. Envoy's `consecutive_5xx` default: a
/// healthy endpoint almost never fails five requests in a row (at a 1% error rate that is a
/// 1-in-10^10 event), while a broken one reaches five within milliseconds under any load.
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;

/// How long the first ejection lasts. Envoy's default: long enough for a crashing pod to be
/// restarted or a stuck one to be noticed by its readiness probe (whose defaults act within
/// ~30 s), short enough that a transient fault costs the Service one endpoint for half a
/// minute, not for good.
pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);

/// At most this share of a Service's ready endpoints may be ejected at once. Half, so that
/// ejection can take out a bad zone or a bad rollout half but never turns "some endpoints are
/// failing" into "no endpoints": the remaining half must be able to carry the traffic, and if
/// more than half are failing the problem is not an outlier. (Envoy's default is 10%, which
/// ejects nothing at all below ten endpoints; mesh Services are usually small.)
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 50;

/// The longest one ejection lasts, however often the endpoint was ejected (Envoy's
/// `max_ejection_time` default). Five minutes: an endpoint that is still broken is found
/// again with one probe request every five minutes, and one that was fixed comes back
/// within five minutes without anyone having to restart the proxies.
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

/// How long [`Outlier::reserve_probe`] holds a probation endpoint for the request that
/// chose it before another request may take the probe instead. Choosing and starting a
/// request are microseconds apart on the request path; a second never cuts a real
/// reservation short, and a request that gave up in between (its Service's breaker
/// overflowed) keeps the endpoint from being probed for at most that second.
pub const PROBE_RESERVATION: Duration = Duration::from_secs(1);

/// A Service's outlier ejection settings (`TrafficPolicy.outlierDetection`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Failures in a row that eject an endpoint; 0 turns ejection off.
    pub consecutive_failures: u32,
    /// The first ejection's length; the n-th lasts `n` times as long, up to [`MAX_EJECTION`]
    /// (or this, if longer).
    pub base_ejection: Duration,
    /// The largest share of the Service's ready endpoints that may be out (ejected or on
    /// probation) at once, in percent (over 100 counts as 100).
    pub max_ejection_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: DEFAULT_CONSECUTIVE_FAILURES,
            base_ejection: DEFAULT_BASE_EJECTION,
            max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
        }
    }
}

impl OutlierConfig {
    /// The settings a `TrafficPolicy` gives; absent fields (or no policy) take the defaults.
    pub fn from_proto(proto: Option<&pb::OutlierDetection>) -> Self {
        let default = OutlierConfig::default();
        let Some(proto) = proto else {
            return default;
        };
        OutlierConfig {
            consecutive_failures: proto
                .consecutive_failures
                .unwrap_or(default.consecutive_failures),
            base_ejection: proto
                .base_ejection_ms
                .map_or(default.base_ejection, Duration::from_millis),
            max_ejection_percent: proto
                .max_ejection_percent
                .unwrap_or(default.max_ejection_percent),
        }
    }

    /// Whether one more endpoint may be ejected when `out` of the Service's `total` ready
    /// endpoints are out already.
    ///
    /// Envoy's rule, in integers: the share out *after* this ejection must not exceed the
    /// maximum. So a Service with a single endpoint is never ejected at the default 50% (there
    /// is nothing to fail over to), two endpoints may lose one, three may lose one. Envoy can
    /// be told to always allow one (`always_eject_one_host`, off by default); we follow its
    /// default and have no such switch.
    pub fn may_eject(&self, out: usize, total: usize) -> bool {
        let percent = self.max_ejection_percent.min(100) as usize;
        (out + 1) * 100 <= percent * total
    }

    /// How long the `n`-th ejection (1-based) lasts.
    pub fn ejection_time(&self, n: u32) -> Duration {
        ejection_time(self.base_ejection, n)
    }
}

fn ejection_time(base: Duration, n: u32) -> Duration {
    base.saturating_mul(n.max(1)).min(MAX_EJECTION.max(base))
}

/// The highest ejection count that still lengthens the ejection: past it the time is
/// capped, and a count that kept growing would only make the decay back take longer.
fn max_ejections(base: Duration) -> u32 {
    let cap = MAX_EJECTION.max(base);
    if base.is_zero() {
        return 1;
    }
    let n = cap.as_nanos().div_ceil(base.as_nanos());
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// An endpoint's place in the outlier state machine, as the admin endpoint and tests see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutlierStatus {
    /// In rotation.
    Healthy { consecutive_failures: u32 },
    /// Out of rotation until `until`; this is its `ejections`-th ejection.
    Ejected { until: Instant, ejections: u32 },
    /// Its ejection is over; `probing` when its one probe request is chosen or in flight.
    Probation { probing: bool },
}

/// What the balancer may do with an endpoint right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Availability {
    /// In rotation.
    Serving,
    /// In rotation, but it has just failed enough requests in a row to be ejected: the
    /// balancer decides (with the Service's whole endpoint set in hand) whether it may be.
    Tripped,
    /// On probation with its probe free: eligible for one request.
    Probe,
    /// Ejected, or on probation with its probe taken.
    Out,
}

/// One endpoint's outlier state.
///
/// ```text
///            N failures in a row, and the Service may lose one more endpoint
///   Healthy ─────────────────────────────────────────────────────────────▶ Ejected
///      ▲                                                                     │ its time passes
///      │ probe succeeds                                                      ▼
///      └──────────────────────────────────── Probation ◀─────────────────────┘
///                                    probe fails │ ▲
///                                                ▼ │ (longer) time passes
///                                              Ejected
/// ```
///
/// Only outcomes move it forward (a failure count, the probe's result); time moves it from
/// `Ejected` to `Probation`, and the balancer moves it from `Healthy` to `Ejected`. Requests
/// that were already in flight when the state changed are stragglers: their outcomes do not
/// count while the endpoint is out, since they say nothing new about it (a failure cannot
/// eject it twice, a success does not replace the probe).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Outlier {
    state: State,
}

#[derive(Clone, Copy, Debug)]
enum State {
    Healthy {
        /// Failures since the last success.
        failures: u32,
        /// Ejections so far, before the decay since `since` is taken off.
        ejections: u32,
        /// When it last came back from probation (`None`: never ejected).
        since: Option<Instant>,
    },
    Ejected {
        until: Instant,
        ejections: u32,
        /// The base ejection time it was ejected with: a failed probe re-ejects it without
        /// the balancer's config at hand.
        base: Duration,
    },
    Probation {
        probe: Probe,
        ejections: u32,
        base: Duration,
    },
}

/// The one request a probation endpoint may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    /// Nobody has it: the next request chosen for the endpoint is the probe.
    Free,
    /// A request chose the endpoint at `at` and is about to start; it holds the probe for
    /// [`PROBE_RESERVATION`].
    Reserved { at: Instant },
    /// The probe is in flight; its outcome decides.
    InFlight,
}

impl Default for Outlier {
    fn default() -> Self {
        Outlier {
            state: State::Healthy {
                failures: 0,
                ejections: 0,
                since: None,
            },
        }
    }
}

impl Outlier {
    pub(crate) fn status(&self, now: Instant) -> OutlierStatus {
        match self.state {
            State::Healthy { failures, .. } => OutlierStatus::Healthy {
                consecutive_failures: failures,
            },
            State::Ejected {
                until, ejections, ..
            } if now < until => OutlierStatus::Ejected { until, ejections },
            State::Ejected { .. } => OutlierStatus::Probation { probing: false },
            State::Probation { probe, .. } => OutlierStatus::Probation {
                probing: probe_taken(probe, now),
            },
        }
    }

    /// Whether the endpoint counts against the Service's ejection limit: ejected, or on
    /// probation (it is not taking traffic yet, and a failed probe puts it straight back).
    pub(crate) fn is_out(&self) -> bool {
        !matches!(self.state, State::Healthy { .. })
    }

    /// Whether the balancer may send the endpoint a request at `now` under an ejection
    /// threshold of `consecutive_failures`. Moves an ejection that has run out to probation.
    pub(crate) fn availability(&mut self, now: Instant, consecutive_failures: u32) -> Availability {
        match self.state {
            State::Healthy { failures, .. } => {
                if consecutive_failures > 0 && failures >= consecutive_failures {
                    Availability::Tripped
                } else {
                    Availability::Serving
                }
            }
            State::Ejected {
                until,
                ejections,
                base,
            } => {
                if now < until {
                    return Availability::Out;
                }
                self.state = State::Probation {
                    probe: Probe::Free,
                    ejections,
                    base,
                };
                Availability::Probe
            }
            State::Probation { probe, .. } => {
                if probe_taken(probe, now) {
                    Availability::Out
                } else {
                    Availability::Probe
                }
            }
        }
    }

    /// Ejects a tripped endpoint: for `base_ejection × n`, `n` being its ejection count after
    /// the decay earned by its healthy time, plus this one.
    pub(crate) fn eject(&mut self, now: Instant, config: &OutlierConfig) {
        let State::Healthy {
            ejections, since, ..
        } = self.state
        else {
            return;
        };
        let base = config.base_ejection;
        let earned = match since {
            Some(since) if !base.is_zero() => {
                let healthy = now.saturating_duration_since(since);
                u32::try_from(healthy.as_nanos() / base.as_nanos()).unwrap_or(u32::MAX)
            }
            Some(_) => u32::MAX,
            None => 0,
        };
        let n = ejections
            .saturating_sub(earned)
            .saturating_add(1)
            .min(max_ejections(base));
        self.state = State::Ejected {
            until: now + ejection_time(base, n),
            ejections: n,
            base,
        };
    }

    /// A tripped endpoint that may not be ejected (the Service is at its limit) starts
    /// counting again, as in Envoy: it is ejected after another run of failures if the limit
    /// allows by then, rather than on the very next one.
    pub(crate) fn spare(&mut self) {
        if let State::Healthy { failures, .. } = &mut self.state {
            *failures = 0;
        }
    }

    /// Holds a probation endpoint's probe for the request that just chose it; false when the
    /// probe is taken (another request got there first).
    pub(crate) fn reserve_probe(&mut self, now: Instant) -> bool {
        match &mut self.state {
            State::Probation { probe, .. } if !probe_taken(*probe, now) => {
                *probe = Probe::Reserved { at: now };
                true
            }
            _ => false,
        }
    }

    /// A request to the endpoint starts; true when it is the probation probe (the first
    /// request to start while the probe is not in flight, reserved or not).
    pub(crate) fn start(&mut self) -> bool {
        match &mut self.state {
            State::Probation { probe, .. } if *probe != Probe::InFlight => {
                *probe = Probe::InFlight;
                true
            }
            _ => false,
        }
    }

    /// The probe was cancelled (dropped without an outcome): the next request may probe.
    pub(crate) fn cancel_probe(&mut self) {
        if let State::Probation { probe, .. } = &mut self.state {
            if *probe == Probe::InFlight {
                *probe = Probe::Free;
            }
        }
    }

    /// A request to the endpoint finished; `is_probe` when it was the probation probe.
    pub(crate) fn record(&mut self, outcome: Outcome, is_probe: bool, now: Instant) {
        self.state = match (self.state, outcome) {
            (
                State::Healthy {
                    ejections, since, ..
                },
                Outcome::Success,
            ) => State::Healthy {
                failures: 0,
                ejections,
                since,
            },
            (
                State::Healthy {
                    failures,
                    ejections,
                    since,
                },
                Outcome::Failure,
            ) => State::Healthy {
                failures: failures.saturating_add(1),
                ejections,
                since,
            },
            (
                State::Probation {
                    probe: Probe::InFlight,
                    ejections,
                    ..
                },
                Outcome::Success,
            ) if is_probe => State::Healthy {
                failures: 0,
                ejections,
                since: Some(now),
            },
            (
                State::Probation {
                    probe: Probe::InFlight,
                    ejections,
                    base,
                },
                Outcome::Failure,
            ) if is_probe => {
                let n = ejections.saturating_add(1).min(max_ejections(base));
                State::Ejected {
                    until: now + ejection_time(base, n),
                    ejections: n,
                    base,
                }
            }
            // Stragglers while out: see the type's docs.
            (state @ (State::Ejected { .. } | State::Probation { .. }), _) => state,
        };
    }
}

fn probe_taken(probe: Probe, now: Instant) -> bool {
    match probe {
        Probe::Free => false,
        Probe::Reserved { at } => now.saturating_duration_since(at) < PROBE_RESERVATION,
        Probe::InFlight => true,
    }
}

#[cfg(test)]
#[path = "tests/outlier.rs"]
mod tests;
