//! Which peer addresses an allocation may relay to.
//!
//! Refused by default (RFC 8656 §21.3 and the usual hardening): unspecified, loopback,
//! RFC 1918 private, link-local, CGNAT (100.64.0.0/10), multicast, broadcast, the
//! "this network" and reserved blocks, IPv6 loopback/unspecified/ULA/link-local/multicast and
//! the IPv4-mapped, IPv4-compatible, NAT64 and 6to4 forms of refused IPv4 addresses, and the
//! node's own addresses. An operator allow-list overrides the defaults; a deny-list adds to them.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Why a peer address is refused (a bounded set, used as a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    Loopback,
    Private,
    LinkLocal,
    Cgnat,
    Multicast,
    Broadcast,
    Unspecified,
    Reserved,
    UniqueLocal,
    OwnAddress,
    DenyList,
}

impl Refusal {
    pub const ALL: [Refusal; 11] = [
        Refusal::Loopback,
        Refusal::Private,
        Refusal::LinkLocal,
        Refusal::Cgnat,
        Refusal::Multicast,
        Refusal::Broadcast,
        Refusal::Unspecified,
        Refusal::Reserved,
        Refusal::UniqueLocal,
        Refusal::OwnAddress,
        Refusal::DenyList,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Loopback => "loopback",
            Refusal::Private => "private",
            Refusal::LinkLocal => "link_local",
            Refusal::Cgnat => "cgnat",
            Refusal::Multicast => "multicast",
            Refusal::Broadcast => "broadcast",
            Refusal::Unspecified => "unspecified",
            Refusal::Reserved => "reserved",
            Refusal::UniqueLocal => "unique_local",
            Refusal::OwnAddress => "own_address",
            Refusal::DenyList => "deny_list",
        }
    }
}

/// The peer-address policy of a node.
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    own: HashSet<IpAddr>,
    /// IPs of the node's own services that clients may relay to (the SFU), even when they are
    /// the node's own or loopback. Permissions are per IP; the driver keeps relayed datagrams
    /// to the service's port.
    services: HashSet<IpAddr>,
}

impl PeerPolicy {
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>, own: impl IntoIterator<Item = IpAddr>) -> Self {
        PeerPolicy {
            allow,
            deny,
            own: own.into_iter().map(canonical).collect(),
            services: HashSet::new(),
        }
    }

    /// Also permits the IPs of the node's own services (see the `services` field).
    pub fn with_services(mut self, ips: impl IntoIterator<Item = IpAddr>) -> Self {
        self.services = ips.into_iter().map(canonical).collect();
        self
    }

    /// `Ok(())` if relaying to `ip` is permitted.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        let ip = canonical(ip);
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return Err(Refusal::DenyList);
        }
        if self.allow.iter().any(|n| n.contains(&ip)) || self.services.contains(&ip) {
            return Ok(());
        }
        if self.own.contains(&ip) {
            return Err(Refusal::OwnAddress);
        }
        match ip {
            IpAddr::V4(a) => check_v4(a),
            IpAddr::V6(a) => check_v6(a),
        }
    }
}

/// IPv4 embedded in IPv6 (mapped ::ffff:a.b.c.d, compatible ::a.b.c.d, NAT64 64:ff9b::/96,
/// 6to4 2002:AABB:CCDD::/48) is judged as the IPv4 address it carries.
fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    let s = v6.segments();
    let o = v6.octets();
    let v4 = |a: &[u8]| IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]));
    if let Some(m) = v6.to_ipv4_mapped() {
        return IpAddr::V4(m);
    }
    // IPv4-compatible (deprecated), but not :: or ::1.
    if s[..6] == [0; 6] && (s[6] != 0 || s[7] > 1) {
        return v4(&o[12..]);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return v4(&o[12..]);
    }
    if s[0] == 0x2002 {
        return v4(&o[2..6]);
    }
    ip
}

