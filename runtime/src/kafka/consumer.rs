//! One consumer group: an explicit loop over `recv()`, a worker per
//! partition, and commits of what the workers finished.
//!
//! Records of a partition go to that partition's worker, in order; workers
//! of different partitions run concurrently. A worker handles its records in
//! batches (size and linger from the config) through the [`Dispatcher`], and
//! when a batch is done moves the partition's "done" offset past it. Every
//! `commitInterval` the loop makes the node's effects durable and then
//! commits, asynchronously, each partition's done offset. Because a worker
//! finishes its batches in order, a done offset never jumps a record that is
//! not done: a commit is never ahead of a gap.
//!
//! Offsets are stored by herald alone (`enable.auto.commit=false`,
//! `enable.auto.offset.store=false`): closing a consumer never commits a
//! record that was fetched but not handled.
//!
//! On a revoke, the workers of the revoked partitions finish their in-flight
//! batch (or abandon it, uncommitted, if it is waiting to retry), and their
//! done offsets are committed synchronously before the partitions are
//! released. Shutdown does the same for every partition, then leaves the
//! group.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::codec::Record;
use crate::config::Config;
use crate::dispatch::Dispatcher;

/// How long a revoke or shutdown waits for an in-flight batch.
const RELEASE_WAIT: Duration = Duration::from_secs(30);

type Tp = (Arc<str>, i32);

/// What the node needs to know about a group consumer (readiness, API).
#[derive(Default)]
pub struct Status {
    /// The group consumer is running.
    pub running: AtomicBool,
    /// It has received an assignment (possibly empty) since it started.
    pub joined: AtomicBool,
    /// Partitions currently assigned to this consumer.
    pub assigned: AtomicUsize,
    /// Unix ms since when no broker has been reachable; 0 while one is.
    pub unreachable_since: AtomicU64,
    /// The group's session timeout, in ms.
    pub session_timeout_ms: AtomicU64,
    /// Consumer lag per assigned partition, from librdkafka's statistics.
    pub lag: Mutex<std::collections::BTreeMap<(String, i32), i64>>,
    /// Still reading the state topic up to where it ended when the group
    /// started: a node is not ready before it holds the cluster's state.
    pub catching_up: AtomicBool,
}

impl Status {
    /// Records behind the ends of the assigned partitions, summed; none
    /// before the first statistics (or while no partition is assigned).
    pub fn total_lag(&self) -> Option<i64> {
        let lag = self.lag.lock().unwrap();
        (!lag.is_empty()).then(|| lag.values().map(|l| (*l).max(0)).sum())
    }
}

/// Whether a node is ready: at least one group running, and every running
/// group [`Status::ready`]. `/readyz` and the systemd notification agree.
pub fn all_ready<'a>(groups: impl IntoIterator<Item = &'a Status>, now_ms: u64) -> bool {
    let mut any = false;
    for g in groups {
        if g.running.load(Ordering::Relaxed) {
            any = true;
            if !g.ready(now_ms) {
                return false;
            }
        }
    }
    any
}

impl Status {
    /// Ready: running, joined, and not cut off from the brokers for longer
    /// than the session timeout (by then the group has moved on without
    /// this node, and its IDLE and blocklist state is falling behind).
    pub fn ready(&self, now_ms: u64) -> bool {
        let since = self.unreachable_since.load(Ordering::Relaxed);
        let away_too_long = since != 0
            && now_ms.saturating_sub(since) > self.session_timeout_ms.load(Ordering::Relaxed);
        self.running.load(Ordering::Relaxed)
            && self.joined.load(Ordering::Relaxed)
            && !self.catching_up.load(Ordering::Relaxed)
            && !away_too_long
    }

    /// Whether some broker answers (as of the last statistics).
    pub fn broker_reachable(&self) -> bool {
        self.unreachable_since.load(Ordering::Relaxed) == 0
    }

