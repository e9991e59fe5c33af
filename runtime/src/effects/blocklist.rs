//! The node's IP blocklist: IPv4, IPv6 and CIDR entries with optional
//! expiry, persisted with atomic writes so that a restart keeps it.
//!
//! Two files live in the state directory: `blocklist.json`, the store
//! (entries with reason and expiry, read back at start), and
//! `blocklist.txt`, one network per line for nftables/ipset to load. Both are
//! written to a temporary file and renamed into place, so a reader or a crash
//! never sees half a file. Writes are batched: [`Blocklist::flush`] writes
//! when something changed, and the node flushes before every offset commit.

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
    dirty: bool,
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
            s.entries.insert(key, entry);
            s.dirty = true;
        }
        Ok(())
    }

    pub fn unblock(&self, network: &str) -> Result<(), String> {
        let (key, _) = normalise(network)?;
        let mut s = self.state.lock().unwrap();
        if s.entries.remove(&key).is_some() {
            s.dirty = true;
        }
        Ok(())
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
        let before = s.entries.len();
        s.entries
            .retain(|_, e| e.expires_at.is_none_or(|t| t > now_ms));
        let gone = before - s.entries.len();
        if gone > 0 {
            s.dirty = true;
        }
        gone
    }

    /// Write both files if anything changed since the last flush.
    pub fn flush(&self) -> anyhow::Result<()> {
        let (json, text) = {
            let mut s = self.state.lock().unwrap();
            if !s.dirty {
                return Ok(());
            }
            s.dirty = false;
            let entries: Vec<&Entry> = s.entries.values().collect();
            let text: String = entries.iter().map(|e| format!("{}\n", e.network)).collect();
            (serde_json::to_vec_pretty(&entries)?, text)
        };
        let written = write_atomic(&self.dir.join("blocklist.json"), &json)
            .and_then(|_| write_atomic(&self.dir.join("blocklist.txt"), text.as_bytes()));
        if written.is_err() {
            // Try again at the next flush.
            self.state.lock().unwrap().dirty = true;
        }
        written
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
        assert_eq!(
            std::fs::read_to_string(dir.path().join("blocklist.txt")).unwrap(),
            ""
        );
    }
}
