//! The state topic's keeper: after compaction, the last record of each key
//! must still be the newest version of its entity.
//!
//! The state topic is compacted: the broker keeps the record with the
//! highest *offset* per key, not the one with the newest *version*. So a
//! signed record copied off the topic and produced again after a newer one
//! (a replay), a record that does not decode or is not trusted, or a
//! tombstone (a null value, which compaction turns into a deletion) would,
//! once compacted, be all a new node finds for that key: it would end with
//! another state than the nodes that saw the history, or with none.
//!
//! Every node keeps, per key of the state topic, the newest record it saw
//! there that is about one entity (its exact key, value and signature
//! headers) in `state-kept.log` in the state directory. When a record for a
//! key arrives that is not at least as new (older, undecodable, refused,
//! about several entities, or a tombstone), the node puts the kept record
//! back on the topic, byte for byte, signature and all: it needs no key of
//! its own, and every node verifies it as it did the first time. So the last
//! record of the key is the newest again, whatever compaction then drops.
//!
//! Every node sees the same bad record, so each waits a random
//! [`JITTER`] first and does nothing if the newest record comes back in the
//! meantime (another node put it back): one or two copies per bad record
//! whatever the cluster's size. A node puts back at most [`PER_SECOND`]
//! records a second, and one key at most once per [`PER_KEY`].

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use super::BoxFuture;
use crate::codec::Record;
use crate::durable;
use crate::event::Event;
use crate::event::version::{Entity, Version};
use crate::trust::Signature;

/// Name of the kept records in the state directory.
pub const KEPT_FILE: &str = "state-kept.log";
/// The longest a node waits before it puts a record back.
pub const JITTER: Duration = Duration::from_secs(5);
/// The most records a node puts back per second.
pub const PER_SECOND: usize = 50;
/// A key is put back at most once per this.
pub const PER_KEY: Duration = Duration::from_secs(10);

/// Where a kept record is put back: the producer, to the state topic.
pub trait Restorer: Send + Sync + 'static {
    fn restore<'a>(&'a self, record: &'a Kept) -> BoxFuture<'a, Result<(), String>>;
}

/// The newest record of a key, as it was on the topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    #[serde(with = "b64")]
    pub value: Vec<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<KeptSignature>,
    pub version: Version,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptSignature {
    #[serde(with = "b64")]
    pub key_id: Vec<u8>,
    #[serde(with = "b64")]
    pub signature: Vec<u8>,
}

pub struct Keeper {
    topic: String,
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    kept: HashMap<Vec<u8>, Kept>,
    /// Keys to put back, with the unix ms when (after the jitter).
    due: HashMap<Vec<u8>, u64>,
    /// When each key was last put back (unix ms).
    restored: HashMap<Vec<u8>, u64>,
    file: KeptFile,
}

/// What a record of the state topic says about its key.
pub enum Seen<'a> {
    /// Decoded: its events.
    Events(&'a [Event]),
    /// Did not decode, or was refused.
    Bad,
}