    fn mark_unreachable(&self) {
        let _ = self.unreachable_since.compare_exchange(
            0,
            crate::event::now_ms().max(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

pub struct Group {
    /// The consumer group id.
    pub id: String,
    pub topics: Vec<String>,
    /// The state topic among `topics`, if it is: the group is not ready
    /// until it has read that topic's partitions to their end.
    pub state_topic: Option<String>,
    pub session_timeout: Duration,
}

struct Worker {
    tx: mpsc::UnboundedSender<Record>,
    /// Bytes of records routed to the worker and not yet handled.
    queued: Arc<AtomicUsize>,
    paused: Arc<AtomicBool>,
    /// Offset of the next record not yet done (what a commit stores); -1
    /// before the first batch.
    done: Arc<AtomicI64>,
    committed: i64,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Shared between the loop and the rebalance callbacks.
struct Shared {
    group: String,
    /// Held while a commit is sent, so that a periodic commit decided
    /// before a revoke cannot land after the revoke's own commit.
    commit_lock: Mutex<()>,
    workers: Mutex<HashMap<Tp, Worker>>,
    assigned: Mutex<HashSet<Tp>>,
    dispatcher: Arc<Dispatcher>,
    status: Arc<Status>,
    state_topic: Option<String>,
}

struct Ctx {
    shared: Arc<Shared>,
}

impl ClientContext for Ctx {
    /// librdkafka's statistics: whether any broker is up (readiness), and
    /// consumer lag per partition (metrics, `herald status`).
    fn stats(&self, stats: rdkafka::Statistics) {
        let status = &self.shared.status;
        // Bootstrap entries have node id -1; a known broker that is UP
        // means the cluster answers.
        if stats
            .brokers
            .values()
            .any(|b| b.nodeid >= 0 && b.state == "UP")
        {
            status.unreachable_since.store(0, Ordering::Relaxed);
        } else {
            status.mark_unreachable();
            let since = status.unreachable_since.load(Ordering::Relaxed);
            let timeout = status.session_timeout_ms.load(Ordering::Relaxed);
            if crate::event::now_ms().saturating_sub(since) > timeout {
                // The group has evicted this member by now: it is joined
                // again only by its next assignment.
                status.joined.store(false, Ordering::Relaxed);
            }
        }
        let mut lag = std::collections::BTreeMap::new();
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    metrics::gauge!("herald_consumer_lag",
                        "group" => self.shared.group.clone(),
                        "topic" => topic.clone(),
                        "partition" => partition.to_string())
                    .set(p.consumer_lag as f64);
                    lag.insert((topic.clone(), *partition), p.consumer_lag);
                }
            }
        }
        *status.lag.lock().unwrap() = lag;
        if status.catching_up.load(Ordering::Relaxed) && self.caught_up(&stats) {
            status.catching_up.store(false, Ordering::Relaxed);
            tracing::info!(group = %self.shared.group, "caught up with the state topic");
        }
    }

    /// librdkafka's errors outside any request. Losing every broker is what
    /// readiness watches; it is a warning, not an error of herald's.
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::types::RDKafkaErrorCode as Code;
        match error.rdkafka_error_code() {
            Some(Code::AllBrokersDown) => {
                self.shared.status.mark_unreachable();
                tracing::warn!(group = %self.shared.group, %reason, "no broker is reachable");
            }
            Some(Code::BrokerTransportFailure) => {
                tracing::debug!(group = %self.shared.group, %reason, "broker connection lost")
            }
            _ => {
                tracing::warn!(group = %self.shared.group, error = %error, %reason, "kafka client error")
            }
        }
    }
}

impl Ctx {
    /// Whether every state-topic partition this member holds has been
    /// handled and committed up to its end (or is empty), as of `stats`.
    /// Nothing assigned of it (the other members hold it) is caught up.
    fn caught_up(&self, stats: &rdkafka::Statistics) -> bool {
        let Some(topic) = &self.shared.state_topic else {
            return true;
        };
        if !self.shared.status.joined.load(Ordering::Relaxed) {
            return false;
        }
        let assigned = self.shared.assigned.lock().unwrap();
        assigned
            .iter()
            .filter(|(t, _)| **t == **topic)
            .all(|(_, partition)| {
                let Some(p) = stats
                    .topics
                    .get(topic)
                    .and_then(|t| t.partitions.get(partition))
                else {
                    return false;
                };
                let end_known = p.hi_offset >= 0;
                let empty = end_known && p.lo_offset >= 0 && p.hi_offset <= p.lo_offset;
                end_known && (empty || p.committed_offset >= p.hi_offset)
            })
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let tps: Vec<Tp> = tpl
                .elements()
                .iter()
                .map(|e| (Arc::from(e.topic()), e.partition()))
                .collect();
            tracing::info!(group = %self.shared.group, partitions = ?tps, "partitions revoked");
            self.shared.release(consumer, &tps);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let tps: HashSet<Tp> = tpl
                    .elements()
                    .iter()
                    .map(|e| (Arc::from(e.topic()), e.partition()))
                    .collect();
                tracing::info!(group = %self.shared.group, partitions = ?tps, "partitions assigned");
                let status = &self.shared.status;
                status.assigned.store(tps.len(), Ordering::Relaxed);
                status.joined.store(true, Ordering::Relaxed);
                // Holding none of the state topic, there is nothing to
                // catch up with (the statistics would say so a second later).
                if let Some(state) = &self.shared.state_topic
                    && !tps.iter().any(|(t, _)| **t == **state)
                {
                    status.catching_up.store(false, Ordering::Relaxed);
                }
                *self.shared.assigned.lock().unwrap() = tps;
            }
            Rebalance::Revoke(_) => {
                self.shared.status.assigned.store(0, Ordering::Relaxed);
            }
            Rebalance::Error(e) => {
                tracing::error!(group = %self.shared.group, error = %e, "rebalance failed")
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                for e in offsets.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        tracing::debug!(group = %self.shared.group, topic = e.topic(),
                            partition = e.partition(), offset = o, "committed");
                    }
                }
                metrics::counter!("herald_commits_total", "group" => self.shared.group.clone())
                    .increment(1);
            }
            Err(e) => {
                metrics::counter!("herald_commit_errors_total", "group" => self.shared.group.clone())
                    .increment(1);
                tracing::warn!(group = %self.shared.group, error = %e, "commit failed; the next one carries the offsets")
            }
        }
    }
}

