//! The node service (`herald run`): loads the handlers, opens the node's
//! state, runs the consumer groups, the local API and the handler-folder
//! watcher, and stops them cleanly.
//!
//! Broadcast handlers are fed by the node's own group `<groupId>.<nodeId>`;
//! shared handlers by the cluster's common group `<groupId>`. A node is in
//! a group only while it runs a handler of that mode: a member without one
//! would take partitions and commit events that no handler saw. Hot reload
//! can therefore make the node join or leave a group.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::codec::Decoder;
use crate::config::Config;
use crate::dispatch::keeper::Keeper;
use crate::dispatch::{self, Dispatcher, LetteredElsewhere};
use crate::effects::Effects;
use crate::effects::blocklist::Blocklist;
use crate::effects::node::NodeEffects;
use crate::effects::notify::Hub;
use crate::event::{Event, now_ms};
use crate::kafka::{self, consumer, producer::Producer};
use crate::manifest::Mode;
use crate::registry::{HandlerStats, Registry};
use crate::sandbox::{CallError, Loaded, Outcome, Sandbox, SandboxConfig};

/// A node's parts, wired together. The consumers, the API and the watcher
/// each get the parts they need, never the node.
pub struct Node {
    config: Config,
    sandbox: Arc<Sandbox>,
    registry: Arc<Registry>,
    effects: Arc<NodeEffects>,
    producer: Arc<Producer>,
    broadcast: Arc<consumer::Status>,
    shared: Arc<consumer::Status>,
    metrics: Option<PrometheusHandle>,
    recent_letters: Arc<crate::dispatch::RecentLetters>,
    /// Keeps the newest record of each state-topic key last on the topic.
    keeper: Arc<Keeper>,
}

impl Node {
    /// Load everything that does not need the broker: handlers, state,
    /// producer. Fails on a handler that does not load.
    pub fn open(config: Config) -> anyhow::Result<Node> {
        let sandbox = Arc::new(Sandbox::new(SandboxConfig {
            cache_dir: Some(config.state_dir.join("components")),
            ..SandboxConfig::default()
        })?);
        let registry = Arc::new(Registry::load(sandbox.clone(), &config.handlers)?);
        // Compiling components leaves megabytes of freed heap behind.
        release_free_memory();
        let producer = Arc::new(Producer::new(&config)?);
        let effects = Arc::new(NodeEffects::open(&config, producer.clone())?);
        let keeper = Arc::new(Keeper::open(&config.state_dir, &config.topics.state)?);
        Ok(Node {
            config,
            sandbox,
            registry,
            effects,
            producer,
            broadcast: Default::default(),
            shared: Default::default(),
            metrics: None,
            recent_letters: Default::default(),
            keeper,
        })
    }

