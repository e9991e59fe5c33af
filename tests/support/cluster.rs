//! A herald cluster for the end-to-end tests: real `herald run` processes
//! on the test broker (`tests/broker.sh` starts it and sets
//! `HERALD_TEST_BROKER`), each with its own config, handler folder and
//! state directory, observed through their logs and their state files.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
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
/// "fixtures/flaky") under `name`, with `manifest` as its manifest.
pub struct Install<'a> {
    pub wasm: &'a str,
    pub name: &'a str,
    pub manifest: &'a str,
}

pub struct TestCluster {
    pub broker: String,
    pub topic: String,
    pub group: String,
    pub dir: tempfile::TempDir,
    handlers: PathBuf,
    producer: FutureProducer,
    /// Extra settings merged into every node's config.
    pub settings: Value,
}

impl TestCluster {
    /// A topic with `partitions` partitions (and its dead-letter topic) and
    /// a handler folder with `handlers`.
    pub async fn new(name: &str, partitions: i32, handlers: &[Install<'_>]) -> TestCluster {
        let broker = broker();
        let topic = unique(name);
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
            std::fs::write(folder.join(format!("{}.toml", h.name)), h.manifest).unwrap();
        }
        create_topics(
            &broker,
            &[topic.clone(), format!("{topic}.dlq")],
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
            group,
            dir,
            handlers: folder,
            producer,
            settings: json!({}),
        }
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
            "topics": {"events": self.topic},
            "batch": {"size": 100, "linger": "2ms"},
            "retry": {"attempts": 3, "backoff": "50ms", "maxBackoff": "200ms"},
            "commitInterval": "100ms",
            "api": {"listen": "127.0.0.1:0", "token": TOKEN},
        });
        merge(&mut cfg, &self.settings);
        let path = self.dir.path().join(format!("{node}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
        path
    }

    /// Start `herald run` for `node`.
    pub fn start(&self, node: &str) -> NodeProcess {
        NodeProcess::spawn(node, &self.config(node), &self.dir.path().join(node))
    }

    /// Publish many events at once (keyed), waiting for all acknowledgements.
    pub async fn publish_all(&self, events: &[(String, Value)]) {
        let payloads: Vec<(String, String)> = events
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        let sends = payloads.iter().map(|(k, p)| {
            self.producer.send(
                FutureRecord::to(&self.topic).key(k).payload(p),
                Duration::from_secs(10),
            )
        });
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| e).expect("publish");
        }
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

/// An ip-block event in the public JSON form.
pub fn ip_block(id: &str, ip: &str, action: &str, reason: &str) -> Value {
    json!({"v":1,"id":id,"kind":"ip-block","origin":"test","ts":1795690000000u64,
        "body":{"ip":ip,"action":action,"reason":reason}})
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
    fn spawn(node: &str, config: &Path, state: &Path) -> NodeProcess {
        let log = state.with_extension(format!("log.{}", unique("run")));
        let mut child = Command::new(herald_bin())
            .args(["run", "--config"])
            .arg(config)
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

    /// Wait until the node has partitions of `group` assigned.
    pub fn wait_assigned(&mut self, group: &str) {
        self.wait_for_log(
            &format!("partitions assigned group={group}"),
            Duration::from_secs(60),
        );
    }

    /// The node's blocklist file, as a set of networks.
    pub fn blocklist(&self) -> BTreeSet<String> {
        read_blocklist(&self.state)
    }

    /// SIGKILL: no chance to finish or commit anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
