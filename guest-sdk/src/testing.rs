//! A recording stand-in for the node, so handler logic can be unit-tested
//! natively with `cargo test`, and builders for test events.
//!
//! ```
//! use herald_guest::testing::{self, Call, Effect, RecordingHost};
//! use herald_guest::{EffectError, Event, Handled, Handler, Host, IpBlock, Outcome};
//!
//! struct Blocker;
//! impl Handler for Blocker {
//!     fn ip_block(host: &impl Host, _: &Event, block: &IpBlock) -> Handled {
//!         host.block(&block.ip, &block.reason, block.expires_at)?;
//!         Ok(())
//!     }
//! }
//!
//! let host = RecordingHost::new();
//! let out = herald_guest::handle::<Blocker>(&host, &[testing::ip_block("203.0.113.7")]);
//! assert_eq!(out, vec![Outcome::Ok]);
//! assert!(matches!(&host.effects()[..], [Effect::Block { network, .. }] if network == "203.0.113.7"));
//!
//! // The next `block` fails, the one after succeeds; both are recorded.
//! let host = RecordingHost::new().fail(Call::Block, EffectError::Transient("disk full".into()));
//! let events = [testing::ip_block("203.0.113.7"), testing::ip_block("203.0.113.8")];
//! let out = herald_guest::handle::<Blocker>(&host, &events);
//! assert_eq!(out, vec![Outcome::Retry("transient: disk full".into()), Outcome::Ok]);
//! assert_eq!(host.effects().len(), 2);
//! ```

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

use crate::{
    BlockAction, Body, Certificate, DataTypes, EffectError, Event, Host, IpBlock, Level, Push,
    PushMessage, StateChange, TlsCertificate, Urgency,
};

/// One thing a handler asked of the node.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    Log(Level, String),
    NotifyIdle {
        account_id: u32,
        change_id: u64,
        types: DataTypes,
    },
    DeliverPush {
        event_id: String,
        message: PushMessage,
    },
    Block {
        network: String,
        reason: String,
        expires_at: Option<u64>,
    },
    Unblock {
        network: String,
    },
    InstallCertificate(Certificate),
    Publish {
        /// The id of the event it was published for.
        cause: String,
        key: String,
        body: Body,
    },
}

/// A fallible [`Host`] method, to script its answers on a [`RecordingHost`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    /// [`Host::deliver_push`].
    DeliverPush,
    /// [`Host::block`].
    Block,
    /// [`Host::unblock`].
    Unblock,
    /// [`Host::install_certificate`].
    InstallCertificate,
    /// [`Host::publish`].
    Publish,
}

/// Records every capability call and answers with what it was told to:
/// by default every call succeeds.
///
/// Answers are scripted per [`Call`]: each call takes the next scripted
/// answer for its method, and succeeds once there are none left. A call is
/// recorded in [`effects`](RecordingHost::effects) whether it succeeds or
/// not: it is what the handler asked.
#[derive(Default)]
pub struct RecordingHost {
    effects: RefCell<Vec<Effect>>,
    settings: HashMap<String, String>,
    answers: RefCell<HashMap<Call, VecDeque<Result<(), EffectError>>>>,
}

impl RecordingHost {
    /// No settings; every call succeeds.
    pub fn new() -> RecordingHost {
        RecordingHost::default()
    }

    /// A manifest `[settings]` entry.
    pub fn with_setting(mut self, key: &str, value: &str) -> RecordingHost {
        self.settings.insert(key.to_string(), value.to_string());
        self
    }

    /// Answers for the next calls of `call`, in order, after any already
    /// scripted (then `Ok`).
    pub fn with_results(
        self,
        call: Call,
        results: impl IntoIterator<Item = Result<(), EffectError>>,
    ) -> RecordingHost {
        self.answers
            .borrow_mut()
            .entry(call)
            .or_default()
            .extend(results);
        self
    }

    /// The next call of `call` (after any already scripted) fails with
    /// `error`.
    pub fn fail(self, call: Call, error: EffectError) -> RecordingHost {
        self.with_results(call, [Err(error)])
    }

    /// The next push delivery fails with `error`.
    pub fn fail_push(self, error: EffectError) -> RecordingHost {
        self.fail(Call::DeliverPush, error)
    }

    /// The next `block` fails with `error`.
    pub fn fail_block(self, error: EffectError) -> RecordingHost {
        self.fail(Call::Block, error)
    }

    /// The next `unblock` fails with `error`.
    pub fn fail_unblock(self, error: EffectError) -> RecordingHost {
        self.fail(Call::Unblock, error)
    }

    /// The next certificate installation fails with `error`.
    pub fn fail_install(self, error: EffectError) -> RecordingHost {
        self.fail(Call::InstallCertificate, error)
    }