    /// Serve `/metrics` from this Prometheus recorder.
    pub fn with_metrics(mut self, handle: PrometheusHandle) -> Node {
        self.metrics = Some(handle);
        self
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The loaded handlers.
    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// IDLE and certificate notices, as the API's stream serves them.
    pub fn notices(&self) -> &Arc<Hub> {
        &self.effects.notices
    }

    pub fn blocklist(&self) -> &Arc<Blocklist> {
        &self.effects.blocklist
    }

    pub(crate) fn producer(&self) -> &Arc<Producer> {
        &self.producer
    }

    /// Ready to serve: handlers loaded, and every group the node runs joined
    /// and in touch with the brokers (what `/readyz` answers).
    pub fn ready(&self) -> bool {
        !self.registry.all().is_empty()
            && consumer::all_ready([&*self.broadcast, &*self.shared], now_ms())
    }

    /// Partitions the group of `mode` holds now (0 when it is not running).
    pub fn assigned_partitions(&self, mode: Mode) -> usize {
        self.status(mode).assigned.load(Ordering::Relaxed)
    }

    /// The topics both groups read: herald's two (a new node reads the
    /// state topic from its start: every entity's latest record), and
    /// Stalwart's when enabled.
    fn topics(&self) -> Vec<String> {
        let t = &self.config.topics;
        let mut topics = vec![t.events.clone(), t.state.clone()];
        // Broadcast handlers get Stalwart's events; the shared group reads
        // the topic only to letter its junk once per cluster
        // (`Dispatcher::only_letters`).
        if self.config.stalwart.enabled {
            topics.push(self.config.stalwart.topic.clone());
        }
        topics
    }

    /// What a consumer of `mode` hands its records to: decode, then this
    /// node's handlers of that mode, applying their effects here. Public for
    /// the pipeline benchmark, which drives it without a broker.
    pub fn dispatcher(&self, mode: Mode) -> Arc<Dispatcher> {
        let stalwart = self.config.stalwart.enabled.then(|| {
            (
                self.config.stalwart.topic.clone(),
                self.config.stalwart.node_id.unwrap_or_default(),
            )
        });
        Arc::new(Dispatcher {
            handlers: Arc::new(Sandboxed {
                sandbox: self.sandbox.clone(),
                registry: self.registry.clone(),
                effects: self.effects.clone(),
                mode,
            }),
            effects: self.effects.clone(),
            retry: self.config.retry,
            dead_letters: self.producer.clone(),
            max_hops: self.config.publish_max_hops,
            recent: self.recent_letters.clone(),
            keeper: Some(self.keeper.clone()),
            lettered_elsewhere: (mode == Mode::Broadcast).then(|| {
                Arc::new(SharedGroupLetters {
                    registry: self.registry.clone(),
                    topics: self.topics(),
                }) as Arc<dyn LetteredElsewhere>
            }),
            only_letters: (mode == Mode::Shared && self.config.stalwart.enabled)
                .then(|| self.config.stalwart.topic.clone()),
            decoder: Decoder {
                stalwart,
                max_stalwart_events: self.config.stalwart.max_events_per_record,
                trust: self.config.trust.clone().map(Arc::new),
            },
        })
    }

    /// The parts the local API serves.
    fn api_state(&self) -> ApiState {
        ApiState {
            node_id: self.config.node_id.clone(),
            registry: self.registry.clone(),
            blocklist: self.effects.blocklist.clone(),
            certificates: self.effects.certificates.clone(),
            notices: self.effects.notices.clone(),
            producer: self.producer.clone(),
            groups: [
                (
                    "broadcast",
                    self.config.broadcast_group(),
                    self.broadcast.clone(),
                ),
                ("shared", self.config.shared_group(), self.shared.clone()),
            ],
            recent_letters: self.recent_letters.clone(),
            metrics: self.metrics.clone(),
        }
    }

    fn status(&self, mode: Mode) -> &Arc<consumer::Status> {
        match mode {
            Mode::Broadcast => &self.broadcast,
            Mode::Shared => &self.shared,
        }
    }

    /// Run until `shutdown`. Returns once the groups are left and the
    /// node's state is written.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.run_with(shutdown, |_| {}).await
    }

