//! Which peers a TURN allocation may relay to.
//!
//! Safe by default: no loopback, private (RFC 1918, IPv6 ULA), link-local, multicast,
//! broadcast, unspecified or documentation addresses, and none of the node's own service
//! ports, unless the operator's allow-list (`--turn-allow-peer CIDR`) covers the address.
//! The node's SFU media address is always allowed: that is where participants behind TURN
//! send their media.

use std::net::{IpAddr, SocketAddr};

/// An address range, e.g. `10.0.0.0/8` or `::1/128`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/PREFIX` (or a bare address: a single host).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{s}`: not an IP address or CIDR range"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: prefix must be 0 to {max}"))?,
            None => max,
        };
        Ok(Cidr { net, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The peer address policy of a TURN server.
#[derive(Clone, Debug, Default)]
pub struct PeerPolicy {
    allow: Vec<Cidr>,
    /// The node's own addresses and service ports (TURN listeners, HTTP, relay range).
    own_ips: Vec<IpAddr>,
    own_ports: Vec<u16>,
    own_port_range: Option<(u16, u16)>,
    /// Always allowed (the SFU's media address).
    always: Vec<SocketAddr>,
}

impl PeerPolicy {
    pub fn new() -> Self {
        Self::default()
    }

    /// Operator allow-list entry: overrides every other rule.
    pub fn allow(mut self, cidr: Cidr) -> Self {
        self.allow.push(cidr);
        self
    }

    /// The node's own addresses; with `ports` and `range`, its service ports on them.
    pub fn own(mut self, ips: &[IpAddr], ports: &[u16], range: Option<(u16, u16)>) -> Self {
        self.own_ips.extend_from_slice(ips);
        self.own_ports.extend_from_slice(ports);
        self.own_port_range = range;
        self
    }

    /// An address always allowed (the SFU media address).
    pub fn always(mut self, addr: SocketAddr) -> Self {
        self.always.push(addr);
        self
    }

    /// True if relaying to `peer` is allowed.
    pub fn permits(&self, peer: SocketAddr) -> bool {
        let ip = canonical(peer.ip());
        if self
            .always
            .iter()
            .any(|a| canonical(a.ip()) == ip && a.port() == peer.port())
        {
            return true;
        }
        if self.allow.iter().any(|c| c.contains(ip)) {
            return true;
        }
        if is_special(ip) {
            return false;
        }
        let own_ip = self.own_ips.iter().any(|o| canonical(*o) == ip);
        let own_port = self.own_ports.contains(&peer.port())
            || self
                .own_port_range
                .is_some_and(|(lo, hi)| (lo..=hi).contains(&peer.port()));
        !(own_ip && own_port)
    }

    /// True if a permission for the whole `ip` may exist (CreatePermission ignores ports):
    /// any port of it could be allowed.
    pub fn permits_ip(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.always.iter().any(|a| canonical(a.ip()) == ip)
            || self.allow.iter().any(|c| c.contains(ip))
            || !is_special(ip)
    }
}

/// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Addresses no TURN server should relay to unless told to.
fn is_special(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_unspecified()
                || v4.is_documentation()
                || o[0] == 0                                // "this network"
                || (o[0] == 100 && (o[1] & 0xC0) == 64)     // CGNAT 100.64/10
                || (o[0] == 198 && (o[1] & 0xFE) == 18)     // benchmarking 198.18/15
                || o[0] >= 240 // reserved
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xFE00) == 0xFC00    // unique local fc00::/7
                || (s[0] & 0xFFC0) == 0xFE80    // link-local fe80::/10
                || (s[0] == 0x2001 && s[1] == 0x0DB8) // documentation
                || (s[0] == 0x0064 && s[1] == 0xFF9B) // NAT64 (would reach v4 privates)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn special_ranges_are_denied_by_default() {
        let p = PeerPolicy::new();
        for denied in [
            "127.0.0.1:5000",
            "10.1.2.3:5000",
            "172.16.0.1:5000",
            "192.168.1.1:5000",
            "169.254.0.1:5000",
            "224.0.0.1:5000",
            "0.0.0.0:5000",
            "255.255.255.255:5000",
            "100.64.0.1:5000",
            "[::1]:5000",
            "[fd00::1]:5000",
            "[fe80::1]:5000",
            "[::ffff:127.0.0.1]:5000",
            "[ff02::1]:5000",
        ] {
            assert!(!p.permits(addr(denied)), "{denied}");
        }
        for allowed in ["8.8.8.8:53", "203.1.1.1:4000", "[2606:4700::1]:443"] {
            assert!(p.permits(addr(allowed)), "{allowed}");
        }
    }

    #[test]
    fn allow_list_overrides_and_own_ports_are_denied() {
        let p = PeerPolicy::new()
            .allow(Cidr::parse("127.0.0.0/8").unwrap())
            .own(
                &["81.2.3.4".parse().unwrap()],
                &[3478, 7880],
                Some((49152, 65535)),
            )
            .always(addr("81.2.3.4:7882"));
        assert!(p.permits(addr("127.0.0.1:9")));
        assert!(!p.permits(addr("81.2.3.4:3478")));
        assert!(!p.permits(addr("81.2.3.4:50000")));
        assert!(p.permits(addr("81.2.3.4:7882")), "the SFU media port");
        assert!(p.permits(addr("81.2.3.4:8000")));
    }

    #[test]
    fn the_sfu_address_is_allowed_even_on_loopback() {
        let p = PeerPolicy::new().always(addr("127.0.0.1:7882"));
        assert!(p.permits(addr("127.0.0.1:7882")));
        assert!(!p.permits(addr("127.0.0.1:7883")));
        assert!(p.permits_ip("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn cidr_parsing() {
        assert!(
            Cidr::parse("10.0.0.0/8")
                .unwrap()
                .contains("10.9.9.9".parse().unwrap())
        );
        assert!(
            !Cidr::parse("10.0.0.0/8")
                .unwrap()
                .contains("11.0.0.1".parse().unwrap())
        );
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
        assert!(
            Cidr::parse("::/0")
                .unwrap()
                .contains("::1".parse().unwrap())
        );
        assert!(
            Cidr::parse("1.2.3.4")
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nonsense").is_err());
    }
}
