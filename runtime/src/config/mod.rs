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
//!   "groupPrefix": "stalwart-cluster.herald",
//!   "handlers": "/etc/herald/handlers",
//!   "stateDir": "/var/lib/herald",
//!   "topics": { "events": "herald.events", "state": "herald.state", "deadLetterSuffix": ".dlq",
//!               "create": { "partitions": 6, "replicationFactor": 1 } },
//!   "batch": { "size": 100, "linger": "0ms" },
//!   "retry": { "attempts": 5, "backoff": "100ms", "maxBackoff": "10s" },
//!   "commitInterval": "250ms",
//!   "api": { "listen": "127.0.0.1:8470", "unixSocket": null, "token": null, "tokenFile": null },
//!   "stalwart": { "enabled": false, "nodeId": 900, "topic": "stwt.agora" },
//!   "kafka": { "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512" },
//!   "firewall": { "nftables": { "table": "herald", "family": "inet", "hook": "input", "priority": -10 } }
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

use anyhow::anyhow;

mod raw;
#[cfg(test)]
mod tests;
mod trust;
mod validate;

pub use trust::Certificates;

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
        "comes from `groupPrefix` (default `<groupId>.herald`) and `nodeId`",
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

/// librdkafka properties that run a command, load native code or turn off
/// a check of the broker's identity, with what they do. The `kafka`
/// passthrough refuses them unless `kafkaUnsafe` names them: a config
/// file is not a place where a one-line change should make the node's
/// service run a program or trust any broker.
pub const UNSAFE_KAFKA_PROPERTIES: &[(&str, &str)] = &[
    ("sasl.kerberos.kinit.cmd", "runs a shell command"),
    ("plugin.library.paths", "loads native libraries into herald"),
    ("ssl.engine.location", "loads an OpenSSL engine library"),
    ("ssl_engine_location", "loads an OpenSSL engine library"),
    ("ssl.providers", "loads OpenSSL providers"),
    ("ssl.engine.id", "selects an OpenSSL engine"),
    (
        "enable.ssl.certificate.verification",
        "can turn off the check of the broker's certificate",
    ),
    (
        "ssl.endpoint.identification.algorithm",
        "can turn off the check of the broker's host name",
    ),
    (
        "enable.sasl.oauthbearer.unsecure.jwt",
        "makes unsigned OAuth tokens",
    ),
];

/// What herald appends to `groupId` to name its own groups.
pub const DEFAULT_GROUP_SUFFIX: &str = ".herald";
/// Stalwart's timeouts' default (`timeoutSession`, `timeoutMessage`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default of `handlers`.
pub const DEFAULT_HANDLERS: &str = "/etc/herald/handlers";
/// Default of `stateDir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/herald";
/// A token or key in `file` (`field` of the config), trimmed; an empty one
/// is refused. Used for the API's tokens and Stalwart's credentials.
pub fn read_token_file(field: &str, file: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    let t = std::fs::read_to_string(file)
        .with_context(|| format!("{field}: cannot read {}", file.display()))?;
    let t = t.trim().to_string();
    anyhow::ensure!(!t.is_empty(), "{field}: {} is empty", file.display());
    Ok(t)
}

/// Default of `commitInterval`.
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(250);
/// Default of `probeInterval`.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(30);
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
    /// The mail server's consumer group (`groupId`, from Stalwart's
    /// Coordinator). herald never joins it: its own groups are named after
    /// [`Config::group_prefix`].
    pub group_id: String,
    /// The prefix of herald's own consumer groups (`groupPrefix`, default
    /// `<groupId>.herald`; never equal to `groupId`).
    pub group_prefix: String,
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
    /// How often the node probes its topics (`probeInterval`, default 30s;
    /// `0` never: `herald status` then has no round trips to show).
    pub probe_interval: Duration,
    /// The node's local API (`api`).
    pub api: Api,
    /// Stalwart v0.16 wire compatibility (`stalwart`).
    pub stalwart: Stalwart,
    /// What the blocklist refuses, whatever handlers ask (`blocklist`).
    pub blocklist: BlocklistPolicy,
    /// Let pushes go to plain `http` and to loopback and private addresses
    /// (`push.allowPrivate`, default false; for test setups only).
    pub push_allow_private: bool,
    /// The node's VAPID identity (`push.vapid`).
    pub push_vapid: PushVapid,
    /// Events that came from more handler publishes in a row than this are
    /// dead-lettered, not handled (`publish.maxHops`, default 4).
    pub publish_max_hops: u32,
    /// The Ed25519 key this node signs what it publishes with (`signingKey`;
    /// unset: `<stateDir>/node.key`, see [`Config::signing_key_path`]).
    pub signing_key: Option<PathBuf>,
    /// Which signed events this node accepts (`trust`); `None`: every event
    /// is accepted, signed or not.
    pub trust: Option<crate::trust::Policy>,
    /// Sealed TLS private keys (`certificates`).
    pub certificates: Certificates,
    /// Extra librdkafka properties, passed through verbatim (`kafka`); never
    /// one of [`OWNED_KAFKA_PROPERTIES`].
    pub kafka: BTreeMap<String, String>,
    /// The blocklist enforced by the kernel (`firewall`).
    pub firewall: Firewall,
}

