//! Trace context propagation: reading the context a request arrived with and writing the
//! proxy's own span into the request it forwards, in the format the caller used.
//!
//! Formats, in the order they are looked for:
//! - W3C Trace Context: `traceparent: 00-<trace-id>-<parent-id>-<flags>` and `tracestate`,
//!   which is passed on unchanged (the proxy adds no entry of its own);
//! - Zipkin B3 single header: `b3: <trace-id>-<span-id>[-<sampling>[-<parent-id>]]`, or only
//!   a sampling decision (`b3: 0`);
//! - Zipkin B3 multiple headers: `x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid`,
//!   `x-b3-sampled`, `x-b3-flags`.
//!
//! A request that carried the context in more than one format gets every one of them
//! rewritten with the same context (the W3C one when they disagree), so no stale parent is
//! left behind. A request without any starts a trace, written as W3C. A malformed
//! `traceparent` is treated as absent and its `tracestate` dropped, as the W3C spec requires.
//! B3's 64-bit trace ids stay 64-bit on the wire and are zero-padded on the left for OTLP.

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub const B3: HeaderName = HeaderName::from_static("b3");
pub const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

/// The W3C `sampled` trace flag.
const FLAG_SAMPLED: u8 = 0x01;

/// Which formats a request carried its context in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Formats {
    pub w3c: bool,
    pub b3_single: bool,
    pub b3_multi: bool,
}

impl Formats {
    pub fn any(self) -> bool {
        self.w3c || self.b3_single || self.b3_multi
    }
}

/// What a request arrived with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extracted {
    /// The caller's trace and span, when a valid one came.
    pub parent: Option<(TraceId, SpanId)>,
    /// The caller's sampling decision; `None` leaves it to this proxy (B3's "deferred").
    pub sampled: Option<bool>,
    /// B3 debug (`d`, `x-b3-flags: 1`): sample, and say so downstream.
    pub debug: bool,
    /// The trace id was B3's 64-bit form.
    pub short_trace_id: bool,
    /// The formats to write the forwarded context in.
    pub formats: Formats,
}

/// The context the proxy forwards: its own span, in the caller's trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outgoing {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The caller's span (written as B3's parent span id).
    pub parent: Option<SpanId>,
    pub sampled: bool,
    pub debug: bool,
    pub short_trace_id: bool,
}

/// Reads the context a request carries. Cheap when there is none: a few header lookups.
pub fn extract(headers: &HeaderMap) -> Extracted {
    let mut out = Extracted::default();
    if let Some(value) = single(headers, &TRACEPARENT) {
        if let Some((trace, span, flags)) = parse_traceparent(value.as_bytes()) {
            out.parent = Some((trace, span));
            out.sampled = Some(flags & FLAG_SAMPLED != 0);
            out.formats.w3c = true;
        }
    }
    if let Some(value) = single(headers, &B3) {
        if let Some(b3) = parse_b3_single(value.as_bytes()) {
            out.formats.b3_single = true;
            if out.parent.is_none() {
                out.parent = b3.ids.map(|(t, s, _)| (t, s));
                out.short_trace_id = b3.ids.is_some_and(|(_, _, short)| short);
                out.sampled = b3.sampled;
                out.debug = b3.debug;
            }
        }
    }
    if let (Some(trace), Some(span)) = (single(headers, &B3_TRACE_ID), single(headers, &B3_SPAN_ID))
    {
        if let (Some((trace, short)), Some(span)) =
            (trace_id(trace.as_bytes()), span_id(span.as_bytes()))
        {
            out.formats.b3_multi = true;
            if out.parent.is_none() {
                out.parent = Some((trace, span));
                out.short_trace_id = short;
                out.debug = single(headers, &B3_FLAGS).is_some_and(|v| v == "1");
                out.sampled = single(headers, &B3_SAMPLED).and_then(|v| match v.as_bytes() {
                    b"1" | b"true" => Some(true),
                    b"0" | b"false" => Some(false),
                    _ => None,
                });
            }
        }
    }
    out
}

/// The trace id a request carries, if any: for the access log when tracing is off.
pub fn trace_id_of(headers: &HeaderMap) -> Option<TraceId> {
    let found = extract(headers);
    found.parent.map(|(trace, _)| trace)
}

