//! Waiting for a quiet machine before a scenario.
//!
//! On a 2-core machine anything else running (a compiler, a test suite) lands on the cores
//! the load generator and the proxy are pinned to and shows up as latency outliers and as
//! lower throughput. Before each scenario the runner samples the machine's busy fraction
//! from `/proc/stat` over one second and, if asked to, waits (bounded) until it is below a
//! threshold. The fraction seen is recorded with the scenario so noisy numbers are labelled.

use std::thread::sleep;
use std::time::{Duration, Instant};

/// Busy and total jiffies over all CPUs (the `cpu` line of `/proc/stat`).
pub fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// The fraction (0..=1) of all CPUs busy over the next `window`.
pub fn busy_fraction(window: Duration) -> Option<f64> {
    let (b0, t0) = cpu_jiffies()?;
    sleep(window);
    let (b1, t1) = cpu_jiffies()?;
    (t1 > t0).then(|| (b1 - b0) as f64 / (t1 - t0) as f64)
}

/// Samples once a second until the machine is less than `threshold` busy or `max_wait`
/// has passed; returns the last fraction seen.
pub fn wait_until_quiet(threshold: f64, max_wait: Duration) -> Option<f64> {
    let deadline = Instant::now() + max_wait;
    let mut warned = false;
    loop {
        let busy = busy_fraction(Duration::from_secs(1))?;
        if busy < threshold || Instant::now() >= deadline {
            return Some(busy);
        }
        if !warned {
            eprintln!(
                "   machine {:.0}% busy; waiting up to {}s for it to drop below {:.0}%",
                busy * 100.0,
                max_wait.as_secs(),
                threshold * 100.0
            );
            warned = true;
        }
    }
}