/// How the node signs its push requests (`push.vapid`, RFC 8292). Every
/// node of a cluster must use the same key: web clients subscribe with its
/// public key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushVapid {
    /// The private key's file (`push.vapid.keyFile`, default
    /// `<stateDir>/vapid.key`; created if missing). See
    /// [`Config::push_vapid_key_file`].
    pub key_file: Option<PathBuf>,
    /// The tokens' `sub` claim (`push.vapid.subject`): a `mailto:` or
    /// `https:` URL where push services can reach the operator.
    pub subject: Option<String>,
}

/// Topic names (`topics`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    /// Native events (`topics.events`, default `herald.events`): the
    /// transient kinds, on a time-retained topic.
    pub events: String,
    /// The stateful kinds (`topics.state`, default `herald.state`):
    /// `ip-block` and `tls-certificate`, on a compacted topic keyed by
    /// entity, which keeps the latest record of every entity for good.
    pub state: String,
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

    /// The topic an event of this kind is published on.
    pub fn for_body(&self, body: &crate::event::Body) -> &str {
        if body.is_stateful() {
            &self.state
        } else {
            &self.events
        }
    }
}

impl Default for Topics {
    /// `herald.events`, `.dlq`, no topic creation.
    fn default() -> Self {
        Topics {
            events: "herald.events".into(),
            state: "herald.state".into(),
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
    /// How long a worker whose queue ran dry waits for more records before
    /// it calls the handlers with a batch that is not full (`batch.linger`,
    /// default 0: what is queued goes at once). Under load batches fill by
    /// themselves while the previous one runs; waiting only adds latency.
    pub linger: Duration,
}

impl Default for Batch {
    /// 100 events, no linger.
    fn default() -> Self {
        Batch {
            size: 100,
            linger: Duration::ZERO,
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
    /// How much of the node its clients may hold.
    pub limits: ApiLimits,
    /// Tokens that may do only part of what `token` may (`api.tokens`):
    /// the mail server needs to read and publish state changes, not to
    /// read every TLS private key or reload handlers.
    pub tokens: Vec<ScopedToken>,
}

/// What a scoped token may do (`api.tokens[].scopes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// `/metrics`, `/v1/stream`, `/v1/blocklist`, `/v1/handlers`, `/v1/status`.
    Read,
    /// `POST /v1/events`, of the kinds in `publishKinds` if it is set.
    Publish,
    /// `GET /v1/certificates/{domain}`: chains and private keys.
    Certificates,
    /// `POST /v1/stalwart/events`: Stalwart's own coordination records.
    Stalwart,
    /// `POST /v1/handlers/reload`.
    Admin,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Publish => "publish",
            Scope::Certificates => "certificates",
            Scope::Stalwart => "stalwart",
            Scope::Admin => "admin",
        }
    }
}

/// One of `api.tokens`.
#[derive(Clone, PartialEq, Eq)]
pub struct ScopedToken {
    /// Its name, in logs and refusals.
    pub name: String,
    /// The token itself, or the file it is in (read when the API starts).
    pub source: TokenSource,
    pub scopes: std::collections::BTreeSet<Scope>,
    /// The kinds it may publish; none: any kind.
    pub publish_kinds: Option<std::collections::BTreeSet<String>>,
}

/// Where a scoped token comes from (`token` or `tokenFile`).
#[derive(Clone, PartialEq, Eq)]
pub enum TokenSource {
    Inline(String),
    File(PathBuf),
}

impl fmt::Debug for TokenSource {
    /// The file's path; an inline token redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Inline(_) => f.write_str("Inline(<redacted>)"),
            TokenSource::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

impl fmt::Debug for ScopedToken {
    /// Like a derived `Debug`; the token is redacted by [`TokenSource`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopedToken")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("scopes", &self.scopes)
            .field("publish_kinds", &self.publish_kinds)
            .finish()
    }
}

/// Bounds on the API's clients: anyone on the node may connect, token or
/// not, so none of them may hold more than these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiLimits {
    /// Connections open at once, all clients together
    /// (`api.maxConnections`, default 512).
    pub connections: usize,
    /// Connections open at once from one client, its address over TCP or
    /// its user over the Unix socket (`api.maxConnectionsPerClient`,
    /// default 64).
    pub per_client: usize,
    /// `/v1/stream` subscriptions at once (`api.maxStreams`, default 256).
    pub streams: usize,
    /// Time a connection has to send a request's headers, also between
    /// requests (`api.headerTimeout`, default 10 s).
    pub header_timeout: Duration,
}

