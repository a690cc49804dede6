//! Which peers a TURN allocation may relay to.
//!
//! Safe by default: no loopback, private (RFC 1918, IPv6 ULA), link-local, multicast,
//! broadcast, unspecified or documentation addresses, and none of the node's own service
//! ports, unless the operator's allow-list (`--turn-allow-peer CIDR`) covers the address.
//! The node's SFU media address is always allowed: that is where participants behind TURN
//! send their media.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

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
    ///
    /// An IPv6 address that carries an IPv4 address a translator or tunnel would deliver to
    /// (NAT64, 6to4, Teredo, IPv4-compatible, SIIT) is judged as that IPv4 address too: it
    /// is refused if either form is (RFC 8656 §17; coturn's CVE-2020-26262 was a loopback
    /// bypass of this kind). The allow-list is matched against the address as given and its
    /// IPv4-mapped form; to relay through a translator, name its IPv6 range.
    pub fn permits(&self, peer: SocketAddr) -> bool {
        let ip = canonical(peer.ip());
        if self
            .always
            .iter()
            .any(|a| canonical(a.ip()) == ip && a.port() == peer.port())
        {
            return true;
        }
        if self.allowed(peer.ip()) {
            return true;
        }
        match judge(ip) {
            Judgement::Denied => false,
            Judgement::Plain => !self.own_service(ip, peer.port()),
            Judgement::Embeds(v4, port) => {
                !self.own_service(ip, peer.port())
                    && !self.own_service(IpAddr::V4(v4), port.unwrap_or(peer.port()))
            }
        }
    }

    /// True if a permission for the whole `ip` may exist (CreatePermission ignores ports):
    /// any port of it could be allowed.
    pub fn permits_ip(&self, ip: IpAddr) -> bool {
        let canon = canonical(ip);
        self.always.iter().any(|a| canonical(a.ip()) == canon)
            || self.allowed(ip)
            || !matches!(judge(canon), Judgement::Denied)
    }

    /// The addresses always allowed (the SFU media address).
    pub fn always_allowed(&self) -> &[SocketAddr] {
        &self.always
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        let canon = canonical(ip);
        self.allow
            .iter()
            .any(|c| c.contains(ip) || c.contains(canon))
    }

    /// One of the node's own service ports on one of its own addresses.
    fn own_service(&self, ip: IpAddr, port: u16) -> bool {
        let own_ip = self.own_ips.iter().any(|o| canonical(*o) == ip);
        let own_port = self.own_ports.contains(&port)
            || self
                .own_port_range
                .is_some_and(|(lo, hi)| (lo..=hi).contains(&port));
        own_ip && own_port
    }
}

/// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// How the default policy sees an address (after [`canonical`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Judgement {
    /// Never relayed to unless allow-listed.
    Denied,
    /// An ordinary public address.
    Plain,
    /// A public IPv6 address that reaches this public IPv4 address (through a NAT64, 6to4
    /// or Teredo relay), on this port if the form carries one (Teredo).
    Embeds(Ipv4Addr, Option<u16>),
}

fn judge(ip: IpAddr) -> Judgement {
    match ip {
        IpAddr::V4(v4) => {
            if is_special_v4(v4) {
                Judgement::Denied
            } else {
                Judgement::Plain
            }
        }
        IpAddr::V6(v6) => judge_v6(v6),
    }
}

/// IPv4 addresses no TURN server should relay to unless told to.
fn is_special_v4(v4: Ipv4Addr) -> bool {
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
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)  // IETF protocol assignments 192.0.0/24
        || (o[0] == 192 && o[1] == 88 && o[2] == 99) // 6to4 relay anycast (deprecated)
        || (o[0] == 198 && (o[1] & 0xFE) == 18)     // benchmarking 198.18/15
        || o[0] >= 240 // reserved
}

fn judge_v6(v6: Ipv6Addr) -> Judgement {
    let s = v6.segments();
    let low_v4 = || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    let embedded = |v4: Ipv4Addr, port: Option<u16>| {
        if is_special_v4(v4) {
            Judgement::Denied
        } else {
            Judgement::Embeds(v4, port)
        }
    };
    if v6.is_loopback()
        || v6.is_unspecified()
        || v6.is_multicast()
        || (s[0] & 0xFE00) == 0xFC00                  // unique local fc00::/7
        || (s[0] & 0xFFC0) == 0xFE80                  // link-local fe80::/10
        || (s[0] & 0xFFC0) == 0xFEC0                  // site-local fec0::/10 (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0DB8)         // documentation 2001:db8::/32
        || (s[0] & 0xFFF0) == 0x3FF0                  // documentation 3fff::/20
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0])   // discard-only 100::/64
        || (s[0] == 0x2001 && s[1] < 0x0200 && s[1] != 0) // IETF protocol assignments 2001::/23 (Teredo aside)
        || s[0] == 0x5F00
    // SRv6 SIDs 5f00::/16
    {
        return Judgement::Denied;
    }
    // ::/96: IPv4-compatible (deprecated by RFC 4291): nothing legitimate lives there.
    if s[..6] == [0, 0, 0, 0, 0, 0] {
        return Judgement::Denied;
    }
    // ::ffff:0:a.b.c.d (SIIT, RFC 2765): a translator delivers to a.b.c.d.
    if s[..6] == [0, 0, 0, 0, 0xFFFF, 0] {
        return embedded(low_v4(), None);
    }
    if s[0] == 0x0064 && s[1] == 0xFF9B {
        // NAT64 well-known prefix 64:ff9b::/96 (RFC 6052): the low 32 bits. The rest of
        // 64:ff9b::/32, local-use 64:ff9b:1::/48 (RFC 8215) included, embeds addresses in
        // positions we cannot know: refused.
        if s[2..6] == [0, 0, 0, 0] {
            return embedded(low_v4(), None);
        }
        return Judgement::Denied;
    }
    if s[0] == 0x2002 {
        // 6to4 (RFC 3056): 2002:AABB:CCDD::/48 reaches A.B.C.D.
        let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        return embedded(v4, None);
    }
    if s[0] == 0x2001 && s[1] == 0 {
        // Teredo (RFC 4380): the server's IPv4 in bits 32-63, the client's mapped port and
        // IPv4 obfuscated (inverted) in the low 48 bits. Both must be acceptable.
        let server = Ipv4Addr::new((s[2] >> 8) as u8, s[2] as u8, (s[3] >> 8) as u8, s[3] as u8);
        if is_special_v4(server) {
            return Judgement::Denied;
        }
        let client = Ipv4Addr::from(!u32::from(low_v4()));
        return embedded(client, Some(!s[5]));
    }
    Judgement::Plain
}

