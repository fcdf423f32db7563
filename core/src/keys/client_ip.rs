//! Where a request comes from, and whether a key's IP allowlist admits it.
//!
//! The client's address is Envoy's downstream remote address (`source.address`). With the
//! connection manager's `use_remote_address: true` that is the connection's peer, or, with
//! `xff_num_trusted_hops: N`, the `X-Forwarded-For` entry Envoy trusts N hops back: never
//! the leftmost entry, which any client can forge. Envoy already implements exactly that
//! rule, so the filter reads its result instead of parsing the header a second time.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// A key's allowlist, parsed once when the snapshot loads. Empty admits every source.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Allowlist {
    nets: Vec<IpNet>,
    /// The snapshot listed entries, but none parsed: admit nobody rather than everybody.
    unusable: bool,
}

impl Allowlist {
    /// Parses addresses (`10.0.0.1`, `2001:db8::1`) and CIDRs (`10.0.0.0/8`). Entries that
    /// do not parse are dropped; a list left with none refuses every source.
    pub fn parse(entries: &[String]) -> Allowlist {
        let nets: Vec<IpNet> = entries
            .iter()
            .filter_map(|e| {
                let e = e.trim();
                e.parse::<IpNet>()
                    .ok()
                    .or_else(|| e.parse::<IpAddr>().ok().map(IpNet::from))
            })
            .map(|net| match net {
                // An IPv4-mapped IPv6 network (::ffff:10.0.0.0/104) means its IPv4 range.
                IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
                    Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len().saturating_sub(96))
                        .unwrap_or(IpNet::V6(v6)),
                    None => IpNet::V6(v6),
                },
                v4 => v4,
            })
            .map(|net| net.trunc())
            .collect();
        Allowlist {
            unusable: nets.is_empty() && !entries.is_empty(),
            nets,
        }
    }

    /// The networks that parsed, truncated to their prefix.
    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    /// True when entries were given but none parsed: the list admits nobody.
    pub fn is_unusable(&self) -> bool {
        self.unusable
    }

    /// True when the list restricts sources at all (so the client address is needed).
    pub fn is_restricted(&self) -> bool {
        self.unusable || !self.nets.is_empty()
    }

    pub fn admits(&self, ip: Option<IpAddr>) -> bool {
        if !self.is_restricted() {
            return true;
        }
        let Some(ip) = ip.map(normalize) else {
            return false;
        };
        self.nets.iter().any(|net| net.contains(&ip))
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.1.2.3`) are their IPv4 address.
pub fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Parses Envoy's `source.address` (`ip:port`, `[ip]:port` or a bare address).
pub fn parse_source_address(source: &str) -> Option<IpAddr> {
    let source = source.trim();
    source
        .parse::<SocketAddr>()
        .map(|s| s.ip())
        .or_else(|_| source.parse::<IpAddr>())
        .ok()
        .map(normalize)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn list(entries: &[&str]) -> Allowlist {
        Allowlist::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>())
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn an_empty_allowlist_admits_everyone_even_without_an_address() {
        let open = list(&[]);
        assert!(!open.is_restricted());
        assert!(open.admits(None));
        assert!(open.admits(ip("203.0.113.9")));
    }

    #[test]
    fn addresses_and_cidrs_of_both_families_are_matched() {
        let l = list(&[
            "10.0.0.0/8",
            "192.168.1.7",
            "2001:db8::/32",
            "::1",
            "172.16.5.9/16",
        ]);
        let cases = [
            ("10.255.0.1", true),
            ("11.0.0.1", false),
            ("192.168.1.7", true),
            ("192.168.1.8", false),
            ("2001:db8:ffff::1", true),
            ("2001:db9::1", false),
            ("::1", true),
            ("172.16.200.1", true),
            // IPv4-mapped IPv6 is its IPv4 address.
            ("::ffff:10.1.2.3", true),
            ("::ffff:11.1.2.3", false),
        ];
        for (addr, admitted) in cases {
            assert_eq!(l.admits(ip(addr)), admitted, "{addr}");
        }
        assert!(
            !l.admits(None),
            "an unknown source is refused by a restricted key"
        );
    }

    #[test]
    fn mapped_ipv6_networks_cover_their_ipv4_range() {
        let l = list(&["::ffff:10.0.0.0/104"]);
        assert!(l.admits(ip("10.9.9.9")));
        assert!(!l.admits(ip("11.0.0.1")));
    }

    #[test]
    fn an_allowlist_of_garbage_refuses_everyone() {
        let l = list(&["not-an-ip", "10.0.0.0/33"]);
        assert!(l.is_restricted());
        assert!(!l.admits(ip("10.0.0.1")));
        let partly = list(&["junk", "10.0.0.1"]);
        assert!(partly.admits(ip("10.0.0.1")));
        assert!(!partly.admits(ip("10.0.0.2")));
    }

    #[test]
    fn source_addresses_parse_in_every_form_envoy_writes() {
        assert_eq!(parse_source_address("127.0.0.1:5555"), ip("127.0.0.1"));
        assert_eq!(parse_source_address("[::1]:5555"), ip("::1"));
        assert_eq!(parse_source_address("[::ffff:10.0.0.1]:80"), ip("10.0.0.1"));
        assert_eq!(parse_source_address("10.0.0.2"), ip("10.0.0.2"));
        assert_eq!(parse_source_address("garbage"), None);
        assert_eq!(parse_source_address(""), None);
    }
}
