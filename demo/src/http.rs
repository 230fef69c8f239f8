//! Just enough HTTP/1.1 for the demo: a client that sends one request on a fresh connection
//! (`Connection: close`, read to the end) — to a sidecar acting as the app's HTTP proxy, or to
//! an admin server — and the request-head reader the demo apps use.

use std::io::{self, BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Responses larger than this are cut off (a proxy's /metrics is a few tens of KiB).
const MAX_RESPONSE: u64 = 4 << 20;

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET target` sent to `addr`. Through an HTTP proxy (what `HTTP_PROXY=http://<addr>` makes
/// a client do) `target` is the absolute URL, `http://orders.shop.svc.cluster.local/...`;
/// to a server itself it is the path.
pub fn get(addr: SocketAddr, target: &str, timeout: Duration) -> io::Result<Response> {
    let host = target
        .strip_prefix("http://")
        .map(|rest| rest.split('/').next().unwrap_or(rest).to_owned())
        .unwrap_or_else(|| addr.to_string());
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: weft-demo\r\n\
         Accept: text/plain\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.take(MAX_RESPONSE).read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

fn parse_response(raw: &[u8]) -> io::Result<Response> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid("no complete response head"))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    }
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| invalid("truncated chunk"))?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| invalid("bad chunk size"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err(invalid("truncated chunk"));
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// One request's head as a server reads it.
pub struct RequestHead {
    pub path: String,
    pub close: bool,
}

/// Reads a request head and discards its body (the demo's requests have none, but a
/// `Content-Length` is honoured so keep-alive stays in step). `None` at a clean end of the
/// connection.
pub fn read_request(reader: &mut impl BufRead) -> io::Result<Option<RequestHead>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let path = line.split(' ').nth(1).unwrap_or("/").to_owned();
    let mut close = line.trim_end().ends_with("HTTP/1.0");
    let mut length = 0u64;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(invalid("connection closed in the request head"));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().map_err(|_| invalid("bad content-length"))?;
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
    }
    io::copy(&mut reader.take(length), &mut io::sink())?;
    Ok(Some(RequestHead { path, close }))
}

/// Writes a complete plain-text response.
pub fn respond(
    out: &mut impl Write,
    status: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    out.write_all(body.as_bytes())?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let plain =
            parse_response(b"HTTP/1.1 403 Forbidden\r\nweft-authz-policy: shop/p\r\n\r\nno")
                .unwrap();
        assert_eq!((plain.status, plain.body.as_str()), (403, "no"));
        assert_eq!(plain.header("Weft-Authz-Policy"), Some("shop/p"));
        let chunked = parse_response(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(chunked.body, "abcde");
    }

    #[test]
    fn reads_request_heads_and_skips_bodies() {
        let mut input: &[u8] =
            b"GET /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyzGET /b HTTP/1.1\r\nConnection: close\r\n\r\n";
        let first = read_request(&mut input).unwrap().unwrap();
        assert_eq!((first.path.as_str(), first.close), ("/a", false));
        let second = read_request(&mut input).unwrap().unwrap();
        assert_eq!((second.path.as_str(), second.close), ("/b", true));
        assert!(read_request(&mut input).unwrap().is_none());
    }
}
