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
//! At start the snapshot is read and the journal replayed; when the journal
//! grows past the list's size it is folded into a new snapshot. Snapshot and
//! export are written to a temporary file and renamed into place, so a reader
//! or a crash never sees half a file; a torn last journal line (a crash in
//! the middle of an append) is ignored, as it was never synced and so never
//! committed.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub network: String,
    pub reason: String,
    /// Unix milliseconds; none = until unblocked.
    pub expires_at: Option<u64>,
}

pub struct Blocklist {
    dir: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    entries: BTreeMap<String, Entry>,
    /// Changes not yet in the journal.
    pending: Vec<Change>,
    /// Lines in the journal since the snapshot.
    journaled: usize,
    /// The list changed since the last export.
    stale_export: bool,
    last_export: Option<std::time::Instant>,
}

/// One journal line.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
enum Change {
    Block(Entry),
    Unblock { network: String },
}

impl State {
    fn apply(&mut self, change: Change) {
        match change {
            Change::Block(e) => {
                self.entries.insert(e.network.clone(), e);
            }
            Change::Unblock { network } => {
                self.entries.remove(&network);
            }
        }
    }

    fn record(&mut self, change: Change) {
        self.apply(change.clone());
        self.pending.push(change);
        self.stale_export = true;
    }
}

/// Parse a network the way the blocklist keys it: canonical text, so
/// `2001:DB8::/48` and `2001:db8::/48` are one entry.
pub fn normalise(network: &str) -> Result<(String, ipnet::IpNet), String> {
    let net: ipnet::IpNet = match network.parse::<ipnet::IpNet>() {
        Ok(n) => n,
        Err(_) => network
            .parse::<IpAddr>()
            .map(ipnet::IpNet::from)
            .map_err(|_| format!("`{network}` is not an IP address or CIDR network"))?,
    };
    if net.trunc() != net {
        return Err(format!("`{network}` has host bits set"));
    }
    let text = if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    };
    Ok((text, net))
}

impl Blocklist {
    /// Open the blocklist in `dir`, reading what a previous run left.
    pub fn open(dir: &Path) -> anyhow::Result<Blocklist> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create state directory {}", dir.display()))?;
        let path = dir.join("blocklist.json");
        let mut state = State::default();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let entries: Vec<Entry> = serde_json::from_slice(&bytes)
                    .with_context(|| format!("{}: not a blocklist", path.display()))?;
                for e in entries {
                    state.entries.insert(e.network.clone(), e);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
        let journal = dir.join("blocklist.journal");
        match std::fs::read_to_string(&journal) {
            Ok(text) => {
                if !text.is_empty() && !text.ends_with('\n') {
                    // Cut the torn line off, or the next append would glue a
                    // good change onto it.
                    let keep = text.rfind('\n').map_or(0, |i| i + 1);
                    let f = std::fs::OpenOptions::new().write(true).open(&journal)?;
                    f.set_len(keep as u64)?;
                    f.sync_all()?;
                }
                for line in text.lines() {
                    // A torn final line was never synced, hence never committed.
                    if let Ok(change) = serde_json::from_str::<Change>(line) {
                        state.apply(change);
                        state.journaled += 1;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", journal.display())),
        }
        state.stale_export = true;
        Ok(Blocklist {
            dir: dir.to_path_buf(),
            state: Mutex::new(state),
        })
    }

    pub fn block(
        &self,
        network: &str,
        reason: &str,
        expires_at: Option<u64>,
    ) -> Result<(), String> {
        let (key, _) = normalise(network)?;
        let entry = Entry {
            network: key.clone(),
            reason: reason.to_string(),
            expires_at,
        };
        let mut s = self.state.lock().unwrap();
        if s.entries.get(&key) != Some(&entry) {
            s.record(Change::Block(entry));
        }
        Ok(())
    }

    pub fn unblock(&self, network: &str) -> Result<(), String> {
        let (key, _) = normalise(network)?;
        let mut s = self.state.lock().unwrap();
        if s.entries.contains_key(&key) {
            s.record(Change::Unblock { network: key });
        }
        Ok(())
    }

    /// Number of entries, expired or not (cheap; for progress checks).
    pub fn len(&self) -> usize {
        self.state.lock().unwrap().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries in force at `now_ms` (expired ones are not returned).
    pub fn list(&self, now_ms: u64) -> Vec<Entry> {
        let s = self.state.lock().unwrap();
        s.entries
            .values()
            .filter(|e| e.expires_at.is_none_or(|t| t > now_ms))
            .cloned()
            .collect()
    }

    /// The entry that covers `ip` at `now_ms`, if any.
    pub fn check(&self, ip: IpAddr, now_ms: u64) -> Option<Entry> {
        let s = self.state.lock().unwrap();
        s.entries
            .values()
            .filter(|e| e.expires_at.is_none_or(|t| t > now_ms))
            .find(|e| normalise(&e.network).is_ok_and(|(_, n)| n.contains(&ip)))
            .cloned()
    }

    /// Drop expired entries; returns how many went.
    pub fn expire(&self, now_ms: u64) -> usize {
        let mut s = self.state.lock().unwrap();
        let expired: Vec<String> = s
            .entries
            .values()
            .filter(|e| e.expires_at.is_some_and(|t| t <= now_ms))
            .map(|e| e.network.clone())
            .collect();
        for network in &expired {
            s.record(Change::Unblock {
                network: network.clone(),
            });
        }
        expired.len()
    }

    /// Make every change so far durable: append it to the journal and
    /// sync; fold the journal into a new snapshot when it has grown past the
    /// list's size.
    pub fn flush(&self) -> anyhow::Result<()> {
        use std::io::Write;
        let mut s = self.state.lock().unwrap();
        if !s.pending.is_empty() {
            let mut lines = Vec::new();
            for change in &s.pending {
                serde_json::to_writer(&mut lines, change)?;
                lines.push(b'\n');
            }
            let path = self.dir.join("blocklist.journal");
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("cannot append to {}", path.display()))?;
            f.write_all(&lines)?;
            f.sync_data()?;
            s.journaled += s.pending.len();
            s.pending.clear();
        }
        if s.journaled > s.entries.len().max(1024) {
            let entries: Vec<&Entry> = s.entries.values().collect();
            write_atomic(
                &self.dir.join("blocklist.json"),
                &serde_json::to_vec(&entries)?,
            )?;
            // The snapshot has everything the journal had.
            write_atomic(&self.dir.join("blocklist.journal"), b"")?;
            s.journaled = 0;
        }
        Ok(())
    }

    /// Rewrite `blocklist.txt` if the list changed, at most once a second
    /// unless `force`.
    pub fn export(&self, force: bool) -> anyhow::Result<()> {
        let text = {
            let mut s = self.state.lock().unwrap();
            let recent = s
                .last_export
                .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1));
            if !s.stale_export || (recent && !force) {
                return Ok(());
            }
            s.stale_export = false;
            s.last_export = Some(std::time::Instant::now());
            s.entries
                .values()
                .map(|e| format!("{}\n", e.network))
                .collect::<String>()
        };
        write_atomic(&self.dir.join("blocklist.txt"), text.as_bytes())
    }
}

/// Write `bytes` to `path` through a temporary file in the same directory,
/// synced before the rename, so that `path` is always whole.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(text, "2001:db8::/48\n203.0.113.7\n");
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
}
