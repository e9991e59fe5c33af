//! The node service (`herald run`): loads the handlers, opens the node's
//! state, starts the consumer groups and stops them cleanly.
//!
//! Broadcast handlers are fed by the node's own group `<groupId>.<nodeId>`;
//! shared handlers by the cluster's common group `<groupId>`. A node only
//! joins the common group if it runs a shared handler: a member without one
//! would take partitions and commit events that no handler saw.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dispatch::{Decoding, Dispatcher};
use crate::effects::blocklist::Blocklist;
use crate::effects::node::NodeEffects;
use crate::event::now_ms;
use crate::kafka::{self, consumer, producer::Producer};
use crate::manifest::Mode;
use crate::registry::Registry;
use crate::sandbox::{Sandbox, SandboxConfig};

/// A node's parts, shared by the consumers, the local API and tests.
pub struct Node {
    pub config: Config,
    pub sandbox: Arc<Sandbox>,
    pub registry: Arc<Registry>,
    pub effects: Arc<NodeEffects>,
    pub producer: Arc<Producer>,
    pub broadcast: Arc<consumer::Status>,
    pub shared: Arc<consumer::Status>,
}

impl Node {
    /// Load everything that does not need the broker: handlers, state,
    /// producer. Fails on a handler that does not load.
    pub fn open(config: Config) -> anyhow::Result<Node> {
        let sandbox = Arc::new(Sandbox::new(SandboxConfig {
            cache_dir: Some(config.state_dir.join("components")),
            ..SandboxConfig::default()
        })?);
        let registry = Arc::new(Registry::load(&sandbox, &config.handlers)?);
        let producer = Arc::new(Producer::new(&config)?);
        let blocklist = Arc::new(Blocklist::open(&config.state_dir)?);
        let effects = Arc::new(NodeEffects::new(
            &config.node_id,
            blocklist,
            producer.clone(),
        ));
        Ok(Node {
            config,
            sandbox,
            registry,
            effects,
            producer,
            broadcast: Default::default(),
            shared: Default::default(),
        })
    }

    /// The topics this node reads, and their dead-letter topics.
    fn topics(&self, mode: Mode) -> Vec<String> {
        let mut topics = vec![self.config.topics.events.clone()];
        if mode == Mode::Broadcast && self.config.stalwart.enabled {
            topics.push(self.config.stalwart.topic.clone());
        }
        topics
    }

    fn dispatcher(&self, mode: Mode) -> Arc<Dispatcher> {
        let stalwart = self.config.stalwart.enabled.then(|| {
            (
                self.config.stalwart.topic.clone(),
                self.config.stalwart.node_id.unwrap_or_default(),
            )
        });
        Arc::new(Dispatcher {
            sandbox: self.sandbox.clone(),
            effects: self.effects.clone(),
            registry: self.registry.clone(),
            mode,
            retry: self.config.retry.clone(),
            dead_letters: self.producer.clone(),
            decoding: Decoding { stalwart },
        })
    }

    /// Run until `shutdown`: join the groups, handle events; then finish
    /// in-flight batches, commit, leave the groups.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut all_topics = self.topics(Mode::Broadcast);
        all_topics.extend(
            all_topics
                .clone()
                .iter()
                .map(|t| self.config.topics.dead_letter(t)),
        );
        kafka::create_topics(&self.config, &all_topics).await?;
        let session_timeout = kafka::session_timeout(&self.config).await;

        let mut tasks = JoinSet::new();
        for (mode, group, status) in [
            (
                Mode::Broadcast,
                self.config.broadcast_group(),
                self.broadcast.clone(),
            ),
            (
                Mode::Shared,
                self.config.shared_group(),
                self.shared.clone(),
            ),
        ] {
            if self.registry.snapshot(mode).is_empty() {
                tracing::info!(?mode, "no handler in this mode; not joining {group}");
                continue;
            }
            let group = consumer::Group {
                id: group,
                topics: self.topics(mode),
                session_timeout,
            };
            let (node, dispatcher, stop) = (self.clone(), self.dispatcher(mode), shutdown.clone());
            tasks.spawn(async move {
                consumer::run(&node.config, group, dispatcher, status, stop).await
            });
        }

        // Expired blocklist entries go on their own.
        let blocklist = self.effects.blocklist.clone();
        let expiry_stop = shutdown.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = expiry_stop.cancelled() => return anyhow::Ok(()),
                    _ = tick.tick() => {
                        let b = blocklist.clone();
                        let written = tokio::task::spawn_blocking(move || {
                            if b.expire(now_ms()) > 0 {
                                b.flush()?;
                            }
                            b.export(false)
                        })
                        .await?;
                        if let Err(e) = written {
                            tracing::error!(error = %format!("{e:#}"), "cannot write the blocklist");
                        }
                    }
                }
            }
        });

        let mut result = Ok(());
        while let Some(done) = tasks.join_next().await {
            let outcome = done.map_err(anyhow::Error::from).and_then(|r| r);
            if let Err(e) = outcome {
                tracing::error!(error = %format!("{e:#}"), "a node task failed; stopping");
                shutdown.cancel();
                result = Err(e);
            }
        }
        use crate::effects::Effects;
        self.effects.flush().await?;
        self.effects.blocklist.export(true)?;
        result
    }
}

/// Cancel `token` on SIGTERM or SIGINT.
pub fn stop_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
        }
        token.cancel();
    });
}
