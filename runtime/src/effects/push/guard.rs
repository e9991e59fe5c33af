//! Where a push may go. Push endpoints are chosen by end users (a browser
//! hands its subscription to the mail server), so without a guard a user
//! could make every node POST to the node's own network: the broker, a
//! metrics endpoint, a cloud metadata service.
//!
//! An endpoint's host is resolved by [`Guarded`], the client's only
//! resolver, which refuses the name when any of its addresses is loopback,
//! private, link-local, unique-local, site-local, CGNAT, unspecified,
//! multicast, or an IPv6 form that carries such an IPv4 address (mapped,
//! compatible, NAT64, 6to4, Teredo; any local-use NAT64 address); the
//! connection then goes to the addresses it checked, so a name cannot
//! resolve to a public address for the check and to a private one for the
//! connection. A literal address in the URL is
//! checked the same way before any request. `push.allowPrivate` (for test
//! setups) lets everything through, plain `http` included.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why `ip` may not be a push target, if it may not.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6).or_else(|| {
            // An address that carries an IPv4 address reaches that host
            // (through a NAT64 gateway, a 6to4 or Teredo relay, or the
            // node's own dual-stack socket): judged by it too.
            let host = ipnet::Ipv6Net::from(v6);
            herald_guest::net::embedded_v4(&host).find_map(|(v4, how)| {
                let private = v4.prefix_len() < 32 || forbidden_v4(v4.addr()).is_some();
                private.then_some(match how {
                    "IPv4-mapped" => "an IPv4-mapped private address",
                    "IPv4-compatible" => "an IPv4-compatible private address",
                    "NAT64" => "a NAT64 address of a private IPv4 address",
                    "local-use NAT64" => "a local-use NAT64 address",
                    "6to4" => "a 6to4 address of a private IPv4 address",
                    _ => "a Teredo address of a private IPv4 address",
                })
            })
        }),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_unspecified() || a == 0 {
        Some("an unspecified address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_private() {
        Some("a private address")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if a == 100 && (64..128).contains(&b) {
        Some("a carrier-grade NAT address")
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        Some("a multicast, broadcast or reserved address")
    } else {
        None
    }
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_unspecified() {
        Some("an unspecified address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if first & 0xffc0 == 0xfe80 {
        Some("a link-local address")
    } else if first & 0xfe00 == 0xfc00 {
        Some("a unique-local address")
    } else if first & 0xffc0 == 0xfec0 {
        Some("a site-local address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else {
        None
    }
}

/// The resolver refused a name: it leads to an address pushes may not go to.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves to {ip}, {why}: push endpoints must be public")]
pub struct Refused {
    pub host: String,
    pub ip: IpAddr,
    pub why: &'static str,
}

/// The push client's resolver: the system's, with every answer checked.
pub struct Guarded;

impl Resolve for Guarded {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some((ip, why)) = addrs
                .iter()
                .find_map(|a| forbidden(a.ip()).map(|why| (a.ip(), why)))
            {
                return Err(Box::new(Refused { host, ip, why }) as _);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The [`Refused`] somewhere in an error's chain of causes.
pub fn refusal<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(r) = e.downcast_ref::<Refused>() {
            return Some(r);
        }
        cause = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_forbidden() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::808:808",
            "::10.0.0.1",
            "::127.0.0.1",
            "2002:c0a8:101::1",
            "2002:a00:1::1",
            "fec0::1",
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
        ] {
            assert!(forbidden(bad.parse().unwrap()).is_some(), "{bad}");
        }
        for good in [
            "203.0.113.7",
            "8.8.8.8",
            "2001:db8::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2a00:1450:4001::200e",
        ] {
            assert_eq!(forbidden(good.parse().unwrap()), None, "{good}");
        }
    }
}
