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
    let net = if s.contains('/') {
        let net: IpNet = s
            .parse()
            .map_err(|_| format!("`{input}` is not an IP address or CIDR network"))?;
        if net.trunc() != net {
            return Err(format!(
                "`{input}` has host bits set; the network is `{}`",
                net.trunc()
            ));
        }
        net
    } else {
        let addr: IpAddr = s
            .parse()
            .map_err(|_| format!("`{input}` is not an IP address or CIDR network"))?;
        IpNet::from(addr)
    };
    Ok(unmap(net))
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
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
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
