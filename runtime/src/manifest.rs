//! A handler's manifest: the deployer's file beside the `.wasm`.
//!
//! `blocking.wasm` is configured by `blocking.toml`. The manifest, not the
//! component, decides what the handler may do: which event kinds reach it,
//! whether every node or one node per cluster handles them, which host
//! capabilities it is granted and how much time and memory a call may use.
//!
//! ```toml
//! version = "1.2.0"                    # optional, shown by the API
//! subscribe = ["ip-block"]
//! mode = "broadcast"                   # or "shared"
//! capabilities = ["blocklist"]         # log and config are always granted
//! [limits]
//! deadline = "100ms"                   # per call (one batch)
//! memory = "32MiB"                     # linear memory cap per instance
//! [settings]                           # read by the handler (config.get)
//! allowlist = "192.0.2.0/24, 2001:db8::1"
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde::Deserialize;

use crate::event::KINDS;

/// Largest memory cap a manifest may ask for; the pooling allocator reserves
/// address space for it in every slot.
pub const MAX_MEMORY: u64 = 1 << 30;
pub const DEFAULT_MEMORY: u64 = 64 << 20;
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Every node handles every event (the node's own consumer group).
    Broadcast,
    /// One node in the cluster handles each event (the common group).
    Shared,
}

impl Mode {
    /// As manifests spell it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Broadcast => "broadcast",
            Mode::Shared => "shared",
        }
    }
}

/// Where a handler starts: a manifest's `start`, or `herald handler replay
/// --from`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest record each partition still holds.
    Earliest,
    /// Past the last record: only what is published from now on.
    Latest,
    /// The first record at or after this time (Unix ms), by the records'
    /// timestamps.
    Time(u64),
    /// This offset in every partition (held to what the partition holds).
    Offset(i64),
}

impl std::str::FromStr for StartAt {
    type Err = anyhow::Error;

    /// `earliest`, `latest`, an RFC 3339 time (`2026-12-04T10:00:00Z`), or
    /// an offset (a number).
    fn from_str(s: &str) -> anyhow::Result<StartAt> {
        Ok(match s {
            "earliest" => StartAt::Earliest,
            "latest" => StartAt::Latest,
            _ if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() => {
                StartAt::Offset(s.parse().map_err(|e| anyhow!("offset `{s}`: {e}"))?)
            }
            _ => {
                let t = humantime::parse_rfc3339_weak(s).map_err(|e| {
                    anyhow!(
                        "`{s}` is not `earliest`, `latest`, an offset or an RFC 3339 time \
                         (2026-12-04T10:00:00Z): {e}"
                    )
                })?;
                StartAt::Time(
                    t.duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64),
                )
            }
        })
    }
}

/// A host interface a handler may import.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    Log,
    Config,
    Idle,
    Push,
    Blocklist,
    Certificates,
    Publish,
}

impl Capability {
    pub const ALL: [Capability; 7] = [
        Capability::Log,
        Capability::Config,
        Capability::Idle,
        Capability::Push,
        Capability::Blocklist,
        Capability::Certificates,
        Capability::Publish,
    ];

    /// Granted to every handler: they reach nothing outside the handler.
    pub const IMPLICIT: [Capability; 2] = [Capability::Log, Capability::Config];

    /// The WIT interface name, without package.
    pub fn interface(self) -> &'static str {
        match self {
            Capability::Log => "log",
            Capability::Config => "config",
            Capability::Idle => "idle",
            Capability::Push => "push",
            Capability::Blocklist => "blocklist",
            Capability::Certificates => "certificates",
            Capability::Publish => "publish",
        }
    }

    pub fn from_interface(name: &str) -> Option<Capability> {
        Capability::ALL.into_iter().find(|c| c.interface() == name)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.interface())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock budget of one call, host calls included.
    pub deadline: Duration,
    /// Cap on the instance's linear memory, in bytes.
    pub memory: u64,
    /// Events one call may publish (`limits.publishes`, default 16): caps
    /// the fan-out of a handler that publishes.
    pub publishes: u32,
}

