//! Who a "source" is, for the per-source rules of admission (the budget's
//! share and eviction, the guessing protection): an IPv4 address, or an
//! IPv6 /64. One IPv6 host usually owns a whole /64 (SLAAC, a cloud VM's
//! prefix, a home router's LAN), so keying on the full address would let one
//! host be 2^64 sources.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The unit the per-source rules count by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    V4(Ipv4Addr),
    /// The upper 64 bits of the address.
    V6Prefix(u64),
}

impl Source {
    /// The source of `ip`; an IPv4-mapped IPv6 address (a dual-stack
    /// socket's view of an IPv4 peer) is its IPv4 address.
    pub fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(a) => Source::V4(a),
            IpAddr::V6(a) => Source::V6Prefix((u128::from(a) >> 64) as u64),
        }
    }
}

/// `192.0.2.7`, or `2001:db8:1:2::/64`.
impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::V4(a) => a.fmt(f),
            Source::V6Prefix(p) => write!(f, "{}/64", Ipv6Addr::from(u128::from(*p) << 64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_hosts_of_one_64_are_one_source_and_ipv4_is_by_address() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Source::of(a), Source::of(b));
        assert_ne!(Source::of(a), Source::of(c));
        assert_eq!(Source::of(a).to_string(), "2001:db8:1:2::/64");
        let v4: IpAddr = "127.0.0.2".parse().unwrap();
        assert_ne!(Source::of(v4), Source::of("127.0.0.3".parse().unwrap()));
        assert_eq!(Source::of("::ffff:127.0.0.2".parse().unwrap()), Source::of(v4));
        assert_eq!(Source::of(v4).to_string(), "127.0.0.2");
    }
}
