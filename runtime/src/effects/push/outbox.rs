//! The push outbox: deliveries that leave the partition's order.
//!
//! Any mail user chooses their push endpoint, and one that accepts
//! connections and never answers would hold the partition for a whole retry
//! schedule if the handler call waited for it. So the handler call only
//! checks the message (endpoint, keys, topic: what can be refused at once
//! is refused at once) and hands it to the outbox, which makes it durable
//! (appended and synced to `push-outbox.log` in the state directory before
//! the call returns, so the offset commit that follows never loses it) and
//! delivers it in a task of its own. Push order across subscriptions does
//! not matter, so nothing is lost by that; what one subscription costs the
//! others is bounded instead:
//!
//! - at most [`PER_ORIGIN_CONCURRENCY`] requests in flight per push service
//!   origin, so a tarpit holds only its own origin's slots;
//! - a circuit breaker per origin: after a transient failure (timeout, 429,
//!   5xx, network) the origin is left alone until the failed job's next
//!   retry, and every other message for it waits as well, instead of each
//!   trying it again;
//! - at most [`PER_ORIGIN_WAITING`] messages waiting per origin (more are
//!   refused as `invalid`, so the handler rejects them and they end as
//!   counted dead letters) and [`MAX_WAITING`] in all (more are
//!   `transient`: the partition waits, which is backpressure, not loss);
//! - a message is retried (1 s, 2 s, 4 s… up to 5 min apart, each try
//!   being one [`PushClient::deliver`] call with its own short retries)
//!   until its `TTL` has passed, at least [`MIN_LIFETIME`] and at most
//!   [`MAX_LIFETIME`] after it was queued: past its TTL the push service
//!   would drop it anyway.
//!
//! How a message ends is counted in `herald_push_deliveries_total{status}`
//! (by [`PushClient::deliver`]; `expired` for one whose lifetime ran out)
//! and logged with its event id; a subscription found gone is reported on
//! the channel [`Outbox::open`] returns, for the node to publish. The
//! file holds one line per message queued (`+ <json>`) and per message
//! ended (`- <event id>`); at open the messages not ended are queued again,
//! and the file is rewritten with only them when most of it is ended.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};

use super::{Delivered, Message, PushClient, lock};
use crate::durable;
use crate::effects::EffectError;
use crate::event::{PushKeys, Urgency, now_ms};

/// Name of the outbox in the state directory.
pub const OUTBOX_FILE: &str = "push-outbox.log";
/// Requests in flight at once to one push service origin.
pub const PER_ORIGIN_CONCURRENCY: usize = 4;
/// Messages waiting for one origin before more are refused.
#[cfg(not(test))]
pub const PER_ORIGIN_WAITING: usize = 1_000;
#[cfg(test)]
pub const PER_ORIGIN_WAITING: usize = 8;
/// Messages waiting in all before the handler call is asked to retry.
pub const MAX_WAITING: usize = 10_000;
/// The shortest time a message is tried for, whatever its TTL.
pub const MIN_LIFETIME: Duration = Duration::from_secs(30);
/// The longest time a message is tried for, whatever its TTL.
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LONGEST_RETRY: Duration = Duration::from_secs(300);

/// A message as the outbox keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Queued {
    pub event_id: String,
    pub account_id: u32,
    pub endpoint: String,
    pub payload: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<PushKeys>,
    pub ttl: u32,
    pub urgency: Urgency,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Unix ms when it was queued.
    pub queued_ms: u64,
}

impl Queued {
    fn message(&self) -> Message<'_> {
        Message {
            endpoint: &self.endpoint,
            payload: self.payload.as_bytes(),
            keys: self.keys.as_ref(),
            ttl: self.ttl,
            urgency: self.urgency,
            topic: self.topic.as_deref(),
        }
    }

    /// Unix ms after which it is no longer tried.
    fn deadline_ms(&self) -> u64 {
        let life = Duration::from_secs(self.ttl.into()).clamp(MIN_LIFETIME, MAX_LIFETIME);
        self.queued_ms.saturating_add(life.as_millis() as u64)
    }
}