impl Keeper {
    /// Open the kept records in `state_dir`, for `topic` (the state topic).
    pub fn open(state_dir: &Path, topic: &str) -> anyhow::Result<Keeper> {
        let mut file = KeptFile::open(&state_dir.join(KEPT_FILE))?;
        let kept = std::mem::take(&mut file.loaded);
        Ok(Keeper {
            topic: topic.to_owned(),
            inner: Arc::new(Mutex::new(Inner {
                kept,
                due: HashMap::new(),
                restored: HashMap::new(),
                file,
            })),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Keys kept.
    pub fn len(&self) -> usize {
        lock(&self.inner).kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The record kept for `key`.
    pub fn kept(&self, key: &[u8]) -> Option<Kept> {
        lock(&self.inner).kept.get(key).cloned()
    }

    /// Take note of `record`, read from the state topic.
    pub fn observe(&self, record: &Record, seen: Seen<'_>) {
        let Some(key) = record.key.as_deref() else {
            // Compaction keeps unkeyed records apart from every key.
            return;
        };
        // The version of a record that may be kept; the record itself is
        // copied only when it is the key's newest.
        let version = match (&seen, record.value.as_deref()) {
            (Seen::Events(events), Some(_)) => one_entity(events),
            _ => None,
        };
        let mut inner = lock(&self.inner);
        let held = inner.kept.get(key).map(|k| k.version.clone());
        match (version, held) {
            (Some(version), held) if held.as_ref().is_none_or(|h| version > *h) => {
                let new = Kept {
                    key: key.to_vec(),
                    value: record.value.clone().unwrap_or_default(),
                    signature: record.signature.as_ref().map(kept_signature),
                    version,
                };
                let Inner {
                    kept, due, file, ..
                } = &mut *inner;
                due.remove(key);
                if let Err(err) = file.append(&new) {
                    tracing::warn!("keeping the newest record of a state key failed: {err:#}");
                }
                kept.insert(key.to_vec(), new);
                if file.lines > 2 * kept.len() + 1024
                    && let Err(err) = file.rewrite(kept.values())
                {
                    tracing::warn!("compacting the kept state records failed: {err:#}");
                }
            }
            (Some(version), Some(held)) if version == held => {
                // The newest again (put back by a node, or a replay of it).
                inner.due.remove(key);
            }
            (_, Some(_)) => {
                if !inner.due.contains_key(key) {
                    let at = crate::event::now_ms() + jitter_ms();
                    inner.due.insert(key.to_vec(), at);
                    tracing::info!(topic = %record.topic, partition = record.partition,
                        offset = record.offset, key = %String::from_utf8_lossy(key),
                        "a record that is not the key's newest came last on the state topic; \
                         putting the newest back");
                }
            }
            (_, None) => {}
        }
    }

    /// Put back the records that are due, until `stop`; sync the file
    /// once a second.
    pub async fn run(
        self: Arc<Self>,
        restorer: Arc<dyn Restorer>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => break,
            }
            let due = self.take_due(crate::event::now_ms());
            for kept in due {
                match restorer.restore(&kept).await {
                    Ok(()) => {
                        metrics::counter!("herald_state_restored_total").increment(1);
                    }
                    Err(err) => {
                        tracing::warn!(key = %String::from_utf8_lossy(&kept.key),
                            "putting the newest record back failed, trying again: {err}");
                        let mut inner = lock(&self.inner);
                        inner.restored.remove(&kept.key);
                        inner
                            .due
                            .insert(kept.key.clone(), crate::event::now_ms() + 1000);
                    }
                }
            }
            let inner = self.inner.clone();
            let _ = tokio::task::spawn_blocking(move || lock(&inner).file.sync()).await;
        }
        let _ = lock(&self.inner).file.sync();
    }

    /// The kept records due by `now`, at most [`PER_SECOND`], each key at
    /// most once per [`PER_KEY`].
    fn take_due(&self, now: u64) -> Vec<Kept> {
        let mut inner = lock(&self.inner);
        let ready: Vec<Vec<u8>> = inner
            .due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| k.clone())
            .take(PER_SECOND)
            .collect();
        let mut out = Vec::new();
        for key in ready {
            if let Some(last) = inner.restored.get(&key).copied()
                && now < last + PER_KEY.as_millis() as u64
            {
                inner.due.insert(key, last + PER_KEY.as_millis() as u64);
                continue;
            }
            inner.due.remove(&key);
            if let Some(kept) = inner.kept.get(&key).cloned() {
                inner.restored.insert(key, now);
                out.push(kept);
            }
        }
        inner
            .restored
            .retain(|_, at| now < *at + PER_KEY.as_millis() as u64);
        out
    }
}

/// The version of a record about one entity: every event writes the same
/// entities (one network, or one certificate's domains), and the newest of
/// their versions. None for a record about several, or about none.
fn one_entity(events: &[Event]) -> Option<Version> {
    let first: Vec<Entity> = events.first()?.body.entities();
    if first.is_empty() || events.iter().any(|e| e.body.entities() != first) {
        return None;
    }
    events.iter().map(|e| Version::new(e.ts, &e.id)).max()
}

fn kept_signature(s: &Signature) -> KeptSignature {
    KeptSignature {
        key_id: s.key_id.clone(),
        signature: s.signature.clone(),
    }
}

fn jitter_ms() -> u64 {
    use rand_core::RngCore;
    rand_core::OsRng.next_u64() % JITTER.as_millis() as u64
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The kept records on disk: one JSON line per newer record, the last line
/// of a key winning; rewritten with one line per key when most lines are
/// superseded.
struct KeptFile {
    path: PathBuf,
    file: File,
    lines: usize,
    dirty: bool,
    /// What was read at open.
    loaded: HashMap<Vec<u8>, Kept>,
}

impl KeptFile {
    fn open(path: &Path) -> anyhow::Result<KeptFile> {
        let mut existed = true;
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                existed = false;
                Vec::new()
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let mut loaded: HashMap<Vec<u8>, Kept> = HashMap::new();
        let mut lines = 0;
        for line in text[..whole]
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
        {
            lines += 1;
            match serde_json::from_slice::<Kept>(line) {
                Ok(k) => {
                    if loaded.get(&k.key).is_none_or(|h| k.version > h.version) {
                        loaded.insert(k.key.clone(), k);
                    }
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), line = lines, "ignoring an unreadable line: {e}")
                }
            }
        }
        let mut f = KeptFile {
            path: path.to_owned(),
            file: durable::append(path)?,
            lines,
            dirty: false,
            loaded,
        };
        // A new file is made by the rewrite: 0600 from the start, since a
        // certificate's record may carry its (sealed) private key.
        if !existed || whole < text.len() || f.lines > 2 * f.loaded.len() + 1024 {
            let all: Vec<Kept> = f.loaded.values().cloned().collect();
            f.rewrite(all.iter())?;
        }
        Ok(f)
    }

