//! The coordination event as herald's host code sees it, and its JSON form.
//!
//! The JSON envelope (`{"v":1,"id","kind","origin","ts","body"}`) is a public
//! contract: mail servers, scripts and third-party Kafka clients produce it.
//! Field names are camelCase and times are Unix milliseconds (DESIGN.md,
//! "Events"). Unknown fields are tolerated so that a newer publisher does not
//! break an older node; a missing or mistyped field is an error naming it.

use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// The only envelope version this node understands.
pub const ENVELOPE_VERSION: u32 = 1;

/// Where a record came from. Events read from a file carry the file name as
/// the topic and the line number as the offset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub id: String,
    pub origin: String,
    /// Unix milliseconds.
    pub ts: u64,
    pub position: Position,
    pub body: Body,
}

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
    pub payload: String,
    /// Seconds; Web Push's TTL header.
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    #[serde(default)]
    pub urgency: Urgency,
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsCertificate {
    pub domains: Vec<String>,
    pub certificate_pem: String,
    pub private_key_pem: String,
    pub not_after: u64,
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
        KINDS[self.index()]
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
            Body::IpBlock(b) => Some(format!("ip:{}", b.ip)),
            Body::TlsCertificate(b) => b.domains.first().map(|d| format!("domain:{d}")),
            Body::RegistryChange(b) => Some(format!("registry:{}", b.object_type)),
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

    fn parse<'de, D>(kind: &str, body: D) -> Result<Body, String>
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
        };
        v.expect("event bodies always serialise")
    }
}

/// The envelope exactly as it travels.
#[derive(Serialize)]
struct Envelope {
    v: u32,
    id: String,
    kind: String,
    origin: String,
    ts: u64,
    body: Value,
}

/// The envelope as read: the body stays raw text until the kind is known.
#[derive(Deserialize)]
struct RawEnvelope<'a> {
    v: u32,
    id: String,
    kind: std::borrow::Cow<'a, str>,
    origin: String,
    ts: u64,
    #[serde(default, borrow)]
    body: Option<&'a serde_json::value::RawValue>,
}

/// Why bytes are not an event. The message names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

impl Event {
    /// Parse the JSON envelope. `position` is where the bytes were found.
    pub fn from_json(bytes: &[u8], position: Position) -> Result<Event, DecodeError> {
        let env: RawEnvelope =
            serde_json::from_slice(bytes).map_err(|e| DecodeError(format!("envelope: {e}")))?;
        if env.v != ENVELOPE_VERSION {
            return Err(DecodeError(format!(
                "envelope: field `v` is {}, this node reads version {ENVELOPE_VERSION}",
                env.v
            )));
        }
        if env.id.is_empty() {
            return Err(DecodeError("envelope: field `id` is empty".into()));
        }
        let body = match env.body.map(|b| b.get()) {
            None | Some("null") => "{}",
            Some(text) => text,
        };
        let body = Body::from_json_str(&env.kind, body).map_err(DecodeError)?;
        Ok(Event {
            id: env.id,
            origin: env.origin,
            ts: env.ts,
            position,
            body,
        })
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(Envelope {
            v: ENVELOPE_VERSION,
            id: self.id.clone(),
            kind: self.body.kind().to_string(),
            origin: self.origin.clone(),
            ts: self.ts,
            body: self.body.to_json(),
        })
        .expect("envelopes always serialise")
    }

    /// An event submitted by a client (`herald publish`, the local API) in
    /// the public JSON form; `v`, `id`, `origin` and `ts` may be left out and
    /// are filled in as for an event this node publishes.
    pub fn from_submitted(text: &str, origin: &str) -> Result<Event, DecodeError> {
        let mut v: Value =
            serde_json::from_str(text).map_err(|e| DecodeError(format!("not JSON: {e}")))?;
        let obj = v.as_object_mut().ok_or_else(|| {
            DecodeError("an event is a JSON object: {\"kind\":...,\"body\":{...}}".into())
        })?;
        obj.entry("v").or_insert(ENVELOPE_VERSION.into());
        obj.entry("id")
            .or_insert(uuid::Uuid::now_v7().to_string().into());
        obj.entry("origin").or_insert(origin.into());
        obj.entry("ts").or_insert(now_ms().into());
        Event::from_json(v.to_string().as_bytes(), Position::default())
    }

