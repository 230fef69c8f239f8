//! The outlier state machine on its own, with injected time. The balancer's side (the
//! ejection limit, choosing around ejected endpoints) is tested in `tests/balance.rs`.

use std::time::Duration;

use tokio::time::Instant;
use weft_api::proto::discovery::v1 as pb;

use super::*;

const SECOND: Duration = Duration::from_secs(1);

fn tripped(config: &OutlierConfig, now: Instant) -> Outlier {
    let mut outlier = Outlier::default();
    for _ in 0..config.consecutive_failures {
        outlier.record(Outcome::Failure, false, now);
    }
    assert_eq!(
        outlier.availability(now, config.consecutive_failures),
        Availability::Tripped
    );
    outlier
}

/// Runs an ejected endpoint's time out and lets its probe end with `outcome`; returns when
/// the probe finished.
fn probe(outlier: &mut Outlier, outcome: Outcome, threshold: u32) -> Instant {
    let OutlierStatus::Ejected { until, .. } = outlier.status(Instant::now()) else {
        panic!("not ejected: {outlier:?}");
    };
    assert_eq!(outlier.availability(until, threshold), Availability::Probe);
    assert!(
        outlier.start(),
        "the first request on probation is the probe"
    );
    outlier.record(outcome, true, until);
    until
}

#[test]
fn trips_after_consecutive_failures_not_after_fewer_interleaved_with_a_success() {
    let now = Instant::now();
    let mut outlier = Outlier::default();
    for _ in 0..4 {
        outlier.record(Outcome::Failure, false, now);
    }
    outlier.record(Outcome::Success, false, now);
    for _ in 0..4 {
        outlier.record(Outcome::Failure, false, now);
    }
    assert_eq!(outlier.availability(now, 5), Availability::Serving);
    assert_eq!(
        outlier.status(now),
        OutlierStatus::Healthy {
            consecutive_failures: 4
        }
    );
    outlier.record(Outcome::Failure, false, now);
    assert_eq!(outlier.availability(now, 5), Availability::Tripped);
}

#[test]
fn a_threshold_of_zero_never_trips() {
    let now = Instant::now();
    let mut outlier = Outlier::default();
    for _ in 0..100 {
        outlier.record(Outcome::Failure, false, now);
    }
    assert_eq!(outlier.availability(now, 0), Availability::Serving);
}

#[test]
fn ejection_lasts_its_time_then_admits_one_probe() {
    let config = OutlierConfig::default();
    let t0 = Instant::now();
    let mut outlier = tripped(&config, t0);
    outlier.eject(t0, &config);
    let until = t0 + config.base_ejection;
    assert_eq!(
        outlier.status(t0),
        OutlierStatus::Ejected {
            until,
            ejections: 1
        }
    );
    assert!(outlier.is_out());
    assert_eq!(outlier.availability(until - SECOND, 5), Availability::Out);

    assert_eq!(outlier.availability(until, 5), Availability::Probe);
    assert!(outlier.reserve_probe(until));
    // Reserved: no other request may take it, nor reserve it.
    assert_eq!(outlier.availability(until, 5), Availability::Out);
    assert!(!outlier.reserve_probe(until));
    assert!(
        outlier.start(),
        "the reserving request's start takes the probe"
    );
    assert_eq!(
        outlier.status(until),
        OutlierStatus::Probation { probing: true }
    );
    // While it is in flight nothing else is admitted, however long it takes.
    assert_eq!(
        outlier.availability(until + 10 * SECOND, 5),
        Availability::Out
    );
    assert!(!outlier.start(), "a second request is not a probe");
}

#[test]
fn probe_success_restores() {
    let config = OutlierConfig::default();
    let t0 = Instant::now();
    let mut outlier = tripped(&config, t0);
    outlier.eject(t0, &config);
    let back = probe(&mut outlier, Outcome::Success, 5);
    assert_eq!(outlier.availability(back, 5), Availability::Serving);
    assert!(!outlier.is_out());
    assert_eq!(
        outlier.status(back),
        OutlierStatus::Healthy {
            consecutive_failures: 0
        }
    );
}

