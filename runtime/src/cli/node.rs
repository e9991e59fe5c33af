//! `herald run` and `herald publish`.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::event::{Event, Position, now_ms};
use crate::kafka::producer::Producer;
use crate::node::{Node, stop_on_signals};

/// `herald run --config <file>`: the node service, until SIGTERM/SIGINT.
pub async fn run(config: &Path) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    tracing::info!(node = %config.node_id, brokers = ?config.brokers, "herald starting");
    let node = Arc::new(Node::open(config)?);
    let shutdown = CancellationToken::new();
    stop_on_signals(shutdown.clone());
    node.run(shutdown).await?;
    tracing::info!("herald stopped");
    Ok(())
}

/// Read an event in the public JSON form. `id`, `origin` and `ts` may be
/// left out: they are filled in as for an event this node publishes.
pub fn read_event(text: &str, origin: &str) -> anyhow::Result<Event> {
    let mut v: Value = serde_json::from_str(text).context("not JSON")?;
    let obj = v
        .as_object_mut()
        .context("an event is a JSON object: {\"v\":1,\"kind\":...,\"body\":{...}}")?;
    let fresh = Event::new(
        origin,
        crate::event::Body::SettingsReload(Default::default()),
    );
    obj.entry("v").or_insert(json!(1));
    obj.entry("id").or_insert(json!(fresh.id));
    obj.entry("origin").or_insert(json!(origin));
    obj.entry("ts").or_insert(json!(now_ms()));
    Ok(Event::from_json(
        v.to_string().as_bytes(),
        Position::default(),
    )?)
}

/// `herald publish --config <file> <event.json>` (`-` for stdin): prints
/// where the event landed, or fails with the delivery error once
/// `timeoutMessage` has passed.
pub async fn publish(
    config: &Path,
    event: &Path,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    let text = if event == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        std::fs::read_to_string(event)
            .with_context(|| format!("{}: cannot read", event.display()))?
    };
    let event =
        read_event(&text, &config.node_id).with_context(|| format!("{}", event.display()))?;
    let producer = Producer::new(&config)?;
    let delivered = producer.publish(&event).await?;
    writeln!(
        out,
        "{}",
        json!({"topic": config.topics.events, "partition": delivered.partition,
               "offset": delivered.offset, "id": event.id, "kind": event.body.kind()})
    )?;
    Ok(())
}