    /// A new event published by this node now.
    pub fn new(origin: &str, body: Body) -> Event {
        Event {
            id: uuid::Uuid::now_v7().to_string(),
            origin: origin.to_string(),
            ts: now_ms(),
            position: Position::default(),
            body,
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Event, DecodeError> {
        Event::from_json(s.as_bytes(), Position::default())
    }

    #[test]
    fn design_example_parses_and_round_trips() {
        let line = r#"{"v":1,"id":"0f3c","kind":"ip-block","origin":"node-2","ts":1795690000000,
            "body":{"ip":"203.0.113.7","action":"block","reason":"auth failures","expiresAt":1795693600000}}"#;
        let ev = parse(line).unwrap();
        assert_eq!(
            ev.body,
            Body::IpBlock(IpBlock {
                ip: "203.0.113.7".into(),
                action: BlockAction::Block,
                reason: "auth failures".into(),
                expires_at: Some(1795693600000),
            })
        );
        let again = Event::from_json(ev.to_json().to_string().as_bytes(), Position::default());
        assert_eq!(again.unwrap(), ev);
    }

    #[test]
    fn every_catalogue_body_parses() {
        let bodies = [
            (
                "state-change",
                r#"{"accountId":5,"changeId":300,"types":["Email","Mailbox","Thread"]}"#,
            ),
            (
                "push",
                r#"{"accountId":5,"endpoint":"https://push.example/sub/abc","payload":"x","ttl":60,"urgency":"normal"}"#,
            ),
            (
                "tls-certificate",
                r#"{"domains":["mail.example.com"],"certificatePem":"a","privateKeyPem":"b","notAfter":1}"#,
            ),
            (
                "cache-invalidate",
                r#"{"items":[{"cache":"access-token","id":7},{"cache":"email-negative","domainId":2,"hash":305419896}]}"#,
            ),
            ("settings-reload", "{}"),
            ("queue-status", r#"{"running":true}"#),
            (
                "registry-change",
                r#"{"action":"insert","objectType":17,"id":123456789012}"#,
            ),
        ];
        for (kind, body) in bodies {
            let line =
                format!(r#"{{"v":1,"id":"e","kind":"{kind}","origin":"n","ts":1,"body":{body}}}"#);
            let ev = parse(&line).unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(ev.body.kind(), kind);
            let back: Value = serde_json::from_str(body).unwrap();
            assert_eq!(ev.body.to_json(), back, "{kind} round trip");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse(
            r#"{"v":1,"id":"e","kind":"ip-block","origin":"n","ts":1,"body":{"action":"block"}}"#,
        )
        .unwrap_err();
        assert!(e.0.contains("ip-block") && e.0.contains("`ip`"), "{e}");
        let e = parse(r#"{"v":2,"id":"e","kind":"ip-block","origin":"n","ts":1,"body":{}}"#)
            .unwrap_err();
        assert!(e.0.contains("`v`"), "{e}");
        let e =
            parse(r#"{"v":1,"id":"e","kind":"nope","origin":"n","ts":1,"body":{}}"#).unwrap_err();
        assert!(e.0.contains("unknown kind `nope`"), "{e}");
        let e = parse(r#"{"v":1,"id":"e","kind":"state-change","origin":"n","ts":1,"body":{"accountId":1,"changeId":2,"types":["Mail"]}}"#)
            .unwrap_err();
        assert!(e.0.contains("unknown data type `Mail`"), "{e}");
    }

    #[test]
    fn unknown_data_type_bits_survive_json() {
        let t = DataTypes(1 | (1 << 40));
        let j = serde_json::to_string(&t).unwrap();
        assert_eq!(j, r#"["Email","bit40"]"#);
        assert_eq!(serde_json::from_str::<DataTypes>(&j).unwrap(), t);
    }
}
