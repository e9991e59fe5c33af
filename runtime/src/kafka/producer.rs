//! The node's producer: idempotent, `acks=all`, delivery timeout from the
//! Coordinator's `timeoutMessage`. Events are keyed by their entity so a
//! partition keeps one entity's events in order, and signed with the node's
//! key ([`crate::trust`]) so that other nodes can tell who sent them. The
//! stateful kinds go to the compacted state topic, the rest to the events
//! topic ([`crate::config::Topics::for_body`]).

use std::pin::Pin;
use std::time::Duration;

use anyhow::Context;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::codec::stalwart;
use crate::config::Config;
use crate::dispatch::keeper::{Kept, Restorer};
use crate::dispatch::{DeadLetter, DeadLetterSink, SinkError};
use crate::effects::node::Publisher;
use crate::event::{Body, Event};
use crate::trust::keys::{NodeKey, signature_text};
use crate::trust::{KEY_ID_HEADER, SIGNATURE_HEADER};

pub struct Producer {
    inner: FutureProducer<super::Quiet>,
    key: NodeKey,
    topics: crate::config::Topics,
    dead_letter_suffix: String,
    node_id: String,
    timeout: Duration,
    /// Stalwart's topic and this node's Stalwart node id, when enabled.
    stalwart: Option<(String, u16)>,
}

/// What [`Producer::publish_stalwart`] sent.
#[derive(Debug, serde::Serialize)]
pub struct StalwartSent {
    pub topic: String,
    pub records: Vec<StalwartRecord>,
}

