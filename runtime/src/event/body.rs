//! The bodies of events, one type per kind, in their JSON form: field
//! names and values as publishers write them.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// What happened; the variant name in kebab-case is the event's `kind`.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    StateChange(StateChange),
    Push(Push),
    IpBlock(IpBlock),
    TlsCertificate(TlsCertificate),
    CacheInvalidate(CacheInvalidate),
    CacheInvalidateAll(CacheInvalidateAll),
    SettingsReload(Empty),
    QueueStatus(QueueStatus),
    QueueRefresh(Empty),
    RegistryChange(RegistryChange),
    CalendarAlert(CalendarAlert),
    EmailPush(EmailPush),
    PushServerUpdate(PushServerUpdate),
    PushSubscriptionGone(PushSubscriptionGone),
    /// herald's own round-trip probe: not in [`KINDS`], never handed to a
    /// handler (see [`HOST_KINDS`]).
    Probe(super::probe::Probe),
}

/// Every event kind, in the order of the WIT `body` variant.
pub const KINDS: &[&str] = &[
    "state-change",
    "push",
    "ip-block",
    "tls-certificate",
    "cache-invalidate",
    "cache-invalidate-all",
    "settings-reload",
    "queue-status",
    "queue-refresh",
    "registry-change",
    "calendar-alert",
    "email-push",
    "push-server-update",
    "push-subscription-gone",
];