impl Default for ApiLimits {
    fn default() -> ApiLimits {
        ApiLimits {
            connections: 512,
            per_client: 64,
            streams: 256,
            header_timeout: Duration::from_secs(10),
        }
    }
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
            limits: ApiLimits::default(),
            tokens: Vec::new(),
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
            .field("limits", &self.limits)
            .field("tokens", &self.tokens)
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
    /// The most events herald decodes from one record; a record with more
    /// is dead-lettered whole (`stalwart.maxEventsPerRecord`, default 10000).
    pub max_events_per_record: usize,
    /// Stalwart's management API, to resolve its registry pointers
    /// (`stalwart.management`); none: they are only passed on.
    pub management: Option<Management>,
}

/// Where and as whom herald reads Stalwart's registry (`stalwart.management`).
#[derive(Clone, PartialEq, Eq)]
pub struct Management {
    /// The server's base URL (`url`); herald posts to `<url>/jmap`.
    pub url: String,
    pub auth: ManagementAuth,
    /// One request's limit (`timeout`, default 5s).
    pub timeout: Duration,
}

/// How herald authenticates to Stalwart: read from files at start, never
/// written in the config itself.
#[derive(Clone, PartialEq, Eq)]
pub enum ManagementAuth {
    /// `apiKeyFile`: an `API_…` key, sent as a bearer token.
    Bearer(String),
    /// `username` and `passwordFile`: HTTP Basic.
    Basic { username: String, password: String },
}

impl std::fmt::Debug for Management {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match &self.auth {
            ManagementAuth::Bearer(_) => "api key (withheld)".to_string(),
            ManagementAuth::Basic { username, .. } => format!("basic as {username} (withheld)"),
        };
        f.debug_struct("Management")
            .field("url", &self.url)
            .field("auth", &auth)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Default for Stalwart {
    /// Disabled, topic `stwt.agora`.
    fn default() -> Self {
        Stalwart {
            enabled: false,
            node_id: None,
            topic: "stwt.agora".into(),
            max_events_per_record: crate::codec::stalwart::DEFAULT_MAX_EVENTS,
            management: None,
        }
    }
}

/// The blocklist's limits (`blocklist`). Besides these, the node never
/// blocks unspecified, loopback, link-local, multicast or broadcast
/// addresses, its own addresses or its brokers'.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlocklistPolicy {
    /// Shortest IPv4 prefix that may be blocked (`blocklist.minPrefixV4`,
    /// default 16).
    pub min_prefix_v4: u8,
    /// Shortest IPv6 prefix that may be blocked (`blocklist.minPrefixV6`,
    /// default 32).
    pub min_prefix_v6: u8,
    /// Networks never blocked (`blocklist.protect`): the cluster's own
    /// networks, monitoring, the office.
    pub protect: Vec<ipnet::IpNet>,
    /// Most entries (`blocklist.maxEntries`, default 100000).
    pub max_entries: usize,
    /// Longest reason kept, in bytes (`blocklist.maxReasonBytes`, default
    /// 256); longer ones are cut.
    pub max_reason: usize,
}

impl Default for BlocklistPolicy {
    fn default() -> Self {
        BlocklistPolicy {
            min_prefix_v4: 16,
            min_prefix_v6: 32,
            protect: Vec::new(),
            max_entries: 100_000,
            max_reason: 256,
        }
    }
}

/// The blocklist enforced by the kernel (`firewall`); off unless set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Firewall {
    /// An nftables table of herald's own that drops traffic from the
    /// blocklist (`firewall.nftables`; see `effects::firewall`).
    pub nftables: Option<Nftables>,
}

/// herald's nftables table (`firewall.nftables`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nftables {
    /// The table's name (`firewall.nftables.table`, default `herald`):
    /// a letter, then letters, digits and `_`, at most 64 in all.
    pub table: String,
    /// The table's family (`firewall.nftables.family`, default `inet`;
    /// `ip` or `ip6` enforce only that version's entries).
    pub family: NftFamily,
    /// The hook of the dropping chain (`firewall.nftables.hook`, default
    /// `input`; also `prerouting` or `forward`).
    pub hook: NftHook,
    /// The chain's priority at that hook (`firewall.nftables.priority`,
    /// default -10: before the usual `filter` chains at 0).
    pub priority: i32,
}

