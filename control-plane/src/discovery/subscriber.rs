//! One subscribed proxy: a task that sends the parts of its view that changed and records its
//! acknowledgements, until either side goes away.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};
use weft_api::proto::discovery::v1::{subscribe_request, Hello, SubscribeRequest, ViewUpdate};

use super::registry::Handle;
use crate::index::{version, Views};

pub(super) async fn run(
    hello: Hello,
    mut views: watch::Receiver<Option<Arc<Views>>>,
    mut requests: Streaming<SubscribeRequest>,
    tx: mpsc::Sender<Result<ViewUpdate, Status>>,
    handle: Handle,
) {
    let mut sent: Option<(u64, u64)> = None;
    loop {
        let current = views.borrow_and_update().clone();
        if let Some(current) = current {
            let inbound = current.inbound_for(&hello.namespace, &hello.pod);
            let outbound = current.outbound.clone();
            let (last_in, last_out) = sent.unzip();
            if last_in != Some(inbound.hash) || last_out != Some(outbound.hash) {
                let update = ViewUpdate {
                    version: version(inbound.hash, outbound.hash),
                    inbound: (last_in != Some(inbound.hash)).then(|| inbound.message.clone()),
                    outbound: (last_out != Some(outbound.hash)).then(|| outbound.message.clone()),
                };
                handle.sent(&update);
                // Keep reading acks while a slow proxy takes the update.
                let send = tx.send(Ok(update));
                tokio::pin!(send);
                loop {
                    tokio::select! {
                        result = &mut send => match result {
                            Ok(()) => break,
                            Err(_) => return,
                        },
                        ended = next_ack(&mut requests, &handle) => if ended { return },
                    }
                }
                sent = Some((inbound.hash, outbound.hash));
            }
        }
        tokio::select! {
            changed = views.changed() => if changed.is_err() { return },
            ended = next_ack(&mut requests, &handle) => if ended { return },
            _ = tx.closed() => return,
        }
    }
}

/// Reads one message from the proxy; returns whether the stream has ended.
async fn next_ack(requests: &mut Streaming<SubscribeRequest>, handle: &Handle) -> bool {
    match requests.message().await {
        Ok(Some(SubscribeRequest {
            kind: Some(subscribe_request::Kind::Ack(ack)),
        })) => {
            handle.acked(&ack);
            false
        }
        Ok(Some(_)) => {
            tracing::debug!(workload = %handle.workload(), "ignoring an unexpected message");
            false
        }
        Ok(None) => true,
        Err(status) => {
            tracing::debug!(workload = %handle.workload(), %status, "subscription stream failed");
            true
        }
    }
}
