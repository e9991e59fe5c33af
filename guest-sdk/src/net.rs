//! IP addresses and CIDR networks as handlers receive them: strings from the
//! publisher, to be validated before anything is blocked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use ipnet::IpNet;
use ipnet::{Ipv4Net, Ipv6Net};

/// Parse `"203.0.113.7"`, `"2001:db8::/48"` or `"::ffff:192.0.2.1"`.
///
/// An IPv4-mapped IPv6 address is taken as the IPv4 address it maps, so that
/// `::ffff:127.0.0.1` cannot slip past a loopback check. A network with host
/// bits set (`10.0.0.1/8`) is refused rather than guessed at.
pub fn parse_network(input: &str) -> Result<IpNet, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty address".to_string());
    }
    let net =
        read_network(s).ok_or_else(|| format!("`{input}` is not an IP address or CIDR network"))?;
    if net.trunc() != net {
        return Err(format!(
            "`{input}` has host bits set; the network is `{}`",
            net.trunc()
        ));
    }
    Ok(unmap(net))
}

/// An address or CIDR network exactly as written: no trimming, no
/// unmapping, host bits kept. `None` if `s` is neither. The handlers'
/// [`parse_network`] and the node's blocklist both read networks through
/// it.
pub fn read_network(s: &str) -> Option<IpNet> {
    if s.contains('/') {
        s.parse().ok()
    } else if let Some(v4) = dotted_quad(s) {
        Some(IpNet::from(IpAddr::V4(v4)))
    } else {
        s.parse::<IpAddr>().ok().map(IpNet::from)
    }
}

/// A plain IPv4 address (`198.51.100.7`), the common case of every block,
/// read without the general parser. It takes only what `Ipv4Addr`'s own
/// parser takes (four decimal octets up to 255, no leading zeros) and
/// answers `None` for anything else, which then goes to that parser.
fn dotted_quad(s: &str) -> Option<Ipv4Addr> {
    let bytes = s.as_bytes();
    let mut octets = [0u8; 4];
    let mut i = 0;
    for (n, octet) in octets.iter_mut().enumerate() {
        if n > 0 {
            if bytes.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
        let start = i;
        let mut value = 0u32;
        while let Some(d) = bytes.get(i).filter(|d| d.is_ascii_digit()) {
            if i - start == 3 {
                return None;
            }
            value = value * 10 + u32::from(d - b'0');
            i += 1;
        }
        let digits = i - start;
        if digits == 0 || (digits > 1 && bytes[start] == b'0') {
            return None;
        }
        *octet = u8::try_from(value).ok()?;
    }
    (i == bytes.len()).then(|| Ipv4Addr::from(octets))
}

/// An IPv4-mapped IPv6 network (`::ffff:a.b.c.d/n`) as the IPv4 network it
/// stands for; any other network as it is.
pub fn unmap(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).expect("prefix <= 32"),
            None => net,
        },
        _ => net,
    }
}

/// The canonical text of a network: a bare address for a single host,
/// `address/prefix` otherwise.
pub fn canonical(net: &IpNet) -> String {
    match net {
        // Every block goes through here twice (handler and node): IPv4, the
        // common case, is written digit by digit rather than through
        // `fmt`, which costs several times more, most of all in a guest.
        IpNet::V4(v4) => {
            let mut text = String::with_capacity(18);
            for (i, octet) in v4.addr().octets().into_iter().enumerate() {
                if i > 0 {
                    text.push('.');
                }
                push_decimal(&mut text, octet);
            }
            if v4.prefix_len() < 32 {
                text.push('/');
                push_decimal(&mut text, v4.prefix_len());
            }
            text
        }
        IpNet::V6(v6) if v6.prefix_len() == 128 => v6.addr().to_string(),
        IpNet::V6(v6) => v6.to_string(),
    }
}

fn push_decimal(text: &mut String, n: u8) {
    if n >= 100 {
        text.push(char::from(b'0' + n / 100));
    }
    if n >= 10 {
        text.push(char::from(b'0' + n / 10 % 10));
    }
    text.push(char::from(b'0' + n % 10));
}

