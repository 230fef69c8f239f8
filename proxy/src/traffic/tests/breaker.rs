use weft_api::proto::discovery::v1 as pb;

use super::*;

fn small() -> Limits {
    Limits {
        max_connections: 2,
        max_pending: 3,
        max_requests: 4,
    }
}

#[test]
fn requests_overflow_at_the_limit_and_permits_release_on_drop() {
    let breaker = ServiceBreaker::new(small());
    let permits: Vec<_> = (0..4).map(|_| breaker.try_request().unwrap()).collect();
    assert_eq!(breaker.requests(), 4);
    assert_eq!(breaker.try_request().unwrap_err(), Overflow::Requests);
    // The other limits are separate.
    assert!(breaker.try_pending().is_ok());
    assert!(breaker.try_connection().is_ok());
    drop(permits);
    assert_eq!(breaker.requests(), 0);
    assert!(breaker.try_request().is_ok());
}

#[test]
fn pending_overflow_at_the_limit_and_permits_release_on_drop() {
    let breaker = ServiceBreaker::new(small());
    let mut permits: Vec<_> = (0..3).map(|_| breaker.try_pending().unwrap()).collect();
    assert_eq!(breaker.try_pending().unwrap_err(), Overflow::Pending);
    permits.pop();
    assert_eq!(breaker.pending(), 2);
    let _again = breaker.try_pending().unwrap();
    assert_eq!(breaker.try_pending().unwrap_err(), Overflow::Pending);
}

#[test]
fn connections_overflow_at_the_limit_and_permits_release_on_drop() {
    let breaker = ServiceBreaker::new(small());
    let a = breaker.try_connection().unwrap();
    let _b = breaker.try_connection().unwrap();
    assert_eq!(breaker.try_connection().unwrap_err(), Overflow::Connections);
    assert_eq!(breaker.connections(), 2);
    drop(a);
    assert_eq!(breaker.connections(), 1);
    assert!(breaker.try_connection().is_ok());
}

#[test]
fn permits_outlive_the_breaker_handle_and_clones_share_counts() {
    let breaker = ServiceBreaker::new(small());
    let clone = breaker.clone();
    let permit = clone.try_request().unwrap();
    drop(clone);
    assert_eq!(breaker.requests(), 1);
    drop(permit);
    assert_eq!(breaker.requests(), 0);
}

#[test]
fn update_changes_limits_live() {
    let breaker = ServiceBreaker::new(small());
    let held: Vec<_> = (0..4).map(|_| breaker.try_request().unwrap()).collect();
    assert!(breaker.try_request().is_err());

    // Raised: admits more at once.
    breaker.update(Limits {
        max_requests: 6,
        ..small()
    });
    let more: Vec<_> = (0..2).map(|_| breaker.try_request().unwrap()).collect();
    assert!(breaker.try_request().is_err());

    // Lowered below what is admitted: nothing is cut, nothing new until under the limit.
    breaker.update(Limits {
        max_requests: 3,
        ..small()
    });
    assert_eq!(breaker.requests(), 6);
    drop(more);
    assert!(breaker.try_request().is_err(), "4 admitted, limit 3");
    drop(held);
    let _one = breaker.try_request().unwrap();
    assert_eq!(breaker.limits().max_requests, 3);
}

#[test]
fn zero_refuses_everything() {
    let breaker = ServiceBreaker::new(Limits {
        max_connections: 0,
        max_pending: 0,
        max_requests: 0,
    });
    assert_eq!(breaker.try_request().unwrap_err(), Overflow::Requests);
    assert_eq!(breaker.try_pending().unwrap_err(), Overflow::Pending);
    assert_eq!(breaker.try_connection().unwrap_err(), Overflow::Connections);
}

#[test]
fn concurrent_permits_never_exceed_the_limit() {
    let breaker = ServiceBreaker::new(small());
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (breaker, peak) = (breaker.clone(), peak.clone());
            std::thread::spawn(move || {
                for _ in 0..10_000 {
                    if let Ok(_permit) = breaker.try_request() {
                        peak.fetch_max(breaker.requests(), Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert!(peak.load(Ordering::Relaxed) <= 4);
    assert_eq!(breaker.requests(), 0);
}

#[test]
fn overflow_labels() {
    assert_eq!(Overflow::Requests.as_str(), "requests");
    assert_eq!(Overflow::Pending.as_str(), "pending");
    assert_eq!(Overflow::Connections.as_str(), "connections");
    assert!(Overflow::Pending
        .to_string()
        .contains("max_pending_requests"));
}

#[test]
fn limits_from_proto() {
    let default = Limits {
        max_connections: 1024,
        max_pending: 1024,
        max_requests: 1024,
    };
    assert_eq!(Limits::from_proto(None), default);
    assert_eq!(Limits::default(), default);
    assert_eq!(
        Limits::from_proto(Some(&pb::CircuitBreaker::default())),
        default
    );
    let set = pb::CircuitBreaker {
        max_connections: Some(10),
        max_pending_requests: None,
        max_requests: Some(0),
    };
    assert_eq!(
        Limits::from_proto(Some(&set)),
        Limits {
            max_connections: 10,
            max_pending: 1024,
            max_requests: 0,
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_closed_or_returned_connection_wakes_a_waiting_request() {
    let breaker = ServiceBreaker::new(Limits {
        max_connections: 1,
        ..small()
    });
    let held = breaker.try_connection().unwrap();
    // Registered before the release, as the pool does.
    let waiting = breaker.connection_available();
    tokio::pin!(waiting);
    waiting.as_mut().enable();
    assert!(breaker.try_connection().is_err());
    drop(held);
    tokio::time::timeout(std::time::Duration::from_millis(1), waiting)
        .await
        .expect("the release woke the waiter");
    let _again = breaker.try_connection().unwrap();

    let returned = breaker.connection_available();
    tokio::pin!(returned);
    returned.as_mut().enable();
    breaker.connection_returned();
    tokio::time::timeout(std::time::Duration::from_millis(1), returned)
        .await
        .expect("a connection back in the pool wakes the waiter");

    // Nothing happening: the wait does not end by itself.
    let idle = breaker.connection_available();
    assert!(
        tokio::time::timeout(std::time::Duration::from_secs(5), idle)
            .await
            .is_err()
    );
}
