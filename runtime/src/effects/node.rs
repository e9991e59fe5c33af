//! The node's real effects: what a running herald applies when handlers ask.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::blocklist::Blocklist;
use super::{Effect, EffectError, EffectFuture, Effects};
use crate::event::{Body, DataTypes, Event};

/// A state change to pass to this node's IDLE/EventSource subscribers.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IdleNotice {
    pub account_id: u32,
    pub change_id: u64,
    pub types: DataTypes,
}

/// Sends events to the cluster; the Kafka producer implements it.
pub trait Publisher: Send + Sync + 'static {
    /// Publish `event` keyed by `key`; resolves once the broker has it.
    fn publish<'a>(
        &'a self,
        key: &'a str,
        event: &'a Event,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}

pub struct NodeEffects {
    node_id: String,
    pub blocklist: Arc<Blocklist>,
    pub idle: broadcast::Sender<IdleNotice>,
    publisher: Arc<dyn Publisher>,
}

impl NodeEffects {
    pub fn new(node_id: &str, blocklist: Arc<Blocklist>, publisher: Arc<dyn Publisher>) -> Self {
        // IDLE wake-ups are fire-and-forget: a subscriber that falls more
        // than this many behind is told it lagged rather than slowing
        // event handling down.
        let (idle, _) = broadcast::channel(1024);
        NodeEffects {
            node_id: node_id.to_string(),
            blocklist,
            idle,
            publisher,
        }
    }

    async fn publish(&self, key: String, body: Body) -> Result<String, EffectError> {
        let event = Event::new(&self.node_id, body);
        self.publisher
            .publish(&key, &event)
            .await
            .map_err(EffectError::Transient)?;
        Ok(event.id)
    }
}

impl Effects for NodeEffects {
    fn apply<'a>(&'a self, handler: &'a str, effect: Effect) -> EffectFuture<'a> {
        Box::pin(async move {
            match effect {
                Effect::IdleNotify {
                    account_id,
                    change_id,
                    types,
                } => {
                    // No subscriber is not an error: nobody is idling.
                    let _ = self.idle.send(IdleNotice {
                        account_id,
                        change_id,
                        types,
                    });
                    Ok(None)
                }
                Effect::Block {
                    network,
                    reason,
                    expires_at,
                } => {
                    tracing::debug!(handler, %network, "block");
                    self.blocklist
                        .block(&network, &reason, expires_at)
                        .map(|_| None)
                        .map_err(EffectError::Invalid)
                }
                Effect::Unblock { network } => {
                    tracing::debug!(handler, %network, "unblock");
                    self.blocklist
                        .unblock(&network)
                        .map(|_| None)
                        .map_err(EffectError::Invalid)
                }
                Effect::Publish { key, body, .. } => self.publish(key, body).await.map(Some),
                Effect::PushDeliver { .. } => Err(EffectError::Transient(
                    "push delivery is not available on this node yet".into(),
                )),
                Effect::InstallCertificate { .. } => Err(EffectError::Transient(
                    "the certificate store is not available on this node yet".into(),
                )),
            }
        })
    }

    fn flush(&self) -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + '_>> {
        let blocklist = self.blocklist.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || blocklist.flush())
                .await
                .map_err(|e| anyhow::anyhow!("blocklist flush: {e}"))?
        })
    }
}
