//! Endpoint choice with injected time: peak EWMA, P2C and round robin, and outlier ejection
//! as the balancer applies it (the limit over the set, probation, panic).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use weft_api::proto::discovery::v1 as pb;

use super::*;
use crate::traffic::outlier::{OutlierConfig, OutlierStatus};

const MS: Duration = Duration::from_millis(1);

fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
    (0..n)
        .map(|i| {
            let addr: SocketAddr = format!("10.0.0.{}:8080", i + 1).parse().unwrap();
            Endpoint::new(addr, None)
        })
        .collect()
}

fn index_of(endpoints: &[Arc<Endpoint>], chosen: &Arc<Endpoint>) -> usize {
    endpoints
        .iter()
        .position(|e| Arc::ptr_eq(e, chosen))
        .expect("chosen endpoint is in the set")
}

/// `n` requests to `endpoint` that fail at once.
fn fail(endpoint: &Arc<Endpoint>, n: u32, now: Instant) {
    for _ in 0..n {
        endpoint.start(now).finish(now, Outcome::Failure);
    }
}

/// Counts, per endpoint, the choices of `rounds` calls at `now` (requests are not started).
fn tally(
    balancer: &Balancer,
    endpoints: &[Arc<Endpoint>],
    rounds: usize,
    now: Instant,
    rng: &mut fastrand::Rng,
) -> Vec<usize> {
    let mut counts = vec![0; endpoints.len()];
    for _ in 0..rounds {
        let chosen = balancer.choose(endpoints, now, rng).expect("an endpoint");
        counts[index_of(endpoints, &chosen)] += 1;
    }
    counts
}

fn assert_close(actual: Duration, expected_ms: f64) {
    let actual_ms = actual.as_secs_f64() * 1e3;
    assert!(
        (actual_ms - expected_ms).abs() < 1e-4,
        "{actual_ms} ms, expected {expected_ms} ms"
    );
}

// ---- peak EWMA ----

#[test]
fn ewma_starts_at_the_default_and_the_first_response_replaces_it() {
    let t0 = Instant::now();
    let endpoint = endpoints(1).remove(0);
    assert_eq!(endpoint.rtt(t0), DEFAULT_RTT);
    // The default is an assumption, not a measurement: the first one replaces it at once.
    endpoint.start(t0).finish(t0 + 4 * MS, Outcome::Success);
    assert_close(endpoint.rtt(t0 + 4 * MS), 4.0);
}

#[test]
fn ewma_peak_replaces_at_once_and_decays_with_time() {
    let t0 = Instant::now();
    let endpoint = endpoints(1).remove(0);
    endpoint.start(t0).finish(t0 + 10 * MS, Outcome::Success);

    // Slower: replaces the estimate at once.
    let t1 = t0 + Duration::from_secs(1);
    endpoint.start(t1).finish(t1 + 50 * MS, Outcome::Success);
    let t1 = t1 + 50 * MS;
    assert_close(endpoint.rtt(t1), 50.0);

    // Faster, one decay constant later: 1/e of the way is left.
    let t2 = t1 + DEFAULT_DECAY;
    endpoint.start(t2 - 10 * MS).finish(t2, Outcome::Success);
    let e = (-1.0f64).exp();
    let expected = 50.0 * e + 10.0 * (1.0 - e);
    assert_close(endpoint.rtt(t2), expected);

    // Faster again right away: barely moves (the weight is by time, not by count).
    endpoint.start(t2 - 10 * MS).finish(t2, Outcome::Success);
    assert_close(endpoint.rtt(t2), expected);
    let t3 = t2 + Duration::from_secs(1);
    endpoint.start(t3 - 10 * MS).finish(t3, Outcome::Success);
    let w = (-0.1f64).exp();
    assert_close(endpoint.rtt(t3), expected * w + 10.0 * (1.0 - w));
}

