//! Request heads as a client may send them: parse like the HTTP server does, then run the
//! proxy's own handling of the head (forward-proxy target, upgrade detection, hop-by-hop
//! stripping). Nothing may panic, and no hop-by-hop field may survive stripping.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_proxy::http::forward::request_authority;
use weft_proxy::http::headers::{is_upgrade_request, strip_hop_by_hop};

fuzz_target!(|data: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    if !matches!(parsed.parse(data), Ok(httparse::Status::Complete(_))) {
        return;
    }
    let mut builder = http::Request::builder()
        .method(parsed.method.unwrap_or("GET"))
        .uri(parsed.path.unwrap_or("/"));
    for h in parsed.headers.iter() {
        builder = builder.header(h.name, h.value);
    }
    let Ok(mut req) = builder.body(()) else { return };
    let _ = request_authority(&req);
    let upgrade = is_upgrade_request(req.headers());
    strip_hop_by_hop(req.headers_mut(), upgrade, false);
    for name in ["keep-alive", "proxy-connection", "transfer-encoding", "te"] {
        assert!(!req.headers().contains_key(name), "{name} survived stripping");
    }
    if !upgrade {
        assert!(!req.headers().contains_key("connection"));
        assert!(!req.headers().contains_key("upgrade"));
    }
});
