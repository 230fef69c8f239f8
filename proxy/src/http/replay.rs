//! A request body that can be sent more than once, for retries.
//!
//! [`ReplayBody`] wraps the body a client sends; every attempt gets a clone. The clones share
//! what has been read of the original body so far: the data frames, while their total stays
//! within a limit, and the trailers. A clone first replays the frames it has not yielded yet,
//! then goes on reading the original body itself, capturing what it reads for the clones
//! after it. So the first attempt streams the body as it arrives (nothing is read ahead), and
//! a retry replays what the first attempt sent and continues where it stopped.
//!
//! Only one clone can read the original body at a time: the reader takes the rest of it out
//! of the shared state and gives it back when it is dropped. A retry is possible
//! ([`ReplayBody::can_replay`]) when nothing was ever dropped from the buffer and the rest of
//! the body is not held by another clone, i.e. the previous attempt's body has been dropped
//! or the original body has ended. Past the limit the buffer is freed and the body streams
//! through the clone reading it; a body whose exact length is known to exceed the limit is
//! never captured at all. Capture also stops once the reading clone is the last one left
//! (the caller gave up on retries), so a long stream does not keep a buffer it cannot use.
//!
//! After linkerd2-proxy's `ReplayBody`, simplified: no read-ahead, one chunk per frame.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// A replayable request body: clone it once per attempt. The value made by
/// [`ReplayBody::new`] is a clone like the others; keeping one unpolled is the usual way to
/// make the next attempt's.
pub struct ReplayBody<B> {
    shared: Arc<Mutex<Shared<B>>>,
    /// The rest of the original body, while this clone is the one reading it.
    rest: Option<B>,
    /// Data frames this clone has yielded (an index into the shared chunks).
    pos: usize,
    /// Data bytes this clone has yielded.
    yielded: u64,
    /// This clone has yielded the trailers (or knows it has nothing more to yield).
    trailers_done: bool,
}

struct Shared<B> {
    /// The data frames read from the original body so far, while `buffered <= limit`.
    chunks: Vec<Bytes>,
    /// The bytes in `chunks`.
    buffered: usize,
    limit: usize,
    /// Data frames read from the original body (`chunks.len()` unless overflowed).
    read: usize,
    /// More than `limit` bytes were read (or are known to come): `chunks` was freed and
    /// no clone that has not read along can yield the body any more.
    overflowed: bool,
    /// The not-yet-read rest of the original body: `None` once it ended or failed, and
    /// while a clone is reading it.
    rest: Option<B>,
    trailers: Option<HeaderMap>,
    /// The original body has been read to its end.
    ended: bool,
    /// The original body failed.
    failed: bool,
    /// The original body's size hint when it was wrapped.
    hint: SizeHint,
}

impl<B: Body<Data = Bytes>> ReplayBody<B> {
    /// Wraps `body`, capturing up to `limit` bytes of it for replay. An empty body is not
    /// kept at all; a body whose size hint says it is longer than `limit` is never captured.
    pub fn new(body: B, limit: usize) -> Self {
        let hint = body.size_hint();
        let ended = body.is_end_stream();
        let shared = Shared {
            chunks: Vec::new(),
            buffered: 0,
            limit,
            read: 0,
            overflowed: hint.lower() > limit as u64,
            rest: if ended { None } else { Some(body) },
            trailers: None,
            ended,
            failed: false,
            hint: if ended { SizeHint::with_exact(0) } else { hint },
        };
        ReplayBody {
            shared: Arc::new(Mutex::new(shared)),
            rest: None,
            pos: 0,
            yielded: 0,
            trailers_done: false,
        }
    }
}

impl<B> ReplayBody<B> {
    /// Whether a new clone would yield the whole body: nothing was dropped from the buffer,
    /// the original body has not failed, and its rest is not held by another clone (that
    /// clone has been dropped, or the body has been read to its end).
    pub fn can_replay(&self) -> bool {
        let shared = lock(&self.shared);
        !shared.overflowed && !shared.failed && (shared.ended || shared.rest.is_some())
    }
}

fn lock<B>(shared: &Mutex<Shared<B>>) -> MutexGuard<'_, Shared<B>> {
    // Nothing can panic while the lock is held in a way that breaks the state's invariants.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

impl<B> Clone for ReplayBody<B> {
    /// A clone that starts at the beginning of the body.
    fn clone(&self) -> Self {
        ReplayBody {
            shared: self.shared.clone(),
            rest: None,
            pos: 0,
            yielded: 0,
            trailers_done: false,
        }
    }
}

