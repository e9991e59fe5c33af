//! The node service (`herald run`): loads the handlers, opens the node's
//! state, runs the consumer groups, the local API and the handler-folder
//! watcher, and stops them cleanly.
//!
//! Broadcast handlers are fed by the node's own group `<groupId>.<nodeId>`;
//! shared handlers by the cluster's common group `<groupId>`. A node is in
//! a group only while it runs a handler of that mode: a member without one
//! would take partitions and commit events that no handler saw. Hot reload
//! can therefore make the node join or leave a group.

use std::collections::{BTreeMap, BTreeSet};
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
use crate::control::{self, Control};
use crate::dispatch::keeper::Keeper;
use crate::dispatch::pointers::{self, Resolver};
use crate::dispatch::probe::Prober;
use crate::dispatch::{self, Dispatcher, LetteredElsewhere};
use crate::effects::Effects;
use crate::effects::blocklist::Blocklist;
use crate::effects::node::NodeEffects;
use crate::effects::notify::Hub;
use crate::event::probe::{HandlerReport, NodeReport};
use crate::event::{Event, now_ms};
use crate::kafka::offsets;
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
    /// Probes the topics and answers other nodes' probes.
    prober: Arc<Prober>,
    /// Resolves Stalwart's registry pointers, in the shared group
    /// (`stalwart.management`).
    pointers: Option<Arc<dyn dispatch::Handler>>,
    /// Pause, resume, replay and start positions per handler.
    control: Arc<Control>,
    /// The operator's commands, for the supervisor (taken when it starts).
    control_requests:
        std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<control::Request>>>,
}

