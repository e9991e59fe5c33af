//! Stalwart's own bans, enforced cluster-wide: its registry pointers for
//! blocked IPs, resolved through its management API and published as
//! herald's signed `ip-block` events.
//!
//! Stalwart announces an automatic ban on `stwt.agora` only as "registry
//! insert, object type 17, id N"; the address is in its store, and Stalwart
//! 0.16 never announces a deletion by id (an unban through its API is only
//! announced by the "reload blocked IPs" action, as a registry reload of
//! type 17). So with `stalwart.management` set, the cluster's shared group
//! (one node per partition of Stalwart's topic) runs this host-side handler
//! over those pointers:
//!
//! - an insert of type 17: `x:BlockedIp/get` for the ids of the batch, and a
//!   `block` for each address still banned (an id Stalwart no longer has was
//!   unbanned or expired meanwhile: nothing to do);
//! - a delete or reload of type 17: the whole registry (`x:BlockedIp/query`,
//!   page by page), compared with the node's blocklist: a `block` for each
//!   ban the blocklist lacks, an `unblock` for each entry that came from
//!   Stalwart ([`REASON_PREFIX`]) and is no longer in the registry.
//!
//! The events are published on the state topic, signed with the node's key,
//! and every node's blocking handler applies them like any other (the
//! allowlist and prefix limits hold for Stalwart's bans too). Their version
//! is the time herald read Stalwart's store, so a later read wins: a replay
//! of an old pointer reads the registry as it is now, and can only say again
//! what is true. An API that does not answer retries the batch by
//! `retry`, then dead-letters it, like a failing handler.
//!
//! Certificates (type 23) cannot be taken over: Stalwart's API answers
//! every private key as `****`. They are counted and logged, not installed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::{BoxFuture, Handler};
use crate::effects::blocklist::Blocklist;
use crate::effects::node::Publisher;
use crate::event::version::network;
use crate::event::{BlockAction, Body, Event, IpBlock, RegistryAction, derived_id, now_ms};
use crate::management::{self, BlockedIp, Client};
use crate::registry::HandlerStats;
use crate::sandbox::{CallError, Outcome};

/// The handler's name in metrics, logs and dead letters.
pub const NAME: &str = "stalwart-registry";
/// Every blocklist reason this handler writes starts so: what a reload may
/// unblock. An entry blocked otherwise is never touched by it.
pub const REASON_PREFIX: &str = "stalwart: ";

pub struct Resolver {
    node: String,
    /// Only pointers read from here are resolved.
    topic: String,
    client: Client,
    blocklist: Arc<Blocklist>,
    publisher: Arc<dyn Publisher>,
    stats: Arc<HandlerStats>,
}

impl Resolver {
    pub fn new(
        node: String,
        topic: String,
        client: Client,
        blocklist: Arc<Blocklist>,
        publisher: Arc<dyn Publisher>,
        stats: Arc<HandlerStats>,
    ) -> Resolver {
        Resolver {
            node,
            topic,
            client,
            blocklist,
            publisher,
            stats,
        }
    }

    async fn resolve(&self, events: &[&Event]) -> Result<(), String> {
        let mut inserted = BTreeSet::new();
        let mut reload = None;
        for e in events {
            let Body::RegistryChange(change) = &e.body else {
                continue;
            };
            if *e.position.topic != *self.topic {
                continue;
            }
            match (change.object_type, change.action, change.id) {
                (management::BLOCKED_IP, RegistryAction::Insert, Some(id)) => {
                    inserted.insert(id);
                }
                (management::BLOCKED_IP, _, _) => reload = Some(e.id.as_str()),
                (management::CERTIFICATE, _, _) => {
                    metrics::counter!("herald_stalwart_pointers_total",
                        "object" => "certificate", "result" => "unresolvable")
                    .increment(1);
                    tracing::warn!(
                        "Stalwart changed a certificate (registry {:?} of type 23); its API \
                         masks private keys, so herald cannot install it on the other nodes: \
                         publish certificates with `herald cert publish` (e.g. from the ACME \
                         client's deploy hook)",
                        change.action
                    );
                }
                _ => {}
            }
        }
        let mut published = 0;
        if let Some(cause) = reload {
            // The whole registry answers inserts of the batch too.
            let all = self
                .client
                .all_blocked_ips()
                .await
                .map_err(|e| format!("{e:#}"))?;
            published += self.reconcile(&all, cause).await?;
        } else if !inserted.is_empty() {
            let ids: Vec<u64> = inserted.into_iter().collect();
            let (found, missing) = self
                .client
                .blocked_ips(&ids)
                .await
                .map_err(|e| format!("{e:#}"))?;
            if !missing.is_empty() {
                tracing::info!(
                    ?missing,
                    "Stalwart no longer has these blocked IPs: nothing to block"
                );
            }
            for ban in found.iter().filter(|b| in_force(b)) {
                self.publish(block(&self.node, ban)).await?;
                published += 1;
            }
        }
        if published > 0 {
            metrics::counter!("herald_stalwart_pointers_total",
                "object" => "blocked-ip", "result" => "published")
            .increment(published);
        }
        Ok(())
    }