fn check_v4(a: Ipv4Addr) -> Result<(), Refusal> {
    let o = a.octets();
    if a.is_unspecified() || o[0] == 0 {
        return Err(Refusal::Unspecified);
    }
    if a.is_loopback() {
        return Err(Refusal::Loopback);
    }
    if a.is_private() {
        return Err(Refusal::Private);
    }
    if a.is_link_local() {
        return Err(Refusal::LinkLocal);
    }
    if o[0] == 100 && (o[1] & 0xC0) == 64 {
        return Err(Refusal::Cgnat);
    }
    if a.is_multicast() {
        return Err(Refusal::Multicast);
    }
    if a.is_broadcast() {
        return Err(Refusal::Broadcast);
    }
    // 192.0.0.0/24 (IETF protocol assignments), 198.18.0.0/15 (benchmarking), 240.0.0.0/4.
    if (o[0] == 192 && o[1] == 0 && o[2] == 0)
        || (o[0] == 198 && (o[1] & 0xFE) == 18)
        || o[0] >= 240
    {
        return Err(Refusal::Reserved);
    }
    Ok(())
}

fn check_v6(a: Ipv6Addr) -> Result<(), Refusal> {
    let s = a.segments();
    if a.is_unspecified() {
        return Err(Refusal::Unspecified);
    }
    if a.is_loopback() {
        return Err(Refusal::Loopback);
    }
    if (s[0] & 0xFE00) == 0xFC00 {
        return Err(Refusal::UniqueLocal);
    }
    if (s[0] & 0xFFC0) == 0xFE80 {
        return Err(Refusal::LinkLocal);
    }
    // Deprecated site-local fec0::/10.
    if (s[0] & 0xFFC0) == 0xFEC0 {
        return Err(Refusal::Private);
    }
    if a.is_multicast() {
        return Err(Refusal::Multicast);
    }
    // Discard-only 100::/64, documentation 2001:db8::/32.
    if (s[0] == 0x100 && s[1..4] == [0, 0, 0]) || (s[0] == 0x2001 && s[1] == 0xdb8) {
        return Err(Refusal::Reserved);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(p: &PeerPolicy, ip: &str) -> Option<Refusal> {
        p.check(ip.parse().unwrap()).err()
    }

    #[test]
    fn refuses_the_dangerous_ranges_by_default() {
        let p = PeerPolicy::new(vec![], vec![], ["203.0.113.10".parse().unwrap()]);
        let cases = [
            ("127.0.0.1", Refusal::Loopback),
            ("127.255.0.9", Refusal::Loopback),
            ("10.1.2.3", Refusal::Private),
            ("172.16.0.1", Refusal::Private),
            ("192.168.1.1", Refusal::Private),
            ("169.254.169.254", Refusal::LinkLocal),
            ("100.64.0.1", Refusal::Cgnat),
            ("100.127.255.255", Refusal::Cgnat),
            ("224.0.0.1", Refusal::Multicast),
            ("255.255.255.255", Refusal::Broadcast),
            ("0.0.0.0", Refusal::Unspecified),
            ("0.1.2.3", Refusal::Unspecified),
            ("240.0.0.1", Refusal::Reserved),
            ("::1", Refusal::Loopback),
            ("::", Refusal::Unspecified),
            ("fd00::1", Refusal::UniqueLocal),
            ("fe80::1", Refusal::LinkLocal),
            ("ff02::1", Refusal::Multicast),
            ("::ffff:127.0.0.1", Refusal::Loopback),
            ("::ffff:10.0.0.1", Refusal::Private),
            ("::ffff:169.254.1.1", Refusal::LinkLocal),
            ("::10.0.0.1", Refusal::Private),
            ("64:ff9b::a00:1", Refusal::Private),
            ("2002:a00:1::1", Refusal::Private),
            ("203.0.113.10", Refusal::OwnAddress),
            ("::ffff:203.0.113.10", Refusal::OwnAddress),
        ];
        for (ip, why) in cases {
            assert_eq!(refused(&p, ip), Some(why), "{ip}");
        }
        for ok in [
            "8.8.8.8",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(refused(&p, ok), None, "{ok}");
        }
    }

    #[test]
    fn allow_list_overrides_and_deny_list_adds() {
        let p = PeerPolicy::new(
            vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            vec!["8.8.8.0/24".parse().unwrap()],
            [],
        );
        assert_eq!(refused(&p, "127.0.0.1"), None);
        assert_eq!(refused(&p, "::ffff:127.0.0.1"), None);
        assert_eq!(refused(&p, "::1"), None);
        assert_eq!(refused(&p, "10.0.0.1"), Some(Refusal::Private));
        assert_eq!(refused(&p, "8.8.8.8"), Some(Refusal::DenyList));
    }
}
