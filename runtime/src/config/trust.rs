//! The config's security settings: `signingKey`, `trust` and
//! `certificates`, as written and as checked.
//!
//! ```json
//! "signingKey": "/var/lib/herald/node.key",
//! "trust": {
//!   "keys": {
//!     "5f1c0e2a9b7d4c31": { "publicKey": "base64…", "kinds": ["*"] },
//!     "a0b1c2d3e4f50617": { "publicKey": "base64…", "kinds": ["tls-certificate"] }
//!   },
//!   "require": ["ip-block", "ip-unblock", "tls-certificate"],
//!   "maxAge": { "push": "1h" },
//!   "maxSkew": "5m",
//!   "stalwart": "accept"
//! },
//! "certificates": {
//!   "identityFile": "/etc/herald/cluster.age",
//!   "sealTo": ["age1…"],
//!   "hooks": [{"domains": ["*"], "command": ["systemctl", "reload", "stalwart"], "timeout": "30s"}]
//! }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail};
use serde::Deserialize;

use super::raw::DurationValue;
use crate::effects::certs::hooks::{DEFAULT_TIMEOUT, Hook};
use crate::event::{HOST_KINDS, KINDS};
use crate::trust::{Policy, StalwartRecords, TrustedKey, keys};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawTrust {
    #[serde(default)]
    keys: BTreeMap<String, RawTrustedKey>,
    #[serde(default)]
    require: Option<Vec<String>>,
    #[serde(default)]
    max_age: BTreeMap<String, DurationValue>,
    #[serde(default)]
    max_skew: Option<DurationValue>,
    #[serde(default)]
    stalwart: Option<RawStalwartRecords>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an object with `publicKey` and `kinds`"
)]
struct RawTrustedKey {
    public_key: String,
    kinds: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawStalwartRecords {
    Accept,
    Refuse,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawCertificates {
    #[serde(default)]
    identity_file: Option<PathBuf>,
    #[serde(default)]
    seal_to: Vec<String>,
    #[serde(default)]
    hooks: Vec<RawHook>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an object with `domains`, `command` and optionally `name` and `timeout`"
)]
struct RawHook {
    #[serde(default)]
    name: Option<String>,
    domains: Vec<String>,
    command: Vec<String>,
    #[serde(default)]
    timeout: Option<DurationValue>,
}

/// How sealed TLS private keys are opened and made (`certificates`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Certificates {
    /// The cluster's age identity, which opens sealed keys
    /// (`certificates.identityFile`; a node without one refuses sealed keys).
    pub identity_file: Option<PathBuf>,
    /// The age recipients `herald cert publish` seals keys to
    /// (`certificates.sealTo`, `age1…` each).
    pub seal_to: Vec<String>,
    /// Commands run after a certificate is installed (`certificates.hooks`).
    pub hooks: Vec<Hook>,
}

impl Certificates {
    /// The parsed recipients (they were checked when the config was read).
    pub fn recipients(&self) -> Vec<age::x25519::Recipient> {
        self.seal_to.iter().filter_map(|r| r.parse().ok()).collect()
    }
}

fn kind(field: &str, k: &str) -> anyhow::Result<&'static str> {
    // A key may be allowed herald's own kinds too (a node's key signs its
    // probes and answers).
    KINDS
        .iter()
        .chain(HOST_KINDS)
        .copied()
        .find(|known| *known == k)
        .ok_or_else(|| {
            anyhow!(
                "field `{field}`: `{k}` is not an event kind (kinds: {}, {})",
                KINDS.join(", "),
                HOST_KINDS.join(", ")
            )
        })
}

