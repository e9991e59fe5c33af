//! Dispatch: the records of one partition, in order, to the handlers that
//! subscribe to them, until every record is done.
//!
//! A record is done when every subscribed handler returned `ok` for its
//! events, or its failure went to the dead-letter topic. `retry` outcomes
//! and failed calls (traps, deadlines, memory) are retried with exponential
//! backoff while the partition waits; a handler that keeps failing sends the
//! event to the dead-letter topic and the partition moves on. A record that
//! cannot be decoded goes to the dead-letter topic at once. Nothing is
//! dropped silently.
//!
//! Retries keep order: when a handler answers `retry` for event k, events
//! k.. are offered again (not only k), so a later event of the same entity is
//! never left applied before an earlier one.

pub mod keeper;
pub mod pointers;
pub mod probe;
mod secrets;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::codec::{Decoder, Record};
use crate::config::Retry;
use crate::effects::Effects;
use crate::event::Event;
use crate::registry::HandlerStats;
use crate::sandbox::{CallError, Outcome};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One handler as dispatch sees it: a name, the kinds it takes, its
/// counters, and a call over a batch of events. The node's handlers are
/// sandboxed components; unit tests script them.
pub trait Handler: Send + Sync {
    fn name(&self) -> &str;
    fn subscribes_to(&self, kind: &str) -> bool;
    fn stats(&self) -> &HandlerStats;
    /// One outcome per event, or why the call as a whole failed.
    fn call<'a>(
        &'a self,
        events: &'a [&'a Event],
    ) -> BoxFuture<'a, Result<Vec<Outcome>, CallError>>;
}

/// The handlers of the dispatcher's delivery mode. Asked once per batch, so
/// a reload takes effect between batches and never within one.
pub trait Handlers: Send + Sync + 'static {
    fn current(&self) -> Vec<Arc<dyn Handler>>;
}

/// A record (or one event of it) that could not be handled.
#[derive(Debug)]
pub struct DeadLetter<'a> {
    pub original: &'a Record,
    /// The handler that failed; none when the record did not decode.
    pub handler: Option<&'a str>,
    pub error: String,
    pub attempts: u32,
    /// What to keep: the record's value, or, for one event out of a
    /// multi-event Stalwart record, that event in the JSON form.
    pub payload: Vec<u8>,
    /// Set when the payload was left out (the broker refused the letter
    /// whole): the size it had.
    pub payload_dropped: Option<usize>,
}

/// Why a dead letter was not written.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The broker is away or busy: the partition waits and tries again.
    #[error("{0}")]
    Transient(String),
    /// The broker refuses this letter as it is (too large, invalid): sending
    /// it again unchanged can never work.
    #[error("{0}")]
    Refused(String),
}

/// Where dead letters go: the producer, to `<topic>.dlq`.
pub trait DeadLetterSink: Send + Sync + 'static {
    fn send<'a>(&'a self, letter: DeadLetter<'a>) -> BoxFuture<'a, Result<(), SinkError>>;
}

/// The most events one handler call gets, and about the most decoded and not
/// yet handled per partition: a batch whose records hold more (Stalwart
/// records of many small events) is handled in parts, at record boundaries,
/// so memory follows this bound and not the records'.
pub const MAX_EVENTS_IN_FLIGHT: usize = 10_000;

/// The partition was given up (shutdown or revoke) before its batch was
/// done: nothing of it may be committed.
#[derive(Debug, PartialEq, Eq)]
pub struct Abandoned;

