//! Dispatch without a broker or a component: scripted handlers answer
//! each call from a queue, and dead letters land in a vector.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use super::*;
use crate::sandbox::FailureKind;

type Answer = Result<Vec<Outcome>, CallError>;

/// Answers calls from a script (then `Ok` for every event), and writes
/// down the ids of each call's events.
struct Scripted {
    name: String,
    kinds: Vec<&'static str>,
    stats: HandlerStats,
    script: Mutex<VecDeque<Answer>>,
    calls: Mutex<Vec<Vec<String>>>,
}

impl Scripted {
    fn new(name: &str, kinds: &[&'static str], script: Vec<Answer>) -> Arc<Scripted> {
        Arc::new(Scripted {
            name: name.into(),
            kinds: kinds.to_vec(),
            stats: HandlerStats::default(),
            script: Mutex::new(script.into()),
            calls: Mutex::default(),
        })
    }

    fn calls(&self) -> Vec<Vec<String>> {
        self.calls.lock().unwrap().clone()
    }
}

impl Handler for Scripted {
    fn name(&self) -> &str {
        &self.name
    }
    fn subscribes_to(&self, kind: &str) -> bool {
        self.kinds.contains(&kind)
    }
    fn stats(&self) -> &HandlerStats {
        &self.stats
    }
    fn call<'a>(&'a self, events: &'a [&'a Event]) -> BoxFuture<'a, Answer> {
        let ids = events.iter().map(|e| e.id.clone()).collect();
        self.calls.lock().unwrap().push(ids);
        let answer = self.script.lock().unwrap().pop_front();
        Box::pin(async move { answer.unwrap_or_else(|| Ok(vec![Outcome::Ok; events.len()])) })
    }
}

struct Set(Vec<Arc<Scripted>>);

impl Handlers for Set {
    fn current(&self) -> Vec<Arc<dyn Handler>> {
        self.0
            .iter()
            .map(|h| h.clone() as Arc<dyn Handler>)
            .collect()
    }
}

/// Keeps (offset, handler, error, payload) of each letter; fails the
/// first `refuse` sends, as a broker that is away would, and refuses
/// letters whose payload is larger than `max_payload`.
/// Offset, handler, error and payload of a letter.
type Kept = (i64, Option<String>, String, Vec<u8>);

#[derive(Default)]
struct Letters {
    kept: Mutex<Vec<Kept>>,
    refuse: AtomicU64,
    max_payload: Option<usize>,
    dropped: Mutex<Vec<Option<usize>>>,
}

impl DeadLetterSink for Letters {
    fn send<'a>(&'a self, l: DeadLetter<'a>) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            if self.refuse.load(Ordering::Relaxed) > 0 {
                self.refuse.fetch_sub(1, Ordering::Relaxed);
                return Err(SinkError::Transient("broker unreachable".into()));
            }
            if self.max_payload.is_some_and(|max| l.payload.len() > max) {
                return Err(SinkError::Refused("MessageSizeTooLarge".into()));
            }
            self.dropped.lock().unwrap().push(l.payload_dropped);
            let entry = (
                l.original.offset,
                l.handler.map(String::from),
                l.error,
                l.payload,
            );
            self.kept.lock().unwrap().push(entry);
            Ok(())
        })
    }
}

fn dispatcher(handlers: Vec<Arc<Scripted>>, letters: Arc<Letters>, attempts: u32) -> Dispatcher {
    Dispatcher {
        handlers: Arc::new(Set(handlers)),
        retry: Retry {
            attempts,
            backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        },
        effects: Arc::new(crate::effects::Recorder::new()),
        dead_letters: letters,
        decoder: Decoder::default(),
        max_hops: DEFAULT_MAX_HOPS,
        recent: Default::default(),
        lettered_elsewhere: None,
        keeper: None,
        only_letters: None,
        probes: None,
        pointers: None,
    }
}

/// Says that the shared group letters `herald.events`.
struct SharedLetters;

impl LetteredElsewhere for SharedLetters {
    fn lettered_elsewhere(&self, topic: &str) -> bool {
        topic == "herald.events"
    }
}