/// Whether two networks share any address.
///
/// CIDR networks either nest or are disjoint, so two overlap exactly when
/// their addresses agree on the shorter prefix: one mask and one compare,
/// where `IpNet::contains` both ways computes four network and broadcast
/// addresses. Every block checks loopback, the allowlist and the node's
/// protected networks this way.
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    match (a, b) {
        (IpNet::V4(a), IpNet::V4(b)) => {
            let prefix = u32::from(a.prefix_len().min(b.prefix_len()));
            let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
            (a.addr().to_bits() ^ b.addr().to_bits()) & mask == 0
        }
        (IpNet::V6(a), IpNet::V6(b)) => {
            let prefix = u32::from(a.prefix_len().min(b.prefix_len()));
            let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            (a.addr().to_bits() ^ b.addr().to_bits()) & mask == 0
        }
        _ => false,
    }
}

/// An IPv6 range whose addresses carry an IPv4 address: traffic from
/// those addresses comes from (or goes to) that IPv4 host, so an IPv6
/// network is only as harmless as every IPv4 range it covers.
struct Embedding {
    prefix: Ipv6Net,
    /// Where the 32 bits of the IPv4 address start (from the left); none
    /// when the range may stand for any IPv4 address (the local-use NAT64
    /// prefix, whose layout its operator picks).
    offset: Option<u8>,
    /// Teredo stores its client's address with every bit inverted.
    inverted: bool,
    name: &'static str,
}

const fn v6net(addr: Ipv6Addr, prefix: u8) -> Ipv6Net {
    Ipv6Net::new_assert(addr, prefix)
}

const EMBEDDINGS: [Embedding; 7] = [
    Embedding {
        prefix: v6net(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96),
        offset: Some(96),
        inverted: false,
        name: "IPv4-mapped",
    },
    Embedding {
        prefix: v6net(Ipv6Addr::UNSPECIFIED, 96),
        offset: Some(96),
        inverted: false,
        name: "IPv4-compatible",
    },
    Embedding {
        prefix: v6net(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96),
        offset: Some(96),
        inverted: false,
        name: "NAT64",
    },
    Embedding {
        prefix: v6net(Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48),
        offset: None,
        inverted: false,
        name: "local-use NAT64",
    },
    Embedding {
        prefix: v6net(Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16),
        offset: Some(16),
        inverted: false,
        name: "6to4",
    },
    Embedding {
        prefix: v6net(Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32),
        offset: Some(32),
        inverted: false,
        name: "Teredo server",
    },
    Embedding {
        prefix: v6net(Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32),
        offset: Some(96),
        inverted: true,
        name: "Teredo client",
    },
];

/// Every IPv4 range that `net` covers through an address format that
/// carries IPv4 (IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo), each
/// with the format's name. `::fffe:0:0/95` covers all of IPv4 as mapped
/// addresses; `2002:c000:200::/40` covers 192.0.2.0/24 as 6to4.
pub fn embedded_v4(net: &Ipv6Net) -> impl Iterator<Item = (Ipv4Net, &'static str)> + '_ {
    EMBEDDINGS.iter().filter_map(move |e| {
        if !overlaps(&IpNet::V6(*net), &IpNet::V6(e.prefix)) {
            return None;
        }
        let Some(offset) = e.offset else {
            return Some((Ipv4Net::default(), e.name));
        };
        // The IPv4 bits that `net`'s prefix fixes: none when it ends
        // before them, all 32 when it ends after.
        let fixed = net.prefix_len().saturating_sub(offset).min(32);
        let mut bits = (net.addr().to_bits() >> (96 - u32::from(offset))) as u32;
        if e.inverted {
            bits = !bits;
        }
        let v4 = Ipv4Net::new(Ipv4Addr::from_bits(bits), fixed).expect("prefix <= 32");
        Some((v4.trunc(), e.name))
    })
}

/// Whether `net` touches a loopback address (127.0.0.0/8, ::1), which no
/// node may block on itself.
pub fn touches_loopback(net: &IpNet) -> bool {
    const V4: IpNet = IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8));
    const V6: IpNet = IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128));
    overlaps(net, &V4) || overlaps(net, &V6)
}

