//! Protocol detection from a connection's first bytes.
//!
//! [`classify`] is a pure function over what has arrived so far; [`detect`] reads until it
//! decides, a timeout passes, or the peer stops sending. Detection is conservative in one
//! direction only: anything that is not clearly HTTP is forwarded as opaque bytes, which is
//! always correct, merely without HTTP features.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The HTTP/2 connection preface a prior-knowledge client sends first (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A request line longer than this is not worth waiting for: decide HTTP/1 and let the HTTP
/// server answer 414 or 431 with the limits it enforces.
pub const MAX_DETECT_BYTES: usize = 8 * 1024;
/// No registered HTTP method is longer than 17 bytes; allow custom ones up to 32.
const MAX_METHOD_LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    Opaque,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classification {
    Done(Detected),
    NeedMore,
}

/// Classifies the bytes received so far.
pub fn classify(buf: &[u8]) -> Classification {
    use Classification::*;
    if buf.is_empty() {
        return NeedMore;
    }
    let preface_len = buf.len().min(H2_PREFACE.len());
    if buf[..preface_len] == H2_PREFACE[..preface_len] {
        return if buf.len() >= H2_PREFACE.len() {
            Done(Detected::Http2)
        } else {
            NeedMore
        };
    }
    match request_line(buf) {
        Line::Complete => Done(Detected::Http1),
        Line::Partial if buf.len() >= MAX_DETECT_BYTES => Done(Detected::Http1),
        Line::Partial => NeedMore,
        Line::Invalid => Done(Detected::Opaque),
    }
}

enum Line {
    Complete,
    Partial,
    Invalid,
}

/// Checks `method SP request-target SP HTTP/1.x CRLF` (RFC 9112 §3), accepting a bare LF as
/// RFC 9112 §2.2 allows, and reporting whether what has arrived could still become one.
fn request_line(buf: &[u8]) -> Line {
    let mut rest = buf;
    // method = token
    let method_len = rest.iter().take_while(|b| is_tchar(**b)).count();
    if method_len > MAX_METHOD_LEN {
        return Line::Invalid;
    }
    if method_len == rest.len() {
        return Line::Partial;
    }
    if method_len == 0 || rest[method_len] != b' ' {
        return Line::Invalid;
    }
    rest = &rest[method_len + 1..];
    // request-target: visible ASCII, no spaces
    let target_len = rest.iter().take_while(|b| b.is_ascii_graphic()).count();
    if target_len == rest.len() {
        return Line::Partial;
    }
    if target_len == 0 || rest[target_len] != b' ' {
        return Line::Invalid;
    }
    rest = &rest[target_len + 1..];
    // HTTP-version then line end
    const VERSION: &[u8] = b"HTTP/1.";
    let n = rest.len().min(VERSION.len());
    if rest[..n] != VERSION[..n] {
        return Line::Invalid;
    }
    let Some(&minor) = rest.get(VERSION.len()) else {
        return Line::Partial;
    };
    if !minor.is_ascii_digit() {
        return Line::Invalid;
    }
    match rest.get(VERSION.len() + 1..) {
        None | Some([]) => Line::Partial,
        Some([b'\n', ..]) | Some([b'\r', b'\n', ..]) => Line::Complete,
        Some([b'\r']) => Line::Partial,
        Some(_) => Line::Invalid,
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads from `io` into `buf` until the protocol is known. Falls back to opaque when
/// `timeout` passes with no decision, or when the peer stops sending (EOF): both are what a
/// server-speaks-first or half-closing client looks like. Read errors are returned.
pub async fn detect<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    timeout: Duration,
) -> std::io::Result<Detected> {
    let reading = async {
        loop {
            if let Classification::Done(d) = classify(buf) {
                return Ok(d);
            }
            buf.reserve(1024);
            if io.read_buf(buf).await? == 0 {
                return Ok(Detected::Opaque);
            }
        }
    };
    match tokio::time::timeout(timeout, reading).await {
        Ok(result) => result,
        Err(_elapsed) => Ok(Detected::Opaque),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Classification::*;
    use Detected::*;

    #[test]
    fn http2_preface_wins_over_its_http1_lookalike() {
        assert_eq!(classify(H2_PREFACE), Done(Http2));
        assert_eq!(classify(&H2_PREFACE[..10]), NeedMore);
        let mut with_frames = H2_PREFACE.to_vec();
        with_frames.extend_from_slice(&[0, 0, 0, 4]);
        assert_eq!(classify(&with_frames), Done(Http2));
    }

    #[test]
    fn http1_request_lines() {
        for line in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /orders?id=1 HTTP/1.0\r\nHost: x\r\n",
            b"CONNECT example.com:443 HTTP/1.1\r\n",
            b"OPTIONS * HTTP/1.1\n",
            b"GET http://orders:8080/a HTTP/1.1\r\n",
            b"PURGE-CACHE /x HTTP/1.1\r\n",
        ] {
            assert_eq!(
                classify(line),
                Done(Http1),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn partial_lines_wait_for_more() {
        for partial in [
            &b"G"[..],
            b"GET",
            b"GET ",
            b"GET /a",
            b"GET /a HTTP/",
            b"GET /a HTTP/1.1",
            b"GET /a HTTP/1.1\r",
        ] {
            assert_eq!(
                classify(partial),
                NeedMore,
                "{:?}",
                String::from_utf8_lossy(partial)
            );
        }
    }

    #[test]
    fn everything_else_is_opaque_at_once() {
        for other in [
            &[0x16, 0x03, 0x01, 0x02, 0x00][..], // TLS ClientHello
            b"\x00\x00\x00\x08\x04\xd2\x16\x2f", // Postgres SSLRequest
            b"GET  / HTTP/1.1\r\n",
            b"GET / HTTP/2.0\r\n",
            b"GET / SPDY/3\r\n",
            b"GET / HTTP/1.1 trailing\r\n",
            b"HELO mail.example.com\r\n",
            b"*1\r\n$4\r\nPING\r\n", // Redis
        ] {
            assert_eq!(
                classify(other),
                Done(Opaque),
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn an_endless_request_line_is_left_to_the_http_server() {
        let mut long = b"GET /".to_vec();
        long.resize(MAX_DETECT_BYTES, b'a');
        assert_eq!(classify(&long), Done(Http1));
        assert_eq!(classify(&vec![b'A'; MAX_METHOD_LEN + 1]), Done(Opaque));
    }

    #[tokio::test(start_paused = true)]
    async fn silent_client_falls_back_to_opaque_after_the_timeout() {
        let (mut client, _server) = tokio::io::duplex(64);
        let mut buf = BytesMut::new();
        let started = tokio::time::Instant::now();
        let d = detect(&mut client, &mut buf, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(d, Opaque);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn reads_across_segments_and_keeps_every_byte() {
        use tokio::io::AsyncWriteExt;
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            client.write_all(b"GET /pa").await.unwrap();
            tokio::task::yield_now().await;
            client
                .write_all(b"th HTTP/1.1\r\nHost: a\r\n\r\n")
                .await
                .unwrap();
            client
        });
        let mut buf = BytesMut::new();
        let d = detect(&mut server, &mut buf, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(d, Http1);
        assert!(buf.starts_with(b"GET /path HTTP/1.1\r\n"));
        drop(writer.await);
    }

    #[tokio::test]
    async fn eof_before_a_decision_is_opaque() {
        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        let mut buf = BytesMut::new();
        assert_eq!(
            detect(&mut server, &mut buf, Duration::from_secs(5))
                .await
                .unwrap(),
            Opaque
        );
    }
}
