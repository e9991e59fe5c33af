//! The record of the event ids this node delivered a push for: in memory,
//! and appended to `push-delivered.log` in the state directory before a
//! delivery is reported, so that a replayed event is not delivered twice.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::durable;
/// Name of the record of delivered event ids in the state directory.
pub const LOG_FILE: &str = "push-delivered.log";
/// How long a delivered id is remembered.
pub(super) const KEEP: Duration = Duration::from_secs(7 * 24 * 3600);
/// The most ids remembered; the oldest are forgotten first.
pub(super) const MAX_IDS: usize = 1_000_000;
/// While running, the file is compacted only once it has at least this many
/// lines (and more than twice as many as are remembered).
#[cfg(not(test))]
pub(super) const COMPACT_MIN_LINES: usize = 4096;
#[cfg(test)]
pub(super) const COMPACT_MIN_LINES: usize = 64;

/// The record of delivered event ids, in memory and on disk.
pub(super) struct Log {
    pub(super) path: PathBuf,
    /// Open for appending.
    pub(super) file: File,
    /// Lines in the file.
    pub(super) lines: usize,
    /// Id → unix ms of its delivery.
    pub(super) delivered: HashMap<Arc<str>, u64>,
    /// The same ids, oldest first, to forget them in order.
    pub(super) order: VecDeque<(u64, Arc<str>)>,
}

impl Log {
    pub(super) fn open(dir: &Path, now: u64) -> anyhow::Result<Log> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(LOG_FILE);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        // Everything after the last newline is a torn append.
        let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let torn = whole < text.len();
        if torn {
            tracing::warn!(file = %path.display(), "ignoring a torn last line");
        }
        let cutoff = now.saturating_sub(KEEP.as_millis() as u64);
        let mut lines = 0;
        let mut unreadable = 0;
        // Id → (unix ms, line) of its latest record.
        let mut latest: HashMap<&str, (u64, usize)> = HashMap::new();
        for line in text[..whole].split(|&b| b == b'\n') {
            if line.is_empty() {
                continue;
            }
            lines += 1;
            let Some((ms, id)) = std::str::from_utf8(line)
                .ok()
                .and_then(|l| l.split_once(' '))
                .and_then(|(ms, id)| Some((ms.parse::<u64>().ok()?, id)))
                .filter(|(_, id)| !id.is_empty())
            else {
                unreadable += 1;
                continue;
            };
            if ms >= cutoff {
                let at = latest.entry(id).or_insert((ms, lines));
                *at = (*at).max((ms, lines));
            }
        }
        if unreadable > 0 {
            tracing::warn!(file = %path.display(), unreadable, "ignoring unreadable lines");
        }
        // Oldest first, in file order for the same millisecond.
        let mut kept: Vec<(u64, usize, &str)> = latest
            .into_iter()
            .map(|(id, (ms, line))| (ms, line, id))
            .collect();
        kept.sort_unstable();
        if kept.len() > MAX_IDS {
            kept.drain(..kept.len() - MAX_IDS);
        }
        let order: VecDeque<(u64, Arc<str>)> = kept
            .into_iter()
            .map(|(ms, _, id)| (ms, Arc::from(id)))
            .collect();
        let delivered = order.iter().map(|(ms, id)| (id.clone(), *ms)).collect();
        drop(text);

        let file = durable::append(&path)?;
        let mut log = Log {
            path,
            file,
            lines,
            delivered,
            order,
        };
        if (lines - log.order.len()) * 2 > lines {
            log.rewrite()?;
        } else if torn {
            // Cut the torn bytes, so that the next append starts a new line.
            log.file
                .set_len(whole as u64)
                .and_then(|()| log.file.sync_all())
                .with_context(|| format!("truncating {}", log.path.display()))?;
        }
        Ok(log)
    }

    pub(super) fn contains(&self, id: &str) -> bool {
        self.delivered.contains_key(id)
    }

    /// Remember `id`, delivered at `now`: in memory at once, and appended to
    /// the file and synced. The memory is trimmed and, when most of the file
    /// is no longer needed, the file rewritten.
    pub(super) fn record(&mut self, id: &str, now: u64) -> anyhow::Result<()> {
        let id: Arc<str> = Arc::from(id);
        self.delivered.insert(id.clone(), now);
        self.order.push_back((now, id.clone()));
        self.forget(now);

        self.lines += 1;
        self.file
            .write_all(format!("{now} {id}\n").as_bytes())
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("appending to {}", self.path.display()))?;

        if self.lines >= COMPACT_MIN_LINES
            && self.lines > 2 * self.order.len()
            && let Err(err) = self.rewrite()
        {
            // The append above is synced: only the compaction waits.
            tracing::warn!(file = %self.path.display(), "compacting failed: {err:#}");
        }
        Ok(())
    }

    /// Forget the ids older than [`KEEP`], and the oldest beyond [`MAX_IDS`].
    pub(super) fn forget(&mut self, now: u64) {
        let cutoff = now.saturating_sub(KEEP.as_millis() as u64);
        while let Some((ms, _)) = self.order.front()
            && (*ms < cutoff || self.order.len() > MAX_IDS)
        {
            let (ms, id) = self.order.pop_front().expect("front exists");
            if self.delivered.get(&id) == Some(&ms) {
                self.delivered.remove(&id);
            }
        }
    }

    /// Write the remembered ids to a new file and rename it into place.
    pub(super) fn rewrite(&mut self) -> anyhow::Result<()> {
        let mut out = Vec::with_capacity(self.order.len() * 48);
        for (ms, id) in &self.order {
            writeln!(out, "{ms} {id}")?;
        }
        durable::replace(&self.path, &out)?;
        self.file = durable::append(&self.path)?;
        self.lines = self.order.len();
        Ok(())
    }
}