/// Default of `limits.publishes`.
pub const DEFAULT_PUBLISHES: u32 = 16;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: DEFAULT_DEADLINE,
            memory: DEFAULT_MEMORY,
            publishes: DEFAULT_PUBLISHES,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    /// Event kinds, validated against [`KINDS`].
    pub subscribe: BTreeSet<String>,
    pub mode: Mode,
    /// Granted capabilities, the implicit ones included.
    pub capabilities: BTreeSet<Capability>,
    /// Event kinds the handler may publish (`publish`), validated against
    /// [`KINDS`]; anything else is refused at the call.
    pub publish: BTreeSet<String>,
    pub limits: Limits,
    pub settings: BTreeMap<String, String>,
    /// Where the handler starts when a node first runs it (`start`):
    /// none, where its mode's group is; otherwise in a group of its own,
    /// from there (broadcast handlers only).
    pub start: Option<StartAt>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    version: Option<String>,
    subscribe: Vec<String>,
    mode: Mode,
    #[serde(default)]
    capabilities: Vec<Capability>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    settings: BTreeMap<String, String>,
    #[serde(default)]
    start: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default)]
    deadline: Option<String>,
    #[serde(default)]
    memory: Option<String>,
    #[serde(default)]
    publishes: Option<u32>,
}

impl Manifest {
    /// The manifest that belongs to a component: same stem, `.toml`.
    pub fn path_for(wasm: &Path) -> PathBuf {
        wasm.with_extension("toml")
    }

    /// Read and validate `path`. Errors name the file and the field.
    pub fn load(path: &Path) -> anyhow::Result<Manifest> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read manifest", path.display()))?;
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("handler");
        Manifest::parse(&text, stem).with_context(|| format!("{}", path.display()))
    }

    /// Parse manifest text; `default_name` is the file stem.
    pub fn parse(text: &str, default_name: &str) -> anyhow::Result<Manifest> {
        let table: toml::Table = toml::from_str(text).map_err(|e| anyhow!("{e}"))?;
        let raw: Raw =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(field_error)?;
        for kind in &raw.subscribe {
            if !KINDS.contains(&kind.as_str()) {
                bail!(
                    "field `subscribe`: unknown event kind `{kind}`, expected one of {}",
                    KINDS.join(", ")
                );
            }
        }
        if raw.subscribe.is_empty() {
            bail!("field `subscribe`: a handler must subscribe to at least one event kind");
        }
        let mut limits = Limits::default();
        if let Some(d) = &raw.limits.deadline {
            limits.deadline = parse_duration(d).context("field `limits.deadline`")?;
            if limits.deadline.is_zero() {
                bail!("field `limits.deadline`: must be more than 0");
            }
        }
        if let Some(m) = &raw.limits.memory {
            limits.memory = parse_size(m).context("field `limits.memory`")?;
            if limits.memory > MAX_MEMORY {
                bail!(
                    "field `limits.memory`: {m} is more than the most herald allows ({})",
                    bytesize::ByteSize(MAX_MEMORY).display().iec()
                );
            }
        }
        if let Some(n) = raw.limits.publishes {
            if n > 1000 {
                bail!("field `limits.publishes`: {n} is more than 1000 events per call");
            }
            limits.publishes = n;
        }
        let mut capabilities: BTreeSet<Capability> = raw.capabilities.into_iter().collect();
        for kind in &raw.publish {
            if !KINDS.contains(&kind.as_str()) {
                bail!(
                    "field `publish`: unknown event kind `{kind}`, expected one of {}",
                    KINDS.join(", ")
                );
            }
        }
        let may_publish = capabilities.contains(&Capability::Publish);
        if may_publish && raw.publish.is_empty() {
            bail!(
                "field `publish`: the `publish` capability is granted, so list the event kinds \
                 the handler may publish, e.g. publish = [\"ip-block\"]"
            );
        }
        if !may_publish && !raw.publish.is_empty() {
            bail!("field `publish`: kinds are listed but the `publish` capability is not granted");
        }
        // Publishing is a cluster-wide act: in broadcast mode every node
        // would publish the same derived events, and a chain of publishes
        // would grow with the number of nodes (N copies at each hop). The
        // shared group already elects one node per record, through the
        // group coordinator, and survives rebalances; so a handler that
        // publishes runs there (docs/design.md, "Publish chains").
        if may_publish && raw.mode == Mode::Broadcast {
            bail!(
                "field `mode`: a handler granted `publish` must be mode = \"shared\" (in \
                 broadcast mode every node would publish the same events, so what it publishes \
                 would grow with the cluster); put what each node must apply in a broadcast \
                 handler of its own"
            );
        }
        let start = match &raw.start {
            None => None,
            Some(_) if raw.mode == Mode::Shared => bail!(
                "field `start`: only a broadcast handler has a start of its own (a shared \
                 handler's partitions belong to the whole cluster's group)"
            ),
            Some(s) => Some(s.parse().map_err(|e| anyhow!("field `start`: {e}"))?),
        };
        capabilities.extend(Capability::IMPLICIT);
        Ok(Manifest {
            start,
            name: raw.name.unwrap_or_else(|| default_name.to_string()),
            version: raw.version.unwrap_or_else(|| "0.0.0".to_string()),
            subscribe: raw.subscribe.into_iter().collect(),
            mode: raw.mode,
            capabilities,
            publish: raw.publish.into_iter().collect(),
            limits,
            settings: raw.settings,
        })
    }

    pub fn subscribes_to(&self, kind: &str) -> bool {
        self.subscribe.contains(kind)
    }
}

