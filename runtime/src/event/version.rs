//! Entities and their versions: what makes every node end with the same
//! blocklist and certificates whatever order, replays or spellings the
//! events arrive in.
//!
//! A stateful kind (`ip-block`, `tls-certificate`) describes the state of an
//! *entity* (a network, a domain). Its events are last-writer-wins writes:
//! each carries a [`Version`], the publisher's `ts` with the event id as a
//! tie-break, and a node applies a write only when it is newer than the
//! version it holds for that entity. Unblocks and expiries keep their version
//! (a tombstone), so an older block replayed later cannot bring a ban back.
//! Every spelling of one entity has one [`Entity`] and one record key.

use std::fmt;
use std::sync::Arc;

use herald_guest::net::{IpNet, canonical, read_network, unmap};
use serde::{Deserialize, Serialize};

use super::Body;

/// Which of two writes to one entity is newer: the publisher's timestamp,
/// then the event id, compared as bytes. Two events with the same version
/// are the same event (ids are unique per publisher), so no order of
/// arrival can change which one wins.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    pub ts: u64,
    pub id: Arc<str>,
}

impl Version {
    pub fn new(ts: u64, id: &str) -> Version {
        Version { ts, id: id.into() }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ts, self.id)
    }
}

/// Whether a write with version `new` may replace state held at `held`.
/// An unversioned write (an effect no event of the call accounts for) only
/// replaces unversioned state: it can never undo a decision with a version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Newer: apply it.
    Newer,
    /// The very same write again (a replay): nothing to do.
    Same,
    /// Older than what is held: not applied, counted as stale.
    Stale,
}

pub fn order(new: Option<&Version>, held: Option<&Version>) -> Order {
    match (new, held) {
        (_, None) => Order::Newer,
        (None, Some(_)) => Order::Stale,
        (Some(n), Some(h)) if n > h => Order::Newer,
        (Some(n), Some(h)) if n == h => Order::Same,
        _ => Order::Stale,
    }
}

/// One thing whose state the cluster agrees on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entity {
    /// A network, canonical: host bits clear, IPv4-mapped IPv6 as IPv4.
    Network(IpNet),
    /// A domain, lower-case, without a trailing dot.
    Domain(String),
}

impl Entity {
    /// The record key every spelling of this entity is published under.
    pub fn key(&self) -> String {
        match self {
            Entity::Network(net) => format!("ip:{}", canonical(net)),
            Entity::Domain(d) => format!("domain:{d}"),
        }
    }
}

/// The network `ip` names, canonical: `203.0.113.7`, `203.0.113.7/32` and
/// `::ffff:203.0.113.7` are one network. None if it is not one.
pub fn network(ip: &str) -> Option<IpNet> {
    read_network(ip.trim()).map(|n| unmap(n.trunc()))
}

/// A domain as the certificate store keys it.
pub fn domain(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

impl Body {
    /// Whether this kind's effect is state (a last-writer-wins register per
    /// entity) rather than a message.
    pub fn is_stateful(&self) -> bool {
        matches!(self, Body::IpBlock(_) | Body::TlsCertificate(_))
    }

    /// The entities this event writes: one network, or every domain of a
    /// certificate (sorted, without repeats). Empty for transient kinds and
    /// for an address that does not parse (such an event changes nothing).
    pub fn entities(&self) -> Vec<Entity> {
        match self {
            Body::IpBlock(b) => network(&b.ip).map(Entity::Network).into_iter().collect(),
            Body::TlsCertificate(c) => {
                let mut d: Vec<String> = c.domains.iter().map(|d| domain(d)).collect();
                d.sort();
                d.dedup();
                d.into_iter().map(Entity::Domain).collect()
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_a_network_is_one_entity() {
        let key = |ip: &str| network(ip).map(|n| Entity::Network(n).key());
        for ip in [
            "203.0.113.7",
            "203.0.113.7/32",
            "::ffff:203.0.113.7",
            "::ffff:203.0.113.7/128",
            " 203.0.113.7 ",
        ] {
            assert_eq!(key(ip).as_deref(), Some("ip:203.0.113.7"), "{ip}");
        }
        assert_eq!(key("2001:DB8::/48").as_deref(), Some("ip:2001:db8::/48"));
        assert_eq!(key("2001:db8::1/128").as_deref(), Some("ip:2001:db8::1"));
        assert_eq!(
            key("::ffff:198.51.100.0/120").as_deref(),
            Some("ip:198.51.100.0/24")
        );
        assert_eq!(
            key("198.51.100.9/24").as_deref(),
            Some("ip:198.51.100.0/24")
        );
        assert_eq!(key("not an address"), None);
    }

    #[test]
    fn versions_order_by_time_then_id_and_unversioned_never_wins() {
        let v = |ts, id: &str| Some(Version::new(ts, id));
        assert_eq!(order(v(2, "a").as_ref(), v(1, "z").as_ref()), Order::Newer);
        assert_eq!(order(v(1, "b").as_ref(), v(1, "a").as_ref()), Order::Newer);
        assert_eq!(order(v(1, "a").as_ref(), v(1, "a").as_ref()), Order::Same);
        assert_eq!(order(v(1, "a").as_ref(), v(1, "b").as_ref()), Order::Stale);
        assert_eq!(order(None, v(1, "a").as_ref()), Order::Stale);
        assert_eq!(order(None, None), Order::Newer);
        assert_eq!(order(v(0, "").as_ref(), None), Order::Newer);
    }
}
