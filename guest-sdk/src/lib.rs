#![doc = include_str!("../README.md")]

// Natively (unit tests), or with the feature off, it is only tested.
#[cfg_attr(
    not(all(target_arch = "wasm32", feature = "allocator")),
    allow(dead_code)
)]
mod alloc;
mod fail;
pub mod net;
pub mod testing;
#[cfg(feature = "x509")]
pub mod x509;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "handler",
        pub_export_macro: true,
        default_bindings_module: "herald_guest::bindings",
        export_macro_name: "export_handler",
        additional_derives: [PartialEq],
        // Lifted straight into the hand-written enum (see fail.rs for why).
        with: {
            "herald:coordination/types@0.2.0/effect-error": crate::EffectError,
        },
    });
}

use bindings::herald::coordination as wit;

#[cfg(all(target_arch = "wasm32", feature = "allocator"))]
#[global_allocator]
static ALLOCATOR: alloc::SmallBlocks = alloc::SmallBlocks::new();

pub use fail::{EffectError, Fail, Handled, OrFail, reject, retry};
pub use wit::certificates::Certificate;
pub use wit::log::Level;
pub use wit::push::Message as PushMessage;
pub use wit::types::{
    BlockAction, Body, CacheItem, CacheScope, CalendarAlert, DataTypes, EmailPush, Event, IpBlock,
    NegativeEmail, Outcome, Push, PushKeys, PushSubscriptionGone, RegistryAction, RegistryChange,
    Source, StateChange, TlsCertificate, Urgency,
};

/// What a handler module usually needs: `use herald_guest::prelude::*;`.
pub mod prelude {
    pub use crate::{
        BlockAction, Body, CacheItem, CacheScope, CalendarAlert, Certificate, DataTypes,
        EffectError, EmailPush, Event, Fail, Handled, Handler, Host, IpBlock, Level, OrFail, Push,
        PushKeys, PushMessage, PushSubscriptionGone, RegistryChange, StateChange, TlsCertificate,
        reject, retry,
    };
}

/// What a handler can ask of the node.
///
/// Each method is one function of a capability interface of
/// `wit/herald.wit`. The deployer grants interfaces one by one in the
/// handler's manifest (`capabilities = ["blocklist", ...]`), and a component
/// that imports an interface it was not granted is refused at load. Only the
/// methods a handler actually calls are imported by its component, so a
/// handler needs exactly the grants of the methods it uses.
///
/// The fallible methods answer with an [`EffectError`], whose class tells
/// what to do about it; `?` maps it to a [`Fail`] by that class
/// (`Transient` retries, the rest reject).
///
/// In the component the node is [`WasmHost`]; in native unit tests
/// [`testing::RecordingHost`] stands in for it.
pub trait Host {
    /// Write `message` to the node's log, tagged with the handler's name.
    ///
    /// Interface `log`: always available, needs no grant.
    fn log(&self, level: Level, message: &str);

    /// The value of `key` in the `[settings]` table of the handler's
    /// manifest, `None` if it is not set.
    ///
    /// Interface `config`: always available, needs no grant.
    fn setting(&self, key: &str) -> Option<String>;

    /// Wake the IMAP IDLE and JMAP EventSource sessions of `account_id` on
    /// this node. Best effort: an account with no session has nothing to
    /// wake, so there is no error.
    ///
    /// Capability `idle`.
    fn notify_idle(&self, account_id: u32, change_id: u64, types: DataTypes);

    /// Deliver a Web Push message. `event_id` makes delivery idempotent: the
    /// node never delivers the same event id twice, so pass the event's id.
    ///
    /// Capability `push`. Errors:
    /// - `Transient`: network error, 429 or 5xx from the push service; the
    ///   same event may be delivered on retry.
    /// - `Gone`: the subscription answered 404 or 410. The node has already
    ///   published `push-subscription-gone`, so this is usually the end of
    ///   it rather than a fault.
    /// - `Invalid`: the message cannot be delivered as it is (bad endpoint,
    ///   other 4xx).
    /// - `Denied`: the node's policy refuses the delivery.
    fn deliver_push(&self, event_id: &str, message: &PushMessage) -> Result<(), EffectError>;

