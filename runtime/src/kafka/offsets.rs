//! A consumer group's positions, read and set from outside the group: how a
//! handler leaves its mode's group (to be paused, or to replay history) and
//! starts a group of its own exactly where it was, or where the operator
//! says. Each call is a short-lived client, off the runtime's threads.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::{Quiet, client_config};
use crate::config::Config;
pub use crate::manifest::StartAt;

/// How long one broker request may take here.
const WAIT: Duration = Duration::from_secs(10);

/// (topic, partition) → offset: the next record to handle.
pub type Positions = BTreeMap<(String, i32), i64>;

fn client(cfg: &Config, group: &str) -> anyhow::Result<BaseConsumer<Quiet>> {
    client_config(cfg, group)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create_with_context(Quiet)
        .with_context(|| format!("cannot create a client for group {group}"))
}

/// Every partition of `topics`.
fn partitions(c: &BaseConsumer<Quiet>, topics: &[String]) -> anyhow::Result<Vec<(String, i32)>> {
    let mut all = Vec::new();
    for topic in topics {
        let meta = c
            .fetch_metadata(Some(topic), WAIT)
            .with_context(|| format!("cannot read the partitions of {topic}"))?;
        for t in meta.topics() {
            all.extend(t.partitions().iter().map(|p| (topic.clone(), p.id())));
        }
    }
    Ok(all)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await?
}

/// What the client's group has committed on `parts` (partitions without a
/// commit are left out).
fn committed_on(
    c: &BaseConsumer<Quiet>,
    group: &str,
    parts: &[(String, i32)],
) -> anyhow::Result<Positions> {
    let mut tpl = TopicPartitionList::new();
    for (t, p) in parts {
        tpl.add_partition(t, *p);
    }
    let got = c
        .committed_offsets(tpl, WAIT)
        .with_context(|| format!("cannot read the offsets group {group} committed"))?;
    Ok(got
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
            _ => None,
        })
        .collect())
}

/// The oldest offset each of `parts` still holds, and its end.
fn watermarks(
    c: &BaseConsumer<Quiet>,
    parts: &[(String, i32)],
) -> anyhow::Result<BTreeMap<(String, i32), (i64, i64)>> {
    parts
        .iter()
        .map(|(t, p)| {
            let marks = c
                .fetch_watermarks(t, *p, WAIT)
                .with_context(|| format!("cannot read the offsets of {t}/{p}"))?;
            Ok(((t.clone(), *p), marks))
        })
        .collect()
}

/// What `group` has committed on `topics` (partitions without a commit are
/// left out).
pub async fn committed(cfg: &Config, group: &str, topics: &[String]) -> anyhow::Result<Positions> {
    let (cfg, group, topics) = (cfg.clone(), group.to_string(), topics.to_vec());
    blocking(move || {
        let c = client(&cfg, &group)?;
        committed_on(&c, &group, &partitions(&c, &topics)?)
    })
    .await
}

/// Where `at` is, in every partition of `topics`.
pub async fn resolve(cfg: &Config, topics: &[String], at: StartAt) -> anyhow::Result<Positions> {
    let (cfg, topics) = (cfg.clone(), topics.to_vec());
    blocking(move || {
        let c = client(&cfg, "herald-offsets")?;
        let mut out = Positions::new();
        let mut by_time = BTreeMap::new();
        for (key, (low, high)) in watermarks(&c, &partitions(&c, &topics)?)? {
            let at = match at {
                StartAt::Earliest => low,
                StartAt::Latest => high,
                StartAt::Offset(o) => o.clamp(low, high),
                StartAt::Time(_) => {
                    by_time.insert(key, high);
                    continue;
                }
            };
            out.insert(key, at);
        }
        if let StartAt::Time(ms) = at
            && !by_time.is_empty()
        {
            let mut tpl = TopicPartitionList::new();
            for (t, p) in by_time.keys() {
                tpl.add_partition_offset(t, *p, Offset::Offset(ms as i64))?;
            }
            let found = c
                .offsets_for_times(tpl, WAIT)
                .context("cannot find the offsets for that time")?;
            for e in found.elements() {
                let key = (e.topic().to_string(), e.partition());
                // No record that late: past the end.
                let at = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => by_time[&key],
                };
                out.insert(key, at);
            }
        }
        Ok(out)
    })
    .await
}

/// Set `group`'s committed offsets to `positions`. The group must have no
/// member running (herald stops the handler's consumer first).
pub async fn commit(cfg: &Config, group: &str, positions: &Positions) -> anyhow::Result<()> {
    if positions.is_empty() {
        return Ok(());
    }
    let (cfg, group, positions) = (cfg.clone(), group.to_string(), positions.clone());
    blocking(move || {
        let c = client(&cfg, &group)?;
        let mut tpl = TopicPartitionList::new();
        for ((t, p), o) in &positions {
            tpl.add_partition_offset(t, *p, Offset::Offset(*o))?;
        }
        c.commit(&tpl, CommitMode::Sync)
            .with_context(|| format!("cannot set the offsets of group {group}"))
    })
    .await
}

/// Records `group` has not handled yet on `topics`, summed (for a group
/// whose consumer is not running: a paused handler's). A partition without
/// a commit counts from its oldest record.
pub async fn lag(cfg: &Config, group: &str, topics: &[String]) -> anyhow::Result<i64> {
    let (cfg, group, topics) = (cfg.clone(), group.to_string(), topics.to_vec());
    blocking(move || {
        let c = client(&cfg, &group)?;
        let parts = partitions(&c, &topics)?;
        let done = committed_on(&c, &group, &parts)?;
        Ok(watermarks(&c, &parts)?
            .iter()
            .map(|(k, (low, high))| high - done.get(k).copied().unwrap_or(*low).min(*high))
            .sum())
    })
    .await
}
