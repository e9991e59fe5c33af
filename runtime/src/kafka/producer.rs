//! The node's producer: idempotent, `acks=all`, delivery timeout from the
//! Coordinator's `timeoutMessage`. Events are keyed by their entity so a
//! partition keeps one entity's events in order.

use std::pin::Pin;
use std::time::Duration;

use anyhow::Context;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::Config;
use crate::dispatch::{DeadLetter, DeadLetterSink};
use crate::effects::node::Publisher;
use crate::event::Event;

pub struct Producer {
    inner: FutureProducer,
    events_topic: String,
    dead_letter_suffix: String,
    node_id: String,
    timeout: Duration,
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

impl Producer {
    pub fn new(cfg: &Config) -> anyhow::Result<Producer> {
        let inner: FutureProducer = super::client_config(cfg, "producer")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                cfg.timeout_message.as_millis().to_string(),
            )
            .set("linger.ms", "2")
            .create()
            .context("cannot create the Kafka producer")?;
        Ok(Producer {
            inner,
            events_topic: cfg.topics.events.clone(),
            dead_letter_suffix: cfg.topics.dead_letter_suffix.clone(),
            node_id: cfg.node_id.clone(),
            timeout: cfg.timeout_message,
        })
    }

    /// Publish an event to the events topic, keyed by its entity.
    pub async fn publish(&self, event: &Event) -> anyhow::Result<Delivered> {
        let key = event
            .body
            .entity_key()
            .unwrap_or_else(|| event.body.kind().to_string());
        self.publish_keyed(&key, event).await
    }

    pub async fn publish_keyed(&self, key: &str, event: &Event) -> anyhow::Result<Delivered> {
        let payload = event.to_json().to_string();
        let record = FutureRecord::to(&self.events_topic)
            .key(key)
            .payload(&payload);
        self.send(record).await
    }

    /// Send raw bytes to `topic` (Stalwart batches: no key, as Stalwart does).
    pub async fn send_raw(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
    ) -> anyhow::Result<Delivered> {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(payload);
        if let Some(k) = key {
            record = record.key(k);
        }
        self.send(record).await
    }

    async fn send<K, P>(&self, record: FutureRecord<'_, K, P>) -> anyhow::Result<Delivered>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        let topic = record.topic.to_string();
        match self.inner.send(record, self.timeout).await {
            Ok(d) => Ok(Delivered {
                partition: d.partition,
                offset: d.offset,
            }),
            Err((e, _)) => Err(anyhow::anyhow!(
                "delivery to {topic} failed within timeoutMessage ({:?}): {e}",
                self.timeout
            )),
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

impl DeadLetterSink for Producer {
    fn send<'a>(
        &'a self,
        letter: DeadLetter<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            let o = letter.original;
            let topic = format!("{}{}", o.topic, self.dead_letter_suffix);
            let (partition, offset, attempts) = (
                o.partition.to_string(),
                o.offset.to_string(),
                letter.attempts.to_string(),
            );
            let headers = OwnedHeaders::new()
                .insert(header("herald-handler", letter.handler.unwrap_or("")))
                .insert(header("herald-error", &letter.error))
                .insert(header("herald-attempts", &attempts))
                .insert(header("herald-original-topic", &o.topic))
                .insert(header("herald-original-partition", &partition))
                .insert(header("herald-original-offset", &offset))
                .insert(header("herald-node", &self.node_id));
            let mut record = FutureRecord::<[u8], [u8]>::to(&topic)
                .payload(&letter.payload)
                .headers(headers);
            if let Some(k) = &o.key {
                record = record.key(k);
            }
            self.send(record)
                .await
                .map(drop)
                .map_err(|e| format!("{e:#}"))
        })
    }
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}
