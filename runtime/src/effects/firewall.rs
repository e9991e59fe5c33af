//! The blocklist enforced by the kernel: an nftables table of herald's own
//! (`firewall.nftables` in the config).
//!
//! The table holds an interval set per IP version and one chain, hooked at
//! the configured hook and priority, that counts and drops every packet whose
//! source is in a set:
//!
//! ```text
//! table inet herald {
//!     set blocked_v4 { type ipv4_addr; flags interval,timeout; elements = { 203.0.113.7, 198.51.100.0/24 timeout 1h } }
//!     set blocked_v6 { type ipv6_addr; flags interval,timeout; elements = { 2001:db8::/48 } }
//!     chain blocklist {
//!         type filter hook input priority filter - 10; policy accept;
//!         ip saddr @blocked_v4 counter drop
//!         ip6 saddr @blocked_v6 counter drop
//!     }
//! }
//! ```
//!
//! The blocklist ([`super::blocklist`]) stays the source of truth; the table
//! is a copy that herald keeps equal to it:
//! - at start-up the table is rebuilt from the blocklist: one transaction
//!   that deletes whatever the table held and creates it anew;
//! - after every flushed batch that changed the list, one transaction adds
//!   and deletes what changed (a delete is preceded by an add of the same
//!   element in the same transaction, so an element the kernel already timed
//!   out does not fail it);
//! - when a transaction fails, the failure is logged and counted
//!   (`herald_firewall_sync_errors_total`) and the next attempt (the next
//!   batch, or a retry with a growing pause of up to a minute) rebuilds the
//!   table whole; a missing table (someone flushed the ruleset) is noticed
//!   within ten seconds and rebuilt;
//! - `herald firewall flush` deletes the table.
//!
//! nftables refuses overlapping elements in an interval set, and herald's
//! list may hold both `10.1.0.0/16` and `10.1.2.3`: the sets hold the
//! entries no other entry covers, so the addresses dropped are exactly those
//! the list blocks. An IPv4-mapped IPv6 entry (`::ffff:203.0.113.7`) is the
//! IPv4 address it stands for. An entry that expires gets the time it has
//! left as its element timeout (rounded up to the second), so the kernel
//! lets it go even when herald is not running; herald deletes it itself when
//! it expires it. Timeouts longer than [`MAX_TIMEOUT_SECS`] are left out
//! (herald deletes such an entry when it expires). Entries already expired
//! are not added.
//!
//! Only parsed networks, numbers and the validated table name go into the
//! JSON batches that `nft -j -f -` reads from its stdin, and every run of
//! `nft` is bounded by [`NFT_TIMEOUT`].
//!
//! Cost, measured with nft 1.0.6: a rebuild with 100 000 elements takes
//! about 2 s; an update of a set that large about 0.7 s (nft reads the
//! interval set back), a few milliseconds for small sets. Updates are made
//! by one task, which takes every change made since its last transaction
//! into the next, so a busy list costs fewer transactions, never a backlog.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::blocklist::Blocklist;
use crate::config::{NftFamily, Nftables};
use crate::event::now_ms;

/// The IPv4 set's name.
pub const SET_V4: &str = "blocked_v4";
/// The IPv6 set's name.
pub const SET_V6: &str = "blocked_v6";
/// The dropping chain's name.
pub const CHAIN: &str = "blocklist";
/// The longest element timeout handed to the kernel (a year). An entry with
/// more time left gets no timeout; herald deletes it when it expires.
pub const MAX_TIMEOUT_SECS: u64 = 365 * 24 * 3600;
/// The longest one run of `nft` may take before it is killed.
pub const NFT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the task looks for changes and expired entries.
const TICK: Duration = Duration::from_millis(250);
/// How often the task checks that the table is still there.
const VERIFY_EVERY: Duration = Duration::from_secs(10);
/// The longest pause between retries after failures.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(60);

/// What the kernel's sets hold: networks that do not overlap, each with its
/// expiry (Unix ms; none = until unblocked).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Elements {
    pub v4: BTreeMap<Ipv4Net, Option<u64>>,
    pub v6: BTreeMap<Ipv6Net, Option<u64>>,
}

