//! A byte-echo TCP server for opaque-traffic tests, optionally speaking first.
//!
//! Per connection: with a banner, the server first sends `<banner> peer=<peer>\n` at once
//! (a server-speaks-first protocol such as MySQL or SMTP); it then echoes every byte it
//! receives, binary included, as it arrives; when the client half-closes it sends
//! `peer=<peer>\n` and closes. `peer` is the address the server saw the connection come from,
//! so a test can tell whether the connection came through the inbound proxy (loopback).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

/// A connection with no bytes either way for this long is closed, so threads don't pile up.
const SERVER_IDLE: Duration = Duration::from_secs(30);

/// The line sent first on every connection when the server has a banner.
pub fn banner_line(banner: &str, peer: &str) -> String {
    format!("{banner} peer={peer}\n")
}

/// The line sent after the client half-closes.
pub fn trailer_line(peer: &str) -> String {
    format!("peer={peer}\n")
}

/// Serves `listener` forever, a thread per connection, as the module docs describe.
pub fn serve_echo(listener: TcpListener, banner: Option<&str>) -> io::Result<()> {
    for stream in listener.incoming() {
        let stream = stream?;
        let banner = banner.map(str::to_owned);
        thread::spawn(move || {
            // Peers that connect and go away (readiness probes) end here with an error.
            let _ = echo_connection(stream, banner.as_deref());
        });
    }
    Ok(())
}

fn echo_connection(mut stream: TcpStream, banner: Option<&str>) -> io::Result<()> {
    let peer = stream.peer_addr()?.to_string();
    stream.set_read_timeout(Some(SERVER_IDLE))?;
    stream.set_write_timeout(Some(SERVER_IDLE))?;
    stream.set_nodelay(true)?;
    if let Some(banner) = banner {
        stream.write_all(banner_line(banner, &peer).as_bytes())?;
    }
    let mut buf = [0; 16 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        stream.write_all(&buf[..n])?;
    }
    stream.write_all(trailer_line(&peer).as_bytes())?;
    stream.shutdown(Shutdown::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_echo_and_trailer() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || serve_echo(listener, Some("hi")));
        let mut client = TcpStream::connect(addr).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let peer = client.local_addr().unwrap().to_string();
        let banner = banner_line("hi", &peer);
        let mut got = vec![0; banner.len()];
        client.read_exact(&mut got).unwrap();
        assert_eq!(got, banner.as_bytes());
        client.write_all(b"\x00\x01hello\n").unwrap();
        let mut got = [0; 8];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"\x00\x01hello\n");
        client.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, trailer_line(&peer).as_bytes());
    }
}
