//! A response body that runs a hook once it has been read to the end — to return a pooled
//! connection, or to mark a request finished. A body that fails or is abandoned drops the
//! hook without running it, which releases whatever the hook held.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

pin_project_lite::pin_project! {
    pub struct OnEnd<B, F> {
        #[pin]
        inner: B,
        on_end: Option<F>,
    }
}

impl<B: http_body::Body, F: FnOnce()> OnEnd<B, F> {
    /// Wraps `inner`; a body that is already empty runs `on_end` at once, because a server
    /// that sees an empty body never polls it.
    pub fn new(inner: B, on_end: F) -> Self {
        if inner.is_end_stream() {
            on_end();
            return OnEnd {
                inner,
                on_end: None,
            };
        }
        OnEnd {
            inner,
            on_end: Some(on_end),
        }
    }
}

impl<B, F> http_body::Body for OnEnd<B, F>
where
    B: http_body::Body<Data = Bytes, Error = hyper::Error>,
    F: FnOnce(),
{
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let mut inner = this.inner;
        let poll = inner.as_mut().poll_frame(cx);
        let ended = match &poll {
            Poll::Ready(None) => true,
            // A server that knows the body has ended may never poll again, so check now.
            Poll::Ready(Some(Ok(_))) => inner.is_end_stream(),
            Poll::Ready(Some(Err(_))) => {
                this.on_end.take();
                false
            }
            Poll::Pending => false,
        };
        if ended {
            if let Some(on_end) = this.on_end.take() {
                on_end();
            }
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