    /// Block `network` (an address or CIDR network in canonical form, see
    /// [`net::canonical`]) on this node, until `expires_at` (Unix
    /// milliseconds) or until unblocked.
    ///
    /// Capability `blocklist`. Errors:
    /// - `Transient`: the blocklist could not be updated now (store error).
    /// - `Invalid`: the node does not take `network` as an address or
    ///   network.
    /// - `Denied`: the node refuses to block it (a protected network).
    fn block(
        &self,
        network: &str,
        reason: &str,
        expires_at: Option<u64>,
    ) -> Result<(), EffectError>;

    /// Lift the block on `network` (canonical form, as blocked).
    ///
    /// Capability `blocklist`. Errors as for [`Host::block`].
    fn unblock(&self, network: &str) -> Result<(), EffectError>;

    /// Install a certificate chain and its private key into the node's
    /// certificate store, for the domains it names.
    ///
    /// Capability `certificates`. Errors:
    /// - `Transient`: the store could not be written now (disk error).
    /// - `Invalid`: the node cannot use the certificate or key as given
    ///   (unparseable, invalid domain).
    /// - `Denied`: the node's policy refuses it.
    fn install_certificate(&self, certificate: &Certificate) -> Result<(), EffectError>;

    /// Publish an event with `body` to the cluster on behalf of `cause` (the
    /// event being handled), keyed by `key` (the entity it concerns: an
    /// account, an IP, a domain, so that events about one entity stay in
    /// order). Returns the new event's id, which the node derives from the
    /// cause, the handler and how many events this call published for that
    /// cause: a retried call publishes the same ids, not new events. The new
    /// event carries one more hop than its cause; past the node's limit it
    /// is dead-lettered instead of handled, which ends publish loops.
    ///
    /// Capability `publish`, for the kinds the manifest lists in `publish`.
    /// Errors:
    /// - `Transient`: the producer could not take it now (queue full,
    ///   broker unreachable).
    /// - `Invalid`: the body cannot be published as it is, or `cause` is
    ///   not an event of this call.
    /// - `Denied`: the manifest may not publish this kind of event, or the
    ///   call used up its publish budget (`limits.publishes`).
    fn publish(&self, cause: &Event, key: &str, body: &Body) -> Result<String, EffectError>;
}

/// A handler: one function per event kind, each called once per event of
/// that kind in a batch, in order.
///
/// Override the functions of the kinds the handler's manifest subscribes to;
/// the others answer `Ok(())` (nothing to do). Every function gets the node
/// as `host`, the whole `event` (id, origin, timestamp, Kafka offset) and
/// its body, and returns a [`Handled`]:
///
/// - `Ok(())`: handled, or nothing to do; the event's offset may be
///   committed.
/// - `Err(Fail::Retry(reason))` (or `return retry(..)`, or `?` on a
///   transient [`EffectError`]): herald retries the event later with
///   backoff, holding its partition so that order is kept.
/// - `Err(Fail::Reject(reason))` (or `return reject(..)`, or `?` on any
///   other [`EffectError`]): herald sends the event to the dead-letter topic
///   with the reason.
///
/// A retried event is handled again from the start, so effects must be
/// safe to repeat: pass `event.id` where a capability asks for it.
#[allow(unused_variables)]
pub trait Handler {
    /// A `state-change` event: something changed in an account (`change`:
    /// account id, change id and the JMAP data types touched), and its
    /// IMAP IDLE / JMAP EventSource sessions may need waking.
    ///
    /// `Ok(())` once the sessions are notified, or if the change does not
    /// concern them.
    fn state_change(host: &impl Host, event: &Event, change: &StateChange) -> Handled {
        Ok(())
    }

    /// A `push` event: a Web Push message to deliver once per cluster
    /// (`push`: account, endpoint, payload, TTL, urgency, the subscription's
    /// keys, topic).
    ///
    /// `Ok(())` once delivered, or when there is nothing left to deliver to;
    /// `Err(Retry)` to attempt the delivery again later.
    fn push(host: &impl Host, event: &Event, push: &Push) -> Handled {
        Ok(())
    }