#[derive(Clone)]
pub struct Dispatcher {
    pub handlers: Arc<dyn Handlers>,
    /// Where the handlers' effects land; flushed before every commit.
    pub effects: Arc<dyn Effects>,
    pub retry: Retry,
    pub dead_letters: Arc<dyn DeadLetterSink>,
    pub decoder: Decoder,
    /// Events that took more handler publishes than this to come about are
    /// dead-lettered, not handled (`publish.maxHops`).
    pub max_hops: u32,
    /// Where every dead letter written is counted.
    pub recent: Arc<RecentLetters>,
    /// Whether another group of the cluster letters the records of a topic
    /// that do not decode, so that this one need not (see
    /// [`LetteredElsewhere`]); none: this dispatcher letters them all.
    pub lettered_elsewhere: Option<Arc<dyn LetteredElsewhere>>,
    /// Sees every record of the state topic (see [`keeper`]).
    pub keeper: Option<Arc<keeper::Keeper>>,
    /// A topic read only to letter what does not decode, its events handled
    /// by no handler of this dispatcher but [`Dispatcher::pointers`]:
    /// Stalwart's topic, for the shared group, so that its junk is lettered
    /// once per cluster too.
    pub only_letters: Option<String>,
    /// The one handler of the `only_letters` topic's registry pointers
    /// ([`pointers::Resolver`], when `stalwart.management` is set).
    pub pointers: Option<Arc<dyn Handler>>,
    /// Takes the `probe` events out of the stream (they are for no
    /// handler): the node's prober for its broadcast group, which answers
    /// them; none for the shared group, which only drops them.
    pub probes: Option<Arc<probe::Prober>>,
}

/// A record that no node can decode is the same junk on every node: one
/// letter per cluster is enough. The broadcast groups ask this before they
/// letter one: where the cluster's shared group also reads the topic (and
/// this node is in it, so the group exists), the shared group letters it,
/// once, and the broadcast groups only count it.
pub trait LetteredElsewhere: Send + Sync + 'static {
    fn lettered_elsewhere(&self, topic: &str) -> bool;
}

/// Dead letters per minute over the last hour, for `herald status`.
#[derive(Default)]
pub struct RecentLetters {
    /// (minute since the epoch, letters in it), newest last.
    minutes: std::sync::Mutex<std::collections::VecDeque<(u64, u64)>>,
}

impl RecentLetters {
    pub fn record(&self, now_ms: u64) {
        let minute = now_ms / 60_000;
        let mut m = self.minutes.lock().unwrap();
        match m.back_mut() {
            Some((last, n)) if *last == minute => *n += 1,
            _ => m.push_back((minute, 1)),
        }
        while m.front().is_some_and(|(first, _)| *first + 60 <= minute) {
            m.pop_front();
        }
    }

    /// Letters written in the last 60 minutes.
    pub fn last_hour(&self, now_ms: u64) -> u64 {
        let minute = now_ms / 60_000;
        let m = self.minutes.lock().unwrap();
        m.iter()
            .filter(|(at, _)| at + 60 > minute)
            .map(|(_, n)| n)
            .sum()
    }
}

/// Keep only the events of `events[start..]` that `keep`, in order.
fn retain_from(events: &mut Vec<Event>, start: usize, keep: impl Fn(&Event) -> bool) {
    let mut kept = start;
    for i in start..events.len() {
        if keep(&events[i]) {
            events.swap(kept, i);
            kept += 1;
        }
    }
    events.truncate(kept);
}

/// Dead letters of one batch written at once (see `Dispatcher::dead_letter_all`).
const LETTERS_IN_FLIGHT: usize = 64;

/// Default of `publish.maxHops`.
pub const DEFAULT_MAX_HOPS: u32 = 4;