#[test]
fn probe_failure_re_ejects_for_longer() {
    let config = OutlierConfig::default();
    let t0 = Instant::now();
    let mut outlier = tripped(&config, t0);
    outlier.eject(t0, &config);
    let failed = probe(&mut outlier, Outcome::Failure, 5);
    assert_eq!(
        outlier.status(failed),
        OutlierStatus::Ejected {
            until: failed + 2 * config.base_ejection,
            ejections: 2
        }
    );
    let failed = probe(&mut outlier, Outcome::Failure, 5);
    assert_eq!(
        outlier.status(failed),
        OutlierStatus::Ejected {
            until: failed + 3 * config.base_ejection,
            ejections: 3
        }
    );
}

#[test]
fn ejection_time_is_capped() {
    let config = OutlierConfig::default();
    assert_eq!(config.ejection_time(1), Duration::from_secs(30));
    assert_eq!(config.ejection_time(4), Duration::from_secs(120));
    assert_eq!(config.ejection_time(10), MAX_EJECTION);
    assert_eq!(config.ejection_time(1000), MAX_EJECTION);

    // The count stops where the cap is reached, so it can decay back in reasonable time.
    let mut outlier = tripped(&config, Instant::now());
    outlier.eject(Instant::now(), &config);
    for _ in 0..20 {
        probe(&mut outlier, Outcome::Failure, 5);
    }
    let OutlierStatus::Ejected { ejections, .. } = outlier.status(Instant::now()) else {
        panic!("not ejected");
    };
    assert_eq!(ejections, 10);

    // A base above the cap is the cap.
    let long = OutlierConfig {
        base_ejection: Duration::from_secs(600),
        ..config
    };
    assert_eq!(long.ejection_time(3), Duration::from_secs(600));
}

#[test]
fn ejection_count_decays_while_healthy() {
    let config = OutlierConfig::default();
    let t0 = Instant::now();
    let mut outlier = tripped(&config, t0);
    outlier.eject(t0, &config);
    probe(&mut outlier, Outcome::Failure, 5); // second ejection: 60 s
    let back = probe(&mut outlier, Outcome::Success, 5);

    // Failing again at once: third ejection, 90 s.
    let mut again = outlier;
    for _ in 0..5 {
        again.record(Outcome::Failure, false, back);
    }
    again.eject(back, &config);
    assert_eq!(
        again.status(back),
        OutlierStatus::Ejected {
            until: back + 3 * config.base_ejection,
            ejections: 3
        }
    );

    // Healthy for one base ejection time earns one level back: second ejection's 60 s.
    let later = back + config.base_ejection;
    let mut again = outlier;
    for _ in 0..5 {
        again.record(Outcome::Failure, false, later);
    }
    again.eject(later, &config);
    assert_eq!(
        again.status(later),
        OutlierStatus::Ejected {
            until: later + 2 * config.base_ejection,
            ejections: 2
        }
    );

    // Healthy long enough: back to a first ejection.
    let much_later = back + 10 * config.base_ejection;
    let mut again = outlier;
    for _ in 0..5 {
        again.record(Outcome::Failure, false, much_later);
    }
    again.eject(much_later, &config);
    assert_eq!(
        again.status(much_later),
        OutlierStatus::Ejected {
            until: much_later + config.base_ejection,
            ejections: 1
        }
    );
}

#[test]
fn cancelled_probe_frees_the_probe() {
    let config = OutlierConfig::default();
    let t0 = Instant::now();
    let mut outlier = tripped(&config, t0);
    outlier.eject(t0, &config);
    let until = t0 + config.base_ejection;
    assert_eq!(outlier.availability(until, 5), Availability::Probe);
    assert!(outlier.start());
    outlier.cancel_probe();
    assert_eq!(outlier.availability(until, 5), Availability::Probe);
    assert!(outlier.start(), "the next request probes");
}

