//! Free loopback ports for a scenario.
//!
//! Each port is found by binding `127.0.0.1:0`; all listeners of a batch are held until the
//! batch is complete so the ports are distinct, then released for the children to bind. The
//! window in which another program could take one is tiny on a benchmark machine.

use std::io;
use std::net::{SocketAddr, TcpListener};

pub fn free_ports(n: usize) -> io::Result<Vec<SocketAddr>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()?;
    listeners.iter().map(TcpListener::local_addr).collect()
}
