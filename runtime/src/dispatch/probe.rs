//! Round-trip probes: does coordination work, end to end, right now?
//!
//! Every `probeInterval` a node publishes a `probe` event on each herald
//! topic it reads. Every node's broadcast group reads those topics, so each
//! node sees each probe, and answers it on the same topic with who it is:
//! its id, herald's version, its handlers and their lag. The asker times
//! how long each answer took to come back, per topic and answering node, and
//! every node learns from the answers it sees (to anyone's probe) which
//! nodes are alive. A node heard from before but not in the last
//! [`silent_after`] is named as silent.
//!
//! Probes are signed like every event, and with `trust` on they must be
//! (an unsigned answer would vouch for a node that is not there). What the
//! topics hold from earlier (a new node reading history, a replay) says
//! nothing about now: a probe or answer older than [`FRESH`] is ignored. A
//! node answers one probe per asker and topic per [`answer_spacing`], with
//! at most [`ANSWERS_IN_FLIGHT`] answers unacknowledged, and remembers at
//! most [`MAX_NODES`] nodes: a flood of probes costs bounded work.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::BoxFuture;
use crate::event::probe::{NodeReport, Probe};
use crate::event::{Body, Event, now_ms};

/// Probes and answers older than this (by their `ts`) are history: not
/// answered, not counted.
pub const FRESH: Duration = Duration::from_secs(60);
/// A node answers one probe per asker and topic per this: half its own
/// probe interval (the cluster's nodes share one), between 0.5 s and 5 s.
/// An asker probing more often than the others is answered less often
/// than it asks.
pub fn answer_spacing(interval: Duration) -> Duration {
    if interval.is_zero() {
        return Duration::from_secs(5);
    }
    (interval / 2).clamp(Duration::from_millis(500), Duration::from_secs(5))
}
/// Answers sent and not yet acknowledged; past this, a probe goes unanswered.
pub const ANSWERS_IN_FLIGHT: usize = 16;
/// Nodes remembered; the one heard from longest ago is forgotten first.
pub const MAX_NODES: usize = 256;
/// Probes of this node still waiting for answers (the oldest is dropped).
const MAX_OUTSTANDING: usize = 64;
/// A node not heard from for a day is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// How long without an answer before a node counts as silent: three probe
/// rounds (90 s at the default interval).
pub fn silent_after(interval: Duration) -> Duration {
    interval * 3
}

/// Where probes and answers go out: the producer.
pub trait Sender: Send + Sync + 'static {
    fn send_on<'a>(&'a self, topic: &'a str, event: &'a Event)
    -> BoxFuture<'a, Result<(), String>>;
}

/// This node's prober: sends probes, answers others', keeps what it heard.
pub struct Prober {
    node: String,
    topics: Vec<String>,
    interval: Duration,
    /// This node as its answers describe it (handlers and lag change).
    describe: Box<dyn Fn() -> NodeReport + Send + Sync>,
    sender: Arc<dyn Sender>,
    inner: Mutex<Inner>,
    in_flight: Arc<AtomicUsize>,
}

#[derive(Default)]
struct Inner {
    sent: VecDeque<Sent>,
    /// When this node last sent a probe on each topic (Unix ms).
    last_sent: BTreeMap<String, u64>,
    heard: HashMap<String, Heard>,
    /// (asker, topic) → when this node last answered it.
    answered: HashMap<(String, String), Instant>,
}

struct Sent {
    id: String,
    topic: String,
    at: Instant,
}

/// A node, as last heard.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Heard {
    #[serde(flatten)]
    pub report: NodeReport,
    /// The `ts` of its newest answer.
    pub last_heard_at: u64,
    /// Its answers to this node's probes, per topic.
    pub round_trips: BTreeMap<String, RoundTrip>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoundTrip {
    pub ms: f64,
    /// When the answer came back (Unix ms).
    pub at: u64,
}

