//! The outbound view as per-Service resources: what the push server sends proxies that take
//! deltas (`Hello.outbound_deltas`), prepared once per state change and shared by every
//! subscription.
//!
//! Why this shape. Sending every proxy the whole outbound view on every endpoint change
//! costs the control plane a copy and an encoding of the whole view per proxy (4 ms of CPU
//! per proxy for a 10,000-pod mesh), and every gRPC stream keeps a buffer as large as the
//! largest message it carried, on both ends, for its whole life (~1 MB per stream at 10,000
//! pods: 9 GB of control-plane memory at 10,000 proxies). So:
//!
//! - each Service is encoded **once** per version of it ([`ServicePart`]) and hashed from
//!   that encoding; a Service whose hash did not change keeps the previous version's `Arc`;
//! - the outbound version is a hash of the per-Service hashes in key order (stable across
//!   restarts, like every version);
//! - the **delta** from the previous outbound version (changed and removed Services) is
//!   computed once per change ([`Delta`]); a proxy that holds the previous version gets it,
//!   any other gets the **full sync**;
//! - both are split into messages of at most [`DEFAULT_MAX_CHUNK_BYTES`] of Services, encoded
//!   once as `Services` messages ([`Chunks`]): a subscription sends the same `Bytes` as every
//!   other, and no message is large.

use std::cmp::Ordering;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{self, WireType};
use prost::Message;
use weft_api::proto::discovery::v1 as pb;

use super::hash::{bytes_hash, combine, hex};

/// The most bytes of encoded Services (and removed keys) in one message; a single Service
/// larger than this goes alone in its own.
///
/// Why 16 KiB: gRPC implementations keep, per stream and on both ends, an encode or decode
/// buffer about as large as the largest message the stream carried (tonic's grows by
/// doubling and never shrinks). The control plane has one stream per proxy, so this bound
/// times the number of proxies is what the buffers cost it: 10,000 × ~32 KiB ≈ 320 MB, next
/// to the ~65 KiB each stream costs anyway in TLS and HTTP/2 state. 16 KiB is also HTTP/2's
/// default frame size, so a message is a frame or two. Smaller would only add messages (a
/// frame, a queue slot and a wake-up each): a typical Service (a few endpoints, a route) is
/// well under 1 KiB, one with a hundred endpoints about 8 KiB.
pub const DEFAULT_MAX_CHUNK_BYTES: usize = 16 * 1024;

/// One Service of the outbound view, encoded.
#[derive(Debug)]
pub struct ServicePart {
    pub namespace: String,
    pub name: String,
    /// FNV-1a of `encoded`.
    pub hash: u64,
    /// The `Service` message: what is hashed, and what every proxy is sent.
    pub encoded: Bytes,
}

impl ServicePart {
    pub fn new(service: &pb::Service) -> ServicePart {
        let encoded = Bytes::from(service.encode_to_vec());
        ServicePart {
            namespace: service.namespace.clone(),
            name: service.name.clone(),
            hash: bytes_hash(&encoded),
            encoded,
        }
    }

    /// `namespace/name`, as `Services.removed` names it.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The order of the view: by namespace, then name.
    fn order(&self, other: &ServicePart) -> Ordering {
        (self.namespace.as_str(), self.name.as_str())
            .cmp(&(other.namespace.as_str(), other.name.as_str()))
    }

    pub fn decode(&self) -> Result<pb::Service, prost::DecodeError> {
        pb::Service::decode(self.encoded.clone())
    }
}

/// Encoded `Services` messages that together make one update's outbound part, in order.
pub type Chunks = Vec<Bytes>;

/// What changed from the outbound version before (`base`) to this one.
#[derive(Debug)]
pub struct Delta {
    pub base: u64,
    /// Services added or changed, in the view's order.
    pub upserted: Vec<Arc<ServicePart>>,
    /// Keys of the Services gone.
    pub removed: Vec<String>,
    pub chunks: Chunks,
}

