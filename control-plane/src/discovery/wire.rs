//! The `Discovery` service as it goes on the wire: [`Push`], a `ViewUpdate` encoded from the
//! parts every subscription shares, and the gRPC plumbing that sends it.
//!
//! Why not the generated `DiscoveryServer`: its stream items are owned `ViewUpdate`s, so
//! each subscription would deep-copy the Services it sends (and tonic encode them again).
//! A `Push` holds `Arc`s and pre-encoded `Bytes` instead (see [`crate::index::services`]);
//! encoding one copies those bytes into the stream's buffer and nothing else. The bytes on
//! the wire are exactly `ViewUpdate`'s: an embedded message and a `bytes` field holding its
//! encoding look the same, and the tests decode pushes as `ViewUpdate`.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};
use prost::Message;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};
use weft_api::proto::discovery::v1 as pb;

use super::DiscoveryService;
use crate::index::Part;

/// One message of the stream to a proxy: a `ViewUpdate`.
#[derive(Debug, Clone, Default)]
pub struct Push {
    pub version: String,
    pub inbound: Option<Arc<Part<pb::Inbound>>>,
    /// An encoded `Outbound` (the whole view, for proxies without deltas).
    pub outbound: Option<Bytes>,
    /// An encoded `Services`: one message's share of a full sync or delta.
    pub services: Option<Bytes>,
    pub more: bool,
}

/// `ViewUpdate` field numbers (discovery.proto).
const VERSION: u32 = 1;
const INBOUND: u32 = 2;
const OUTBOUND: u32 = 3;
const SERVICES: u32 = 4;
const MORE: u32 = 5;

impl Message for Push {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if !self.version.is_empty() {
            encoding::string::encode(VERSION, &self.version, buf);
        }
        if let Some(inbound) = &self.inbound {
            encoding::message::encode(INBOUND, &inbound.message, buf);
        }
        if let Some(outbound) = &self.outbound {
            encoding::bytes::encode(OUTBOUND, outbound, buf);
        }
        if let Some(services) = &self.services {
            encoding::bytes::encode(SERVICES, services, buf);
        }
        if self.more {
            encoding::bool::encode(MORE, &true, buf);
        }
    }

    fn encoded_len(&self) -> usize {
        let version = if self.version.is_empty() {
            0
        } else {
            encoding::string::encoded_len(VERSION, &self.version)
        };
        version
            + self
                .inbound
                .as_ref()
                .map_or(0, |i| encoding::message::encoded_len(INBOUND, &i.message))
            + self
                .outbound
                .as_ref()
                .map_or(0, |o| encoding::bytes::encoded_len(OUTBOUND, o))
            + self
                .services
                .as_ref()
                .map_or(0, |s| encoding::bytes::encoded_len(SERVICES, s))
            + if self.more {
                encoding::bool::encoded_len(MORE, &true)
            } else {
                0
            }
    }

    /// Pushes are only ever encoded (the control plane sends them); decoding one skips
    /// every field.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn clear(&mut self) {
        *self = Push::default();
    }
}

/// Per-stream encode buffers, and when tonic hands what it encoded to HTTP/2.
///
/// tonic encodes a stream's ready messages into one buffer until it holds this much, then
/// hands it on; the buffer keeps its largest size for the life of the stream. With messages
/// bounded by [`crate::index::DEFAULT_MAX_CHUNK_BYTES`], a small threshold keeps that at
/// about one message (tonic's default, 32 KiB, would let a few chunks pile up first).
const BUFFER_BYTES: usize = 4 * 1024;

/// tonic's prost codec, for [`Push`] out and `SubscribeRequest` in.
#[derive(Debug, Clone, Copy, Default)]
pub struct PushCodec;

#[derive(Debug, Clone, Copy, Default)]
pub struct PushEncoder;

#[derive(Debug, Clone, Copy, Default)]
pub struct RequestDecoder;

impl Codec for PushCodec {
    type Encode = Push;
    type Decode = pb::SubscribeRequest;
    type Encoder = PushEncoder;
    type Decoder = RequestDecoder;

    fn encoder(&mut self) -> PushEncoder {
        PushEncoder
    }