impl Prober {
    pub fn new(
        node: String,
        topics: Vec<String>,
        interval: Duration,
        describe: Box<dyn Fn() -> NodeReport + Send + Sync>,
        sender: Arc<dyn Sender>,
    ) -> Prober {
        Prober {
            node,
            topics,
            interval,
            describe,
            sender,
            inner: Mutex::new(Inner::default()),
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Send a probe on every topic each interval, until `stop`.
    pub async fn run(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        if self.interval.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            for topic in &self.topics {
                let id = uuid::Uuid::now_v7().to_string();
                let probe = Event::new(
                    &self.node,
                    Body::Probe(Probe {
                        probe: id.clone(),
                        asker: self.node.clone(),
                        topic: topic.clone(),
                        answer: None,
                    }),
                );
                {
                    let mut inner = self.inner.lock().unwrap();
                    if inner.sent.len() == MAX_OUTSTANDING {
                        inner.sent.pop_front();
                    }
                    inner.sent.push_back(Sent {
                        id,
                        topic: topic.clone(),
                        at: Instant::now(),
                    });
                    inner.last_sent.insert(topic.clone(), probe.ts);
                }
                if let Err(err) = self.sender.send_on(topic, &probe).await {
                    metrics::counter!("herald_probes_total", "result" => "not-sent").increment(1);
                    tracing::warn!(topic, "cannot send a probe: {err}");
                } else {
                    metrics::counter!("herald_probes_total", "result" => "sent").increment(1);
                }
            }
        }
    }

    /// A `probe` event read by this node's broadcast group.
    pub fn seen(&self, event: &Event) {
        let Body::Probe(probe) = &event.body else {
            return;
        };
        let now = now_ms();
        if event.ts + (FRESH.as_millis() as u64) < now {
            metrics::counter!("herald_probes_ignored_total", "why" => "stale").increment(1);
            return;
        }
        // A probe copied onto another topic, or an answer claiming to be
        // from a node that did not publish it, tells nothing true.
        if *probe.topic != *event.position.topic {
            metrics::counter!("herald_probes_ignored_total", "why" => "wrong-topic").increment(1);
            return;
        }
        match &probe.answer {
            None if probe.asker == event.origin => self.answer(probe),
            Some(report) if report.node == event.origin => self.heard(probe, report, event.ts),
            _ => {
                metrics::counter!("herald_probes_ignored_total", "why" => "not-its-origin")
                    .increment(1);
            }
        }
    }

    fn answer(&self, probe: &Probe) {
        {
            let mut inner = self.inner.lock().unwrap();
            let key = (probe.asker.clone(), probe.topic.clone());
            if inner
                .answered
                .get(&key)
                .is_some_and(|at| at.elapsed() < answer_spacing(self.interval))
            {
                metrics::counter!("herald_probes_ignored_total", "why" => "too-soon").increment(1);
                return;
            }
            if inner.answered.len() >= 4 * MAX_NODES {
                inner
                    .answered
                    .retain(|_, at| at.elapsed() < answer_spacing(self.interval));
                if inner.answered.len() >= 4 * MAX_NODES {
                    metrics::counter!("herald_probes_ignored_total", "why" => "too-many-askers")
                        .increment(1);
                    return;
                }
            }
            inner.answered.insert(key, Instant::now());
        }
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= ANSWERS_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            metrics::counter!("herald_probes_ignored_total", "why" => "busy").increment(1);
            return;
        }
        let answer = Event::new(
            &self.node,
            Body::Probe(Probe {
                probe: probe.probe.clone(),
                asker: probe.asker.clone(),
                topic: probe.topic.clone(),
                answer: Some((self.describe)()),
            }),
        );
        let (sender, in_flight) = (self.sender.clone(), self.in_flight.clone());
        let topic = probe.topic.clone();
        // Off the partition's path: the batch does not wait for the answer.
        tokio::spawn(async move {
            if let Err(err) = sender.send_on(&topic, &answer).await {
                tracing::warn!("cannot answer a probe: {err}");
            }
            in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }

    fn heard(&self, probe: &Probe, report: &NodeReport, ts: u64) {
        let mut inner = self.inner.lock().unwrap();
        let round_trip = if probe.asker == self.node {
            inner
                .sent
                .iter()
                .find(|s| s.id == probe.probe && s.topic == probe.topic)
                .map(|s| s.at.elapsed())
        } else {
            None
        };
        if !inner.heard.contains_key(&report.node) && inner.heard.len() >= MAX_NODES {
            let oldest = inner
                .heard
                .iter()
                .min_by_key(|(_, h)| h.last_heard_at)
                .map(|(n, _)| n.clone());
            inner.heard.remove(&oldest.unwrap_or_default());
        }
        let heard = inner
            .heard
            .entry(report.node.clone())
            .or_insert_with(|| Heard {
                report: report.clone(),
                last_heard_at: ts,
                round_trips: BTreeMap::new(),
            });
        if ts >= heard.last_heard_at {
            heard.report = report.clone();
            heard.last_heard_at = ts;
        }
        if let Some(rtt) = round_trip {
            metrics::histogram!("herald_probe_round_trip_seconds",
                "topic" => probe.topic.clone(), "node" => report.node.clone())
            .record(rtt.as_secs_f64());
            heard.round_trips.insert(
                probe.topic.clone(),
                RoundTrip {
                    ms: rtt.as_secs_f64() * 1000.0,
                    at: now_ms(),
                },
            );
        }
    }

    /// What `GET /v1/status` says of coordination: per topic, which nodes
    /// answered this node's probes and how fast; every node heard of, the
    /// silent ones marked; and whether this node's own probes came back on
    /// every topic lately (`working`).
    pub fn status(&self, now: u64) -> serde_json::Value {
        let silent_ms = silent_after(self.interval).as_millis() as u64;
        let mut inner = self.inner.lock().unwrap();
        let forget = FORGET_AFTER.as_millis() as u64;
        inner.heard.retain(|_, h| h.last_heard_at + forget > now);
        let mut nodes: Vec<&Heard> = inner.heard.values().collect();
        nodes.sort_by(|a, b| a.report.node.cmp(&b.report.node));
        let recent = |rt: &RoundTrip| rt.at + silent_ms > now;
        let topics: Vec<_> = self
            .topics
            .iter()
            .map(|topic| {
                let answers: Vec<_> = nodes
                    .iter()
                    .filter_map(|h| {
                        let rt = h.round_trips.get(topic).filter(|rt| recent(rt))?;
                        Some(serde_json::json!({"node": h.report.node, "ms": rt.ms, "at": rt.at}))
                    })
                    .collect();
                serde_json::json!({
                    "topic": topic,
                    "lastSentAt": inner.last_sent.get(topic),
                    "answers": answers,
                })
            })
            .collect();
        let working = (!self.interval.is_zero()).then(|| {
            let own = inner.heard.get(&self.node);
            self.topics
                .iter()
                .all(|t| own.and_then(|h| h.round_trips.get(t)).is_some_and(&recent))
        });
        let listed: Vec<_> = nodes
            .iter()
            .map(|h| {
                let mut v = serde_json::to_value(h).expect("a report serialises");
                v["silent"] = (h.last_heard_at + silent_ms <= now).into();
                v
            })
            .collect();
        serde_json::json!({
            "intervalMs": self.interval.as_millis() as u64,
            "silentAfterMs": silent_ms,
            "working": working,
            "topics": topics,
            "nodes": listed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Position;

    /// Keeps what would have been published, and says when.
    #[derive(Default)]
    struct Sent(Mutex<Vec<(String, Event)>>, tokio::sync::Notify);

    impl Sender for Sent {
        fn send_on<'a>(
            &'a self,
            topic: &'a str,
            event: &'a Event,
        ) -> BoxFuture<'a, Result<(), String>> {
            self.0
                .lock()
                .unwrap()
                .push((topic.to_string(), event.clone()));
            self.1.notify_one();
            Box::pin(async { Ok(()) })
        }
    }

    fn prober(node: &str) -> (Arc<Prober>, Arc<Sent>) {
        let sent = Arc::new(Sent::default());
        let name = node.to_string();
        let describe = Box::new(move || NodeReport {
            node: name.clone(),
            version: "1.2.3".into(),
            handlers: Vec::new(),
        });
        let p = Prober::new(
            node.into(),
            vec!["herald.events".into(), "herald.state".into()],
            Duration::from_secs(30),
            describe,
            sent.clone(),
        );
        (Arc::new(p), sent)
    }

    /// `body` as read from `topic`, published by `origin` at `ts`.
    fn read(topic: &str, origin: &str, ts: u64, body: Probe) -> Event {
        let mut e = Event::new(origin, Body::Probe(body));
        e.ts = ts;
        e.position = Position {
            topic: topic.into(),
            ..Position::default()
        };
        e
    }

    fn ask(asker: &str, topic: &str, id: &str) -> Probe {
        Probe {
            probe: id.into(),
            asker: asker.into(),
            topic: topic.into(),
            answer: None,
        }
    }

    /// What was sent once `n` events were (or whatever was, after 10 s).
    async fn settle(sent: &Sent, n: usize) -> Vec<(String, Event)> {
        let enough = async {
            while sent.0.lock().unwrap().len() < n {
                sent.1.notified().await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), enough).await;
        sent.0.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn a_probe_is_answered_on_its_topic_once_per_spacing() {
        let (p, sent) = prober("b");
        p.seen(&read(
            "herald.state",
            "a",
            now_ms(),
            ask("a", "herald.state", "p1"),
        ));
        p.seen(&read(
            "herald.state",
            "a",
            now_ms(),
            ask("a", "herald.state", "p2"),
        ));
        let out = settle(&sent, 1).await;
        assert_eq!(out.len(), 1, "the second probe came too soon: {out:?}");
        let (topic, answer) = &out[0];
        assert_eq!(topic, "herald.state");
        let Body::Probe(a) = &answer.body else {
            panic!("{answer:?}")
        };
        assert_eq!((a.probe.as_str(), a.asker.as_str()), ("p1", "a"));
        assert_eq!(a.answer.as_ref().unwrap().node, "b");
        assert_eq!(answer.origin, "b");
        // Another asker, or another topic, is answered.
        p.seen(&read(
            "herald.events",
            "a",
            now_ms(),
            ask("a", "herald.events", "p3"),
        ));
        assert_eq!(settle(&sent, 2).await.len(), 2);
    }

    #[tokio::test]
    async fn history_copies_and_forgeries_are_not_answered() {
        let (p, sent) = prober("b");
        let old = now_ms() - FRESH.as_millis() as u64 - 1000;
        p.seen(&read(
            "herald.events",
            "a",
            old,
            ask("a", "herald.events", "old"),
        ));
        // Published on the state topic, claiming to probe the events topic.
        p.seen(&read(
            "herald.state",
            "a",
            now_ms(),
            ask("a", "herald.events", "moved"),
        ));
        // Published by c in a's name.
        p.seen(&read(
            "herald.events",
            "c",
            now_ms(),
            ask("a", "herald.events", "forged"),
        ));
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(sent.0.lock().unwrap().is_empty());
        // An answer in another node's name is not believed either.
        let mut answer = ask("b", "herald.events", "x");
        answer.answer = Some(NodeReport {
            node: "d".into(),
            ..NodeReport::default()
        });
        p.seen(&read("herald.events", "c", now_ms(), answer));
        assert_eq!(p.status(now_ms())["nodes"], serde_json::json!([]));
    }

    #[tokio::test]
    async fn own_probes_that_come_back_make_coordination_work() {
        let (p, sent) = prober("a");
        assert_eq!(p.status(now_ms())["working"], false);
        let stop = tokio_util::sync::CancellationToken::new();
        let run = tokio::spawn(p.clone().run(stop.clone()));
        let probes = settle(&sent, 2).await;
        stop.cancel();
        run.await.unwrap();
        assert_eq!(probes.len(), 2, "one probe per topic: {probes:?}");
        // Node a's broadcast group reads its probes and answers them; the
        // answers come back.
        for (topic, probe) in &probes {
            let mut read_back = probe.clone();
            read_back.position.topic = topic.as_str().into();
            p.seen(&read_back);
        }
        let answers = settle(&sent, 4).await;
        assert_eq!(answers.len(), 4);
        assert_eq!(p.status(now_ms())["working"], false, "no answer read yet");
        for (topic, answer) in &answers[2..] {
            let mut read_back = answer.clone();
            read_back.position.topic = topic.as_str().into();
            p.seen(&read_back);
        }
        let s = p.status(now_ms());
        assert_eq!(s["working"], true, "{s}");
        assert_eq!(s["topics"][0]["answers"][0]["node"], "a");
        assert_eq!(s["nodes"][0]["version"], "1.2.3");
        assert_eq!(s["nodes"][0]["silent"], false);
        // Heard long ago: silent.
        let later = now_ms() + silent_after(Duration::from_secs(30)).as_millis() as u64 + 1;
        let s = p.status(later);
        assert_eq!(
            (s["working"].clone(), s["nodes"][0]["silent"].clone()),
            (false.into(), true.into())
        );
    }

    #[test]
    fn a_flood_of_answering_nodes_is_bounded() {
        let (p, _) = prober("a");
        for n in 0..MAX_NODES + 50 {
            let node = format!("n{n}");
            let mut answer = ask("a", "herald.events", "p");
            answer.answer = Some(NodeReport {
                node: node.clone(),
                ..NodeReport::default()
            });
            p.seen(&read(
                "herald.events",
                &node,
                now_ms() - 1000 + n as u64,
                answer,
            ));
        }
        let nodes = p.status(now_ms() + 10_000)["nodes"]
            .as_array()
            .unwrap()
            .len();
        assert_eq!(nodes, MAX_NODES);
    }
}
