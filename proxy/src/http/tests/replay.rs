use std::collections::VecDeque;
use std::error::Error as StdError;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use super::*;

type BoxError = Box<dyn StdError + Send + Sync>;

/// A body of ready frames; with `known`, its size hint is exact (as with a Content-Length),
/// and it is at its end once no frame is left.
struct Frames {
    frames: VecDeque<Frame<Bytes>>,
    known: bool,
}

impl Frames {
    fn new(chunks: &[&str], known: bool) -> Frames {
        Frames {
            frames: chunks
                .iter()
                .map(|c| Frame::data(Bytes::copy_from_slice(c.as_bytes())))
                .collect(),
            known,
        }
    }

    fn with_trailers(mut self, trailers: HeaderMap) -> Frames {
        self.frames.push_back(Frame::trailers(trailers));
        self
    }

    fn remaining(&self) -> u64 {
        self.frames
            .iter()
            .filter_map(|f| f.data_ref())
            .map(|d| d.len() as u64)
            .sum()
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.frames.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.known && self.frames.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        if self.known {
            SizeHint::with_exact(self.remaining())
        } else {
            SizeHint::default()
        }
    }
}

/// Every frame of `body` as text (`data` or `trailers:k=v`), until its end or an error.
async fn frames<B>(body: &mut B) -> Vec<String>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => out.push(describe(frame)),
            Err(error) => {
                out.push(format!("error: {error}"));
                break;
            }
        }
    }
    out
}

fn describe(frame: Frame<Bytes>) -> String {
    match frame.into_data() {
        Ok(data) => String::from_utf8_lossy(&data).into_owned(),
        Err(frame) => {
            let trailers = frame.into_trailers().expect("data or trailers");
            let mut pairs: Vec<_> = trailers
                .iter()
                .map(|(k, v)| format!("{k}={}", v.to_str().unwrap()))
                .collect();
            pairs.sort();
            format!("trailers:{}", pairs.join(","))
        }
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn grpc_trailers() -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    trailers
}

#[tokio::test]
async fn a_body_read_in_full_is_replayed_by_the_next_clone() {
    let replay = ReplayBody::new(Frames::new(&["a", "bb", "ccc"], false), 1024);
    let mut first = replay.clone();
    assert_eq!(frames(&mut first).await, strings(&["a", "bb", "ccc"]));
    // The original body ended: a retry needs nothing from the first attempt's clone, which
    // hyper may still hold.
    assert!(replay.can_replay());
    let mut second = replay.clone();
    assert_eq!(second.size_hint().exact(), Some(6), "known once read");
    assert!(!second.is_end_stream());
    assert_eq!(frames(&mut second).await, strings(&["a", "bb", "ccc"]));
    assert!(second.is_end_stream());
    assert_eq!(second.size_hint().exact(), Some(0));
    drop(first);
    assert_eq!(
        frames(&mut replay.clone()).await,
        strings(&["a", "bb", "ccc"])
    );
}

#[tokio::test]
async fn a_clone_replays_what_an_earlier_one_read_then_reads_the_rest() {
    let replay = ReplayBody::new(Frames::new(&["one", "two", "three"], false), 1024);
    let mut first = replay.clone();
    let frame = first.frame().await.unwrap().unwrap();
    assert_eq!(describe(frame), "one");
    assert!(
        !replay.can_replay(),
        "the first clone holds the rest of the body"
    );
    drop(first);
    assert!(replay.can_replay(), "dropping it gave the rest back");
    let mut second = replay.clone();
    assert_eq!(frames(&mut second).await, strings(&["one", "two", "three"]));
    // The second clone read the rest, capturing it: a third replays all of it.
    drop(second);
    assert_eq!(
        frames(&mut replay.clone()).await,
        strings(&["one", "two", "three"])
    );
}

#[tokio::test]
async fn trailers_are_replayed_after_the_data() {
    let body = Frames::new(&["msg"], false).with_trailers(grpc_trailers());
    let replay = ReplayBody::new(body, 1024);
    let expected = strings(&["msg", "trailers:grpc-status=0"]);
    let mut first = replay.clone();
    assert_eq!(describe(first.frame().await.unwrap().unwrap()), "msg");
    assert!(!first.is_end_stream());
    assert_eq!(
        describe(first.frame().await.unwrap().unwrap()),
        "trailers:grpc-status=0"
    );
    // Trailers end a body: hyper sends them with END_STREAM and polls no more, so the first
    // clone, still alive, need not be polled again for a retry to be possible.
    assert!(first.is_end_stream());
    assert!(replay.can_replay());
    let mut again = replay.clone();
    assert_eq!(frames(&mut again).await, expected);
    assert!(again.is_end_stream());

    // Trailers read by a clone dropped before the body's end, then the end by another.
    let body = Frames::new(&["a", "b"], false).with_trailers(grpc_trailers());
    let replay = ReplayBody::new(body, 1024);
    let mut first = replay.clone();
    first.frame().await.unwrap().unwrap();
    drop(first);
    assert_eq!(
        frames(&mut replay.clone()).await,
        strings(&["a", "b", "trailers:grpc-status=0"])
    );
    assert_eq!(
        frames(&mut replay.clone()).await,
        strings(&["a", "b", "trailers:grpc-status=0"])
    );
}

#[tokio::test]
async fn a_body_over_the_limit_streams_through_and_frees_the_buffer() {
    let replay = ReplayBody::new(Frames::new(&["abc", "def", "ghi"], false), 4);
    let mut first = replay.clone();
    assert_eq!(first.frame().await.unwrap().map(describe).unwrap(), "abc");
    {
        let shared = lock(&replay.shared);
        assert!(!shared.overflowed, "3 bytes fit in 4");
        assert_eq!(shared.buffered, 3);
    }
    // The rest streams through the clone reading it.
    assert_eq!(frames(&mut first).await, strings(&["def", "ghi"]));
    assert!(!replay.can_replay());
    {
        let shared = lock(&replay.shared);
        assert!(shared.overflowed);
        assert_eq!(shared.buffered, 0);
        assert_eq!(shared.chunks.capacity(), 0, "the buffer was freed");
    }
    drop(first);
    assert!(!replay.can_replay(), "the buffer is gone for good");
    let mut second = replay.clone();
    let got = frames(&mut second).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].contains("outgrew the retry buffer"), "{got:?}");
}