/// Writes `ctx` into the forwarded request's headers, in the formats the caller used (W3C
/// when it used none), replacing what the caller sent.
pub fn inject(headers: &mut HeaderMap, ctx: &Outgoing, formats: Formats) {
    let formats = if formats.any() {
        formats
    } else {
        // A new trace: a tracestate without a valid traceparent means nothing (W3C).
        headers.remove(TRACESTATE);
        Formats {
            w3c: true,
            ..Formats::default()
        }
    };
    if formats.w3c {
        let mut buf = [0u8; 55];
        buf[..3].copy_from_slice(b"00-");
        hex_into(&ctx.trace_id, &mut buf[3..35]);
        buf[35] = b'-';
        hex_into(&ctx.span_id, &mut buf[36..52]);
        buf[52] = b'-';
        hex_into(&[u8::from(ctx.sampled)], &mut buf[53..55]);
        headers.insert(TRACEPARENT, header_value(&buf));
    } else {
        // A tracestate without a valid traceparent means nothing; the W3C spec drops it.
        headers.remove(TRACESTATE);
        headers.remove(TRACEPARENT);
    }
    let trace = trace_hex(ctx);
    let span = hex(&ctx.span_id);
    if formats.b3_single {
        let sampling = match (ctx.debug, ctx.sampled) {
            (true, _) => "d",
            (false, true) => "1",
            (false, false) => "0",
        };
        let value = format!("{trace}-{span}-{sampling}");
        headers.insert(B3, header_value(value.as_bytes()));
    }
    if formats.b3_multi {
        headers.insert(B3_TRACE_ID, header_value(trace.as_bytes()));
        headers.insert(B3_SPAN_ID, header_value(span.as_bytes()));
        match ctx.parent {
            Some(parent) => {
                headers.insert(B3_PARENT_SPAN_ID, header_value(hex(&parent).as_bytes()));
            }
            None => {
                headers.remove(B3_PARENT_SPAN_ID);
            }
        }
        if ctx.debug {
            // Debug implies sampled; B3 says not to send both.
            headers.insert(B3_FLAGS, HeaderValue::from_static("1"));
            headers.remove(B3_SAMPLED);
        } else {
            let sampled = if ctx.sampled { "1" } else { "0" };
            headers.insert(B3_SAMPLED, HeaderValue::from_static(sampled));
        }
    }
}

/// The W3C `traceparent` of version 00, or a later version read as 00 (the spec's forward
/// compatibility rule): lowercase hex, no all-zero ids, version `ff` invalid.
fn parse_traceparent(v: &[u8]) -> Option<(TraceId, SpanId, u8)> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = lower_hex::<1>(&v[0..2])?[0];
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let trace = lower_hex::<16>(&v[3..35]).filter(|t| *t != [0; 16])?;
    let span = lower_hex::<8>(&v[36..52]).filter(|s| *s != [0; 8])?;
    let flags = lower_hex::<1>(&v[53..55])?[0];
    Some((trace, span, flags))
}

struct B3Single {
    ids: Option<(TraceId, SpanId, bool)>,
    sampled: Option<bool>,
    debug: bool,
}

fn parse_b3_single(v: &[u8]) -> Option<B3Single> {
    let sampling = |s: &[u8]| match s {
        b"1" => Some((Some(true), false)),
        b"0" => Some((Some(false), false)),
        b"d" => Some((Some(true), true)),
        _ => None,
    };
    let mut parts = v.split(|b| *b == b'-');
    let first = parts.next()?;
    if let Some((sampled, debug)) = sampling(first) {
        // A decision alone: `b3: 0`.
        return parts.next().is_none().then_some(B3Single {
            ids: None,
            sampled,
            debug,
        });
    }
    let (trace, short) = trace_id(first)?;
    let span = span_id(parts.next()?)?;
    let (sampled, debug) = match parts.next() {
        Some(s) => sampling(s)?,
        None => (None, false),
    };
    if let Some(parent) = parts.next() {
        span_id(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(B3Single {
        ids: Some((trace, span, short)),
        sampled,
        debug,
    })
}

/// A B3 trace id: 16 or 32 hex digits, not all zero. `true` for the 64-bit form.
fn trace_id(v: &[u8]) -> Option<(TraceId, bool)> {
    let id = match v.len() {
        16 => {
            let low = any_hex::<8>(v)?;
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            (id, true)
        }
        32 => (any_hex::<16>(v)?, false),
        _ => return None,
    };
    (id.0 != [0; 16]).then_some(id)
}

fn span_id(v: &[u8]) -> Option<SpanId> {
    (v.len() == 16)
        .then(|| any_hex::<8>(v))
        .flatten()
        .filter(|s| *s != [0; 8])
}

/// The header's value when it appears exactly once.
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut all = headers.get_all(name).iter();
    let first = all.next()?;
    all.next().is_none().then_some(first)
}

fn lower_hex<const N: usize>(v: &[u8]) -> Option<[u8; N]> {
    if v.iter().any(u8::is_ascii_uppercase) {
        return None;
    }
    any_hex(v)
}

fn any_hex<const N: usize>(v: &[u8]) -> Option<[u8; N]> {
    if v.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in v.chunks_exact(2).enumerate() {
        let digit = |b: u8| char::from(b).to_digit(16);
        out[i] = u8::try_from(digit(pair[0])? << 4 | digit(pair[1])?).ok()?;
    }
    Some(out)
}

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
}