/// Networks that must never be blocked, from a setting such as
/// `"10.0.0.0/8, 2001:db8::1"` (commas or white space between entries).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowlist(pub Vec<IpNet>);

impl Allowlist {
    pub fn parse(setting: &str) -> Result<Allowlist, String> {
        setting
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(|s| parse_network(s).map_err(|e| format!("allowlist: {e}")))
            .collect::<Result<Vec<_>, _>>()
            .map(Allowlist)
    }

    /// The allowlisted network that `net` would hit, if any.
    pub fn protects(&self, net: &IpNet) -> Option<&IpNet> {
        self.0.iter().find(|allowed| overlaps(allowed, net))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embedded(net: &str) -> Vec<(String, &'static str)> {
        let IpNet::V6(net) = net.parse::<IpNet>().unwrap() else {
            panic!("{net} is not IPv6")
        };
        embedded_v4(&net)
            .map(|(v4, how)| (v4.to_string(), how))
            .collect()
    }

    #[test]
    fn ipv6_networks_are_seen_through_to_the_ipv4_they_carry() {
        let all = |how| vec![("0.0.0.0/0".to_string(), how)];
        assert_eq!(embedded("::fffe:0:0/95"), all("IPv4-mapped"));
        assert_eq!(
            embedded("::ffff:127.0.0.0/104"),
            [("127.0.0.0/8".to_string(), "IPv4-mapped")]
        );
        assert_eq!(embedded("64:ff9b::/96"), all("NAT64"));
        assert_eq!(
            embedded("64:ff9b::a00:1/128"),
            [("10.0.0.1/32".to_string(), "NAT64")]
        );
        assert_eq!(embedded("64:ff9b:1:abcd::/64"), all("local-use NAT64"));
        assert_eq!(
            embedded("2002:c000:200::/40"),
            [("192.0.2.0/24".to_string(), "6to4")]
        );
        assert_eq!(embedded("2002::/15"), all("6to4"));
        // Teredo: the server in bits 32-63, the client inverted at the end.
        assert_eq!(
            embedded("2001:0:4136:e378:8000:63bf:3fff:fdd2/128"),
            [
                ("65.54.227.120/32".to_string(), "Teredo server"),
                ("192.0.2.45/32".to_string(), "Teredo client"),
            ]
        );
        // ::/64 holds the IPv4-compatible, mapped and NAT64-free ranges.
        let wide = embedded("::/64");
        assert!(wide.contains(&("0.0.0.0/0".to_string(), "IPv4-mapped")));
        assert!(wide.contains(&("0.0.0.0/0".to_string(), "IPv4-compatible")));
        assert!(embedded("2001:db8::/32").is_empty());
        assert!(embedded("2a00:1450::/32").is_empty());
    }

    #[test]
    fn canonical_ipv4_text_is_what_fmt_writes() {
        for text in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "198.18.0.1",
            "10.0.0.0/8",
        ] {
            let net = parse_network(text).unwrap();
            assert_eq!(canonical(&net), text);
        }
        for n in 0..=255u8 {
            let net: IpNet = format!("{n}.{n}.0.0/16").parse().unwrap();
            assert_eq!(canonical(&net), net.to_string());
        }
    }