impl Default for Nftables {
    /// Table `inet herald`, hook `input`, priority -10.
    fn default() -> Self {
        Nftables {
            table: "herald".into(),
            family: NftFamily::Inet,
            hook: NftHook::Input,
            priority: -10,
        }
    }
}

/// The family of herald's nftables table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NftFamily {
    /// IPv4 and IPv6.
    Inet,
    /// IPv4 only.
    Ip,
    /// IPv6 only.
    Ip6,
}

impl NftFamily {
    /// The family as nft names it.
    pub fn as_str(self) -> &'static str {
        match self {
            NftFamily::Inet => "inet",
            NftFamily::Ip => "ip",
            NftFamily::Ip6 => "ip6",
        }
    }
}

/// The hook of herald's dropping chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NftHook {
    /// Packets for this host.
    Input,
    /// Every packet that arrives, before routing.
    Prerouting,
    /// Packets routed through this host.
    Forward,
}

impl NftHook {
    /// The hook as nft names it.
    pub fn as_str(self) -> &'static str {
        match self {
            NftHook::Input => "input",
            NftHook::Prerouting => "prerouting",
            NftHook::Forward => "forward",
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
            .field("group_prefix", &self.group_prefix)
            .field("timeout_session", &self.timeout_session)
            .field("timeout_message", &self.timeout_message)
            .field("node_id", &self.node_id)
            .field("handlers", &self.handlers)
            .field("state_dir", &self.state_dir)
            .field("topics", &self.topics)
            .field("batch", &self.batch)
            .field("retry", &self.retry)
            .field("commit_interval", &self.commit_interval)
            .field("probe_interval", &self.probe_interval)
            .field("api", &self.api)
            .field("stalwart", &self.stalwart)
            .field("blocklist", &self.blocklist)
            .field("push_allow_private", &self.push_allow_private)
            .field("push_vapid", &self.push_vapid)
            .field("publish_max_hops", &self.publish_max_hops)
            .field("signing_key", &self.signing_key)
            .field("trust", &self.trust)
            .field("certificates", &self.certificates)
            .field("kafka", &kafka)
            .field("firewall", &self.firewall)
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
        validate::parse(text).map_err(|e| anyhow!("{e:#}"))
    }

    /// The node's signing key file: `signingKey`, else `<stateDir>/node.key`
    /// (created with mode 0600 on first start).
    pub fn signing_key_path(&self) -> PathBuf {
        self.signing_key
            .clone()
            .unwrap_or_else(|| self.state_dir.join("node.key"))
    }

    /// `<groupPrefix>.<nodeId>` (by default `<groupId>.herald.<nodeId>`):
    /// the node's own group, for broadcast handlers.
    pub fn broadcast_group(&self) -> String {
        format!("{}.{}", self.group_prefix, self.node_id)
    }

    /// `<groupPrefix>` (by default `<groupId>.herald`): the group herald's
    /// nodes share, for shared handlers.
    pub fn shared_group(&self) -> String {
        self.group_prefix.clone()
    }

    /// The VAPID key file: `push.vapid.keyFile`, by default `vapid.key` in
    /// the state directory.
    pub fn push_vapid_key_file(&self) -> PathBuf {
        self.push_vapid.key_file.clone().unwrap_or_else(|| {
            self.state_dir
                .join(crate::effects::push::vapid::DEFAULT_KEY_FILE)
        })
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
            group_prefix: format!("{group_id}{DEFAULT_GROUP_SUFFIX}"),
            timeout_session: DEFAULT_TIMEOUT,
            timeout_message: DEFAULT_TIMEOUT,
            node_id: node_id.to_string(),
            handlers: PathBuf::from(DEFAULT_HANDLERS),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            topics: Topics::default(),
            batch: Batch::default(),
            retry: Retry::default(),
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            probe_interval: DEFAULT_PROBE_INTERVAL,
            api: Api::default(),
            stalwart: Stalwart::default(),
            blocklist: BlocklistPolicy::default(),
            push_allow_private: false,
            push_vapid: PushVapid::default(),
            publish_max_hops: crate::dispatch::DEFAULT_MAX_HOPS,
            signing_key: None,
            trust: None,
            certificates: Certificates::default(),
            kafka: BTreeMap::new(),
            firewall: Firewall::default(),
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