    /// [`Node::run`], telling `on_api` where the API listens.
    pub async fn run_with(
        self: Arc<Self>,
        shutdown: CancellationToken,
        on_api: impl FnOnce(SocketAddr),
    ) -> anyhow::Result<()> {
        // The kernel enforces the blocklist before anything else happens,
        // broker or not; a failure is logged and retried, never fatal.
        if let Some(firewall) = &self.effects.firewall {
            firewall.sync(&self.effects.blocklist).await;
        }
        let mut topics = self.topics();
        topics.extend(
            topics
                .clone()
                .iter()
                .map(|t| self.config.topics.dead_letter(t)),
        );
        kafka::ensure_topics(&self.config, &topics).await?;
        let session_timeout = kafka::session_timeout(&self.config).await;
        on_api(api::serve(self.api_state(), &self.config, shutdown.clone()).await?);

        let mut tasks = JoinSet::new();
        if let Some(firewall) = self.effects.firewall.clone() {
            let blocklist = self.effects.blocklist.clone();
            let stop = shutdown.clone();
            tasks.spawn(async move {
                firewall.run(blocklist, stop).await;
                Ok(())
            });
        }
        tasks.spawn(self.clone().supervise(session_timeout, shutdown.clone()));
        tasks.spawn(self.clone().housekeeping(shutdown.clone()));
        {
            let (keeper, producer) = (self.keeper.clone(), self.producer.clone());
            let stop = shutdown.clone();
            tasks.spawn(async move {
                keeper.run(producer, stop).await;
                Ok(())
            });
        }
        tasks.spawn(crate::watch::handler_folder(
            self.registry.clone(),
            shutdown.clone(),
        ));

        let mut result = Ok(());
        while let Some(done) = tasks.join_next().await {
            let outcome = done.map_err(anyhow::Error::from).and_then(|r| r);
            if let Err(e) = outcome {
                tracing::error!(error = %format!("{e:#}"), "a node task failed; stopping");
                shutdown.cancel();
                result = Err(e);
            }
        }
        self.effects.flush().await?;
        self.effects.blocklist.export(true)?;
        // The last batches' changes, which the firewall task may have
        // stopped before; a hung nft does not hold the exit up for long.
        if let Some(firewall) = &self.effects.firewall {
            let last = firewall.sync(&self.effects.blocklist);
            if tokio::time::timeout(Duration::from_secs(10), last)
                .await
                .is_err()
            {
                tracing::warn!(
                    "firewall: the last sync did not finish; the next start rebuilds the table"
                );
            }
        }
        result
    }