/// IPv6 forms that reach a denied IPv4 address (or nowhere legitimate) through a
/// translator, a tunnel or a dual-stack socket: each refused like its IPv4 form.
#[cfg(test)]
pub(crate) const BYPASS_FORMS: &[&str] = &[
    "0.0.0.0",
    "::",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:0:127.0.0.1",
    "64:ff9b::7f00:1",
    "64:ff9b::a00:1",
    "64:ff9b::c0a8:101",
    "64:ff9b:1::808:808",
    "64:ff9b:1:2::a00:1",
    "2002:7f00:1::1",
    "2002:a00:1::1",
    "2002:a9fe:101::1",
    "::127.0.0.1",
    "::10.0.0.1",
    "::8.8.8.8",
    "2001:0:4136:e378:8000:63bf:80ff:fffe",
    "2001:0:4136:e378:8000:63bf:f5ff:fffe",
    "2001:0:a00:1:8000:63bf:f7f7:f7f7",
    "ff0e::1",
    "ff02::1",
    "224.0.0.1",
    "239.255.255.250",
    "255.255.255.255",
    "169.254.169.254",
    "fe80::1",
    "fec0::1",
    "fd12:3456::1",
    "fc00::1",
    "2001:db8::1",
    "3fff::1",
    "192.0.2.1",
    "198.51.100.1",
    "203.0.113.1",
    "192.0.0.8",
    "100::1",
];

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
    fn bypass_forms_are_refused_like_their_ipv4_form() {
        let p = PeerPolicy::new();
        for form in BYPASS_FORMS {
            let ip: IpAddr = form.parse().unwrap();
            assert!(!p.permits(SocketAddr::new(ip, 5000)), "permits {form}");
            assert!(!p.permits_ip(ip), "permits_ip {form}");
        }
        // The same forms around public IPv4 addresses are relayed.
        for public in [
            "64:ff9b::808:808",
            "2002:808:808::1",
            "::ffff:8.8.8.8",
            // Teredo: server 65.54.227.120, client 8.8.8.8 (inverted f7f7:f7f7).
            "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
        ] {
            let ip: IpAddr = public.parse().unwrap();
            assert!(p.permits(SocketAddr::new(ip, 5000)), "{public}");
            assert!(p.permits_ip(ip), "{public}");
        }
    }

    #[test]
    fn the_allow_list_names_a_form_and_embedded_own_ports_are_denied() {
        // Allow-listing 10/8 covers its IPv4-mapped form (the same address) but not a
        // translator's range: that must be named itself.
        let p = PeerPolicy::new().allow(Cidr::parse("10.0.0.0/8").unwrap());
        assert!(p.permits(addr("[::ffff:10.0.0.1]:5000")));
        assert!(!p.permits(addr("[64:ff9b::a00:1]:5000")));
        let p = p.allow(Cidr::parse("64:ff9b::/96").unwrap());
        assert!(p.permits(addr("[64:ff9b::a00:1]:5000")));
        assert!(p.permits_ip("64:ff9b::7f00:1".parse().unwrap()));
        // The node's own service ports, reached through an embedding form.
        let p = PeerPolicy::new().own(&["81.2.3.4".parse().unwrap()], &[3478], None);
        assert!(!p.permits(addr("[64:ff9b::5102:304]:3478")));
        assert!(!p.permits(addr("[2002:5102:304::1]:3478")));
        assert!(!p.permits(addr("[::ffff:81.2.3.4]:3478")));
        // Teredo carries the port too (inverted): 0xf269 is port 3478, 0xf279 is 3462.
        assert!(!p.permits(addr("[2001:0:4136:e378:8000:f269:aefd:fcfb]:9")));
        assert!(p.permits(addr("[2001:0:4136:e378:8000:f279:aefd:fcfb]:9")));
        assert!(p.permits(addr("[64:ff9b::5102:304]:3479")));
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