impl Shared {
    /// Stop the workers of `tps`, let their in-flight batches finish, make
    /// effects durable and commit what is done, synchronously. Called from a
    /// revoke callback (inside `recv()`) and at shutdown.
    fn release<C: Consumer<Ctx>>(&self, consumer: &C, tps: &[Tp]) {
        let mut taken = Vec::new();
        {
            let mut workers = self.workers.lock().unwrap();
            let mut assigned = self.assigned.lock().unwrap();
            for tp in tps {
                assigned.remove(tp);
                if let Some(w) = workers.remove(tp) {
                    w.stop.cancel();
                    taken.push((tp.clone(), w));
                }
            }
        }
        if taken.is_empty() {
            return;
        }
        let effects = self.dispatcher.effects.clone();
        let flushed = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                for (tp, w) in &mut taken {
                    if tokio::time::timeout(RELEASE_WAIT, &mut w.task).await.is_err() {
                        tracing::warn!(partition = ?tp, "in-flight batch did not finish in time; abandoned uncommitted");
                        w.task.abort();
                    }
                }
                effects.flush().await
            })
        });
        if let Err(e) = flushed {
            // Without durable effects nothing may be committed: the new
            // owner replays from the last commit.
            tracing::error!(error = %format!("{e:#}"), "cannot make effects durable; not committing");
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), w) in &taken {
            let done = w.done.load(Ordering::Acquire);
            if done > w.committed {
                let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(done));
            }
        }
        let _sending = self.commit_lock.lock().unwrap();
        if tpl.count() > 0
            && let Err(e) = consumer.commit(&tpl, CommitMode::Sync)
        {
            tracing::warn!(group = %self.group, error = %e, "commit on release failed");
        }
    }

    /// Commit, asynchronously, every partition that moved since last time.
    async fn commit(&self, consumer: &StreamConsumer<Ctx>) {
        let moved: Vec<(Tp, i64)> = {
            let workers = self.workers.lock().unwrap();
            workers
                .iter()
                .filter_map(|(tp, w)| {
                    let done = w.done.load(Ordering::Acquire);
                    (done > w.committed).then(|| (tp.clone(), done))
                })
                .collect()
        };
        if moved.is_empty() {
            return;
        }
        // The offsets were taken before the flush: every batch they cover
        // has its effects in it.
        if let Err(e) = self.dispatcher.effects.flush().await {
            tracing::error!(error = %format!("{e:#}"), "cannot make effects durable; commit postponed");
            return;
        }
        let _sending = self.commit_lock.lock().unwrap();
        let mut workers = self.workers.lock().unwrap();
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), done) in &moved {
            // Released meanwhile: the release committed it.
            if workers.contains_key(&(topic.clone(), *partition)) {
                let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*done));
            }
        }
        if tpl.count() == 0 {
            return;
        }
        match consumer.commit(&tpl, CommitMode::Async) {
            Ok(()) => {
                for (tp, done) in moved {
                    if let Some(w) = workers.get_mut(&tp) {
                        w.committed = w.committed.max(done);
                    }
                }
            }
            Err(e) => tracing::warn!(group = %self.group, error = %e, "commit failed"),
        }
    }
}