    /// Keep one consumer group per mode that has handlers, joining or
    /// leaving as reloads change the set.
    async fn supervise(
        self: Arc<Self>,
        session_timeout: Duration,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut changes = self.registry.changes();
        let mut running: [Option<(
            CancellationToken,
            tokio::task::JoinHandle<anyhow::Result<()>>,
        )>; 2] = [None, None];
        loop {
            for (i, mode) in [Mode::Broadcast, Mode::Shared].into_iter().enumerate() {
                let wanted = !self.registry.snapshot(mode).is_empty();
                let group = match mode {
                    Mode::Broadcast => self.config.broadcast_group(),
                    Mode::Shared => self.config.shared_group(),
                };
                if wanted && running[i].is_none() {
                    let stop = shutdown.child_token();
                    let spec = consumer::Group {
                        id: group,
                        topics: self.topics(),
                        state_topic: Some(self.config.topics.state.clone()),
                        session_timeout,
                    };
                    let (node, dispatcher, status) = (
                        self.clone(),
                        self.dispatcher(mode),
                        self.status(mode).clone(),
                    );
                    let token = stop.clone();
                    let task = tokio::spawn(async move {
                        consumer::run(&node.config, spec, dispatcher, status, token).await
                    });
                    running[i] = Some((stop, task));
                } else if !wanted && let Some((stop, task)) = running[i].take() {
                    tracing::info!(group, "no handler in this mode any more; leaving the group");
                    stop.cancel();
                    task.await??;
                } else if !wanted {
                    tracing::info!(?mode, "no handler in this mode; not joining {group}");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = changes.changed() => if changed.is_err() { break },
            }
        }
        for (_, task) in running.into_iter().flatten() {
            task.await??;
        }
        Ok(())
    }

    /// Expire blocklist entries, keep its export current, and give memory
    /// back once a burst of events is over.
    async fn housekeeping(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut ticks = 0u64;
        let (mut seen, mut busy) = (self.events_finished(), false);
        loop {
            ticks += 1;
            // As soon as the handlers go a tick without an event after
            // handling some, and every 10 s whatever happened (compiles on
            // a reload, API calls): a node that has handled a burst then
            // idles near its baseline within a second, not its peak.
            let finished = self.events_finished();
            let quiet = finished == seen;
            let trim = (quiet && busy) || ticks.is_multiple_of(40);
            (seen, busy) = (finished, !quiet);
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            let b = self.effects.blocklist.clone();
            // Off the runtime's threads: trimming after a burst returns
            // megabytes page by page, and a flush syncs the journal.
            let written = tokio::task::spawn_blocking(move || {
                if trim {
                    release_free_memory();
                }
                if b.expire(now_ms()) > 0 {
                    b.flush()?;
                }
                b.export(false)
            })
            .await?;
            if let Err(e) = written {
                tracing::error!(error = %format!("{e:#}"), "cannot write the blocklist");
            }
            metrics::gauge!("herald_blocklist_entries").set(self.effects.blocklist.len() as f64);
            self.effects.notices.prune();
            metrics::gauge!("herald_idle_accounts").set(self.effects.notices.accounts() as f64);
            for (mode, s) in [("broadcast", &self.broadcast), ("shared", &self.shared)] {
                metrics::gauge!("herald_assigned_partitions", "mode" => mode)
                    .set(s.assigned.load(Ordering::Relaxed) as f64);
            }
        }
    }

    /// Events the handlers have finished with, however it went: a change
    /// between two housekeeping ticks means the node was busy.
    fn events_finished(&self) -> u64 {
        self.registry
            .all()
            .iter()
            .map(|loaded| {
                let s = self.registry.stats(&loaded.manifest.name);
                [&s.handled, &s.rejected, &s.dead_lettered, &s.failed_calls]
                    .iter()
                    .map(|c| c.load(Ordering::Relaxed))
                    .sum::<u64>()
            })
            .sum()
    }
}

/// A mode's handlers as dispatch calls them: the registry's current set,
/// each call a fresh sandboxed instance applying effects to this node.
struct Sandboxed {
    sandbox: Arc<Sandbox>,
    registry: Arc<Registry>,
    effects: Arc<NodeEffects>,
    mode: Mode,
}

struct SandboxedHandler {
    sandbox: Arc<Sandbox>,
    effects: Arc<dyn Effects>,
    loaded: Arc<Loaded>,
    stats: Arc<HandlerStats>,
}

impl dispatch::Handlers for Sandboxed {
    fn current(&self) -> Vec<Arc<dyn dispatch::Handler>> {
        self.registry
            .snapshot(self.mode)
            .iter()
            .map(|loaded| {
                Arc::new(SandboxedHandler {
                    sandbox: self.sandbox.clone(),
                    effects: self.effects.clone(),
                    stats: self.registry.stats(&loaded.manifest.name),
                    loaded: loaded.clone(),
                }) as Arc<dyn dispatch::Handler>
            })
            .collect()
    }
}

impl dispatch::Handler for SandboxedHandler {
    fn name(&self) -> &str {
        &self.loaded.manifest.name
    }
    fn subscribes_to(&self, kind: &str) -> bool {
        self.loaded.manifest.subscribes_to(kind)
    }
    fn stats(&self) -> &HandlerStats {
        &self.stats
    }
    fn call<'a>(
        &'a self,
        events: &'a [&'a Event],
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Vec<Outcome>, CallError>> + Send + 'a>> {
        Box::pin(
            self.sandbox
                .call(&self.loaded, events, self.effects.clone()),
        )
    }
}

/// Hand the heap memory the process freed back to the system. glibc keeps
/// freed memory in its arenas (one per thread that allocated, and a node has
/// many: tokio's workers, librdkafka's, wasmtime's compiler): without this a
/// node idles at the high-water mark of its busiest minute (the memory
/// bench saw 33–56 MiB idle after the same 100 000 events, depending on
/// where a 10 s period fell). Called when a burst ends and every 10 s; it
/// costs well under a millisecond on an idle heap.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
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

/// The broadcast groups leave undecodable records to the shared group,
/// which reads every topic they read (Stalwart's only for that), whenever
/// this node has shared handlers (so the group exists): one letter per
/// cluster instead of one per node and group.
struct SharedGroupLetters {
    registry: Arc<Registry>,
    topics: Vec<String>,
}

impl LetteredElsewhere for SharedGroupLetters {
    fn lettered_elsewhere(&self, topic: &str) -> bool {
        self.topics.iter().any(|t| t == topic) && !self.registry.snapshot(Mode::Shared).is_empty()
    }
}
