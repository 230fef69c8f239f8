//! Responses the proxy makes itself when it cannot forward a request. Each carries a short
//! plain-text body saying why and a `weft-proxy-error` header, so a client (and an operator
//! reading its logs) can tell a proxy failure from the application's own error.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::Body;
use crate::connect::ConnectError;
use crate::metrics::ErrorKind;

pub const PROXY_ERROR_HEADER: &str = "weft-proxy-error";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("upstream {target} failed: {source}")]
    Upstream {
        target: String,
        source: hyper::Error,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("request would loop back to this proxy ({0})")]
    Loop(String),
    #[error("cannot resolve {authority}: {reason}")]
    Resolve { authority: String, reason: String },
    #[error("no route of {target} matches the request")]
    NoRoute { target: String },
    #[error("route {route} has no usable backend")]
    NoBackend { route: String },
    #[error("{target} has no ready endpoint")]
    NoEndpoints { target: String },
    #[error("{target}: circuit breaker open ({} limit reached)", .limit.as_str())]
    Overflow {
        target: String,
        limit: crate::traffic::breaker::Overflow,
    },
    #[error("{}", .kind.reason(*.limit))]
    Timeout {
        kind: crate::traffic::policy::TimeoutKind,
        limit: Duration,
    },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Connect(ConnectError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Connect(_) | ProxyError::Upstream { .. } | ProxyError::Resolve { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Loop(_) => StatusCode::LOOP_DETECTED,
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::NoBackend { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::NoEndpoints { .. } | ProxyError::Overflow { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            ProxyError::Connect(e) => e.kind(),
            ProxyError::Upstream { .. } => ErrorKind::UpstreamError,
            ProxyError::BadRequest(_) => ErrorKind::BadRequest,
            ProxyError::Loop(_) | ProxyError::Resolve { .. } => ErrorKind::NoDestination,
            ProxyError::NoRoute { .. } => ErrorKind::NoRoute,
            ProxyError::NoBackend { .. } | ProxyError::NoEndpoints { .. } => ErrorKind::NoEndpoint,
            ProxyError::Overflow { .. } => ErrorKind::Overflow,
            ProxyError::Timeout { .. } => ErrorKind::Timeout,
        }
    }

    /// A bounded label for the header: which failure, not its details.
    fn code(&self) -> &'static str {
        match self {
            ProxyError::Connect(ConnectError::Refused { .. }) => "connect-refused",
            ProxyError::Connect(ConnectError::Timeout { .. }) => "connect-timeout",
            ProxyError::Connect(ConnectError::Io { .. }) => "connect-failed",
            ProxyError::Connect(ConnectError::Tls(_)) => "tls-handshake-failed",
            ProxyError::Connect(ConnectError::NoIdentity { .. }) => "no-identity",
            ProxyError::Upstream { .. } => "upstream-failed",
            ProxyError::BadRequest(_) => "bad-request",
            ProxyError::Loop(_) => "loop",
            ProxyError::Resolve { .. } => "resolve-failed",
            ProxyError::NoRoute { .. } => "no-route",
            ProxyError::NoBackend { .. } => "no-backend",
            ProxyError::NoEndpoints { .. } => "no-endpoints",
            ProxyError::Overflow { limit, .. } => match limit {
                crate::traffic::breaker::Overflow::Requests => "overflow-requests",
                crate::traffic::breaker::Overflow::Pending => "overflow-pending",
                crate::traffic::breaker::Overflow::Connections => "overflow-connections",
            },
            ProxyError::Timeout { kind, .. } => kind.as_str(),
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let body = format!("weft-proxy: {self}\n");
        let mut rsp = Response::new(full(body));
        *rsp.status_mut() = self.status();
        let headers = rsp.headers_mut();
        headers.insert(PROXY_ERROR_HEADER, HeaderValue::from_static(self.code()));
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        rsp
    }
}

pub fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    full(Bytes::new())
}
