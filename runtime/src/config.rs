//! The node's configuration: one JSON file.
//!
//! The mail server's Coordinator object is accepted verbatim at the top level
//! (`@type`, `brokers`, `groupId`, `timeoutSession`, `timeoutMessage`), and
//! herald's own settings sit beside it as sibling keys:
//!
//! ```json
//! {
//!   "@type": "Kafka",
//!   "brokers": ["127.0.0.1:9092"],
//!   "groupId": "stalwart-cluster",
//!   "timeoutSession": "5s",
//!   "timeoutMessage": "5s",
//!
//!   "nodeId": "node-1",
//!   "handlers": "/etc/herald/handlers",
//!   "stateDir": "/var/lib/herald",
//!   "topics": { "events": "herald.events", "deadLetterSuffix": ".dlq",
//!               "create": { "partitions": 6, "replicationFactor": 1 } },
//!   "batch": { "size": 100, "linger": "5ms" },
//!   "retry": { "attempts": 5, "backoff": "100ms", "maxBackoff": "10s" },
//!   "commitInterval": "250ms",
//!   "api": { "listen": "127.0.0.1:8470", "unixSocket": null, "token": null, "tokenFile": null },
//!   "stalwart": { "enabled": false, "nodeId": 900, "topic": "stwt.agora" },
//!   "kafka": { "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512" }
//! }
//! ```
//!
//! Only `brokers` and `groupId` are required; everything else has a default
//! (see the field docs of [`Config`]). Stalwart's settings store writes the
//! Coordinator in another shape, and an exported setting loads unchanged:
//! `brokers` may be an object used as a set (`{"kafka1:9092": true}`, `false`
//! entries ignored) and every duration may be a number of milliseconds
//! (`"timeoutSession": 5000`) instead of a string like `"5s"`.
//!
//! Unknown keys are errors, at any depth, and every error names the field:
//! ``field `topics.evnets`: unknown field ...``; [`Config::load`] puts the
//! file's path in front. Relative paths (`handlers`, `stateDir`, ...) are
//! relative to the working directory of the process, not to the file.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Unexpected, Visitor};

use crate::manifest::{field_error, parse_duration};

/// The only coordinator `@type` herald speaks.
pub const COORDINATOR_TYPE: &str = "Kafka";

/// Longest consumer group id or topic name Kafka accepts.
pub const MAX_KAFKA_NAME: usize = 249;

/// librdkafka properties herald sets itself, with the reason; the `kafka`
/// passthrough object may not set them.
pub const OWNED_KAFKA_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "comes from `brokers`"),
    ("metadata.broker.list", "comes from `brokers`"),
    (
        "group.id",
        "comes from `groupId` (and `nodeId` for broadcast handlers)",
    ),
    (
        "enable.auto.commit",
        "is fixed: herald commits only what its handlers finished",
    ),
    (
        "enable.auto.offset.store",
        "is fixed: herald stores offsets only after handling",
    ),
    ("enable.idempotence", "is fixed for correct publishing"),
    ("acks", "is fixed for correct publishing"),
    ("request.required.acks", "is fixed for correct publishing"),
    ("session.timeout.ms", "comes from `timeoutSession`"),
    ("message.timeout.ms", "comes from `timeoutMessage`"),
    ("delivery.timeout.ms", "comes from `timeoutMessage`"),
];

/// Default of `timeoutSession` and `timeoutMessage`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default of `handlers`.
pub const DEFAULT_HANDLERS: &str = "/etc/herald/handlers";
/// Default of `stateDir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/herald";
/// Default of `commitInterval`.
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(250);
/// Default of `api.listen`.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:8470";
/// Largest `batch.size`.
pub const MAX_BATCH_SIZE: usize = 10_000;
/// Largest `retry.attempts`.
pub const MAX_RETRY_ATTEMPTS: u32 = 1000;
/// Largest `timeoutSession` librdkafka accepts (`session.timeout.ms`).
pub const MAX_SESSION_TIMEOUT: Duration = Duration::from_secs(3600);
/// Largest `timeoutMessage` librdkafka accepts (`message.timeout.ms`).
pub const MAX_MESSAGE_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

/// A node's validated configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// Kafka bootstrap brokers, `host:port` each (IPv6 as `[::1]:9092`),
    /// at least one, in the file's order without duplicates.
    pub brokers: Vec<String>,
    /// The cluster's consumer group (`groupId`): shared handlers consume with
    /// it, broadcast handlers with `<groupId>.<nodeId>`.
    pub group_id: String,
    /// The consumer's session timeout (`timeoutSession`, default 5s).
    pub timeout_session: Duration,
    /// The producer's delivery timeout (`timeoutMessage`, default 5s).
    pub timeout_message: Duration,
    /// This node's name (`nodeId`, default: the machine's hostname).
    pub node_id: String,
    /// The handler folder: `.wasm` components with their `.toml` manifests
    /// (`handlers`, default `/etc/herald/handlers`).
    pub handlers: PathBuf,
    /// Where the node keeps its state (`stateDir`, default `/var/lib/herald`).
    pub state_dir: PathBuf,
    /// Topic names (`topics`).
    pub topics: Topics,
    /// How events are batched into handler calls (`batch`).
    pub batch: Batch,
    /// How failed handler calls are retried (`retry`).
    pub retry: Retry,
    /// How often handled offsets are committed (`commitInterval`, default 250ms).
    pub commit_interval: Duration,
    /// The node's local API (`api`).
    pub api: Api,
    /// Stalwart v0.16 wire compatibility (`stalwart`).
    pub stalwart: Stalwart,
    /// Extra librdkafka properties, passed through verbatim (`kafka`); never
    /// one of [`OWNED_KAFKA_PROPERTIES`].
    pub kafka: BTreeMap<String, String>,
}

