//! `weft-proxy wait-ready`: blocks until the proxy's admin server answers `/ready` with 200.
//!
//! The injector runs it as the proxy container's `postStart` hook when native sidecars are not
//! available: the kubelet starts a pod's next container only once the hook returns, so the
//! app's containers start after the proxy is ready. It needs no shell or HTTP client in the
//! image: one HTTP/1.0 request over a plain socket, repeated until it succeeds or time is up.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use clap::Args;

use crate::duration::parse_duration;

/// How often `/ready` is asked.
const POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Args)]
pub struct WaitReadyArgs {
    /// The admin server to ask.
    #[arg(
        long,
        env = "WEFT_WAIT_READY_ADMIN_ADDR",
        default_value = "127.0.0.1:15020"
    )]
    pub admin_addr: SocketAddr,

    /// Give up (exit 1) after this long.
    #[arg(long, env = "WEFT_WAIT_READY_TIMEOUT", value_parser = parse_duration, default_value = "120s")]
    pub timeout: Duration,
}

/// Polls until ready; `Err` says what the last attempt saw when time ran out.
pub fn run(args: &WaitReadyArgs) -> Result<(), String> {
    let deadline = Instant::now() + args.timeout;
    loop {
        let last = match ready(args.admin_addr) {
            Ok(true) => return Ok(()),
            Ok(false) => "/ready answered 503".to_owned(),
            Err(error) => error.to_string(),
        };
        if Instant::now() + POLL > deadline {
            return Err(format!(
                "the proxy at {} was not ready within {:?}: {last}",
                args.admin_addr, args.timeout
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// One `GET /ready`: true on a 200 status.
fn ready(addr: SocketAddr) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.set_write_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(b"GET /ready HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    Ok(head.starts_with(b"HTTP/1.") && &head[8..12] == b" 200")
}
