//! What a denied HTTP request gets instead of the app's answer: 403 with a one-line body, or,
//! for gRPC, a trailers-only response with `grpc-status: 7` (PERMISSION_DENIED), which gRPC
//! clients turn into a status error (a plain 403 would reach them as "UNIMPLEMENTED" or
//! "UNKNOWN"). Both name the deciding policy in `weft-authz-policy`.

use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use crate::http::error::{empty, full};
use crate::http::Body;

/// Names the policy that denied the request (`namespace/name`, or `default`).
pub const POLICY_HEADER: &str = "weft-authz-policy";

/// gRPC's PERMISSION_DENIED.
const GRPC_PERMISSION_DENIED: &str = "7";

pub fn denied(request_headers: &HeaderMap, policy: &str) -> Response<Body> {
    let reason = if policy == "default" {
        "denied by the workload's default authorization policy".to_owned()
    } else {
        format!("denied by authorization policy {policy}")
    };
    let is_grpc = request_headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    let mut rsp = if is_grpc {
        let mut rsp = Response::new(empty());
        let headers = rsp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(
            "grpc-status",
            HeaderValue::from_static(GRPC_PERMISSION_DENIED),
        );
        if let Ok(message) = HeaderValue::from_str(&grpc_percent_encode(&reason)) {
            headers.insert("grpc-message", message);
        }
        rsp
    } else {
        let mut rsp = Response::new(full(format!("weft-proxy: {reason}\n")));
        *rsp.status_mut() = StatusCode::FORBIDDEN;
        rsp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        rsp
    };
    // Policy names are Kubernetes names, always a valid header value.
    if let Ok(value) = HeaderValue::from_str(policy) {
        rsp.headers_mut().insert(POLICY_HEADER, value);
    }
    rsp
}

/// `grpc-message` is percent-encoded: everything outside printable ASCII, and `%` itself.
fn grpc_percent_encode(message: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_gets_403_naming_the_policy() {
        let rsp = denied(&HeaderMap::new(), "shop/deny-web");
        assert_eq!(rsp.status(), StatusCode::FORBIDDEN);
        assert_eq!(rsp.headers()[POLICY_HEADER], "shop/deny-web");
    }

    #[test]
    fn grpc_gets_a_trailers_only_permission_denied() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        let rsp = denied(&headers, "default");
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(rsp.headers()["grpc-status"], "7");
        assert_eq!(rsp.headers()["content-type"], "application/grpc");
        assert_eq!(rsp.headers()[POLICY_HEADER], "default");
        assert_eq!(
            grpc_percent_encode("100% é"),
            "100%25 %C3%A9",
            "percent-encoded as gRPC requires"
        );
    }
}
