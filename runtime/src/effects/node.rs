//! The node's real effects: what a running herald applies when handlers ask.

use std::sync::Arc;

use super::blocklist::{Blocklist, Policy};
use super::certs::CertStore;
use super::certs::hooks::Hooks;
use super::firewall::Firewall;
use super::notify::{Hub, Notice};
use super::push::{Outbox, PushClient, PushSettings, Queued, outbox};
use super::{Effect, EffectError, EffectFuture, Effects, Reply};
use crate::config::Config;
use crate::event::{Body, Event, PushSubscriptionGone};
use crate::trust::keys::Unsealer;

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
    /// The blocklist enforced by the kernel (`firewall.nftables`).
    pub firewall: Option<Arc<Firewall>>,
    /// Pushes leave the partition's order here (see [`outbox`]).
    push: Outbox,
    publisher: Arc<dyn Publisher>,
    /// Opens sealed TLS private keys (`certificates.identityFile`).
    unsealer: Option<Arc<Unsealer>>,
    /// Run after each install (`certificates.hooks`).
    hooks: Hooks,
}

impl NodeEffects {
    /// Open the node's state in `config.state_dir`, under the config's
    /// blocklist policy (to which the node's own and its brokers' addresses
    /// are added).
    pub fn open(config: &Config, publisher: Arc<dyn Publisher>) -> anyhow::Result<Self> {
        let state_dir = &config.state_dir;
        let unsealer = match &config.certificates.identity_file {
            Some(path) => {
                Some(Arc::new(Unsealer::load(path).map_err(|e| {
                    anyhow::anyhow!("certificates.identityFile: {e:#}")
                })?))
            }
            None => None,
        };
        let client = PushClient::open(
            state_dir,
            PushSettings {
                allow_private: config.push_allow_private,
                vapid_key_file: Some(config.push_vapid_key_file()),
                vapid_subject: config.push_vapid.subject.clone(),
                ..PushSettings::default()
            },
        )?;
        let (push, gone) = Outbox::open(state_dir, client)?;
        tokio::spawn(publish_gone(
            gone,
            publisher.clone(),
            config.node_id.clone(),
        ));
        Ok(NodeEffects {
            node_id: config.node_id.clone(),
            blocklist: Arc::new(Blocklist::open_with(state_dir, blocklist_policy(config))?),
            certificates: Arc::new(CertStore::open(state_dir)?),
            notices: Arc::new(Hub::default()),
            firewall: config
                .firewall
                .nftables
                .clone()
                .map(|n| Arc::new(Firewall::new(n))),
            push,
            publisher,
            unsealer,
            hooks: Hooks::new(config.certificates.hooks.clone()),
        })
    }

    async fn publish(&self, key: String, event: Event) -> Result<String, EffectError> {
        self.publisher
            .publish(&key, &event)
            .await
            .map_err(EffectError::Transient)?;
        Ok(event.id)
    }
}

/// Tell the cluster about the subscriptions push services said are gone,
/// so the mail server deletes them. The event's id is derived from the
/// delivery's, so a delivery tried again after a restart publishes the same
/// event, not a second one.
async fn publish_gone(
    mut gone: tokio::sync::mpsc::UnboundedReceiver<outbox::Gone>,
    publisher: Arc<dyn Publisher>,
    node_id: String,
) {
    while let Some(g) = gone.recv().await {
        tracing::info!(account_id = g.account_id, endpoint = %g.endpoint, why = %g.why, "push subscription gone");
        let body = Body::PushSubscriptionGone(PushSubscriptionGone {
            account_id: g.account_id,
            endpoint: g.endpoint,
        });
        let mut event = Event::new(&node_id, body);
        event.id = crate::event::derived_id("gone", &[&g.event_id]);
        let key = format!("account:{}", g.account_id);
        let mut wait = std::time::Duration::from_secs(1);
        for attempt in 1.. {
            match publisher.publish(&key, &event).await {
                Ok(()) => break,
                Err(err) if attempt < 10 => {
                    tracing::warn!(event_id = %event.id, "publishing a gone subscription failed, retrying: {err}");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_secs(60));
                }
                Err(err) => {
                    tracing::error!(event_id = %event.id, account_id = g.account_id, "publishing a gone subscription failed: {err}");
                    break;
                }
            }
        }
    }
}