/// Topic names (`topics`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    /// Native events (`topics.events`, default `herald.events`).
    pub events: String,
    /// Appended to a topic's name to name its dead-letter topic
    /// (`topics.deadLetterSuffix`, default `.dlq`; never empty).
    pub dead_letter_suffix: String,
    /// When set (`topics.create`), herald creates the topics it needs that
    /// do not exist yet.
    pub create: Option<TopicCreate>,
}

impl Topics {
    /// The dead-letter topic of `topic`: `topic` + the suffix.
    pub fn dead_letter(&self, topic: &str) -> String {
        format!("{topic}{}", self.dead_letter_suffix)
    }
}

impl Default for Topics {
    /// `herald.events`, `.dlq`, no topic creation.
    fn default() -> Self {
        Topics {
            events: "herald.events".into(),
            dead_letter_suffix: ".dlq".into(),
            create: None,
        }
    }
}

/// How herald creates missing topics (`topics.create`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicCreate {
    /// Partitions of a created topic (≥ 1).
    pub partitions: i32,
    /// Replication factor of a created topic (≥ 1).
    pub replication_factor: i32,
}

/// How events are batched into one handler call (`batch`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Most events per call (`batch.size`, 1..=10000, default 100).
    pub size: usize,
    /// How long to wait for a batch to fill (`batch.linger`, default 5ms).
    pub linger: Duration,
}

impl Default for Batch {
    /// 100 events, 5ms.
    fn default() -> Self {
        Batch {
            size: 100,
            linger: Duration::from_millis(5),
        }
    }
}

/// How a failed handler call is retried before its events go to the
/// dead-letter topic (`retry`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Retries after the first call (`retry.attempts`, 0..=1000, default 5).
    pub attempts: u32,
    /// Delay before the first retry (`retry.backoff`, default 100ms).
    pub backoff: Duration,
    /// Cap on the delay (`retry.maxBackoff`, default 10s, ≥ `backoff`).
    pub max_backoff: Duration,
}

impl Retry {
    /// The delay before retry number `attempt` (counted from 1; 0 is taken
    /// as 1): `backoff * 2^(attempt-1)`, capped at `max_backoff`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1);
        1u32.checked_shl(exponent)
            .and_then(|factor| self.backoff.checked_mul(factor))
            .map_or(self.max_backoff, |d| d.min(self.max_backoff))
    }
}

impl Default for Retry {
    /// 5 attempts, 100ms doubling up to 10s.
    fn default() -> Self {
        Retry {
            attempts: 5,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// The node's local API for the mail server process (`api`).
#[derive(Clone, PartialEq, Eq)]
pub struct Api {
    /// TCP address (`api.listen`, default `127.0.0.1:8470`); loopback unless
    /// `allow_non_loopback`.
    pub listen: SocketAddr,
    /// Also listen on this Unix socket (`api.unixSocket`).
    pub unix_socket: Option<PathBuf>,
    /// Bearer token clients must present (`api.token`); not with `token_file`.
    pub token: Option<String>,
    /// File holding the token (`api.tokenFile`); not with `token`. Read by the
    /// API at start-up, not here.
    pub token_file: Option<PathBuf>,
    /// Allow `listen` on a non-loopback address (`api.allowNonLoopback`,
    /// default false).
    pub allow_non_loopback: bool,
}

impl Default for Api {
    /// `127.0.0.1:8470`, no Unix socket, no token, loopback only.
    fn default() -> Self {
        Api {
            listen: DEFAULT_API_LISTEN.parse().expect("valid default address"),
            unix_socket: None,
            token: None,
            token_file: None,
            allow_non_loopback: false,
        }
    }
}

impl fmt::Debug for Api {
    /// Like a derived `Debug`, with the token redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Api")
            .field("listen", &self.listen)
            .field("unix_socket", &self.unix_socket)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("allow_non_loopback", &self.allow_non_loopback)
            .finish()
    }
}

/// Stalwart v0.16 wire compatibility: herald reads and writes Stalwart's own
/// coordination records (`stalwart`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stalwart {
    /// Whether herald takes part (`stalwart.enabled`, default false).
    pub enabled: bool,
    /// herald's node id in Stalwart's records (`stalwart.nodeId`); required
    /// when enabled.
    pub node_id: Option<u16>,
    /// Stalwart's topic (`stalwart.topic`, default `stwt.agora`).
    pub topic: String,
}

impl Default for Stalwart {
    /// Disabled, topic `stwt.agora`.
    fn default() -> Self {
        Stalwart {
            enabled: false,
            node_id: None,
            topic: "stwt.agora".into(),
        }
    }
}

/// Whether a librdkafka property holds a secret, kept out of `Debug` output.
fn is_secret_property(key: &str) -> bool {
    ["password", "secret", "key.pem", "oauthbearer.config"]
        .iter()
        .any(|s| key.contains(s))
}

impl fmt::Debug for Config {
    /// Like a derived `Debug`, with the API token and secret-looking `kafka`
    /// properties (passwords, secrets, keys) redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kafka: BTreeMap<&str, &str> = self
            .kafka
            .iter()
            .map(|(k, v)| {
                let v = if is_secret_property(k) {
                    "<redacted>"
                } else {
                    v.as_str()
                };
                (k.as_str(), v)
            })
            .collect();
        f.debug_struct("Config")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("timeout_session", &self.timeout_session)
            .field("timeout_message", &self.timeout_message)
            .field("node_id", &self.node_id)
            .field("handlers", &self.handlers)
            .field("state_dir", &self.state_dir)
            .field("topics", &self.topics)
            .field("batch", &self.batch)
            .field("retry", &self.retry)
            .field("commit_interval", &self.commit_interval)
            .field("api", &self.api)
            .field("stalwart", &self.stalwart)
            .field("kafka", &kafka)
            .finish()
    }
}

