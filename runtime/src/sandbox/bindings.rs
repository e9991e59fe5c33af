//! Host bindings generated from `wit/`, and the conversions between
//! herald's event model and the generated types. Everything generated lives
//! here so the rest of the sandbox reads like ordinary Rust.

use crate::event as ev;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "handler",
    // Capabilities that may wait (network, producer, disk) are async. The
    // rest answer from or change memory and stay synchronous, which spares
    // a boxed future and a trip through the fiber per call: log, config,
    // and the immediate effects (IDLE wake-ups, blocks), whose durability
    // comes from the flush before each commit.
    imports: {
        "herald:coordination/push": async,
        "herald:coordination/certificates": async,
        "herald:coordination/publish": async,
    },
    exports: { default: async },
    // Events are lowered into the guest straight from the host's strings.
    ownership: Borrowing { duplicate_if_necessary: true },
});

pub use self::herald::coordination::types as wit;

/// Bit n of Stalwart's data-type set is flag n, in WIT order.
const DATA_TYPE_FLAGS: [wit::DataTypes; 23] = [
    wit::DataTypes::EMAIL,
    wit::DataTypes::EMAIL_DELIVERY,
    wit::DataTypes::EMAIL_SUBMISSION,
    wit::DataTypes::MAILBOX,
    wit::DataTypes::THREAD,
    wit::DataTypes::IDENTITY,
    wit::DataTypes::CORE,
    wit::DataTypes::PUSH_SUBSCRIPTION,
    wit::DataTypes::SEARCH_SNIPPET,
    wit::DataTypes::VACATION_RESPONSE,
    wit::DataTypes::MDN,
    wit::DataTypes::QUOTA,
    wit::DataTypes::SIEVE_SCRIPT,
    wit::DataTypes::CALENDAR,
    wit::DataTypes::CALENDAR_EVENT,
    wit::DataTypes::CALENDAR_EVENT_NOTIFICATION,
    wit::DataTypes::ADDRESS_BOOK,
    wit::DataTypes::CONTACT_CARD,
    wit::DataTypes::FILE_NODE,
    wit::DataTypes::PRINCIPAL,
    wit::DataTypes::SHARE_NOTIFICATION,
    wit::DataTypes::PARTICIPANT_IDENTITY,
    wit::DataTypes::CALENDAR_ALERT,
];

pub fn data_types_to_wit(t: ev::DataTypes) -> wit::DataTypes {
    let mut flags = wit::DataTypes::empty();
    for (bit, flag) in DATA_TYPE_FLAGS.iter().enumerate() {
        if t.0 & (1 << bit) != 0 {
            flags |= *flag;
        }
    }
    flags
}

pub fn data_types_from_wit(flags: wit::DataTypes) -> ev::DataTypes {
    let mut bits = 0u64;
    for (bit, flag) in DATA_TYPE_FLAGS.iter().enumerate() {
        if flags.contains(*flag) {
            bits |= 1 << bit;
        }
    }
    ev::DataTypes(bits)
}

pub fn urgency_to_wit(u: ev::Urgency) -> wit::Urgency {
    match u {
        ev::Urgency::VeryLow => wit::Urgency::VeryLow,
        ev::Urgency::Low => wit::Urgency::Low,
        ev::Urgency::Normal => wit::Urgency::Normal,
        ev::Urgency::High => wit::Urgency::High,
    }
}

pub fn urgency_from_wit(u: wit::Urgency) -> ev::Urgency {
    match u {
        wit::Urgency::VeryLow => ev::Urgency::VeryLow,
        wit::Urgency::Low => ev::Urgency::Low,
        wit::Urgency::Normal => ev::Urgency::Normal,
        wit::Urgency::High => ev::Urgency::High,
    }
}

fn cache_item_to_wit(item: &ev::CacheItem) -> wit::CacheItem {
    use ev::CacheItem as C;
    use wit::CacheItem as W;
    match *item {
        C::AccessToken(id) => W::AccessToken(id),
        C::DavResources(id) => W::DavResources(id),
        C::Domain(id) => W::Domain(id),
        C::Account(id) => W::Account(id),
        C::DkimSignature(id) => W::DkimSignature(id),
        C::Tenant(id) => W::Tenant(id),
        C::Role(id) => W::Role(id),
        C::List(id) => W::List(id),
        C::DomainLogo(id) => W::DomainLogo(id),
        C::TenantLogo(id) => W::TenantLogo(id),
        C::EmailNegative { domain_id, hash } => {
            W::EmailNegative(wit::NegativeEmail { domain_id, hash })
        }
        C::DomainNegative(id) => W::DomainNegative(id),
    }
}