    /// An `ip-block` event: block or unblock `block.ip`, an address or CIDR
    /// network exactly as the publisher wrote it (validate it, see
    /// [`net::parse_network`]).
    ///
    /// `Ok(())` once applied (or deliberately ignored); `Err(Reject)` for an
    /// address that can never be applied.
    fn ip_block(host: &impl Host, event: &Event, block: &IpBlock) -> Handled {
        Ok(())
    }

    /// A `tls-certificate` event: a certificate chain and private key for
    /// `cert.domains`, as published; nothing in it is checked yet.
    ///
    /// `Ok(())` once installed; `Err(Reject)` for a certificate that can
    /// never be installed.
    fn tls_certificate(host: &impl Host, event: &Event, cert: &TlsCertificate) -> Handled {
        Ok(())
    }

    /// A `cache-invalidate` event: drop these cached `items`.
    ///
    /// `Ok(())` once dropped.
    fn cache_invalidate(host: &impl Host, event: &Event, items: &[CacheItem]) -> Handled {
        Ok(())
    }

    /// A `cache-invalidate-all` event: drop every cache, or only the
    /// negative ones (`scope`).
    ///
    /// `Ok(())` once dropped.
    fn cache_invalidate_all(host: &impl Host, event: &Event, scope: CacheScope) -> Handled {
        Ok(())
    }

    /// A `settings-reload` event: the mail server's settings changed and
    /// should be read again. The event has no body.
    ///
    /// `Ok(())` once reloaded.
    fn settings_reload(host: &impl Host, event: &Event) -> Handled {
        Ok(())
    }

    /// A `queue-status` event: the MTA queue is now running (`true`) or
    /// paused (`false`).
    ///
    /// `Ok(())` once applied.
    fn queue_status(host: &impl Host, event: &Event, running: bool) -> Handled {
        Ok(())
    }

    /// A `queue-refresh` event: the MTA queue should be scanned again. The
    /// event has no body.
    ///
    /// `Ok(())` once done.
    fn queue_refresh(host: &impl Host, event: &Event) -> Handled {
        Ok(())
    }

    /// A `registry-change` event: a settings object of the mail server was
    /// inserted or deleted, or every object of a type is to be reloaded
    /// (`change.id` is `None` then).
    ///
    /// `Ok(())` once applied, or if the object type does not concern the
    /// handler.
    fn registry_change(host: &impl Host, event: &Event, change: &RegistryChange) -> Handled {
        Ok(())
    }

    /// A `calendar-alert` event: an alert of a calendar event is due
    /// (`alert`: account, event, recurrence, alert id).
    ///
    /// `Ok(())` once the alert is dealt with.
    fn calendar_alert(host: &impl Host, event: &Event, alert: &CalendarAlert) -> Handled {
        Ok(())
    }

    /// An `email-push` event: an email arrived for an account with push
    /// subscriptions (`push`: account, email id, change id).
    ///
    /// `Ok(())` once the subscriptions are served.
    fn email_push(host: &impl Host, event: &Event, push: &EmailPush) -> Handled {
        Ok(())
    }

    /// A `push-server-update` event: the push subscriptions of
    /// `account_id` changed.
    ///
    /// `Ok(())` once taken into account.
    fn push_server_update(host: &impl Host, event: &Event, account_id: u32) -> Handled {
        Ok(())
    }

    /// A `push-subscription-gone` event: a subscription's endpoint answered
    /// that it is gone (404/410), so the mail server should delete the
    /// subscription (`gone`: account and endpoint).
    ///
    /// `Ok(())` once deleted (or already gone).
    fn push_subscription_gone(
        host: &impl Host,
        event: &Event,
        gone: &PushSubscriptionGone,
    ) -> Handled {
        Ok(())
    }
}

/// Route each event of a batch to its [`Handler`] function and collect one
/// [`Outcome`] per event, in order: `Ok(())` is [`Outcome::Ok`],
/// [`Fail::Retry`] is [`Outcome::Retry`] and [`Fail::Reject`] is
/// [`Outcome::Reject`], with the reason.
///
/// This is what the component runs for each batch ([`export!`]); unit tests
/// call it with a [`testing::RecordingHost`].
pub fn handle<T: Handler>(host: &impl Host, events: &[Event]) -> Vec<Outcome> {
    events
        .iter()
        .map(|e| match handle_one::<T>(host, e) {
            Ok(()) => Outcome::Ok,
            Err(fail) => fail.into(),
        })
        .collect()
}