pub(super) fn trust(raw: RawTrust, stalwart_enabled: bool) -> anyhow::Result<Policy> {
    let mut trusted = BTreeMap::new();
    for (id, k) in raw.keys {
        let field = format!("trust.keys.{id}");
        let key = keys::parse_public_key(&k.public_key)
            .map_err(|e| anyhow!("field `{field}.publicKey`: {e}"))?;
        let derived = keys::key_id(&key);
        if derived != id {
            bail!(
                "field `{field}`: the id does not match the public key, whose id is `{derived}` \
                 (`herald keys show` prints both)"
            );
        }
        let kinds = if k.kinds.iter().any(|k| k == "*") {
            if k.kinds.len() > 1 {
                bail!("field `{field}.kinds`: `*` (every kind) stands alone");
            }
            None
        } else if k.kinds.is_empty() {
            bail!("field `{field}.kinds`: empty; list the kinds the key may sign, or [\"*\"]");
        } else {
            let mut set = BTreeSet::new();
            for name in &k.kinds {
                set.insert(kind(&format!("{field}.kinds"), name)?);
            }
            Some(set)
        };
        trusted.insert(id, TrustedKey { key, kinds });
    }
    let mut policy = Policy::new(trusted.into_values());
    if let Some(list) = raw.require {
        policy.require.clear();
        for name in &list {
            policy.require.insert(kind("trust.require", name)?);
        }
    }
    for (name, d) in raw.max_age {
        let k = kind(&format!("trust.maxAge.{name}"), &name)?;
        if d.0 < Duration::from_secs(1) {
            bail!("field `trust.maxAge.{name}`: less than a second would refuse nearly everything");
        }
        policy.max_age.insert(k, d.0);
    }
    if let Some(skew) = raw.max_skew {
        if skew.0 < Duration::from_secs(1) {
            bail!(
                "field `trust.maxSkew`: less than a second would refuse events from any clock but this node's"
            );
        }
        policy.max_skew = skew.0;
    }
    // Stalwart's records cannot be signed: a deployer who turns on both
    // says what they want, rather than one being silently dropped.
    policy.stalwart = match raw.stalwart {
        Some(RawStalwartRecords::Accept) => StalwartRecords::Accept,
        Some(RawStalwartRecords::Refuse) => StalwartRecords::Refuse,
        None if stalwart_enabled => bail!(
            "field `trust.stalwart`: missing; Stalwart's records carry no signature, so say \
             \"accept\" (protect the topic with broker ACLs) or \"refuse\""
        ),
        None => StalwartRecords::Refuse,
    };
    Ok(policy)
}

pub(super) fn certificates(raw: RawCertificates) -> anyhow::Result<Certificates> {
    if raw
        .identity_file
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        bail!("field `certificates.identityFile`: must not be empty");
    }
    for (i, r) in raw.seal_to.iter().enumerate() {
        r.parse::<age::x25519::Recipient>().map_err(|e| {
            anyhow!("field `certificates.sealTo[{i}]`: `{r}` is not an age recipient (age1…): {e}")
        })?;
    }
    let mut hooks = Vec::new();
    for (i, h) in raw.hooks.into_iter().enumerate() {
        let field = format!("certificates.hooks[{i}]");
        let Some(program) = h.command.first().filter(|p| !p.is_empty()) else {
            bail!("field `{field}.command`: empty; give the program and its arguments");
        };
        if h.domains.is_empty() {
            bail!("field `{field}.domains`: empty; give domain patterns, or [\"*\"] for all");
        }
        for d in &h.domains {
            let name = d.strip_prefix("*.").unwrap_or(d);
            if d != "*"
                && (name.is_empty() || name.contains('*') || name.contains(char::is_whitespace))
            {
                bail!("field `{field}.domains`: `{d}` is not `*`, `*.domain` or a domain name");
            }
        }
        let timeout = h.timeout.map_or(DEFAULT_TIMEOUT, |t| t.0);
        if timeout.is_zero() || timeout > Duration::from_secs(3600) {
            bail!("field `{field}.timeout`: must be more than 0 and at most 1h");
        }
        hooks.push(Hook {
            name: h.name.unwrap_or_else(|| program.clone()),
            domains: h.domains,
            command: h.command,
            timeout,
        });
    }
    Ok(Certificates {
        identity_file: raw.identity_file,
        seal_to: raw.seal_to,
        hooks,
    })
}