#[tokio::test]
async fn junk_lettered_by_the_shared_group_is_only_counted_here() {
    let h = Scripted::new("h", &["ip-block"], vec![]);
    let letters = Arc::new(Letters::default());
    let mut d = dispatcher(vec![h.clone()], letters.clone(), 5);
    d.lettered_elsewhere = Some(Arc::new(SharedLetters));
    let mut batch = records(3);
    batch[0].value = Some(b"not json".to_vec());
    // A topic the shared group does not read (Stalwart's): lettered here.
    batch[2].topic = "stwt.agora".into();
    batch[2].value = Some(b"junk".to_vec());
    d.handle(&batch, &CancellationToken::new()).await.unwrap();
    assert_eq!(h.calls(), vec![ids(&["e1"])]);
    let kept = letters.kept.lock().unwrap();
    let offsets: Vec<i64> = kept.iter().map(|k| k.0).collect();
    assert_eq!(offsets, vec![2], "{kept:?}");
}

#[tokio::test]
async fn a_topic_read_only_for_letters_reaches_no_handler() {
    let h = Scripted::new("h", &["ip-block"], vec![]);
    let letters = Arc::new(Letters::default());
    let mut d = dispatcher(vec![h.clone()], letters.clone(), 5);
    d.only_letters = Some("stwt.agora".into());
    let mut batch = records(3);
    batch[1].topic = "stwt.agora".into();
    batch[2].topic = "stwt.agora".into();
    batch[2].value = Some(b"junk".to_vec());
    d.handle(&batch, &CancellationToken::new()).await.unwrap();
    assert_eq!(h.calls(), vec![ids(&["e0"])]);
    let offsets: Vec<i64> = letters.kept.lock().unwrap().iter().map(|k| k.0).collect();
    assert_eq!(offsets, vec![2]);
}

#[tokio::test]
async fn probes_reach_no_handler_and_lose_no_event() {
    // Subscribed to every kind a manifest may name.
    let h = Scripted::new("h", crate::event::KINDS, vec![]);
    let letters = Arc::new(Letters::default());
    let d = dispatcher(vec![h.clone()], letters.clone(), 5);
    let mut batch = records(4);
    let probe = |id: &str| {
        serde_json::json!({"v": 1, "id": id, "origin": "a", "ts": 1, "kind": "probe",
            "body": {"probe": id, "asker": "a", "topic": "herald.events"}})
    };
    batch[1].value = Some(probe("p1").to_string().into_bytes());
    // A bundle: a probe between two events.
    let e = |id: &str| {
        serde_json::json!({"v": 1, "id": id, "origin": "a", "ts": 1, "kind": "ip-block",
            "body": {"ip": "192.0.2.1", "action": "block"}})
    };
    batch[2].value = Some(
        serde_json::json!([e("e2a"), probe("p2"), e("e2b")])
            .to_string()
            .into_bytes(),
    );
    d.handle(&batch, &CancellationToken::new()).await.unwrap();
    assert_eq!(h.calls(), vec![ids(&["e0", "e2a", "e2b", "e3"])]);
    assert!(letters.kept.lock().unwrap().is_empty());
}

/// Records at offsets 0.. of partition 0, each an ip-block event whose
/// id is `e<offset>`.
fn records(n: i64) -> Vec<Record> {
    (0..n)
        .map(|offset| Record {
            topic: "herald.events".into(),
            partition: 0,
            offset,
            key: None,
            value: Some(
                format!(
                    r#"{{"v":1,"id":"e{offset}","kind":"ip-block","origin":"t","ts":1,
                    "body":{{"ip":"192.0.2.{offset}","action":"block","reason":"r"}}}}"#
                )
                .into_bytes(),
            ),
            timestamp_ms: None,
            signature: None,
        })
        .collect()
}

