//! The request-head timeout for HTTP/1, with Envoy's `request_headers_timeout` semantics: it
//! runs from the first byte of a request head until the head is complete. The time a
//! keep-alive connection waits between requests is idle time, bounded by the idle timeout.
//!
//! hyper's own `header_read_timeout` is not used: it starts as soon as the server waits for
//! the next request, so it would close every idle keep-alive connection after a few seconds
//! and count it as a slow client.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::io::Activity;

/// Whether a request is being handled on the connection, i.e. its head has been read.
pub struct HeadTimer {
    in_request: AtomicBool,
    activity: Arc<Activity>,
}

impl HeadTimer {
    pub fn new(activity: Arc<Activity>) -> Arc<Self> {
        Arc::new(HeadTimer {
            in_request: AtomicBool::new(false),
            activity,
        })
    }

    /// Called when a request head has been parsed; the request lasts until the guard (kept in
    /// the response body) is dropped, which hyper does once the response is written.
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.in_request.store(true, Ordering::Relaxed);
        RequestGuard(self.clone())
    }

    /// Resolves when a request head has been arriving for longer than `timeout` (give or take
    /// a quarter of it) without being completed.
    pub async fn expired(&self, timeout: Duration) {
        const SAMPLES: u32 = 4;
        let tick = timeout / SAMPLES;
        // Ticks since the first byte of a head that is still incomplete.
        let mut pending = 0;
        loop {
            tokio::time::sleep(tick).await;
            let read = self.activity.take_read();
            if self.in_request.load(Ordering::Relaxed) {
                pending = 0;
            } else if pending > 0 || read {
                pending += 1;
                if pending > SAMPLES {
                    return;
                }
            }
        }
    }
}

pub struct RequestGuard(Arc<HeadTimer>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        // Bytes read during the request were its body, not the start of the next head.
        self.0.activity.clear_read();
        self.0.in_request.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waiting_between_requests_never_expires() {
        let timer = HeadTimer::new(Arc::default());
        let waited = tokio::time::timeout(
            Duration::from_secs(60),
            timer.expired(Duration::from_secs(1)),
        )
        .await;
        assert!(waited.is_err(), "expired with no bytes read");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unfinished_head_expires_after_the_timeout() {
        let activity = Arc::new(Activity::default());
        let timer = HeadTimer::new(activity.clone());
        tokio::time::sleep(Duration::from_secs(30)).await; // idle first: must not count
        activity.on_read_for_test();
        let started = tokio::time::Instant::now();
        timer.expired(Duration::from_secs(1)).await;
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_secs(1) && elapsed <= Duration::from_millis(1250),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_progress_and_its_body_bytes_do_not_count() {
        let activity = Arc::new(Activity::default());
        let timer = HeadTimer::new(activity.clone());
        let guard = timer.request_started();
        for _ in 0..20 {
            activity.on_read_for_test(); // request body arriving slowly
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        activity.on_read_for_test();
        drop(guard);
        let waited = tokio::time::timeout(
            Duration::from_secs(30),
            timer.expired(Duration::from_secs(1)),
        )
        .await;
        assert!(
            waited.is_err(),
            "body bytes were taken for the next request head"
        );
    }
}
