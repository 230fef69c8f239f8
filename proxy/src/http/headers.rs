//! Hop-by-hop header handling (RFC 9110 §7.6.1): fields that describe one connection are
//! removed before a message is forwarded on another, except what an upgrade needs.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop fields named by the RFCs, plus the non-standard `Proxy-Connection` that old
/// clients still send. `Upgrade` and `TE` are handled by the callers' rules below. A static,
/// not a const: a const would be built (and dropped) at every use.
static HOP_BY_HOP: [HeaderName; 4] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
];

/// True when an HTTP/1.1 request asks to switch protocols (WebSocket and the like).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop fields from a message about to be forwarded.
///
/// `upgrade`: keep `Upgrade` and re-add `Connection: upgrade` (an upgrade handshake is the one
/// hop-by-hop exchange a transparent proxy must pass through). `keep_te_trailers`: keep
/// `TE: trailers`, which HTTP/2 allows and gRPC requires.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool, keep_te_trailers: bool) {
    // Most messages carry none of these fields. One pass over the names tells, where the
    // removals below would look each field up by hash (ten lookups per message, twice per
    // request). Without any of them and without an upgrade, every step below is a no-op.
    if !upgrade && !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // Fields listed in Connection are hop-by-hop too; collect them before removing it.
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        if !(upgrade && name == header::UPGRADE) {
            headers.remove(&name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    let te_trailers = keep_te_trailers
        && headers
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// A field [`strip_hop_by_hop`] may remove or rewrite, whatever `Connection` lists: any field
/// it lists is removed only when `Connection` itself is present.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name == header::TE || name == header::UPGRADE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn removes_standard_and_listed_fields() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Trace-Hop"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("upgrade", "h2c"),
            ("x-trace-hop", "1"),
            ("x-request-id", "abc"),
            ("host", "orders"),
        ]);
        strip_hop_by_hop(&mut h, false, false);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-request-id", "host"]);
    }

    #[test]
    fn an_upgrade_keeps_its_handshake() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(is_upgrade_request(&h));
        strip_hop_by_hop(&mut h, true, false);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["sec-websocket-key"], "k");
    }

    #[test]
    fn te_trailers_survives_only_when_asked() {
        let mut grpc = map(&[("te", "trailers, deflate")]);
        strip_hop_by_hop(&mut grpc, false, true);
        assert_eq!(grpc["te"], "trailers");
        let mut h1 = map(&[("te", "trailers")]);
        strip_hop_by_hop(&mut h1, false, false);
        assert!(!h1.contains_key("te"));
    }

    #[test]
    fn a_message_without_hop_by_hop_fields_is_untouched() {
        let pairs = [
            ("host", "orders"),
            ("x-request-id", "abc"),
            ("content-type", "text/plain"),
            ("x-request-id", "def"),
        ];
        for keep_te_trailers in [false, true] {
            let mut h = map(&pairs);
            strip_hop_by_hop(&mut h, false, keep_te_trailers);
            assert_eq!(h, map(&pairs));
        }
        // One hop-by-hop field is enough to take the full path.
        let mut h = map(&[("host", "orders"), ("keep-alive", "timeout=5")]);
        strip_hop_by_hop(&mut h, false, false);
        assert_eq!(h, map(&[("host", "orders")]));
    }

    #[test]
    fn upgrade_needs_both_fields() {
        assert!(!is_upgrade_request(&map(&[("upgrade", "websocket")])));
        assert!(!is_upgrade_request(&map(&[("connection", "upgrade")])));
        assert!(is_upgrade_request(&map(&[
            ("connection", "keep-alive, upgrade"),
            ("upgrade", "websocket")
        ])));
    }
}
