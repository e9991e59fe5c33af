//! The partition worker's path without the broker: ip-block records already
//! in memory go through a real node's dispatcher (decode, the blocking
//! handler in a fresh instance per batch of 100, the blocklist and its
//! journal, flushed every 100 ms as before a commit), one batch after
//! another on one thread. Against the same records only decoded, in the
//! same run.
//!
//! The end-to-end bench runs this path on two cores beside a broker and
//! librdkafka's threads, and its rates move by a fifth from run to run on a
//! shared machine; here nothing else runs, so a change to the worker's
//! path shows in a few seconds. Needs `target/handlers/blocking.wasm`
//! (`just bench` builds it).

mod shared;

use std::path::Path;
use std::time::{Duration, Instant};

use herald::codec::Decoder;
use herald::config::Config;
use herald::manifest::Mode;
use herald::node::Node;
use tokio_util::sync::CancellationToken;

const BATCH: usize = 100;
const FLUSH_EVERY: Duration = Duration::from_millis(100);

fn quick() -> bool {
    std::env::args().any(|a| a == "--quick")
}

fn rounds() -> usize {
    if quick() { 3 } else { 5 }
}

/// A node with the blocking handler in `dir`. Its broker is never
/// reached: nothing here is dead-lettered.
fn node(dir: &Path) -> Node {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let handlers = dir.join("handlers");
    std::fs::create_dir_all(&handlers).unwrap();
    let wasm = root.join("target/handlers/blocking.wasm");
    std::fs::copy(&wasm, handlers.join("blocking.wasm"))
        .unwrap_or_else(|e| panic!("{}: {e} (run `just build`)", wasm.display()));
    std::fs::copy(
        root.join("handlers/blocking/blocking.toml"),
        handlers.join("blocking.toml"),
    )
    .unwrap();
    let config = serde_json::json!({
        "@type": "Kafka",
        "brokers": ["127.0.0.1:9"],
        "groupId": "bench",
        "nodeId": "bench",
        "handlers": handlers,
        "stateDir": dir.join("state"),
        "topics": {"events": "herald.events"},
        "batch": {"size": BATCH},
        "blocklist": {"maxEntries": 1_000_000},
    });
    let path = dir.join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    Node::open(Config::load(&path).unwrap()).unwrap()
}

/// µs per event of `run`, median over the rounds.
fn median(mut run: impl FnMut() -> f64) -> f64 {
    let mut all: Vec<f64> = (0..rounds()).map(|_| run()).collect();
    all.sort_by(f64::total_cmp);
    all[all.len() / 2]
}

fn main() {
    // One partition: a worker's records.
    let records = shared::ip_blocks(if quick() { 50_000 } else { 200_000 }, 1);
    let n = records.len() as f64;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let decoder = Decoder::default();
    let decode = median(|| {
        let start = Instant::now();
        shared::decode_in_batches(&decoder, &records, BATCH);
        start.elapsed().as_secs_f64() * 1e6 / n
    });
    let pipeline = median(|| {
        // A fresh node each round: every event blocks a new address.
        let dir = tempfile::tempdir().unwrap();
        let node = node(dir.path());
        let dispatcher = node.dispatcher(Mode::Broadcast);
        let stop = CancellationToken::new();
        rt.block_on(async {
            let start = Instant::now();
            let mut flushed = Instant::now();
            for batch in records.chunks(BATCH) {
                dispatcher.handle(batch, &stop).await.unwrap();
                if flushed.elapsed() >= FLUSH_EVERY {
                    dispatcher.effects.flush().await.unwrap();
                    flushed = Instant::now();
                }
            }
            dispatcher.effects.flush().await.unwrap();
            let took = start.elapsed();
            assert_eq!(node.blocklist().len(), records.len());
            took.as_secs_f64() * 1e6 / n
        })
    });
    println!(
        "pipeline, {n} ip-block records on one thread, batches of {BATCH}, median of {} (same run)\n",
        rounds()
    );
    println!("{:<52} {:>12}", "", "µs/event");
    println!("{:<52} {decode:>12.3}", "decode only (baseline)");
    println!(
        "{:<52} {pipeline:>12.3}",
        "dispatcher: decode, handler, blocklist, journal"
    );
    println!(
        "{:<52} {:>12.2}",
        "ratio dispatcher / decode only",
        pipeline / decode
    );
}
