//! What the node refuses to block, whatever a handler or an event says.
//!
//! A block reaches every node of the cluster, so one wrong or hostile event
//! could cut a whole mail cluster off from its users, its peers or its
//! broker. The store therefore checks every network itself, after any
//! handler did: it never blocks addresses that cannot be a client
//! (unspecified, loopback, link-local, multicast, broadcast), the node's own
//! addresses, the brokers', or the deployer's `blocklist.protect` list, and
//! never a network wider than `blocklist.minPrefixV4` / `minPrefixV6`. An
//! IPv4-mapped IPv6 network (`::ffff:a.b.c.d/n`) is judged as the IPv4
//! network it stands for, and any IPv6 network that covers addresses
//! carrying IPv4 (mapped, compatible, NAT64, 6to4, Teredo) is also judged
//! by each IPv4 range it covers. Unblocking is never refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use herald_guest::net::{embedded_v4, overlaps, unmap};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The blocklist's limits (`blocklist` in the config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The shortest IPv4 prefix that may be blocked (default 16).
    pub min_prefix_v4: u8,
    /// The shortest IPv6 prefix that may be blocked (default 32).
    pub min_prefix_v6: u8,
    /// Networks never blocked, each with why (the deployer's list, the
    /// node's own addresses, the brokers').
    pub protect: Vec<(IpNet, String)>,
    /// The most entries the blocklist holds (default 100 000).
    pub max_entries: usize,
    /// The longest reason kept, in bytes; longer ones are cut (default 256).
    pub max_reason: usize,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            min_prefix_v4: 16,
            min_prefix_v6: 32,
            protect: Vec::new(),
            max_entries: 100_000,
            max_reason: 256,
        }
    }
}

/// Why a network was refused. Every case is the node's policy: asking
/// again with the same network never works.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("refusing to block {network}: it covers {what} ({range})")]
    Protected {
        network: String,
        what: String,
        range: IpNet,
    },
    #[error(
        "refusing to block {network}: a /{prefix} is wider than the blocklist allows \
         (blocklist.{setting} = {min})"
    )]
    TooWide {
        network: String,
        prefix: u8,
        min: u8,
        setting: &'static str,
    },
    #[error(
        "refusing to block {network}: it covers {carried} as {how} addresses, wider than the \
         blocklist allows (blocklist.minPrefixV4 = {min})"
    )]
    Embeds {
        network: String,
        carried: Ipv4Net,
        how: String,
        min: u8,
    },
    #[error("refusing to block {network}: the blocklist is full (blocklist.maxEntries = {max})")]
    Full { network: String, max: usize },
}

/// Ranges no client ever comes from.
const RESERVED: [(IpNet, &str); 9] = {
    const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> IpNet {
        IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), prefix))
    }
    const fn v6(addr: Ipv6Addr, prefix: u8) -> IpNet {
        IpNet::V6(Ipv6Net::new_assert(addr, prefix))
    }
    [
        (v4(0, 0, 0, 0, 8), "the unspecified / this-network range"),
        (v4(127, 0, 0, 0, 8), "loopback"),
        (v4(169, 254, 0, 0, 16), "link-local addresses"),
        (v4(224, 0, 0, 0, 4), "multicast"),
        (v4(255, 255, 255, 255, 32), "the broadcast address"),
        (v6(Ipv6Addr::UNSPECIFIED, 128), "the unspecified address"),
        (v6(Ipv6Addr::LOCALHOST, 128), "loopback"),
        (
            v6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
            "link-local addresses",
        ),
        (
            v6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
            "multicast",
        ),
    ]
};

impl Policy {
    /// Whether `net` (host bits clear) may be blocked. A refusal names it
    /// in canonical text.
    pub fn check(&self, net: &IpNet) -> Result<(), Refusal> {
        // The same rules as the handlers' (`herald_guest::net`).
        let judged = unmap(*net);
        let (min, setting) = match judged {
            IpNet::V4(_) => (self.min_prefix_v4, "minPrefixV4"),
            IpNet::V6(_) => (self.min_prefix_v6, "minPrefixV6"),
        };
        // Every block is checked here, so nothing is allocated unless it is
        // refused.
        for (range, what) in self.protected() {
            if overlaps(&judged, range) || (judged != *net && overlaps(net, range)) {
                return Err(Refusal::Protected {
                    network: herald_guest::net::canonical(net),
                    what: what.to_string(),
                    range: *range,
                });
            }
        }
        if judged.prefix_len() < min {
            return Err(Refusal::TooWide {
                network: herald_guest::net::canonical(net),
                prefix: judged.prefix_len(),
                min,
                setting,
            });
        }
        if let IpNet::V6(v6) = judged {
            // An IPv6 network is judged by every IPv4 range it carries too
            // (`::fffe:0:0/95` holds all of IPv4 as mapped addresses, which
            // dual-stack sockets report IPv4 clients as), by the same rules.
            for (v4, how) in embedded_v4(&v6) {
                self.check_embedded(net, v4, how)?;
            }
        }
        Ok(())
    }