#[derive(Debug, serde::Serialize)]
pub struct StalwartRecord {
    pub partition: i32,
    pub offset: i64,
    pub bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum StalwartError {
    #[error("stalwart is not enabled in this node's config")]
    Disabled,
    #[error(transparent)]
    Encode(#[from] stalwart::EncodeError),
    #[error("{0:#}")]
    Delivery(anyhow::Error),
}

/// Where a record landed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Delivered {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// The record key of an event herald publishes: its entity, so that one
/// entity's events share a partition (and compaction keeps its latest);
/// for a kind without one, the kind.
fn record_key(body: &Body) -> String {
    body.entity_key().unwrap_or_else(|| body.kind().to_string())
}

impl Producer {
    /// The producer, signing with the config's key (created on first use,
    /// see [`Config::signing_key_path`]).
    pub fn new(cfg: &Config) -> anyhow::Result<Producer> {
        let path = cfg.signing_key_path();
        let (key, _) = NodeKey::load_or_create(&path)
            .with_context(|| format!("signing key (`signingKey`, {})", path.display()))?;
        let inner: FutureProducer<super::Quiet> = super::client_config(cfg, "producer")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                cfg.timeout_message.as_millis().to_string(),
            )
            // No linger: a publish through the API or a handler waits for
            // its acknowledgement, and a linger is added to every one of
            // them. Under load librdkafka still batches what queues up
            // while a produce request is in flight.
            .set("linger.ms", "0")
            .create_with_context(super::Quiet)
            .context("cannot create the Kafka producer")?;
        Ok(Producer {
            inner,
            key,
            topics: cfg.topics.clone(),
            dead_letter_suffix: cfg.topics.dead_letter_suffix.clone(),
            node_id: cfg.node_id.clone(),
            timeout: cfg.timeout_message,
            stalwart: cfg
                .stalwart
                .node_id
                .filter(|_| cfg.stalwart.enabled)
                .map(|id| (cfg.stalwart.topic.clone(), id)),
        })
    }

    /// Publish an event to the events topic, keyed by its entity.
    pub async fn publish(&self, event: &Event) -> anyhow::Result<Delivered> {
        self.publish_keyed(&record_key(&event.body), event).await
    }

    pub async fn publish_keyed(&self, key: &str, event: &Event) -> anyhow::Result<Delivered> {
        self.publish_on(self.topics.for_body(&event.body), key, event)
            .await
    }

    /// Publish `event` on `topic` under `key`, whatever its kind's usual
    /// topic: a probe goes out on each topic it tests.
    pub async fn publish_on(
        &self,
        topic: &str,
        key: &str,
        event: &Event,
    ) -> anyhow::Result<Delivered> {
        self.publish_signed(topic, key, &event.to_json().to_string())
            .await
    }

    /// Publish `events` as bundle records (one signature for each, handled
    /// in order): one record per entity, keyed by it, in the order each
    /// entity first appears, so that every event lands on its entity's
    /// partition. At most [`crate::event::MAX_BUNDLE`] events. Answers
    /// where each record landed, with the indexes of its events.
    pub async fn publish_bundle(
        &self,
        events: &[Event],
    ) -> anyhow::Result<Vec<(Delivered, Vec<usize>)>> {
        if events.is_empty() {
            anyhow::bail!("an empty bundle");
        }
        if events.len() > crate::event::MAX_BUNDLE {
            anyhow::bail!(
                "a bundle of {} events; at most {} fit in one record",
                events.len(),
                crate::event::MAX_BUNDLE
            );
        }
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let key = record_key(&e.body);
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, members)) => members.push(i),
                None => groups.push((key, vec![i])),
            }
        }
        let mut sent = Vec::with_capacity(groups.len());
        for (key, members) in groups {
            let group: Vec<Event> = members.iter().map(|&i| events[i].clone()).collect();
            let topic = self.topics.for_body(&group[0].body);
            let delivered = self
                .publish_signed(topic, &key, &Event::bundle_json(&group))
                .await?;
            sent.push((delivered, members));
        }
        Ok(sent)
    }

    /// Send `payload` keyed by `key` to `topic`, signed.
    async fn publish_signed(
        &self,
        topic: &str,
        key: &str,
        payload: &str,
    ) -> anyhow::Result<Delivered> {
        let signature = signature_text(&self.key.sign(Some(key.as_bytes()), payload.as_bytes()));
        let headers = OwnedHeaders::new()
            .insert(header(KEY_ID_HEADER, self.key.id()))
            .insert(header(SIGNATURE_HEADER, &signature));
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        self.send(record).await
    }

    /// The key this producer signs with.
    pub fn signing_key(&self) -> &NodeKey {
        &self.key
    }

    /// Publish `bodies` on Stalwart's topic as this node's Stalwart node id,
    /// the way Stalwart itself does: records of at most
    /// [`stalwart::MAX_EVENTS_PER_RECORD`] events, without a key. Nothing is
    /// sent unless every body has a wire form.
    pub async fn publish_stalwart(&self, bodies: &[Body]) -> Result<StalwartSent, StalwartError> {
        let Some((topic, node_id)) = &self.stalwart else {
            return Err(StalwartError::Disabled);
        };
        let mut sent = StalwartSent {
            topic: topic.clone(),
            records: Vec::new(),
        };
        for value in stalwart::encode_batches(*node_id, bodies)? {
            let record = FutureRecord::<[u8], [u8]>::to(topic).payload(&value);
            let d = self.send(record).await.map_err(StalwartError::Delivery)?;
            sent.records.push(StalwartRecord {
                partition: d.partition,
                offset: d.offset,
                bytes: value.len(),
            });
        }
        Ok(sent)
    }

    async fn send<K, P>(&self, record: FutureRecord<'_, K, P>) -> anyhow::Result<Delivered>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        let topic = record.topic.to_string();
        self.send_record(record).await.map_err(|e| {
            anyhow::anyhow!(
                "delivery to {topic} failed within timeoutMessage ({:?}): {e}",
                self.timeout
            )
        })
    }

    async fn send_record<K, P>(&self, record: FutureRecord<'_, K, P>) -> KafkaResult<Delivered>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        let topic = record.topic.to_string();
        match self.inner.send(record, self.timeout).await {
            Ok(d) => Ok(Delivered {
                topic,
                partition: d.partition,
                offset: d.offset,
            }),
            Err((e, _)) => Err(e),
        }
    }
}

impl Publisher for Producer {
    fn publish<'a>(
        &'a self,
        key: &'a str,
        event: &'a Event,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            self.publish_keyed(key, event)
                .await
                .map(drop)
                .map_err(|e| format!("{e:#}"))
        })
    }
}