/// A consumer group's task, and how to stop it.
struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Stop the consumer: it finishes its batches and commits them first.
    async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await?
    }
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
        let broadcast: Arc<consumer::Status> = Arc::default();
        let shared: Arc<consumer::Status> = Arc::default();
        let (control, control_requests) =
            Control::open(&config.state_dir, [broadcast.clone(), shared.clone()])?;
        let control = Arc::new(control);
        // A handler without a `start` of its own joins its mode's group
        // wherever it is: known from the start. Those with one are dealt
        // with by the supervisor, before any group hands them an event.
        let plain: Vec<String> = registry
            .all()
            .iter()
            .filter(|h| h.manifest.start.is_none())
            .map(|h| h.manifest.name.clone())
            .collect();
        control.note_known(&plain)?;
        let prober = Arc::new(Prober::new(
            config.node_id.clone(),
            probed_topics(&config),
            config.probe_interval,
            describe(&config, registry.clone(), control.clone()),
            producer.clone(),
        ));
        let pointers = match &config.stalwart.management {
            Some(m) => Some(Arc::new(Resolver::new(
                config.node_id.clone(),
                config.stalwart.topic.clone(),
                crate::management::Client::new(m)?,
                effects.blocklist.clone(),
                producer.clone(),
                registry.stats(pointers::NAME),
            )) as Arc<dyn dispatch::Handler>),
            None => None,
        };
        Ok(Node {
            config,
            sandbox,
            registry,
            effects,
            producer,
            broadcast,
            shared,
            metrics: None,
            recent_letters: Default::default(),
            keeper,
            prober,
            pointers,
            control,
            control_requests: std::sync::Mutex::new(Some(control_requests)),
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
                control: self.control.clone(),
                only: None,
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
                    resolves_pointers: self.pointers.is_some(),
                }) as Arc<dyn LetteredElsewhere>
            }),
            only_letters: (mode == Mode::Shared && self.config.stalwart.enabled)
                .then(|| self.config.stalwart.topic.clone()),
            // Every node's broadcast group reads every probe; the shared
            // group, where one node of the cluster sees each, drops them.
            probes: (mode == Mode::Broadcast).then(|| self.prober.clone()),
            pointers: self.pointers.clone().filter(|_| mode == Mode::Shared),
            decoder: Decoder {
                stalwart,
                max_stalwart_events: self.config.stalwart.max_events_per_record,
                trust: self.config.trust.clone().map(Arc::new),
            },
        })
    }

    /// What a detached handler's own group hands its records to: that
    /// handler alone. The broadcast group letters junk, answers probes and
    /// keeps the state topic; this group only handles.
    fn detached_dispatcher(&self, name: &str) -> Arc<Dispatcher> {
        let mut d = Arc::unwrap_or_clone(self.dispatcher(Mode::Broadcast));
        d.handlers = Arc::new(Sandboxed {
            sandbox: self.sandbox.clone(),
            registry: self.registry.clone(),
            effects: self.effects.clone(),
            mode: Mode::Broadcast,
            control: self.control.clone(),
            only: Some(name.to_string()),
        });
        d.keeper = None;
        d.probes = None;
        d.lettered_elsewhere = Some(Arc::new(LetteredByTheModeGroup));
        Arc::new(d)
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
            prober: self.prober.clone(),
            control: self.control.clone(),
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
        {
            let (prober, stop) = (self.prober.clone(), shutdown.clone());
            tasks.spawn(async move {
                prober.run(stop).await;
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
    /// leaving as reloads change the set, and one group per detached
    /// broadcast handler that is not paused; carry out the operator's
    /// pause, resume and replay (`control`).
    async fn supervise(
        self: Arc<Self>,
        session_timeout: Duration,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut changes = self.registry.changes();
        let mut requests = self
            .control_requests
            .lock()
            .unwrap()
            .take()
            .expect("one supervisor per node");
        let mut running: [Option<Running>; 2] = [None, None];
        let mut detached: BTreeMap<String, Running> = BTreeMap::new();
        let mut lag_tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            if let Err(e) = self.start_new_handlers().await {
                tracing::error!(error = %format!("{e:#}"), "cannot give a new handler its start position; retrying");
            }
            for (i, mode) in [Mode::Broadcast, Mode::Shared].into_iter().enumerate() {
                // The shared group also runs for Stalwart's pointers alone.
                let wanted = !self.attached(mode).is_empty()
                    || (mode == Mode::Shared && self.pointers.is_some());
                let group = self.group_id(mode);
                if wanted && running[i].is_none() {
                    running[i] = Some(self.spawn_group(
                        consumer::Group {
                            id: group,
                            topics: self.topics(),
                            state_topic: Some(self.config.topics.state.clone()),
                            session_timeout,
                        },
                        self.dispatcher(mode),
                        self.status(mode).clone(),
                        &shutdown,
                    ));
                } else if !wanted && let Some(r) = running[i].take() {
                    tracing::info!(group, "no handler in this mode any more; leaving the group");
                    r.stop().await?;
                } else if !wanted {
                    tracing::info!(?mode, "no handler in this mode; not joining {group}");
                }
            }
            let loaded: BTreeSet<String> = self
                .registry
                .snapshot(Mode::Broadcast)
                .iter()
                .map(|h| h.manifest.name.clone())
                .collect();
            let wanted: BTreeSet<String> = self
                .control
                .all_detached()
                .into_iter()
                .filter(|(name, d)| !d.paused && loaded.contains(name))
                .map(|(name, _)| name)
                .collect();
            for name in detached.keys().cloned().collect::<Vec<_>>() {
                if !wanted.contains(&name) {
                    detached.remove(&name).expect("listed").stop().await?;
                    self.control.statuses.lock().unwrap().remove(&name);
                }
            }
            for name in wanted {
                if let std::collections::btree_map::Entry::Vacant(slot) = detached.entry(name) {
                    let name = slot.key().clone();
                    let status = Arc::new(consumer::Status::default());
                    self.control
                        .statuses
                        .lock()
                        .unwrap()
                        .insert(name.clone(), status.clone());
                    let group = consumer::Group {
                        id: control::group(&self.config.broadcast_group(), &name),
                        topics: self.topics(),
                        state_topic: None,
                        session_timeout,
                    };
                    let dispatcher = self.detached_dispatcher(&name);
                    slot.insert(self.spawn_group(group, dispatcher, status, &shutdown));
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = changes.changed() => if changed.is_err() { break },
                Some(request) = requests.recv() => {
                    let answer = self
                        .carry_out(&request.handler, request.command, &mut running[0], &mut detached)
                        .await;
                    if let Err(why) = &answer {
                        tracing::warn!(handler = request.handler, "{why}");
                    }
                    let _ = request.done.send(answer);
                }
                _ = lag_tick.tick() => self.read_paused_lag().await,
            }
        }
        for r in running.into_iter().flatten().chain(detached.into_values()) {
            r.task.await??;
        }
        Ok(())
    }

    fn spawn_group(
        self: &Arc<Self>,
        spec: consumer::Group,
        dispatcher: Arc<Dispatcher>,
        status: Arc<consumer::Status>,
        shutdown: &CancellationToken,
    ) -> Running {
        let stop = shutdown.child_token();
        let (node, token) = (self.clone(), stop.clone());
        let task = tokio::spawn(async move {
            consumer::run(&node.config, spec, dispatcher, status, token).await
        });
        Running { stop, task }
    }

    fn group_id(&self, mode: Mode) -> String {
        match mode {
            Mode::Broadcast => self.config.broadcast_group(),
            Mode::Shared => self.config.shared_group(),
        }
    }

    /// The handlers the mode's own group hands events to.
    fn attached(&self, mode: Mode) -> Vec<Arc<Loaded>> {
        self.registry
            .snapshot(mode)
            .iter()
            .filter(|h| self.control.in_mode_group(&h.manifest.name, mode))
            .cloned()
            .collect()
    }

    /// Broadcast handlers new to this node: those whose manifest has a
    /// `start` get a group of their own, starting there; the others join
    /// the broadcast group where it is.
    async fn start_new_handlers(&self) -> anyhow::Result<()> {
        let handlers = self.registry.snapshot(Mode::Broadcast);
        let names: Vec<String> = handlers.iter().map(|h| h.manifest.name.clone()).collect();
        let new = self.control.new_among(&names);
        for h in handlers.iter().filter(|h| new.contains(&h.manifest.name)) {
            let name = &h.manifest.name;
            if let Some(at) = &h.manifest.start {
                let positions = offsets::resolve(&self.config, &self.topics(), at.clone()).await?;
                let group = self.detach_at(name, &positions, false).await?;
                tracing::info!(
                    handler = name,
                    ?at,
                    group,
                    "a new handler starts in a group of its own"
                );
            }
            self.control.note_known(std::slice::from_ref(name))?;
        }
        Ok(())
    }

    /// Pause, resume or replay one broadcast handler.
    async fn carry_out(
        &self,
        name: &str,
        command: control::Command,
        broadcast: &mut Option<Running>,
        detached: &mut BTreeMap<String, Running>,
    ) -> Result<String, String> {
        use control::{Command, Detached};
        let fail = |e: anyhow::Error| format!("{e:#}");
        if !self
            .registry
            .snapshot(Mode::Broadcast)
            .iter()
            .any(|h| h.manifest.name == name)
        {
            return Err(
                if self
                    .registry
                    .snapshot(Mode::Shared)
                    .iter()
                    .any(|h| h.manifest.name == name)
                {
                    format!(
                        "`{name}` is a shared handler: its partitions belong to the cluster's \
                         shared group, not to this node, so it cannot be paused or replayed here \
                         (remove it from every node's handler folder to stop it)"
                    )
                } else {
                    format!("no handler `{name}` is loaded on this node")
                },
            );
        }
        let group = control::group(&self.config.broadcast_group(), name);
        let state = self.control.detached(name);
        // A detached handler's consumer stops, committing what it finished.
        if !matches!(command, Command::Resume)
            && let Some(r) = detached.remove(name)
        {
            r.stop().await.map_err(fail)?;
            self.control.statuses.lock().unwrap().remove(name);
        }
        match (command, state) {
            (Command::Pause, Some(Detached { paused: true })) => {
                Ok(format!("`{name}` was already paused"))
            }
            (Command::Pause, Some(_)) => {
                self.control
                    .set_detached(name, Detached { paused: true })
                    .map_err(fail)?;
                Ok(format!(
                    "`{name}` paused; its offsets stay in group {group}"
                ))
            }
            (Command::Pause, None) => {
                // The broadcast group stops (committing what it finished),
                // and its offsets become the handler's own.
                if let Some(r) = broadcast.take() {
                    r.stop().await.map_err(fail)?;
                }
                let at = offsets::committed(
                    &self.config,
                    &self.config.broadcast_group(),
                    &self.topics(),
                )
                .await
                .map_err(fail)?;
                self.detach_at(name, &at, true).await.map_err(fail)?;
                Ok(format!(
                    "`{name}` paused; the other handlers go on, and its offsets stay in group {group}"
                ))
            }
            (Command::Resume, Some(Detached { paused: true })) => {
                self.control
                    .set_detached(name, Detached { paused: false })
                    .map_err(fail)?;
                Ok(format!("`{name}` resumed; it catches up in group {group}"))
            }
            (Command::Resume, _) => Ok(format!("`{name}` is not paused")),
            (Command::Replay(at), state) => {
                if state.is_none()
                    && let Some(r) = broadcast.take()
                {
                    r.stop().await.map_err(fail)?;
                }
                let positions = offsets::resolve(&self.config, &self.topics(), at.clone())
                    .await
                    .map_err(fail)?;
                self.detach_at(name, &positions, false)
                    .await
                    .map_err(fail)?;
                Ok(format!(
                    "`{name}` handles again from {at:?}, alone, in group {group} ({} partitions)",
                    positions.len()
                ))
            }
        }
    }

    /// Give `name` a group of its own whose offsets are `positions`, and
    /// keep it there from now on; returns the group.
    async fn detach_at(
        &self,
        name: &str,
        positions: &offsets::Positions,
        paused: bool,
    ) -> anyhow::Result<String> {
        let group = control::group(&self.config.broadcast_group(), name);
        offsets::commit(&self.config, &group, positions).await?;
        self.control
            .set_detached(name, control::Detached { paused })?;
        Ok(group)
    }

    /// A paused handler runs no consumer: its lag is read from the broker.
    async fn read_paused_lag(&self) {
        for (name, d) in self.control.all_detached() {
            if !d.paused {
                continue;
            }
            let group = control::group(&self.config.broadcast_group(), &name);
            match offsets::lag(&self.config, &group, &self.topics()).await {
                Ok(lag) => {
                    self.control.paused_lag.lock().unwrap().insert(name, lag);
                }
                Err(e) => {
                    tracing::debug!(handler = name, "cannot read a paused handler's lag: {e:#}")
                }
            }
        }
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
            if ticks.is_multiple_of(4) {
                for h in self.registry.all() {
                    let name = &h.manifest.name;
                    if let (_, Some(lag)) = self.control.handler_lag(name, h.manifest.mode) {
                        metrics::gauge!("herald_handler_lag", "handler" => name.clone())
                            .set(lag as f64);
                    }
                }
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
    control: Arc<Control>,
    /// A detached handler's own group: that handler only. Otherwise the
    /// mode's handlers that are in its group.
    only: Option<String>,
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
            .filter(|loaded| {
                let name = &loaded.manifest.name;
                match &self.only {
                    Some(only) => only == name,
                    None => self.control.in_mode_group(name, self.mode),
                }
            })
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
    /// The shared group runs whatever the handlers (see `supervise`).
    resolves_pointers: bool,
}

impl LetteredElsewhere for SharedGroupLetters {
    fn lettered_elsewhere(&self, topic: &str) -> bool {
        self.topics.iter().any(|t| t == topic)
            && (self.resolves_pointers || !self.registry.snapshot(Mode::Shared).is_empty())
    }
}

/// The topics a node probes: herald's own two. Stalwart's topic carries
/// only Stalwart's wire format, which Stalwart's nodes read too: a probe
/// there would be junk to them.
fn probed_topics(config: &Config) -> Vec<String> {
    vec![config.topics.events.clone(), config.topics.state.clone()]
}

/// This node as its probe answers describe it: version, handlers, and
/// each handler's lag (its group's, summed over partitions).
fn describe(
    config: &Config,
    registry: Arc<Registry>,
    control: Arc<Control>,
) -> Box<dyn Fn() -> NodeReport + Send + Sync> {
    let node = config.node_id.clone();
    Box::new(move || NodeReport {
        node: node.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        handlers: registry
            .all()
            .iter()
            .map(|h| {
                let (paused, lag) = control.handler_lag(&h.manifest.name, h.manifest.mode);
                HandlerReport {
                    name: h.manifest.name.clone(),
                    mode: h.manifest.mode.as_str().to_string(),
                    lag,
                    paused,
                }
            })
            .collect(),
    })
}

/// A detached handler's group never letters junk: the broadcast group
/// reads the same records and letters them (or leaves them to the shared
/// group).
struct LetteredByTheModeGroup;

impl LetteredElsewhere for LetteredByTheModeGroup {
    fn lettered_elsewhere(&self, _: &str) -> bool {
        true
    }
}