#[tokio::test]
async fn capture_stops_once_the_reading_clone_is_the_last_one() {
    let replay = ReplayBody::new(Frames::new(&["a", "b", "c"], false), 1024);
    let mut last = replay.clone();
    assert_eq!(describe(last.frame().await.unwrap().unwrap()), "a");
    assert_eq!(lock(&last.shared).buffered, 1);
    // The call is over: only the body hyper is still sending remains.
    drop(replay);
    assert_eq!(frames(&mut last).await, strings(&["b", "c"]));
    let shared = lock(&last.shared);
    assert_eq!(shared.buffered, 0);
    assert_eq!(shared.chunks.capacity(), 0, "the buffer was freed");
}

#[tokio::test]
async fn a_body_known_to_exceed_the_limit_is_never_captured() {
    let replay = ReplayBody::new(Frames::new(&["abc", "def"], true), 5);
    assert!(!replay.can_replay(), "its length says it cannot fit");
    let mut first = replay.clone();
    assert_eq!(first.size_hint().exact(), Some(6));
    let frame = first.frame().await.unwrap().unwrap();
    assert_eq!(describe(frame), "abc");
    let shared = lock(&replay.shared);
    assert_eq!(shared.buffered, 0, "not even the first 3 bytes were kept");
    assert!(shared.chunks.is_empty());
}

