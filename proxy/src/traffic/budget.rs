//! The retry budget: how many retries a Service's callers in this proxy may add on top of
//! the requests they send, so that retries help with a few failing endpoints but never
//! multiply a full outage.
//!
//! Linkerd's (Finagle's) scheme: every original request *deposits* `ratio` of a retry, every
//! retry *withdraws* one, and a fixed reserve of `min_per_second × TTL` lets a caller with
//! little traffic retry at all. Deposits and withdrawals count only within a sliding window
//! of the last TTL (10 s), kept as a ring of per-second buckets: a quiet hour cannot pay for
//! a burst now, and a burst of retries ten seconds ago no longer holds today's back.
//!
//! The guarantee: within any TTL window aligned to the budget's seconds, retries withdrawn
//! ≤ `ratio` × requests deposited in that window + `min_per_second` × TTL. (A window that
//! starts mid-second can also see the retries of the part-second before it: buckets are
//! whole seconds, so a deposit counts for between TTL − 1 s and TTL.)
//!
//! One budget is shared (`Arc`) by every request to one Service. Retries must not deposit:
//! only the original request does, or a retry would pay for the next one.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

// tokio's clock, as `balance` and `outlier` use, so a test that pauses time moves the
// budget's window too.
use tokio::time::Instant;

/// Linkerd's default: retries may add at most 20% to the load a Service already takes, which
/// a healthy Service absorbs and an unhealthy one is not pushed over by.
pub const DEFAULT_BUDGET_RATIO: f64 = 0.2;
/// Linkerd's default floor: a caller sending one request a second still gets its occasional
/// retry (the ratio alone would give it one every five seconds), and 10/s is too little to
/// hurt any Service.
pub const DEFAULT_BUDGET_MIN_PER_SECOND: u32 = 10;
/// Linkerd's and Finagle's window: long enough to smooth per-second noise, short enough that
/// the budget follows a change in traffic within seconds.
pub const DEFAULT_BUDGET_TTL: Duration = Duration::from_secs(10);
/// Finagle's limit; also keeps the ring (one bucket a second) small.
pub const MAX_BUDGET_TTL: Duration = Duration::from_secs(60);

/// One retry in fixed-point units, so the ratio is applied without floating-point drift
/// (0.2 × 5 is exactly one retry, not 0.9999…).
const UNIT: u64 = 1_000_000;

/// What a [`RetryBudget`] allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// Retries per original request, 0.0–1.0 (clamped).
    pub ratio: f64,
    /// Retries a second allowed regardless of traffic (as a reserve of
    /// `min_per_second × ttl`).
    pub min_per_second: u32,
    /// How long a deposit (or a withdrawal) counts; whole seconds, 1 s to 60 s.
    pub ttl: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            ratio: DEFAULT_BUDGET_RATIO,
            min_per_second: DEFAULT_BUDGET_MIN_PER_SECOND,
            ttl: DEFAULT_BUDGET_TTL,
        }
    }
}

/// A retry budget shared by the requests to one Service.
///
/// `try_withdraw` must read the whole window and then take a retry as one step, or two
/// threads could both see the last retry and both take it. That is a check-then-act over a
/// rotating ring, so it is a `std::sync::Mutex` around a few integers rather than atomics: a
/// lock-free version needs a CAS loop over a balance that rotation also rewrites (tower's
/// `TpsBudget` sums its atomic slots and then subtracts in a second step, so two threads can
/// both take the last retry — the overdraw this type exists to prevent). The
/// critical section is a few additions, never blocks or allocates, and is taken at most twice
/// a request, so the lock is not a bottleneck at sidecar request rates.
#[derive(Debug)]
pub struct RetryBudget {
    config: BudgetConfig,
    /// Credit per deposit, in [`UNIT`]s.
    deposit_units: u64,
    /// `min_per_second × ttl`, in [`UNIT`]s.
    reserve_units: u64,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    /// The first instant the budget saw; bucket boundaries are whole seconds from it. Set on
    /// first use so that a budget built now and used with injected instants lines up with
    /// them.
    epoch: Option<Instant>,
    /// The second (since `epoch`) of the newest bucket.
    newest: u64,
    /// Bucket for second `s` at `s % len`.
    buckets: Box<[Bucket]>,
    /// Sums over `buckets`.
    deposits: u64,
    withdrawals: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    deposits: u64,
    withdrawals: u64,
}