    /// The fast IPv4 reader never disagrees with `Ipv4Addr`'s parser: on
    /// strings made of digits and dots it answers `Some` exactly where that
    /// parser succeeds, with the same address.
    #[test]
    fn dotted_quad_reads_as_std_does() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut taken = 0;
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut r = state;
            let len = 1 + (r % 18) as usize;
            r /= 18;
            let mut text = String::new();
            for _ in 0..len {
                // Mostly digits, some dots, now and then a stray byte.
                let pick = r % 13;
                r /= 13;
                text.push(match pick {
                    0..=9 => char::from(b'0' + pick as u8),
                    10 | 11 => '.',
                    _ => 'x',
                });
            }
            let std: Option<Ipv4Addr> = text.parse().ok();
            assert_eq!(dotted_quad(&text), std, "{text:?}");
            taken += usize::from(std.is_some());
        }
        for text in ["0.0.0.0", "255.255.255.255", "1.2.3.4", "10.0.0.255"] {
            assert_eq!(dotted_quad(text), text.parse().ok(), "{text}");
        }
        for text in [
            "256.0.0.1",
            "01.2.3.4",
            "1.2.3",
            "1.2.3.4.",
            "1..2.3",
            "1.2.3.4/8",
            "1.2.3.1000",
        ] {
            assert_eq!(dotted_quad(text), None, "{text}");
        }
        assert!(taken > 100, "only {taken} valid addresses generated");
    }

    #[test]
    fn parses_and_canonicalises() {
        assert_eq!(
            canonical(&parse_network("203.0.113.7").unwrap()),
            "203.0.113.7"
        );
        assert_eq!(
            canonical(&parse_network(" 2001:db8::/48 ").unwrap()),
            "2001:db8::/48"
        );
        assert_eq!(
            canonical(&parse_network("::ffff:192.0.2.1").unwrap()),
            "192.0.2.1"
        );
        assert!(
            parse_network("not-an-ip")
                .unwrap_err()
                .contains("not-an-ip")
        );
        assert!(
            parse_network("10.0.0.1/8")
                .unwrap_err()
                .contains("10.0.0.0/8")
        );
        assert!(parse_network("10.0.0.0/33").is_err());
        assert!(parse_network("").is_err());
    }

    /// `overlaps` against its definition, `contains` either way, over
    /// networks that nest, touch and miss, in both families and at every
    /// prefix length.
    #[test]
    fn overlaps_is_containment_either_way() {
        // A fixed xorshift sequence: the same cases on every run.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let base4 = u32::from(Ipv4Addr::new(198, 51, 100, 0));
        let base6 = u128::from(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0));
        let mut seen = [0u32; 2];
        for _ in 0..20_000 {
            let r = next();
            // Addresses near one another, so that many pairs overlap.
            let a4 = base4 ^ (r as u32 & 0xffff);
            let b4 = base4 ^ ((r >> 16) as u32 & 0xffff);
            let a6 = base6 ^ u128::from(r & 0xffff_ffff) << 64;
            let b6 = base6 ^ u128::from(r >> 32) << 64;
            let (pa, pb) = ((r >> 48) as u8, (r >> 56) as u8);
            let v4 =
                |bits: u32, p: u8| IpNet::from(Ipv4Net::new(Ipv4Addr::from(bits), p % 33).unwrap());
            let v6 = |bits: u128, p: u8| {
                IpNet::from(Ipv6Net::new(Ipv6Addr::from(bits), p % 129).unwrap())
            };
            for (a, b) in [
                (v4(a4, pa), v4(b4, pb)),
                (v6(a6, pa), v6(b6, pb)),
                (v4(a4, pa), v6(b6, pb)),
            ] {
                let expected = a.contains(&b) || b.contains(&a);
                seen[usize::from(expected)] += 1;
                assert_eq!(overlaps(&a, &b), expected, "{a} and {b}");
                assert_eq!(overlaps(&b, &a), expected, "{b} and {a}");
            }
        }
        // Both answers were tested many times over.
        assert!(seen[0] > 5_000 && seen[1] > 5_000, "{seen:?}");
    }

    #[test]
    fn loopback_in_any_disguise() {
        for s in [
            "127.0.0.1",
            "127.8.0.0/16",
            "::1",
            "::ffff:127.0.0.1",
            "0.0.0.0/0",
            "::/0",
        ] {
            assert!(touches_loopback(&parse_network(s).unwrap()), "{s}");
        }
        assert!(!touches_loopback(&parse_network("203.0.113.7").unwrap()));
    }

    #[test]
    fn allowlist() {
        let a = Allowlist::parse("10.0.0.0/8, 2001:db8::1  192.0.2.1").unwrap();
        assert!(a.protects(&parse_network("10.1.2.3").unwrap()).is_some());
        assert!(a.protects(&parse_network("10.0.0.0/7").unwrap()).is_some());
        assert!(a.protects(&parse_network("2001:db8::1").unwrap()).is_some());
        assert!(a.protects(&parse_network("203.0.113.7").unwrap()).is_none());
        assert!(
            Allowlist::parse("10.0.0.0/8, bogus")
                .unwrap_err()
                .contains("bogus")
        );
    }
}