impl Elements {
    /// The elements that block what `networks` (each with its expiry)
    /// block, for a table of `family` (an `ip` table has no IPv6 set, an
    /// `ip6` table no IPv4 set).
    pub fn of(networks: &[(IpNet, Option<u64>)], family: NftFamily) -> Elements {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for &(net, expires_at) in networks {
            match unmapped(net) {
                IpNet::V4(n) => v4.push((n, expires_at)),
                IpNet::V6(n) => v6.push((n, expires_at)),
            }
        }
        Elements {
            v4: if family == NftFamily::Ip6 {
                BTreeMap::new()
            } else {
                outermost(v4, |a, b| a.contains(b))
            },
            v6: if family == NftFamily::Ip {
                BTreeMap::new()
            } else {
                outermost(v6, |a, b| a.contains(b))
            },
        }
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An IPv4-mapped IPv6 network (`::ffff:a.b.c.d/n`, n ≥ 96) as the IPv4
/// network it stands for; any other network as it is.
fn unmapped(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && let Some(prefix) = v6.prefix_len().checked_sub(96)
        && let Ok(n) = Ipv4Net::new(v4, prefix)
    {
        return IpNet::V4(n);
    }
    net
}

/// The networks of `nets` that no other one contains, each with the later
/// expiry of its duplicates. CIDR networks either nest or are disjoint, so
/// in address order (wider first at the same address) a network is covered
/// exactly when the last one kept contains it.
fn outermost<N: Ord + Copy>(
    mut nets: Vec<(N, Option<u64>)>,
    contains: impl Fn(&N, &N) -> bool,
) -> BTreeMap<N, Option<u64>> {
    nets.sort();
    let mut out: BTreeMap<N, Option<u64>> = BTreeMap::new();
    let mut last: Option<N> = None;
    for (net, expires_at) in nets {
        match last {
            Some(l) if l == net => {
                let kept = out.get_mut(&l).expect("kept");
                *kept = later(*kept, expires_at);
            }
            Some(l) if contains(&l, &net) => {}
            _ => {
                out.insert(net, expires_at);
                last = Some(net);
            }
        }
    }
    out
}

/// The later of two expiries; none (never) is the latest.
fn later(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    Some(a?.max(b?))
}

/// The element timeout, in seconds, of an entry expiring at `expires_at`:
/// the time left rounded up, none for a permanent entry or one with more
/// than [`MAX_TIMEOUT_SECS`] left.
fn timeout_secs(expires_at: Option<u64>, now_ms: u64) -> Option<u64> {
    let left = expires_at?.saturating_sub(now_ms);
    let secs = left.div_ceil(1000).max(1);
    (secs <= MAX_TIMEOUT_SECS).then_some(secs)
}

/// One element as nft's JSON writes it: an address, or a prefix.
fn value(addr: String, len: u8, max: u8) -> Value {
    if len == max {
        Value::String(addr)
    } else {
        json!({"prefix": {"addr": addr, "len": len}})
    }
}

fn v4_value(n: &Ipv4Net) -> Value {
    value(n.network().to_string(), n.prefix_len(), 32)
}

fn v6_value(n: &Ipv6Net) -> Value {
    value(n.network().to_string(), n.prefix_len(), 128)
}

/// An element with its timeout, if it has one.
fn element(value: Value, expires_at: Option<u64>, now_ms: u64) -> Value {
    match timeout_secs(expires_at, now_ms) {
        None => value,
        Some(secs) => json!({"elem": {"val": value, "timeout": secs}}),
    }
}

/// The sets a table of `family` has: (name, element type, protocol of the
/// `saddr` match).
fn sets(family: NftFamily) -> &'static [(&'static str, &'static str, &'static str)] {
    match family {
        NftFamily::Inet => &[(SET_V4, "ipv4_addr", "ip"), (SET_V6, "ipv6_addr", "ip6")],
        NftFamily::Ip => &[(SET_V4, "ipv4_addr", "ip")],
        NftFamily::Ip6 => &[(SET_V6, "ipv6_addr", "ip6")],
    }
}

fn table(cfg: &Nftables) -> Value {
    json!({"family": cfg.family.as_str(), "name": cfg.table})
}

fn elements_cmd(op: &str, cfg: &Nftables, set: &str, elems: Vec<Value>) -> Value {
    json!({op: {"element": {"family": cfg.family.as_str(), "table": cfg.table, "name": set, "elem": elems}}})
}

/// The elements of `set` in `els`, as nft values with their timeouts.
fn set_elements(set: &str, els: &Elements, now_ms: u64) -> Vec<Value> {
    if set == SET_V4 {
        els.v4
            .iter()
            .map(|(n, t)| element(v4_value(n), *t, now_ms))
            .collect()
    } else {
        els.v6
            .iter()
            .map(|(n, t)| element(v6_value(n), *t, now_ms))
            .collect()
    }
}