fn cache_item_from_wit(item: &wit::CacheItem) -> ev::CacheItem {
    use ev::CacheItem as C;
    use wit::CacheItem as W;
    match *item {
        W::AccessToken(id) => C::AccessToken(id),
        W::DavResources(id) => C::DavResources(id),
        W::Domain(id) => C::Domain(id),
        W::Account(id) => C::Account(id),
        W::DkimSignature(id) => C::DkimSignature(id),
        W::Tenant(id) => C::Tenant(id),
        W::Role(id) => C::Role(id),
        W::List(id) => C::List(id),
        W::DomainLogo(id) => C::DomainLogo(id),
        W::TenantLogo(id) => C::TenantLogo(id),
        W::EmailNegative(n) => C::EmailNegative {
            domain_id: n.domain_id,
            hash: n.hash,
        },
        W::DomainNegative(id) => C::DomainNegative(id),
    }
}

fn registry_action_to_wit(a: ev::RegistryAction) -> wit::RegistryAction {
    match a {
        ev::RegistryAction::Insert => wit::RegistryAction::Insert,
        ev::RegistryAction::Delete => wit::RegistryAction::Delete,
        ev::RegistryAction::Reload => wit::RegistryAction::Reload,
    }
}

fn registry_action_from_wit(a: wit::RegistryAction) -> ev::RegistryAction {
    match a {
        wit::RegistryAction::Insert => ev::RegistryAction::Insert,
        wit::RegistryAction::Delete => ev::RegistryAction::Delete,
        wit::RegistryAction::Reload => ev::RegistryAction::Reload,
    }
}

/// What a borrowed WIT event needs beside the host event: lists whose
/// element type differs between the two (`&str` for `String`, WIT cache
/// items). Empty for most kinds.
#[derive(Default)]
pub struct Scratch<'a> {
    domains: Vec<&'a str>,
    items: Vec<wit::CacheItem>,
}

impl<'a> Scratch<'a> {
    pub fn for_body(body: &'a ev::Body) -> Scratch<'a> {
        match body {
            ev::Body::TlsCertificate(b) => Scratch {
                domains: b.domains.iter().map(String::as_str).collect(),
                items: Vec::new(),
            },
            ev::Body::CacheInvalidate(b) => Scratch {
                domains: Vec::new(),
                items: b.items.iter().map(cache_item_to_wit).collect(),
            },
            _ => Scratch::default(),
        }
    }
}

/// The body as the guest receives it, borrowing the host's strings so that
/// nothing is copied before the canonical ABI copies it into the guest.
pub fn body_to_wit<'a>(body: &'a ev::Body, scratch: &'a Scratch<'a>) -> wit::BodyParam<'a> {
    use ev::Body as B;
    use wit::BodyParam as W;
    match body {
        B::StateChange(b) => W::StateChange(wit::StateChange {
            account_id: b.account_id,
            change_id: b.change_id,
            types: data_types_to_wit(b.types),
        }),
        B::Push(b) => W::Push(wit::PushParam {
            account_id: b.account_id,
            endpoint: &b.endpoint,
            payload: &b.payload,
            ttl: b.ttl,
            urgency: urgency_to_wit(b.urgency),
            keys: b.keys.as_ref().map(|k| wit::PushKeysParam {
                p256dh: &k.p256dh,
                auth: &k.auth,
            }),
            topic: b.topic.as_deref(),
        }),
        B::IpBlock(b) => W::IpBlock(wit::IpBlockParam {
            ip: &b.ip,
            action: match b.action {
                ev::BlockAction::Block => wit::BlockAction::Block,
                ev::BlockAction::Unblock => wit::BlockAction::Unblock,
            },
            reason: &b.reason,
            expires_at: b.expires_at,
        }),
        B::TlsCertificate(b) => W::TlsCertificate(wit::TlsCertificateParam {
            domains: &scratch.domains,
            certificate_pem: &b.certificate_pem,
            private_key_pem: &b.private_key_pem,
            not_after: b.not_after,
        }),
        B::CacheInvalidate(_) => W::CacheInvalidate(&scratch.items),
        B::CacheInvalidateAll(b) => W::CacheInvalidateAll(match b.scope {
            ev::CacheScope::All => wit::CacheScope::All,
            ev::CacheScope::Negative => wit::CacheScope::Negative,
        }),
        B::SettingsReload(_) => W::SettingsReload,
        B::QueueStatus(b) => W::QueueStatus(b.running),
        B::QueueRefresh(_) => W::QueueRefresh,
        B::RegistryChange(b) => W::RegistryChange(wit::RegistryChange {
            action: registry_action_to_wit(b.action),
            object_type: b.object_type,
            id: b.id,
        }),
        B::CalendarAlert(b) => W::CalendarAlert(wit::CalendarAlertParam {
            account_id: b.account_id,
            event_id: b.event_id,
            recurrence_id: b.recurrence_id,
            uid: &b.uid,
            alert_id: &b.alert_id,
        }),
        B::EmailPush(b) => W::EmailPush(wit::EmailPush {
            account_id: b.account_id,
            email_id: b.email_id,
            change_id: b.change_id,
        }),
        B::PushServerUpdate(b) => W::PushServerUpdate(b.account_id),
        B::PushSubscriptionGone(b) => W::PushSubscriptionGone(wit::PushSubscriptionGoneParam {
            account_id: b.account_id,
            endpoint: &b.endpoint,
        }),
        // No manifest can subscribe to a host kind (they are not in KINDS),
        // so dispatch and `herald handler test` never offer one.
        B::Probe(_) => unreachable!("`probe` is herald's own kind and never reaches a handler"),
    }
}