/// A subscription the push service said is gone (404/410).
#[derive(Debug)]
pub struct Gone {
    pub event_id: String,
    pub account_id: u32,
    pub endpoint: String,
    pub why: String,
}

/// What [`Outbox::submit`] did with a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Durably queued now.
    Queued,
    /// Already queued, or already delivered by this node: nothing to do.
    Before,
}

pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    client: PushClient,
    file: Mutex<OutboxFile>,
    origins: Mutex<HashMap<String, Arc<Origin>>>,
    gone: mpsc::UnboundedSender<Gone>,
}

/// One push service origin: its request slots and breaker.
struct Origin {
    slots: Semaphore,
    /// Messages queued for it and not ended.
    waiting: Mutex<usize>,
    /// Unix ms before which nobody tries it (the breaker is open).
    closed_until: Mutex<u64>,
}

struct OutboxFile {
    path: PathBuf,
    file: File,
    lines: usize,
    /// The messages not ended, by event id.
    pending: HashMap<String, Queued>,
}

impl Outbox {
    /// Open the outbox in `state_dir` and queue again the messages a
    /// previous run left undelivered. Must be called within a tokio
    /// runtime. The receiver gets the subscriptions found gone.
    pub fn open(
        state_dir: &Path,
        client: PushClient,
    ) -> anyhow::Result<(Outbox, mpsc::UnboundedReceiver<Gone>)> {
        let file = OutboxFile::open(&state_dir.join(OUTBOX_FILE))?;
        let resumed: Vec<Queued> = file.pending.values().cloned().collect();
        let (tx, rx) = mpsc::unbounded_channel();
        let outbox = Outbox {
            inner: Arc::new(Inner {
                client,
                file: Mutex::new(file),
                origins: Mutex::new(HashMap::new()),
                gone: tx,
            }),
        };
        if !resumed.is_empty() {
            tracing::info!(
                messages = resumed.len(),
                "resuming push deliveries queued before the restart"
            );
        }
        for queued in resumed {
            match origin_of(&queued.endpoint) {
                Some(origin) => outbox.start(origin, queued),
                None => outbox.inner.end(&queued.event_id),
            }
        }
        Ok((outbox, rx))
    }

    /// Messages queued and not ended.
    pub fn waiting(&self) -> usize {
        lock(&self.inner.file).pending.len()
    }

    /// Push service origins with messages waiting.
    pub fn origins(&self) -> usize {
        lock(&self.inner.origins).len()
    }

    /// Check `queued` and queue it: refused at once if it can never be sent
    /// ([`EffectError::Invalid`]) or its origin has too many waiting; asked to
    /// come back later ([`EffectError::Transient`]) when the outbox is full
    /// or the disk refuses it.
    pub async fn submit(&self, queued: Queued) -> Result<Submitted, EffectError> {
        let origin = self
            .inner
            .client
            .check(&queued.event_id, &queued.message())?;
        if self.inner.client.delivered(&queued.event_id) {
            return Ok(Submitted::Before);
        }
        {
            let file = lock(&self.inner.file);
            if file.pending.contains_key(&queued.event_id) {
                return Ok(Submitted::Before);
            }
            if file.pending.len() >= MAX_WAITING {
                return Err(EffectError::Transient(format!(
                    "the push outbox holds {MAX_WAITING} undelivered messages"
                )));
            }
        }
        let slot = self.inner.claim(&origin, PER_ORIGIN_WAITING).ok_or_else(|| {
            EffectError::Invalid(format!(
                "the push service at {origin} already has {PER_ORIGIN_WAITING} undelivered messages waiting"
            ))
        })?;
        let inner = self.inner.clone();
        let line = queued.clone();
        let written = tokio::task::spawn_blocking(move || lock(&inner.file).queue(line))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| format!("{e:#}")));
        match written {
            Ok(true) => {}
            Ok(false) => {
                self.inner.release(&origin);
                return Ok(Submitted::Before);
            }
            Err(why) => {
                self.inner.release(&origin);
                return Err(EffectError::Transient(format!(
                    "queueing the push failed: {why}"
                )));
            }
        }
        metrics::gauge!("herald_push_waiting").increment(1.0);
        self.spawn(origin, slot, queued);
        Ok(Submitted::Queued)
    }

    /// Start delivering a message already in the file (whatever its
    /// origin's count: it was admitted before the restart).
    fn start(&self, origin: String, queued: Queued) {
        let slot = self
            .inner
            .claim(&origin, usize::MAX)
            .expect("no bound to reach");
        metrics::gauge!("herald_push_waiting").increment(1.0);
        self.spawn(origin, slot, queued);
    }

    fn spawn(&self, origin: String, slot: Arc<Origin>, queued: Queued) {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            inner.deliver(&origin, &slot, &queued).await;
            inner.release(&origin);
            metrics::gauge!("herald_push_waiting").decrement(1.0);
            let (i, id) = (inner.clone(), queued.event_id.clone());
            // Syncing the end is blocking work.
            let _ = tokio::task::spawn_blocking(move || i.end(&id)).await;
        });
    }
}

