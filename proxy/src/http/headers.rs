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

/// What forwarding a request needs to know about its fields, from one pass over their names.
/// A request carries a handful of fields and usually none of these; looking each up would
/// hash its name (five lookups per request where this is one short loop).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RequestFields {
    /// [`is_upgrade_request`].
    pub upgrade: bool,
    pub host: bool,
    /// The field named by the caller's `marker` (the mesh hop's original-protocol marker).
    pub marker: bool,
    /// A field [`strip_hop_by_hop`] removes or rewrites: without one (and without an
    /// upgrade) it has nothing to do.
    pub hop_by_hop: bool,
}

impl RequestFields {
    pub fn scan(headers: &HeaderMap, marker: &HeaderName) -> Self {
        let mut fields = RequestFields::default();
        let (mut has_upgrade, mut has_connection) = (false, false);
        for name in headers.keys() {
            if name == header::HOST {
                fields.host = true;
            } else if is_hop_by_hop(name) {
                fields.hop_by_hop = true;
                has_upgrade |= name == header::UPGRADE;
                has_connection |= name == header::CONNECTION;
            } else if name == marker {
                fields.marker = true;
            }
        }
        fields.upgrade = has_upgrade && has_connection && connection_has(headers, "upgrade");
        fields
    }
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
    remove_hop_by_hop(headers, upgrade, keep_te_trailers);
}

/// [`strip_hop_by_hop`] for a message known to need it ([`RequestFields::hop_by_hop`]).
pub fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool, keep_te_trailers: bool) {
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

    /// One pass tells what the lookups it replaces would.
    #[test]
    fn a_scan_finds_what_lookups_find() {
        let marker = HeaderName::from_static("weft-orig-proto");
        let cases = [
            map(&[]),
            map(&[("host", "orders"), ("x-request-id", "abc")]),
            map(&[("host", "orders"), ("weft-orig-proto", "HTTP/1.1")]),
            map(&[("connection", "Upgrade"), ("upgrade", "websocket")]),
            map(&[("connection", "keep-alive"), ("upgrade", "websocket")]),
            map(&[("upgrade", "websocket"), ("host", "a")]),
            map(&[("connection", "upgrade")]),
            map(&[("te", "trailers")]),
            map(&[("keep-alive", "5"), ("proxy-connection", "x")]),
            map(&[("transfer-encoding", "chunked"), ("x-a", "1"), ("x-b", "2")]),
        ];
        for headers in cases {
            let fields = RequestFields::scan(&headers, &marker);
            let expected = RequestFields {
                upgrade: is_upgrade_request(&headers),
                host: headers.contains_key(header::HOST),
                marker: headers.contains_key(&marker),
                hop_by_hop: headers.keys().any(is_hop_by_hop),
            };
            assert_eq!(fields, expected, "{headers:?}");
            // Without a hop-by-hop field, stripping would change nothing.
            if !fields.hop_by_hop {
                let mut stripped = headers.clone();
                remove_hop_by_hop(&mut stripped, false, false);
                assert_eq!(stripped, headers);
            }
        }
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