/// The outbound view of one state.
#[derive(Debug)]
pub struct OutboundView {
    /// Every Service, by namespace then name.
    pub services: Vec<Arc<ServicePart>>,
    /// A hash of the per-Service hashes in order: the version of this set.
    pub hash: u64,
    /// From the previous outbound version, when there was one.
    pub delta: Option<Delta>,
    /// The full sync: every Service, split.
    pub full: Chunks,
    /// The whole `Outbound` message, for proxies that don't take deltas.
    pub whole: Bytes,
}

impl OutboundView {
    /// The view of `services` (in the view's order, as the index lists them), with the
    /// delta from `previous`. When nothing changed, `previous` itself is returned, so the
    /// delta that led to it stays available to proxies still one version behind.
    pub fn build(
        services: &[pb::Service],
        previous: Option<&Arc<OutboundView>>,
        max_chunk_bytes: usize,
    ) -> Arc<OutboundView> {
        let mut parts: Vec<Arc<ServicePart>> = services
            .iter()
            .map(|s| Arc::new(ServicePart::new(s)))
            .collect();
        parts.sort_by(|a, b| a.order(b));
        let hash = combine(parts.iter().map(|p| p.hash));
        if let Some(previous) = previous.filter(|p| p.hash == hash) {
            return previous.clone();
        }
        let delta = previous.map(|previous| {
            let (upserted, removed) = diff(&previous.services, &mut parts);
            let chunks = chunks(
                pb::Sync::Delta,
                &hex(previous.hash),
                &hex(hash),
                &upserted,
                &removed,
                max_chunk_bytes,
            );
            Delta {
                base: previous.hash,
                upserted,
                removed,
                chunks,
            }
        });
        let full = chunks(pb::Sync::Full, "", &hex(hash), &parts, &[], max_chunk_bytes);
        let whole = whole(&parts);
        Arc::new(OutboundView {
            services: parts,
            hash,
            delta,
            full,
            whole,
        })
    }

    /// `Services.version` of this set.
    pub fn version(&self) -> String {
        hex(self.hash)
    }

    /// The Services decoded again (tests, debugging).
    pub fn decode(&self) -> Result<Vec<pb::Service>, prost::DecodeError> {
        self.services.iter().map(|s| s.decode()).collect()
    }
}

/// Compares two views in order: what `next` adds or changes, and the keys of what it no
/// longer has. Unchanged Services in `next` are replaced by `previous`'s `Arc`, so versions
/// share them.
fn diff(
    previous: &[Arc<ServicePart>],
    next: &mut [Arc<ServicePart>],
) -> (Vec<Arc<ServicePart>>, Vec<String>) {
    let (mut upserted, mut removed) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < previous.len() || j < next.len() {
        let order = match (previous.get(i), next.get(j)) {
            (Some(old), Some(new)) => old.order(new),
            (Some(_), None) => Ordering::Less,
            (None, _) => Ordering::Greater,
        };
        match order {
            Ordering::Less => {
                removed.push(previous[i].key());
                i += 1;
            }
            Ordering::Greater => {
                upserted.push(next[j].clone());
                j += 1;
            }
            Ordering::Equal => {
                if previous[i].hash == next[j].hash {
                    next[j] = previous[i].clone();
                } else {
                    upserted.push(next[j].clone());
                }
                i += 1;
                j += 1;
            }
        }
    }
    (upserted, removed)
}

/// `Services` field numbers (discovery.proto).
const SYNC: u32 = 1;
const BASE: u32 = 2;
const VERSION: u32 = 3;
const UPSERTED: u32 = 4;
const REMOVED: u32 = 5;

