//! The host side of a handler's store: one [`HostState`] per instance, and
//! the capability interfaces it implements. A capability call turns into an
//! [`Effect`] for the node's [`Effects`]; what a handler may import at all was
//! settled at load time from its manifest (see `sandbox::Loaded`).

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::herald::coordination::{
    blocklist, certificates, config, idle, log, publish, push, types,
};
use super::bindings::{body_from_wit, data_types_from_wit, urgency_from_wit, wit};
use super::stdio::GuestOutput;
use crate::effects::{Effect, EffectError, Effects};

pub struct HostState {
    pub(super) handler: Arc<str>,
    pub(super) settings: Arc<BTreeMap<String, String>>,
    pub(super) effects: Arc<dyn Effects>,
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limits: super::MemoryCap,
    pub(super) stdout: GuestOutput,
    pub(super) stderr: GuestOutput,
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
    /// Hand an effect to the node. The store is not `Sync`, so what the
    /// future holds across the await is cloned out of it first.
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
    async fn notify(&mut self, account_id: u32, change_id: u64, types: wit::DataTypes) {
        // IDLE wake-ups are best effort by nature: a subscriber that is gone
        // has nothing to wake, so the handler is not told.
        let _ = self
            .apply(Effect::IdleNotify {
                account_id,
                change_id,
                types: data_types_from_wit(types),
            })
            .await;
    }
}

impl push::Host for HostState {
    async fn deliver(
        &mut self,
        event_id: String,
        message: push::Message,
    ) -> Result<(), push::DeliveryError> {
        let effect = Effect::PushDeliver {
            event_id,
            account_id: message.account_id,
            endpoint: message.endpoint,
            payload: message.payload,
            ttl: message.ttl,
            urgency: urgency_from_wit(message.urgency),
        };
        self.apply(effect).await.map(drop).map_err(|e| match e {
            EffectError::Transient(m) => push::DeliveryError::Transient(m),
            EffectError::Gone(m) => push::DeliveryError::Gone(m),
            EffectError::Invalid(m) => push::DeliveryError::Invalid(m),
        })
    }
}

fn message(e: EffectError) -> String {
    e.to_string()
}

impl blocklist::Host for HostState {
    async fn block(
        &mut self,
        network: String,
        reason: String,
        expires_at: Option<u64>,
    ) -> Result<(), String> {
        let effect = Effect::Block {
            network,
            reason,
            expires_at,
        };
        self.apply(effect).await.map(drop).map_err(message)
    }

    async fn unblock(&mut self, network: String) -> Result<(), String> {
        self.apply(Effect::Unblock { network })
            .await
            .map(drop)
            .map_err(message)
    }
}

impl certificates::Host for HostState {
    async fn install(&mut self, c: certificates::Certificate) -> Result<(), String> {
        let effect = Effect::InstallCertificate {
            domains: c.domains,
            not_after: c.not_after,
            chain_pem: c.chain_pem,
            private_key_pem: c.private_key_pem,
        };
        self.apply(effect).await.map(drop).map_err(message)
    }
}

impl publish::Host for HostState {
    async fn publish(&mut self, key: String, body: wit::BodyResult) -> Result<String, String> {
        let body = body_from_wit(body);
        let effect = Effect::Publish {
            key,
            kind: body.kind(),
            body,
        };
        match self.apply(effect).await {
            Ok(Some(id)) => Ok(id),
            Ok(None) => Err("the node returned no event id".into()),
            Err(e) => Err(message(e)),
        }
    }
}