impl Inner {
    /// Count one more message waiting for `origin`, unless it has `most`
    /// already.
    fn claim(&self, origin: &str, most: usize) -> Option<Arc<Origin>> {
        let mut origins = lock(&self.origins);
        let slot = origins.entry(origin.to_owned()).or_insert_with(new_origin);
        let mut waiting = lock(&slot.waiting);
        if *waiting >= most {
            return None;
        }
        *waiting += 1;
        drop(waiting);
        Some(slot.clone())
    }

    /// One message for `origin` fewer; an origin with none left is
    /// forgotten, breaker and all (under the same lock as [`Inner::claim`],
    /// so no message is counted on a forgotten one): its breaker held back
    /// only messages that were waiting, and one entry per push service ever
    /// seen would otherwise pile up.
    fn release(&self, origin: &str) {
        let mut origins = lock(&self.origins);
        let Some(slot) = origins.get(origin) else {
            return;
        };
        let mut waiting = lock(&slot.waiting);
        *waiting = waiting.saturating_sub(1);
        let idle = *waiting == 0;
        drop(waiting);
        if idle {
            origins.remove(origin);
        }
    }

    /// Try `queued` until it is delivered, refused or out of time.
    async fn deliver(&self, origin: &str, slot: &Origin, queued: &Queued) {
        let id = queued.event_id.as_str();
        let deadline = queued.deadline_ms();
        let mut wait = FIRST_RETRY;
        loop {
            // The breaker: while it is open nobody tries this origin.
            loop {
                let until = *lock(&slot.closed_until);
                let now = now_ms();
                if until <= now {
                    break;
                }
                if until >= deadline {
                    return expired(
                        id,
                        origin,
                        "its push service was failing until past its TTL",
                    );
                }
                tokio::time::sleep(Duration::from_millis(until - now)).await;
            }
            let result = {
                let _slot = slot.slots.acquire().await.expect("never closed");
                self.client.deliver(id, &queued.message()).await
            };
            match result {
                Ok(Delivered::Now { .. } | Delivered::Before) => {
                    *lock(&slot.closed_until) = 0;
                    return;
                }
                Err(EffectError::Gone(why)) => {
                    let _ = self.gone.send(Gone {
                        event_id: id.to_owned(),
                        account_id: queued.account_id,
                        endpoint: queued.endpoint.clone(),
                        why,
                    });
                    return;
                }
                // Counted by the client; said louder here, as nobody else
                // hears of it.
                Err(EffectError::Invalid(why) | EffectError::Denied(why)) => {
                    tracing::warn!(event_id = id, origin, %why, "push refused, not tried again");
                    return;
                }
                Err(EffectError::Transient(why)) => {
                    let next = now_ms().saturating_add(wait.as_millis() as u64);
                    if next >= deadline {
                        return expired(id, origin, &why);
                    }
                    {
                        let mut until = lock(&slot.closed_until);
                        *until = (*until).max(next);
                    }
                    tracing::debug!(event_id = id, origin, ?wait, %why, "push will be retried");
                    wait = (wait * 2).min(LONGEST_RETRY);
                }
            }
        }
    }