impl<B> Drop for ReplayBody<B> {
    fn drop(&mut self) {
        if let Some(rest) = self.rest.take() {
            let mut shared = lock(&self.shared);
            shared.rest = Some(rest);
        }
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: NotReplayable,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if this.rest.is_none() {
            let mut shared = lock(&this.shared);
            if this.pos < shared.read {
                if shared.overflowed {
                    return Poll::Ready(Some(Err(B::Error::not_replayable(Reason::Overflowed))));
                }
                let chunk = shared.chunks[this.pos].clone();
                this.pos += 1;
                this.yielded += chunk.len() as u64;
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if shared.ended {
                if !this.trailers_done {
                    this.trailers_done = true;
                    if let Some(trailers) = &shared.trailers {
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers.clone()))));
                    }
                }
                return Poll::Ready(None);
            }
            if shared.failed {
                return Poll::Ready(Some(Err(B::Error::not_replayable(Reason::Failed))));
            }
            match shared.rest.take() {
                Some(rest) => this.rest = Some(rest),
                None => {
                    return Poll::Ready(Some(Err(B::Error::not_replayable(Reason::Held))));
                }
            }
        }
        let Some(rest) = this.rest.as_mut() else {
            unreachable!("taken above");
        };
        // Polled without the lock: this clone owns the rest while it reads it.
        let polled = Pin::new(&mut *rest).poll_frame(cx);
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.rest = None;
                this.trailers_done = true;
                lock(&this.shared).ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => {
                this.rest = None;
                lock(&this.shared).failed = true;
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                let end = rest.is_end_stream();
                let mut shared = lock(&this.shared);
                if let Some(data) = frame.data_ref() {
                    shared.read += 1;
                    this.pos += 1;
                    this.yielded += data.len() as u64;
                    // The last clone left (the call is over, only hyper's copy remains):
                    // nobody can replay any more, so stop capturing and free the buffer.
                    let alone = Arc::strong_count(&this.shared) == 1;
                    if !shared.overflowed {
                        if !alone && shared.buffered + data.len() <= shared.limit {
                            shared.buffered += data.len();
                            shared.chunks.push(data.clone());
                        } else {
                            shared.overflowed = true;
                            shared.buffered = 0;
                            shared.chunks = Vec::new();
                        }
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    if !shared.overflowed {
                        shared.trailers = Some(trailers.clone());
                    }
                }
                // Trailers are a body's last frame; hyper's HTTP/2 side sends them with the
                // end of the stream and never polls again.
                if end || frame.is_trailers() {
                    shared.ended = true;
                    this.trailers_done = true;
                    drop(shared);
                    this.rest = None;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if let Some(rest) = &self.rest {
            return rest.is_end_stream();
        }
        let shared = lock(&self.shared);
        shared.ended && self.pos >= shared.read && (self.trailers_done || shared.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        if let Some(rest) = &self.rest {
            return rest.size_hint();
        }
        let shared = lock(&self.shared);
        if shared.ended && !shared.overflowed {
            return SizeHint::with_exact((shared.buffered as u64).saturating_sub(self.yielded));
        }
        // What the original body said, less what this clone has already yielded.
        let mut hint = SizeHint::new();
        if let Some(upper) = shared.hint.upper() {
            hint.set_upper(upper.saturating_sub(self.yielded));
        }
        hint.set_lower(
            shared
                .hint
                .lower()
                .saturating_sub(self.yielded)
                .min(hint.upper().unwrap_or(u64::MAX)),
        );
        hint
    }
}

/// Why a clone cannot yield the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The body outgrew the buffer, which was freed.
    Overflowed,
    /// Another clone is reading the rest of the body.
    Held,
    /// The original body failed.
    Failed,
}

/// The error a clone yields instead of a body it cannot replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotReplayableError(pub Reason);

impl fmt::Display for NotReplayableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Reason::Overflowed => "request body not replayable: it outgrew the retry buffer",
            Reason::Held => "request body not replayable: an earlier attempt is still sending it",
            Reason::Failed => "request body not replayable: reading it failed",
        })
    }
}

impl StdError for NotReplayableError {}

/// A body error type that can say "this body cannot be replayed".
pub trait NotReplayable: Sized {
    fn not_replayable(reason: Reason) -> Self;
}

impl NotReplayable for Box<dyn StdError + Send + Sync> {
    fn not_replayable(reason: Reason) -> Self {
        Box::new(NotReplayableError(reason))
    }
}

/// `hyper::Error` has no public constructor, and the proxy's bodies carry it, so the error
/// is made the one way hyper offers: an (in-memory) HTTP/1 client connection whose transport
/// fails with a [`NotReplayableError`]. The result is a connection error whose source is
/// that error. Synchronous (the transport never waits) and only on this rare path.
impl NotReplayable for hyper::Error {
    fn not_replayable(reason: Reason) -> Self {
        use std::future::Future;

        struct Noop;
        impl std::task::Wake for Noop {
            fn wake(self: Arc<Self>) {}
        }
        let waker = std::task::Waker::from(Arc::new(Noop));
        let mut cx = Context::from_waker(&waker);
        let io = FailingIo(reason);
        let mut handshake = std::pin::pin!(hyper::client::conn::http1::handshake::<
            _,
            http_body_util::Empty<Bytes>,
        >(io));
        // The handshake does no I/O, and the first read of the idle connection fails.
        let Poll::Ready(Ok((_sender, conn))) = handshake.as_mut().poll(&mut cx) else {
            unreachable!("an HTTP/1 handshake completes without I/O");
        };
        let mut conn = std::pin::pin!(conn);
        match conn.as_mut().poll(&mut cx) {
            Poll::Ready(Err(error)) => error,
            _ => unreachable!("a connection whose transport fails fails"),
        }
    }
}

/// A transport whose reads fail at once with a [`NotReplayableError`].
struct FailingIo(Reason);

impl hyper::rt::Read for FailingIo {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Err(std::io::Error::other(NotReplayableError(self.0))))
    }
}

impl hyper::rt::Write for FailingIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
#[path = "tests/replay.rs"]
mod tests;
