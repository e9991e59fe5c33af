//! From Kafka records to events.
//!
//! herald's own events travel as the JSON envelope of [`crate::event`]; the
//! mail server's own cluster traffic travels in Stalwart's binary batches,
//! read and written by [`stalwart`] so that herald can sit on a cluster's
//! `stwt.agora` topic beside Stalwart v0.16 nodes. [`Decoder`] picks the form
//! by topic and gives every event its id, origin and position. With a trust
//! policy, it also lets through only what [`crate::trust`] admits.

pub mod stalwart;

use std::sync::Arc;

use crate::event::{Event, Position};
use crate::trust::{Policy, Signature, StalwartRecords, Untrusted};

/// One Kafka record, detached from the consumer.
#[derive(Clone, Debug)]
pub struct Record {
    /// Shared by every record of the topic: one allocation, not one per record.
    pub topic: std::sync::Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub timestamp_ms: Option<i64>,
    /// The record's signature headers, if it has both.
    pub signature: Option<Signature>,
}

/// A record that did not decode whole: the events decoded before the fault
/// (a Stalwart batch acts on those, so must herald) and why.
#[derive(Debug)]
pub struct Undecodable {
    pub kept: Vec<Event>,
    pub error: String,
}

/// How records become events.
#[derive(Clone, Debug)]
pub struct Decoder {
    /// Stalwart's topic and this node's Stalwart node id, when consuming it.
    pub stalwart: Option<(String, u16)>,
    /// The most events one Stalwart record may hold; a record with more is
    /// dead-lettered whole (`stalwart.maxEventsPerRecord`).
    pub max_stalwart_events: usize,
    /// The config's `trust`: when set, only admitted records decode.
    pub trust: Option<Arc<Policy>>,
}

impl Default for Decoder {
    fn default() -> Decoder {
        Decoder {
            stalwart: None,
            max_stalwart_events: stalwart::DEFAULT_MAX_EVENTS,
            trust: None,
        }
    }
}

impl Decoder {
    /// Whether records of `topic` are Stalwart batches.
    pub fn is_stalwart(&self, topic: &str) -> bool {
        self.stalwart.as_ref().is_some_and(|(t, _)| t == topic)
    }

    /// Decode one record into its events. Errors name the record
    /// (`topic/partition@offset`).
    pub fn decode(&self, r: &Record) -> Result<Vec<Event>, Undecodable> {
        let mut events = Vec::new();
        match self.decode_into(r, &mut events) {
            Ok(()) => Ok(events),
            Err(error) => Err(Undecodable {
                kept: events,
                error,
            }),
        }
    }