pub fn body_from_wit(body: wit::BodyResult) -> ev::Body {
    use ev::Body as B;
    use wit::BodyResult as W;
    match body {
        W::StateChange(b) => B::StateChange(ev::StateChange {
            account_id: b.account_id,
            change_id: b.change_id,
            types: data_types_from_wit(b.types),
        }),
        W::Push(b) => B::Push(ev::Push {
            account_id: b.account_id,
            endpoint: b.endpoint,
            payload: b.payload,
            ttl: b.ttl,
            urgency: urgency_from_wit(b.urgency),
            keys: b.keys.map(|k| ev::PushKeys {
                p256dh: k.p256dh,
                auth: k.auth,
            }),
            topic: b.topic,
        }),
        W::IpBlock(b) => B::IpBlock(ev::IpBlock {
            ip: b.ip,
            action: match b.action {
                wit::BlockAction::Block => ev::BlockAction::Block,
                wit::BlockAction::Unblock => ev::BlockAction::Unblock,
            },
            reason: b.reason,
            expires_at: b.expires_at,
        }),
        W::TlsCertificate(b) => B::TlsCertificate(ev::TlsCertificate {
            domains: b.domains,
            certificate_pem: b.certificate_pem,
            private_key_pem: b.private_key_pem,
            not_after: b.not_after,
        }),
        W::CacheInvalidate(items) => B::CacheInvalidate(ev::CacheInvalidate {
            items: items.iter().map(cache_item_from_wit).collect(),
        }),
        W::CacheInvalidateAll(scope) => B::CacheInvalidateAll(ev::CacheInvalidateAll {
            scope: match scope {
                wit::CacheScope::All => ev::CacheScope::All,
                wit::CacheScope::Negative => ev::CacheScope::Negative,
            },
        }),
        W::SettingsReload => B::SettingsReload(ev::Empty {}),
        W::QueueStatus(running) => B::QueueStatus(ev::QueueStatus { running }),
        W::QueueRefresh => B::QueueRefresh(ev::Empty {}),
        W::RegistryChange(b) => B::RegistryChange(ev::RegistryChange {
            action: registry_action_from_wit(b.action),
            object_type: b.object_type,
            id: b.id,
        }),
        W::CalendarAlert(b) => B::CalendarAlert(ev::CalendarAlert {
            account_id: b.account_id,
            event_id: b.event_id,
            recurrence_id: b.recurrence_id,
            uid: b.uid,
            alert_id: b.alert_id,
        }),
        W::EmailPush(b) => B::EmailPush(ev::EmailPush {
            account_id: b.account_id,
            email_id: b.email_id,
            change_id: b.change_id,
        }),
        W::PushServerUpdate(account_id) => B::PushServerUpdate(ev::PushServerUpdate { account_id }),
        W::PushSubscriptionGone(b) => B::PushSubscriptionGone(ev::PushSubscriptionGone {
            account_id: b.account_id,
            endpoint: b.endpoint,
        }),
    }
}

pub fn event_to_wit<'a>(e: &'a ev::Event, scratch: &'a Scratch<'a>) -> wit::Event<'a> {
    wit::Event {
        id: &e.id,
        origin: &e.origin,
        timestamp: e.ts,
        offset: e.position.offset,
        body: body_to_wit(&e.body, scratch),
    }
}

/// The topic and partition an event was read from, which the guest is given
/// once per call.
pub fn source_to_wit(p: &ev::Position) -> wit::Source<'_> {
    wit::Source {
        topic: &p.topic,
        partition: p.partition,
    }
}