/// The transaction that makes the table anew, holding `els`: whatever the
/// table held before is deleted in the same transaction.
pub fn rebuild_batch(cfg: &Nftables, els: &Elements, now_ms: u64) -> Value {
    let family = cfg.family.as_str();
    let mut cmds = vec![
        // `add` first: deleting a table that does not exist fails.
        json!({"add": {"table": table(cfg)}}),
        json!({"delete": {"table": table(cfg)}}),
        json!({"add": {"table": table(cfg)}}),
    ];
    for (set, kind, _) in sets(cfg.family) {
        cmds.push(
            json!({"add": {"set": {"family": family, "table": cfg.table, "name": set,
            "type": kind, "flags": ["interval", "timeout"]}}}),
        );
    }
    cmds.push(
        json!({"add": {"chain": {"family": family, "table": cfg.table, "name": CHAIN,
        "type": "filter", "hook": cfg.hook.as_str(), "prio": cfg.priority, "policy": "accept"}}}),
    );
    for (set, _, protocol) in sets(cfg.family) {
        cmds.push(json!({"add": {"rule": {"family": family, "table": cfg.table, "chain": CHAIN,
            "expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": protocol, "field": "saddr"}},
                           "right": format!("@{set}")}},
                {"counter": null},
                {"drop": null},
            ]}}}));
    }
    for (set, _, _) in sets(cfg.family) {
        let elems = set_elements(set, els, now_ms);
        if !elems.is_empty() {
            cmds.push(elements_cmd("add", cfg, set, elems));
        }
    }
    json!({"nftables": cmds})
}

/// The transaction that turns the sets from `from` into `to`, or none when
/// they are the same. An element whose expiry changed is deleted and added
/// again; every deleted element is first added (a no-op when it is there),
/// so that one the kernel already timed out does not fail the transaction.
pub fn update_batch(cfg: &Nftables, from: &Elements, to: &Elements, now_ms: u64) -> Option<Value> {
    fn diff<N: Ord + Copy>(
        from: &BTreeMap<N, Option<u64>>,
        to: &BTreeMap<N, Option<u64>>,
    ) -> (Vec<N>, Vec<(N, Option<u64>)>) {
        let gone = from
            .iter()
            .filter(|(n, t)| to.get(n) != Some(t))
            .map(|(n, _)| *n)
            .collect();
        let new = to
            .iter()
            .filter(|(n, t)| from.get(n) != Some(t))
            .map(|(n, t)| (*n, *t))
            .collect();
        (gone, new)
    }
    let (gone4, new4) = diff(&from.v4, &to.v4);
    let (gone6, new6) = diff(&from.v6, &to.v6);
    let mut cmds = Vec::new();
    let gone: [(&str, Vec<Value>); 2] = [
        (SET_V4, gone4.iter().map(v4_value).collect()),
        (SET_V6, gone6.iter().map(v6_value).collect()),
    ];
    let new: [(&str, Vec<Value>); 2] = [
        (
            SET_V4,
            new4.iter()
                .map(|(n, t)| element(v4_value(n), *t, now_ms))
                .collect(),
        ),
        (
            SET_V6,
            new6.iter()
                .map(|(n, t)| element(v6_value(n), *t, now_ms))
                .collect(),
        ),
    ];
    for (set, elems) in &gone {
        if !elems.is_empty() {
            cmds.push(elements_cmd("add", cfg, set, elems.clone()));
        }
    }
    for (set, elems) in gone {
        if !elems.is_empty() {
            cmds.push(elements_cmd("delete", cfg, set, elems));
        }
    }
    for (set, elems) in new {
        if !elems.is_empty() {
            cmds.push(elements_cmd("add", cfg, set, elems));
        }
    }
    (!cmds.is_empty()).then(|| json!({"nftables": cmds}))
}

/// The transaction that deletes the table, whether or not it exists.
pub fn flush_batch(cfg: &Nftables) -> Value {
    json!({"nftables": [
        {"add": {"table": table(cfg)}},
        {"delete": {"table": table(cfg)}},
    ]})
}

/// Why a run of `nft` failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("the nft command was not found ({0}); install the nftables package")]
    Missing(String),
    #[error(
        "nft was not allowed to change the firewall ({0}); herald needs CAP_NET_ADMIN \
         (run it as root, or grant the capability: see the README, \"The kernel firewall\")"
    )]
    Permission(String),
    #[error("nft did not finish within {0:?} and was killed")]
    Timeout(Duration),
    #[error("nft failed: {0}")]
    Failed(String),
}

impl NftError {
    /// The `reason` label of `herald_firewall_sync_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            NftError::Missing(_) => "missing",
            NftError::Permission(_) => "permission",
            NftError::Timeout(_) => "timeout",
            NftError::Failed(_) => "failed",
        }
    }
}