#[tokio::test]
async fn a_known_length_stays_exact_and_the_end_is_seen_with_the_last_frame() {
    let replay = ReplayBody::new(Frames::new(&["abc", "def"], true), 1024);
    assert_eq!(replay.size_hint().exact(), Some(6));
    let mut first = replay.clone();
    assert_eq!(first.size_hint().exact(), Some(6));
    first.frame().await.unwrap().unwrap();
    assert_eq!(first.size_hint().exact(), Some(3));
    assert!(!first.is_end_stream());
    first.frame().await.unwrap().unwrap();
    // hyper stops polling a body that says it ended: it must say so without another poll.
    assert!(first.is_end_stream());
    assert_eq!(first.size_hint().exact(), Some(0));
    assert!(
        replay.can_replay(),
        "ended, though the first clone is alive"
    );

    // Read partly, dropped: the next clone's hint is still the whole body's.
    let replay = ReplayBody::new(Frames::new(&["abc", "def"], true), 1024);
    let mut first = replay.clone();
    first.frame().await.unwrap().unwrap();
    drop(first);
    let mut second = replay.clone();
    assert_eq!(second.size_hint().exact(), Some(6));
    second.frame().await.unwrap().unwrap();
    assert_eq!(second.size_hint().exact(), Some(3), "replayed 3 of 6");
    second.frame().await.unwrap().unwrap();
    assert!(second.is_end_stream());
}

#[tokio::test]
async fn a_clone_cannot_read_the_rest_while_another_holds_it() {
    let replay = ReplayBody::new(Frames::new(&["a", "b", "c"], false), 1024);
    let mut first = replay.clone();
    first.frame().await.unwrap().unwrap();
    // The first attempt's body is still alive (hyper still sending it).
    assert!(!replay.can_replay());
    let mut second = replay.clone();
    // It replays what it can, then fails instead of panicking or waiting.
    let got = frames(&mut second).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0], "a");
    assert!(got[1].contains("still sending"), "{got:?}");
    // The first clone is unaffected.
    assert_eq!(frames(&mut first).await, strings(&["b", "c"]));
}

#[tokio::test]
async fn an_empty_body_is_at_its_end_from_the_start() {
    let replay = ReplayBody::new(Frames::new(&[], true), 1024);
    assert!(replay.is_end_stream());
    assert_eq!(replay.size_hint().exact(), Some(0));
    assert!(replay.can_replay());
    {
        let shared = lock(&replay.shared);
        assert!(shared.rest.is_none(), "the empty body is not kept");
        assert_eq!(shared.chunks.capacity(), 0);
    }
    let mut clone = replay.clone();
    assert!(clone.is_end_stream());
    assert!(clone.frame().await.is_none());
    assert!(replay.can_replay());
}

#[tokio::test]
async fn a_failed_body_is_not_replayable() {
    struct Failing;
    impl Body for Failing {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(Some(Err("client went away".into())))
        }
    }
    let replay = ReplayBody::new(Failing, 1024);
    let got = frames(&mut replay.clone()).await;
    assert_eq!(got, strings(&["error: client went away"]));
    assert!(!replay.can_replay());
    let got = frames(&mut replay.clone()).await;
    assert!(got[0].contains("reading it failed"), "{got:?}");
}

#[test]
fn the_hyper_error_names_the_reason() {
    for reason in [Reason::Overflowed, Reason::Held, Reason::Failed] {
        let error = hyper::Error::not_replayable(reason);
        let mut cause: Option<&(dyn StdError + 'static)> = Some(&error);
        let mut found = false;
        while let Some(inner) = cause {
            if let Some(e) = inner.downcast_ref::<NotReplayableError>() {
                assert_eq!(e.0, reason);
                found = true;
            }
            if let Some(io) = inner.downcast_ref::<std::io::Error>() {
                if let Some(e) = io
                    .get_ref()
                    .and_then(|e| e.downcast_ref::<NotReplayableError>())
                {
                    assert_eq!(e.0, reason);
                    found = true;
                }
            }
            cause = inner.source();
        }
        assert!(found, "{reason:?}: {error:?}");
    }
}
