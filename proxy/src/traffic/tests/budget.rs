use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::*;

fn config(ratio: f64, min_per_second: u32) -> BudgetConfig {
    BudgetConfig {
        ratio,
        min_per_second,
        ttl: Duration::from_secs(10),
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Every request fails and wants a retry: `requests` evenly spread from `start` over
/// `seconds`. Returns the retries granted in each second.
fn outage(budget: &RetryBudget, start: Instant, seconds: u64, per_second: u64) -> Vec<u64> {
    let mut granted = vec![0; seconds as usize];
    let step = 1000 / per_second;
    for i in 0..seconds * per_second {
        let now = start + ms(i * step);
        budget.deposit(now);
        if budget.try_withdraw(now) {
            granted[(i / per_second) as usize] += 1;
        }
    }
    granted
}

#[tokio::test(start_paused = true)]
async fn follows_paused_tokio_time() {
    let budget = RetryBudget::new(config(1.0, 0));
    budget.deposit(Instant::now());
    assert_eq!(budget.available(Instant::now()), 1);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(budget.available(Instant::now()), 0);
}

#[test]
fn defaults_are_linkerds() {
    let c = BudgetConfig::default();
    assert_eq!(c.ratio, 0.2);
    assert_eq!(c.min_per_second, 10);
    assert_eq!(c.ttl, Duration::from_secs(10));
}

#[test]
fn total_outage_retries_stay_within_ratio_plus_floor() {
    let budget = RetryBudget::new(BudgetConfig::default());
    let granted: u64 = outage(&budget, Instant::now(), 10, 100).iter().sum();
    // 1,000 requests over 10 s: at most 0.2 × 1000 + 10 × 10.
    let bound = 200 + 100;
    assert!(granted <= bound, "{granted} retries > {bound}");
    assert!(
        granted >= bound * 95 / 100,
        "only {granted} of {bound} retries"
    );
}

#[test]
fn long_outage_stays_within_budget_in_every_window() {
    let budget = RetryBudget::new(BudgetConfig::default());
    let per_second = 100;
    let granted = outage(&budget, Instant::now(), 60, per_second);
    for start in 0..=granted.len() - 10 {
        let in_window: u64 = granted[start..start + 10].iter().sum();
        let bound = (0.2 * (10 * per_second) as f64) as u64 + 10 * 10;
        assert!(
            in_window <= bound,
            "seconds {start}..{}: {in_window} retries > {bound}",
            start + 10
        );
    }
    let total: u64 = granted.iter().sum();
    assert!(total <= 6000 / 5 + 10 * 60, "{total} retries in 60 s");
    // Steady state: the ratio keeps paying (a retry for every fifth request).
    assert!(granted[35] >= 19, "{granted:?}");
}

#[test]
fn deposits_expire_after_the_ttl() {
    // No floor: only deposits pay.
    let budget = RetryBudget::new(config(1.0, 0));
    let t0 = Instant::now();
    for _ in 0..3 {
        budget.deposit(t0);
    }
    assert_eq!(budget.available(t0 + ms(9_999)), 3);
    assert!(budget.try_withdraw(t0 + ms(9_999)));
    assert_eq!(budget.available(t0 + ms(9_999)), 2);
    // Ten seconds on, the deposits (and the withdrawal) are out of the window.
    assert_eq!(budget.available(t0 + ms(10_000)), 0);
    assert!(!budget.try_withdraw(t0 + ms(10_000)));
}

#[test]
fn a_quiet_period_does_not_pay_for_a_later_burst() {
    let budget = RetryBudget::new(BudgetConfig::default());
    let t0 = Instant::now();
    // A busy second with no failures: 10,000 deposits.
    for i in 0..10_000 {
        budget.deposit(t0 + Duration::from_micros(i * 100));
    }
    assert_eq!(budget.available(t0 + ms(999)), 2_000 + 100);
    // Twenty quiet seconds later an outage starts: only the floor is left.
    let later = t0 + Duration::from_secs(20);
    let granted = (0..1_000).filter(|_| budget.try_withdraw(later)).count();
    assert_eq!(granted, 100);
}

#[test]
fn the_floor_alone_allows_min_per_second_times_ttl_and_refills() {
    let budget = RetryBudget::new(config(0.2, 10));
    let t0 = Instant::now();
    let granted = (0..1_000).filter(|_| budget.try_withdraw(t0)).count();
    assert_eq!(granted, 100);
    assert!(!budget.try_withdraw(t0 + ms(9_999)));
    // The withdrawals expire with their second.
    assert_eq!(budget.available(t0 + Duration::from_secs(10)), 100);
}

#[test]
fn zero_ratio_and_zero_floor_allow_no_retry() {
    let budget = RetryBudget::new(config(0.0, 0));
    let t0 = Instant::now();
    for _ in 0..1_000 {
        budget.deposit(t0);
    }
    assert!(!budget.try_withdraw(t0));
}

#[test]
fn ratio_is_exact_in_fixed_point() {
    // 0.2 × 5 and 0.7 × 10 are whole retries, not 0.999….
    let budget = RetryBudget::new(config(0.2, 0));
    let t0 = Instant::now();
    (0..5).for_each(|_| budget.deposit(t0));
    assert!(budget.try_withdraw(t0));
    assert!(!budget.try_withdraw(t0));
    let budget = RetryBudget::new(config(0.7, 0));
    (0..10).for_each(|_| budget.deposit(t0));
    assert_eq!(budget.available(t0), 7);
}

#[test]
fn config_is_clamped() {
    let c = RetryBudget::new(BudgetConfig {
        ratio: 3.0,
        min_per_second: 1,
        ttl: Duration::from_secs(600),
    })
    .config();
    assert_eq!((c.ratio, c.ttl), (1.0, MAX_BUDGET_TTL));
    let c = RetryBudget::new(BudgetConfig {
        ratio: f64::NAN,
        min_per_second: 1,
        ttl: ms(10),
    })
    .config();
    assert_eq!(
        (c.ratio, c.ttl),
        (DEFAULT_BUDGET_RATIO, Duration::from_secs(1))
    );
}

#[test]
fn an_instant_older_than_the_newest_bucket_counts_in_it() {
    // Threads read the clock before taking the lock, so instants arrive slightly out of
    // order; an old one must not write into a bucket that already expired.
    let budget = RetryBudget::new(config(1.0, 0));
    let t0 = Instant::now();
    budget.deposit(t0 + Duration::from_secs(20));
    budget.deposit(t0 + Duration::from_secs(5));
    assert_eq!(budget.available(t0 + Duration::from_secs(20)), 2);
}

#[test]
fn concurrent_withdrawals_never_exceed_the_budget() {
    let budget = RetryBudget::new(BudgetConfig::default());
    let now = Instant::now();
    let granted = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..1_000 {
                    if budget.try_withdraw(now) {
                        granted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    // Exactly the floor: 10/s × 10 s, never one more.
    assert_eq!(granted.into_inner(), 100);
}

#[test]
fn concurrent_deposits_and_withdrawals_stay_within_ratio_plus_floor() {
    let budget = RetryBudget::new(BudgetConfig::default());
    let t0 = Instant::now();
    let granted = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for i in 0..500 {
                    // All within one window (5 s).
                    let now = t0 + ms(i * 10);
                    budget.deposit(now);
                    if budget.try_withdraw(now) {
                        granted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let granted = granted.into_inner();
    let bound = 4_000 / 5 + 100;
    assert!(granted <= bound, "{granted} > {bound}");
    assert!(granted >= 100, "{granted}");
}