#[test]
fn ewma_drifts_back_to_the_default_without_responses() {
    let t0 = Instant::now();
    let endpoint = endpoints(1).remove(0);
    endpoint.start(t0).finish(t0 + 2000 * MS, Outcome::Success);
    let t1 = t0 + 2000 * MS;
    assert_close(endpoint.rtt(t1), 2000.0);
    let e = (-1.0f64).exp();
    assert_close(endpoint.rtt(t1 + DEFAULT_DECAY), 30.0 + 1970.0 * e);
    let long_after = endpoint.rtt(t1 + 20 * DEFAULT_DECAY);
    assert!(
        (long_after.as_secs_f64() * 1e3 - 30.0).abs() < 0.01,
        "{long_after:?}"
    );
}

#[test]
fn failures_raise_the_estimate_but_never_lower_it() {
    let t0 = Instant::now();
    let endpoint = endpoints(1).remove(0);
    endpoint.start(t0).finish(t0 + 20 * MS, Outcome::Success);
    let t1 = t0 + Duration::from_secs(5);
    let before = endpoint.rtt(t1);
    // A fast failure (a refused connection) says nothing about speed.
    endpoint.start(t1).finish(t1, Outcome::Failure);
    assert_eq!(endpoint.rtt(t1), before, "estimate left as it was");
    let later = t1 + Duration::from_secs(1);
    assert!(
        endpoint.rtt(later) > before,
        "still drifting up towards 30 ms, not reset"
    );
    // A slow one (a timeout) is a peak.
    endpoint.start(t1).finish(t1 + 1000 * MS, Outcome::Failure);
    assert_close(endpoint.rtt(t1 + 1000 * MS), 1000.0);
}

#[test]
fn in_flight_counts_until_finished_or_dropped() {
    let now = Instant::now();
    let endpoint = endpoints(1).remove(0);
    let a = endpoint.start(now);
    let b = endpoint.start(now);
    assert_eq!(endpoint.in_flight(), 2);
    a.finish(now + MS, Outcome::Success);
    assert_eq!(endpoint.in_flight(), 1);
    drop(b); // Cancelled: no outcome, no latency.
    assert_eq!(endpoint.in_flight(), 0);
    assert_close(endpoint.rtt(now + MS), 1.0);
    assert_eq!(
        endpoint.outlier_status(now),
        OutlierStatus::Healthy {
            consecutive_failures: 0
        }
    );
}

// ---- P2C ----

#[test]
fn p2c_with_one_endpoint_chooses_it_and_with_none_nothing() {
    let mut rng = fastrand::Rng::with_seed(1);
    let balancer = Balancer::new(LoadBalancer::P2cEwma);
    let now = Instant::now();
    assert!(balancer.choose(&[], now, &mut rng).is_none());
    let one = endpoints(1);
    assert_eq!(tally(&balancer, &one, 10, now, &mut rng), [10]);
}

#[test]
fn p2c_of_two_always_takes_the_cheaper() {
    let mut rng = fastrand::Rng::with_seed(2);
    let balancer = Balancer::new(LoadBalancer::P2cEwma);
    let now = Instant::now();
    let set = endpoints(2);
    set[0].start(now).finish(now + 10 * MS, Outcome::Success);
    set[1].start(now).finish(now + 12 * MS, Outcome::Success);
    let later = now + 12 * MS;
    assert_eq!(tally(&balancer, &set, 1000, later, &mut rng), [1000, 0]);

    // In-flight requests count: 10 ms × 2 in flight + 1 > 12 ms × 1.
    let _a = set[0].start(later);
    let _b = set[0].start(later);
    assert_eq!(tally(&balancer, &set, 1000, later, &mut rng), [0, 1000]);
}

/// Requests arrive every millisecond for ten seconds; each endpoint answers after its own
/// latency. Returns each endpoint's share of the 10,000 requests.
fn simulate(kind: LoadBalancer, latencies: &[Duration], seed: u64) -> Vec<f64> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let balancer = Balancer::new(kind);
    let set = endpoints(latencies.len());
    let t0 = Instant::now();
    let mut pending: Vec<(Instant, InFlight)> = Vec::new();
    let mut counts = vec![0usize; set.len()];
    const REQUESTS: u32 = 10_000;
    for i in 0..REQUESTS {
        let now = t0 + MS * i;
        pending.sort_by_key(|(due, _)| *due);
        let due = pending.partition_point(|(due, _)| *due <= now);
        for (at, request) in pending.drain(..due) {
            request.finish(at, Outcome::Success);
        }
        let chosen = balancer.choose(&set, now, &mut rng).expect("an endpoint");
        let index = index_of(&set, &chosen);
        counts[index] += 1;
        pending.push((now + latencies[index], chosen.start(now)));
    }
    counts
        .iter()
        .map(|&c| c as f64 / f64::from(REQUESTS))
        .collect()
}

