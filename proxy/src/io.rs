//! Wrappers around a connection's byte stream: replaying bytes read during detection,
//! counting bytes into metrics, and noticing when a connection has gone idle.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pin_project_lite::pin_project! {
    /// Yields `prefix` before reading from `io`: the bytes detection already consumed.
    pub struct PrefixedIo<I> {
        prefix: Bytes,
        #[pin]
        io: I,
    }
}

impl<I> PrefixedIo<I> {
    pub fn new(prefix: Bytes, io: I) -> Self {
        PrefixedIo { prefix, io }
    }
}

impl<I: AsyncRead> AsyncRead for PrefixedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.prefix.has_remaining() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        this.io.poll_read(cx, buf)
    }
}

impl<I: AsyncWrite> AsyncWrite for PrefixedIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

/// What a connection's bytes have been doing, as flags that watchdogs sample and clear. A
/// flag costs one relaxed atomic store per I/O, where a timestamp would cost a clock read.
#[derive(Debug, Default)]
pub struct Activity {
    /// Any byte either way since the idle watchdog last looked.
    touched: AtomicBool,
    /// A byte read from the peer since the request-head watchdog last looked.
    read: AtomicBool,
}

impl Activity {
    fn on_read(&self) {
        self.touched.store(true, Ordering::Relaxed);
        self.read.store(true, Ordering::Relaxed);
    }

    fn on_write(&self) {
        self.touched.store(true, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub fn on_read_for_test(&self) {
        self.on_read();
    }

    /// Whether anything was read since the last call.
    pub fn take_read(&self) -> bool {
        self.read.swap(false, Ordering::Relaxed)
    }

    /// Forgets reads so far: the bytes belonged to a request that is now finished.
    pub fn clear_read(&self) {
        self.read.store(false, Ordering::Relaxed);
    }

    /// Resolves once no byte has moved for `timeout` (give or take a quarter of it).
    pub async fn idle(&self, timeout: Duration) {
        const SAMPLES: u32 = 4;
        let tick = timeout / SAMPLES;
        let mut quiet = 0;
        while quiet < SAMPLES {
            tokio::time::sleep(tick).await;
            if self.touched.swap(false, Ordering::Relaxed) {
                quiet = 0;
            } else {
                quiet += 1;
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// Counts bytes read from and written to the accepted peer, and records activity.
    pub struct MeteredIo<I> {
        #[pin]
        io: I,
        read: Counter,
        written: Counter,
        activity: Arc<Activity>,
    }
}

impl<I> MeteredIo<I> {
    pub fn new(io: I, read: Counter, written: Counter, activity: Arc<Activity>) -> Self {
        MeteredIo {
            io,
            read,
            written,
            activity,
        }
    }
}

impl<I: AsyncRead> AsyncRead for MeteredIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let poll = this.io.poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.read.inc_by(n as u64);
            this.activity.on_read();
        }
        poll
    }
}

impl<I: AsyncWrite> AsyncWrite for MeteredIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let poll = this.io.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            this.written.inc_by(n as u64);
            this.activity.on_write();
        }
        poll
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let poll = this.io.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = poll {
            this.written.inc_by(n as u64);
            this.activity.on_write();
        }
        poll
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn prefix_is_replayed_before_the_stream() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b" world").await.unwrap();
        drop(a);
        let mut io = PrefixedIo::new(Bytes::from_static(b"hello"), b);
        let mut out = String::new();
        io.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[tokio::test]
    async fn metered_io_counts_both_ways() {
        let (mut a, b) = tokio::io::duplex(64);
        let (read, written) = (Counter::default(), Counter::default());
        let mut io = MeteredIo::new(b, read.clone(), written.clone(), Default::default());
        a.write_all(b"abc").await.unwrap();
        let mut buf = [0u8; 3];
        io.read_exact(&mut buf).await.unwrap();
        io.write_all(b"hello").await.unwrap();
        assert_eq!((read.get(), written.get()), (3, 5));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_fires_only_after_a_quiet_period() {
        let activity = Arc::new(Activity::default());
        let started = tokio::time::Instant::now();
        let toucher = {
            let activity = activity.clone();
            tokio::spawn(async move {
                for _ in 0..10 {
                    activity.on_write();
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            })
        };
        activity.idle(Duration::from_secs(2)).await;
        let elapsed = started.elapsed();
        // Active for 5 s, then 2 s of quiet (sampled every 0.5 s).
        assert!(
            elapsed >= Duration::from_secs(7) && elapsed <= Duration::from_millis(7500),
            "{elapsed:?}"
        );
        toucher.await.unwrap();
    }
}