#[test]
fn unused_reservation_lapses() {
    let config = OutlierConfig::default();
    let t0 = Instant::now();
    let mut outlier = tripped(&config, t0);
    outlier.eject(t0, &config);
    let until = t0 + config.base_ejection;
    assert_eq!(outlier.availability(until, 5), Availability::Probe);
    assert!(outlier.reserve_probe(until));
    let almost = until + PROBE_RESERVATION - Duration::from_millis(1);
    assert_eq!(outlier.availability(almost, 5), Availability::Out);
    let lapsed = until + PROBE_RESERVATION;
    assert_eq!(outlier.availability(lapsed, 5), Availability::Probe);
    assert!(outlier.reserve_probe(lapsed));
}

#[test]
fn stragglers_do_not_count_while_out() {
    let config = OutlierConfig::default();
    let t0 = Instant::now();
    let mut outlier = tripped(&config, t0);
    outlier.eject(t0, &config);
    // Requests started before the ejection finish while it lasts: neither ends it early nor
    // extends it.
    outlier.record(Outcome::Success, false, t0 + SECOND);
    outlier.record(Outcome::Failure, false, t0 + SECOND);
    let until = t0 + config.base_ejection;
    assert_eq!(
        outlier.status(t0 + SECOND),
        OutlierStatus::Ejected {
            until,
            ejections: 1
        }
    );
    // On probation, only the probe's outcome decides.
    assert_eq!(outlier.availability(until, 5), Availability::Probe);
    assert!(outlier.start());
    outlier.record(Outcome::Success, false, until);
    assert_eq!(
        outlier.status(until),
        OutlierStatus::Probation { probing: true }
    );
    outlier.record(Outcome::Success, true, until);
    assert!(!outlier.is_out());
}

#[test]
fn spared_endpoint_counts_again_from_zero() {
    let config = OutlierConfig::default();
    let now = Instant::now();
    let mut outlier = tripped(&config, now);
    outlier.spare();
    assert_eq!(outlier.availability(now, 5), Availability::Serving);
    for _ in 0..4 {
        outlier.record(Outcome::Failure, false, now);
    }
    assert_eq!(outlier.availability(now, 5), Availability::Serving);
    outlier.record(Outcome::Failure, false, now);
    assert_eq!(outlier.availability(now, 5), Availability::Tripped);
}

#[test]
fn max_ejection_percent_follows_envoy() {
    let half = OutlierConfig::default();
    // One endpoint: 100% out after an ejection > 50%, so never (Envoy without
    // always_eject_one_host).
    assert!(!half.may_eject(0, 1));
    // Two: one may go.
    assert!(half.may_eject(0, 2));
    assert!(!half.may_eject(1, 2));
    // Three: one (two would be 67%).
    assert!(half.may_eject(0, 3));
    assert!(!half.may_eject(1, 3));
    // Ten: five.
    assert!(half.may_eject(4, 10));
    assert!(!half.may_eject(5, 10));
    // No ready endpoints: nothing to eject from.
    assert!(!half.may_eject(0, 0));

    let all = OutlierConfig {
        max_ejection_percent: 100,
        ..half
    };
    assert!(all.may_eject(0, 1));
    assert!(all.may_eject(2, 3));
    assert!(!all.may_eject(3, 3));
    let over = OutlierConfig {
        max_ejection_percent: 250,
        ..half
    };
    assert!(!over.may_eject(3, 3), "over 100% counts as 100%");
    let none = OutlierConfig {
        max_ejection_percent: 0,
        ..half
    };
    assert!(!none.may_eject(0, 100));
}

#[test]
fn config_from_proto() {
    assert_eq!(OutlierConfig::from_proto(None), OutlierConfig::default());
    assert_eq!(
        OutlierConfig::from_proto(Some(&pb::OutlierDetection::default())),
        OutlierConfig {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 50,
        }
    );
    let set = pb::OutlierDetection {
        consecutive_failures: Some(3),
        base_ejection_ms: Some(1500),
        max_ejection_percent: Some(20),
    };
    assert_eq!(
        OutlierConfig::from_proto(Some(&set)),
        OutlierConfig {
            consecutive_failures: 3,
            base_ejection: Duration::from_millis(1500),
            max_ejection_percent: 20,
        }
    );
}
