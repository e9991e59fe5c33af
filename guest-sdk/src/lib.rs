//! # herald-guest
//!
//! Write herald coordination-event handlers in Rust. A handler is a type that
//! implements [`Handler`], overriding one function per event kind it cares
//! about (the rest answer [`Outcome::Ok`]), exported with [`export!`]:
//!
//! ```ignore
//! use herald_guest::{Event, Handler, Host, Outcome, StateChange};
//!
//! struct Wake;
//!
//! impl Handler for Wake {
//!     fn state_change(host: &impl Host, _: &Event, c: &StateChange) -> Outcome {
//!         host.notify_idle(c.account_id, c.change_id, c.types);
//!         Outcome::Ok
//!     }
//! }
//!
//! herald_guest::export!(Wake);
//! ```
//!
//! Functions receive the node through [`Host`]; in the component it calls
//! the host's capability interfaces, and in native unit tests
//! [`testing::RecordingHost`] stands in for it and records what was asked.
//! Only the capabilities a handler actually calls end up imported by its
//! component, which is what the deployer must grant in the manifest.
//!
//! See README.md beside this crate for a worked example.

pub mod net;
pub mod testing;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "handler",
        pub_export_macro: true,
        default_bindings_module: "herald_guest::bindings",
        export_macro_name: "export_handler",
        additional_derives: [PartialEq],
    });
}

use bindings::herald::coordination as wit;

pub use wit::certificates::Certificate;
pub use wit::log::Level;
pub use wit::push::{DeliveryError, Message as PushMessage};
pub use wit::types::{
    BlockAction, Body, CacheItem, CacheScope, CalendarAlert, DataTypes, EmailPush, Event, IpBlock,
    NegativeEmail, Outcome, Position, Push, PushSubscriptionGone, RegistryAction, RegistryChange,
    StateChange, TlsCertificate, Urgency,
};

/// What a handler can ask of the node. Each method is one capability
/// function; the manifest must grant its interface (noted per method).
pub trait Host {
    /// Write to the node's log (always granted).
    fn log(&self, level: Level, message: &str);
    /// A value from the manifest's `[settings]` (always granted).
    fn setting(&self, key: &str) -> Option<String>;
    /// Wake the IDLE sessions of an account (`idle`).
    fn notify_idle(&self, account_id: u32, change_id: u64, types: DataTypes);
    /// Deliver a Web Push message, once per event id (`push`).
    fn deliver_push(&self, event_id: &str, message: &PushMessage) -> Result<(), DeliveryError>;
    /// Block an address or network (`blocklist`).
    fn block(&self, network: &str, reason: &str, expires_at: Option<u64>) -> Result<(), String>;
    /// Lift a block (`blocklist`).
    fn unblock(&self, network: &str) -> Result<(), String>;
    /// Install a certificate and its key (`certificates`).
    fn install_certificate(&self, certificate: &Certificate) -> Result<(), String>;
    /// Publish an event keyed by `key`; returns its id (`publish`).
    fn publish(&self, key: &str, body: &Body) -> Result<String, String>;
}

