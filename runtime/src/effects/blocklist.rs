//! The node's IP blocklist: IPv4, IPv6 and CIDR entries with optional
//! expiry, persisted with atomic writes so that a restart keeps it.
//!
//! Three files live in the state directory:
//! - `blocklist.json`, a snapshot of the entries (with reason and expiry);
//! - `blocklist.journal`, the changes since the snapshot, one JSON line each,
//!   appended and synced by [`Blocklist::flush`], which the node calls before
//!   every offset commit: a flush costs what changed, not the whole list;
//! - `blocklist.txt`, one network per line for nftables/ipset, rewritten
//!   when the list changed, at most once a second ([`Blocklist::export`]).
//!
//! Every entry keeps the version of the event that wrote it, and an unblock
//! or an expiry leaves a tombstone with its version: a write older than what
//! is held for its network is not applied ([`Applied::Stale`]), so replays
//! and reordering cannot change what a node ends with (see
//! [`crate::event::version`]).
//!
//! At start the snapshot is read and the journal replayed; when the journal
//! grows past the list's size it is folded into a new snapshot. Snapshot and
//! export are written to a temporary file and renamed into place, so a reader
//! or a crash never sees half a file; a torn last journal line (a crash in
//! the middle of an append) is ignored, as it was never synced and so never
//! committed.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use herald_guest::net::canonical;
use ipnet::IpNet;

use crate::durable;
use crate::event::Version;
use crate::event::version::{Order, order};

pub mod policy;

pub use policy::{Policy, Refusal};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub network: String,
    pub reason: String,
    /// Unix milliseconds; none = until unblocked.
    pub expires_at: Option<u64>,
    /// The version of the event that wrote it; none for a write no event
    /// accounts for (and for entries from before versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Version>,
}

/// What a block or unblock did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The list changed.
    Changed,
    /// It already said so (the same write again, or nothing to unblock).
    Unchanged,
    /// Older than what the list holds for that network: not applied.
    Stale,
}

pub struct Blocklist {
    dir: PathBuf,
    state: Mutex<State>,
    policy: Policy,
    /// Held for a whole export, so that two exports (housekeeping and
    /// shutdown) cannot finish in the opposite order of their snapshots.
    export: Mutex<()>,
    /// Held for a whole flush, so that journal appends keep the order of
    /// the changes, while the state lock is held only to take them.
    /// The flush's change list, kept between flushes with its capacity.
    flushing: Mutex<Vec<Change>>,
}

/// An entry as held: its network is the map's key.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Held {
    reason: Arc<str>,
    expires_at: Option<u64>,
    version: Option<Version>,
}

#[derive(Default)]
struct State {
    /// Keyed by network, host bits clear: a key compares as numbers, and
    /// the list reads in address order (IPv4 first).
    entries: BTreeMap<IpNet, Held>,
    /// The version of every network's last unblock or expiry, while no
    /// entry is held for it: what an older block must lose against.
    tombstones: HashMap<IpNet, Version>,
    /// Every expiry in `entries`, soonest on top, so that expiring looks
    /// only at what is due rather than through the whole list four times a
    /// second. An item whose entry has since gone or changed its expiry is
    /// stale, and dropped when it comes up (see [`State::compact_expiring`]).
    expiring: BinaryHeap<Reverse<(u64, IpNet)>>,
    /// Changes not yet in the journal.
    pending: Vec<Change>,
    /// Lines in the journal since the snapshot.
    journaled: usize,
    /// The list changed since the last export.
    stale_export: bool,
    last_export: Option<std::time::Instant>,
    /// Counts changes, so that a copy elsewhere (the kernel's, in
    /// [`super::firewall`]) knows whether it is behind.
    generation: u64,
    /// The reasons given last, newest last (see [`State::reason`]).
    reasons: VecDeque<Arc<str>>,
    /// The most tombstones kept (see [`State::bury`]).
    max_tombstones: usize,
}

/// Reasons kept for sharing: a few publishers (a mail server's auth-failure
/// and rate limits, an operator) give a handful of reasons between them.
const RECENT_REASONS: usize = 8;

/// A change, as held until it is journaled. The reason is shared with the
/// entry: a block allocates it once.
#[derive(Clone, Debug)]
enum Change {
    Block(IpNet, Held),
    Unblock(IpNet, Option<Version>),
}

/// One journal line as read back.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
enum Line {
    Block(Entry),
    Unblock {
        network: String,
        #[serde(default)]
        version: Option<Version>,
    },
}

/// `blocklist.json`: the entries and the tombstones. (Before versions it
/// was the list of entries alone, which is still read.)
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Snapshot {
    Versioned {
        entries: Vec<Entry>,
        tombstones: Vec<Tombstone>,
    },
    Entries(Vec<Entry>),
}

#[derive(Serialize, Deserialize)]
struct Tombstone {
    network: String,
    version: Version,
}