/// Kinds only herald itself publishes and reads: no manifest may subscribe
/// to them or publish them, and the API refuses them. They follow [`KINDS`]
/// in [`Body::index`].
pub const HOST_KINDS: &[&str] = &["probe"];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateChange {
    pub account_id: u32,
    pub change_id: u64,
    pub types: DataTypes,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Urgency {
    VeryLow,
    Low,
    #[default]
    Normal,
    High,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Push {
    pub account_id: u32,
    pub endpoint: String,
    /// What the user agent receives: encrypted for `keys`, and not sent at
    /// all without them.
    #[serde(default)]
    pub payload: String,
    /// Seconds; Web Push's TTL header.
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    #[serde(default)]
    pub urgency: Urgency,
    /// The subscription's keys, as browsers (`subscription.toJSON().keys`)
    /// and JMAP clients (`PushSubscription.keys`) give them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<PushKeys>,
    /// Web Push's `Topic` header: a newer message with the same topic
    /// replaces an undelivered one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

/// A push subscription's keys, base64url: `p256dh`, the user agent's P-256
/// public key (65 bytes, uncompressed), and `auth`, its 16-byte
/// authentication secret (RFC 8291).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushKeys {
    pub p256dh: String,
    pub auth: String,
}

fn default_ttl() -> u32 {
    60
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlockAction {
    Block,
    Unblock,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpBlock {
    pub ip: String,
    pub action: BlockAction,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub expires_at: Option<u64>,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsCertificate {
    pub domains: Vec<String>,
    pub certificate_pem: String,
    /// The leaf's private key: sealed to the cluster (age armor, as
    /// `herald cert publish` writes it; required when `trust` is on), or a
    /// plaintext PEM key.
    pub private_key_pem: String,
    pub not_after: u64,
}

/// Never prints the key: events are logged with `{:?}`.
impl std::fmt::Debug for TlsCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = if herald_guest::x509::is_sealed(&self.private_key_pem) {
            "<sealed>"
        } else {
            "<plaintext, withheld>"
        };
        f.debug_struct("TlsCertificate")
            .field("domains", &self.domains)
            .field("certificate_pem", &self.certificate_pem)
            .field("private_key_pem", &key)
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// One cached item to drop; Stalwart's cache markers 0-11 in that order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheItem {
    AccessToken(u32),
    DavResources(u32),
    Domain(u32),
    Account(u32),
    DkimSignature(u32),
    Tenant(u32),
    Role(u32),
    List(u32),
    DomainLogo(u32),
    TenantLogo(u32),
    EmailNegative { domain_id: u32, hash: u32 },
    DomainNegative(u32),
}

/// Cache names in marker order (the JSON `cache` field).
pub const CACHE_NAMES: [&str; 12] = [
    "access-token",
    "dav-resources",
    "domain",
    "account",
    "dkim-signature",
    "tenant",
    "role",
    "list",
    "domain-logo",
    "tenant-logo",
    "email-negative",
    "domain-negative",
];

impl CacheItem {
    /// Stalwart's marker byte for this cache.
    pub fn marker(&self) -> u8 {
        match self {
            CacheItem::AccessToken(_) => 0,
            CacheItem::DavResources(_) => 1,
            CacheItem::Domain(_) => 2,
            CacheItem::Account(_) => 3,
            CacheItem::DkimSignature(_) => 4,
            CacheItem::Tenant(_) => 5,
            CacheItem::Role(_) => 6,
            CacheItem::List(_) => 7,
            CacheItem::DomainLogo(_) => 8,
            CacheItem::TenantLogo(_) => 9,
            CacheItem::EmailNegative { .. } => 10,
            CacheItem::DomainNegative(_) => 11,
        }
    }

    /// The item for a marker and id (not for marker 10, which has two fields).
    pub fn from_marker(marker: u8, id: u32) -> Option<CacheItem> {
        Some(match marker {
            0 => CacheItem::AccessToken(id),
            1 => CacheItem::DavResources(id),
            2 => CacheItem::Domain(id),
            3 => CacheItem::Account(id),
            4 => CacheItem::DkimSignature(id),
            5 => CacheItem::Tenant(id),
            6 => CacheItem::Role(id),
            7 => CacheItem::List(id),
            8 => CacheItem::DomainLogo(id),
            9 => CacheItem::TenantLogo(id),
            11 => CacheItem::DomainNegative(id),
            _ => return None,
        })
    }

    /// The id of a single-id item.
    pub fn id(&self) -> Option<u32> {
        match *self {
            CacheItem::AccessToken(id)
            | CacheItem::DavResources(id)
            | CacheItem::Domain(id)
            | CacheItem::Account(id)
            | CacheItem::DkimSignature(id)
            | CacheItem::Tenant(id)
            | CacheItem::Role(id)
            | CacheItem::List(id)
            | CacheItem::DomainLogo(id)
            | CacheItem::TenantLogo(id)
            | CacheItem::DomainNegative(id) => Some(id),
            CacheItem::EmailNegative { .. } => None,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CacheItemJson {
    cache: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    domain_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hash: Option<u32>,
}

impl Serialize for CacheItem {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (domain_id, hash) = match *self {
            CacheItem::EmailNegative { domain_id, hash } => (Some(domain_id), Some(hash)),
            _ => (None, None),
        };
        CacheItemJson {
            cache: CACHE_NAMES[self.marker() as usize].to_string(),
            id: self.id(),
            domain_id,
            hash,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for CacheItem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let j = CacheItemJson::deserialize(d)?;
        let marker = CACHE_NAMES
            .iter()
            .position(|n| *n == j.cache)
            .ok_or_else(|| {
                D::Error::custom(format!(
                    "unknown cache `{}`, expected one of {}",
                    j.cache,
                    CACHE_NAMES.join(", ")
                ))
            })? as u8;
        if marker == 10 {
            match (j.domain_id, j.hash) {
                (Some(domain_id), Some(hash)) => Ok(CacheItem::EmailNegative { domain_id, hash }),
                _ => Err(D::Error::custom(
                    "cache `email-negative` needs `domainId` and `hash`",
                )),
            }
        } else {
            let id =
                j.id.ok_or_else(|| D::Error::custom(format!("cache `{}` needs `id`", j.cache)))?;
            Ok(CacheItem::from_marker(marker, id).expect("marker from CACHE_NAMES"))
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheInvalidate {
    pub items: Vec<CacheItem>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheScope {
    All,
    Negative,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheInvalidateAll {
    pub scope: CacheScope,
}

/// A body with no fields: `{}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStatus {
    pub running: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegistryAction {
    Insert,
    Delete,
    Reload,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryChange {
    pub action: RegistryAction,
    pub object_type: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CalendarAlert {
    pub account_id: u32,
    pub event_id: u32,
    #[serde(default)]
    pub recurrence_id: Option<i64>,
    pub uid: String,
    pub alert_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmailPush {
    pub account_id: u32,
    pub email_id: u32,
    pub change_id: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PushServerUpdate {
    pub account_id: u32,
}

/// Published by the node whose push delivery got 404/410.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PushSubscriptionGone {
    pub account_id: u32,
    pub endpoint: String,
}

/// JMAP data type names, bit n = name n (Stalwart's numbering).
pub const DATA_TYPE_NAMES: [&str; 23] = [
    "Email",
    "EmailDelivery",
    "EmailSubmission",
    "Mailbox",
    "Thread",
    "Identity",
    "Core",
    "PushSubscription",
    "SearchSnippet",
    "VacationResponse",
    "MDN",
    "Quota",
    "SieveScript",
    "Calendar",
    "CalendarEvent",
    "CalendarEventNotification",
    "AddressBook",
    "ContactCard",
    "FileNode",
    "Principal",
    "ShareNotification",
    "ParticipantIdentity",
    "CalendarAlert",
];

/// A set of data types. Bits past the known names are kept (a newer Stalwart
/// may set them) so that a decoded record re-encodes to the same bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DataTypes(pub u64);

impl DataTypes {
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        DATA_TYPE_NAMES
            .iter()
            .enumerate()
            .filter(|(bit, _)| self.0 & (1 << bit) != 0)
            .map(|(_, name)| *name)
    }

    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut bits = 0u64;
        for name in names {
            let bit = DATA_TYPE_NAMES
                .iter()
                .position(|n| *n == name)
                .ok_or_else(|| format!("unknown data type `{name}`"))?;
            bits |= 1 << bit;
        }
        Ok(DataTypes(bits))
    }
}

impl Serialize for DataTypes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut names: Vec<String> = self.names().map(str::to_string).collect();
        // Unknown bits survive a JSON round trip as "bit<n>".
        for bit in DATA_TYPE_NAMES.len()..64 {
            if self.0 & (1 << bit) != 0 {
                names.push(format!("bit{bit}"));
            }
        }
        names.serialize(s)
    }
}

impl<'de> Deserialize<'de> for DataTypes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        let mut bits = 0u64;
        for name in &names {
            if let Some(bit) = name
                .strip_prefix("bit")
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|b| *b < 64)
            {
                bits |= 1 << bit;
            } else {
                bits |= DataTypes::from_names([name.as_str()])
                    .map_err(D::Error::custom)?
                    .0;
            }
        }
        Ok(DataTypes(bits))
    }
}

impl Body {
    /// The event's kind, as in the JSON envelope and manifests.
    pub fn kind(&self) -> &'static str {
        let i = self.index();
        KINDS.get(i).unwrap_or_else(|| &HOST_KINDS[i - KINDS.len()])
    }

    /// Whether this is one of herald's own kinds ([`HOST_KINDS`]).
    pub fn is_host_only(&self) -> bool {
        self.index() >= KINDS.len()
    }

    /// Position of the kind in [`KINDS`] (and in the WIT variant).
    pub fn index(&self) -> usize {
        match self {
            Body::StateChange(_) => 0,
            Body::Push(_) => 1,
            Body::IpBlock(_) => 2,
            Body::TlsCertificate(_) => 3,
            Body::CacheInvalidate(_) => 4,
            Body::CacheInvalidateAll(_) => 5,
            Body::SettingsReload(_) => 6,
            Body::QueueStatus(_) => 7,
            Body::QueueRefresh(_) => 8,
            Body::RegistryChange(_) => 9,
            Body::CalendarAlert(_) => 10,
            Body::EmailPush(_) => 11,
            Body::PushServerUpdate(_) => 12,
            Body::PushSubscriptionGone(_) => 13,
            Body::Probe(_) => 14,
        }
    }

    /// The record key: the entity the event is about, so that Kafka keeps
    /// events of one entity in order (and compaction keeps its latest state).
    pub fn entity_key(&self) -> Option<String> {
        match self {
            Body::StateChange(b) => Some(format!("account:{}", b.account_id)),
            Body::Push(b) => Some(format!("account:{}", b.account_id)),
            Body::EmailPush(b) => Some(format!("account:{}", b.account_id)),
            Body::CalendarAlert(b) => Some(format!("account:{}", b.account_id)),
            Body::PushServerUpdate(b) => Some(format!("account:{}", b.account_id)),
            Body::PushSubscriptionGone(b) => Some(format!("account:{}", b.account_id)),
            // One key per entity whatever its spelling (see `version`): an
            // address that does not parse keeps its text, and changes nothing.
            Body::IpBlock(b) => Some(match super::version::network(&b.ip) {
                Some(net) => super::Entity::Network(net).key(),
                None => format!("ip:{}", b.ip),
            }),
            Body::TlsCertificate(_) => self.entities().first().map(super::Entity::key),
            Body::RegistryChange(b) => Some(format!("registry:{}", b.object_type)),
            // One key per asker: on the state topic, compaction keeps each
            // node's last probe or answer and nothing more.
            Body::Probe(b) => Some(format!(
                "probe:{}",
                b.answer.as_ref().map_or(&b.asker, |a| &a.node)
            )),
            _ => None,
        }
    }

    /// Parse a body given its kind. Errors name the kind and the field.
    pub fn from_json(kind: &str, body: Value) -> Result<Body, String> {
        Body::parse(kind, body)
    }

    /// Parse a body from its JSON text (the hot path: no intermediate value).
    pub fn from_json_str(kind: &str, body: &str) -> Result<Body, String> {
        let mut de = serde_json::Deserializer::from_str(body);
        let parsed = Body::parse(kind, &mut de)?;
        de.end().map_err(|e| format!("body of `{kind}`: {e}"))?;
        Ok(parsed)
    }

    pub(super) fn parse<'de, D>(kind: &str, body: D) -> Result<Body, String>
    where
        D: serde::Deserializer<'de>,
        D::Error: std::fmt::Display,
    {
        fn parse<'de, T: Deserialize<'de>, D>(kind: &str, d: D) -> Result<T, String>
        where
            D: serde::Deserializer<'de>,
            D::Error: std::fmt::Display,
        {
            T::deserialize(d).map_err(|e| format!("body of `{kind}`: {e}"))
        }
        Ok(match kind {
            "state-change" => Body::StateChange(parse(kind, body)?),
            "push" => Body::Push(parse(kind, body)?),
            "ip-block" => Body::IpBlock(parse(kind, body)?),
            "tls-certificate" => Body::TlsCertificate(parse(kind, body)?),
            "cache-invalidate" => Body::CacheInvalidate(parse(kind, body)?),
            "cache-invalidate-all" => Body::CacheInvalidateAll(parse(kind, body)?),
            "settings-reload" => Body::SettingsReload(parse(kind, body)?),
            "queue-status" => Body::QueueStatus(parse(kind, body)?),
            "queue-refresh" => Body::QueueRefresh(parse(kind, body)?),
            "registry-change" => Body::RegistryChange(parse(kind, body)?),
            "calendar-alert" => Body::CalendarAlert(parse(kind, body)?),
            "email-push" => Body::EmailPush(parse(kind, body)?),
            "push-server-update" => Body::PushServerUpdate(parse(kind, body)?),
            "push-subscription-gone" => Body::PushSubscriptionGone(parse(kind, body)?),
            "probe" => Body::Probe(parse(kind, body)?),
            other => {
                return Err(format!(
                    "unknown kind `{other}`, expected one of {}",
                    KINDS.join(", ")
                ));
            }
        })
    }

    pub fn to_json(&self) -> Value {
        let v = match self {
            Body::StateChange(b) => serde_json::to_value(b),
            Body::Push(b) => serde_json::to_value(b),
            Body::IpBlock(b) => serde_json::to_value(b),
            Body::TlsCertificate(b) => serde_json::to_value(b),
            Body::CacheInvalidate(b) => serde_json::to_value(b),
            Body::CacheInvalidateAll(b) => serde_json::to_value(b),
            Body::SettingsReload(b) | Body::QueueRefresh(b) => serde_json::to_value(b),
            Body::QueueStatus(b) => serde_json::to_value(b),
            Body::RegistryChange(b) => serde_json::to_value(b),
            Body::CalendarAlert(b) => serde_json::to_value(b),
            Body::EmailPush(b) => serde_json::to_value(b),
            Body::PushServerUpdate(b) => serde_json::to_value(b),
            Body::PushSubscriptionGone(b) => serde_json::to_value(b),
            Body::Probe(b) => serde_json::to_value(b),
        };
        v.expect("event bodies always serialise")
    }
}