    fn decoder(&mut self) -> RequestDecoder {
        RequestDecoder
    }
}

impl Encoder for PushEncoder {
    type Item = Push;
    type Error = Status;

    fn encode(&mut self, item: Push, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // At once, rather than by doubling as the bytes go in: the buffer stays about the
        // size of the largest message instead of up to twice that.
        buf.reserve(item.encoded_len());
        item.encode(buf)
            .map_err(|e| Status::internal(format!("encoding a view update: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(BUFFER_BYTES, BUFFER_BYTES)
    }
}

impl Decoder for RequestDecoder {
    type Item = pb::SubscribeRequest;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        pb::SubscribeRequest::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding a subscribe request: {e}")))
    }
}

/// `weft.discovery.v1.Discovery` on the gRPC server, as the generated server would serve it
/// but streaming [`Push`]es.
#[derive(Clone)]
pub struct DiscoveryServer {
    service: Arc<DiscoveryService>,
}

impl DiscoveryServer {
    pub fn new(service: DiscoveryService) -> Self {
        DiscoveryServer {
            service: Arc::new(service),
        }
    }
}

/// The generated server's name, so both route the same path.
impl NamedService for DiscoveryServer {
    const NAME: &'static str = pb::discovery_server::SERVICE_NAME;
}

const SUBSCRIBE_PATH: &str = "/weft.discovery.v1.Discovery/Subscribe";

struct Subscribe(Arc<DiscoveryService>);

impl StreamingService<pb::SubscribeRequest> for Subscribe {
    type Response = Push;
    type ResponseStream = ReceiverStream<Result<Push, Status>>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<pb::SubscribeRequest>>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.subscribe(request).await })
    }
}

impl<B> Service<http::Request<B>> for DiscoveryServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != SUBSCRIBE_PATH {
            return Box::pin(async {
                let mut response = http::Response::new(tonic::body::Body::default());
                let headers = response.headers_mut();
                headers.insert(
                    Status::GRPC_STATUS,
                    (tonic::Code::Unimplemented as i32).into(),
                );
                headers.insert(
                    http::header::CONTENT_TYPE,
                    tonic::metadata::GRPC_CONTENT_TYPE,
                );
                Ok(response)
            });
        }
        let method = Subscribe(self.service.clone());
        Box::pin(async move { Ok(Grpc::new(PushCodec).streaming(method, request).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::content_hash;

    #[test]
    fn a_push_encodes_as_the_view_update_it_stands_for() {
        let inbound = pb::Inbound {
            namespace: "shop".into(),
            pod: "orders-1".into(),
            mtls_mode: pb::MtlsMode::Strict as i32,
            ..Default::default()
        };
        let service = pb::Service {
            namespace: "shop".into(),
            name: "orders".into(),
            cluster_ips: vec!["10.96.0.10".into()],
            ..Default::default()
        };
        let services = pb::Services {
            sync: pb::Sync::Delta as i32,
            base: "00000000000000aa".into(),
            version: "00000000000000bb".into(),
            upserted: vec![service.clone()],
            removed: vec!["shop/gone".into()],
        };
        let outbound = pb::Outbound {
            services: vec![service],
        };
        let push = Push {
            version: "v1".into(),
            inbound: Some(Arc::new(Part {
                hash: content_hash(&inbound),
                message: inbound.clone(),
            })),
            outbound: Some(outbound.encode_to_vec().into()),
            services: Some(services.encode_to_vec().into()),
            more: true,
        };
        let encoded = push.encode_to_vec();
        assert_eq!(encoded.len(), push.encoded_len());
        let decoded = pb::ViewUpdate::decode(encoded.as_slice()).expect("decodes");
        assert_eq!(
            decoded,
            pb::ViewUpdate {
                version: "v1".into(),
                inbound: Some(inbound),
                outbound: Some(outbound),
                services: Some(services),
                more: true,
            }
        );
        let empty = Push::default();
        assert_eq!(empty.encoded_len(), 0);
        assert_eq!(
            pb::ViewUpdate::decode(empty.encode_to_vec().as_slice()).expect("decodes"),
            pb::ViewUpdate::default()
        );
    }
}