    /// The next publication fails with `error`.
    pub fn fail_publish(self, error: EffectError) -> RecordingHost {
        self.fail(Call::Publish, error)
    }

    /// What was asked, logs left out.
    pub fn effects(&self) -> Vec<Effect> {
        self.effects
            .borrow()
            .iter()
            .filter(|e| !matches!(e, Effect::Log(..)))
            .cloned()
            .collect()
    }

    /// Everything that was logged.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.effects
            .borrow()
            .iter()
            .filter_map(|e| match e {
                Effect::Log(l, m) => Some((*l, m.clone())),
                _ => None,
            })
            .collect()
    }

    fn record(&self, e: Effect) {
        self.effects.borrow_mut().push(e);
    }

    /// Record `e`, then answer the next scripted result for `call`.
    fn answer(&self, call: Call, e: Effect) -> Result<(), EffectError> {
        self.record(e);
        self.answers
            .borrow_mut()
            .get_mut(&call)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Ok(()))
    }
}

impl Host for RecordingHost {
    fn log(&self, level: Level, message: &str) {
        self.record(Effect::Log(level, message.to_string()));
    }
    fn setting(&self, key: &str) -> Option<String> {
        self.settings.get(key).cloned()
    }
    fn notify_idle(&self, account_id: u32, change_id: u64, types: DataTypes) {
        self.record(Effect::NotifyIdle {
            account_id,
            change_id,
            types,
        });
    }
    fn deliver_push(&self, event_id: &str, message: &PushMessage) -> Result<(), EffectError> {
        let effect = Effect::DeliverPush {
            event_id: event_id.to_string(),
            message: message.clone(),
        };
        self.answer(Call::DeliverPush, effect)
    }
    fn block(
        &self,
        network: &str,
        reason: &str,
        expires_at: Option<u64>,
    ) -> Result<(), EffectError> {
        let effect = Effect::Block {
            network: network.to_string(),
            reason: reason.to_string(),
            expires_at,
        };
        self.answer(Call::Block, effect)
    }
    fn unblock(&self, network: &str) -> Result<(), EffectError> {
        let effect = Effect::Unblock {
            network: network.to_string(),
        };
        self.answer(Call::Unblock, effect)
    }
    fn install_certificate(&self, certificate: &Certificate) -> Result<(), EffectError> {
        self.answer(
            Call::InstallCertificate,
            Effect::InstallCertificate(certificate.clone()),
        )
    }
    fn publish(&self, cause: &Event, key: &str, body: &Body) -> Result<String, EffectError> {
        let effect = Effect::Publish {
            cause: cause.id.clone(),
            key: key.to_string(),
            body: body.clone(),
        };
        self.answer(Call::Publish, effect)?;
        Ok(format!("published-{}", self.effects.borrow().len()))
    }
}

/// An event with `body`, as if read at offset 0 of a test topic.
pub fn event(body: Body) -> Event {
    Event {
        id: "test-event".to_string(),
        origin: "test-node".to_string(),
        timestamp: 1_795_690_000_000,
        offset: 0,
        body,
    }
}

/// A `state-change` event.
pub fn state_change(account_id: u32, change_id: u64, types: DataTypes) -> Event {
    event(Body::StateChange(StateChange {
        account_id,
        change_id,
        types,
    }))
}

/// An `ip-block` event blocking `ip`, for the reason `"test"`, without expiry.
pub fn ip_block(ip: &str) -> Event {
    event(Body::IpBlock(IpBlock {
        ip: ip.to_string(),
        action: BlockAction::Block,
        reason: "test".to_string(),
        expires_at: None,
    }))
}

/// An `ip-block` event unblocking `ip`.
pub fn ip_unblock(ip: &str) -> Event {
    event(Body::IpBlock(IpBlock {
        ip: ip.to_string(),
        action: BlockAction::Unblock,
        reason: "test".to_string(),
        expires_at: None,
    }))
}

/// A `push` event (TTL 60 s, normal urgency).
pub fn push(account_id: u32, endpoint: &str, payload: &str) -> Event {
    event(Body::Push(Push {
        account_id,
        endpoint: endpoint.to_string(),
        payload: payload.to_string(),
        ttl: 60,
        urgency: Urgency::Normal,
        keys: None,
        topic: None,
    }))
}

/// A `tls-certificate` event; the `not_after` it claims is 0.
pub fn tls_certificate(domains: &[&str], certificate_pem: &str, private_key_pem: &str) -> Event {
    event(Body::TlsCertificate(TlsCertificate {
        domains: domains.iter().map(|d| d.to_string()).collect(),
        certificate_pem: certificate_pem.to_string(),
        private_key_pem: private_key_pem.to_string(),
        not_after: 0,
    }))
}
