//! Which addresses are internal, as tables checked against the IANA special-purpose address
//! registries, and where IPv6 forms carry an IPv4 address that decides for them:
//!
//! - IPv4: <https://www.iana.org/assignments/iana-ipv4-special-registry/> (and 224.0.0.0/4,
//!   multicast, from <https://www.iana.org/assignments/multicast-addresses/>)
//! - IPv6: <https://www.iana.org/assignments/iana-ipv6-special-registry/> (and ff00::/8,
//!   multicast; ::/96 IPv4-compatible, deprecated by RFC 4291 §2.5.5.1; ::ffff:0:0:0/96
//!   IPv4-translated, RFC 2765 §2.1; fec0::/10 site-local, deprecated by RFC 3879)
//!
//! Ranges the registries mark not globally reachable are refused. Two kinds are left open on
//! purpose: globally reachable anycast services (AS112, AMT, ORCHIDv2, 2620:4f:8000::/48),
//! which reach nothing inside a cluster, and the documentation ranges (192.0.2.0/24,
//! 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32, 3fff::/20), which are routed nowhere and
//! stand in for public addresses in examples and tests. Operators can deny more ranges in front
//! of the dispatcher (the chart's NetworkPolicy).

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), prefix)
}

/// Internal IPv4 ranges and their kind; the first match names the kind, so the more specific
/// ranges come first.
const V4_INTERNAL: &[(Ipv4Net, &str)] = &[
    // Cloud metadata services (AWS, GCP, Azure; Alibaba), inside link-local and shared space.
    (v4(169, 254, 169, 254, 32), "cloud metadata"),
    (v4(100, 100, 100, 200, 32), "cloud metadata"),
    (v4(0, 0, 0, 0, 8), "unspecified"),
    (v4(10, 0, 0, 0, 8), "private"),
    (v4(100, 64, 0, 0, 10), "carrier-grade NAT"),
    (v4(127, 0, 0, 0, 8), "loopback"),
    (v4(169, 254, 0, 0, 16), "link-local"),
    (v4(172, 16, 0, 0, 12), "private"),
    // Includes 192.0.0.0/29 (service continuity), .8 (dummy), .9 and .10 (PCP and TURN
    // anycast), .170 and .171 (NAT64 discovery).
    (v4(192, 0, 0, 0, 24), "IETF protocol"),
    (v4(192, 88, 99, 0, 24), "6to4 relay anycast"),
    (v4(192, 168, 0, 0, 16), "private"),
    (v4(198, 18, 0, 0, 15), "benchmarking"),
    (v4(224, 0, 0, 0, 4), "multicast"),
    // Includes 255.255.255.255, the limited broadcast address.
    (v4(240, 0, 0, 0, 4), "reserved"),
];

/// Where an IPv6 range carries IPv4 addresses.
#[derive(Clone, Copy)]
enum Embedded {
    Nothing,
    /// The last 32 bits (RFC 4291, RFC 6052 with a /96 prefix).
    Last32,
    /// Bits 16 to 48: 6to4, `2002:AABB:CCDD::/48` (RFC 3056 §2).
    After16,
    /// Teredo, `2001:0:SSSS:SSSS:flags:port:CCCC:CCCC` (RFC 4380 §4): the server's address, and
    /// the client's with every bit inverted.
    Teredo,
}

struct V6Range {
    net: Ipv6Net,
    kind: &'static str,
    embedded: Embedded,
    /// Whether an address of the range can lead anywhere public: then the IPv4 addresses it
    /// carries decide; otherwise it is refused whatever it carries.
    reachable: bool,
}

const fn v6(
    net: (Ipv6Addr, u8),
    kind: &'static str,
    embedded: Embedded,
    reachable: bool,
) -> V6Range {
    V6Range {
        net: Ipv6Net::new_assert(net.0, net.1),
        kind,
        embedded,
        reachable,
    }
}

/// Refused outright.
const fn internal_v6(net: (Ipv6Addr, u8), kind: &'static str) -> V6Range {
    v6(net, kind, Embedded::Nothing, false)
}

/// A range from its leading segments (the rest zero) and prefix length.
const fn net6(leading: &[u16], prefix: u8) -> (Ipv6Addr, u8) {
    let mut segments = [0u16; 8];
    let mut index = 0;
    while index < leading.len() {
        segments[index] = leading[index];
        index += 1;
    }
    let [a, b, c, d, e, f, g, h] = segments;
    (Ipv6Addr::new(a, b, c, d, e, f, g, h), prefix)
}