fn failure() -> Answer {
    Err(CallError {
        kind: FailureKind::Trap,
        message: "unreachable".into(),
    })
}

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn a_retry_offers_the_event_and_everything_after_it_again() {
    let h = Scripted::new(
        "h",
        &["ip-block"],
        vec![Ok(vec![
            Outcome::Ok,
            Outcome::Retry("busy".into()),
            Outcome::Ok,
        ])],
    );
    let letters = Arc::new(Letters::default());
    let d = dispatcher(vec![h.clone()], letters.clone(), 3);
    d.handle(&records(3), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        h.calls(),
        vec![ids(&["e0", "e1", "e2"]), ids(&["e1", "e2"])]
    );
    assert_eq!(h.stats.handled.load(Ordering::Relaxed), 3);
    assert_eq!(h.stats.retried.load(Ordering::Relaxed), 1);
    assert!(letters.kept.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_failed_call_goes_one_event_at_a_time_and_only_the_culprit_is_dead_lettered() {
    // The batch fails, so e0 goes alone and passes; the rest fails
    // again, so e1 goes alone and fails on every attempt (1 + 1 retry);
    // e2 then passes.
    let h = Scripted::new(
        "h",
        &["ip-block"],
        vec![
            failure(),
            Ok(vec![Outcome::Ok]),
            failure(),
            failure(),
            failure(),
        ],
    );
    let letters = Arc::new(Letters::default());
    let d = dispatcher(vec![h.clone()], letters.clone(), 1);
    d.handle(&records(3), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        h.calls(),
        vec![
            ids(&["e0", "e1", "e2"]),
            ids(&["e0"]),
            ids(&["e1", "e2"]),
            ids(&["e1"]),
            ids(&["e1"]),
            ids(&["e2"]),
        ]
    );
    let kept = letters.kept.lock().unwrap();
    assert_eq!(kept.len(), 1);
    let (offset, handler, error, payload) = &kept[0];
    assert_eq!((*offset, handler.as_deref()), (1, Some("h")));
    assert!(error.contains("unreachable"), "{error}");
    assert_eq!(payload, records(3)[1].value.as_ref().unwrap());
    assert_eq!(h.stats.dead_lettered.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_reject_is_dead_lettered_at_once_and_the_rest_is_handled() {
    let h = Scripted::new(
        "h",
        &["ip-block"],
        vec![Ok(vec![Outcome::Reject("bad address".into()), Outcome::Ok])],
    );
    let letters = Arc::new(Letters::default());
    let d = dispatcher(vec![h.clone()], letters.clone(), 5);
    d.handle(&records(2), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(h.calls().len(), 1);
    let kept = letters.kept.lock().unwrap();
    assert_eq!((kept[0].0, kept[0].2.as_str()), (0, "bad address"));
}

#[tokio::test]
async fn an_undecodable_record_is_dead_lettered_without_a_handler() {
    let h = Scripted::new("h", &["ip-block"], vec![]);
    let letters = Arc::new(Letters::default());
    let d = dispatcher(vec![h.clone()], letters.clone(), 5);
    let mut batch = records(2);
    batch[0].value = Some(b"not json".to_vec());
    d.handle(&batch, &CancellationToken::new()).await.unwrap();
    assert_eq!(h.calls(), vec![ids(&["e1"])]);
    let kept = letters.kept.lock().unwrap();
    assert_eq!((kept[0].0, kept[0].1.clone()), (0, None));
    assert!(
        kept[0].2.starts_with("herald.events/0@0: "),
        "{}",
        kept[0].2
    );
    assert_eq!(kept[0].3, b"not json");
}

#[tokio::test]
async fn handlers_see_only_the_kinds_they_subscribe_to() {
    let blocks = Scripted::new("blocks", &["ip-block"], vec![]);
    let pushes = Scripted::new("pushes", &["push"], vec![]);
    let d = dispatcher(vec![blocks.clone(), pushes.clone()], Default::default(), 0);
    d.handle(&records(2), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(blocks.calls(), vec![ids(&["e0", "e1"])]);
    assert!(pushes.calls().is_empty());
}

#[tokio::test]
async fn stop_while_waiting_to_retry_abandons_the_batch() {
    let h = Scripted::new(
        "h",
        &["ip-block"],
        vec![Ok(vec![Outcome::Retry("later".into())])],
    );
    let letters = Arc::new(Letters::default());
    let mut d = dispatcher(vec![h.clone()], letters.clone(), 5);
    d.retry.backoff = Duration::from_secs(3600);
    d.retry.max_backoff = Duration::from_secs(3600);
    let stop = CancellationToken::new();
    let stopping = stop.clone();
    tokio::spawn(async move { stopping.cancel() });
    assert_eq!(d.handle(&records(1), &stop).await, Err(Abandoned));
    assert!(letters.kept.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_letter_too_large_for_the_broker_goes_without_its_payload() {
    let reason = "r".repeat(100_000);
    let h = Scripted::new(
        "h",
        &["ip-block"],
        vec![Ok(vec![Outcome::Reject(reason), Outcome::Ok])],
    );
    let letters = Arc::new(Letters {
        max_payload: Some(10),
        ..Default::default()
    });
    let d = dispatcher(vec![h.clone()], letters.clone(), 0);
    d.handle(&records(2), &CancellationToken::new())
        .await
        .unwrap();
    let kept = letters.kept.lock().unwrap();
    assert_eq!(kept.len(), 1);
    assert!(kept[0].3.is_empty());
    // The error text is cut, and says so.
    assert!(
        kept[0].2.len() < 1100 && kept[0].2.ends_with("bytes cut]"),
        "{}",
        kept[0].2.len()
    );
    let size = records(2)[0].value.as_ref().unwrap().len();
    assert_eq!(*letters.dropped.lock().unwrap(), vec![Some(size)]);
    assert_eq!(h.stats.handled.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_batch_of_many_events_is_handled_in_bounded_parts() {
    let h = Scripted::new("h", &["queue-refresh"], vec![]);
    let mut d = dispatcher(vec![h.clone()], Default::default(), 0);
    d.decoder = Decoder {
        stalwart: Some(("stwt.agora".into(), 9)),
        ..Default::default()
    };
    use crate::codec::stalwart;
    use crate::event::{Body, Empty};
    let per_record = 4_000;
    let bodies = vec![Body::QueueRefresh(Empty {}); per_record];
    let value = stalwart::encode(&stalwart::Record {
        node_id: 1,
        events: bodies,
    })
    .unwrap();
    let batch: Vec<Record> = (0..5)
        .map(|offset| Record {
            topic: "stwt.agora".into(),
            partition: 0,
            offset,
            key: None,
            value: Some(value.clone()),
            timestamp_ms: None,
            signature: None,
        })
        .collect();
    d.handle(&batch, &CancellationToken::new()).await.unwrap();
    let sizes: Vec<usize> = h.calls().iter().map(Vec::len).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 5 * per_record);
    assert!(
        sizes.iter().all(|&n| n <= MAX_EVENTS_IN_FLIGHT),
        "{sizes:?}"
    );
    assert!(sizes.len() > 1, "{sizes:?}");
}

#[tokio::test]
async fn events_past_the_hop_limit_are_dead_lettered_not_handled() {
    let h = Scripted::new("h", &["ip-block"], vec![]);
    let letters = Arc::new(Letters::default());
    let d = dispatcher(vec![h.clone()], letters.clone(), 0);
    let mut batch = records(3);
    for (r, hops) in batch.iter_mut().zip([4, 5, 0]) {
        let mut v: serde_json::Value = serde_json::from_slice(r.value.as_ref().unwrap()).unwrap();
        v["hops"] = hops.into();
        r.value = Some(v.to_string().into_bytes());
    }
    d.handle(&batch, &CancellationToken::new()).await.unwrap();
    assert_eq!(h.calls(), vec![ids(&["e0", "e2"])]);
    let kept = letters.kept.lock().unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].0, 1);
    assert!(kept[0].2.contains("publish.maxHops"), "{}", kept[0].2);
}

#[test]
fn recent_letters_count_the_last_hour_only() {
    let r = RecentLetters::default();
    let hour = 3_600_000;
    r.record(0);
    r.record(1);
    r.record(30 * 60_000);
    assert_eq!(r.last_hour(30 * 60_000), 3);
    assert_eq!(r.last_hour(hour + 60_000), 1);
    r.record(2 * hour);
    assert_eq!(r.last_hour(2 * hour), 1);
}

#[tokio::test]
async fn a_dead_letter_waits_for_the_broker_and_is_not_lost() {
    let h = Scripted::new(
        "h",
        &["ip-block"],
        vec![Ok(vec![Outcome::Reject("no".into())])],
    );
    let letters = Arc::new(Letters::default());
    letters.refuse.store(3, Ordering::Relaxed);
    let d = dispatcher(vec![h], letters.clone(), 0);
    d.handle(&records(1), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(letters.kept.lock().unwrap().len(), 1);
    assert_eq!(letters.refuse.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_bundle_record_hands_every_event_to_the_handler() {
    let h = Scripted::new("h", &["ip-block"], vec![]);
    let d = dispatcher(vec![h.clone()], Default::default(), 0);
    let mut batch = records(1);
    let one = |id: &str, ip: &str| {
        format!(
            r#"{{"v":1,"id":"{id}","kind":"ip-block","origin":"t","ts":1,
               "body":{{"ip":"{ip}","action":"block","reason":"r"}}}}"#
        )
    };
    batch[0].value =
        Some(format!("[{},{}]", one("b1", "192.0.2.4"), one("b2", "192.0.2.5")).into_bytes());
    d.handle(&batch, &CancellationToken::new()).await.unwrap();
    assert_eq!(h.calls(), vec![vec!["b1".to_string(), "b2".to_string()]]);
}