impl Dispatcher {
    /// Handle `records` (one partition, in offset order). Returns once every
    /// record is done, or `Abandoned` if `stop` fired while waiting to retry.
    pub async fn handle(
        &self,
        records: &[Record],
        stop: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let handlers = self.handlers.current();
        let mut events = Vec::with_capacity(records.len());
        // Records that never became events, with why: their letters go out
        // together at the end of the batch (below).
        let mut undecodable: Vec<(&Record, String)> = Vec::new();
        for record in records {
            // Decoded straight onto the batch's events; this record's are
            // those past `start`.
            let start = events.len();
            let mut failure = self.decoder.decode_into(record, &mut events).err();
            let mut looped = false;
            if let Some(looping) = events[start..].iter().find(|e| e.hops > self.max_hops) {
                // A chain of handler publishes this long is a loop: end it
                // here, on every node, with a letter that says so.
                metrics::counter!("herald_hop_limit_total").increment(1);
                failure = Some(format!(
                    "{}/{}@{}: event `{}` came from {} handler publishes in a row, more than \
                     publish.maxHops ({}); not handled",
                    record.topic,
                    record.partition,
                    record.offset,
                    looping.id,
                    looping.hops,
                    self.max_hops
                ));
                events.truncate(start);
                looped = true;
            }
            // A loop's last event is refused on every node, whatever its
            // version: it is nothing to keep, and putting the key's newest
            // back would only run the loop again.
            if let Some(keeper) = self.keeper.as_deref()
                && *record.topic == *keeper.topic()
                && !looped
            {
                let seen = match failure {
                    None => keeper::Seen::Events(&events[start..]),
                    Some(_) => keeper::Seen::Bad,
                };
                keeper.observe(record, seen);
            }
            if self.only_letters.as_deref() == Some(&*record.topic) {
                match &self.pointers {
                    Some(p) => retain_from(&mut events, start, |e| p.subscribes_to(e.body.kind())),
                    None => events.truncate(start),
                }
            }
            if events[start..].iter().any(|e| e.body.is_host_only()) {
                if let Some(prober) = &self.probes {
                    events[start..]
                        .iter()
                        .filter(|e| e.body.is_host_only())
                        .for_each(|e| prober.seen(e));
                }
                retain_from(&mut events, start, |e| !e.body.is_host_only());
            }
            if events.len() > MAX_EVENTS_IN_FLIGHT && start > 0 {
                // The earlier records' events go first, on their own.
                self.run_all(&handlers, &events[..start], records, stop)
                    .await?;
                events.drain(..start);
            }
            if let Some(error) = failure {
                if self
                    .lettered_elsewhere
                    .as_ref()
                    .is_some_and(|e| e.lettered_elsewhere(&record.topic))
                {
                    metrics::counter!("herald_undecodable_total", "lettered" => "by-shared-group")
                        .increment(1);
                    tracing::debug!(topic = %record.topic, partition = record.partition,
                        offset = record.offset, %error, "not decodable; the shared group letters it");
                } else {
                    metrics::counter!("herald_undecodable_total", "lettered" => "here")
                        .increment(1);
                    undecodable.push((record, error));
                }
            }
        }
        self.run_all(&handlers, &events, records, stop).await?;
        // The letters are made a window at a time, so that at most
        // LETTERS_IN_FLIGHT payloads are copied at once.
        for window in undecodable.chunks(LETTERS_IN_FLIGHT) {
            let mut letters = Vec::with_capacity(window.len());
            for (record, error) in window {
                letters.push(DeadLetter {
                    original: record,
                    handler: None,
                    error: error.clone(),
                    attempts: 0,
                    payload: record.value.clone().unwrap_or_default(),
                    payload_dropped: None,
                });
            }
            self.dead_letter_all(letters, stop).await?;
        }
        Ok(())
    }

    /// Send `letters`, several in flight at once: a burst of junk or of
    /// rejected events costs a few broker round trips, not one per record.
    /// Their order does not matter (nothing was applied for them); all are
    /// written before this returns, so before the offsets are committed.
    async fn dead_letter_all(
        &self,
        letters: Vec<DeadLetter<'_>>,
        stop: &CancellationToken,
    ) -> Result<(), Abandoned> {
        use futures::StreamExt;
        let mut waiting = letters.into_iter();
        let mut in_flight = futures::stream::FuturesUnordered::new();
        loop {
            while in_flight.len() < LETTERS_IN_FLIGHT {
                let Some(letter) = waiting.next() else { break };
                in_flight.push(self.dead_letter(letter, stop));
            }
            match in_flight.next().await {
                Some(sent) => sent?,
                None => return Ok(()),
            }
        }
    }