impl Config {
    /// Read and validate the file at `path`. Every error message begins with
    /// the path: ``<path>: field `x`: ...``.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow!("{}: cannot read configuration: {e}", path.display()))?;
        Config::parse(&text).map_err(|e| anyhow!("{}: {e:#}", path.display()))
    }

    /// Parse and validate configuration text (JSON). Errors name the field:
    /// ``field `topics.evnets`: unknown field ...``.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        // One flat message, so that `{}` shows as much as `{:#}`.
        parse(text).map_err(|e| anyhow!("{e:#}"))
    }

    /// `<groupId>.<nodeId>`: the node's own group, for broadcast handlers.
    pub fn broadcast_group(&self) -> String {
        format!("{}.{}", self.group_id, self.node_id)
    }

    /// `<groupId>`: the cluster's common group, for shared handlers.
    pub fn shared_group(&self) -> String {
        self.group_id.clone()
    }

    /// Minimal config for tests and the demo: brokers + group + node, defaults elsewhere.
    ///
    /// `brokers` is one `host:port` or several separated by commas. Nothing is
    /// validated here.
    pub fn for_brokers(brokers: &str, group_id: &str, node_id: &str) -> Config {
        Config {
            brokers: brokers
                .split(',')
                .map(str::trim)
                .filter(|b| !b.is_empty())
                .map(String::from)
                .collect(),
            group_id: group_id.to_string(),
            timeout_session: DEFAULT_TIMEOUT,
            timeout_message: DEFAULT_TIMEOUT,
            node_id: node_id.to_string(),
            handlers: PathBuf::from(DEFAULT_HANDLERS),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            topics: Topics::default(),
            batch: Batch::default(),
            retry: Retry::default(),
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            api: Api::default(),
            stalwart: Stalwart::default(),
            kafka: BTreeMap::new(),
        }
    }
}

/// The machine's hostname: /proc/sys/kernel/hostname, else /etc/hostname,
/// trimmed; `None` when neither gives a non-empty name.
pub fn hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
}

// ---------------------------------------------------------------------------
// The file as written.

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a JSON object"
)]
struct Raw {
    #[serde(rename = "@type", default)]
    kind: Option<String>,
    #[serde(default)]
    brokers: Option<Brokers>,
    #[serde(default)]
    group_id: Option<String>,
    #[serde(default)]
    timeout_session: Option<DurationValue>,
    #[serde(default)]
    timeout_message: Option<DurationValue>,
    #[serde(default)]
    node_id: Option<String>,
    #[serde(default)]
    handlers: Option<PathBuf>,
    #[serde(default)]
    state_dir: Option<PathBuf>,
    #[serde(default)]
    topics: Option<RawTopics>,
    #[serde(default)]
    batch: Option<RawBatch>,
    #[serde(default)]
    retry: Option<RawRetry>,
    #[serde(default)]
    commit_interval: Option<DurationValue>,
    #[serde(default)]
    api: Option<RawApi>,
    #[serde(default)]
    stalwart: Option<RawStalwart>,
    #[serde(default)]
    kafka: Option<BTreeMap<String, PropertyValue>>,
}

#[derive(Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an object of topic settings"
)]
struct RawTopics {
    #[serde(default)]
    events: Option<String>,
    #[serde(default)]
    dead_letter_suffix: Option<String>,
    #[serde(default)]
    create: Option<RawTopicCreate>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an object with `partitions` and `replicationFactor`"
)]
struct RawTopicCreate {
    partitions: i32,
    replication_factor: i32,
}

#[derive(Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an object with `size` and `linger`"
)]
struct RawBatch {
    #[serde(default)]
    size: Option<usize>,
    #[serde(default)]
    linger: Option<DurationValue>,
}

#[derive(Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an object with `attempts`, `backoff` and `maxBackoff`"
)]
struct RawRetry {
    #[serde(default)]
    attempts: Option<u32>,
    #[serde(default)]
    backoff: Option<DurationValue>,
    #[serde(default)]
    max_backoff: Option<DurationValue>,
}

#[derive(Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an object of API settings"
)]
struct RawApi {
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    unix_socket: Option<PathBuf>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    token_file: Option<PathBuf>,
    #[serde(default)]
    allow_non_loopback: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an object with `enabled`, `nodeId` and `topic`"
)]
struct RawStalwart {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    node_id: Option<u16>,
    #[serde(default)]
    topic: Option<String>,
}

/// `brokers`: `["host:port", ...]` or Stalwart's set shape
/// `{"host:port": true, ...}` (false entries ignored).
struct Brokers(Vec<String>);