/// Special-purpose IPv6 ranges, the more specific first.
const V6_SPECIAL: &[V6Range] = &[
    // fd00:ec2::254/128
    internal_v6(
        net6(&[0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254], 128),
        "cloud metadata",
    ),
    // ::/128
    internal_v6(net6(&[], 128), "unspecified"),
    // ::1/128
    internal_v6(net6(&[0, 0, 0, 0, 0, 0, 0, 0x1], 128), "loopback"),
    // ::/96
    v6(net6(&[], 96), "IPv4-compatible", Embedded::Last32, false),
    // ::ffff:0:0/96
    v6(
        net6(&[0, 0, 0, 0, 0, 0xffff], 96),
        "IPv4-mapped",
        Embedded::Last32,
        false,
    ),
    // ::ffff:0:0:0/96
    v6(
        net6(&[0, 0, 0, 0, 0xffff], 96),
        "IPv4-translated",
        Embedded::Last32,
        false,
    ),
    // The well-known NAT64 prefix reaches the IPv4 internet (IPv6-only clusters with DNS64).
    // 64:ff9b::/96
    v6(net6(&[0x64, 0xff9b], 96), "NAT64", Embedded::Last32, true),
    // Local-use NAT64 may put the IPv4 address anywhere from bit 48 (RFC 8215): refused.
    // 64:ff9b:1::/48
    internal_v6(net6(&[0x64, 0xff9b, 0x1], 48), "local-use NAT64"),
    // 64:ff9b::/32
    internal_v6(net6(&[0x64, 0xff9b], 32), "NAT64"),
    // 100::/64
    internal_v6(net6(&[0x100], 64), "discard-only"),
    // 100:0:0:1::/64
    internal_v6(net6(&[0x100, 0, 0, 0x1], 64), "dummy"),
    // 2001::/32
    v6(net6(&[0x2001], 32), "Teredo", Embedded::Teredo, true),
    // 2001:2::/48
    internal_v6(net6(&[0x2001, 0x2], 48), "benchmarking"),
    // 2001:10::/28
    internal_v6(net6(&[0x2001, 0x10], 28), "ORCHID"),
    // The rest of the IETF protocol block: anycast services and reserved space, no receivers.
    // 2001::/23
    internal_v6(net6(&[0x2001], 23), "IETF protocol"),
    // 2002::/16
    v6(net6(&[0x2002], 16), "6to4", Embedded::After16, true),
    // 5f00::/16
    internal_v6(net6(&[0x5f00], 16), "segment routing"),
    // fc00::/7
    internal_v6(net6(&[0xfc00], 7), "unique-local"),
    // fe80::/10
    internal_v6(net6(&[0xfe80], 10), "link-local"),
    // fec0::/10
    internal_v6(net6(&[0xfec0], 10), "site-local"),
    // ff00::/8
    internal_v6(net6(&[0xff00], 8), "multicast"),
];

pub(super) fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    V4_INTERNAL
        .iter()
        .find(|(net, _)| net.contains(&ip))
        .map(|(_, kind)| *kind)
}

/// An internal IPv4 address carried inside names the kind (`::127.0.0.1` is loopback); a
/// range that cannot lead anywhere public names itself.
pub(super) fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let range = V6_SPECIAL.iter().find(|range| range.net.contains(&ip))?;
    let carried = embedded_v4(range.embedded, ip);
    match carried.into_iter().flatten().find_map(forbidden_v4) {
        Some(kind) => Some(kind),
        None if range.reachable => None,
        None => Some(range.kind),
    }
}