    /// Every range never blocked, with why: the reserved ones, then the
    /// deployer's and the node's own.
    fn protected(&self) -> impl Iterator<Item = (&IpNet, &str)> {
        RESERVED.iter().map(|(range, what)| (range, *what)).chain(
            self.protect
                .iter()
                .map(|(range, what)| (range, what.as_str())),
        )
    }

    /// The IPv4 rules for `v4`, which `net` covers as `how` addresses.
    fn check_embedded(&self, net: &IpNet, v4: Ipv4Net, how: &str) -> Result<(), Refusal> {
        let carried = IpNet::V4(v4);
        for (range, what) in self.protected() {
            if overlaps(&carried, range) {
                return Err(Refusal::Protected {
                    network: herald_guest::net::canonical(net),
                    what: format!("{what} as {how} addresses"),
                    range: *range,
                });
            }
        }
        if v4.prefix_len() < self.min_prefix_v4 {
            return Err(Refusal::Embeds {
                network: herald_guest::net::canonical(net),
                carried: v4,
                how: how.to_string(),
                min: self.min_prefix_v4,
            });
        }
        Ok(())
    }

    /// Protect `addr` (one of the node's own, or a broker's) as `what`.
    pub fn protect_address(&mut self, addr: IpAddr, what: &str) {
        let net = IpNet::from(addr);
        if !self.protect.iter().any(|(n, _)| *n == net) {
            self.protect.push((net, what.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(policy: &Policy, network: &str) -> Result<(), Refusal> {
        let net: IpNet = network
            .parse()
            .or_else(|_| network.parse::<IpAddr>().map(IpNet::from))
            .unwrap();
        policy.check(&net)
    }

    #[test]
    fn refuses_what_no_client_is_and_what_is_too_wide() {
        let p = Policy::default();
        for bad in [
            "0.0.0.0/0",
            "::/0",
            "0.0.0.0",
            "127.0.0.1",
            "127.0.0.0/8",
            "169.254.1.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:0:0/96",
            "::fffe:0:0/95",
            "::/64",
            "64:ff9b::/96",
            "64:ff9b::7f00:1",
            "64:ff9b::/64",
            "64:ff9b:1::/48",
            "2002::/16",
            "2002:7f00:1::/48",
            "2002:c000::/20",
            "2001::/32",
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
            "128.0.0.0/1",
            "64.0.0.0/3",
            "126.0.0.0/8",
            "10.0.0.0/8",
            "2001:db8::/16",
        ] {
            assert!(check(&p, bad).is_err(), "{bad} must be refused");
        }
        for good in [
            "203.0.113.7",
            "198.51.100.0/24",
            "10.1.0.0/16",
            "2001:db8::/32",
            "2001:db8::1",
            "::ffff:203.0.113.7",
            "64:ff9b::cb00:7107",
            "2002:cb00:7100::/40",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        ] {
            assert_eq!(check(&p, good), Ok(()), "{good}");
        }
    }

    #[test]
    fn protects_the_configured_networks_and_the_nodes_own_addresses() {
        let mut p = Policy {
            protect: vec![("192.0.2.0/24".parse().unwrap(), "blocklist.protect".into())],
            ..Policy::default()
        };
        p.protect_address("198.51.100.10".parse().unwrap(), "this node's address");
        let err = check(&p, "192.0.2.55").unwrap_err().to_string();
        assert!(err.contains("blocklist.protect"), "{err}");
        let err = check(&p, "198.51.100.0/24").unwrap_err().to_string();
        assert!(err.contains("this node's address"), "{err}");
        assert_eq!(check(&p, "198.51.100.11"), Ok(()));
        // Operators may lower the minimum prefix.
        let wide = Policy {
            min_prefix_v4: 8,
            ..Policy::default()
        };
        assert_eq!(check(&wide, "11.0.0.0/8"), Ok(()));
    }
}
