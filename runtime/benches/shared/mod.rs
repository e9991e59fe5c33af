//! What the benchmarks feed the node: ip-block records as a publisher
//! writes them.

use herald::codec::{Decoder, Record};

/// `n` ip-block records of about 165 bytes, each blocking an address of its
/// own, spread over `partitions` partitions (record `i` on `i % partitions`,
/// at offset `i`).
pub fn ip_blocks(n: u32, partitions: u32) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let ip = format!("198.{}.{}.{}", 18 + i / 65536, (i / 256) % 256, i % 256);
            let value = format!(
                r#"{{"v":1,"id":"e{i}","kind":"ip-block","origin":"node-2","ts":1795690000000,"body":{{"ip":"{ip}","action":"block","reason":"auth failures from this address"}}}}"#
            );
            Record {
                topic: "herald.events".into(),
                partition: (i % partitions) as i32,
                offset: i as i64,
                key: Some(ip.into_bytes()),
                value: Some(value.into_bytes()),
                timestamp_ms: Some(1_795_690_000_000),
                signature: None,
            }
        })
        .collect()
}

/// Decode `records` as a partition worker does: onto one vector per batch
/// of `batch`, cleared between batches.
pub fn decode_in_batches(decoder: &Decoder, records: &[Record], batch: usize) {
    let mut events = Vec::with_capacity(batch);
    for chunk in records.chunks(batch) {
        events.clear();
        for r in chunk {
            decoder.decode_into(r, &mut events).unwrap();
        }
        std::hint::black_box(&events);
    }
}