/// The group consumer's fetch settings, unless a deployer's `kafka`
/// section sets them:
/// - `fetch.wait.max.ms`: IDLE wake-ups are latency-bound. A broker that
///   holds a fetch until this wait (500 ms by default) would hold them too,
///   and some brokers look for new data only now and then within it (the
///   test broker at half the time left, so a record is seen up to half the
///   wait late). Asking again every 5 ms when idle costs little: an empty
///   fetch is one small request and answer.
/// - `fetch.queue.backoff.ms`: once the node falls behind librdkafka's
///   prefetch queue, the fetcher waits this long before asking again: a
///   second by default, during which a node that has caught up has nothing
///   to do. It held the whole node near 170 k events/s in
///   `just bench throughput`.
pub const FETCH_DEFAULTS: [(&str, &str); 2] =
    [("fetch.wait.max.ms", "5"), ("fetch.queue.backoff.ms", "10")];

/// The group consumer's client settings: the node's, plus
/// [`FETCH_DEFAULTS`] where the deployer's `kafka` section is silent.
pub fn client_config(cfg: &Config, group: &str) -> rdkafka::ClientConfig {
    let mut client = super::client_config(cfg, &format!("consumer-{group}"));
    for (key, value) in FETCH_DEFAULTS {
        if !cfg.kafka.contains_key(key) {
            client.set(key, value);
        }
    }
    client
}

