//! The comma-separated values `weft-proxy init` accepts: port lists and IPv4/IPv6 CIDR lists.
//!
//! Each flag value is parsed as a whole string rather than with clap's `value_delimiter`,
//! because injectors template these flags and environment variables: an empty value
//! (`--skip-inbound-ports=` or `WEFT_INIT_SKIP_INBOUND_PORTS=`) must mean "none", and a
//! trailing comma must not fail a pod's start.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Why a port list or CIDR list was rejected. Every variant names the offending item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error("invalid port `{0}`: expected a number from 1 to 65535")]
    Port(String),
    #[error("invalid CIDR `{0}`: expected an IPv4 or IPv6 address with an optional /prefix (e.g. 10.0.0.0/8, fd00::/8)")]
    CidrSyntax(String),
    #[error("invalid CIDR `{cidr}`: prefix length {prefix} is longer than {max} bits")]
    CidrPrefix { cidr: String, prefix: u32, max: u8 },
}

/// Splits a comma-separated value into trimmed, non-empty items.
fn items(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|item| !item.is_empty())
}

/// A comma-separated list of TCP ports, e.g. `8080,9090`. Port 0 is rejected: iptables would
/// accept it, but it can never match a real connection, so it is always a typo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortList(pub Vec<u16>);

impl FromStr for PortList {
    type Err = ListError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        items(s)
            .map(|item| match item.parse::<u16>() {
                Ok(port) if port != 0 => Ok(port),
                _ => Err(ListError::Port(item.to_owned())),
            })
            .collect::<Result<_, _>>()
            .map(PortList)
    }
}

/// A network in CIDR notation. The address is masked to its network address, as iptables
/// would do, so `10.1.2.3/8` is kept as `10.0.0.0/8`; a bare address means a single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, ListError> {
        let max = max_prefix(addr);
        if prefix > max {
            return Err(ListError::CidrPrefix {
                cidr: format!("{addr}/{prefix}"),
                prefix: u32::from(prefix),
                max,
            });
        }
        Ok(Cidr {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((bits & mask).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((bits & mask).into())
        }
    }
}

impl FromStr for Cidr {
    type Err = ListError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || ListError::CidrSyntax(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
        let max = max_prefix(addr);
        let prefix = match prefix {
            // Digits only: `u32::from_str` would accept a leading `+`.
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u32>().unwrap_or(u32::MAX)
            }
            Some(_) => return Err(syntax()),
            None => u32::from(max),
        };
        match u8::try_from(prefix) {
            Ok(prefix) if prefix <= max => Cidr::new(addr, prefix),
            _ => Err(ListError::CidrPrefix {
                cidr: s.to_owned(),
                prefix,
                max,
            }),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A comma-separated list of CIDRs, IPv4 and IPv6 mixed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrList(pub Vec<Cidr>);

impl FromStr for CidrList {
    type Err = ListError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        items(s)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(CidrList)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_lists_tolerate_empty_and_trailing_commas() {
        assert_eq!("".parse::<PortList>().unwrap().0, Vec::<u16>::new());
        assert_eq!(" 80, 443 ,".parse::<PortList>().unwrap().0, vec![80, 443]);
    }

    #[test]
    fn bad_ports_are_named() {
        for bad in ["0", "65536", "http", "-1", "80-90"] {
            let err = format!("80,{bad}").parse::<PortList>().unwrap_err();
            assert_eq!(err, ListError::Port(bad.to_owned()));
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn cidrs_parse_and_normalise() {
        let list: CidrList = "10.1.2.3/8, 192.168.0.1 ,fd00::1/8,::1".parse().unwrap();
        let shown: Vec<String> = list.0.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["10.0.0.0/8", "192.168.0.1/32", "fd00::/8", "::1/128"]
        );
        assert!(list.0[0].is_ipv4());
        assert!(!list.0[2].is_ipv4());
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().prefix(), 0);
        assert_eq!("::/0".parse::<Cidr>().unwrap().to_string(), "::/0");
    }

    #[test]
    fn bad_cidrs_are_clear_errors() {
        for bad in [
            "10.0.0.0/",
            "10.0.0/8",
            "10.0.0.0/+8",
            "10.0.0.0/8/9",
            "example.com/8",
            "fd00::/x",
        ] {
            let err = bad.parse::<Cidr>().unwrap_err();
            assert_eq!(err, ListError::CidrSyntax(bad.to_owned()), "{bad}");
        }
        let err = "10.0.0.0/33".parse::<Cidr>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid CIDR `10.0.0.0/33`: prefix length 33 is longer than 32 bits"
        );
        let err = "10.0.0.0/4294967296".parse::<Cidr>().unwrap_err();
        assert!(err.to_string().contains("longer than 32 bits"), "{err}");
        let err = "fd00::/129".parse::<CidrList>().unwrap_err();
        assert!(err.to_string().contains("longer than 128 bits"), "{err}");
    }
}