/// The config's blocklist policy, with this node's own addresses and its
/// brokers' added to what is never blocked.
fn blocklist_policy(config: &Config) -> Policy {
    let b = &config.blocklist;
    let mut policy = Policy {
        min_prefix_v4: b.min_prefix_v4,
        min_prefix_v6: b.min_prefix_v6,
        protect: b
            .protect
            .iter()
            .map(|n| (*n, "a network in blocklist.protect".to_string()))
            .collect(),
        max_entries: b.max_entries,
        max_reason: b.max_reason,
    };
    match if_addrs::get_if_addrs() {
        Ok(interfaces) => {
            for i in interfaces {
                policy.protect_address(i.ip(), &format!("this node's address on {}", i.name));
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list this node's addresses to protect them"),
    }
    for broker in &config.brokers {
        use std::net::ToSocketAddrs;
        match broker.to_socket_addrs() {
            Ok(addrs) => {
                for a in addrs {
                    policy.protect_address(a.ip(), &format!("the broker {broker}"));
                }
            }
            Err(e) => tracing::warn!(%broker, error = %e, "cannot resolve a broker to protect it"),
        }
    }
    policy
}

/// Count and log a write that lost to a newer version: not an error (the
/// event is handled, and not dead-lettered), but worth knowing about, since
/// it is a replay, a reordering or a publisher's clock behind the others.
fn stale(
    applied: super::blocklist::Applied,
    handler: &str,
    kind: &'static str,
    entity: &str,
    version: Option<&crate::event::Version>,
) {
    if applied == super::blocklist::Applied::Stale {
        metrics::counter!("herald_stale_total", "kind" => kind).increment(1);
        let version = version.map(ToString::to_string).unwrap_or_default();
        tracing::info!(handler, kind, entity, %version, "stale write: a newer version is held; not applied");
    }
}

/// The most domains one certificate may be installed for.
pub const MAX_CERT_DOMAINS: usize = 100;

/// The plaintext of a key sealed to the cluster; a plaintext key as it is.
/// Only here, in the host, is a sealed key ever opened: handlers see it
/// sealed, and the plaintext goes nowhere but the certificate store.
fn unseal(unsealer: Option<&Unsealer>, key_pem: String) -> Result<String, EffectError> {
    if !herald_guest::x509::is_sealed(&key_pem) {
        return Ok(key_pem);
    }
    let Some(unsealer) = unsealer else {
        return Err(EffectError::Invalid(
            "the private key is sealed and this node has no certificates.identityFile \
             to open it"
                .into(),
        ));
    };
    unsealer.unseal(&key_pem).map_err(EffectError::Invalid)
}

/// Check a certificate as the handler should have, and more: the chain
/// and key parse and match, the leaf is valid now and covers every domain,
/// there are not too many domains. Answers the leaf's own notAfter (Unix
/// ms), whatever was claimed. (Which certificate wins for a domain, by
/// version or by notAfter, is the store's rule.)
fn check_certificate(
    domains: &[String],
    chain_pem: &str,
    key_pem: &str,
) -> Result<u64, EffectError> {
    if domains.len() > MAX_CERT_DOMAINS {
        return Err(EffectError::Invalid(format!(
            "a certificate may be installed for at most {MAX_CERT_DOMAINS} domains, not {}",
            domains.len()
        )));
    }
    let now = (crate::event::now_ms() / 1000) as i64;
    herald_guest::x509::check(domains, chain_pem, key_pem, now)
        .map_err(|e| EffectError::Invalid(crate::bounded::reason(e)))
}

impl Effects for NodeEffects {
    fn apply_now(&self, handler: &str, effect: Effect) -> Result<Reply, EffectError> {
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
            }
            Effect::Block {
                network,
                reason,
                expires_at,
                version,
            } => {
                tracing::debug!(handler, %network, "block");
                let applied =
                    self.blocklist
                        .block_at(&network, &reason, expires_at, version.as_ref())?;
                stale(applied, handler, "ip-block", &network, version.as_ref());
            }
            Effect::Unblock { network, version } => {
                tracing::debug!(handler, %network, "unblock");
                let applied = self.blocklist.unblock_at(&network, version.as_ref())?;
                stale(applied, handler, "ip-block", &network, version.as_ref());
            }
            other => {
                return Err(EffectError::Invalid(format!(
                    "the {} effect may wait and cannot be applied at once",
                    other.name()
                )));
            }
        }
        Ok(None)
    }

    fn apply<'a>(&'a self, handler: &'a str, effect: Effect) -> EffectFuture<'a> {
        Box::pin(async move {
            match effect {
                Effect::Publish {
                    id,
                    hops,
                    key,
                    body,
                    ..
                } => {
                    let mut event = Event::new(&self.node_id, body);
                    event.id = id;
                    event.hops = hops;
                    self.publish(key, event).await.map(Some)
                }
                Effect::PushDeliver {
                    event_id,
                    account_id,
                    endpoint,
                    payload,
                    ttl,
                    urgency,
                    keys,
                    topic,
                } => {
                    // Checked and queued durably; delivered off the
                    // partition (a gone subscription is published from
                    // there, by `publish_gone`).
                    let queued = Queued {
                        event_id,
                        account_id,
                        endpoint,
                        payload,
                        keys,
                        ttl,
                        urgency,
                        topic,
                        queued_ms: crate::event::now_ms(),
                    };
                    self.push.submit(queued).await.map(|_| None)
                }
                Effect::InstallCertificate {
                    domains,
                    not_after: _claimed,
                    version,
                    chain_pem,
                    private_key_pem,
                } => {
                    // Opening the key, parsing the chain and syncing the
                    // files is blocking work: off the runtime's workers, so
                    // that the call's deadline still ends the call (the
                    // install then completes by itself, and a retry finds it
                    // done).
                    let (unsealer, store) = (self.unsealer.clone(), self.certificates.clone());
                    let (names, v) = (domains.clone(), version.clone());
                    let (not_after, report) = tokio::task::spawn_blocking(move || {
                        let key = unseal(unsealer.as_deref(), private_key_pem)?;
                        let not_after = check_certificate(&names, &chain_pem, &key)?;
                        let report = store.install_at(
                            &names,
                            &chain_pem,
                            &key,
                            not_after,
                            v.as_ref(),
                            false,
                        )?;
                        Ok::<_, EffectError>((not_after, report))
                    })
                    .await
                    .map_err(|e| {
                        EffectError::Transient(format!("the install did not finish: {e}"))
                    })??;
                    for name in &report.stale {
                        metrics::counter!("herald_stale_total", "kind" => "tls-certificate")
                            .increment(1);
                        let v = version
                            .as_ref()
                            .map(ToString::to_string)
                            .unwrap_or_default();
                        tracing::info!(handler, domain = %name, version = %v,
                            "stale certificate: a newer version is installed; not applied");
                    }
                    // Hooks and notices only for what changed: a replay of
                    // the installed certificate reloads nothing.
                    if report.changed.is_empty() {
                        return Ok(None);
                    }
                    let domains = report.changed;
                    tracing::info!(handler, ?domains, not_after, "certificate installed");
                    // In the background: a slow or failing reload never
                    // holds the partition nor undoes the install.
                    self.hooks
                        .after_install(&domains, not_after, |d| self.certificates.files(d));
                    self.notices
                        .publish(Notice::Certificate { domains, not_after });
                    Ok(None)
                }
                immediate => self.apply_now(handler, immediate),
            }
        })
    }

    fn flush(&self) -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + '_>> {
        let blocklist = self.blocklist.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || blocklist.flush())
                .await
                .map_err(|e| anyhow::anyhow!("blocklist flush: {e}"))??;
            // The kernel's copy follows in its own task: a slow or failing
            // nft never holds up a commit.
            if let Some(firewall) = &self.firewall {
                firewall.poke();
            }
            Ok(())
        })
    }
}
