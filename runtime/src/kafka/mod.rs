//! Kafka: the node's consumer groups and producer (rdkafka).
//!
//! - [`consumer`]: one group consumer per delivery mode, an explicit loop
//!   that hands each partition's records, in order, to a worker, and commits
//!   what the workers finished.
//! - [`producer`]: idempotent, `acks=all`; publishes events and dead letters.
//! - here: client settings shared by both, and topic creation.

pub mod consumer;
pub mod producer;

use std::time::Duration;

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use crate::config::Config;

/// Settings every herald client shares: brokers, identity, and the
/// deployer's extra librdkafka properties (TLS, SASL, ...).
pub fn client_config(cfg: &Config, role: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", cfg.brokers.join(","))
        .set("client.id", format!("herald-{}-{role}", cfg.node_id));
    for (k, v) in &cfg.kafka {
        c.set(k, v);
    }
    c
}

/// Kafka's default `group.min.session.timeout.ms`.
const KAFKA_MIN_SESSION_TIMEOUT: Duration = Duration::from_secs(6);

/// The session timeout to ask for. Stalwart documents "5s", which stock
/// brokers refuse (their minimum is 6 s by default): rather than fail to
/// join, raise it to the broker's minimum and say so once.
pub async fn session_timeout(cfg: &Config) -> Duration {
    let wanted = cfg.timeout_session;
    let min = broker_min_session_timeout(cfg)
        .await
        .unwrap_or(KAFKA_MIN_SESSION_TIMEOUT);
    if wanted < min {
        tracing::warn!(
            configured = ?wanted,
            used = ?min,
            "timeoutSession is below the broker's group.min.session.timeout.ms; using the minimum"
        );
        min
    } else {
        wanted
    }
}

/// The broker's `group.min.session.timeout.ms`, when it tells.
async fn broker_min_session_timeout(cfg: &Config) -> Option<Duration> {
    use rdkafka::admin::ResourceSpecifier;
    let admin: AdminClient<DefaultClientContext> = client_config(cfg, "admin").create().ok()?;
    let metadata = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(5))
        .ok()?;
    let broker = metadata.brokers().first()?.id();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(5)));
    let results = admin
        .describe_configs(&[ResourceSpecifier::Broker(broker)], &opts)
        .await
        .ok()?;
    let resource = results.into_iter().next()?.ok()?;
    let entry = resource.get("group.min.session.timeout.ms")?;
    let ms: u64 = entry.value.as_deref()?.parse().ok()?;
    Some(Duration::from_millis(ms))
}

/// Create `topics` if they do not exist (when the config asks herald to).
pub async fn create_topics(cfg: &Config, topics: &[String]) -> anyhow::Result<()> {
    let Some(create) = &cfg.topics.create else {
        return Ok(());
    };
    let admin: AdminClient<DefaultClientContext> = client_config(cfg, "admin")
        .create()
        .context("cannot create the Kafka admin client")?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| {
            NewTopic::new(
                t,
                create.partitions,
                TopicReplication::Fixed(create.replication_factor),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &opts).await? {
        match result {
            Ok(topic) => tracing::info!(%topic, partitions = create.partitions, "topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("cannot create topic {topic}: {code}"),
        }
    }
    Ok(())
}