/// The `nft` binary: the first on `PATH`, else /usr/sbin/nft or /sbin/nft
/// (which a service's `PATH` may lack), else plain `nft`.
pub fn find_nft() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join("nft"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("nft"))
}

/// Run `nft` with `args`, `input` on its stdin, within [`NFT_TIMEOUT`];
/// answers its stdout.
pub async fn run_nft(nft: &Path, args: &[&str], input: &[u8]) -> Result<Vec<u8>, NftError> {
    use std::process::Stdio;
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(nft)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                NftError::Missing(format!("{}: {e}", nft.display()))
            } else {
                NftError::Failed(format!("cannot run {}: {e}", nft.display()))
            }
        })?;
    let mut stdin = child.stdin.take().expect("piped");
    let input = input.to_vec();
    // Written beside the wait: nft may answer before it read everything.
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&input).await;
    });
    let output = tokio::time::timeout(NFT_TIMEOUT, child.wait_with_output()).await;
    writer.abort();
    let output = match output {
        // Dropping the wait dropped the child, which kills it.
        Err(_) => return Err(NftError::Timeout(NFT_TIMEOUT)),
        Ok(Err(e)) => return Err(NftError::Failed(format!("waiting for nft: {e}"))),
        Ok(Ok(o)) => o,
    };
    if output.status.success() {
        return Ok(output.stdout);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let text = crate::bounded::cut(stderr.trim(), 2000).into_owned();
    let text = if text.is_empty() {
        format!("exit status {}", output.status)
    } else {
        text
    };
    if text.contains("Operation not permitted") || text.contains("Permission denied") {
        Err(NftError::Permission(text))
    } else {
        Err(NftError::Failed(text))
    }
}

/// Run one transaction: `batch` through `nft -j -f -`.
async fn apply(nft: &Path, batch: &Value) -> Result<(), NftError> {
    let bytes = serde_json::to_vec(batch).expect("JSON");
    run_nft(nft, &["-j", "-f", "-"], &bytes).await.map(|_| ())
}

/// Delete herald's table (`herald firewall flush`); no error when it is
/// not there.
pub async fn flush_table(cfg: &Nftables) -> Result<(), NftError> {
    apply(&find_nft(), &flush_batch(cfg)).await
}

/// Keeps the table equal to the blocklist.
pub struct Firewall {
    config: Nftables,
    nft: PathBuf,
    state: tokio::sync::Mutex<Applied>,
    wake: tokio::sync::Notify,
}

#[derive(Default)]
struct Applied {
    /// What the table holds, as far as herald knows: none before the first
    /// rebuild and after a failure (the next sync rebuilds).
    elements: Option<Elements>,
    /// The blocklist generation `elements` reflect.
    generation: u64,
    /// Failures in a row, and when the last was.
    failures: u32,
    failed_at: Option<Instant>,
    /// The last error logged, so that a repeated one is not logged again.
    last_error: Option<String>,
    verified_at: Option<Instant>,
}

impl Firewall {
    pub fn new(config: Nftables) -> Firewall {
        Firewall::with_nft(config, find_nft())
    }

    /// A firewall driving the `nft` at `nft`.
    pub fn with_nft(config: Nftables, nft: PathBuf) -> Firewall {
        Firewall {
            config,
            nft,
            state: Default::default(),
            wake: Default::default(),
        }
    }

    /// `family table`, as nft prints it.
    fn name(&self) -> String {
        format!("{} {}", self.config.family.as_str(), self.config.table)
    }

    /// Ask the task for a sync now (after a flushed batch).
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    /// Whether the table is known to be equal to the blocklist.
    pub async fn in_sync(&self, blocklist: &Blocklist) -> bool {
        let s = self.state.lock().await;
        s.elements.is_some() && s.generation == blocklist.generation()
    }

