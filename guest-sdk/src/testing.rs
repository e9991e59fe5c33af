//! A recording stand-in for the node, so handler logic can be unit-tested
//! natively with `cargo test`, and builders for test events.
//!
//! ```ignore
//! let host = RecordingHost::new().with_setting("allowlist", "10.0.0.0/8");
//! let out = herald_guest::handle::<MyHandler>(&host, &[testing::ip_block("203.0.113.7")]);
//! assert_eq!(out, vec![Outcome::Ok]);
//! assert_eq!(host.effects(), vec![Effect::Block { network: "203.0.113.7".into(), .. }]);
//! ```

use std::cell::RefCell;
use std::collections::HashMap;

use crate::{
    BlockAction, Body, Certificate, DataTypes, DeliveryError, Event, Host, IpBlock, Level,
    Position, Push, PushMessage, StateChange, TlsCertificate, Urgency,
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
        key: String,
        body: Body,
    },
}

/// Records every capability call; answers with what it was told to.
#[derive(Default)]
pub struct RecordingHost {
    effects: RefCell<Vec<Effect>>,
    settings: HashMap<String, String>,
    push_results: RefCell<Vec<Result<(), DeliveryError>>>,
}

impl RecordingHost {
    pub fn new() -> RecordingHost {
        RecordingHost::default()
    }

    /// A manifest `[settings]` entry.
    pub fn with_setting(mut self, key: &str, value: &str) -> RecordingHost {
        self.settings.insert(key.to_string(), value.to_string());
        self
    }

    /// Answers for the next push deliveries, in order (then `Ok`).
    pub fn with_push_results(self, results: Vec<Result<(), DeliveryError>>) -> RecordingHost {
        *self.push_results.borrow_mut() = results;
        self
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
    fn deliver_push(&self, event_id: &str, message: &PushMessage) -> Result<(), DeliveryError> {
        self.record(Effect::DeliverPush {
            event_id: event_id.to_string(),
            message: message.clone(),
        });
        let mut results = self.push_results.borrow_mut();
        if results.is_empty() {
            Ok(())
        } else {
            results.remove(0)
        }
    }
    fn block(&self, network: &str, reason: &str, expires_at: Option<u64>) -> Result<(), String> {
        self.record(Effect::Block {
            network: network.to_string(),
            reason: reason.to_string(),
            expires_at,
        });
        Ok(())
    }
    fn unblock(&self, network: &str) -> Result<(), String> {
        self.record(Effect::Unblock {
            network: network.to_string(),
        });
        Ok(())
    }
    fn install_certificate(&self, certificate: &Certificate) -> Result<(), String> {
        self.record(Effect::InstallCertificate(certificate.clone()));
        Ok(())
    }
    fn publish(&self, key: &str, body: &Body) -> Result<String, String> {
        self.record(Effect::Publish {
            key: key.to_string(),
            body: body.clone(),
        });
        Ok(format!("published-{}", self.effects.borrow().len()))
    }
}

/// An event with `body`, as if read at offset 0 of a test topic.
pub fn event(body: Body) -> Event {
    Event {
        id: "test-event".to_string(),
        origin: "test-node".to_string(),
        timestamp: 1_795_690_000_000,
        position: Position {
            topic: "test".to_string(),
            partition: 0,
            offset: 0,
        },
        body,
    }
}

pub fn state_change(account_id: u32, change_id: u64, types: DataTypes) -> Event {
    event(Body::StateChange(StateChange {
        account_id,
        change_id,
        types,
    }))
}

pub fn ip_block(ip: &str) -> Event {
    event(Body::IpBlock(IpBlock {
        ip: ip.to_string(),
        action: BlockAction::Block,
        reason: "test".to_string(),
        expires_at: None,
    }))
}

pub fn ip_unblock(ip: &str) -> Event {
    event(Body::IpBlock(IpBlock {
        ip: ip.to_string(),
        action: BlockAction::Unblock,
        reason: "test".to_string(),
        expires_at: None,
    }))
}

pub fn push(account_id: u32, endpoint: &str, payload: &str) -> Event {
    event(Body::Push(Push {
        account_id,
        endpoint: endpoint.to_string(),
        payload: payload.to_string(),
        ttl: 60,
        urgency: Urgency::Normal,
    }))
}

pub fn tls_certificate(domains: &[&str], certificate_pem: &str, private_key_pem: &str) -> Event {
    event(Body::TlsCertificate(TlsCertificate {
        domains: domains.iter().map(|d| d.to_string()).collect(),
        certificate_pem: certificate_pem.to_string(),
        private_key_pem: private_key_pem.to_string(),
        not_after: 0,
    }))
}
