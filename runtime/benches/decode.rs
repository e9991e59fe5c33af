//! Decode throughput: ip-block records (about 156 bytes, the shape of the
//! end-to-end bench's) through `Event::from_json` and the node's `Decoder`,
//! against serde_json merely skimming the same bytes (`IgnoredAny`) in the
//! same run: the floor any JSON reader pays. Target: 0.5 µs per record.

mod shared;

use std::time::{Duration, Instant};

use herald::codec::{Decoder, Record};
use herald::event::{Event, Position};

const ROUNDS: usize = 5;

fn quick() -> bool {
    std::env::args().any(|a| a == "--quick")
}

fn records() -> Vec<Record> {
    shared::ip_blocks(if quick() { 50_000 } else { 200_000 }, 4)
}

fn median(mut f: impl FnMut() -> Duration) -> Duration {
    let mut runs: Vec<Duration> = (0..ROUNDS).map(|_| f()).collect();
    runs.sort();
    runs[ROUNDS / 2]
}

fn main() {
    let records = records();
    let n = records.len();
    let bytes: usize = records
        .iter()
        .map(|r| r.value.as_ref().unwrap().len())
        .sum();
    let skim = median(|| {
        let t = Instant::now();
        for r in &records {
            let v: serde::de::IgnoredAny =
                serde_json::from_slice(r.value.as_ref().unwrap()).unwrap();
            std::hint::black_box(v);
        }
        t.elapsed()
    });
    let from_json = median(|| {
        let t = Instant::now();
        for r in &records {
            let position = Position {
                topic: r.topic.clone(),
                partition: r.partition,
                offset: r.offset,
            };
            let e = Event::from_json(r.value.as_ref().unwrap(), position).unwrap();
            std::hint::black_box(e);
        }
        t.elapsed()
    });
    let decoder = Decoder::default();
    // As a partition worker decodes: onto one vector per batch of 100.
    let decode = median(|| {
        let t = Instant::now();
        shared::decode_in_batches(&decoder, &records, 100);
        t.elapsed()
    });
    println!(
        "decode, {n} ip-block records of {} bytes on average, median of {ROUNDS} (same run)\n",
        bytes / n
    );
    println!(
        "{:<40} {:>12} {:>10} {:>12}",
        "", "records/s", "µs/record", "vs skim"
    );
    for (name, took) in [
        ("serde_json skim (IgnoredAny), baseline", skim),
        ("Event::from_json", from_json),
        ("Decoder::decode_into (node's path)", decode),
    ] {
        println!(
            "{name:<40} {:>12.0} {:>10.3} {:>11.2}x",
            n as f64 / took.as_secs_f64(),
            took.as_secs_f64() * 1e6 / n as f64,
            took.as_secs_f64() / skim.as_secs_f64()
        );
    }
}
