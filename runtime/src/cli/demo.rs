//! `herald demo`: a node on an in-process Kafka cluster (librdkafka's mock
//! cluster), with the built-in handlers, publishing a few sample events so a
//! newcomer sees them handled with nothing installed. The node is the same
//! one `herald run` starts; only the cluster is embedded.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::effects::notify::Notice;
use crate::event::{
    BlockAction, Body, CacheInvalidate, CacheItem, DataTypes, Event, IpBlock, QueueStatus,
    RegistryAction, RegistryChange, StateChange, now_ms,
};
use crate::node::{Node, stop_on_signals};

const TOPIC: &str = "herald.events";
const STATE_TOPIC: &str = "herald.state";

fn samples(origin: &str) -> Vec<Event> {
    let block = |ip: &str, expires: Option<u64>| {
        Body::IpBlock(IpBlock {
            ip: ip.into(),
            action: BlockAction::Block,
            reason: "demo: auth failures".into(),
            expires_at: expires,
        })
    };
    [
        block("203.0.113.7", Some(now_ms() + 3_600_000)),
        block("2001:db8::/48", None),
        // Refused by the blocking handler: goes to the dead-letter topic.
        block("not-an-ip", None),
        Body::StateChange(StateChange {
            account_id: 5,
            change_id: 300,
            types: DataTypes::from_names(["Email", "Mailbox"]).expect("known names"),
        }),
        Body::CacheInvalidate(CacheInvalidate {
            items: vec![CacheItem::AccessToken(7)],
        }),
        Body::QueueStatus(QueueStatus { running: true }),
        Body::RegistryChange(RegistryChange {
            action: RegistryAction::Insert,
            object_type: 17,
            id: Some(123_456_789_012),
        }),
    ]
    .into_iter()
    .map(|b| Event::new(origin, b))
    .collect()
}

pub async fn run(handlers: &Path) -> anyhow::Result<()> {
    let handlers = std::fs::canonicalize(handlers).with_context(|| {
        format!(
            "{}: no handler folder (run `just build` first)",
            handlers.display()
        )
    })?;
    let mock = MockCluster::new(1).context("cannot start the embedded Kafka cluster")?;
    let bootstrap = mock.bootstrap_servers();
    for topic in [
        TOPIC.to_string(),
        format!("{TOPIC}.dlq"),
        STATE_TOPIC.to_string(),
        format!("{STATE_TOPIC}.dlq"),
    ] {
        mock.create_topic(&topic, 3, 1)?;
    }
    let state = tempfile::Builder::new().prefix("herald-demo-").tempdir()?;
    let config_path = state.path().join("demo.json");
    let config_json = json!({
        "@type": "Kafka",
        "brokers": [bootstrap],
        "groupId": "herald-demo",
        "timeoutSession": "6s",
        "timeoutMessage": "5s",
        "nodeId": "demo",
        "handlers": handlers,
        "stateDir": state.path(),
        "api": {"listen": "127.0.0.1:0"},
    });
    std::fs::write(&config_path, serde_json::to_string_pretty(&config_json)?)?;
    let config = Config::load(&config_path)?;

    println!("herald demo");
    println!(
        "  embedded Kafka cluster: {bootstrap}  (topics {TOPIC}, {STATE_TOPIC} and their .dlq)"
    );
    println!("  handlers:               {}", handlers.display());
    println!("  node state:             {}", state.path().display());
    let node = Arc::new(Node::open(config)?.with_metrics(super::node::install_metrics()?));
    for h in node.registry().all() {
        let kinds: Vec<&str> = h.manifest.subscribe.iter().map(String::as_str).collect();
        let mode = match h.manifest.mode {
            crate::manifest::Mode::Broadcast => "broadcast",
            crate::manifest::Mode::Shared => "shared",
        };
        println!(
            "  handler {:<12} {mode}, subscribes to {}",
            h.manifest.name,
            kinds.join(", ")
        );
    }

    let shutdown = CancellationToken::new();
    stop_on_signals(shutdown.clone());
    let running = tokio::spawn(node.clone().run(shutdown.clone()));
    let viewer = spawn_dead_letter_viewer(&bootstrap, shutdown.clone())?;
    let mut notices = node.notices().subscribe(None);
    tokio::spawn(async move {
        while let Ok(n) = notices.recv().await {
            if let Notice::StateChange {
                account_id,
                change_id,
                types,
            } = n
            {
                let types: Vec<&str> = types.names().collect();
                println!(
                    "  IDLE wake-up: account {account_id} change {change_id} ({})",
                    types.join(", ")
                );
            }
        }
    });

    println!(
        "\nwaiting for the node to join its consumer group (the mock cluster takes a few seconds) ..."
    );
    while node.assigned_partitions(crate::manifest::Mode::Broadcast) == 0 {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    println!("joined; publishing sample events:\n");
    for event in samples("demo") {
        let d = node.producer().publish(&event).await?;
        println!(
            "  published {:<16} -> partition {} offset {}  {}",
            event.body.kind(),
            d.partition,
            d.offset,
            event.body.to_json()
        );
    }
    // Show the blocklist once both valid blocks are in.
    for _ in 0..100 {
        if node.blocklist().list(now_ms()).len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "\nblocklist of this node ({}/blocklist.txt):",
        state.path().display()
    );
    for e in node.blocklist().list(now_ms()) {
        let expires = match e.expires_at {
            Some(ms) => {
                let at = std::time::UNIX_EPOCH + Duration::from_millis(ms);
                format!("expires {}", humantime::format_rfc3339_seconds(at))
            }
            None => "no expiry".to_string(),
        };
        println!("  {:<16} {} ({expires})", e.network, e.reason);
    }
    println!(
        "\npublish more from another terminal while this runs, e.g.:\n  \
         echo '{{\"kind\":\"ip-block\",\"body\":{{\"ip\":\"198.51.100.9\",\"action\":\"block\",\"reason\":\"test\"}}}}' \\\n    \
         | target/release/herald publish --config {} -\n\nCtrl-C stops the node.",
        config_path.display()
    );
    running.await??;
    // Every client closes before the embedded cluster goes, so that none of
    // them reports the brokers gone.
    drop(node);
    viewer.await?;
    drop(mock);
    Ok(())
}

/// Print what lands on the dead-letter topic, with herald's headers.
fn spawn_dead_letter_viewer(
    bootstrap: &str,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "herald-demo-dlq-viewer")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()?;
    consumer.subscribe(&[&format!("{TOPIC}.dlq")])?;
    Ok(tokio::spawn(async move {
        loop {
            let m = tokio::select! {
                _ = stop.cancelled() => return,
                m = consumer.recv() => m,
            };
            let Ok(m) = m else { continue };
            let mut line = String::from("  dead letter:");
            if let Some(h) = m.headers() {
                for header in h.iter() {
                    let value = header
                        .value
                        .map(String::from_utf8_lossy)
                        .unwrap_or_default();
                    if !value.is_empty() {
                        line.push_str(&format!(" {}={}", header.key, value));
                    }
                }
            }
            println!("{line}");
        }
    }))
}