    /// Bring the table in line with `blocklist` in one transaction:
    /// changes only when the table is known, else a rebuild. An error is
    /// logged and counted, and the next sync rebuilds; answers whether the
    /// table is now equal to the list.
    pub async fn sync(&self, blocklist: &Blocklist) -> bool {
        let mut s = self.state.lock().await;
        if s.elements.is_some() && s.generation == blocklist.generation() {
            return true;
        }
        let now = now_ms();
        let (generation, networks) = blocklist.in_force(now);
        let to = Elements::of(&networks, self.config.family);
        let started = Instant::now();
        let mut done = None;
        if let Some(from) = &s.elements {
            match update_batch(&self.config, from, &to, now) {
                None => done = Some(Ok("unchanged")),
                Some(batch) => match apply(&self.nft, &batch).await {
                    Ok(()) => done = Some(Ok("update")),
                    Err(e) => {
                        metrics::counter!("herald_firewall_sync_errors_total", "reason" => e.reason())
                            .increment(1);
                        tracing::warn!(table = %self.name(), error = %e,
                            "firewall: updating the table failed; rebuilding it");
                    }
                },
            }
        }
        let result = match done {
            Some(r) => r,
            None => apply(&self.nft, &rebuild_batch(&self.config, &to, now))
                .await
                .map(|()| "rebuild"),
        };
        match result {
            Ok(kind) => {
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                if kind != "unchanged" {
                    metrics::counter!("herald_firewall_syncs_total", "kind" => kind).increment(1);
                }
                if kind == "rebuild" || s.failures > 0 {
                    tracing::info!(table = %self.name(), elements = to.len(), ms = format!("{ms:.1}"),
                        "firewall: table rebuilt from the blocklist");
                } else {
                    tracing::debug!(table = %self.name(), elements = to.len(), ms = format!("{ms:.1}"),
                        kind, "firewall: table updated");
                }
                metrics::gauge!("herald_firewall_elements").set(to.len() as f64);
                metrics::gauge!("herald_firewall_in_sync").set(1.0);
                s.elements = Some(to);
                s.generation = generation;
                s.failures = 0;
                s.failed_at = None;
                s.last_error = None;
                true
            }
            Err(e) => {
                metrics::counter!("herald_firewall_sync_errors_total", "reason" => e.reason())
                    .increment(1);
                metrics::gauge!("herald_firewall_in_sync").set(0.0);
                let text = e.to_string();
                if s.last_error.as_deref() != Some(&text) {
                    tracing::error!(table = %self.name(), error = %text,
                        "firewall: cannot write the blocklist into nftables; the blocklist \
                         itself is kept, and herald retries");
                } else {
                    tracing::debug!(table = %self.name(), error = %text, "firewall: still failing");
                }
                s.elements = None;
                s.failures += 1;
                s.failed_at = Some(Instant::now());
                s.last_error = Some(text);
                false
            }
        }
    }

    /// Whether the table is still there (someone may have flushed the
    /// ruleset); when it is not, the next sync rebuilds it.
    async fn verify(&self) {
        let mut s = self.state.lock().await;
        if s.elements.is_none() {
            return;
        }
        s.verified_at = Some(Instant::now());
        let listed = run_nft(&self.nft, &["-j", "list", "tables"], b"").await;
        let present = match &listed {
            Ok(out) => serde_json::from_slice::<Value>(out).ok().and_then(|v| {
                let list = v.get("nftables")?.as_array()?.clone();
                Some(list.iter().any(|item| {
                    item.get("table").is_some_and(|t| {
                        t.get("family").and_then(Value::as_str) == Some(self.config.family.as_str())
                            && t.get("name").and_then(Value::as_str)
                                == Some(self.config.table.as_str())
                    })
                }))
            }),
            Err(_) => None,
        };
        match present {
            Some(true) => {}
            Some(false) => {
                tracing::warn!(table = %self.name(),
                    "firewall: the table is gone (was the ruleset flushed?); rebuilding it");
                metrics::counter!("herald_firewall_sync_errors_total", "reason" => "table-gone")
                    .increment(1);
                s.elements = None;
            }
            None => tracing::debug!(table = %self.name(), "firewall: cannot list the tables"),
        }
    }

    /// Whether a failed sync may be retried now: after a pause that grows
    /// with every failure in a row, up to [`MAX_RETRY_PAUSE`].
    async fn retry_due(&self) -> bool {
        let s = self.state.lock().await;
        let Some(at) = s.failed_at else { return true };
        let pause = Duration::from_secs(1)
            .saturating_mul(1u32 << s.failures.saturating_sub(1).min(6))
            .min(MAX_RETRY_PAUSE);
        at.elapsed() >= pause
    }

    /// Keep the table equal to `blocklist` until `shutdown`: on every poke
    /// (a flushed batch) at once, on expiries within [`TICK`], after
    /// failures with a growing pause. The node syncs once more after its
    /// last flush.
    pub async fn run(self: Arc<Self>, blocklist: Arc<Blocklist>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let poked = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => true,
                _ = tick.tick() => false,
            };
            let verify_due = self
                .state
                .lock()
                .await
                .verified_at
                .is_none_or(|t| t.elapsed() >= VERIFY_EVERY);
            if verify_due {
                self.verify().await;
            }
            if poked || self.retry_due().await {
                self.sync(&blocklist).await;
            }
        }
    }
}

#[cfg(test)]
mod tests;