fn embedded_v4(embedded: Embedded, ip: Ipv6Addr) -> [Option<Ipv4Addr>; 2] {
    let bits = ip.to_bits();
    let at = |shift: u32| Ipv4Addr::from_bits((bits >> shift) as u32);
    match embedded {
        Embedded::Nothing => [None, None],
        Embedded::Last32 => [Some(at(0)), None],
        Embedded::After16 => [Some(at(80)), None],
        Embedded::Teredo => [Some(at(64)), Some(Ipv4Addr::from_bits(!(bits as u32)))],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(text: &str) -> Option<&'static str> {
        match text.parse().expect("test address") {
            std::net::IpAddr::V4(ip) => forbidden_v4(ip),
            std::net::IpAddr::V6(ip) => forbidden_v6(ip),
        }
    }

    #[test]
    fn every_internal_ipv4_entry_is_refused() {
        for (address, expected) in [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("10.1.2.3", "private"),
            ("100.64.0.1", "carrier-grade NAT"),
            ("100.127.255.254", "carrier-grade NAT"),
            ("100.100.100.200", "cloud metadata"),
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("169.254.169.254", "cloud metadata"),
            ("169.254.1.1", "link-local"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.0.0.8", "IETF protocol"),
            ("192.0.0.170", "IETF protocol"),
            ("192.88.99.1", "6to4 relay anycast"),
            ("192.168.1.1", "private"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.1", "benchmarking"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.255", "reserved"),
        ] {
            assert_eq!(kind(address), Some(expected), "{address}");
        }
    }

    #[test]
    fn every_internal_ipv6_entry_is_refused() {
        for (address, expected) in [
            ("fd00:ec2::254", "cloud metadata"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("64:ff9b:1::a00:1", "local-use NAT64"),
            ("64:ff9b:1:ffff::1", "local-use NAT64"),
            ("64:ff9b:2::1", "NAT64"),
            ("100::1", "discard-only"),
            ("100:0:0:1::1", "dummy"),
            ("2001:2::1", "benchmarking"),
            ("2001:10::1", "ORCHID"),
            ("2001:1::1", "IETF protocol"),
            ("2001:1ff::1", "IETF protocol"),
            ("5f00::1", "segment routing"),
            ("fc00::1", "unique-local"),
            ("fd12::1", "unique-local"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
        ] {
            assert_eq!(kind(address), Some(expected), "{address}");
        }
    }

    #[test]
    fn ipv6_forms_carrying_an_internal_ipv4_are_refused_by_its_kind() {
        for (address, expected) in [
            ("::127.0.0.1", "loopback"),
            ("::10.0.0.1", "private"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "cloud metadata"),
            ("::ffff:0:127.0.0.1", "loopback"),
            ("::ffff:0:192.168.0.1", "private"),
            ("64:ff9b::127.0.0.1", "loopback"),
            ("64:ff9b::a00:1", "private"),
            ("64:ff9b::169.254.169.254", "cloud metadata"),
            // 6to4: 2002:7f00:0001::/48 carries 127.0.0.1.
            ("2002:7f00:1::1", "loopback"),
            ("2002:a9fe:a9fe::", "cloud metadata"),
            ("2002:c0a8:101:1::1", "private"),
            // Teredo: server 127.0.0.1, client 8.8.8.8 (inverted: f7f7:f7f7).
            ("2001:0:7f00:1:0:0:f7f7:f7f7", "loopback"),
            // Teredo: server 8.8.8.8, client 10.0.0.1 (inverted: f5ff:fffe).
            ("2001:0:808:808:0:0:f5ff:fffe", "private"),
            // Teredo: server 8.8.8.8, client 127.0.0.1 (inverted: 80ff:fffe).
            ("2001:0:808:808:8000:ffff:80ff:fffe", "loopback"),
        ] {
            assert_eq!(kind(address), Some(expected), "{address}");
        }
    }

    #[test]
    fn forms_that_lead_nowhere_public_are_refused_whatever_they_carry() {
        for (address, expected) in [
            ("::8.8.8.8", "IPv4-compatible"),
            ("::ffff:0:8.8.8.8", "IPv4-translated"),
            ("64:ff9b:1::808:808", "local-use NAT64"),
        ] {
            assert_eq!(kind(address), Some(expected), "{address}");
        }
    }

    #[test]
    fn translations_and_tunnels_to_public_ipv4_pass() {
        for address in [
            "64:ff9b::8.8.8.8",
            "2002:808:808::1",
            // Teredo: server 8.8.8.8, client 1.1.1.1 (inverted: fefe:fefe).
            "2001:0:808:808:0:0:fefe:fefe",
        ] {
            assert_eq!(kind(address), None, "{address}");
        }
    }

    #[test]
    fn public_and_documentation_addresses_pass() {
        for address in [
            "8.8.8.8",
            "93.184.215.14",
            "100.128.0.1",
            "192.0.1.1",
            "192.31.196.1",
            "203.0.113.10",
            "2606:4700::1111",
            "2001:200::1",
            "2001:db8::1",
            "2620:4f:8000::1",
        ] {
            assert_eq!(kind(address), None, "{address}");
        }
    }
}
