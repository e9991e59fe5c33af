//! `herald state seed`: the one-time step of an upgrade to the state topic.
//! A cluster from before it keeps its blocks and certificates on the events
//! topic; this copies those records, byte for byte with their keys and
//! signature headers, onto `topics.state`, where new nodes find them after
//! the events topic's retention has deleted them. Run it once, from any
//! node, after the nodes are upgraded; running it again only adds copies
//! that every node recognises as the same versions.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

use crate::config::Config;

/// Whether a record's value is an event, or a bundle, of a stateful kind.
/// Only the `kind` is looked at: whether it is valid is every node's to
/// decide when it reads it, as for any record.
fn is_stateful(value: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(borrow)]
        kind: Option<std::borrow::Cow<'a, str>>,
    }
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Value<'a> {
        #[serde(borrow)]
        One(Kind<'a>),
        #[serde(borrow)]
        Bundle(Vec<Kind<'a>>),
    }
    let stateful = |k: &Kind| matches!(k.kind.as_deref(), Some("ip-block" | "tls-certificate"));
    match serde_json::from_slice::<Value>(value) {
        Ok(Value::One(k)) => stateful(&k),
        Ok(Value::Bundle(b)) => b.iter().any(stateful),
        Err(_) => false,
    }
}

pub async fn seed(config: &Path, out: &mut dyn Write) -> anyhow::Result<()> {
    let cfg = Config::load(config)?;
    let (from, to) = (&cfg.topics.events, &cfg.topics.state);
    let reader: BaseConsumer = crate::kafka::client_config(&cfg, "state-seed")
        .set("group.id", format!("{}.state-seed", cfg.shared_group()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .context("cannot create the Kafka consumer")?;
    let meta =
        tokio::task::block_in_place(|| reader.fetch_metadata(Some(from), Duration::from_secs(10)))
            .with_context(|| format!("cannot read the metadata of {from}"))?;
    let partitions = meta
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .filter(|&n| n > 0)
        .with_context(|| format!("topic {from} does not exist"))?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(from, p, rdkafka::Offset::Beginning)?;
    }
    reader.assign(&tpl)?;
    let producer: FutureProducer = crate::kafka::client_config(&cfg, "state-seed")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .context("cannot create the Kafka producer")?;
    let (mut read, mut copied, mut ended) = (0u64, 0u64, 0usize);
    let mut sends = Vec::new();
    let mut quiet_since = Instant::now();
    while ended < partitions {
        let polled = tokio::task::block_in_place(|| reader.poll(Duration::from_millis(200)));
        match polled {
            Some(Ok(m)) => {
                quiet_since = Instant::now();
                read += 1;
                let Some(value) = m.payload().filter(|v| is_stateful(v)) else {
                    continue;
                };
                let mut headers = OwnedHeaders::new();
                if let Some(h) = m.headers() {
                    for h in h.iter() {
                        headers = headers.insert(rdkafka::message::Header {
                            key: h.key,
                            value: h.value,
                        });
                    }
                }
                let mut record = FutureRecord::<[u8], [u8]>::to(to)
                    .payload(value)
                    .headers(headers);
                if let Some(k) = m.key() {
                    record = record.key(k);
                }
                sends.push(producer.send_result(record).map_err(|(e, _)| e)?);
                copied += 1;
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => ended += 1,
            Some(Err(e)) => return Err(e).with_context(|| format!("reading {from}")),
            None if quiet_since.elapsed() > cfg.timeout_message => {
                anyhow::bail!(
                    "{from}: no record and no end of partition for {:?}",
                    cfg.timeout_message
                )
            }
            None => {}
        }
    }
    for s in sends {
        s.await
            .context("the producer went away")?
            .map_err(|(e, _)| e)
            .with_context(|| format!("delivery to {to} failed"))?;
    }
    writeln!(
        out,
        "{}",
        json!({"from": from, "to": to, "read": read, "copied": copied})
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_stateful_records_are_copied() {
        for (value, copied) in [
            (r#"{"v":1,"kind":"ip-block","body":{}}"#, true),
            (r#"{"v":1,"kind":"tls-certificate"}"#, true),
            (r#"{"v":1,"kind":"state-change"}"#, false),
            (r#"[{"kind":"push"},{"kind":"ip-block"}]"#, true),
            (r#"[{"kind":"push"}]"#, false),
            ("not json", false),
        ] {
            assert_eq!(super::is_stateful(value.as_bytes()), copied, "{value}");
        }
    }
}