impl RetryBudget {
    /// A budget with `config` (ratio clamped to 0–1, TTL to whole seconds in 1–60 s).
    pub fn new(config: BudgetConfig) -> Self {
        let ratio = if config.ratio.is_nan() {
            DEFAULT_BUDGET_RATIO
        } else {
            config.ratio.clamp(0.0, 1.0)
        };
        let ttl_secs = config.ttl.as_secs().clamp(1, MAX_BUDGET_TTL.as_secs());
        let config = BudgetConfig {
            ratio,
            ttl: Duration::from_secs(ttl_secs),
            ..config
        };
        // Rounded down (the tiny addend absorbs binary error such as 0.7 × 10⁶ = 699999.99…)
        // so that rounding never allows more than the ratio.
        let deposit_units = (ratio * UNIT as f64 + 1e-6).floor() as u64;
        let reserve_units = u64::from(config.min_per_second)
            .saturating_mul(ttl_secs)
            .saturating_mul(UNIT);
        RetryBudget {
            config,
            deposit_units,
            reserve_units,
            window: Mutex::new(Window {
                epoch: None,
                newest: 0,
                buckets: vec![Bucket::default(); ttl_secs as usize].into_boxed_slice(),
                deposits: 0,
                withdrawals: 0,
            }),
        }
    }

    /// The configuration in force (after clamping), so a caller can keep this budget across
    /// a config update that does not change it.
    pub fn config(&self) -> BudgetConfig {
        self.config
    }

    /// Records an original request (never a retry).
    pub fn deposit(&self, now: Instant) {
        let mut window = self.lock();
        window.current(now).deposits += 1;
        window.deposits += 1;
    }

    /// Takes one retry if the budget has one; `false` means do not retry.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let mut window = self.lock();
        window.current(now);
        if self.available_units(&window) < UNIT {
            return false;
        }
        window.current(now).withdrawals += 1;
        window.withdrawals += 1;
        true
    }

    /// Whole retries that could be withdrawn at `now` (for metrics and the admin page).
    pub fn available(&self, now: Instant) -> u64 {
        let mut window = self.lock();
        window.current(now);
        self.available_units(&window) / UNIT
    }

    fn available_units(&self, window: &Window) -> u64 {
        let credit = window
            .deposits
            .saturating_mul(self.deposit_units)
            .saturating_add(self.reserve_units);
        credit.saturating_sub(window.withdrawals.saturating_mul(UNIT))
    }

    fn lock(&self) -> MutexGuard<'_, Window> {
        // A panic while holding the lock leaves the counters consistent (each update is a
        // pair of additions), so a poisoned lock is still usable.
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::new(BudgetConfig::default())
    }
}

impl Window {
    /// Expires the buckets that fell out of the window by `now` and returns `now`'s bucket.
    /// Time never goes backwards here: an instant older than the newest bucket (another
    /// thread read the clock first but took the lock later) counts in the newest bucket.
    fn current(&mut self, now: Instant) -> &mut Bucket {
        let epoch = *self.epoch.get_or_insert(now);
        let second = now
            .saturating_duration_since(epoch)
            .as_secs()
            .max(self.newest);
        let len = self.buckets.len() as u64;
        if second > self.newest {
            let stale = (second - self.newest).min(len);
            for s in second + 1 - stale..=second {
                let bucket = std::mem::take(&mut self.buckets[(s % len) as usize]);
                self.deposits -= bucket.deposits;
                self.withdrawals -= bucket.withdrawals;
            }
            self.newest = second;
        }
        &mut self.buckets[(second % len) as usize]
    }
}

#[cfg(test)]
#[path = "tests/budget.rs"]
mod tests;