/// Lowercase hex, as every format writes ids.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    hex_into(bytes, &mut out);
    // Hex digits are ASCII.
    String::from_utf8(out).unwrap_or_default()
}

fn trace_hex(ctx: &Outgoing) -> String {
    if ctx.short_trace_id {
        hex(&ctx.trace_id[8..])
    } else {
        hex(&ctx.trace_id)
    }
}

fn header_value(bytes: &[u8]) -> HeaderValue {
    // Only hex digits and dashes are ever written.
    HeaderValue::from_bytes(bytes).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn ids() -> (TraceId, SpanId) {
        (
            any_hex(TRACE.as_bytes()).unwrap(),
            any_hex(SPAN.as_bytes()).unwrap(),
        )
    }

    #[test]
    fn reads_w3c_traceparent() {
        let tp = format!("00-{TRACE}-{SPAN}-01");
        let got = extract(&headers(&[("traceparent", &tp)]));
        assert_eq!(got.parent, Some(ids()));
        assert_eq!(got.sampled, Some(true));
        assert!(got.formats.w3c && !got.formats.b3_single && !got.formats.b3_multi);
        let unsampled = extract(&headers(&[(
            "traceparent",
            &format!("00-{TRACE}-{SPAN}-00"),
        )]));
        assert_eq!(unsampled.sampled, Some(false));
        // A later version with more fields is read as version 00.
        let future = format!("01-{TRACE}-{SPAN}-01-whatever");
        assert_eq!(
            extract(&headers(&[("traceparent", &future)])).parent,
            Some(ids())
        );
    }

    #[test]
    fn refuses_malformed_traceparents() {
        for bad in [
            format!("00-{TRACE}-{SPAN}-01-extra"),
            format!("ff-{TRACE}-{SPAN}-01"),
            format!("00-{}-{SPAN}-01", "0".repeat(32)),
            format!("00-{TRACE}-{}-01", "0".repeat(16)),
            format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
            format!("00-{TRACE}-{SPAN}-1"),
            format!("00_{TRACE}-{SPAN}-01"),
            "garbage".to_owned(),
        ] {
            let got = extract(&headers(&[("traceparent", &bad)]));
            assert_eq!(got, Extracted::default(), "{bad}");
        }
        let tp = format!("00-{TRACE}-{SPAN}-01");
        let twice = extract(&headers(&[("traceparent", &tp), ("traceparent", &tp)]));
        assert_eq!(twice.parent, None, "two traceparents are one too many");
    }

    #[test]
    fn reads_b3_single_and_multi() {
        let single = extract(&headers(&[("b3", &format!("{TRACE}-{SPAN}-1-{SPAN}"))]));
        assert_eq!(single.parent, Some(ids()));
        assert_eq!(single.sampled, Some(true));
        assert!(single.formats.b3_single);
        let deferred = extract(&headers(&[("b3", &format!("{TRACE}-{SPAN}"))]));
        assert_eq!(deferred.sampled, None);
        let debug = extract(&headers(&[("b3", &format!("{TRACE}-{SPAN}-d"))]));
        assert!(debug.debug && debug.sampled == Some(true));
        let deny = extract(&headers(&[("b3", "0")]));
        assert_eq!((deny.parent, deny.sampled), (None, Some(false)));
        assert!(deny.formats.b3_single);
        assert!(!extract(&headers(&[("b3", "1-2")])).formats.any());

        let short = &TRACE[16..];
        let multi = extract(&headers(&[
            ("x-b3-traceid", short),
            ("x-b3-spanid", SPAN),
            ("x-b3-sampled", "0"),
        ]));
        let mut padded = [0u8; 16];
        padded[8..].copy_from_slice(&ids().0[8..]);
        assert_eq!(multi.parent, Some((padded, ids().1)));
        assert!(multi.short_trace_id && multi.formats.b3_multi);
        assert_eq!(multi.sampled, Some(false));
        let flagged = extract(&headers(&[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-flags", "1"),
        ]));
        assert!(flagged.debug);
    }

    #[test]
    fn random_header_values_never_panic_or_yield_zero_ids() {
        let mut rng = fastrand::Rng::with_seed(7);
        let alphabet = b"0123456789abcdefABCDEF-dxz";
        let names = [
            "traceparent",
            "b3",
            "x-b3-traceid",
            "x-b3-spanid",
            "x-b3-sampled",
        ];
        for _ in 0..20_000 {
            let mut h = HeaderMap::new();
            for name in names {
                if rng.bool() {
                    let len = rng.usize(0..70);
                    let value: Vec<u8> = (0..len)
                        .map(|_| alphabet[rng.usize(..alphabet.len())])
                        .collect();
                    h.insert(
                        HeaderName::from_static(name),
                        HeaderValue::from_bytes(&value).unwrap(),
                    );
                }
            }
            let found = extract(&h);
            if let Some((trace, span)) = found.parent {
                assert_ne!(trace, [0; 16], "{h:?}");
                assert_ne!(span, [0; 8], "{h:?}");
            }
            let ctx = Outgoing {
                trace_id: [1; 16],
                span_id: [2; 8],
                parent: found.parent.map(|(_, s)| s),
                sampled: found.sampled.unwrap_or(false),
                debug: found.debug,
                short_trace_id: found.short_trace_id,
            };
            inject(&mut h, &ctx, found.formats);
            assert!(
                extract(&h).parent.is_some(),
                "what is written reads back: {h:?}"
            );
        }
    }

    #[test]
    fn writes_back_in_the_formats_that_came() {
        let (trace_id, parent) = ids();
        let ctx = Outgoing {
            trace_id,
            span_id: [1, 2, 3, 4, 5, 6, 7, 8],
            parent: Some(parent),
            sampled: true,
            debug: false,
            short_trace_id: false,
        };
        let w3c = Formats {
            w3c: true,
            ..Formats::default()
        };
        let mut h = headers(&[("tracestate", "vendor=x")]);
        inject(&mut h, &ctx, w3c);
        assert_eq!(h["traceparent"], format!("00-{TRACE}-0102030405060708-01"));
        assert_eq!(h["tracestate"], "vendor=x", "tracestate rides along");
        let mut h = headers(&[("tracestate", "orphan=1")]);
        inject(&mut h, &ctx, Formats::default());
        assert!(
            h.contains_key("traceparent"),
            "a new trace is written as W3C"
        );
        assert!(
            !h.contains_key("tracestate"),
            "without its traceparent it is dropped"
        );

        let mut h = headers(&[("b3", "whatever"), ("tracestate", "stale")]);
        let b3 = Formats {
            b3_single: true,
            ..Formats::default()
        };
        inject(&mut h, &ctx, b3);
        assert_eq!(h["b3"], format!("{TRACE}-0102030405060708-1"));
        assert!(!h.contains_key("traceparent") && !h.contains_key("tracestate"));

        let multi = Formats {
            b3_multi: true,
            ..Formats::default()
        };
        let mut h = HeaderMap::new();
        let short = Outgoing {
            short_trace_id: true,
            sampled: false,
            ..ctx
        };
        inject(&mut h, &short, multi);
        assert_eq!(h["x-b3-traceid"], &TRACE[16..]);
        assert_eq!(h["x-b3-spanid"], "0102030405060708");
        assert_eq!(h["x-b3-parentspanid"], SPAN);
        assert_eq!(h["x-b3-sampled"], "0");
    }
}
