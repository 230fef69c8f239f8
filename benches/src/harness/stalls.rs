//! Detecting whole-machine stalls during a run.
//!
//! On a virtual machine the hypervisor sometimes stops every vCPU at once for tens of
//! milliseconds (measured here: ~50 ms pauses a few times a minute on both cores together).
//! Nothing inside the guest runs, so it is not visible as "other work" in `/proc/stat`, yet
//! an open-loop run records it faithfully as a burst of late requests — a p99.9 (and often a
//! p99) that says nothing about the proxy. A watcher thread that sleeps 5 ms at a time and
//! notes how much longer each sleep took sees such stalls; the runner repeats runs that had
//! one and labels the results with what it saw. 200 wake-ups a second cost the cores
//! nothing measurable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::Serialize;

const TICK: Duration = Duration::from_millis(5);
/// Oversleeping by more than this counts as a stall (ordinary scheduling delay is far less).
const STALL: Duration = Duration::from_millis(5);

/// Stalls seen during one run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Stalls {
    pub count: u32,
    pub longest_ms: f64,
    pub total_ms: f64,
}

/// A running watcher; [`StallWatch::stop`] ends it and returns what it saw.
pub struct StallWatch {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Stalls>,
}

impl StallWatch {
    pub fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let mut seen = Stalls::default();
            while !flag.load(Ordering::Relaxed) {
                let before = Instant::now();
                thread::sleep(TICK);
                let over = before.elapsed().saturating_sub(TICK);
                if over > STALL {
                    let ms = over.as_secs_f64() * 1000.0;
                    seen.count += 1;
                    seen.total_ms += ms;
                    seen.longest_ms = seen.longest_ms.max(ms);
                }
            }
            seen
        });
        Self { stop, handle }
    }

    pub fn stop(self) -> Stalls {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}