/// A handler: one function per event kind, each defaulting to `Ok`.
#[allow(unused_variables)]
pub trait Handler {
    fn state_change(host: &impl Host, event: &Event, change: &StateChange) -> Outcome {
        Outcome::Ok
    }
    fn push(host: &impl Host, event: &Event, push: &Push) -> Outcome {
        Outcome::Ok
    }
    fn ip_block(host: &impl Host, event: &Event, block: &IpBlock) -> Outcome {
        Outcome::Ok
    }
    fn tls_certificate(host: &impl Host, event: &Event, cert: &TlsCertificate) -> Outcome {
        Outcome::Ok
    }
    fn cache_invalidate(host: &impl Host, event: &Event, items: &[CacheItem]) -> Outcome {
        Outcome::Ok
    }
    fn cache_invalidate_all(host: &impl Host, event: &Event, scope: CacheScope) -> Outcome {
        Outcome::Ok
    }
    fn settings_reload(host: &impl Host, event: &Event) -> Outcome {
        Outcome::Ok
    }
    fn queue_status(host: &impl Host, event: &Event, running: bool) -> Outcome {
        Outcome::Ok
    }
    fn queue_refresh(host: &impl Host, event: &Event) -> Outcome {
        Outcome::Ok
    }
    fn registry_change(host: &impl Host, event: &Event, change: &RegistryChange) -> Outcome {
        Outcome::Ok
    }
    fn calendar_alert(host: &impl Host, event: &Event, alert: &CalendarAlert) -> Outcome {
        Outcome::Ok
    }
    fn email_push(host: &impl Host, event: &Event, push: &EmailPush) -> Outcome {
        Outcome::Ok
    }
    fn push_server_update(host: &impl Host, event: &Event, account_id: u32) -> Outcome {
        Outcome::Ok
    }
    fn push_subscription_gone(
        host: &impl Host,
        event: &Event,
        gone: &PushSubscriptionGone,
    ) -> Outcome {
        Outcome::Ok
    }
}

/// Route each event of a batch to its function; one outcome per event.
pub fn handle<T: Handler>(host: &impl Host, events: &[Event]) -> Vec<Outcome> {
    events.iter().map(|e| handle_one::<T>(host, e)).collect()
}

fn handle_one<T: Handler>(host: &impl Host, e: &Event) -> Outcome {
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

/// `Outcome::Retry` with a reason.
pub fn retry(reason: impl Into<String>) -> Outcome {
    Outcome::Retry(reason.into())
}

/// `Outcome::Reject` with a reason.
pub fn reject(reason: impl Into<String>) -> Outcome {
    Outcome::Reject(reason.into())
}

/// The real node, through the component's imports. Each method is only
/// compiled in (and so only imported) if a handler calls it.
pub struct WasmHost;

impl Host for WasmHost {
    fn log(&self, level: Level, message: &str) {
        wit::log::log(level, message)
    }
    fn setting(&self, key: &str) -> Option<String> {
        // Settings cannot change during an instance's life: ask once.
        thread_local! {
            static SETTINGS: std::cell::RefCell<std::collections::HashMap<String, Option<String>>> =
                Default::default();
        }
        SETTINGS.with_borrow_mut(|cache| {
            cache
                .entry(key.to_string())
                .or_insert_with(|| wit::config::get(key))
                .clone()
        })
    }
    fn notify_idle(&self, account_id: u32, change_id: u64, types: DataTypes) {
        wit::idle::notify(account_id, change_id, types)
    }
    fn deliver_push(&self, event_id: &str, message: &PushMessage) -> Result<(), DeliveryError> {
        wit::push::deliver(event_id, message)
    }
    fn block(&self, network: &str, reason: &str, expires_at: Option<u64>) -> Result<(), String> {
        wit::blocklist::block(network, reason, expires_at)
    }
    fn unblock(&self, network: &str) -> Result<(), String> {
        wit::blocklist::unblock(network)
    }
    fn install_certificate(&self, certificate: &Certificate) -> Result<(), String> {
        wit::certificates::install(certificate)
    }
    fn publish(&self, key: &str, body: &Body) -> Result<String, String> {
        wit::publish::publish(key, body)
    }
}

/// Export a [`Handler`] as the component's `handle` function.
#[macro_export]
macro_rules! export {
    ($handler:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __HeraldExport;
            impl $crate::bindings::Guest for __HeraldExport {
                fn handle(
                    events: ::std::vec::Vec<$crate::Event>,
                ) -> ::std::vec::Vec<$crate::Outcome> {
                    $crate::handle::<$handler>(&$crate::WasmHost, &events)
                }
            }
    $crate::bindings::export_handler!(__HeraldExport with_types_in $crate::bindings);
        };
    };
}
