//! Recovering where a redirected connection was going (`SO_ORIGINAL_DST`), for IPv4 and IPv6.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

/// From `linux/netfilter_ipv4.h` and `linux/netfilter_ipv6/ip6_tables.h`; the same number
/// at two different socket levels.
const SO_ORIGINAL_DST: libc::c_int = 80;

/// The destination the connection had before iptables `REDIRECT` rewrote it. On a connection
/// that was not redirected the kernel answers with the local address itself (or ENOENT when
/// connection tracking is off), which callers treat as "not redirected".
pub fn original_dst<S: AsRawFd>(sock: &S, local: SocketAddr) -> io::Result<SocketAddr> {
    let fd = sock.as_raw_fd();
    if local.is_ipv4() {
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: `addr` is a valid, writable sockaddr_in and `len` is its size.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IP,
                SO_ORIGINAL_DST,
                &mut addr as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
        Ok(SocketAddr::V4(SocketAddrV4::new(
            ip,
            u16::from_be(addr.sin_port),
        )))
    } else {
        let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        // SAFETY: `addr` is a valid, writable sockaddr_in6 and `len` is its size.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IPV6,
                SO_ORIGINAL_DST,
                &mut addr as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let ip = Ipv6Addr::from(addr.sin6_addr.s6_addr);
        Ok(SocketAddr::V6(SocketAddrV6::new(
            ip,
            u16::from_be(addr.sin6_port),
            0,
            0,
        )))
    }
}
