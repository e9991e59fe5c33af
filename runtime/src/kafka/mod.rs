//! Kafka: the node's consumer groups and producer (rdkafka).
//!
//! - [`consumer`]: one group consumer per delivery mode, an explicit loop
//!   that hands each partition's records, in order, to a worker, and commits
//!   what the workers finished.
//! - [`producer`]: idempotent, `acks=all`; publishes events and dead letters.
//! - [`offsets`]: a group's positions read and set from outside it (a
//!   handler paused, replayed, or started from a position of its own).
//! - here: client settings shared by both, and topic creation.

pub mod consumer;
pub mod offsets;
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
        .set("client.id", format!("herald-{}-{role}", cfg.node_id))
        // herald's requests are small (a fetch, a commit, one event): with
        // Nagle's algorithm on, the kernel holds each behind the previous
        // one's acknowledgement, which the broker's delayed ACK can keep
        // back for 40 ms: the tail of every wake-up's latency.
        .set("socket.nagle.disable", "true");
    for (k, v) in &cfg.kafka {
        c.set(k, v);
    }
    c
}

/// The producer's and admin's client context: librdkafka's own errors as
/// warnings naming the client (its default logs every lost connection as
/// an ERROR, even on an orderly shutdown of the cluster).
pub struct Quiet;

impl rdkafka::ClientContext for Quiet {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(error = %error, %reason, "kafka client");
    }
}

impl rdkafka::consumer::ConsumerContext for Quiet {}

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

/// Check that `topics` exist. Missing ones are created when `topics.create`
/// is set; otherwise start-up fails, naming the topic and the setting. A
/// broker that does not answer within 10 s is not a reason to refuse to
/// start (the consumers wait for it): the check is skipped with a warning.
pub async fn ensure_topics(cfg: &Config, topics: &[String]) -> anyhow::Result<()> {
    // Asked through a consumer handle: a producer's (the admin client's)
    // metadata request would make the broker create the topic it asks about.
    let probe: rdkafka::consumer::BaseConsumer<Quiet> = client_config(cfg, "topic-check")
        .set("allow.auto.create.topics", "false")
        .create_with_context(Quiet)
        .context("cannot create the Kafka client that checks the topics")?;
    let mut missing = Vec::new();
    for topic in topics {
        let found = {
            use rdkafka::consumer::Consumer;
            let probe = &probe;
            let topic = topic.clone();
            tokio::task::block_in_place(move || {
                probe.fetch_metadata(Some(&topic), Duration::from_secs(10))
            })
        };
        match found {
            Ok(m) => {
                let exists = m.topics().iter().any(|t| {
                    t.name() == topic && t.error().is_none() && !t.partitions().is_empty()
                });
                if !exists {
                    missing.push(topic.clone());
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the brokers to check the topics; carrying on");
                return Ok(());
            }
        }
    }
    if !missing.contains(&cfg.topics.state) {
        check_compacted(cfg).await;
    }
    if missing.is_empty() {
        return Ok(());
    }
    let Some(create) = &cfg.topics.create else {
        anyhow::bail!(
            "missing topics: {}; create them (the README lists the settings a production \
             cluster wants), or set `topics.create` in the config to let herald create them",
            missing.join(", ")
        );
    };
    let topics = &missing;
    let admin: AdminClient<DefaultClientContext> = client_config(cfg, "admin")
        .create()
        .context("cannot create the Kafka admin client")?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| {
            let topic = NewTopic::new(
                t,
                create.partitions,
                TopicReplication::Fixed(create.replication_factor),
            );
            // The state topic keeps every entity's latest record for good.
            if *t == cfg.topics.state {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
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

/// Warn when the state topic is not compacted: with time retention, a node
/// that joins later never learns of a block or certificate older than the
/// retention, and with no cleanup at all a new node's start grows with the
/// history. A broker that does not say is not a reason to stop.
async fn check_compacted(cfg: &Config) {
    use rdkafka::admin::ResourceSpecifier;
    let topic = &cfg.topics.state;
    let policy = async {
        let admin: AdminClient<DefaultClientContext> = client_config(cfg, "admin").create().ok()?;
        let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(5)));
        let results = admin
            .describe_configs(&[ResourceSpecifier::Topic(topic)], &opts)
            .await
            .ok()?;
        let resource = results.into_iter().next()?.ok()?;
        resource.get("cleanup.policy")?.value.clone()
    };
    match policy.await {
        Some(p) if p.split(',').any(|p| p.trim() == "compact") => {}
        Some(p) => tracing::warn!(
            %topic,
            cleanup_policy = %p,
            "topics.state is not compacted: set cleanup.policy=compact, or state older than \
             the retention is lost to new nodes (README, \"Topic settings\")"
        ),
        None => tracing::debug!(%topic, "the broker did not say the state topic's cleanup.policy"),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn config(kafka: &str) -> Config {
        Config::parse(&format!(
            r#"{{ "@type": "Kafka", "brokers": ["kafka1:9092"], "groupId": "g", "nodeId": "n1",
                "kafka": {{ {kafka} }} }}"#
        ))
        .unwrap()
    }

    #[test]
    fn latency_and_fetch_defaults_hold_unless_the_deployer_sets_them() {
        let c = super::consumer::client_config(&config(""), "g.broadcast");
        assert_eq!(c.get("socket.nagle.disable"), Some("true"));
        assert_eq!(c.get("fetch.wait.max.ms"), Some("5"));
        assert_eq!(c.get("fetch.queue.backoff.ms"), Some("10"));
        assert_eq!(c.get("client.id"), Some("herald-n1-consumer-g.broadcast"));
        // The producer and admin clients get the socket setting too.
        let p = super::client_config(&config(""), "producer");
        assert_eq!(p.get("socket.nagle.disable"), Some("true"));

        let own = config(
            r#""socket.nagle.disable": "false", "fetch.wait.max.ms": "100",
               "fetch.queue.backoff.ms": "500""#,
        );
        let c = super::consumer::client_config(&own, "g.broadcast");
        assert_eq!(c.get("socket.nagle.disable"), Some("false"));
        assert_eq!(c.get("fetch.wait.max.ms"), Some("100"));
        assert_eq!(c.get("fetch.queue.backoff.ms"), Some("500"));
    }
}