/// Splits an outbound part into `Services` messages of at most `max_bytes` of Services and
/// removed keys each (a larger Service alone in one). Always at least one message: an empty
/// full sync still says "no Services".
pub fn chunks(
    sync: pb::Sync,
    base: &str,
    version: &str,
    upserted: &[Arc<ServicePart>],
    removed: &[String],
    max_bytes: usize,
) -> Chunks {
    let header = |buf: &mut BytesMut| {
        encoding::int32::encode(SYNC, &(sync as i32), buf);
        if !base.is_empty() {
            put_delimited(BASE, base.as_bytes(), buf);
        }
        put_delimited(VERSION, version.as_bytes(), buf);
    };
    let items = upserted
        .iter()
        .map(|s| (UPSERTED, s.encoded.as_ref()))
        .chain(removed.iter().map(|k| (REMOVED, k.as_bytes())));
    let mut out = Vec::new();
    let mut buf = BytesMut::new();
    // Bytes of items in the message being filled; `None` before its header is written.
    let mut filled: Option<usize> = None;
    for (tag, bytes) in items {
        let len = delimited_len(tag, bytes);
        if filled.is_some_and(|filled| filled + len > max_bytes) {
            out.push(buf.split().freeze());
            filled = None;
        }
        let filled = filled.get_or_insert_with(|| {
            header(&mut buf);
            0
        });
        put_delimited(tag, bytes, &mut buf);
        *filled += len;
    }
    if filled.is_none() {
        header(&mut buf);
    }
    out.push(buf.freeze());
    out
}

/// A length-delimited field: a string, bytes, or an embedded message already encoded (the
/// same on the wire).
fn put_delimited(tag: u32, bytes: &[u8], buf: &mut BytesMut) {
    encoding::encode_key(tag, WireType::LengthDelimited, buf);
    encoding::encode_varint(bytes.len() as u64, buf);
    buf.put_slice(bytes);
}

fn delimited_len(tag: u32, bytes: &[u8]) -> usize {
    encoding::key_len(tag) + encoding::encoded_len_varint(bytes.len() as u64) + bytes.len()
}

/// The `Outbound` message with every Service.
fn whole(services: &[Arc<ServicePart>]) -> Bytes {
    const SERVICES: u32 = 1;
    let mut buf = BytesMut::new();
    for service in services {
        put_delimited(SERVICES, &service.encoded, &mut buf);
    }
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, endpoints: usize) -> pb::Service {
        pb::Service {
            namespace: "shop".into(),
            name: name.into(),
            endpoints: (0..endpoints)
                .map(|i| pb::Endpoint {
                    address: format!("10.0.{}.{}", i / 250, i % 250),
                    ready: true,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn decode(chunks: &Chunks) -> Vec<pb::Services> {
        chunks
            .iter()
            .map(|c| pb::Services::decode(c.clone()).expect("decodes"))
            .collect()
    }

    #[test]
    fn chunks_stay_under_the_bound_and_carry_every_service_once() {
        let services: Vec<pb::Service> =
            (0..40).map(|i| service(&format!("s{i:02}"), 20)).collect();
        let view = OutboundView::build(&services, None, 2048);
        let messages = decode(&view.full);
        assert!(messages.len() > 5, "{} messages", messages.len());
        for (chunk, message) in view.full.iter().zip(&messages) {
            let services: usize = message
                .upserted
                .iter()
                .map(|s| encoding::message::encoded_len(UPSERTED, s))
                .sum();
            assert!(services <= 2048, "{services} bytes of Services");
            assert!(chunk.len() <= 2048 + 64, "{} bytes", chunk.len());
            assert_eq!(message.sync, pb::Sync::Full as i32);
            assert_eq!(message.version, view.version());
            assert_eq!(message.base, "");
        }
        let all: Vec<pb::Service> = messages.into_iter().flat_map(|m| m.upserted).collect();
        assert_eq!(all, services);
        assert_eq!(
            pb::Outbound::decode(view.whole.clone())
                .expect("decodes")
                .services,
            services
        );
    }

    #[test]
    fn a_service_over_the_bound_goes_alone_and_an_empty_sync_is_one_message() {
        let services = [service("big", 200), service("small", 1)];
        let view = OutboundView::build(&services, None, 1024);
        let messages = decode(&view.full);
        assert_eq!(
            messages
                .iter()
                .map(|m| m.upserted.len())
                .collect::<Vec<_>>(),
            [1, 1]
        );
        let empty = OutboundView::build(&[], None, 1024);
        let messages = decode(&empty.full);
        assert_eq!(messages.len(), 1);
        assert!(messages[0].upserted.is_empty());
        assert_eq!(messages[0].sync, pb::Sync::Full as i32);
    }
}