impl crate::dispatch::probe::Sender for Producer {
    fn send_on<'a>(
        &'a self,
        topic: &'a str,
        event: &'a Event,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            self.publish_on(topic, &record_key(&event.body), event)
                .await
                .map(drop)
                .map_err(|e| format!("{e:#}"))
        })
    }
}

impl Restorer for Producer {
    /// The kept record again, byte for byte, with its signature headers.
    fn restore<'a>(
        &'a self,
        kept: &'a Kept,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            let mut headers = OwnedHeaders::new();
            if let Some(sig) = &kept.signature {
                headers = with_signature(headers, &sig.key_id, &sig.signature);
            }
            let record = FutureRecord::<[u8], [u8]>::to(&self.topics.state)
                .key(&kept.key)
                .payload(&kept.value)
                .headers(headers);
            self.send(record)
                .await
                .map(drop)
                .map_err(|e| format!("{e:#}"))
        })
    }
}

impl DeadLetterSink for Producer {
    fn send<'a>(
        &'a self,
        letter: DeadLetter<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>> {
        Box::pin(async move {
            let o = letter.original;
            let topic = format!("{}{}", o.topic, self.dead_letter_suffix);
            let (partition, offset, attempts) = (
                o.partition.to_string(),
                o.offset.to_string(),
                letter.attempts.to_string(),
            );
            // Every header is bounded: what a record or a handler said is
            // cut, so no letter outgrows the broker because of its headers.
            let error = crate::bounded::cut(&letter.error, crate::bounded::TEXT_MAX);
            let mut headers = OwnedHeaders::new()
                .insert(header("herald-handler", letter.handler.unwrap_or("")))
                .insert(header("herald-error", &error))
                .insert(header("herald-attempts", &attempts))
                .insert(header("herald-original-topic", &o.topic))
                .insert(header("herald-original-partition", &partition))
                .insert(header("herald-original-offset", &offset))
                .insert(header("herald-node", &self.node_id));
            // The original's signature travels with it, so that a letter
            // put back on its topic verifies as it did the first time.
            if let Some(sig) = &o.signature
                && letter.payload_dropped.is_none()
            {
                headers = with_signature(headers, &sig.key_id, &sig.signature);
            }
            let dropped = letter.payload_dropped.map(|n| n.to_string());
            if let Some(bytes) = &dropped {
                headers = headers.insert(header("herald-payload-dropped", bytes));
            }
            let mut record = FutureRecord::<[u8], [u8]>::to(&topic)
                .payload(&letter.payload)
                .headers(headers);
            // A key larger than a letter's text budget goes the way of the
            // payload: a record's key is as much the sender's as its value.
            if let Some(k) = o
                .key
                .as_deref()
                .filter(|k| letter.payload_dropped.is_none() || k.len() <= crate::bounded::TEXT_MAX)
            {
                record = record.key(k);
            }
            self.send_record(record)
                .await
                .map(drop)
                .map_err(|e| classify(&topic, e))
        })
    }
}

/// Whether sending the same record again can work: the broker may be away,
/// but a record it refuses for its size or form will be refused again.
fn classify(topic: &str, e: KafkaError) -> SinkError {
    use rdkafka::types::RDKafkaErrorCode as Code;
    let text = format!("delivery to {topic} failed: {e}");
    match e.rdkafka_error_code() {
        Some(
            Code::MessageSizeTooLarge
            | Code::InvalidMessageSize
            | Code::MessageBatchTooLarge
            | Code::InvalidRecord
            | Code::InvalidMessage
            | Code::InvalidRequiredAcks,
        ) => SinkError::Refused(text),
        _ => SinkError::Transient(text),
    }
}

/// `headers` and a record's signature headers, as its publisher made them.
fn with_signature(headers: OwnedHeaders, key_id: &[u8], signature: &[u8]) -> OwnedHeaders {
    headers
        .insert(Header {
            key: KEY_ID_HEADER,
            value: Some(key_id),
        })
        .insert(Header {
            key: SIGNATURE_HEADER,
            value: Some(signature),
        })
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}