    /// Every handler over the events it subscribes to, handler by handler.
    async fn run_all(
        &self,
        handlers: &[Arc<dyn Handler>],
        events: &[Event],
        records: &[Record],
        stop: &CancellationToken,
    ) -> Result<(), Abandoned> {
        if events.is_empty() {
            return Ok(());
        }
        let letters_only = |e: &Event| self.only_letters.as_deref() == Some(&*e.position.topic);
        for handler in handlers {
            let mine: Vec<&Event> = events
                .iter()
                .filter(|e| handler.subscribes_to(e.body.kind()) && !letters_only(e))
                .collect();
            if !mine.is_empty() {
                self.run(handler.as_ref(), &mine, records, stop).await?;
            }
        }
        if let Some(pointers) = &self.pointers {
            // What the decode kept of the `only_letters` topic is for it alone.
            let mine: Vec<&Event> = events.iter().filter(|e| letters_only(e)).collect();
            if !mine.is_empty() {
                self.run(pointers.as_ref(), &mine, records, stop).await?;
            }
        }
        Ok(())
    }

    /// Run one handler over its events of the batch, retrying as needed.
    async fn run(
        &self,
        handler: &dyn Handler,
        events: &[&Event],
        records: &[Record],
        stop: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let name = handler.name();
        let stats = handler.stats();
        let mut next = 0;
        let mut attempts = 0u32;
        // After a failed call of several events, go one event at a time
        // until past the culprit, so one bad event does not fail the others.
        let mut single = false;
        while next < events.len() {
            let end = if single { next + 1 } else { events.len() };
            let chunk = &events[next..end];
            let started = Instant::now();
            let result = handler.call(chunk).await;
            metrics::histogram!("herald_handler_call_seconds", "handler" => name.to_string())
                .record(started.elapsed().as_secs_f64());
            let failure = match result {
                Ok(outcomes) => {
                    let mut retry_at = None;
                    // Counted once per call: a metric lookup per event
                    // costs more than the event's own bookkeeping.
                    let mut handled = 0;
                    let mut rejected = Vec::new();
                    for (i, outcome) in outcomes.into_iter().enumerate() {
                        match outcome {
                            Outcome::Ok => handled += 1,
                            Outcome::Reject(reason) => {
                                count_n(
                                    "herald_events_handled_total",
                                    name,
                                    &stats.handled,
                                    handled,
                                );
                                handled = 0;
                                count("herald_events_rejected_total", name, &stats.rejected);
                                rejected.push(self.letter(
                                    chunk[i],
                                    records,
                                    name,
                                    reason,
                                    attempts + 1,
                                ));
                            }
                            Outcome::Retry(reason) => {
                                retry_at = Some((i, reason));
                                break;
                            }
                        }
                    }
                    count_n("herald_events_handled_total", name, &stats.handled, handled);
                    self.dead_letter_all(rejected, stop).await?;
                    match retry_at {
                        None => {
                            next = end;
                            attempts = 0;
                            single = false;
                            continue;
                        }
                        Some((i, reason)) => {
                            next += i;
                            reason
                        }
                    }
                }
                Err(e) => {
                    stats.failed_calls.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("herald_traps_total", "handler" => name.to_string(),
                        "kind" => e.kind.as_str())
                    .increment(1);
                    tracing::warn!(handler = name, events = chunk.len(), error = %e, "handler call failed");
                    if chunk.len() > 1 {
                        single = true;
                        continue;
                    }
                    e.to_string()
                }
            };
            // events[next] failed (retry outcome or failed call).
            attempts += 1;
            if attempts > self.retry.attempts {
                count(
                    "herald_events_dead_lettered_total",
                    name,
                    &stats.dead_lettered,
                );
                let letter = self.letter(events[next], records, name, failure, attempts);
                self.dead_letter(letter, stop).await?;
                next += 1;
                attempts = 0;
                single = false;
                continue;
            }
            count("herald_events_retried_total", name, &stats.retried);
            let delay = self.retry.delay(attempts);
            tracing::info!(handler = name, event = %events[next].id, attempt = attempts,
                ?delay, reason = %failure, "retrying");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return Err(Abandoned),
            }
        }
        Ok(())
    }

    fn letter<'a>(
        &self,
        event: &Event,
        records: &'a [Record],
        handler: &'a str,
        error: String,
        attempts: u32,
    ) -> DeadLetter<'a> {
        let original = records
            .iter()
            .find(|r| r.offset == event.position.offset && r.topic == event.position.topic)
            .expect("every event comes from a record of its batch");
        let payload = if self.decoder.is_stalwart(&original.topic) {
            // One event of a Stalwart batch: keep that event, readable.
            event.to_json().to_string().into_bytes()
        } else {
            original.value.clone().unwrap_or_default()
        };
        DeadLetter {
            original,
            handler: Some(handler),
            error,
            attempts,
            payload,
            payload_dropped: None,
        }
    }

    /// Send a dead letter; the record is not committed before. While the
    /// broker is away the partition waits and tries again. A letter the
    /// broker refuses as it is (too large) goes again without its payload,
    /// a header saying so; should even that be refused, it is logged and
    /// counted as lost, and the partition moves on: no record may stop it.
    async fn dead_letter(
        &self,
        mut letter: DeadLetter<'_>,
        stop: &CancellationToken,
    ) -> Result<(), Abandoned> {
        letter.error = crate::bounded::reason(letter.error);
        // A plaintext private key never reaches the dead-letter topic or the
        // log, whoever put it in the record or the error.
        if secrets::text_holds_key(&letter.error) {
            letter.error = "[an error text that held a private key, withheld]".into();
        }
        if secrets::payload_holds_key(&letter.payload) {
            letter.error += " (payload withheld: it holds a plaintext private key)";
            letter.payload_dropped = Some(letter.payload.len());
            letter.payload = Vec::new();
        }
        tracing::warn!(topic = %letter.original.topic, partition = letter.original.partition,
            offset = letter.original.offset, handler = letter.handler.unwrap_or("-"),
            error = %letter.error, "dead-lettering");
        let mut attempt = 0;
        loop {
            let again = DeadLetter {
                original: letter.original,
                handler: letter.handler,
                error: letter.error.clone(),
                attempts: letter.attempts,
                payload: letter.payload.clone(),
                payload_dropped: letter.payload_dropped,
            };
            match self.dead_letters.send(again).await {
                Ok(()) => {
                    self.recent.record(crate::event::now_ms());
                    return Ok(());
                }
                Err(SinkError::Refused(e)) if letter.payload_dropped.is_none() => {
                    tracing::warn!(error = %e, bytes = letter.payload.len(),
                        "the dead-letter topic refused the letter; sending it without its payload");
                    letter.payload_dropped = Some(letter.payload.len());
                    letter.payload = Vec::new();
                }
                Err(SinkError::Refused(e)) => {
                    let o = letter.original;
                    tracing::error!(topic = %o.topic, partition = o.partition, offset = o.offset,
                        error = %e, "the dead-letter topic refused even the bare letter; it is lost");
                    metrics::counter!("herald_dead_letters_lost_total").increment(1);
                    return Ok(());
                }
                Err(SinkError::Transient(e)) => {
                    attempt += 1;
                    tracing::error!(error = %e, attempt, "cannot write to the dead-letter topic; the partition waits");
                    tokio::select! {
                        _ = tokio::time::sleep(self.retry.delay(attempt.min(16))) => {}
                        _ = stop.cancelled() => return Err(Abandoned),
                    }
                }
            }
        }
    }
}

fn count(name: &'static str, handler: &str, stat: &AtomicU64) {
    count_n(name, handler, stat, 1);
}

fn count_n(name: &'static str, handler: &str, stat: &AtomicU64, n: u64) {
    if n > 0 {
        stat.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(name, "handler" => handler.to_string()).increment(n);
    }
}

#[cfg(test)]
mod tests;