#[test]
fn p2c_sends_a_small_share_to_an_endpoint_50ms_slower() {
    let latencies = [2 * MS, 2 * MS, 52 * MS];
    let p2c = simulate(LoadBalancer::P2cEwma, &latencies, 3);
    let rr = simulate(LoadBalancer::RoundRobin, &latencies, 3);
    println!(
        "slow endpoint's share: P2C-EWMA {:.4}, round robin {:.4}",
        p2c[2], rr[2]
    );
    assert!(p2c[2] < 0.10, "P2C shares {p2c:?}");
    assert!(
        (rr[2] - 1.0 / 3.0).abs() < 0.01,
        "round robin shares {rr:?}"
    );
    // The fast two share the rest about evenly.
    assert!((p2c[0] - p2c[1]).abs() < 0.05, "P2C shares {p2c:?}");
}

// ---- round robin ----

#[test]
fn round_robin_cycles_evenly_in_order() {
    let mut rng = fastrand::Rng::with_seed(4);
    let balancer = Balancer::new(LoadBalancer::RoundRobin);
    let now = Instant::now();
    let set = endpoints(3);
    let order: Vec<usize> = (0..6)
        .map(|_| index_of(&set, &balancer.choose(&set, now, &mut rng).unwrap()))
        .collect();
    assert_eq!(order, [0, 1, 2, 0, 1, 2]);
    assert_eq!(tally(&balancer, &set, 300, now, &mut rng), [100, 100, 100]);
}

#[test]
fn round_robin_skips_ejected_evenly() {
    let mut rng = fastrand::Rng::with_seed(5);
    let balancer = Balancer::new(LoadBalancer::RoundRobin);
    let now = Instant::now();
    let set = endpoints(4);
    fail(&set[1], 5, now);
    assert_eq!(
        tally(&balancer, &set, 300, now, &mut rng),
        [100, 0, 100, 100]
    );
    assert!(matches!(
        set[1].outlier_status(now),
        OutlierStatus::Ejected { .. }
    ));
}

// ---- outlier ejection through the balancer ----

#[test]
fn ejects_after_consecutive_failures_not_after_fewer_interleaved_with_a_success() {
    let mut rng = fastrand::Rng::with_seed(6);
    let balancer = Balancer::new(LoadBalancer::P2cEwma);
    let now = Instant::now();
    let set = endpoints(3);
    fail(&set[1], 4, now);
    set[1].start(now).finish(now, Outcome::Success);
    fail(&set[1], 4, now);
    let counts = tally(&balancer, &set, 300, now, &mut rng);
    assert!(counts[1] > 50, "still in rotation: {counts:?}");

    fail(&set[1], 1, now);
    let counts = tally(&balancer, &set, 300, now, &mut rng);
    assert_eq!(counts[1], 0, "ejected: {counts:?}");
    assert_eq!(
        set[1].outlier_status(now),
        OutlierStatus::Ejected {
            until: now + Duration::from_secs(30),
            ejections: 1
        }
    );
}

#[test]
fn ejection_limit_counts_the_current_set() {
    let mut rng = fastrand::Rng::with_seed(7);
    let balancer = Balancer::new(LoadBalancer::P2cEwma);
    let now = Instant::now();
    let set = endpoints(4);
    for endpoint in &set {
        fail(endpoint, 5, now);
    }
    let counts = tally(&balancer, &set, 1000, now, &mut rng);
    let ejected: Vec<bool> = set
        .iter()
        .map(|e| matches!(e.outlier_status(now), OutlierStatus::Ejected { .. }))
        .collect();
    assert_eq!(ejected.iter().filter(|&&e| e).count(), 2, "{ejected:?}");
    for (count, ejected) in counts.iter().zip(&ejected) {
        assert_eq!(*count == 0, *ejected, "{counts:?} {ejected:?}");
    }
    assert_eq!(balancer.panics(), 0);

    // Not-ready endpoints are not counted: of two ready endpoints one may be out, and one is.
    let set = endpoints(4);
    set[2].set_ready(false);
    set[3].set_ready(false);
    fail(&set[0], 5, now);
    fail(&set[1], 5, now);
    tally(&balancer, &set, 100, now, &mut rng);
    let out = set[..2]
        .iter()
        .filter(|e| matches!(e.outlier_status(now), OutlierStatus::Ejected { .. }))
        .count();
    assert_eq!(out, 1);
}