impl Change {
    /// Append this change as one journal line, in the form [`Line`] reads.
    fn write(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let (op, net, version): (&[u8], _, _) = match self {
            Change::Block(net, held) => (br#"{"op":"block","network":""#, net, &held.version),
            Change::Unblock(net, v) => (br#"{"op":"unblock","network":""#, net, v),
        };
        out.write_all(op)?;
        // Canonical network text never needs escaping; a reason may.
        out.write_all(canonical(net).as_bytes())?;
        out.write_all(b"\"")?;
        if let Change::Block(_, held) = self {
            out.write_all(br#","reason":"#)?;
            serde_json::to_writer(&mut *out, &*held.reason)?;
            match held.expires_at {
                Some(at) => write!(out, r#","expiresAt":{at}"#)?,
                None => out.write_all(br#","expiresAt":null"#)?,
            }
        }
        if let Some(v) = version {
            out.write_all(br#","version":"#)?;
            serde_json::to_writer(&mut *out, v)?;
        }
        out.write_all(b"}\n")
    }
}

impl State {
    /// Apply a journal line read back, naming what is wrong with it.
    fn replay(&mut self, line: Line) -> Result<(), BlocklistError> {
        match line {
            Line::Block(e) => {
                let net = key(&e.network)?;
                let held = Held {
                    reason: self.reason(&e.reason),
                    expires_at: e.expires_at,
                    version: e.version,
                };
                self.tombstones.remove(&net);
                self.hold(net, held);
            }
            Line::Unblock { network, version } => {
                let net = key(&network)?;
                self.entries.remove(&net);
                self.bury(net, version);
            }
        }
        Ok(())
    }

    /// `text` as an entry's reason, shared with the entries that gave it
    /// recently. A large list holds a few reasons many times over (every
    /// block for failed logins says the same): one copy of each is enough,
    /// and handing out another reference costs less than a copy.
    fn reason(&mut self, text: &str) -> Arc<str> {
        if let Some(shared) = self.reasons.iter().rev().find(|r| ***r == *text) {
            return shared.clone();
        }
        let reason: Arc<str> = text.into();
        if self.reasons.len() == RECENT_REASONS {
            self.reasons.pop_front();
        }
        self.reasons.push_back(reason.clone());
        reason
    }

    /// The version held for `net`: its entry's, or its tombstone's.
    fn version(&self, net: &IpNet) -> Option<&Version> {
        match self.entries.get(net) {
            Some(held) => held.version.as_ref(),
            None => self.tombstones.get(net),
        }
    }

    /// Remember that `net` was unblocked at `version`. Tombstones are
    /// bounded by `max`: past it the oldest eighth goes (a replay of a block
    /// older than those could then apply again; the cap is the policy's
    /// `maxEntries`, far beyond what a cluster unblocks between restarts).
    fn bury(&mut self, net: IpNet, version: Option<Version>) {
        let Some(version) = version else {
            self.tombstones.remove(&net);
            return;
        };
        self.tombstones.insert(net, version);
        if self.tombstones.len() > self.max_tombstones {
            let mut versions: Vec<&Version> = self.tombstones.values().collect();
            versions.sort_unstable();
            let cut = versions[versions.len() / 8].clone();
            self.tombstones.retain(|_, v| *v > cut);
        }
    }

    /// Keep `held` for `net`, replacing what was held.
    fn hold(&mut self, net: IpNet, held: Held) {
        self.expire_at(net, &held);
        self.entries.insert(net, held);
    }

    /// Note when `held`, now held for `net`, expires.
    fn expire_at(&mut self, net: IpNet, held: &Held) {
        if let Some(at) = held.expires_at {
            self.expiring.push(Reverse((at, net)));
        }
    }

    /// Drop the stale items of the expiry index once they outnumber the
    /// live ones: a network blocked again and again with a new expiry
    /// each time (a repeat offender) would otherwise grow it for good.
    fn compact_expiring(&mut self) {
        if self.expiring.len() > 2 * self.entries.len() + 1024 {
            self.expiring = self
                .entries
                .iter()
                .filter_map(|(net, held)| Some(Reverse((held.expires_at?, *net))))
                .collect();
        }
    }

    /// Note a change already applied to `entries`.
    fn changed(&mut self, change: Change) {
        self.pending.push(change);
        self.stale_export = true;
        self.generation += 1;
    }

    fn entry(net: &IpNet, held: &Held) -> Entry {
        Entry {
            network: canonical(net),
            reason: held.reason.to_string(),
            expires_at: held.expires_at,
            version: held.version.clone(),
        }
    }

    fn in_force(&self, now_ms: u64) -> impl Iterator<Item = (&IpNet, &Held)> {
        self.entries
            .iter()
            .filter(move |(_, h)| h.expires_at.is_none_or(|t| t > now_ms))
    }
}

/// Why the blocklist refused a network. Every case is the caller's input:
/// asking again with the same network never works.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BlocklistError {
    /// The node's policy refuses it ([`policy`]).
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("`{0}` is not an IP address or CIDR network")]
    NotANetwork(String),
    #[error("`{0}` has host bits set")]
    HostBits(String),
}

/// The network `network` names, as the blocklist keys it: read as written,
/// host bits clear, so `2001:DB8::/48` and `2001:db8::/48` are one entry.
fn key(network: &str) -> Result<IpNet, BlocklistError> {
    let net = herald_guest::net::read_network(network)
        .ok_or_else(|| BlocklistError::NotANetwork(network.to_string()))?;
    if net.trunc() != net {
        return Err(BlocklistError::HostBits(network.to_string()));
    }
    Ok(net)
}

impl Blocklist {
    /// Open the blocklist in `dir`, reading what a previous run left, with
    /// the default [`Policy`].
    pub fn open(dir: &Path) -> anyhow::Result<Blocklist> {
        Blocklist::open_with(dir, Policy::default())
    }

    /// Open the blocklist in `dir` under `policy`.
    pub fn open_with(dir: &Path, policy: Policy) -> anyhow::Result<Blocklist> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create state directory {}", dir.display()))?;
        let path = dir.join("blocklist.json");
        let mut state = State {
            max_tombstones: policy.max_entries,
            ..State::default()
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let (entries, tombstones) = match serde_json::from_slice(&bytes)
                    .with_context(|| format!("{}: not a blocklist", path.display()))?
                {
                    Snapshot::Versioned {
                        entries,
                        tombstones,
                    } => (entries, tombstones),
                    Snapshot::Entries(entries) => (entries, Vec::new()),
                };
                for (n, e) in entries.into_iter().enumerate() {
                    state
                        .replay(Line::Block(e))
                        .with_context(|| format!("{}: entry {}", path.display(), n + 1))?;
                }
                for (n, t) in tombstones.into_iter().enumerate() {
                    let net = key(&t.network)
                        .with_context(|| format!("{}: tombstone {}", path.display(), n + 1))?;
                    state.bury(net, Some(t.version));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
        let journal = dir.join("blocklist.journal");
        match std::fs::read_to_string(&journal) {
            Ok(text) => {
                let whole = text.rfind('\n').map_or(0, |i| i + 1);
                if whole < text.len() {
                    // A torn final line was never synced, hence never
                    // committed: cut it off, or the next append would glue
                    // a good change onto it.
                    tracing::warn!(path = %journal.display(), line = text[..whole].lines().count() + 1,
                        bytes = text.len() - whole, "dropping a torn last line of the blocklist journal");
                    let f = std::fs::OpenOptions::new().write(true).open(&journal)?;
                    f.set_len(whole as u64)?;
                    f.sync_all()?;
                }
                for (n, line) in text[..whole].lines().enumerate() {
                    // Damage anywhere before the end is not a crash: refuse
                    // to start rather than silently drop a change (an
                    // unblock lost would block a client for good).
                    let damaged = |e: &dyn std::fmt::Display| {
                        anyhow::anyhow!(
                            "{} line {}: damaged ({e}); herald will not guess what it said. \
                             Restore the file, or remove the line once you know the change it held",
                            journal.display(),
                            n + 1
                        )
                    };
                    let line = serde_json::from_str::<Line>(line).map_err(|e| damaged(&e))?;
                    state.replay(line).map_err(|e| damaged(&e))?;
                    state.journaled += 1;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", journal.display())),
        }
        // What the files hold is checked like any block: a hand-edited or
        // damaged file, or a policy tightened since the entry was written,
        // must not reach the firewall at start-up. A refused entry is
        // dropped, and the drop journaled at the next flush.
        let refused: Vec<(IpNet, Refusal)> = state
            .entries
            .keys()
            .filter_map(|net| policy.check(net).err().map(|why| (*net, why)))
            .collect();
        for (net, why) in refused {
            tracing::warn!(dir = %dir.display(), network = %canonical(&net), error = %why,
                "dropping a blocklist entry from disk that the policy refuses");
            metrics::counter!("herald_blocklist_refused_at_load_total").increment(1);
            state.entries.remove(&net);
            state.pending.push(Change::Unblock(net, None));
            state.generation += 1;
        }
        state.stale_export = true;
        Ok(Blocklist {
            dir: dir.to_path_buf(),
            state: Mutex::new(state),
            policy,
            export: Mutex::new(()),
            flushing: Mutex::new(Vec::new()),
        })
    }

    /// Block `network` (an unversioned write; see [`Blocklist::block_at`]).
    pub fn block(
        &self,
        network: &str,
        reason: &str,
        expires_at: Option<u64>,
    ) -> Result<Applied, BlocklistError> {
        self.block_at(network, reason, expires_at, None)
    }

    /// Block `network` as of `version`: applied only if that is newer than
    /// what the list holds for the network.
    pub fn block_at(
        &self,
        network: &str,
        reason: &str,
        expires_at: Option<u64>,
        version: Option<&Version>,
    ) -> Result<Applied, BlocklistError> {
        let net = key(network)?;
        self.policy.check(&net)?;
        let reason = crate::bounded::cut(reason, self.policy.max_reason);
        let mut guard = self.state.lock().unwrap();
        let s = &mut *guard;
        match order(version, s.version(&net)) {
            Order::Stale => return Ok(Applied::Stale),
            Order::Same => return Ok(Applied::Unchanged),
            Order::Newer => {}
        }
        let held = Held {
            reason: s.reason(&reason),
            expires_at,
            version: version.cloned(),
        };
        let full = s.entries.len() >= self.policy.max_entries;
        // One lookup: this runs for every block a handler asks for.
        match s.entries.entry(net) {
            std::collections::btree_map::Entry::Occupied(held_now) if *held_now.get() == held => {
                return Ok(Applied::Unchanged);
            }
            std::collections::btree_map::Entry::Occupied(mut held_now) => {
                held_now.insert(held.clone());
            }
            std::collections::btree_map::Entry::Vacant(_) if full => {
                return Err(Refusal::Full {
                    network: canonical(&net),
                    max: self.policy.max_entries,
                }
                .into());
            }
            std::collections::btree_map::Entry::Vacant(free) => {
                free.insert(held.clone());
                s.tombstones.remove(&net);
            }
        }
        s.expire_at(net, &held);
        s.changed(Change::Block(net, held));
        Ok(Applied::Changed)
    }

    /// Unblock `network` (an unversioned write).
    pub fn unblock(&self, network: &str) -> Result<Applied, BlocklistError> {
        self.unblock_at(network, None)
    }

    /// Unblock `network` as of `version`, leaving a tombstone with it: an
    /// older block of the network is stale from now on.
    pub fn unblock_at(
        &self,
        network: &str,
        version: Option<&Version>,
    ) -> Result<Applied, BlocklistError> {
        let net = key(network)?;
        let mut guard = self.state.lock().unwrap();
        let s = &mut *guard;
        match order(version, s.version(&net)) {
            Order::Stale => return Ok(Applied::Stale),
            Order::Same => return Ok(Applied::Unchanged),
            Order::Newer => {}
        }
        let had = s.entries.remove(&net).is_some();
        let tombstone_moved = version.is_some();
        s.bury(net, version.cloned());
        if had || tombstone_moved {
            // A new tombstone is journaled too, or a restart would forget it.
            s.changed(Change::Unblock(net, version.cloned()));
            return Ok(if had {
                Applied::Changed
            } else {
                Applied::Unchanged
            });
        }
        Ok(Applied::Unchanged)
    }

    /// Number of entries, expired or not (cheap; for progress checks).
    pub fn len(&self) -> usize {
        self.state.lock().unwrap().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries in force at `now_ms` (expired ones are not returned), in
    /// address order.
    pub fn list(&self, now_ms: u64) -> Vec<Entry> {
        // Copied under the lock, written out as text outside it.
        let held: Vec<(IpNet, Held)> = {
            let s = self.state.lock().unwrap();
            s.in_force(now_ms)
                .map(|(net, held)| (*net, held.clone()))
                .collect()
        };
        held.iter()
            .map(|(net, held)| State::entry(net, held))
            .collect()
    }

    /// The networks in force at `now_ms`, each with its expiry, and the
    /// list's generation, which changes with every change: both taken at
    /// once. What the kernel's copy is made from.
    pub fn in_force(&self, now_ms: u64) -> (u64, Vec<(IpNet, Option<u64>)>) {
        let s = self.state.lock().unwrap();
        let networks = s
            .in_force(now_ms)
            .map(|(net, held)| (*net, held.expires_at))
            .collect();
        (s.generation, networks)
    }

    /// The list's generation: it changes with every change.
    pub fn generation(&self) -> u64 {
        self.state.lock().unwrap().generation
    }

    /// The entry that covers `ip` at `now_ms`, if any; of several, the
    /// broadest.
    pub fn check(&self, ip: IpAddr, now_ms: u64) -> Option<Entry> {
        let widest = match ip {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let s = self.state.lock().unwrap();
        // One lookup per prefix length that could cover it, rather than a
        // walk through the whole list under the lock every worker needs.
        (0..=widest).find_map(|len| {
            let net = IpNet::new(ip, len).ok()?.trunc();
            let held = s.entries.get(&net)?;
            held.expires_at
                .is_none_or(|t| t > now_ms)
                .then(|| State::entry(&net, held))
        })
    }

    /// Drop expired entries; returns how many went.
    pub fn expire(&self, now_ms: u64) -> usize {
        let mut s = self.state.lock().unwrap();
        let mut expired = 0;
        while let Some(&Reverse((at, net))) = s.expiring.peek() {
            if at > now_ms {
                break;
            }
            s.expiring.pop();
            // Only if the entry still expires then: it may have been
            // unblocked, or blocked again with another expiry, since.
            if s.entries
                .get(&net)
                .is_some_and(|h| h.expires_at == Some(at))
            {
                // The block's version stays as a tombstone: the same block
                // replayed after its expiry is not new.
                let version = s.entries.remove(&net).and_then(|h| h.version);
                s.bury(net, version.clone());
                s.changed(Change::Unblock(net, version));
                expired += 1;
            }
        }
        s.compact_expiring();
        expired
    }

    /// Make every change so far durable: append it to the journal and
    /// sync; fold the journal into a new snapshot when it has grown past the
    /// list's size.
    ///
    /// The changes are taken under the state lock, but written and synced
    /// outside it: blocks and unblocks go on meanwhile (they are in the next
    /// flush) rather than wait for the disk.
    pub fn flush(&self) -> anyhow::Result<()> {
        let mut changes = self.flushing.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut *changes, &mut self.state.lock().unwrap().pending);
        if !changes.is_empty() {
            let written = (|| -> anyhow::Result<()> {
                let path = self.dir.join("blocklist.journal");
                // Through a small buffer: a busy node flushes a hundred
                // thousand changes at a time, and a buffer of them all would
                // be fresh pages (zeroed by the kernel) at every flush.
                let mut f = std::io::BufWriter::with_capacity(64 << 10, durable::append(&path)?);
                for change in changes.iter() {
                    change.write(&mut f)?;
                }
                f.into_inner().map_err(|e| e.into_error())?.sync_data()?;
                Ok(())
            })();
            let mut s = self.state.lock().unwrap();
            if let Err(e) = written {
                // Not durable: they go first in the next flush. (A torn
                // append is cut off at the next start; a whole line that
                // made it without its sync is written again, and replaying
                // a change twice in order is replaying it once.)
                changes.append(&mut s.pending);
                std::mem::swap(&mut *changes, &mut s.pending);
                return Err(e);
            }
            s.journaled += changes.len();
            // Kept for the next flush, which swaps it in as the pending
            // list, but no bigger than twice this one: a burst's memory
            // goes back once the node is quiet again.
            let n = changes.len();
            changes.clear();
            changes.shrink_to(2 * n);
        }
        type Copied = (Vec<(IpNet, Held)>, Vec<(IpNet, Version)>);
        let (held, tombstones): Copied = {
            let s = self.state.lock().unwrap();
            if s.journaled <= (s.entries.len() + s.tombstones.len()).max(1024) {
                return Ok(());
            }
            // Copied under the lock (a reason is shared, not copied), written
            // outside it: the workers block through that lock, and a
            // snapshot of a large list takes two syncs. No flush can run
            // meanwhile (this one holds `flushing`), so the journal gains
            // nothing before it is emptied below; changes made meanwhile wait
            // in `pending` for the next flush.
            (
                s.entries
                    .iter()
                    .map(|(net, held)| (*net, held.clone()))
                    .collect(),
                s.tombstones
                    .iter()
                    .map(|(net, v)| (*net, v.clone()))
                    .collect(),
            )
        };
        let mut tombstones: Vec<Tombstone> = tombstones
            .into_iter()
            .map(|(net, version)| Tombstone {
                network: canonical(&net),
                version,
            })
            .collect();
        tombstones.sort_by(|a, b| a.network.cmp(&b.network));
        let snapshot = Snapshot::Versioned {
            entries: held
                .iter()
                .map(|(net, held)| State::entry(net, held))
                .collect(),
            tombstones,
        };
        durable::replace(
            &self.dir.join("blocklist.json"),
            &serde_json::to_vec(&snapshot)?,
        )?;
        // The snapshot has everything the journal had.
        durable::replace(&self.dir.join("blocklist.journal"), b"")?;
        self.state.lock().unwrap().journaled = 0;
        Ok(())
    }

    /// Rewrite `blocklist.txt` if the list changed, at most once a second
    /// unless `force`.
    pub fn export(&self, force: bool) -> anyhow::Result<()> {
        let _one_at_a_time = self.export.lock().unwrap_or_else(|e| e.into_inner());
        let networks = {
            let mut s = self.state.lock().unwrap();
            let recent = s
                .last_export
                .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1));
            if !s.stale_export || (recent && !force) {
                return Ok(());
            }
            s.stale_export = false;
            s.last_export = Some(std::time::Instant::now());
            // Only the keys are copied under the lock; blocks go on while
            // they are written out as text.
            s.entries.keys().copied().collect::<Vec<IpNet>>()
        };
        let mut text = String::with_capacity(networks.len() * 16);
        for net in &networks {
            text.push_str(&canonical(net));
            text.push('\n');
        }
        durable::replace(&self.dir.join("blocklist.txt"), text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_are_keyed_by_canonical_text() {
        for (given, key) in [
            ("198.51.100.7", "198.51.100.7"),
            ("198.51.100.7/32", "198.51.100.7"),
            ("198.51.100.0/24", "198.51.100.0/24"),
            ("2001:DB8::/48", "2001:db8::/48"),
            ("2001:db8::1", "2001:db8::1"),
        ] {
            assert_eq!(canonical(&super::key(given).unwrap()), key, "{given}");
        }
        for bad in [
            "",
            "not-an-ip",
            " 198.51.100.7",
            "198.51.100.07",
            "198.51.100.0/33",
        ] {
            assert_eq!(
                super::key(bad),
                Err(BlocklistError::NotANetwork(bad.to_string())),
                "{bad}"
            );
        }
        assert_eq!(
            super::key("198.51.100.7/24"),
            Err(BlocklistError::HostBits("198.51.100.7/24".into()))
        );
    }

    #[test]
    fn journal_lines_are_json_and_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let b = Blocklist::open(dir.path()).unwrap();
        let reason = "a \"quoted\"\nreason\\ \u{1} ü";
        b.block("2001:DB8::/48", reason, Some(7_000)).unwrap();
        b.block("203.0.113.9", "plain", None).unwrap();
        b.unblock("203.0.113.9").unwrap();
        b.flush().unwrap();
        let text = std::fs::read_to_string(dir.path().join("blocklist.journal")).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        use serde_json::json;
        assert_eq!(
            lines,
            [
                json!({"op": "block", "network": "2001:db8::/48", "reason": reason, "expiresAt": 7_000}),
                json!({"op": "block", "network": "203.0.113.9", "reason": "plain", "expiresAt": null}),
                json!({"op": "unblock", "network": "203.0.113.9"}),
            ]
        );
        let again = Blocklist::open(dir.path()).unwrap();
        assert_eq!(again.list(0), b.list(0));
        assert_eq!(again.list(0)[0].reason, reason);
    }

    #[test]
    fn a_torn_last_line_is_dropped_but_damage_elsewhere_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let b = Blocklist::open(dir.path()).unwrap();
        b.block("203.0.113.7", "x", None).unwrap();
        b.block("203.0.113.8", "x", None).unwrap();
        b.unblock("203.0.113.7").unwrap();
        b.flush().unwrap();
        drop(b);
        let journal = dir.path().join("blocklist.journal");
        let good = std::fs::read_to_string(&journal).unwrap();
        assert_eq!(good.lines().count(), 3);
        // A crash in the middle of an append: the last change is lost, the
        // rest stands, and the file is cut back to whole lines.
        std::fs::write(&journal, format!("{good}{{\"block\":{{\"netw")).unwrap();
        let b = Blocklist::open(dir.path()).unwrap();
        assert_eq!(b.list(0).len(), 1);
        assert_eq!(std::fs::read_to_string(&journal).unwrap(), good);
        drop(b);
        // Damage in the middle (here: the unblock) refuses to start.
        let lines: Vec<&str> = good.lines().collect();
        let damaged = format!("{}\n{}\ngarbage\n", lines[0], lines[1]);
        std::fs::write(&journal, damaged).unwrap();
        let err = Blocklist::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("blocklist.journal line 3"), "{err}");
    }

    #[test]
    fn the_policy_refuses_over_reach_and_caps_entries_and_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let policy = Policy {
            max_entries: 2,
            max_reason: 16,
            ..Policy::default()
        };
        let b = Blocklist::open_with(dir.path(), policy).unwrap();
        for wide in ["0.0.0.0/0", "::/0", "10.0.0.0/8", "127.0.0.1"] {
            assert!(
                matches!(b.block(wide, "x", None), Err(BlocklistError::Refused(_))),
                "{wide}"
            );
        }
        b.block("203.0.113.1", &"r".repeat(100), None).unwrap();
        assert!(b.list(0)[0].reason.len() < 50, "{:?}", b.list(0));
        b.block("203.0.113.2", "x", None).unwrap();
        let full = b.block("203.0.113.3", "x", None).unwrap_err();
        assert!(full.to_string().contains("maxEntries"), "{full}");
        // Replacing an entry is not growing the list.
        b.block("203.0.113.2", "y", None).unwrap();
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn survives_a_reopen_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let b = Blocklist::open(dir.path()).unwrap();
        b.block("203.0.113.7", "x", None).unwrap();
        b.block("2001:DB8::/48", "y", Some(2_000)).unwrap();
        assert!(b.block("10.0.0.1/8", "z", None).is_err());
        b.flush().unwrap();
        b.export(true).unwrap();
        let text = std::fs::read_to_string(dir.path().join("blocklist.txt")).unwrap();
        assert_eq!(text, "203.0.113.7\n2001:db8::/48\n", "in address order");
        let again = Blocklist::open(dir.path()).unwrap();
        assert_eq!(again.list(1_000).len(), 2);
        assert_eq!(again.list(2_000).len(), 1, "expired entries are not listed");
        assert!(again.check("2001:db8::5".parse().unwrap(), 1_000).is_some());
        assert!(again.check("2001:db8::5".parse().unwrap(), 3_000).is_none());
        assert_eq!(again.expire(3_000), 1);
        again.unblock("203.0.113.7").unwrap();
        again.flush().unwrap();
        again.export(true).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("blocklist.txt")).unwrap(),
            ""
        );
    }

    #[test]
    fn expiry_follows_the_latest_block_of_a_network() {
        let dir = tempfile::tempdir().unwrap();
        let b = Blocklist::open(dir.path()).unwrap();
        // Blocked again with a later expiry: the earlier one no longer counts.
        b.block("198.51.100.1", "x", Some(1_000)).unwrap();
        b.block("198.51.100.1", "x", Some(5_000)).unwrap();
        // Blocked again for good.
        b.block("198.51.100.2", "y", Some(1_000)).unwrap();
        b.block("198.51.100.2", "y", None).unwrap();
        // Unblocked, then blocked again with a later expiry.
        b.block("198.51.100.3", "z", Some(1_000)).unwrap();
        b.unblock("198.51.100.3").unwrap();
        b.block("198.51.100.3", "z", Some(6_000)).unwrap();
        assert_eq!(b.expire(2_000), 0);
        assert_eq!(b.len(), 3);
        assert_eq!(b.expire(5_000), 1);
        assert_eq!(b.expire(5_999), 0);
        assert_eq!(b.expire(6_000), 1);
        let left: Vec<_> = b.list(0).into_iter().map(|e| e.network).collect();
        assert_eq!(left, ["198.51.100.2"]);
        // What a reopen reads expires as well.
        b.block("198.51.100.4", "w", Some(7_000)).unwrap();
        b.flush().unwrap();
        let again = Blocklist::open(dir.path()).unwrap();
        assert_eq!(again.expire(7_000), 1);
        assert_eq!(again.len(), 1);
    }

    #[test]
    fn a_check_answers_the_broadest_entry_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let b = Blocklist::open(dir.path()).unwrap();
        b.block("198.51.0.0/16", "wide", Some(1_000)).unwrap();
        b.block("198.51.100.0/24", "narrow", None).unwrap();
        b.block("198.51.100.7", "one", None).unwrap();
        b.block("2001:db8::/32", "v6", None).unwrap();
        let covering = |ip: &str, now| b.check(ip.parse().unwrap(), now).map(|e| e.network);
        assert_eq!(
            covering("198.51.100.7", 0).as_deref(),
            Some("198.51.0.0/16")
        );
        assert_eq!(
            covering("198.51.100.7", 1_000).as_deref(),
            Some("198.51.100.0/24")
        );
        assert_eq!(
            covering("198.51.100.8", 1_000).as_deref(),
            Some("198.51.100.0/24")
        );
        assert_eq!(covering("198.51.101.7", 1_000), None);
        assert_eq!(
            covering("2001:db8:ffff::1", 0).as_deref(),
            Some("2001:db8::/32")
        );
        assert_eq!(covering("2001:db9::1", 0), None);
        b.unblock("198.51.100.0/24").unwrap();
        assert_eq!(
            covering("198.51.100.7", 1_000).as_deref(),
            Some("198.51.100.7")
        );
    }

    #[test]
    fn entries_share_a_reason_given_again() {
        let reasons = |b: &Blocklist| -> Vec<Arc<str>> {
            let s = b.state.lock().unwrap();
            s.entries.values().map(|h| h.reason.clone()).collect()
        };
        let dir = tempfile::tempdir().unwrap();
        let b = Blocklist::open(dir.path()).unwrap();
        for i in 1..=3 {
            b.block(&format!("198.51.100.{i}"), "auth failures", None)
                .unwrap();
        }
        b.block("198.51.100.4", "rate limit", None).unwrap();
        b.block("198.51.100.5", "auth failures", None).unwrap();
        let held = reasons(&b);
        for i in [1, 2, 4] {
            assert!(Arc::ptr_eq(&held[0], &held[i]), "entry {i}");
        }
        assert_eq!(&*held[3], "rate limit");
        // What a reopen reads back is shared as well, and still says the same.
        b.flush().unwrap();
        let again = Blocklist::open(dir.path()).unwrap();
        let held = reasons(&again);
        assert!(Arc::ptr_eq(&held[0], &held[4]));
        assert_eq!(again.list(0), b.list(0));
    }

    #[test]
    fn a_repeat_offender_does_not_grow_the_expiry_index_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let b = Blocklist::open(dir.path()).unwrap();
        for at in 0..10_000u64 {
            b.block("198.51.100.1", "again", Some(1_000_000 + at))
                .unwrap();
        }
        assert_eq!(b.expire(0), 0);
        assert!(b.state.lock().unwrap().expiring.len() <= 1026);
        assert_eq!(b.expire(1_000_000 + 9_998), 0);
        assert_eq!(b.expire(1_000_000 + 9_999), 1);
        assert!(b.is_empty());
    }

