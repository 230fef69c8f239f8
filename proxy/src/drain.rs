//! Graceful shutdown. One [`Signal`] is held by `main`; every listener and connection task
//! holds a [`Watch`]. Draining tells every watch to stop taking new work, then waits for all
//! of them to be dropped — or for the grace period to run out, after which the caller exits
//! and whatever is left is cut off. The two endings are reported apart so an operator can
//! tell a clean rollout from one that cut connections.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// Created together; see the module docs.
pub fn channel() -> (Signal, Watch) {
    let (signal_tx, signal_rx) = watch::channel(false);
    let (done_tx, done_rx) = mpsc::channel(1);
    (
        Signal { signal_tx, done_rx },
        Watch {
            signal_rx,
            _done_tx: done_tx,
        },
    )
}

pub struct Signal {
    signal_tx: watch::Sender<bool>,
    done_rx: mpsc::Receiver<std::convert::Infallible>,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every watch was released within the grace period.
    Graceful,
    /// The grace period ran out; work still in flight will be cut off.
    Forced,
}

impl Signal {
    /// Starts draining and waits until every [`Watch`] is dropped or `grace` elapses.
    pub async fn drain(mut self, grace: Duration) -> Drained {
        // Err only when no watch is left, which means nothing to wait for.
        let _ = self.signal_tx.send(true);
        match tokio::time::timeout(grace, self.done_rx.recv()).await {
            Ok(_) => Drained::Graceful,
            Err(_) => Drained::Forced,
        }
    }
}

/// A handle on the drain. Cloning it registers one more piece of in-flight work; dropping it
/// releases that piece.
#[derive(Clone)]
pub struct Watch {
    signal_rx: watch::Receiver<bool>,
    _done_tx: mpsc::Sender<std::convert::Infallible>,
}

impl Watch {
    /// Resolves once draining has started (immediately if it already has).
    pub async fn signaled(&self) {
        let mut rx = self.signal_rx.clone();
        // An error means the Signal was dropped without draining: treat it as a drain.
        let _ = rx.wait_for(|draining| *draining).await;
    }

    pub fn is_draining(&self) -> bool {
        *self.signal_rx.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn graceful_when_work_finishes_in_time() {
        let (signal, watch) = channel();
        let work = watch.clone();
        tokio::spawn(async move {
            work.signaled().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(work);
        });
        drop(watch);
        assert_eq!(
            signal.drain(Duration::from_secs(5)).await,
            Drained::Graceful
        );
    }

    #[tokio::test(start_paused = true)]
    async fn forced_when_work_outlives_grace() {
        let (signal, watch) = channel();
        let stuck = watch.clone();
        drop(watch);
        let started = tokio::time::Instant::now();
        assert_eq!(signal.drain(Duration::from_secs(5)).await, Drained::Forced);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert!(stuck.is_draining());
    }
}
