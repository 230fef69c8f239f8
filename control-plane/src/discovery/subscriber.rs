//! One subscribed proxy: a task that sends the parts of its view that changed and records its
//! acknowledgements, until either side goes away.
//!
//! The inbound part is sent whole whenever its hash changes, for a pod the index knows as for
//! one it does not (yet): [`PodInbound`] keeps the latter's view from one wake-up to the next
//! rather than building it on each. The outbound part depends on what the proxy said in its
//! Hello and has been sent since: see [`Outbound`].

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};
use weft_api::proto::discovery::v1::{subscribe_request, Hello, SubscribeRequest};

use super::registry::{Handle, Sent, Sync};
use super::wire::Push;
use crate::index::{parse_hex, version, OutboundView, PodInbound, Views};

/// What this stream's proxy holds of the outbound view, as the control plane tracks it.
///
/// The stream is ordered and the proxy applies what it reads in order, so "what was sent" is
/// what the proxy holds or will hold once it has read the stream: deltas can be computed
/// against it without waiting for acks. Where that breaks (the proxy rejected an update, so
/// it still holds an older set) the next delta names a base the proxy doesn't hold; the
/// proxy rejects it asking for a full sync (`Ack.full_sync`), and the state goes back to
/// [`Outbound::Unsynced`]. A rejection alone changes nothing here: the proxy keeps its last
/// good view, and re-sending the same content would only be rejected again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outbound {
    /// A proxy that doesn't take deltas (`Hello.outbound_deltas` unset): the whole view,
    /// whenever its hash differs from the last one sent (`None`: nothing sent yet).
    Whole(Option<u64>),
    /// Holds (or will) the set with this hash. The next outbound version goes as its shared
    /// delta when that delta's base is this hash, else as a full sync.
    Synced(u64),
    /// Holds no set to build on: new, reconnected with a version this control plane
    /// doesn't know, or asked for a full sync. The next update carries a full sync.
    Unsynced,
}

impl Outbound {
    fn from_hello(hello: &Hello) -> Outbound {
        if !hello.outbound_deltas {
            return Outbound::Whole(None);
        }
        // An unknown version is harmless: no delta has it as its base, so a full sync follows.
        match parse_hex(&hello.services_version) {
            Some(hash) => Outbound::Synced(hash),
            None => Outbound::Unsynced,
        }
    }

    /// What to send for `view`, and the state once sent.
    fn next(self, view: &OutboundView) -> (Sending, Outbound) {
        match self {
            Outbound::Whole(Some(sent)) if sent == view.hash => (Sending::Nothing, self),
            Outbound::Whole(_) => (Sending::Whole, Outbound::Whole(Some(view.hash))),
            Outbound::Synced(held) if held == view.hash => (Sending::Nothing, self),
            Outbound::Synced(held) if view.delta.as_ref().is_some_and(|d| d.base == held) => {
                (Sending::Delta, Outbound::Synced(view.hash))
            }
            Outbound::Synced(_) | Outbound::Unsynced => {
                (Sending::Full, Outbound::Synced(view.hash))
            }
        }
    }
}

/// The outbound part of one update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sending {
    Nothing,
    Whole,
    Delta,
    Full,
}

/// Where the proxy's messages come from: the gRPC stream, or a test's channel.
pub(super) trait Requests: Send {
    fn next(&mut self) -> impl Future<Output = Result<Option<SubscribeRequest>, Status>> + Send;
}

impl Requests for Streaming<SubscribeRequest> {
    async fn next(&mut self) -> Result<Option<SubscribeRequest>, Status> {
        self.message().await
    }
}

/// What a message from the proxy meant.
enum Heard {
    Nothing,
    /// It rejected this version and asked for a full sync.
    FullSync(String),
    Ended,
}

