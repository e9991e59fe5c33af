//! What handlers ask of the node.
//!
//! Handlers decide; the host applies. Every capability call a handler makes
//! becomes an [`Effect`] handed to an [`Effects`] implementation: the node's
//! real one applies it (blocklist, IDLE subscribers, push client, certificate
//! store, producer), while [`Recorder`] only writes it down, for
//! `herald handler test` and tests.

pub mod blocklist;
pub mod certs;
pub mod firewall;
pub mod node;
pub mod notify;
pub mod push;

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use serde::Serialize;

use crate::event::{Body, DataTypes, PushKeys, Urgency, Version};

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "effect", rename_all = "kebab-case")]
pub enum Effect {
    #[serde(rename_all = "camelCase")]
    IdleNotify {
        account_id: u32,
        change_id: u64,
        types: DataTypes,
    },
    #[serde(rename_all = "camelCase")]
    PushDeliver {
        event_id: String,
        account_id: u32,
        endpoint: String,
        payload: String,
        ttl: u32,
        urgency: Urgency,
        /// The subscription's keys: the auth secret is not shown.
        #[serde(
            skip_serializing_if = "Option::is_none",
            serialize_with = "p256dh_only"
        )]
        keys: Option<PushKeys>,
        #[serde(skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    Block {
        network: String,
        reason: String,
        expires_at: Option<u64>,
        /// The version of the event of the call that names this network
        /// (see [`crate::event::version`]); none if no event does.
        #[serde(skip_serializing_if = "Option::is_none")]
        version: Option<Version>,
    },
    Unblock {
        network: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        version: Option<Version>,
    },
    #[serde(rename_all = "camelCase")]
    InstallCertificate {
        domains: Vec<String>,
        not_after: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        version: Option<Version>,
        // Never printed or logged: the private key stays out of reports.
        #[serde(skip)]
        chain_pem: String,
        #[serde(skip)]
        private_key_pem: String,
    },
    Publish {
        /// Derived from the cause, the handler and the count: the same on
        /// a retry of the same call.
        id: String,
        /// The cause's hops + 1.
        hops: u32,
        key: String,
        kind: &'static str,
        #[serde(serialize_with = "body_json")]
        body: Body,
    },
}

/// A push subscription's keys in a report: `p256dh` (public) and whether
/// there is an `auth` secret, not the secret itself.
fn p256dh_only<S: serde::Serializer>(keys: &Option<PushKeys>, s: S) -> Result<S::Ok, S::Error> {
    keys.as_ref()
        .map(|k| serde_json::json!({"p256dh": k.p256dh, "auth": "<redacted>"}))
        .serialize(s)
}

fn body_json<S: serde::Serializer>(body: &Body, s: S) -> Result<S::Ok, S::Error> {
    body.to_json().serialize(s)
}

/// Why an effect could not be applied. Handlers see the same three cases.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EffectError {
    /// Might work later (network error, 429, 5xx, producer queue full).
    #[error("transient: {0}")]
    Transient(String),
    /// The target no longer exists (push subscription gone).
    #[error("gone: {0}")]
    Gone(String),
    /// Will never work as asked (malformed network, bad certificate).
    #[error("invalid: {0}")]
    Invalid(String),
    /// The node's policy refuses it, whatever the handler says.
    #[error("denied: {0}")]
    Denied(String),
}

impl From<blocklist::BlocklistError> for EffectError {
    fn from(e: blocklist::BlocklistError) -> EffectError {
        match e {
            blocklist::BlocklistError::Refused(r) => EffectError::Denied(r.to_string()),
            other => EffectError::Invalid(other.to_string()),
        }
    }
}

impl From<certs::CertError> for EffectError {
    fn from(e: certs::CertError) -> EffectError {
        if e.is_transient() {
            EffectError::Transient(e.to_string())
        } else {
            EffectError::Invalid(e.to_string())
        }
    }
}

/// What a successful effect returns: the new event id for `Publish`.
pub type Reply = Option<String>;

pub type EffectFuture<'a> = Pin<Box<dyn Future<Output = Result<Reply, EffectError>> + Send + 'a>>;

impl Effect {
    /// The effect's name, as in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Effect::IdleNotify { .. } => "idle-notify",
            Effect::PushDeliver { .. } => "push-deliver",
            Effect::Block { .. } => "block",
            Effect::Unblock { .. } => "unblock",
            Effect::InstallCertificate { .. } => "install-certificate",
            Effect::Publish { .. } => "publish",
        }
    }
}

/// Applies effects on the node. `handler` names who asked, for logs and
/// metrics.
pub trait Effects: Send + Sync + 'static {
    /// Apply an effect that may wait: a push delivery, a publish, a
    /// certificate install.
    fn apply<'a>(&'a self, handler: &'a str, effect: Effect) -> EffectFuture<'a>;

    /// Apply an effect that is done once the node's memory holds it: a
    /// block, an unblock, an IDLE wake-up (the node refuses any other). A block per
    /// `ip-block` event is the node's hottest effect, and a future boxed and
    /// polled per call costs more than the block itself; so these effects
    /// never wait: they change memory, and [`Effects::flush`] makes them
    /// durable before the commit.
    fn apply_now(&self, handler: &str, effect: Effect) -> Result<Reply, EffectError>;

    /// Make every effect applied so far durable. The node calls this before
    /// it commits offsets: a committed event is never replayed, so its
    /// effects must not be lost in a crash after the commit.
    fn flush(&self) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + '_>> {
        Box::pin(async { Ok(()) })
    }
}

/// Writes effects down instead of applying them. Push deliveries can be made
/// to fail, to see how a handler reacts.
#[derive(Default)]
pub struct Recorder {
    effects: Mutex<Vec<Effect>>,
    push_failure: Mutex<Option<EffectError>>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder::default()
    }

    /// Every later push delivery fails with `error`.
    pub fn fail_push(&self, error: EffectError) {
        *self.push_failure.lock().unwrap() = Some(error);
    }

    /// Everything recorded so far, emptying the record.
    pub fn take(&self) -> Vec<Effect> {
        std::mem::take(&mut self.effects.lock().unwrap())
    }
}

impl Effects for Recorder {
    fn apply<'a>(&'a self, handler: &'a str, effect: Effect) -> EffectFuture<'a> {
        Box::pin(async move { self.apply_now(handler, effect) })
    }

    fn apply_now(&self, _handler: &str, effect: Effect) -> Result<Reply, EffectError> {
        let reply = match &effect {
            Effect::PushDeliver { .. } => {
                if let Some(err) = self.push_failure.lock().unwrap().clone() {
                    return Err(err);
                }
                None
            }
            Effect::Publish { id, .. } => Some(id.clone()),
            _ => None,
        };
        self.effects.lock().unwrap().push(effect);
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_effect_is_reported_without_the_auth_secret() {
        let effect = Effect::PushDeliver {
            event_id: "e".into(),
            account_id: 5,
            endpoint: "https://push.example/s".into(),
            payload: "p".into(),
            ttl: 60,
            urgency: Urgency::Normal,
            keys: Some(PushKeys {
                p256dh: "BCVx".into(),
                auth: "secret-auth".into(),
            }),
            topic: Some("inbox".into()),
        };
        let json = serde_json::to_value(&effect).unwrap();
        assert_eq!(
            json["keys"],
            serde_json::json!({"p256dh": "BCVx", "auth": "<redacted>"})
        );
        assert_eq!(json["topic"], "inbox");
        assert!(!json.to_string().contains("secret-auth"));
    }
}
