//! The node's real effects: what a running herald applies when handlers ask.

use std::path::Path;
use std::sync::Arc;

use super::blocklist::Blocklist;
use super::certs::CertStore;
use super::notify::{Hub, Notice};
use super::push::{PushClient, PushSettings};
use super::{Effect, EffectError, EffectFuture, Effects};
use crate::event::{Body, Event, PushSubscriptionGone};

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
    pub certificates: Arc<CertStore>,
    pub notices: Arc<Hub>,
    push: PushClient,
    publisher: Arc<dyn Publisher>,
}

impl NodeEffects {
    /// Open the node's state in `state_dir`.
    pub fn open(
        node_id: &str,
        state_dir: &Path,
        publisher: Arc<dyn Publisher>,
    ) -> anyhow::Result<Self> {
        Ok(NodeEffects {
            node_id: node_id.to_string(),
            blocklist: Arc::new(Blocklist::open(state_dir)?),
            certificates: Arc::new(CertStore::open(state_dir)?),
            notices: Arc::new(Hub::default()),
            push: PushClient::open(state_dir, PushSettings::default())?,
            publisher,
        })
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
                    self.notices.publish(Notice::StateChange {
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
                Effect::PushDeliver {
                    event_id,
                    account_id,
                    endpoint,
                    payload,
                    ttl,
                    urgency,
                } => {
                    let result = self
                        .push
                        .deliver(&event_id, &endpoint, payload.as_bytes(), ttl, urgency)
                        .await;
                    if let Err(EffectError::Gone(why)) = &result {
                        // Tell the cluster, so the mail server deletes the
                        // subscription; if that fails, the handler retries
                        // and the next attempt publishes again.
                        tracing::info!(handler, account_id, %endpoint, %why, "push subscription gone");
                        let gone = Body::PushSubscriptionGone(PushSubscriptionGone {
                            account_id,
                            endpoint,
                        });
                        self.publish(format!("account:{account_id}"), gone).await?;
                    }
                    result.map(|_| None)
                }
                Effect::InstallCertificate {
                    domains,
                    not_after,
                    chain_pem,
                    private_key_pem,
                } => {
                    self.certificates
                        .install(&domains, &chain_pem, &private_key_pem, not_after)
                        .map_err(EffectError::Transient)?;
                    tracing::info!(handler, ?domains, not_after, "certificate installed");
                    self.notices
                        .publish(Notice::Certificate { domains, not_after });
                    Ok(None)
                }
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