pub(super) async fn run(
    hello: Hello,
    mut views: watch::Receiver<Option<Arc<Views>>>,
    mut requests: impl Requests,
    tx: mpsc::Sender<Result<Push, Status>>,
    handle: Handle,
) {
    let mut pod_inbound = PodInbound::new(&hello.namespace, &hello.pod);
    let mut inbound_sent: Option<u64> = None;
    let mut outbound = Outbound::from_hello(&hello);
    // The version of the last full sync: a request for a full sync that rejected that one
    // is not answered with the same again (see `full_sync_asked`).
    let mut last_full: Option<String> = None;
    loop {
        let current = views.borrow_and_update().clone();
        if let Some(current) = current {
            let inbound = pod_inbound.current(&current);
            let (send, next) = outbound.next(&current.outbound);
            let with_inbound = inbound_sent != Some(inbound.hash);
            if with_inbound || send != Sending::Nothing {
                let version = version(inbound.hash, current.outbound.hash);
                handle.sent(&Sent {
                    version: &version,
                    inbound: with_inbound,
                    outbound: match send {
                        Sending::Nothing => None,
                        Sending::Whole => Some(Sync::Whole),
                        Sending::Delta => Some(Sync::Delta),
                        Sending::Full => Some(Sync::Full),
                    },
                });
                let chunks = match send {
                    Sending::Delta => current.outbound.delta.as_ref().map(|d| &d.chunks[..]),
                    Sending::Full => Some(&current.outbound.full[..]),
                    Sending::Nothing | Sending::Whole => None,
                }
                .unwrap_or_default();
                // One message per chunk (the Arc'd bytes every subscription sends), the
                // inbound part in the first; one message when there are no chunks.
                let mut pushes: Vec<Push> = chunks
                    .iter()
                    .enumerate()
                    .map(|(i, chunk)| Push {
                        version: version.clone(),
                        services: Some(chunk.clone()),
                        more: i + 1 < chunks.len(),
                        ..Push::default()
                    })
                    .collect();
                if pushes.is_empty() {
                    pushes.push(Push {
                        version: version.clone(),
                        ..Push::default()
                    });
                }
                pushes[0].inbound = with_inbound.then(|| inbound.clone());
                if send == Sending::Whole {
                    pushes[0].outbound = Some(current.outbound.whole.clone());
                }
                let mut asked = None;
                for push in pushes {
                    match send_reading_acks(&tx, push, &mut requests, &handle).await {
                        Heard::Ended => return,
                        Heard::FullSync(rejected) => asked = Some(rejected),
                        Heard::Nothing => {}
                    }
                }
                inbound_sent = Some(inbound.hash);
                outbound = next;
                if send == Sending::Full {
                    last_full = Some(version);
                }
                if let Some(rejected) = asked {
                    let last_full = last_full.as_deref();
                    if full_sync_asked(&mut outbound, &rejected, last_full, &handle) {
                        inbound_sent = None;
                        continue;
                    }
                }
            }
        }
        tokio::select! {
            changed = views.changed() => if changed.is_err() { return },
            heard = next_ack(&mut requests, &handle) => match heard {
                Heard::Ended => return,
                Heard::FullSync(rejected) => {
                    if full_sync_asked(&mut outbound, &rejected, last_full.as_deref(), &handle) {
                        inbound_sent = None;
                    }
                }
                Heard::Nothing => {}
            },
            _ = tx.closed() => return,
        }
    }
}

/// The proxy rejected update `rejected` and asked for a full sync: the state goes back to
/// unsynced (returns whether it did), and the caller sends the inbound part again too (the
/// rejected update may have carried a change to it; the answer carries both parts, as a
/// stream's first update does). Not when `rejected` was itself the last full sync:
/// sending the same messages again would be rejected the same way, in a loop. The proxy
/// then keeps its last good view until the outbound view changes (its delta won't fit, so
/// that proxy asks again and gets the new full sync).
fn full_sync_asked(
    outbound: &mut Outbound,
    rejected: &str,
    last_full: Option<&str>,
    handle: &Handle,
) -> bool {
    if !matches!(outbound, Outbound::Synced(_)) {
        return false;
    }
    if last_full == Some(rejected) {
        tracing::warn!(workload = %handle.workload(), version = rejected,
            "proxy rejected a full sync and asked for another; not repeating it");
        return false;
    }
    *outbound = Outbound::Unsynced;
    true
}

/// Queues `push`, reading the proxy's acks meanwhile (a slow proxy takes a while to make
/// room, and its acks must not pile up). Returns what was heard, the last request for a
/// full sync taking precedence.
async fn send_reading_acks(
    tx: &mpsc::Sender<Result<Push, Status>>,
    push: Push,
    requests: &mut impl Requests,
    handle: &Handle,
) -> Heard {
    let send = tx.send(Ok(push));
    tokio::pin!(send);
    let mut heard = Heard::Nothing;
    loop {
        tokio::select! {
            result = &mut send => return match result {
                Ok(()) => heard,
                Err(_) => Heard::Ended,
            },
            next = next_ack(requests, handle) => match next {
                Heard::Ended => return Heard::Ended,
                Heard::FullSync(rejected) => heard = Heard::FullSync(rejected),
                Heard::Nothing => {}
            },
        }
    }
}

/// Reads one message from the proxy.
async fn next_ack(requests: &mut impl Requests, handle: &Handle) -> Heard {
    match requests.next().await {
        Ok(Some(SubscribeRequest {
            kind: Some(subscribe_request::Kind::Ack(ack)),
        })) => {
            handle.acked(&ack);
            if ack.full_sync && !ack.error.is_empty() {
                Heard::FullSync(ack.version)
            } else {
                Heard::Nothing
            }
        }
        Ok(Some(_)) => {
            tracing::debug!(workload = %handle.workload(), "ignoring an unexpected message");
            Heard::Nothing
        }
        Ok(None) => Heard::Ended,
        Err(status) => {
            tracing::debug!(workload = %handle.workload(), %status, "subscription stream failed");
            Heard::Ended
        }
    }
}
