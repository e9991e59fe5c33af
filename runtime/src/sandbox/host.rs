//! The host side of a handler's store: one [`HostState`] per instance, and
//! the capability interfaces it implements. A capability call turns into an
//! [`Effect`] for the node's [`Effects`]; what a handler may import at all was
//! settled at load time from its manifest (see `sandbox::Loaded`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::herald::coordination::{
    blocklist, certificates, config, idle, log, publish, push, types,
};
use super::bindings::{body_from_wit, data_types_from_wit, urgency_from_wit, wit};
use super::stdio::GuestOutput;
use crate::effects::{Effect, EffectError, Effects};
use crate::event::version::{self, Entity, Version};
use herald_guest::net::IpNet;

pub struct HostState {
    pub(super) handler: Arc<str>,
    pub(super) settings: Arc<BTreeMap<String, String>>,
    pub(super) effects: Arc<dyn Effects>,
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limits: super::MemoryCap,
    pub(super) budget: CallBudget,
    pub(super) manifest: Arc<crate::manifest::Manifest>,
    /// The events of the call in progress (id, hops), for `publish`.
    pub(super) causes: Vec<(String, u32)>,
    /// How many events the call in progress handles.
    pub(super) call_events: u32,
    /// The versions of the entities the call's events write, for the
    /// blocklist and certificate effects.
    pub(super) versions: Versions,
    pub(super) stdout: GuestOutput,
    pub(super) stderr: GuestOutput,
    /// When the call in progress must end (see `sandbox::set_deadline`).
    pub(super) deadline_at: std::time::Instant,
}

/// Which event of a call accounts for a write to an entity: a block of a
/// network, a certificate for a domain takes the version of the event about
/// that entity. [`super::Session::call`] never puts two events about one
/// entity in one call, so there is at most one.
#[derive(Default)]
pub(crate) struct Versions {
    networks: HashMap<IpNet, Version>,
    domains: HashMap<String, Version>,
}

impl Versions {
    pub(super) fn clear(&mut self) {
        self.networks.clear();
        self.domains.clear();
    }

    pub(super) fn insert(&mut self, entity: Entity, version: Version) {
        match entity {
            Entity::Network(n) => self.networks.insert(n, version),
            Entity::Domain(d) => self.domains.insert(d, version),
        };
    }

    fn network(&self, text: &str) -> Option<Version> {
        if self.networks.is_empty() {
            return None;
        }
        self.networks.get(&version::network(text)?).cloned()
    }

    fn domains(&self, names: &[String]) -> Option<Version> {
        names
            .iter()
            .find_map(|d| self.domains.get(&version::domain(d)))
            .cloned()
    }
}

/// Log lines a call may write; past it, one "log truncated" line.
const LOG_LINES: u32 = 100;
/// Bytes of log a call may write.
const LOG_BYTES: usize = 64 * 1024;
/// Bytes of strings a call may hand the host through capabilities (network
/// names, reasons, payloads, certificates). The memory cap bounds each one;
/// this bounds their sum over a call that makes many.
pub const LIFTED_BYTES: usize = 8 * 1024 * 1024;

/// What a call has used of its per-call budgets.
#[derive(Default)]
pub(crate) struct CallBudget {
    log_lines: u32,
    log_bytes: usize,
    log_truncated: bool,
    lifted: usize,
    /// Events published in this call.
    published: u32,
    /// Events published per cause (index into `causes`).
    per_cause: std::collections::HashMap<usize, u32>,
    /// IDLE wake-ups asked for in this call.
    notified: u32,
}

/// IDLE wake-ups a call may ask for per event it handles: a state change
/// wakes one account, so a call that asks for many more is waking
/// sessions that its events are not about.
const NOTIFIES_PER_EVENT: u32 = 4;