    /// [`Decoder::decode`] onto the end of `out`, where a batch's events
    /// are gathered. On an error, `out` holds the events to act on
    /// nonetheless ([`Undecodable::kept`]) after those it held before.
    pub fn decode_into(&self, r: &Record, out: &mut Vec<Event>) -> Result<(), String> {
        let fail =
            |e: &dyn std::fmt::Display| format!("{}/{}@{}: {e}", r.topic, r.partition, r.offset);
        let Some(value) = &r.value else {
            return Err(fail(&"record has no value"));
        };
        let position = Position {
            topic: r.topic.clone(),
            partition: r.partition,
            offset: r.offset,
        };
        let untrusted = |e: Untrusted| {
            metrics::counter!("herald_untrusted_total", "reason" => e.reason()).increment(1);
            fail(&e)
        };
        if let Some((topic, own)) = &self.stalwart
            && **topic == *r.topic
        {
            if self
                .trust
                .as_ref()
                .is_some_and(|t| t.stalwart == StalwartRecords::Refuse)
            {
                return Err(untrusted(Untrusted::StalwartRefused));
            }
            let decoded =
                stalwart::decode_at_most(value, self.max_stalwart_events).map_err(|e| fail(&e))?;
            if decoded.node_id == *own {
                // Our own batch, echoed back by the topic.
                return Ok(());
            }
            let ts = r.timestamp_ms.unwrap_or(0).max(0) as u64;
            out.extend(
                decoded
                    .events
                    .into_iter()
                    .enumerate()
                    .map(|(i, body)| Event {
                        id: format!("stwt-{}-{}-{}-{i}", decoded.node_id, r.partition, r.offset),
                        origin: format!("stalwart:{}", decoded.node_id),
                        ts,
                        hops: 0,
                        position: position.clone(),
                        body,
                    }),
            );
            return match decoded.error {
                None => Ok(()),
                Some(e) => Err(fail(&e)),
            };
        }
        let Some(policy) = &self.trust else {
            return Event::read_record(value, position, out).map_err(|e| fail(&e));
        };
        // The signature first: bytes nobody trusted are not even parsed. One
        // signature covers a whole bundle, and a bundle is admitted whole or
        // not at all.
        let signer = policy
            .verify(r.key.as_deref(), value, r.signature.as_ref())
            .map_err(untrusted)?;
        let before = out.len();
        let admitted = Event::read_record(value, position, out)
            .map_err(|e| fail(&e))
            .and_then(|()| {
                let now = crate::event::now_ms();
                out[before..]
                    .iter()
                    .try_for_each(|event| policy.admit(event, signer.as_ref(), now))
                    .map_err(untrusted)
            });
        if admitted.is_err() {
            out.truncate(before);
        }
        admitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(topic: &str, value: &[u8]) -> Record {
        Record {
            topic: topic.into(),
            partition: 2,
            offset: 7,
            key: None,
            value: Some(value.to_vec()),
            timestamp_ms: Some(1_700_000_000_000),
            signature: None,
        }
    }

    #[test]
    fn errors_name_the_record() {
        let d = Decoder::default();
        let err = d.decode(&record("herald.events", b"{")).unwrap_err();
        assert!(
            err.error.starts_with("herald.events/2@7: "),
            "{}",
            err.error
        );
        let mut empty = record("herald.events", b"");
        empty.value = None;
        assert!(d.decode(&empty).unwrap_err().error.contains("no value"));
    }

    #[test]
    fn bundles_decode_in_order_and_name_the_bad_element() {
        let d = Decoder::default();
        let e = |id: &str| {
            format!(r#"{{"v":1,"id":"{id}","kind":"queue-refresh","origin":"o","ts":1}}"#)
        };
        let ok = format!("[{}, {}]", e("a"), e("b"));
        let ids: Vec<_> = d
            .decode(&record("herald.events", ok.as_bytes()))
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
        let bad = format!(r#"[{}, {{"v":1}}, {}]"#, e("a"), e("c"));
        let err = d
            .decode(&record("herald.events", bad.as_bytes()))
            .unwrap_err();
        assert_eq!(err.kept.len(), 1);
        assert!(err.error.contains("bundle element 1"), "{}", err.error);
        let huge = format!("[{}]", vec![e("x"); crate::event::MAX_BUNDLE + 1].join(","));
        let err = d
            .decode(&record("herald.events", huge.as_bytes()))
            .unwrap_err();
        assert!(err.error.contains("at most 1000"), "{}", err.error);
    }

    #[test]
    fn a_bundle_is_admitted_whole_or_not_at_all() {
        use crate::trust::keys::{NodeKey, signature_text};
        use crate::trust::{Policy, Signature, TrustedKey};
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = NodeKey::load_or_create(&dir.path().join("k")).unwrap();
        let policy = Policy::new([TrustedKey {
            key: key.public(),
            kinds: Some(["queue-refresh"].into()),
        }]);
        let d = Decoder {
            trust: Some(Arc::new(policy)),
            ..Decoder::default()
        };
        let signed = |value: &str| {
            let mut r = record("herald.events", value.as_bytes());
            r.key = Some(b"k".to_vec());
            r.signature = Some(Signature {
                key_id: key.id().as_bytes().to_vec(),
                signature: signature_text(&key.sign(Some(b"k"), value.as_bytes())).into_bytes(),
            });
            r
        };
        let q = r#"{"v":1,"id":"a","kind":"queue-refresh","origin":"o","ts":1}"#;
        let s = r#"{"v":1,"id":"b","kind":"settings-reload","origin":"o","ts":1}"#;
        assert_eq!(d.decode(&signed(&format!("[{q},{q}]"))).unwrap().len(), 2);
        let err = d.decode(&signed(&format!("[{q},{s}]"))).unwrap_err();
        assert!(err.kept.is_empty());
        assert!(err.error.contains("kind-not-allowed"), "{}", err.error);
    }

    #[test]
    fn stalwart_batches_get_ids_and_own_batches_are_skipped() {
        use crate::event::{Body, Empty};
        let d = Decoder {
            stalwart: Some(("stwt.agora".into(), 9)),
            max_stalwart_events: 3,
            trust: None,
        };
        let bodies = vec![Body::QueueRefresh(Empty {}); 2];
        let from_peer = stalwart::encode_batches(3, &bodies).unwrap().remove(0);
        let events = d.decode(&record("stwt.agora", &from_peer)).unwrap();
        let ids: Vec<_> = events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["stwt-3-2-7-0", "stwt-3-2-7-1"]);
        assert_eq!(events[0].origin, "stalwart:3");
        let own = stalwart::encode_batches(9, &bodies).unwrap().remove(0);
        assert!(d.decode(&record("stwt.agora", &own)).unwrap().is_empty());
        // The same bytes on another topic are not Stalwart's.
        assert!(d.decode(&record("herald.events", &own)).is_err());
        // A record over the cap is refused whole, naming the cap.
        let four = vec![Body::QueueRefresh(Empty {}); 4];
        let big = stalwart::encode_batches(3, &four).unwrap().remove(0);
        let err = d.decode(&record("stwt.agora", &big)).unwrap_err();
        assert!(err.kept.is_empty());
        assert!(err.error.contains("more than 3 events"), "{}", err.error);
    }
}