#[test]
fn a_single_endpoint_is_never_ejected_at_the_default_limit() {
    let mut rng = fastrand::Rng::with_seed(8);
    let balancer = Balancer::new(LoadBalancer::P2cEwma);
    let now = Instant::now();
    let set = endpoints(1);
    fail(&set[0], 20, now);
    assert_eq!(tally(&balancer, &set, 10, now, &mut rng), [10]);
    assert_eq!(
        set[0].outlier_status(now),
        OutlierStatus::Healthy {
            consecutive_failures: 0
        },
        "spared, counting again"
    );
    assert_eq!(balancer.panics(), 0);
}

#[test]
fn probation_admits_one_probe_and_success_restores() {
    let mut rng = fastrand::Rng::with_seed(9);
    let balancer = Balancer::new(LoadBalancer::P2cEwma);
    let t0 = Instant::now();
    let set = endpoints(3);
    // The healthy ones are much faster: the probe must not wait for them to get busy.
    for endpoint in [&set[0], &set[2]] {
        endpoint.start(t0).finish(t0 + MS, Outcome::Success);
    }
    fail(&set[1], 5, t0);
    assert_eq!(tally(&balancer, &set, 100, t0, &mut rng)[1], 0);

    let t1 = t0 + Duration::from_secs(30);
    let mut probe = None;
    for _ in 0..100 {
        let chosen = balancer.choose(&set, t1, &mut rng).unwrap();
        if Arc::ptr_eq(&chosen, &set[1]) {
            assert!(
                probe.is_none(),
                "a second request reached the probation endpoint"
            );
            let request = chosen.start(t1);
            assert!(request.is_probe());
            probe = Some(request);
        }
    }
    let probe = probe.expect("the probation endpoint got its probe");
    assert_eq!(
        set[1].outlier_status(t1),
        OutlierStatus::Probation { probing: true }
    );
    probe.finish(t1 + MS, Outcome::Success);
    assert_eq!(
        set[1].outlier_status(t1 + MS),
        OutlierStatus::Healthy {
            consecutive_failures: 0
        }
    );
    assert!(tally(&balancer, &set, 300, t1 + MS, &mut rng)[1] > 0);
}

#[test]
fn probation_failure_re_ejects_for_longer() {
    let mut rng = fastrand::Rng::with_seed(10);
    let balancer = Balancer::new(LoadBalancer::RoundRobin);
    let t0 = Instant::now();
    let set = endpoints(2);
    fail(&set[1], 5, t0);
    tally(&balancer, &set, 2, t0, &mut rng);
    assert!(matches!(
        set[1].outlier_status(t0),
        OutlierStatus::Ejected { .. }
    ));

    let mut now = t0;
    for n in 2..=4u32 {
        let OutlierStatus::Ejected { until, .. } = set[1].outlier_status(now) else {
            panic!("not ejected");
        };
        now = until;
        let chosen = (0..2)
            .map(|_| balancer.choose(&set, now, &mut rng).unwrap())
            .find(|e| Arc::ptr_eq(e, &set[1]))
            .expect("the probe is sent");
        chosen.start(now).finish(now, Outcome::Failure);
        assert_eq!(
            set[1].outlier_status(now),
            OutlierStatus::Ejected {
                until: now + Duration::from_secs(30) * n,
                ejections: n
            }
        );
    }
}