impl CallBudget {
    pub(super) fn reset(&mut self) {
        *self = CallBudget::default();
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl HostState {
    /// Count `bytes` the guest handed over against the call's budget.
    fn charge(&mut self, bytes: usize) -> Result<(), EffectError> {
        self.budget.lifted = self.budget.lifted.saturating_add(bytes);
        if self.budget.lifted > LIFTED_BYTES {
            metrics::counter!("herald_guest_budget_exceeded_total", "handler" => self.handler.to_string())
                .increment(1);
            return Err(EffectError::Denied(format!(
                "this call handed the host more than {LIFTED_BYTES} bytes"
            )));
        }
        Ok(())
    }

    /// Hand an effect that never waits to the node ([`Effects::apply_now`]).
    fn apply_now(&self, effect: Effect) -> Result<(), wit::EffectError> {
        match self.effects.apply_now(&self.handler, effect) {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::debug!(handler = %self.handler, error = %e, "effect refused");
                Err(to_wit(e))
            }
        }
    }

    /// Hand an effect that may wait to the node. The store is not `Sync`,
    /// so what the future holds across the await is cloned out of it
    /// first.
    fn apply(
        &self,
        effect: Effect,
    ) -> impl Future<Output = Result<Option<String>, EffectError>> + Send + 'static {
        let (effects, handler) = (self.effects.clone(), self.handler.clone());
        async move {
            let result = effects.apply(&handler, effect).await;
            if let Err(e) = &result {
                tracing::debug!(handler = %handler, error = %e, "effect refused");
            }
            result
        }
    }
}

impl types::Host for HostState {}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) {
        let handler = &*self.handler;
        let b = &mut self.budget;
        b.log_lines += 1;
        b.log_bytes = b.log_bytes.saturating_add(message.len());
        if b.log_lines > LOG_LINES || b.log_bytes > LOG_BYTES {
            if !b.log_truncated {
                b.log_truncated = true;
                tracing::warn!(
                    handler,
                    "log truncated: this call wrote more than {LOG_LINES} lines or {LOG_BYTES} bytes"
                );
            }
            metrics::counter!("herald_guest_log_dropped_total", "handler" => handler.to_string())
                .increment(1);
            return;
        }
        let message = crate::bounded::cut(&message, crate::bounded::TEXT_MAX);
        match level {
            log::Level::Trace => tracing::trace!(handler, "{message}"),
            log::Level::Debug => tracing::debug!(handler, "{message}"),
            log::Level::Info => tracing::info!(handler, "{message}"),
            log::Level::Warn => tracing::warn!(handler, "{message}"),
            log::Level::Error => tracing::error!(handler, "{message}"),
        }
    }
}

impl config::Host for HostState {
    fn get(&mut self, key: String) -> Option<String> {
        self.settings.get(&key).cloned()
    }
}

impl idle::Host for HostState {
    fn notify(&mut self, account_id: u32, change_id: u64, types: wit::DataTypes) {
        // IDLE wake-ups are best effort by nature: a subscriber that is gone
        // has nothing to wake, so the handler is not told, nor when the
        // call's budget is spent (one call must not wake every session).
        let budget = NOTIFIES_PER_EVENT.saturating_mul(self.call_events.max(1));
        self.budget.notified += 1;
        if self.budget.notified > budget {
            if self.budget.notified == budget + 1 {
                tracing::warn!(handler = %self.handler, budget,
                    "a call asked for more IDLE wake-ups than its events account for; ignoring the rest");
            }
            metrics::counter!("herald_idle_notify_refused_total", "handler" => self.handler.to_string())
                .increment(1);
            return;
        }
        let _ = self.apply_now(Effect::IdleNotify {
            account_id,
            change_id,
            types: data_types_from_wit(types),
        });
    }
}

/// The WIT form of an effect's error: the same four classes.
fn to_wit(e: EffectError) -> wit::EffectError {
    match e {
        EffectError::Transient(m) => wit::EffectError::Transient(m),
        EffectError::Gone(m) => wit::EffectError::Gone(m),
        EffectError::Invalid(m) => wit::EffectError::Invalid(m),
        EffectError::Denied(m) => wit::EffectError::Denied(m),
    }
}

