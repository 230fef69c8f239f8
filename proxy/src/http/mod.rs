//! HTTP proxying: serving a downstream connection ([`server`]), forwarding each request
//! ([`forward`]) over pooled upstream connections ([`pool`]), with request bodies kept for
//! retries ([`replay`]).

pub mod body;
pub mod error;
pub mod forward;
pub mod head_timeout;
pub mod headers;
pub mod pool;
pub mod replay;
pub mod server;

/// The body type every proxied message is converted to: streaming, never buffered whole.
pub type Body = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, hyper::Error>;