    /// Make the blocklist say what Stalwart's registry says, for the bans
    /// that came from Stalwart. Returns how many events that took.
    async fn reconcile(&self, registry: &[BlockedIp], cause: &str) -> Result<u64, String> {
        let mut banned = BTreeMap::new();
        for ban in registry.iter().filter(|b| in_force(b)) {
            match network(&ban.address) {
                Some(net) => {
                    banned.insert(net, ban);
                }
                None => tracing::warn!(
                    address = ban.address,
                    "Stalwart holds a ban herald cannot parse"
                ),
            }
        }
        let held: BTreeMap<_, _> = self
            .blocklist
            .list(now_ms())
            .into_iter()
            .filter_map(|e| Some((network(&e.network)?, e)))
            .collect();
        let mut sent = 0;
        for (net, ban) in &banned {
            if !held.contains_key(net) {
                self.publish(block(&self.node, ban)).await?;
                sent += 1;
            }
        }
        for (net, entry) in &held {
            if entry.reason.starts_with(REASON_PREFIX) && !banned.contains_key(net) {
                let unblock = Event {
                    id: derived_id("stalwart-unban", &[cause, &net.to_string()]),
                    ..Event::new(
                        &self.node,
                        Body::IpBlock(IpBlock {
                            ip: net.to_string(),
                            action: BlockAction::Unblock,
                            reason: format!("{REASON_PREFIX}no longer in Stalwart's registry"),
                            expires_at: None,
                        }),
                    )
                };
                self.publish(unblock).await?;
                sent += 1;
            }
        }
        tracing::info!(
            bans = banned.len(),
            events = sent,
            "Stalwart's blocked IPs read again; the blocklist follows them"
        );
        Ok(sent)
    }

    async fn publish(&self, event: Event) -> Result<(), String> {
        let key = event
            .body
            .entity_key()
            .expect("an ip-block has an entity key");
        self.publisher
            .publish(&key, &event)
            .await
            .map_err(|e| format!("publishing {}: {e}", event.id))
    }
}

/// Not expired: Stalwart keeps expired rows until it next reloads them.
fn in_force(ban: &BlockedIp) -> bool {
    ban.expires_at.is_none_or(|at| at > now_ms())
}

/// The `block` of one of Stalwart's bans. Its id follows from the object,
/// so a second read of the same ban publishes the same event id.
fn block(node: &str, ban: &BlockedIp) -> Event {
    Event {
        id: derived_id("stalwart-ban", &[&ban.id.to_string(), &ban.address]),
        ..Event::new(
            node,
            Body::IpBlock(IpBlock {
                ip: ban.address.clone(),
                action: BlockAction::Block,
                reason: format!(
                    "{REASON_PREFIX}{} (BlockedIp {})",
                    crate::bounded::cut(&ban.reason, 64),
                    management::jmap_id(ban.id)
                ),
                expires_at: ban.expires_at,
            }),
        )
    }
}

impl Handler for Resolver {
    fn name(&self) -> &str {
        NAME
    }
    fn subscribes_to(&self, kind: &str) -> bool {
        kind == "registry-change"
    }
    fn stats(&self) -> &HandlerStats {
        &self.stats
    }
    fn call<'a>(
        &'a self,
        events: &'a [&'a Event],
    ) -> BoxFuture<'a, Result<Vec<Outcome>, CallError>> {
        Box::pin(async move {
            let outcome = match self.resolve(events).await {
                Ok(()) => Outcome::Ok,
                Err(why) => {
                    tracing::warn!("resolving Stalwart's registry pointers: {why}");
                    Outcome::Retry(why)
                }
            };
            Ok(vec![outcome; events.len()])
        })
    }
}
