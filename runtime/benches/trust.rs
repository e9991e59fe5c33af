//! What `trust` costs per record: decoding ip-block records as the node
//! does, without a trust policy and with one (signature check, kind and age
//! checks), in the same run. The difference is the verification cost; the
//! end-to-end benchmark (`just bench throughput`) gives the per-event budget
//! it is compared with.

use std::sync::Arc;
use std::time::Instant;

use herald::codec::{Decoder, Record};
use herald::trust::keys::{NodeKey, signature_text};
use herald::trust::{Policy, Signature, TrustedKey};

const ROUNDS: usize = 5;

/// Events per run: 20 000, or 2 000 with `--quick` (`just bench-quick`).
fn events() -> usize {
    if std::env::args().any(|a| a == "--quick") {
        2_000
    } else {
        20_000
    }
}

fn envelope(i: usize) -> String {
    let ip = format!("198.18.{}.{}", i / 256, i % 256);
    format!(
        r#"{{"v":1,"id":"0193c6a0-{i:012}","kind":"ip-block","origin":"mx1","ts":{ts},"body":{{"ip":"{ip}","action":"block","reason":"bench"}}}}"#,
        ts = herald::event::now_ms()
    )
}

/// `events()` events, `per_record` to a record (1: plain envelopes; more:
/// bundles), each record signed.
fn records(key: &NodeKey, per_record: usize) -> Vec<Record> {
    (0..events() / per_record)
        .map(|i| {
            let value = if per_record == 1 {
                envelope(i)
            } else {
                let items: Vec<String> = (0..per_record)
                    .map(|j| envelope(i * per_record + j))
                    .collect();
                format!("[{}]", items.join(","))
            };
            let record_key = format!("bench:{i}");
            let sig = key.sign(Some(record_key.as_bytes()), value.as_bytes());
            Record {
                topic: "herald.events".into(),
                partition: 0,
                offset: i as i64,
                key: Some(record_key.into_bytes()),
                value: Some(value.into_bytes()),
                timestamp_ms: None,
                signature: Some(Signature {
                    key_id: key.id().as_bytes().to_vec(),
                    signature: signature_text(&sig).into_bytes(),
                }),
            }
        })
        .collect()
}

/// Median µs per event over the rounds.
fn per_event(decoder: &Decoder, records: &[Record]) -> f64 {
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            let mut events = 0;
            for r in records {
                let decoded = decoder.decode(r).expect("decodes");
                events += decoded.len();
                std::hint::black_box(decoded);
            }
            start.elapsed().as_secs_f64() * 1e6 / events as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = NodeKey::load_or_create(&dir.path().join("bench.key")).unwrap();
    let mut policy = Policy::new([TrustedKey {
        key: key.public(),
        kinds: None,
    }]);
    policy
        .max_age
        .insert("ip-block", std::time::Duration::from_secs(3600));
    let plain = Decoder::default();
    let trusted = Decoder {
        trust: Some(Arc::new(policy)),
        ..Decoder::default()
    };
    println!(
        "trust: {} signed ip-block events, median of {ROUNDS} rounds",
        events()
    );
    for per_record in [1, 10, 100] {
        let records = records(&key, per_record);
        // Warm up both paths once.
        per_event(&plain, &records[..records.len().min(100)]);
        per_event(&trusted, &records[..records.len().min(100)]);
        let base = per_event(&plain, &records);
        let with = per_event(&trusted, &records);
        let what = if per_record == 1 {
            "one event a record".to_string()
        } else {
            format!("bundles of {per_record}")
        };
        println!(
            "  {what:<20} decode {base:>6.2} µs/event (baseline), with trust {with:>6.2} \
             µs/event: verification {:>6.2} µs/event, {:.1}× the baseline",
            with - base,
            with / base
        );
    }
}
