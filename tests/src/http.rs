//! A tiny blocking HTTP/1.1 client and echo server: just enough protocol to put real requests
//! through the proxy and to read `/metrics`, with nothing a test would have to debug.
//!
//! The server answers every request with a plain-text body naming the app and what it saw
//! (`app=`, `peer=`, `method=`, `path=`), so a test can tell which app answered and whether
//! the connection came through the inbound proxy (peer on loopback) or straight from the
//! network.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

/// Bytes of one head (request or response) we accept before giving up.
const MAX_HEAD: usize = 64 * 1024;
/// An idle keep-alive connection is closed after this long, so server threads don't pile up.
const SERVER_IDLE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Splits `http://host:port/path` into the socket address and the path.
pub fn parse_url(url: &str) -> io::Result<(SocketAddr, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| invalid(format!("not an http:// URL: {url}")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .parse()
        .map_err(|_| invalid(format!("URL needs a literal ip:port, got `{authority}`")))?;
    Ok((addr, path.to_owned()))
}

/// `GET path` on a fresh connection to `addr` with `Connection: close`; every step is bounded
/// by `timeout`.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: weft-test-app\r\nConnection: close\r\n\r\n"
    )?;
    stream.flush()?;
    read_response(&mut BufReader::new(stream))
}

/// Reads one response: status line, headers, and a body framed by `Content-Length`,
/// `Transfer-Encoding: chunked`, or the end of the connection.
pub fn read_response(reader: &mut impl BufRead) -> io::Result<Response> {
    let status_line =
        read_line(reader)?.ok_or_else(|| invalid("connection closed before a response"))?;
    let mut parts = status_line.splitn(3, ' ');
    let (version, status) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if !version.starts_with("HTTP/1.") {
        return Err(invalid(format!("bad status line: {status_line}")));
    }
    let status = status
        .parse()
        .map_err(|_| invalid(format!("bad status line: {status_line}")))?;
    let headers = read_headers(reader)?;
    let body = if header(&headers, "transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        read_chunked(reader)?
    } else if let Some(len) = header(&headers, "content-length") {
        let len: usize = len
            .trim()
            .parse()
            .map_err(|_| invalid(format!("bad content-length {len}")))?;
        read_exact_vec(reader, len)?
    } else {
        let mut body = Vec::new();
        reader.read_to_end(&mut body)?;
        body
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// One CRLF- (or LF-) terminated line without its terminator; `None` at a clean EOF.
fn read_line(reader: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    let n = reader
        .by_ref()
        .take(MAX_HEAD as u64)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(invalid("line too long or truncated"));
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| invalid("head is not UTF-8"))
}

fn read_headers(reader: &mut impl BufRead) -> io::Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?.ok_or_else(|| invalid("connection closed inside a head"))?;
        if line.is_empty() {
            return Ok(headers);
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("bad header line: {line}")))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
        if headers.len() > 200 {
            return Err(invalid("too many headers"));
        }
    }
}

fn read_exact_vec(reader: &mut impl Read, len: usize) -> io::Result<Vec<u8>> {
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    Ok(body)
}

fn read_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line =
            read_line(reader)?.ok_or_else(|| invalid("connection closed inside a chunked body"))?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16)
            .map_err(|_| invalid(format!("bad chunk size `{line}`")))?;
        if size == 0 {
            // Trailers, up to the empty line.
            read_headers(reader)?;
            return Ok(body);
        }
        body.extend(read_exact_vec(reader, size)?);
        if read_line(reader)?.as_deref() != Some("") {
            return Err(invalid("chunk not followed by CRLF"));
        }
    }
}

/// Serves `listener` forever, a thread per connection, answering every request with the echo
/// body described in the module docs.
pub fn serve(listener: TcpListener, app: &str) -> io::Result<()> {
    for stream in listener.incoming() {
        let stream = stream?;
        let app = app.to_owned();
        thread::spawn(move || {
            if let Err(err) = serve_connection(stream, &app) {
                eprintln!("{app}: connection error: {err}");
            }
        });
    }
    Ok(())
}

/// Answers requests on one keep-alive connection until the peer closes or asks to close.
fn serve_connection(stream: TcpStream, app: &str) -> io::Result<()> {
    let peer = stream.peer_addr()?;
    stream.set_read_timeout(Some(SERVER_IDLE))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let Some(request_line) = read_line(&mut reader)? else {
            return Ok(());
        };
        let mut parts = request_line.split(' ');
        let (method, path, version) = match (parts.next(), parts.next(), parts.next()) {
            (Some(m), Some(p), Some(v)) if v.starts_with("HTTP/1.") => {
                (m.to_owned(), p.to_owned(), v.to_owned())
            }
            _ => return Err(invalid(format!("bad request line: {request_line}"))),
        };
        let headers = read_headers(&mut reader)?;
        if header(&headers, "transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
        {
            read_chunked(&mut reader)?;
        } else if let Some(len) = header(&headers, "content-length") {
            let len = len
                .trim()
                .parse()
                .map_err(|_| invalid(format!("bad content-length {len}")))?;
            read_exact_vec(&mut reader, len)?;
        }
        let close = header(&headers, "connection").is_some_and(|c| c.eq_ignore_ascii_case("close"))
            || version == "HTTP/1.0";
        let body = format!("app={app}\npeer={peer}\nmethod={method}\npath={path}\n");
        write!(
            writer,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Weft-Test-App: {app}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" },
        )?;
        writer.flush()?;
        if close {
            return Ok(());
        }
    }
}

/// The `key=value` lines of an echo body.
pub fn echo_field<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    body.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_chunked_and_eof_bodies() {
        let raw = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA";
        let r = read_response(&mut raw.as_bytes()).unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "hello"));

        let raw = "HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: t\r\n\r\n";
        let r = read_response(&mut raw.as_bytes()).unwrap();
        assert_eq!((r.status, r.text().as_str()), (404, "abcde"));

        let raw = "HTTP/1.0 200 OK\nServer: x\n\nuntil eof";
        let r = read_response(&mut raw.as_bytes()).unwrap();
        assert_eq!(
            (r.header("server"), r.text().as_str()),
            (Some("x"), "until eof")
        );

        assert!(read_response(&mut "SSH-2.0-x\r\n\r\n".as_bytes()).is_err());
        assert!(read_response(&mut "".as_bytes()).is_err());
    }

    #[test]
    fn urls() {
        let (addr, path) = parse_url("http://10.1.2.3:8080/a?b=c").unwrap();
        assert_eq!(
            (addr.to_string().as_str(), path.as_str()),
            ("10.1.2.3:8080", "/a?b=c")
        );
        assert_eq!(parse_url("http://[::1]:80").unwrap().1, "/");
        assert!(parse_url("https://x:1/").is_err());
        assert!(parse_url("http://example.com/").is_err());
    }

    #[test]
    fn echo_server_round_trip_with_keep_alive() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || serve(listener, "unit"));

        // Two requests on one connection, then a Connection: close one.
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        for path in ["/one", "/two"] {
            write!(
                stream,
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            )
            .unwrap();
            let r = read_response(&mut reader).unwrap();
            assert_eq!(echo_field(&r.text(), "path"), Some(path));
            assert_eq!(echo_field(&r.text(), "method"), Some("POST"));
        }

        let r = get(addr, "/three", Duration::from_secs(5)).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-weft-test-app"), Some("unit"));
        let text = r.text();
        assert_eq!(echo_field(&text, "app"), Some("unit"));
        assert!(
            echo_field(&text, "peer").unwrap().starts_with("127.0.0.1:"),
            "{text}"
        );
    }
}