fn handle_one<T: Handler>(host: &impl Host, e: &Event) -> Handled {
    match &e.body {
        Body::StateChange(b) => T::state_change(host, e, b),
        Body::Push(b) => T::push(host, e, b),
        Body::IpBlock(b) => T::ip_block(host, e, b),
        Body::TlsCertificate(b) => T::tls_certificate(host, e, b),
        Body::CacheInvalidate(items) => T::cache_invalidate(host, e, items),
        Body::CacheInvalidateAll(scope) => T::cache_invalidate_all(host, e, *scope),
        Body::SettingsReload => T::settings_reload(host, e),
        Body::QueueStatus(running) => T::queue_status(host, e, *running),
        Body::QueueRefresh => T::queue_refresh(host, e),
        Body::RegistryChange(b) => T::registry_change(host, e, b),
        Body::CalendarAlert(b) => T::calendar_alert(host, e, b),
        Body::EmailPush(b) => T::email_push(host, e, b),
        Body::PushServerUpdate(account) => T::push_server_update(host, e, *account),
        Body::PushSubscriptionGone(gone) => T::push_subscription_gone(host, e, gone),
    }
}

impl From<Fail> for Outcome {
    fn from(fail: Fail) -> Outcome {
        match fail {
            Fail::Retry(reason) => Outcome::Retry(reason),
            Fail::Reject(reason) => Outcome::Reject(reason),
        }
    }
}

/// The real node, through the component's imports. Each method is only
/// compiled in (and so only imported) if a handler calls it.
pub struct WasmHost;

impl Host for WasmHost {
    fn log(&self, level: Level, message: &str) {
        wit::log::log(level, message)
    }
    fn setting(&self, key: &str) -> Option<String> {
        // Settings cannot change during an instance's life: ask once. A
        // handler reads a few settings, often once per event: a short list
        // looked through without hashing or allocating is the cheapest.
        thread_local! {
            static SETTINGS: std::cell::RefCell<Vec<(String, Option<String>)>> =
                const { std::cell::RefCell::new(Vec::new()) };
        }
        SETTINGS.with_borrow_mut(|cache| {
            if let Some((_, value)) = cache.iter().find(|(k, _)| k == key) {
                return value.clone();
            }
            let value = wit::config::get(key);
            cache.push((key.to_string(), value.clone()));
            value
        })
    }
    fn notify_idle(&self, account_id: u32, change_id: u64, types: DataTypes) {
        wit::idle::notify(account_id, change_id, types)
    }
    fn deliver_push(&self, event_id: &str, message: &PushMessage) -> Result<(), EffectError> {
        wit::push::deliver(event_id, message)
    }
    fn block(
        &self,
        network: &str,
        reason: &str,
        expires_at: Option<u64>,
    ) -> Result<(), EffectError> {
        wit::blocklist::block(network, reason, expires_at)
    }
    fn unblock(&self, network: &str) -> Result<(), EffectError> {
        wit::blocklist::unblock(network)
    }
    fn install_certificate(&self, certificate: &Certificate) -> Result<(), EffectError> {
        wit::certificates::install(certificate)
    }
    fn publish(&self, cause: &Event, key: &str, body: &Body) -> Result<String, EffectError> {
        wit::publish::publish(&cause.id, key, body)
    }
}

/// Export a [`Handler`] as the component's `handle` function, which runs
/// [`handle`] on each batch with the real node ([`WasmHost`]):
/// `herald_guest::export!(MyHandler);` once, at the crate root.
///
/// It expands to nothing outside wasm32, so the same crate builds natively
/// for its unit tests.
#[macro_export]
macro_rules! export {
    ($handler:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __HeraldExport;
            impl $crate::bindings::Guest for __HeraldExport {
                fn handle(
                    _: $crate::Source,
                    events: ::std::vec::Vec<$crate::Event>,
                ) -> ::std::vec::Vec<$crate::Outcome> {
                    $crate::handle::<$handler>(&$crate::WasmHost, &events)
                }
            }
    $crate::bindings::export_handler!(__HeraldExport with_types_in $crate::bindings);
        };
    };
}
