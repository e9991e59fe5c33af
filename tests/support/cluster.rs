//! A herald cluster for the end-to-end tests: real `herald run` processes
//! on the test broker (`tests/broker.sh` starts it and sets
//! `HERALD_TEST_BROKER`), each with its own config, handler folder and
//! state directory, observed through their logs and their state files.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

use crate::{handler, herald_bin};

/// The API token every test node is configured with.
pub const TOKEN: &str = "test-token";

/// The broker's address, from `tests/broker.sh`.
pub fn broker() -> String {
    std::env::var("HERALD_TEST_BROKER").expect(
        "HERALD_TEST_BROKER is not set: run the tests with `just test`, which starts the broker",
    )
}

/// A name no other test (or earlier run on the same broker) uses.
pub fn unique(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A handler to install: the built component `wasm` (e.g. "blocking" or
/// "fixtures/flaky") under `name`. Its manifest is the one it ships with
/// (`handlers/<name>/<name>.toml`), in another delivery `mode` if one is
/// given, unless `manifest` replaces it whole.
#[derive(Clone, Copy, Debug)]
pub struct Install<'a> {
    pub wasm: &'a str,
    pub name: &'a str,
    pub mode: Option<&'a str>,
    pub manifest: Option<&'a str>,
}

impl<'a> Install<'a> {
    /// A built handler or fixture with its shipped manifest, named after
    /// its file (`fixtures/flaky` installs as `flaky`).
    pub fn builtin(wasm: &'a str) -> Install<'a> {
        Install {
            wasm,
            name: wasm.rsplit('/').next().unwrap_or(wasm),
            mode: None,
            manifest: None,
        }
    }

    /// The shipped manifest, in delivery mode `mode` ("shared", "broadcast").
    pub fn in_mode(mut self, mode: &'a str) -> Install<'a> {
        self.mode = Some(mode);
        self
    }

    /// The manifest text to write beside the component.
    fn manifest_text(&self) -> String {
        if let Some(text) = self.manifest {
            return text.to_string();
        }
        let shipped = handler(self.wasm).with_extension("toml");
        let text = std::fs::read_to_string(&shipped)
            .unwrap_or_else(|e| panic!("{}: {e} (run `just build`)", shipped.display()));
        match self.mode {
            None => text,
            Some(mode) => text
                .lines()
                .map(|l| {
                    if l.starts_with("mode =") {
                        format!("mode = \"{mode}\"")
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

pub struct TestCluster {
    pub broker: String,
    /// The events topic (`topics.events`).
    pub topic: String,
    /// The state topic (`topics.state`): what herald publishes of the
    /// stateful kinds goes there.
    pub state_topic: String,
    pub group: String,
    pub dir: tempfile::TempDir,
    handlers: PathBuf,
    producer: FutureProducer,
    /// Extra settings merged into every node's config.
    pub settings: Value,
    /// Start every node with its handlers already compiled (see
    /// [`TestCluster::precompile`]).
    precompiled: bool,
}

impl TestCluster {
    /// A topic with `partitions` partitions (and its dead-letter topic) and
    /// a handler folder with `handlers`.
    pub async fn new(name: &str, partitions: i32, handlers: &[Install<'_>]) -> TestCluster {
        TestCluster::on_broker(broker(), name, partitions, handlers).await
    }

    /// [`TestCluster::new`] on another broker than the shared test broker.
    pub async fn on_broker(
        broker: String,
        name: &str,
        partitions: i32,
        handlers: &[Install<'_>],
    ) -> TestCluster {
        let topic = unique(name);
        let state_topic = format!("{topic}.state");
        let group = unique(&format!("{name}-group"));
        let mut dir = tempfile::Builder::new()
            .prefix("herald-test-")
            .tempdir()
            .unwrap();
        // HERALD_KEEP_TEST_DIRS=1 keeps configs, state and node logs for a post-mortem.
        dir.disable_cleanup(std::env::var_os("HERALD_KEEP_TEST_DIRS").is_some());
        let folder = dir.path().join("handlers");
        std::fs::create_dir_all(&folder).unwrap();
        for h in handlers {
            std::fs::copy(handler(h.wasm), folder.join(format!("{}.wasm", h.name))).unwrap();
            std::fs::write(folder.join(format!("{}.toml", h.name)), h.manifest_text()).unwrap();
        }
        create_topics(
            &broker,
            &[
                topic.clone(),
                format!("{topic}.dlq"),
                state_topic.clone(),
                format!("{state_topic}.dlq"),
            ],
            partitions,
        )
        .await;
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &broker)
            .set("message.timeout.ms", "10000")
            .create()
            .unwrap();
        TestCluster {
            broker,
            topic,
            state_topic,
            group,
            dir,
            handlers: folder,
            producer,
            settings: json!({}),
            precompiled: false,
        }
    }

    /// Start every node with its handlers compiled already, as a node finds
    /// them after its first start: a Python or JavaScript component takes
    /// 15 s or more of both cores to compile, once per node, which would be
    /// most of a test's time. They are compiled once per test process
    /// (`herald handler inspect`, into a cache of the test binary's own) and
    /// the compiled files copied into each node's `<stateDir>/components`.
    pub fn precompile(&mut self) {
        self.precompiled = true;
    }

    fn seed_compiled(&self, state: &Path) {
        let into = state.join("components");
        if into.exists() {
            return;
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&into)
            .unwrap();
        for entry in std::fs::read_dir(&self.handlers).unwrap() {
            let wasm = entry.unwrap().path();
            if wasm.extension().is_some_and(|e| e == "wasm") {
                for file in crate::compiled(&wasm) {
                    std::fs::copy(&file, into.join(file.file_name().unwrap())).unwrap();
                }
            }
        }
    }

    /// The consumer group of `node`'s broadcast handlers (herald's default
    /// naming: `<groupId>.herald.<nodeId>`).
    pub fn broadcast_group(&self, node: &str) -> String {
        format!("{}.herald.{node}", self.group)
    }

    /// The consumer group herald's nodes share for shared handlers.
    pub fn shared_group(&self) -> String {
        format!("{}.herald", self.group)
    }

    /// The offset `group` committed on partition `partition` of `topic`.
    pub fn committed_on(&self, group: &str, topic: &str, partition: i32) -> Option<i64> {
        use rdkafka::consumer::Consumer;
        let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.broker)
            .set("group.id", group)
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        let got = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap();
        match got.elements()[0].offset() {
            rdkafka::Offset::Offset(o) => Some(o),
            _ => None,
        }
    }

    /// The offset the next record of `partition` of `topic` will have.
    pub fn high_watermark(&self, topic: &str, partition: i32) -> i64 {
        use rdkafka::consumer::Consumer;
        let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.broker)
            .set("group.id", unique("watermarks"))
            .create()
            .unwrap();
        consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .unwrap()
            .1
    }

    /// The offset `group` committed on partition `partition` of the
    /// cluster's events topic.
    pub fn committed(&self, group: &str, partition: i32) -> Option<i64> {
        self.committed_on(group, &self.topic, partition)
    }

    /// A reader of `topic`'s dead-letter topic, from its start.
    fn dead_letter_reader(&self, topic: &str) -> rdkafka::consumer::StreamConsumer {
        use rdkafka::consumer::Consumer;
        let dlq: rdkafka::consumer::StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.broker)
            .set("group.id", unique("dlq-reader"))
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        dlq.subscribe(&[&format!("{topic}.dlq")]).unwrap();
        dlq
    }

    /// Read `n` dead letters of `topic`'s dead-letter topic (from its
    /// start), in the order they came, waiting up to a minute for them.
    pub async fn dead_letters_of(&self, topic: &str, n: usize) -> Vec<Letter> {
        let dlq = self.dead_letter_reader(topic);
        let mut letters = Vec::new();
        while letters.len() < n {
            letters.push(next_letter(&dlq).await);
        }
        letters
    }

    /// Read `topic`'s dead letters from the start until one satisfies
    /// `pred`, and return it (each letter waited for up to a minute).
    pub async fn dead_letter_where(&self, topic: &str, pred: impl Fn(&Letter) -> bool) -> Letter {
        let dlq = self.dead_letter_reader(topic);
        loop {
            let letter = next_letter(&dlq).await;
            if pred(&letter) {
                return letter;
            }
        }
    }

    /// [`TestCluster::dead_letters_of`] the events topic.
    pub async fn dead_letters(&self, n: usize) -> Vec<Letter> {
        self.dead_letters_of(&self.topic, n).await
    }

    /// The handler folder every node of the cluster loads.
    pub fn handlers_dir(&self) -> &Path {
        &self.handlers
    }

    /// Write node `node`'s config and return its path.
    pub fn config(&self, node: &str) -> PathBuf {
        let state = self.dir.path().join(node);
        let mut cfg = json!({
            "@type": "Kafka",
            "brokers": [self.broker],
            "groupId": self.group,
            "timeoutSession": "6s",
            "timeoutMessage": "5s",
            "nodeId": node,
            "handlers": self.handlers,
            "stateDir": state,
            "topics": {"events": self.topic, "state": self.state_topic},
            "batch": {"size": 100},
            "retry": {"attempts": 3, "backoff": "50ms", "maxBackoff": "200ms"},
            "commitInterval": "100ms",
            // No probes unless a test asks (`probeInterval` in `settings`):
            // the suites count records and offsets on herald's topics.
            "probeInterval": 0,
            "api": {"listen": "127.0.0.1:0", "token": TOKEN},
        });
        merge(&mut cfg, &self.settings);
        let path = self.dir.path().join(format!("{node}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
        path
    }

    /// Start `herald run` for `node`.
    pub fn start(&self, node: &str) -> NodeProcess {
        self.start_with_env(node, &[])
    }

    /// [`TestCluster::start`] with extra environment variables.
    pub fn start_with_env(&self, node: &str, env: &[(&str, &str)]) -> NodeProcess {
        let state = self.dir.path().join(node);
        if self.precompiled {
            self.seed_compiled(&state);
        }
        NodeProcess::spawn(node, &self.config(node), &state, env)
    }

    /// Publish raw bytes to `topic`, unkeyed (junk, Stalwart batches).
    pub async fn publish_bytes(&self, topic: &str, value: &[u8]) {
        let record = FutureRecord::<(), [u8]>::to(topic).payload(value);
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .expect("publish");
    }

    /// Publish `n` unkeyed records of `value` to `topic`, all in flight at
    /// once (a burst, as a hostile producer would send it).
    pub async fn publish_burst(&self, topic: &str, value: &[u8], n: usize) {
        let sends = (0..n).map(|_| {
            let record = FutureRecord::<(), [u8]>::to(topic).payload(value);
            self.producer.send(record, Duration::from_secs(60))
        });
        for sent in futures::future::join_all(sends).await {
            sent.map_err(|(e, _)| e).expect("publish");
        }
    }

    /// Take part in Stalwart's traffic: a topic of this test's own standing
    /// for `stwt.agora` (and its dead-letter topic) is created, and every
    /// node's config gets `stalwart.enabled` with Stalwart node id 900.
    /// Returns the topic.
    pub async fn enable_stalwart(&mut self) -> String {
        let topic = unique("stwt.agora");
        create_topics(&self.broker, &[topic.clone(), format!("{topic}.dlq")], 1).await;
        merge(
            &mut self.settings,
            &json!({"stalwart": {"enabled": true, "nodeId": 900, "topic": topic}}),
        );
        topic
    }

    /// Publish a Stalwart batch of `events` from Stalwart node `node_id` on
    /// `topic`, as a Stalwart node would (no key).
    pub async fn publish_stalwart(
        &self,
        topic: &str,
        node_id: u16,
        events: Vec<herald::event::Body>,
    ) -> Vec<u8> {
        let record =
            herald::codec::stalwart::encode(&herald::codec::stalwart::Record { node_id, events })
                .expect("events with a Stalwart wire form");
        self.publish_bytes(topic, &record).await;
        record
    }

    /// Publish many events at once (keyed), waiting for all acknowledgements.
    pub async fn publish_all(&self, events: &[(String, Value)]) {
        self.publish_all_to(&self.topic, events).await
    }

    /// [`TestCluster::publish_all`] to `topic`.
    pub async fn publish_all_to(&self, topic: &str, events: &[(String, Value)]) {
        let payloads: Vec<(String, String)> = events
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        let sends = payloads.iter().map(|(k, p)| {
            self.producer.send(
                FutureRecord::to(topic).key(k).payload(p),
                Duration::from_secs(10),
            )
        });
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| e).expect("publish");
        }
    }

    /// Publish one record with headers, as any Kafka client can.
    pub async fn publish_record(&self, key: &str, payload: &[u8], headers: &[(&str, &[u8])]) {
        self.publish_record_to(&self.topic, key, payload, headers)
            .await
    }

    /// [`TestCluster::publish_record`] to `topic`.
    pub async fn publish_record_to(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: &[(&str, &[u8])],
    ) {
        let mut h = rdkafka::message::OwnedHeaders::new();
        for (name, value) in headers {
            h = h.insert(rdkafka::message::Header {
                key: name,
                value: Some(*value),
            });
        }
        let record = FutureRecord::to(topic).key(key).payload(payload).headers(h);
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .expect("publish");
    }

    /// Publish `event` signed by `signer` the way herald signs: the
    /// signature headers over the record key and the exact value.
    pub async fn publish_signed(
        &self,
        key: &str,
        event: &Value,
        signer: &herald::trust::keys::NodeKey,
    ) {
        self.publish_signed_text(key, &event.to_string(), signer)
            .await
    }

    /// [`TestCluster::publish_signed`] with the payload as written.
    pub async fn publish_signed_text(
        &self,
        key: &str,
        payload: &str,
        signer: &herald::trust::keys::NodeKey,
    ) {
        let sig = herald::trust::keys::signature_text(
            &signer.sign(Some(key.as_bytes()), payload.as_bytes()),
        );
        self.publish_record(
            key,
            payload.as_bytes(),
            &[
                (herald::trust::KEY_ID_HEADER, signer.id().as_bytes()),
                (herald::trust::SIGNATURE_HEADER, sig.as_bytes()),
            ],
        )
        .await;
    }

    /// Every record on `topic` now, values and header values, read from the
    /// start to the end of each partition.
    pub fn read_all(&self, topic: &str) -> Vec<Vec<u8>> {
        self.read_records(topic)
            .into_iter()
            .map(|r| {
                let mut bytes = r.value.unwrap_or_default();
                for (_, value) in r.headers {
                    bytes.extend_from_slice(&value);
                }
                bytes
            })
            .collect()
    }

    /// Every record on `topic` now, in offset order per partition: its
    /// partition, key, value (none for a tombstone) and headers.
    pub fn read_records(&self, topic: &str) -> Vec<RawRecord> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::{Headers, Message};
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.broker)
            .set("group.id", unique("reader"))
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        let meta = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let partitions = meta.topics()[0].partitions().len();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..partitions as i32 {
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let (mut ended, mut out) = (0, Vec::new());
        let deadline = Instant::now() + Duration::from_secs(60);
        while ended < partitions {
            assert!(Instant::now() < deadline, "reading {topic} took over 60 s");
            match consumer.poll(Duration::from_millis(500)) {
                Some(Ok(m)) => out.push(RawRecord {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().unwrap_or_default().to_vec(),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default(),
                }),
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => ended += 1,
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                None => {}
            }
        }
        out.sort_by_key(|r| (r.partition, r.offset));
        out
    }

    /// Publish an event as a plain Kafka client would: JSON envelope, keyed.
    pub async fn publish(&self, key: &str, event: &Value) {
        let payload = event.to_string();
        let record = FutureRecord::to(&self.topic).key(key).payload(&payload);
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .expect("publish");
    }
}

fn merge(base: &mut Value, extra: &Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e.clone(),
    }
}

/// The next dead letter `dlq` reads, waited for up to a minute.
async fn next_letter(dlq: &rdkafka::consumer::StreamConsumer) -> Letter {
    use rdkafka::message::{Headers, Message};
    let m = tokio::time::timeout(Duration::from_secs(60), dlq.recv())
        .await
        .expect("dead letter")
        .unwrap();
    let mut headers = std::collections::BTreeMap::new();
    for header in m.headers().map(|h| h.iter().collect()).unwrap_or(vec![]) {
        headers.insert(
            header.key.to_string(),
            String::from_utf8_lossy(header.value.unwrap_or_default()).to_string(),
        );
    }
    Letter {
        headers,
        payload: m.payload().unwrap_or_default().to_vec(),
    }
}

pub async fn create_topics(broker: &str, topics: &[String], partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .create()
        .unwrap();
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    for r in admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .unwrap()
    {
        r.expect("create topic");
    }
}

pub use super::ip_block;

/// A record of a dead-letter topic.
/// One record as [`TestCluster::read_records`] read it.
#[derive(Clone, Debug)]
pub struct RawRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

#[derive(Debug)]
pub struct Letter {
    pub headers: std::collections::BTreeMap<String, String>,
    pub payload: Vec<u8>,
}

impl Letter {
    /// A header's value, or "" when it is absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

/// A running `herald run`. Its stderr (the log) is kept in a file and
/// streamed line by line, so a test can wait for what the node says.
pub struct NodeProcess {
    pub node: String,
    api: Option<String>,
    pub state: PathBuf,
    pub log: PathBuf,
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl NodeProcess {
    fn spawn(node: &str, config: &Path, state: &Path, env: &[(&str, &str)]) -> NodeProcess {
        let log = state.with_extension(format!("log.{}", unique("run")));
        let mut child = Command::new(herald_bin())
            .args(["run", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .env("HERALD_LOG", "info,herald::dispatch=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start herald");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let mut file = std::fs::File::create(&log).unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(file, "{line}");
                let _ = tx.send(line);
            }
        });
        NodeProcess {
            node: node.to_string(),
            api: None,
            state: state.to_path_buf(),
            log,
            child,
            lines: rx,
        }
    }

    /// Wait until the node logs a line containing `pattern`.
    pub fn wait_for_log(&mut self, pattern: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    // Remember where the API listens, whoever waits.
                    if line.contains("api listening")
                        && let Some(addr) = line
                            .split_whitespace()
                            .find_map(|w| w.strip_prefix("addr="))
                    {
                        self.api = Some(format!("http://{addr}"));
                    }
                    if line.contains(pattern) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "{}: no log line with `{pattern}` within {timeout:?} (log: {})",
                    self.node,
                    self.log.display()
                ),
            }
        }
    }

    /// The node's API base URL (`http://127.0.0.1:PORT`), once it listens.
    pub fn api(&mut self) -> String {
        if self.api.is_none() {
            self.wait_for_log("api listening", Duration::from_secs(60));
        }
        self.api.clone().expect("api listening addr=...")
    }

    /// Wait until the node has partitions of every group in `groups`
    /// assigned, in whatever order the assignments come.
    pub fn wait_assigned_all(&mut self, groups: &[String]) {
        let mut left: Vec<String> = groups
            .iter()
            .map(|g| format!("partitions assigned group={g} "))
            .collect();
        while !left.is_empty() {
            let pattern = "partitions assigned group=";
            let line = self.wait_for_log(pattern, Duration::from_secs(60));
            left.retain(|p| !line.contains(p.as_str()));
        }
    }

    /// Wait until the node has partitions of `group` assigned.
    pub fn wait_assigned(&mut self, group: &str) {
        self.wait_for_log(
            &format!("partitions assigned group={group} "),
            Duration::from_secs(60),
        );
    }

    /// The node's blocklist file, as a set of networks.
    pub fn blocklist(&self) -> BTreeSet<String> {
        read_blocklist(&self.state)
    }

    /// The process's peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.proc_status_kib("VmHWM:")
    }

    /// The process's resident memory now (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.proc_status_kib("VmRSS:")
    }

    /// CPU time (user + system) the process has used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("the node is running");
        // Fields after the command (which may hold spaces), from field 3 on.
        let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // USER_HZ is 100 on Linux.
        Duration::from_millis(ticks * 10)
    }

    fn proc_status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the node is running");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/<pid>/status"))
    }

    /// The node's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no chance to finish or commit anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait for the node to end by itself (a refusal to start); the
    /// timeout only guards against a hang.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{}: still running after {timeout:?}",
                self.node
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, and wait for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        unsafe_sigterm(self.child.id());
        self.child.wait().unwrap()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn unsafe_sigterm(pid: u32) {
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
}

/// The blocklist store (snapshot + journal) of a node that is not running:
/// what it made durable, whether or not it got to export it.
pub fn read_store(state: &Path) -> BTreeSet<String> {
    herald::effects::blocklist::Blocklist::open(state)
        .unwrap()
        .list(0)
        .into_iter()
        .map(|e| e.network)
        .collect()
}

/// A running node's exported blocklist (`blocklist.txt`, rewritten at most
/// once a second).
pub fn read_blocklist(state: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(state.join("blocklist.txt"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Poll `cond` until it holds (or panic with `what` after `timeout`).
/// For state that only shows in files, such as a node's blocklist.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A broker of a test's own (the shared one must not go away, or cannot be
/// reached from a network namespace), on a fixed port so that it can come
/// back where the node expects it. Started from the calling thread, so in
/// its network namespace.
pub struct OwnBroker {
    pub port: u16,
    child: Option<Child>,
}

impl OwnBroker {
    pub fn start(port: u16) -> OwnBroker {
        let bin =
            std::env::var("HERALD_NISSHI").expect("HERALD_NISSHI: run through tests/broker.sh");
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://nisshi/"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nisshi");
        wait_until("the broker listens", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        OwnBroker {
            port,
            child: Some(child),
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port free now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