impl push::Host for HostState {
    async fn deliver(
        &mut self,
        event_id: String,
        message: push::Message,
    ) -> Result<(), wit::EffectError> {
        let keys_len = message
            .keys
            .as_ref()
            .map_or(0, |k| k.p256dh.len() + k.auth.len());
        let topic_len = message.topic.as_ref().map_or(0, String::len);
        self.charge(
            event_id.len() + message.endpoint.len() + message.payload.len() + keys_len + topic_len,
        )
        .map_err(to_wit)?;
        let effect = Effect::PushDeliver {
            event_id,
            account_id: message.account_id,
            endpoint: message.endpoint,
            payload: message.payload,
            ttl: message.ttl,
            urgency: urgency_from_wit(message.urgency),
            keys: message.keys.map(|k| crate::event::PushKeys {
                p256dh: k.p256dh,
                auth: k.auth,
            }),
            topic: message.topic,
        };
        self.apply(effect).await.map(drop).map_err(to_wit)
    }
}

impl blocklist::Host for HostState {
    fn block(
        &mut self,
        network: String,
        reason: String,
        expires_at: Option<u64>,
    ) -> Result<(), wit::EffectError> {
        self.charge(network.len() + reason.len()).map_err(to_wit)?;
        let version = self.versions.network(&network);
        self.apply_now(Effect::Block {
            network,
            reason,
            expires_at,
            version,
        })
    }

    fn unblock(&mut self, network: String) -> Result<(), wit::EffectError> {
        self.charge(network.len()).map_err(to_wit)?;
        let version = self.versions.network(&network);
        self.apply_now(Effect::Unblock { network, version })
    }
}

impl certificates::Host for HostState {
    async fn install(&mut self, c: certificates::Certificate) -> Result<(), wit::EffectError> {
        let size = c.domains.iter().map(String::len).sum::<usize>()
            + c.chain_pem.len()
            + c.private_key_pem.len();
        self.charge(size).map_err(to_wit)?;
        let effect = Effect::InstallCertificate {
            version: self.versions.domains(&c.domains),
            domains: c.domains,
            not_after: c.not_after,
            chain_pem: c.chain_pem,
            private_key_pem: c.private_key_pem,
        };
        self.apply(effect).await.map(drop).map_err(to_wit)
    }
}

impl HostState {
    /// What a publish may be: a kind the manifest lists, within the call's
    /// budget, on behalf of an event of this call. Answers the new event's
    /// id (derived, so a retry repeats it) and hops.
    fn scope_publish(&mut self, cause: &str, kind: &str) -> Result<(String, u32), EffectError> {
        if !self.manifest.publish.contains(kind) {
            return Err(EffectError::Denied(format!(
                "handler `{}` may not publish `{kind}` events (its manifest's `publish` lists {:?})",
                self.handler, self.manifest.publish
            )));
        }
        let Some(index) = self.causes.iter().position(|(id, _)| id == cause) else {
            return Err(EffectError::Invalid(format!(
                "publish names cause `{}`, which is not an event of this call",
                crate::bounded::cut(cause, 64)
            )));
        };
        let budget = self.manifest.limits.publishes;
        if self.budget.published >= budget {
            metrics::counter!("herald_publish_refused_total", "handler" => self.handler.to_string(), "why" => "budget")
                .increment(1);
            return Err(EffectError::Denied(format!(
                "this call already published {budget} events (limits.publishes)"
            )));
        }
        self.budget.published += 1;
        let n = self.budget.per_cause.entry(index).or_default();
        *n += 1;
        let (cause_id, hops) = &self.causes[index];
        let id = crate::event::derived_id("pub", &[cause_id, &self.handler, &n.to_string()]);
        Ok((id, hops.saturating_add(1)))
    }
}

impl publish::Host for HostState {
    async fn publish(
        &mut self,
        cause: String,
        key: String,
        body: wit::BodyResult,
    ) -> Result<String, wit::EffectError> {
        let body = body_from_wit(body);
        self.charge(cause.len() + key.len() + body.to_json().to_string().len())
            .map_err(to_wit)?;
        let (id, hops) = self.scope_publish(&cause, body.kind()).map_err(to_wit)?;
        let effect = Effect::Publish {
            id,
            hops,
            key,
            kind: body.kind(),
            body,
        };
        match self.apply(effect).await {
            Ok(Some(id)) => Ok(id),
            Ok(None) => Err(wit::EffectError::Transient(
                "the node returned no event id".into(),
            )),
            Err(e) => Err(to_wit(e)),
        }
    }
}