    fn append(&mut self, kept: &Kept) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(kept)?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .with_context(|| format!("appending to {}", self.path.display()))?;
        self.lines += 1;
        self.dirty = true;
        Ok(())
    }

    fn sync(&mut self) -> anyhow::Result<()> {
        if self.dirty {
            self.file.sync_data()?;
            self.dirty = false;
        }
        Ok(())
    }

    fn rewrite<'a>(&mut self, all: impl Iterator<Item = &'a Kept>) -> anyhow::Result<()> {
        let mut out = Vec::new();
        let mut n = 0;
        for k in all {
            serde_json::to_writer(&mut out, k)?;
            out.push(b'\n');
            n += 1;
        }
        durable::replace_secret(&self.path, &out)?;
        self.file = durable::append(&self.path)?;
        self.lines = n;
        Ok(())
    }
}

mod b64 {
    use super::*;
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        B64.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Body, IpBlock};

    fn block(id: &str, ts: u64, ip: &str) -> Event {
        let mut e = Event::new(
            "t",
            Body::IpBlock(IpBlock {
                ip: ip.into(),
                action: crate::event::BlockAction::Block,
                reason: String::new(),
                expires_at: None,
            }),
        );
        e.id = id.into();
        e.ts = ts;
        e
    }

    fn record(offset: i64, key: &str, value: Option<&str>) -> Record {
        Record {
            topic: "herald.state".into(),
            partition: 0,
            offset,
            key: Some(key.as_bytes().to_vec()),
            value: value.map(|v| v.as_bytes().to_vec()),
            timestamp_ms: None,
            signature: Some(Signature {
                key_id: b"ops".to_vec(),
                signature: b"sig".to_vec(),
            }),
        }
    }

    #[test]
    fn an_older_bad_or_empty_record_last_puts_the_newest_back() {
        let dir = tempfile::tempdir().unwrap();
        let k = Keeper::open(dir.path(), "herald.state").unwrap();
        let key = "ip:203.0.113.7";
        // Past any jitter, and a key's pause between two put-backs apart.
        let at = |n: u64| crate::event::now_ms() + 10_000 + n * 60_000;
        k.observe(
            &record(0, key, Some("v1")),
            Seen::Events(&[block("a", 1, "203.0.113.7")]),
        );
        k.observe(
            &record(1, key, Some("v2")),
            Seen::Events(&[block("b", 2, "203.0.113.7/32")]),
        );
        assert_eq!(k.kept(key.as_bytes()).unwrap().value, b"v2");
        assert!(k.take_due(at(0)).is_empty(), "nothing is due yet");
        // A replay of v1 comes last: v2 is due, once.
        k.observe(
            &record(2, key, Some("v1")),
            Seen::Events(&[block("a", 1, "203.0.113.7")]),
        );
        k.observe(
            &record(3, key, Some("v1")),
            Seen::Events(&[block("a", 1, "203.0.113.7")]),
        );
        let due = k.take_due(at(1));
        assert_eq!(due.len(), 1);
        assert_eq!(
            (
                due[0].value.as_slice(),
                due[0].signature.as_ref().unwrap().signature.as_slice()
            ),
            (&b"v2"[..], &b"sig"[..])
        );
        // Someone else put it back first: nothing to do.
        for bad in [Seen::Bad, Seen::Events(&[])] {
            k.observe(&record(4, key, Some("junk")), bad);
            k.observe(
                &record(5, key, Some("v2")),
                Seen::Events(&[block("b", 2, "203.0.113.7")]),
            );
            assert!(k.take_due(at(2)).is_empty());
        }
        // A tombstone, and a bundle about two networks, come last: due.
        k.observe(&record(6, key, None), Seen::Bad);
        assert_eq!(k.take_due(at(3)).len(), 1);
        let two = [block("c", 3, "203.0.113.7"), block("d", 3, "198.51.100.1")];
        k.observe(&record(7, key, Some("two")), Seen::Events(&two));
        assert_eq!(k.take_due(at(4)).len(), 1);
        // Kept across a restart.
        let mut inner = lock(&k.inner);
        inner.file.sync().unwrap();
        drop(inner);
        let again = Keeper::open(dir.path(), "herald.state").unwrap();
        assert_eq!(again.kept(key.as_bytes()).unwrap().value, b"v2");
        assert_eq!(again.len(), 1);
    }
}