/// A deserialisation error, naming the field it happened at.
pub fn field_error<E: fmt::Display>(e: serde_path_to_error::Error<E>) -> anyhow::Error {
    let path = e.path().to_string();
    if path == "." {
        anyhow!("{}", e.inner())
    } else {
        anyhow!("field `{path}`: {}", e.inner())
    }
}

/// "500ms", "5s", "1m", "1h 30m".
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(s.trim())
        .map_err(|e| anyhow!("`{s}` is not a duration like \"500ms\", \"5s\" or \"1m\": {e}"))
}

/// "64MiB", "512 KiB", "1GiB" (or plain bytes).
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| anyhow!("`{s}` is not a size like \"64MiB\": {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_is_read_from_its_text() {
        assert_eq!("earliest".parse::<StartAt>().unwrap(), StartAt::Earliest);
        assert_eq!("latest".parse::<StartAt>().unwrap(), StartAt::Latest);
        assert_eq!("42".parse::<StartAt>().unwrap(), StartAt::Offset(42));
        assert_eq!(
            "2026-12-04T10:00:00Z".parse::<StartAt>().unwrap(),
            StartAt::Time(1_796_378_400_000)
        );
        let e = "yesterday".parse::<StartAt>().unwrap_err().to_string();
        assert!(e.contains("`yesterday` is not"), "{e}");
    }

    #[test]
    fn full_manifest() {
        let m = Manifest::parse(
            r#"
            version = "1.2.0"
            subscribe = ["ip-block"]
            mode = "broadcast"
            capabilities = ["blocklist"]
            [limits]
            deadline = "100ms"
            memory = "32MiB"
            [settings]
            allowlist = "192.0.2.0/24"
            "#,
            "blocking",
        )
        .unwrap();
        assert_eq!(m.name, "blocking");
        assert_eq!(m.limits.deadline, Duration::from_millis(100));
        assert_eq!(m.limits.memory, 32 << 20);
        assert!(m.capabilities.contains(&Capability::Blocklist));
        assert!(m.capabilities.contains(&Capability::Log));
        assert!(!m.capabilities.contains(&Capability::Push));
        assert_eq!(m.settings["allowlist"], "192.0.2.0/24");
    }

    fn err(text: &str) -> String {
        format!("{:#}", Manifest::parse(text, "h").unwrap_err())
    }

    #[test]
    fn errors_name_the_field() {
        let e = err("subscribe = [\"ip-block\"]\nmode = \"everywhere\"");
        assert!(
            e.contains("field `mode`") && e.contains("everywhere"),
            "{e}"
        );
        let e = err("subscribe = [\"ip-blok\"]\nmode = \"shared\"");
        assert!(
            e.contains("field `subscribe`") && e.contains("ip-blok"),
            "{e}"
        );
        let e = err("subscribe = [\"push\"]\nmode = \"shared\"\ncapabilities = [\"network\"]");
        assert!(e.contains("field `capabilities[0]`"), "{e}");
        let e = err("subscribe = [\"push\"]\nmode = \"shared\"\n[limits]\ndeadline = \"soon\"");
        assert!(
            e.contains("field `limits.deadline`") && e.contains("soon"),
            "{e}"
        );
        let e = err("subscribe = [\"push\"]\nmode = \"shared\"\n[limits]\nmemory = \"8GiB\"");
        assert!(e.contains("field `limits.memory`"), "{e}");
        let e = err("subscribe = [\"push\"]\nmode = \"shared\"\ntimeout = 3");
        assert!(e.contains("timeout"), "{e}");
        let e = err("mode = \"shared\"");
        assert!(e.contains("subscribe"), "{e}");
        let e = err(
            "subscribe = [\"ip-block\"]\nmode = \"broadcast\"\ncapabilities = [\"publish\"]\npublish = [\"ip-block\"]",
        );
        assert!(
            e.contains("field `mode`") && e.contains("mode = \"shared\""),
            "{e}"
        );
    }
}