    /// Mark `id` ended in the file.
    fn end(&self, id: &str) {
        if let Err(err) = lock(&self.file).end(id) {
            // Worst case the message is tried again after a restart, and the
            // delivered-ids record answers it without a request.
            tracing::warn!(event_id = id, "recording the end of a push failed: {err:#}");
        }
    }
}

fn new_origin() -> Arc<Origin> {
    Arc::new(Origin {
        slots: Semaphore::new(PER_ORIGIN_CONCURRENCY),
        waiting: Mutex::new(0),
        closed_until: Mutex::new(0),
    })
}

fn expired(id: &str, origin: &str, why: &str) {
    metrics::counter!("herald_push_deliveries_total", "status" => "expired").increment(1);
    tracing::warn!(event_id = id, origin, %why, "push given up: its time to live ran out");
}

/// The `scheme://host:port` a breaker and a slot count belong to.
pub(super) fn origin_of(endpoint: &str) -> Option<String> {
    let url = reqwest::Url::parse(endpoint).ok()?;
    Some(url.origin().ascii_serialization()).filter(|o| o != "null")
}

impl OutboxFile {
    fn open(path: &Path) -> anyhow::Result<OutboxFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut existed = true;
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                existed = false;
                Vec::new()
            }
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let mut pending = HashMap::new();
        let mut ended = HashSet::new();
        let (mut lines, mut unreadable) = (0, 0);
        for line in text[..whole]
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
        {
            lines += 1;
            match line.split_first() {
                Some((b'+', rest)) => match serde_json::from_slice::<Queued>(rest.trim_ascii()) {
                    Ok(q) => {
                        ended.remove(&q.event_id);
                        pending.insert(q.event_id.clone(), q);
                    }
                    Err(_) => unreadable += 1,
                },
                Some((b'-', rest)) => {
                    let id = String::from_utf8_lossy(rest.trim_ascii()).into_owned();
                    pending.remove(&id);
                    ended.insert(id);
                }
                _ => unreadable += 1,
            }
        }
        if unreadable > 0 || whole < text.len() {
            tracing::warn!(file = %path.display(), unreadable, torn = whole < text.len(),
                "ignoring unreadable lines of the push outbox");
        }
        let mut out = OutboxFile {
            path: path.to_owned(),
            file: durable::append(path)?,
            lines,
            pending,
        };
        // A new file is made by the rewrite, so it is 0600 from the start.
        if !existed || whole < text.len() || out.lines > out.pending.len() {
            out.rewrite()?;
        }
        Ok(out)
    }

    /// Append `queued`; false if it was already pending.
    fn queue(&mut self, queued: Queued) -> anyhow::Result<bool> {
        if self.pending.contains_key(&queued.event_id) {
            return Ok(false);
        }
        let mut line = b"+ ".to_vec();
        serde_json::to_writer(&mut line, &queued)?;
        line.push(b'\n');
        self.append(&line)?;
        self.pending.insert(queued.event_id.clone(), queued);
        Ok(true)
    }

    fn end(&mut self, id: &str) -> anyhow::Result<()> {
        if self.pending.remove(id).is_none() {
            return Ok(());
        }
        self.append(format!("- {id}\n").as_bytes())?;
        if self.lines >= 4096 && self.lines > 2 * self.pending.len() {
            self.rewrite()?;
        }
        Ok(())
    }

    fn append(&mut self, line: &[u8]) -> anyhow::Result<()> {
        self.lines += 1;
        self.file
            .write_all(line)
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("appending to {}", self.path.display()))
    }

    fn rewrite(&mut self) -> anyhow::Result<()> {
        let mut out = Vec::new();
        for queued in self.pending.values() {
            out.extend_from_slice(b"+ ");
            serde_json::to_writer(&mut out, queued)?;
            out.push(b'\n');
        }
        // The payloads are the subscribers' notifications: owner-only.
        durable::replace_secret(&self.path, &out)?;
        self.file = durable::append(&self.path)?;
        self.lines = self.pending.len();
        Ok(())
    }
}