/// Run the group until `shutdown`: join, consume, dispatch, commit; then
/// finish in-flight batches, commit, and leave the group.
pub async fn run(
    cfg: &Config,
    group: Group,
    dispatcher: Arc<Dispatcher>,
    status: Arc<Status>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let shared = Arc::new(Shared {
        group: group.id.clone(),
        commit_lock: Mutex::new(()),
        workers: Mutex::new(HashMap::new()),
        assigned: Mutex::new(HashSet::new()),
        dispatcher,
        status,
        state_topic: group.state_topic.clone(),
    });
    shared
        .status
        .catching_up
        .store(group.state_topic.is_some(), Ordering::Relaxed);
    let mut client = client_config(cfg, &group.id);
    let consumer: Arc<StreamConsumer<Ctx>> = Arc::new(
        client
            .set("group.id", &group.id)
            .set("enable.auto.commit", "false")
            // Broker reachability (readiness) and the consumer-lag metric.
            .set("statistics.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            // A new node (or group) starts from the beginning and catches up.
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                group.session_timeout.as_millis().to_string(),
            )
            .create_with_context(Ctx {
                shared: shared.clone(),
            })
            .with_context(|| format!("cannot create the consumer for group {}", group.id))?,
    );
    let topics: Vec<&str> = group.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .with_context(|| format!("cannot subscribe to {topics:?}"))?;
    tracing::info!(group = %group.id, topics = ?topics, "consuming");
    shared
        .status
        .session_timeout_ms
        .store(group.session_timeout.as_millis() as u64, Ordering::Relaxed);
    shared.status.running.store(true, Ordering::Relaxed);

    // Commits run beside the loop: making effects durable takes disk time
    // that must not hold up fetching.
    let committer = {
        let (shared, consumer, stop) = (shared.clone(), consumer.clone(), shutdown.clone());
        let interval = cfg.commit_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => shared.commit(&consumer).await,
                }
            }
        })
    };
    // One stream for the consumer's life: `recv()` would register and
    // unregister a waker (two lock round trips) for every record.
    let mut messages = consumer.stream();
    // Each topic's name, shared by its records.
    let mut names: Vec<Arc<str>> = Vec::new();
    // Only the trust policy reads signatures. librdkafka parses a record's
    // whole header block the first time it is asked for headers (and
    // allocates for it even when there are none), so without `trust` it is
    // never asked.
    let read_signatures = cfg.trust.is_some();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            msg = messages.next() => match msg.expect("kafka streams never terminate") {
                Ok(m) => {
                    let topic = match names.iter().find(|n| &***n == m.topic()) {
                        Some(n) => n.clone(),
                        None => {
                            names.push(m.topic().into());
                            names[names.len() - 1].clone()
                        }
                    };
                    let record = Record {
                        topic,
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().map(<[u8]>::to_vec),
                        timestamp_ms: m.timestamp().to_millis(),
                        signature: if read_signatures { signature(&m) } else { None },
                    };
                    route(&shared, &consumer, cfg, record);
                }
                Err(e) => {
                    metrics::counter!("herald_consumer_errors_total", "group" => group.id.clone())
                        .increment(1);
                    tracing::warn!(group = %group.id, error = %e, "consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }

    drop(messages);
    tracing::info!(group = %group.id, "stopping: finishing in-flight batches");
    let _ = committer.await;
    let all: Vec<Tp> = shared.workers.lock().unwrap().keys().cloned().collect();
    shared.release(consumer.as_ref(), &all);
    consumer.unsubscribe();
    shared.status.running.store(false, Ordering::Relaxed);
    shared.status.joined.store(false, Ordering::Relaxed);
    shared.status.assigned.store(0, Ordering::Relaxed);
    shared.status.unreachable_since.store(0, Ordering::Relaxed);
    shared.status.lag.lock().unwrap().clear();
    Ok(())
}

/// Bytes a partition's worker may have queued before the partition is
/// paused (a worker stuck retrying must not make the node buffer its whole
/// backlog), and below which it is resumed. Resuming well before the queue
/// runs dry hides the fetch round trip.
const PAUSE_AT: usize = 16 << 20;
const RESUME_AT: usize = PAUSE_AT / 2;

/// What a record weighs in a worker's queue.
fn weight(r: &Record) -> usize {
    r.key.as_ref().map_or(0, Vec::len) + r.value.as_ref().map_or(0, Vec::len) + r.topic.len() + 64
}

/// Hand a record to its partition's worker, starting one if needed, and
/// pause the partition when its worker falls far behind, so that memory
/// stays bounded while other partitions go on.
fn route(shared: &Arc<Shared>, consumer: &Arc<StreamConsumer<Ctx>>, cfg: &Config, record: Record) {
    let tp = (record.topic.clone(), record.partition);
    if !shared.assigned.lock().unwrap().contains(&tp) {
        // Fetched before a revoke: the partition's new owner handles it.
        return;
    }
    let mut workers = shared.workers.lock().unwrap();
    let w = workers
        .entry(tp.clone())
        .or_insert_with(|| spawn_worker(shared, consumer, cfg, &tp));
    let bytes = weight(&record);
    let queued = w.queued.fetch_add(bytes, Ordering::AcqRel) + bytes;
    if w.tx.send(record).is_err() {
        return;
    }
    if queued >= PAUSE_AT && !w.paused.swap(true, Ordering::AcqRel) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&tp.0, tp.1);
        if let Err(e) = consumer.pause(&tpl) {
            tracing::warn!(partition = ?tp, error = %e, "cannot pause");
        }
    }
}