impl<'de> Deserialize<'de> for Brokers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Brokers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an array of \"host:port\" strings or an object like {\"host:port\": true}",
                )
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Brokers, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<String>()? {
                    out.push(b);
                }
                Ok(Brokers(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Brokers, A::Error> {
                let mut out = Vec::new();
                while let Some((b, on)) = map.next_entry::<String, bool>()? {
                    if on {
                        out.push(b);
                    }
                }
                Ok(Brokers(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration: a string like "500ms", "5s", "1m", or a whole number of
/// milliseconds (as Stalwart's settings store writes them).
struct DurationValue(Duration);

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a duration like \"500ms\", \"5s\" or \"1m\", or a number of milliseconds",
                )
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<DurationValue, E> {
                parse_duration(s)
                    .map(DurationValue)
                    .map_err(|e| E::custom(format!("{e:#}")))
            }
            fn visit_u64<E: de::Error>(self, ms: u64) -> Result<DurationValue, E> {
                Ok(DurationValue(Duration::from_millis(ms)))
            }
            fn visit_i64<E: de::Error>(self, ms: i64) -> Result<DurationValue, E> {
                match u64::try_from(ms) {
                    Ok(ms) => self.visit_u64(ms),
                    Err(_) => Err(E::invalid_value(Unexpected::Signed(ms), &self)),
                }
            }
            fn visit_f64<E: de::Error>(self, ms: f64) -> Result<DurationValue, E> {
                if ms.is_finite() && ms >= 0.0 && ms.fract() == 0.0 && ms < u64::MAX as f64 {
                    self.visit_u64(ms as u64)
                } else {
                    Err(E::invalid_value(Unexpected::Float(ms), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A librdkafka property value: a string, or a number or boolean turned into
/// its string form.
struct PropertyValue(String);

impl<'de> Deserialize<'de> for PropertyValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PropertyValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<PropertyValue, E> {
                Ok(PropertyValue(s.to_string()))
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<PropertyValue, E> {
                Ok(PropertyValue(b.to_string()))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<PropertyValue, E> {
                Ok(PropertyValue(n.to_string()))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<PropertyValue, E> {
                Ok(PropertyValue(n.to_string()))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<PropertyValue, E> {
                Ok(PropertyValue(n.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------
// Validation.

fn parse(text: &str) -> anyhow::Result<Config> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| anyhow!("not valid JSON: {e}"))?;
    if !value.is_object() {
        bail!("the configuration must be a JSON object");
    }
    let raw: Raw = serde_path_to_error::deserialize(value).map_err(field_error)?;

    if let Some(kind) = &raw.kind
        && kind != COORDINATOR_TYPE
    {
        bail!(
            "field `@type`: `{kind}` is not supported; herald only supports the \"{COORDINATOR_TYPE}\" coordinator"
        );
    }

    let brokers = brokers(raw.brokers.map(|b| b.0).unwrap_or_default())?;

    let group_id = match raw.group_id {
        None => bail!(
            "field `groupId`: missing; set it to the cluster's Kafka consumer group, e.g. \"stalwart-cluster\""
        ),
        Some(g) => g,
    };
    kafka_name("groupId", &group_id)?;

    let timeout_session = timeout(
        "timeoutSession",
        raw.timeout_session,
        MAX_SESSION_TIMEOUT,
        "session.timeout.ms",
    )?;
    let timeout_message = timeout(
        "timeoutMessage",
        raw.timeout_message,
        MAX_MESSAGE_TIMEOUT,
        "message.timeout.ms",
    )?;

    let node_id = match raw.node_id {
        Some(n) => {
            kafka_name("nodeId", &n)?;
            n
        }
        None => {
            let Some(h) = hostname() else {
                bail!(
                    "field `nodeId`: not set, and the machine's hostname could not be read; set `nodeId`"
                );
            };
            kafka_name("nodeId", &h)
                .map_err(|e| anyhow!("{e:#} (`nodeId` defaults to the hostname); set `nodeId`"))?;
            h
        }
    };
    let broadcast = format!("{group_id}.{node_id}");
    if broadcast.len() > MAX_KAFKA_NAME {
        bail!(
            "field `nodeId`: the broadcast consumer group `{broadcast}` (`<groupId>.<nodeId>`) is longer than {MAX_KAFKA_NAME} characters"
        );
    }

    let handlers = path("handlers", raw.handlers, DEFAULT_HANDLERS)?;
    let state_dir = path("stateDir", raw.state_dir, DEFAULT_STATE_DIR)?;

    let topics = topics(raw.topics.unwrap_or_default())?;
    let batch = batch(raw.batch.unwrap_or_default())?;
    let retry = retry(raw.retry.unwrap_or_default())?;

    let commit_interval = raw.commit_interval.map_or(DEFAULT_COMMIT_INTERVAL, |d| d.0);
    if commit_interval.is_zero() {
        bail!("field `commitInterval`: must be more than 0");
    }

    let api = api(raw.api.unwrap_or_default())?;
    let stalwart = stalwart(raw.stalwart.unwrap_or_default(), &topics)?;
    let kafka = kafka(raw.kafka.unwrap_or_default())?;

    Ok(Config {
        brokers,
        group_id,
        timeout_session,
        timeout_message,
        node_id,
        handlers,
        state_dir,
        topics,
        batch,
        retry,
        commit_interval,
        api,
        stalwart,
        kafka,
    })
}

fn brokers(list: Vec<String>) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for entry in list {
        let b = entry.trim();
        if !is_broker(b) {
            bail!(
                "field `brokers`: `{entry}` is not a broker address like \"kafka1:9092\" (host:port, IPv6 as \"[::1]:9092\")"
            );
        }
        if !out.iter().any(|o| o == b) {
            out.push(b.to_string());
        }
    }
    if out.is_empty() {
        bail!("field `brokers`: at least one broker is required");
    }
    Ok(out)
}

/// `host:port`, the port a number; an IPv6 host in brackets.
fn is_broker(b: &str) -> bool {
    let Some((host, port)) = b.rsplit_once(':') else {
        return false;
    };
    if port.is_empty() || !port.bytes().all(|c| c.is_ascii_digit()) {
        return false;
    }
    if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
        return false;
    }
    if let Some(inner) = host.strip_prefix('[') {
        return inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
    }
    !host.is_empty()
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
}

/// A consumer group id or topic name: non-empty, at most 249 characters of
/// `[A-Za-z0-9._-]`.
fn kafka_name(field: &str, name: &str) -> anyhow::Result<()> {
    if name.is_empty() {
        bail!("field `{field}`: must not be empty");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        let what = if c.is_whitespace() {
            "whitespace".to_string()
        } else {
            format!("{c:?}")
        };
        bail!(
            "field `{field}`: `{name}` contains {what}; only letters, digits, '.', '_' and '-' are allowed"
        );
    }
    if name.len() > MAX_KAFKA_NAME {
        bail!("field `{field}`: longer than {MAX_KAFKA_NAME} characters");
    }
    Ok(())
}

fn topic_name(field: &str, name: &str) -> anyhow::Result<()> {
    kafka_name(field, name)?;
    if name == "." || name == ".." {
        bail!("field `{field}`: `{name}` is not a valid topic name");
    }
    Ok(())
}

fn timeout(
    field: &str,
    value: Option<DurationValue>,
    max: Duration,
    property: &str,
) -> anyhow::Result<Duration> {
    let d = value.map_or(DEFAULT_TIMEOUT, |d| d.0);
    if d.is_zero() {
        bail!("field `{field}`: must be more than 0");
    }
    if d < Duration::from_millis(1) {
        bail!("field `{field}`: must be at least 1ms");
    }
    if d > max {
        bail!(
            "field `{field}`: {} is more than librdkafka accepts for {property} ({})",
            humantime::format_duration(d),
            humantime::format_duration(max)
        );
    }
    Ok(d)
}

fn path(field: &str, value: Option<PathBuf>, default: &str) -> anyhow::Result<PathBuf> {
    let p = value.unwrap_or_else(|| PathBuf::from(default));
    if p.as_os_str().is_empty() {
        bail!("field `{field}`: must not be empty");
    }
    Ok(p)
}

fn topics(raw: RawTopics) -> anyhow::Result<Topics> {
    let d = Topics::default();
    let events = raw.events.unwrap_or(d.events);
    topic_name("topics.events", &events)?;
    let dead_letter_suffix = raw.dead_letter_suffix.unwrap_or(d.dead_letter_suffix);
    if dead_letter_suffix.is_empty() {
        bail!(
            "field `topics.deadLetterSuffix`: must not be empty (the dead-letter topic would be the topic itself)"
        );
    }
    let topics = Topics {
        dead_letter_suffix,
        create: None,
        events,
    };
    topic_name(
        "topics.deadLetterSuffix",
        &topics.dead_letter(&topics.events),
    )?;
    let create = match raw.create {
        None => None,
        Some(c) => {
            if c.partitions < 1 {
                bail!("field `topics.create.partitions`: must be at least 1");
            }
            if c.replication_factor < 1 {
                bail!("field `topics.create.replicationFactor`: must be at least 1");
            }
            Some(TopicCreate {
                partitions: c.partitions,
                replication_factor: c.replication_factor,
            })
        }
    };
    Ok(Topics { create, ..topics })
}

fn batch(raw: RawBatch) -> anyhow::Result<Batch> {
    let d = Batch::default();
    let size = raw.size.unwrap_or(d.size);
    if !(1..=MAX_BATCH_SIZE).contains(&size) {
        bail!("field `batch.size`: {size} is not between 1 and {MAX_BATCH_SIZE}");
    }
    Ok(Batch {
        size,
        linger: raw.linger.map_or(d.linger, |l| l.0),
    })
}

fn retry(raw: RawRetry) -> anyhow::Result<Retry> {
    let d = Retry::default();
    let attempts = raw.attempts.unwrap_or(d.attempts);
    if attempts > MAX_RETRY_ATTEMPTS {
        bail!("field `retry.attempts`: {attempts} is more than {MAX_RETRY_ATTEMPTS}");
    }
    let backoff = raw.backoff.map_or(d.backoff, |b| b.0);
    let max_backoff = raw.max_backoff.map_or(d.max_backoff, |b| b.0);
    if max_backoff < backoff {
        bail!(
            "field `retry.maxBackoff`: {} is less than `retry.backoff` ({})",
            humantime::format_duration(max_backoff),
            humantime::format_duration(backoff)
        );
    }
    Ok(Retry {
        attempts,
        backoff,
        max_backoff,
    })
}

fn api(raw: RawApi) -> anyhow::Result<Api> {
    let listen_text = raw.listen.as_deref().unwrap_or(DEFAULT_API_LISTEN);
    let listen: SocketAddr = listen_text.trim().parse().map_err(|_| {
        anyhow!(
            "field `api.listen`: `{listen_text}` is not an IP address and port like \"127.0.0.1:8470\" or \"[::1]:8470\""
        )
    })?;
    let allow_non_loopback = raw.allow_non_loopback.unwrap_or(false);
    if !listen.ip().to_canonical().is_loopback() && !allow_non_loopback {
        bail!(
            "field `api.listen`: {listen} is not a loopback address; the API only listens on loopback (127.0.0.1, ::1) unless `api.allowNonLoopback` is true"
        );
    }
    if raw.token.is_some() && raw.token_file.is_some() {
        bail!("field `api.token`: set `api.token` or `api.tokenFile`, not both");
    }
    if raw.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
        bail!("field `api.token`: must not be empty");
    }
    if raw
        .token_file
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        bail!("field `api.tokenFile`: must not be empty");
    }
    if raw
        .unix_socket
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        bail!("field `api.unixSocket`: must not be empty");
    }
    Ok(Api {
        listen,
        unix_socket: raw.unix_socket,
        token: raw.token,
        token_file: raw.token_file,
        allow_non_loopback,
    })
}

fn stalwart(raw: RawStalwart, topics: &Topics) -> anyhow::Result<Stalwart> {
    let d = Stalwart::default();
    let enabled = raw.enabled.unwrap_or(d.enabled);
    let topic = raw.topic.unwrap_or(d.topic);
    topic_name("stalwart.topic", &topic)?;
    if enabled {
        if raw.node_id.is_none() {
            bail!(
                "field `stalwart.nodeId`: required when `stalwart.enabled` is true (herald's node id in Stalwart's records, 0-65535)"
            );
        }
        if topic == topics.events {
            bail!(
                "field `stalwart.topic`: `{topic}` is also `topics.events`; Stalwart's records need a topic of their own"
            );
        }
    }
    Ok(Stalwart {
        enabled,
        node_id: raw.node_id,
        topic,
    })
}

fn kafka(raw: BTreeMap<String, PropertyValue>) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (key, PropertyValue(value)) in raw {
        if let Some((_, why)) = OWNED_KAFKA_PROPERTIES
            .iter()
            .find(|(owned, _)| *owned == key.trim())
        {
            bail!("field `kafka.{key}`: herald sets `{key}` itself; it {why}");
        }
        if key.trim().is_empty() {
            bail!("field `kafka`: a property name must not be empty");
        }
        out.insert(key, value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COORDINATOR: &str = r#"{ "@type": "Kafka", "brokers": ["kafka1:9092"], "groupId": "stalwart-cluster",
        "timeoutSession": "5s", "timeoutMessage": "5s" }"#;

    fn err(text: &str) -> String {
        format!("{:#}", Config::parse(text).unwrap_err())
    }

    /// The DESIGN example with `extra` (JSON members, no braces) added.
    fn with(extra: &str) -> String {
        format!(
            r#"{{ "@type": "Kafka", "brokers": ["kafka1:9092"], "groupId": "g", "nodeId": "n1"{}{extra} }}"#,
            if extra.is_empty() { "" } else { "," }
        )
    }

    #[test]
    fn config_coordinator_example_parses_with_defaults() {
        let c = Config::parse(COORDINATOR).unwrap();
        assert_eq!(c.brokers, ["kafka1:9092"]);
        assert_eq!(c.group_id, "stalwart-cluster");
        assert_eq!(c.timeout_session, Duration::from_secs(5));
        assert_eq!(c.timeout_message, Duration::from_secs(5));
        assert_eq!(Some(c.node_id.clone()), hostname());
        assert_eq!(c.handlers, Path::new("/etc/herald/handlers"));
        assert_eq!(c.state_dir, Path::new("/var/lib/herald"));
        assert_eq!(c.topics, Topics::default());
        assert_eq!(c.topics.events, "herald.events");
        assert_eq!(c.topics.dead_letter("herald.events"), "herald.events.dlq");
        assert_eq!(c.batch.size, 100);
        assert_eq!(c.batch.linger, Duration::from_millis(5));
        assert_eq!(c.retry, Retry::default());
        assert_eq!(c.commit_interval, Duration::from_millis(250));
        assert_eq!(c.api.listen, "127.0.0.1:8470".parse().unwrap());
        assert!(c.api.token.is_none() && c.api.unix_socket.is_none());
        assert!(!c.stalwart.enabled);
        assert_eq!(c.stalwart.topic, "stwt.agora");
        assert!(c.kafka.is_empty());
        assert_eq!(c.shared_group(), "stalwart-cluster");
        assert_eq!(
            c.broadcast_group(),
            format!("stalwart-cluster.{}", c.node_id)
        );
        // The same with defaults filled in by hand.
        let mut d = Config::for_brokers("kafka1:9092", "stalwart-cluster", &c.node_id);
        assert_eq!(c, d);
        d.brokers.clear();
        assert_ne!(c, d);
    }

    #[test]
    fn config_settings_store_shape_parses_the_same() {
        let store = Config::parse(
            r#"{"@type":"Kafka","brokers":{"kafka1:9092":true,"old:9092":false},"groupId":"g","timeoutSession":5000,"timeoutMessage":5000}"#,
        )
        .unwrap();
        let plain = Config::parse(
            r#"{"@type":"Kafka","brokers":["kafka1:9092"],"groupId":"g","timeoutSession":"5s","timeoutMessage":"5s"}"#,
        )
        .unwrap();
        assert_eq!(store.brokers, ["kafka1:9092"]);
        assert_eq!(store.brokers, plain.brokers);
        assert_eq!(store.timeout_session, plain.timeout_session);
        assert_eq!(store.timeout_message, plain.timeout_message);
        assert_eq!(store, plain);
        let e = err(r#"{"brokers":{"kafka1:9092":"yes"},"groupId":"g"}"#);
        assert!(e.contains("field `brokers"), "{e}");
    }

    #[test]
    fn config_example_file_parses() {
        let c = Config::parse(include_str!("../herald.example.json")).unwrap();
        assert_eq!(c.brokers, ["127.0.0.1:9092"]);
        assert_eq!(c.node_id, "node-1");
        assert_eq!(c.handlers, Path::new("target/handlers"));
        assert_eq!(
            c.topics.create,
            Some(TopicCreate {
                partitions: 6,
                replication_factor: 1
            })
        );
        assert_eq!(c.api.token.as_deref(), Some("change-me"));
        assert_eq!(c.stalwart.node_id, Some(900));
        assert_eq!(c.kafka["security.protocol"], "SASL_SSL");
        assert_eq!(c.broadcast_group(), "stalwart-cluster.node-1");
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("herald.example.json");
        assert_eq!(Config::load(&path).unwrap(), c);
        // Secrets stay out of Debug output.
        assert!(!format!("{c:?}").contains("change-me"));
    }

    #[test]
    fn config_brokers_required() {
        for text in [
            r#"{"brokers": [], "groupId": "g"}"#,
            r#"{"groupId": "g"}"#,
            r#"{"brokers": {"kafka1:9092": false}, "groupId": "g"}"#,
            r#"{"brokers": null, "groupId": "g"}"#,
        ] {
            let e = err(text);
            assert!(e.contains("at least one broker is required"), "{e}");
            assert!(e.contains("field `brokers`"), "{e}");
        }
    }

    #[test]
    fn config_broker_addresses_checked() {
        for ok in ["kafka1:9092", "10.0.0.1:9092", "[::1]:9092", "a.b-c_d:1"] {
            let c = Config::parse(&format!(r#"{{"brokers": ["{ok}"], "groupId": "g"}}"#));
            assert_eq!(c.unwrap().brokers, [ok]);
        }
        for bad in [
            "kafka1",
            "kafka1:",
            "kafka1:port",
            ":9092",
            "::1:9092",
            "[::1]",
            "h:70000",
            "h:0",
            "a b:1",
        ] {
            let e = err(&format!(
                r#"{{"brokers": ["kafka1:9092", "{bad}"], "groupId": "g"}}"#
            ));
            assert!(e.contains("field `brokers`") && e.contains(bad), "{e}");
        }
        let e = err(r#"{"brokers": "kafka1:9092", "groupId": "g"}"#);
        assert!(e.contains("field `brokers`"), "{e}");
        let e = err(r#"{"brokers": [9092], "groupId": "g"}"#);
        assert!(e.contains("field `brokers[0]`"), "{e}");
    }

    #[test]
    fn config_type_must_be_kafka() {
        let e = err(r#"{"@type": "Redis", "brokers": ["k:1"], "groupId": "g"}"#);
        assert!(e.contains("field `@type`") && e.contains("Redis"), "{e}");
        assert!(e.contains("\"Kafka\""), "{e}");
        let e = err(r#"{"@type": "kafka", "brokers": ["k:1"], "groupId": "g"}"#);
        assert!(e.contains("field `@type`"), "{e}");
        let e = err(r#"{"@type": 1, "brokers": ["k:1"], "groupId": "g"}"#);
        assert!(e.contains("field `@type`"), "{e}");
        // Missing: a herald-only file.
        Config::parse(r#"{"brokers": ["k:1"], "groupId": "g"}"#).unwrap();
    }

    #[test]
    fn config_group_and_node_checked() {
        let e = err(r#"{"brokers": ["k:1"]}"#);
        assert!(e.contains("field `groupId`"), "{e}");
        for bad in [r#""""#, r#""a b""#, r#""a/b""#, "1"] {
            let e = err(&format!(r#"{{"brokers": ["k:1"], "groupId": {bad}}}"#));
            assert!(e.contains("field `groupId`"), "{bad}: {e}");
        }
        let long = "g".repeat(250);
        let e = err(&format!(r#"{{"brokers": ["k:1"], "groupId": "{long}"}}"#));
        assert!(e.contains("field `groupId`"), "{e}");
        for bad in [r#""""#, r#""node 1""#, r#""node:1""#, "7"] {
            let e = err(&format!(
                r#"{{"brokers": ["k:1"], "groupId": "g", "nodeId": {bad}}}"#
            ));
            assert!(e.contains("field `nodeId`"), "{bad}: {e}");
        }
        let long = "n".repeat(248);
        let e = err(&format!(
            r#"{{"brokers": ["k:1"], "groupId": "g", "nodeId": "{long}"}}"#
        ));
        assert!(e.contains("field `nodeId`"), "{e}");
    }

    #[test]
    fn config_wrong_types_name_the_field() {
        let e = err(&with(r#""timeoutSession": true"#));
        assert!(e.contains("field `timeoutSession`"), "{e}");
        let e = err(&with(r#""batch": {"size": "x"}"#));
        assert!(e.contains("field `batch.size`"), "{e}");
        let e = err(&with(r#""api": {"allowNonLoopback": "yes"}"#));
        assert!(e.contains("field `api.allowNonLoopback`"), "{e}");
        let e = err(&with(r#""stalwart": {"nodeId": 70000}"#));
        assert!(e.contains("field `stalwart.nodeId`"), "{e}");
        let e = err(&with(r#""topics": 5"#));
        assert!(e.contains("field `topics`"), "{e}");
        let e = err(&with(r#""kafka": {"linger.ms": null}"#));
        assert!(e.contains("field `kafka.linger.ms`"), "{e}");
        let e = err("[]");
        assert!(e.contains("JSON object"), "{e}");
        let e = err("{");
        assert!(e.contains("not valid JSON"), "{e}");
    }

    #[test]
    fn config_unknown_keys_named() {
        let e = err(&with(r#""topics": {"evnets": "x"}"#));
        assert!(e.contains("field `topics.evnets`"), "{e}");
        assert!(e.contains("unknown field"), "{e}");
        let e = err(&with(r#""nodeid": "x""#));
        assert!(
            e.contains("field `nodeid`") && e.contains("unknown field"),
            "{e}"
        );
        let e = err(&with(
            r#""topics": {"create": {"partitions": 1, "replicationFactor": 1, "x": 1}}"#,
        ));
        assert!(e.contains("field `topics.create.x`"), "{e}");
        let e = err(&with(r#""topics": {"create": {"partitions": 1}}"#));
        assert!(
            e.contains("field `topics.create`") && e.contains("replicationFactor"),
            "{e}"
        );
    }

    #[test]
    fn config_durations() {
        let c = Config::parse(&with(
            r#""timeoutSession": "500ms", "timeoutMessage": "1m", "commitInterval": 750,
               "batch": {"linger": 0}, "retry": {"backoff": "1s", "maxBackoff": 60000}"#,
        ))
        .unwrap();
        assert_eq!(c.timeout_session, Duration::from_millis(500));
        assert_eq!(c.timeout_message, Duration::from_secs(60));
        assert_eq!(c.commit_interval, Duration::from_millis(750));
        assert_eq!(c.batch.linger, Duration::ZERO);
        assert_eq!(c.retry.backoff, Duration::from_secs(1));
        assert_eq!(c.retry.max_backoff, Duration::from_secs(60));
        for bad in [
            r#""timeoutSession": 0"#,
            r#""timeoutSession": "0s""#,
            r#""timeoutSession": "soon""#,
            r#""timeoutSession": -5"#,
            r#""timeoutSession": 1.5"#,
            r#""timeoutSession": "2h""#,
        ] {
            let e = err(&with(bad));
            assert!(e.contains("field `timeoutSession`"), "{bad}: {e}");
        }
        let e = err(&with(r#""timeoutMessage": 0"#));
        assert!(e.contains("field `timeoutMessage`"), "{e}");
        let e = err(&with(r#""commitInterval": "0ms""#));
        assert!(e.contains("field `commitInterval`"), "{e}");
        let e = err(&with(
            r#""retry": {"backoff": "1s", "maxBackoff": "500ms"}"#,
        ));
        assert!(e.contains("field `retry.maxBackoff`"), "{e}");
    }

    #[test]
    fn config_limits() {
        for (bad, field) in [
            (r#""batch": {"size": 0}"#, "batch.size"),
            (r#""batch": {"size": 10001}"#, "batch.size"),
            (r#""retry": {"attempts": 1001}"#, "retry.attempts"),
            (
                r#""topics": {"create": {"partitions": 0, "replicationFactor": 1}}"#,
                "topics.create.partitions",
            ),
            (
                r#""topics": {"create": {"partitions": 1, "replicationFactor": 0}}"#,
                "topics.create.replicationFactor",
            ),
            (r#""topics": {"events": "a b"}"#, "topics.events"),
            (
                r#""topics": {"deadLetterSuffix": ""}"#,
                "topics.deadLetterSuffix",
            ),
            (r#""handlers": """#, "handlers"),
            (r#""stalwart": {"enabled": true}"#, "stalwart.nodeId"),
        ] {
            let e = err(&with(bad));
            assert!(e.contains(&format!("field `{field}`")), "{bad}: {e}");
        }
        let c = Config::parse(&with(
            r#""batch": {"size": 10000}, "retry": {"attempts": 0}"#,
        ))
        .unwrap();
        assert_eq!((c.batch.size, c.retry.attempts), (10000, 0));
        let c = Config::parse(&with(r#""stalwart": {"enabled": true, "nodeId": 3}"#)).unwrap();
        assert_eq!(c.stalwart.node_id, Some(3));
    }

    #[test]
    fn config_kafka_passthrough() {
        let c = Config::parse(&with(
            r#""kafka": {"security.protocol": "SASL_SSL", "linger.ms": 5, "enable.ssl.certificate.verification": false, "sasl.password": "pw"}"#,
        ))
        .unwrap();
        assert_eq!(c.kafka["security.protocol"], "SASL_SSL");
        assert_eq!(c.kafka["linger.ms"], "5");
        assert_eq!(c.kafka["enable.ssl.certificate.verification"], "false");
        assert!(!format!("{c:?}").contains("\"pw\""));
        for (owned, _) in OWNED_KAFKA_PROPERTIES {
            let e = err(&with(&format!(r#""kafka": {{"{owned}": "x"}}"#)));
            assert!(e.contains(owned) && e.contains("field `kafka"), "{e}");
        }
    }

    #[test]
    fn config_api_listen() {
        let e = err(&with(r#""api": {"listen": "0.0.0.0:8470"}"#));
        assert!(e.contains("field `api.listen`"), "{e}");
        assert!(e.contains("api.allowNonLoopback"), "{e}");
        let c = Config::parse(&with(
            r#""api": {"listen": "0.0.0.0:8470", "allowNonLoopback": true}"#,
        ))
        .unwrap();
        assert!(c.api.allow_non_loopback);
        let c = Config::parse(&with(r#""api": {"listen": "[::1]:8470"}"#)).unwrap();
        assert!(c.api.listen.ip().is_loopback());
        let e = err(&with(r#""api": {"listen": "localhost"}"#));
        assert!(
            e.contains("field `api.listen`") && e.contains("localhost"),
            "{e}"
        );
        let e = err(&with(r#""api": {"token": "t", "tokenFile": "/etc/t"}"#));
        assert!(
            e.contains("field `api.token`") && e.contains("tokenFile"),
            "{e}"
        );
        let c = Config::parse(&with(
            r#""api": {"unixSocket": "/run/herald.sock", "tokenFile": "/etc/herald/token"}"#,
        ))
        .unwrap();
        assert_eq!(
            c.api.unix_socket.as_deref(),
            Some(Path::new("/run/herald.sock"))
        );
    }

    #[test]
    fn config_load_prefixes_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.json");
        std::fs::write(&path, with(r#""topics": {"evnets": "x"}"#)).unwrap();
        let e = Config::load(&path).unwrap_err();
        let prefix = format!("{}: field `topics.evnets`: ", path.display());
        assert!(format!("{e}").starts_with(&prefix), "{e}");
        assert!(format!("{e:#}").starts_with(&prefix), "{e:#}");
        let missing = dir.path().join("nope.json");
        let e = Config::load(&missing).unwrap_err();
        assert!(
            format!("{e}").starts_with(&format!("{}: ", missing.display())),
            "{e}"
        );
    }

    #[test]
    fn config_retry_delay() {
        let r = Retry::default();
        assert_eq!(r.delay(1), Duration::from_millis(100));
        assert_eq!(r.delay(0), Duration::from_millis(100));
        assert_eq!(r.delay(2), Duration::from_millis(200));
        assert_eq!(r.delay(4), Duration::from_millis(800));
        assert_eq!(r.delay(8), Duration::from_secs(10));
        assert_eq!(r.delay(40), Duration::from_secs(10));
        assert_eq!(r.delay(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn config_for_brokers() {
        let c = Config::for_brokers("a:1, b:2", "g", "n");
        assert_eq!(c.brokers, ["a:1", "b:2"]);
        assert_eq!(c.broadcast_group(), "g.n");
        assert_eq!(c.shared_group(), "g");
    }
}