    #[test]
    fn the_newest_version_wins_whatever_the_order_and_survives_a_reopen() {
        let v = |ts, id: &str| Some(Version::new(ts, id));
        let dir = tempfile::tempdir().unwrap();
        let b = Blocklist::open(dir.path()).unwrap();
        // An unblock at 2 arrives before the block at 1 it supersedes.
        assert_eq!(
            b.unblock_at("203.0.113.7", v(2, "u").as_ref()).unwrap(),
            Applied::Unchanged
        );
        assert_eq!(
            b.block_at("203.0.113.7", "old", None, v(1, "b").as_ref())
                .unwrap(),
            Applied::Stale
        );
        assert!(b.is_empty());
        // A newer block applies; the unblock replayed is stale, the block
        // replayed is the same write; an unversioned unblock cannot undo it.
        b.block_at("203.0.113.7", "new", None, v(3, "b2").as_ref())
            .unwrap();
        assert_eq!(
            b.unblock_at("203.0.113.7", v(2, "u").as_ref()).unwrap(),
            Applied::Stale
        );
        assert_eq!(
            b.block_at("203.0.113.7", "new", None, v(3, "b2").as_ref())
                .unwrap(),
            Applied::Unchanged
        );
        assert_eq!(b.unblock("203.0.113.7").unwrap(), Applied::Stale);
        assert_eq!(b.len(), 1);
        // An expiry keeps the block's version: replayed, it is not new.
        b.block_at("198.51.100.1", "brief", Some(1_000), v(5, "e").as_ref())
            .unwrap();
        assert_eq!(b.expire(1_000), 1);
        assert_eq!(
            b.block_at("198.51.100.1", "brief", Some(1_000), v(5, "e").as_ref())
                .unwrap(),
            Applied::Unchanged
        );
        assert_eq!(
            b.block_at("198.51.100.1", "older", None, v(4, "x").as_ref())
                .unwrap(),
            Applied::Stale
        );
        // The tombstones outlive a restart, through the journal and through
        // a snapshot.
        b.flush().unwrap();
        for _ in 0..2 {
            let again = Blocklist::open(dir.path()).unwrap();
            assert_eq!(again.list(0), b.list(0));
            assert_eq!(
                again.block_at("203.0.113.9", "x", None, None).unwrap(),
                Applied::Changed
            );
            assert_eq!(
                again
                    .block_at("198.51.100.1", "older", None, v(4, "x").as_ref())
                    .unwrap(),
                Applied::Stale
            );
            assert_eq!(
                again
                    .block_at("203.0.113.7", "older", None, v(2, "z").as_ref())
                    .unwrap(),
                Applied::Stale
            );
            again.unblock("203.0.113.9").unwrap();
            // Force the journal into a snapshot for the second round.
            again.state.lock().unwrap().journaled = usize::MAX / 2;
            again.flush().unwrap();
        }
        let snapshot: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("blocklist.json")).unwrap())
                .unwrap();
        assert_eq!(snapshot["tombstones"][0]["network"], "198.51.100.1");
    }

    #[test]
    fn a_snapshot_from_before_versions_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("blocklist.json"),
            r#"[{"network":"203.0.113.7","reason":"old","expiresAt":null}]"#,
        )
        .unwrap();
        let b = Blocklist::open(dir.path()).unwrap();
        assert_eq!(b.list(0)[0].version, None);
        // Any versioned write supersedes an unversioned entry.
        assert_eq!(
            b.unblock_at("203.0.113.7", Some(&Version::new(1, "u")))
                .unwrap(),
            Applied::Changed
        );
    }

    #[test]
    fn the_journal_replays_and_folds_into_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let b = Blocklist::open(dir.path()).unwrap();
        for i in 0..3000u32 {
            b.block(&format!("10.0.{}.{}", i / 256, i % 256), "x", None)
                .unwrap();
            if i % 100 == 0 {
                b.flush().unwrap();
            }
        }
        b.unblock("10.0.0.5").unwrap();
        b.flush().unwrap();
        // A crash in the middle of an append leaves a torn line.
        use std::io::Write;
        let mut j = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("blocklist.journal"))
            .unwrap();
        j.write_all(b"{\"op\":\"block\",\"netw").unwrap();
        drop(j);
        let again = Blocklist::open(dir.path()).unwrap();
        assert_eq!(again.len(), 2999);
        again.block("192.0.2.1", "after the crash", None).unwrap();
        again.flush().unwrap();
        let third = Blocklist::open(dir.path()).unwrap();
        assert_eq!(
            third.len(),
            3000,
            "a change appended after a torn line survives"
        );
        assert!(again.check("10.0.0.5".parse().unwrap(), 0).is_none());
        assert!(again.check("10.0.11.183".parse().unwrap(), 0).is_some());
    }

    #[test]
    fn entries_on_disk_are_checked_against_the_policy_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let b = Blocklist::open(dir.path()).unwrap();
        b.block("203.0.113.7", "kept", None).unwrap();
        b.block("198.51.100.0/24", "kept until the policy tightens", None)
            .unwrap();
        b.flush().unwrap();
        drop(b);
        // What a hand edit, a damaged disk or an older herald could leave:
        // lines no policy of today's would let in.
        let journal = dir.path().join("blocklist.journal");
        let mut text = std::fs::read_to_string(&journal).unwrap();
        for net in ["0.0.0.0/0", "::fffe:0:0/95", "127.0.0.1"] {
            text.push_str(&format!(
                "{{\"op\":\"block\",\"network\":\"{net}\",\"reason\":\"x\"}}\n"
            ));
        }
        std::fs::write(&journal, text).unwrap();
        let strict = Policy {
            min_prefix_v4: 25,
            ..Policy::default()
        };
        let b = Blocklist::open_with(dir.path(), strict.clone()).unwrap();
        let held: Vec<String> = b.list(0).into_iter().map(|e| e.network).collect();
        assert_eq!(held, ["203.0.113.7"]);
        assert!(b.check("::ffff:127.0.0.1".parse().unwrap(), 0).is_none());
        b.export(true).unwrap();
        let exported = std::fs::read_to_string(dir.path().join("blocklist.txt")).unwrap();
        assert_eq!(exported.trim(), "203.0.113.7");
        // The drops are journaled: even under the old policy they stay gone.
        b.flush().unwrap();
        drop(b);
        let b = Blocklist::open(dir.path()).unwrap();
        let held: Vec<String> = b.list(0).into_iter().map(|e| e.network).collect();
        assert_eq!(held, ["203.0.113.7"]);
    }
}
