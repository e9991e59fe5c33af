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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::codec::stalwart;
use crate::config::Retry;
use crate::effects::Effects;
use crate::event::{Event, Position};
use crate::manifest::Mode;
use crate::registry::Registry;
use crate::sandbox::{Loaded, Outcome, Sandbox};

/// One Kafka record, detached from the consumer.
#[derive(Clone, Debug)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub timestamp_ms: Option<i64>,
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
}

/// Where dead letters go: the producer, to `<topic>.dlq`.
pub trait DeadLetterSink: Send + Sync + 'static {
    fn send<'a>(
        &'a self,
        letter: DeadLetter<'a>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}

/// How records become events.
#[derive(Clone, Debug)]
pub struct Decoding {
    /// Stalwart's topic and this node's Stalwart node id, when consuming it.
    pub stalwart: Option<(String, u16)>,
}

/// The partition was given up (shutdown or revoke) before its batch was
/// done: nothing of it may be committed.
#[derive(Debug, PartialEq, Eq)]
pub struct Abandoned;

pub struct Dispatcher {
    pub sandbox: Arc<Sandbox>,
    pub effects: Arc<dyn Effects>,
    pub registry: Arc<Registry>,
    pub mode: Mode,
    pub retry: Retry,
    pub dead_letters: Arc<dyn DeadLetterSink>,
    pub decoding: Decoding,
}

impl Dispatcher {
    /// Handle `records` (one partition, in offset order). Returns once every
    /// record is done, or `Abandoned` if `stop` fired while waiting to retry.
    pub async fn handle(
        &self,
        records: &[Record],
        stop: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let mut events = Vec::with_capacity(records.len());
        for record in records {
            match self.decode(record) {
                Ok(decoded) => events.extend(decoded),
                Err((kept, error)) => {
                    events.extend(kept);
                    let letter = DeadLetter {
                        original: record,
                        handler: None,
                        error,
                        attempts: 0,
                        payload: record.value.clone().unwrap_or_default(),
                    };
                    self.dead_letter(letter, stop).await?;
                }
            }
        }
        if events.is_empty() {
            return Ok(());
        }
        let handlers = self.registry.snapshot(self.mode);
        for handler in handlers.iter() {
            let mine: Vec<&Event> = events
                .iter()
                .filter(|e| handler.manifest.subscribes_to(e.body.kind()))
                .collect();
            if !mine.is_empty() {
                self.run(handler, &mine, records, stop).await?;
            }
        }
        Ok(())
    }

    /// Decode one record into its events. On error, the events decoded
    /// before it (Stalwart batches) and the reason.
    fn decode(&self, r: &Record) -> Result<Vec<Event>, (Vec<Event>, String)> {
        let Some(value) = &r.value else {
            return Err((vec![], "record has no value".into()));
        };
        let at =
            |e: &dyn std::fmt::Display| format!("{}/{}@{}: {e}", r.topic, r.partition, r.offset);
        let position = Position {
            topic: r.topic.clone(),
            partition: r.partition,
            offset: r.offset,
        };
        if let Some((topic, own)) = &self.decoding.stalwart
            && *topic == r.topic
        {
            let decoded = stalwart::decode(value).map_err(|e| (vec![], at(&e)))?;
            if decoded.node_id == *own {
                // Our own batch, echoed back by the topic.
                return Ok(vec![]);
            }
            let ts = r.timestamp_ms.unwrap_or(0).max(0) as u64;
            let events = decoded
                .events
                .into_iter()
                .enumerate()
                .map(|(i, body)| Event {
                    id: format!("stwt-{}-{}-{}-{i}", decoded.node_id, r.partition, r.offset),
                    origin: format!("stalwart:{}", decoded.node_id),
                    ts,
                    position: position.clone(),
                    body,
                })
                .collect();
            return match decoded.error {
                None => Ok(events),
                Some(e) => Err((events, at(&e))),
            };
        }
        Event::from_json(value, position)
            .map(|e| vec![e])
            .map_err(|e| (vec![], at(&e)))
    }

    /// Run one handler over its events of the batch, retrying as needed.
    async fn run(
        &self,
        handler: &Loaded,
        events: &[&Event],
        records: &[Record],
        stop: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let name = handler.manifest.name.as_str();
        let stats = self.registry.stats(name);
        let mut next = 0;
        let mut attempts = 0u32;
        // After a failed call of several events, go one event at a time
        // until past the culprit, so one bad event does not fail the others.
        let mut single = false;
        while next < events.len() {
            let end = if single { next + 1 } else { events.len() };
            let chunk = &events[next..end];
            let started = Instant::now();
            let result = self
                .sandbox
                .call(handler, chunk, self.effects.clone())
                .await;
            metrics::histogram!("herald_handler_call_seconds", "handler" => name.to_string())
                .record(started.elapsed().as_secs_f64());
            let failure = match result {
                Ok(outcomes) => {
                    let mut retry_at = None;
                    for (i, outcome) in outcomes.into_iter().enumerate() {
                        match outcome {
                            Outcome::Ok => {
                                count("herald_events_handled_total", name, &stats.handled)
                            }
                            Outcome::Reject(reason) => {
                                count("herald_events_rejected_total", name, &stats.rejected);
                                let letter =
                                    self.letter(chunk[i], records, name, reason, attempts + 1);
                                self.dead_letter(letter, stop).await?;
                            }
                            Outcome::Retry(reason) => {
                                retry_at = Some((i, reason));
                                break;
                            }
                        }
                    }
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
        let payload = match &self.decoding.stalwart {
            // One event of a Stalwart batch: keep that event, readable.
            Some((topic, _)) if *topic == original.topic => {
                event.to_json().to_string().into_bytes()
            }
            _ => original.value.clone().unwrap_or_default(),
        };
        DeadLetter {
            original,
            handler: Some(handler),
            error,
            attempts,
            payload,
        }
    }

    /// Send a dead letter, retrying until the broker has it: the record must
    /// not be committed before.
    async fn dead_letter(
        &self,
        letter: DeadLetter<'_>,
        stop: &CancellationToken,
    ) -> Result<(), Abandoned> {
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
            };
            match self.dead_letters.send(again).await {
                Ok(()) => return Ok(()),
                Err(e) => {
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
    stat.fetch_add(1, Ordering::Relaxed);
    metrics::counter!(name, "handler" => handler.to_string()).increment(1);
}