fn spawn_worker(
    shared: &Arc<Shared>,
    consumer: &Arc<StreamConsumer<Ctx>>,
    cfg: &Config,
    tp: &Tp,
) -> Worker {
    let (tx, rx) = mpsc::unbounded_channel();
    let job = Job {
        dispatcher: shared.dispatcher.clone(),
        consumer: consumer.clone(),
        tp: tp.clone(),
        rx,
        queued: Arc::new(AtomicUsize::new(0)),
        paused: Arc::new(AtomicBool::new(false)),
        done: Arc::new(AtomicI64::new(-1)),
        stop: CancellationToken::new(),
        batch_size: cfg.batch.size,
        linger: cfg.batch.linger,
    };
    Worker {
        tx,
        queued: job.queued.clone(),
        paused: job.paused.clone(),
        done: job.done.clone(),
        committed: -1,
        stop: job.stop.clone(),
        task: tokio::spawn(job.run()),
    }
}

/// A partition's worker.
struct Job {
    dispatcher: Arc<Dispatcher>,
    consumer: Arc<StreamConsumer<Ctx>>,
    tp: Tp,
    rx: mpsc::UnboundedReceiver<Record>,
    queued: Arc<AtomicUsize>,
    paused: Arc<AtomicBool>,
    done: Arc<AtomicI64>,
    stop: CancellationToken,
    batch_size: usize,
    linger: Duration,
}

impl Job {
    async fn run(mut self) {
        while let Some(records) = self.next_batch().await {
            if self.stop.is_cancelled() {
                return;
            }
            let last = records.last().expect("batches are never empty").offset;
            if self.dispatcher.handle(&records, &self.stop).await.is_err() {
                return;
            }
            self.done.store(last + 1, Ordering::Release);
            let bytes: usize = records.iter().map(weight).sum();
            let left = self.queued.fetch_sub(bytes, Ordering::AcqRel) - bytes;
            if left < RESUME_AT && self.paused.swap(false, Ordering::AcqRel) {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&self.tp.0, self.tp.1);
                if let Err(e) = self.consumer.resume(&tpl) {
                    tracing::warn!(partition = ?self.tp, error = %e, "cannot resume");
                }
            }
        }
    }

    /// Wait for a record, then take what else is queued, or arrives within
    /// `linger`, up to the batch size. None when stopped.
    async fn next_batch(&mut self) -> Option<Vec<Record>> {
        let mut records = Vec::with_capacity(self.batch_size.min(1024));
        // `recv_many` takes what is queued in one go: one release of the
        // channel's permits per batch rather than one per record.
        let taken = tokio::select! {
            biased;
            _ = self.stop.cancelled() => return None,
            n = self.rx.recv_many(&mut records, self.batch_size) => n,
        };
        if taken == 0 {
            return None;
        }
        if !self.linger.is_zero() {
            let linger = tokio::time::sleep(self.linger);
            tokio::pin!(linger);
            while records.len() < self.batch_size {
                let room = self.batch_size - records.len();
                tokio::select! {
                    biased;
                    n = self.rx.recv_many(&mut records, room) => if n == 0 { break },
                    _ = &mut linger => break,
                }
            }
        }
        Some(records)
    }
}

/// The record's signature headers (the last of each name, as Kafka clients
/// read headers), if it has both; their values are checked by the trust
/// policy, not here.
fn signature(m: &rdkafka::message::BorrowedMessage<'_>) -> Option<crate::trust::Signature> {
    use rdkafka::message::Headers;
    let headers = m.headers()?;
    let (mut key_id, mut sig) = (None, None);
    for h in headers.iter() {
        match h.key {
            crate::trust::KEY_ID_HEADER => key_id = h.value,
            crate::trust::SIGNATURE_HEADER => sig = h.value,
            _ => {}
        }
    }
    Some(crate::trust::Signature {
        key_id: key_id?.to_vec(),
        signature: sig?.to_vec(),
    })
}