#[test]
fn a_chosen_probe_is_reserved_and_a_cancelled_one_is_released() {
    let mut rng = fastrand::Rng::with_seed(11);
    let balancer = Balancer::new(LoadBalancer::RoundRobin);
    let t0 = Instant::now();
    let set = endpoints(2);
    fail(&set[1], 5, t0);
    tally(&balancer, &set, 2, t0, &mut rng);
    let t1 = t0 + Duration::from_secs(30);

    let probe = (0..2)
        .map(|_| balancer.choose(&set, t1, &mut rng).unwrap())
        .find(|e| Arc::ptr_eq(e, &set[1]))
        .expect("chosen for its probe");
    // Chosen, not started yet: reserved, so no other request is sent there.
    assert_eq!(tally(&balancer, &set, 10, t1, &mut rng), [10, 0]);
    let request = probe.start(t1);
    assert!(request.is_probe());
    drop(request); // Cancelled.
    assert_eq!(
        set[1].outlier_status(t1),
        OutlierStatus::Probation { probing: false }
    );
    assert!(
        tally(&balancer, &set, 2, t1, &mut rng)[1] == 1,
        "probed again"
    );
}

#[test]
fn panics_to_all_ready_endpoints_when_none_is_eligible() {
    let mut rng = fastrand::Rng::with_seed(12);
    let all = OutlierConfig {
        max_ejection_percent: 100,
        ..OutlierConfig::default()
    };
    let balancer = Balancer::new(LoadBalancer::P2cEwma).with_outlier(all);
    let now = Instant::now();
    let set = endpoints(3);
    for endpoint in &set {
        fail(endpoint, 5, now);
    }
    let counts = tally(&balancer, &set, 300, now, &mut rng);
    assert!(set
        .iter()
        .all(|e| matches!(e.outlier_status(now), OutlierStatus::Ejected { .. })));
    assert!(
        counts.iter().all(|&c| c > 50),
        "spread over all: {counts:?}"
    );
    assert!(balancer.panics() >= 299, "{}", balancer.panics());

    // Not ready is never chosen, panic or not.
    set[0].set_ready(false);
    set[1].set_ready(false);
    assert_eq!(tally(&balancer, &set, 10, now, &mut rng), [0, 0, 10]);
    set[2].set_ready(false);
    assert!(balancer.choose(&set, now, &mut rng).is_none());
}

#[test]
fn ejection_off_keeps_failing_endpoints() {
    let mut rng = fastrand::Rng::with_seed(13);
    let off = OutlierConfig {
        consecutive_failures: 0,
        ..OutlierConfig::default()
    };
    let balancer = Balancer::new(LoadBalancer::RoundRobin).with_outlier(off);
    let now = Instant::now();
    let set = endpoints(2);
    fail(&set[0], 100, now);
    assert_eq!(tally(&balancer, &set, 10, now, &mut rng), [5, 5]);
}

#[test]
fn concurrent_choices_leave_nothing_in_flight() {
    let balancer = Arc::new(Balancer::new(LoadBalancer::P2cEwma));
    let set: Arc<Vec<_>> = Arc::new(endpoints(10));
    let t0 = Instant::now();
    let threads: Vec<_> = (0..4u64)
        .map(|seed| {
            let (balancer, set) = (balancer.clone(), set.clone());
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(seed);
                for i in 0..5_000u32 {
                    let now = t0 + MS * i;
                    let endpoint = balancer.choose(&set, now, &mut rng).unwrap();
                    let outcome = if rng.u8(..10) == 0 {
                        Outcome::Failure
                    } else {
                        Outcome::Success
                    };
                    endpoint.start(now).finish(now + MS, outcome);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert!(set.iter().all(|e| e.in_flight() == 0));
}

#[test]
fn load_balancer_from_proto() {
    assert_eq!(LoadBalancer::from_proto(0), LoadBalancer::P2cEwma);
    assert_eq!(LoadBalancer::from_proto(1), LoadBalancer::P2cEwma);
    assert_eq!(LoadBalancer::from_proto(2), LoadBalancer::RoundRobin);
    assert_eq!(LoadBalancer::from_proto(99), LoadBalancer::P2cEwma);
    assert_eq!(
        LoadBalancer::from(pb::LoadBalancer::RoundRobin),
        LoadBalancer::RoundRobin
    );
    assert_eq!(LoadBalancer::default(), LoadBalancer::P2cEwma);
}
