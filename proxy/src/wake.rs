//! [`OnWake`]: a future that is polled only after it asked to be.
//!
//! A connection task waits on its I/O and, beside it, on watchdogs: the drain, the
//! request-head timer, the idle timer. `select!` polls every branch whenever the task wakes,
//! and the task wakes several times per request for its I/O alone, so the watchdogs were
//! re-polled each time: a timer re-registers its waker, the drain's `Notified` takes the
//! channel's lock. That was ~940 instructions per request for futures that had nothing new to
//! say. Behind [`OnWake`] a watchdog is polled only when something it waits on woke it; the
//! other polls cost a waker comparison and an atomic flag swap.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

pin_project_lite::pin_project! {
    /// Polls `inner` only on the first poll and after `inner` itself called for a wake-up;
    /// other polls of the task it runs in return `Pending` without touching it.
    pub struct OnWake<F> {
        #[pin]
        inner: F,
        gate: Arc<Gate>,
        // The waker `inner` sees: it opens the gate and wakes the task.
        waker: Waker,
        // The task waker last stored in the gate (only `poll` stores one), to skip the lock
        // while it stays the same, as it does for the life of a task.
        task: Option<Waker>,
    }
}

/// The state shared between an [`OnWake`] and the wakers it hands out.
struct Gate {
    /// `inner` asked to be polled (or has never been).
    woken: AtomicBool,
    /// The waker of the task polling the [`OnWake`], passed on when the gate opens.
    task: Mutex<Option<Waker>>,
}

impl<F: Future> OnWake<F> {
    pub fn new(inner: F) -> Self {
        let gate = Arc::new(Gate {
            woken: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        OnWake {
            inner,
            waker: Waker::from(gate.clone()),
            gate,
            task: None,
        }
    }
}

impl<F: Future> Future for OnWake<F> {
    type Output = F::Output;

    // Inlined into the caller's `select!`, with the rare work out of line: as a call of its
    // own, saving and restoring registers for the inner poll cost more than the check.
    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // The task's waker is stored before the flag is read: a wake-up between the two
        // finds the new waker, one before them leaves the flag set. Either way none is lost.
        if !this.task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
            store_task(this.gate, this.task, cx.waker());
        }
        if !this.gate.woken.swap(false, Ordering::Acquire) {
            return Poll::Pending;
        }
        poll_inner(this.inner, this.waker)
    }
}

#[inline(never)]
fn store_task(gate: &Gate, task: &mut Option<Waker>, waker: &Waker) {
    *gate.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(waker.clone());
    *task = Some(waker.clone());
}

#[inline(never)]
fn poll_inner<F: Future>(inner: Pin<&mut F>, waker: &Waker) -> Poll<F::Output> {
    inner.poll(&mut Context::from_waker(waker))
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = &*task {
            task.wake_by_ref();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// Counts its polls; ready once `ready` is set, and wakes whoever it was given then.
    struct Probe {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            if self.ready.load(Ordering::Relaxed) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    fn noop_waker() -> Waker {
        struct Noop;
        impl Wake for Noop {
            fn wake(self: Arc<Self>) {}
        }
        Waker::from(Arc::new(Noop))
    }

    #[test]
    fn the_inner_future_is_polled_only_when_it_was_woken() {
        let polls = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let inner_waker = Arc::new(Mutex::new(None::<Waker>));
        let mut gated = std::pin::pin!(OnWake::new(Probe {
            polls: polls.clone(),
            ready: ready.clone(),
            waker: inner_waker.clone(),
        }));
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(gated.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            polls.load(Ordering::Relaxed),
            1,
            "the first poll goes through"
        );
        for _ in 0..5 {
            assert!(gated.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1, "polls without a wake-up");
        ready.store(true, Ordering::Relaxed);
        let woken = inner_waker.lock().unwrap().take().unwrap();
        woken.wake();
        assert!(gated.as_mut().poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    /// A wake-up of the inner future reaches the task that polls the gate, the latest one.
    #[tokio::test(start_paused = true)]
    async fn a_wake_up_reaches_the_task() {
        let started = tokio::time::Instant::now();
        OnWake::new(tokio::time::sleep(Duration::from_secs(3))).await;
        assert_eq!(started.elapsed(), Duration::from_secs(3));

        // Polled on its own task while that task is woken by other things too.
        let gated = OnWake::new(tokio::time::sleep(Duration::from_secs(5)));
        let mut gated = std::pin::pin!(gated);
        let mut ticks = 0;
        loop {
            tokio::select! {
                biased;
                () = gated.as_mut() => break,
                () = tokio::time::sleep(Duration::from_millis(700)) => ticks += 1,
            }
        }
        assert_eq!(ticks, 7);
        assert_eq!(started.elapsed(), Duration::from_secs(8));
    }
}
