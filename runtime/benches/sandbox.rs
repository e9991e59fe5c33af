//! Sandbox throughput: the blocking handler through wasmtime, with a fresh
//! instance per batch (what the node does) and with a reused instance, at
//! batch sizes 1 and 100, against the same handler logic called natively in
//! the same run; then the same handler written in Python and JavaScript
//! against the Rust one. Machines here are shared and noisy: read the ratios.
//!
//! Needs `target/handlers/blocking{,-py,-js}.wasm` (`just bench` builds
//! them).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use herald::effects::{Effect, EffectError, EffectFuture, Effects, Reply};
use herald::event::{BlockAction, Body, Event, IpBlock};
use herald::manifest::Manifest;
use herald::sandbox::{Loaded, Sandbox, SandboxConfig};

/// `--quick` (`just bench-quick`): a quarter of the events, three rounds.
fn quick() -> bool {
    std::env::args().any(|a| a == "--quick")
}

fn events_n() -> usize {
    if quick() { 5_000 } else { 20_000 }
}

fn rounds() -> usize {
    if quick() { 3 } else { 5 }
}

/// Applies nothing, counts blocks: the same work as the native host below.
#[derive(Default)]
struct Counter(AtomicU64);

impl Effects for Counter {
    fn apply<'a>(&'a self, handler: &'a str, effect: Effect) -> EffectFuture<'a> {
        let result = self.apply_now(handler, effect);
        Box::pin(async { result })
    }

    fn apply_now(&self, _: &str, effect: Effect) -> Result<Reply, EffectError> {
        if let Effect::Block { .. } = effect {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        Ok(None)
    }
}

struct NativeHost(AtomicU64);

impl herald_guest::Host for NativeHost {
    fn log(&self, _: herald_guest::Level, _: &str) {}
    fn setting(&self, _: &str) -> Option<String> {
        Some(String::new())
    }
    fn notify_idle(&self, _: u32, _: u64, _: herald_guest::DataTypes) {}
    fn deliver_push(
        &self,
        _: &str,
        _: &herald_guest::PushMessage,
    ) -> Result<(), herald_guest::EffectError> {
        Ok(())
    }
    fn block(
        &self,
        network: &str,
        reason: &str,
        _: Option<u64>,
    ) -> Result<(), herald_guest::EffectError> {
        std::hint::black_box((network, reason));
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn unblock(&self, _: &str) -> Result<(), herald_guest::EffectError> {
        Ok(())
    }
    fn install_certificate(
        &self,
        _: &herald_guest::Certificate,
    ) -> Result<(), herald_guest::EffectError> {
        Ok(())
    }
    fn publish(
        &self,
        _: &herald_guest::Event,
        _: &str,
        _: &herald_guest::Body,
    ) -> Result<String, herald_guest::EffectError> {
        Ok(String::new())
    }
}

fn events() -> Vec<Event> {
    (0..events_n())
        .map(|i| {
            let mut e = Event::new(
                "node-2",
                Body::IpBlock(IpBlock {
                    ip: format!("198.51.{}.{}", (i / 250) % 250, i % 250),
                    action: BlockAction::Block,
                    reason: "auth failures from this address".into(),
                    expires_at: Some(1_795_693_600_000),
                }),
            );
            e.position.topic = "herald.events".into();
            e
        })
        .collect()
}

fn native_events(events: &[Event]) -> Vec<herald_guest::Event> {
    events
        .iter()
        .map(|e| {
            let Body::IpBlock(b) = &e.body else {
                unreachable!()
            };
            herald_guest::Event {
                id: e.id.clone(),
                origin: e.origin.clone(),
                timestamp: e.ts,
                offset: e.position.offset,
                body: herald_guest::Body::IpBlock(herald_guest::IpBlock {
                    ip: b.ip.clone(),
                    action: herald_guest::BlockAction::Block,
                    reason: b.reason.clone(),
                    expires_at: b.expires_at,
                }),
            }
        })
        .collect()
}

/// Median time over `rounds()` runs of `f`.
fn median(mut f: impl FnMut() -> Duration) -> Duration {
    let rounds = rounds();
    let mut runs: Vec<Duration> = (0..rounds).map(|_| f()).collect();
    runs.sort();
    runs[rounds / 2]
}

async fn fresh(sb: &Sandbox, h: &Loaded, events: &[Event], batch: usize) -> Duration {
    let effects = Arc::new(Counter::default());
    let start = Instant::now();
    for chunk in events.chunks(batch) {
        sb.call(h, chunk, effects.clone()).await.unwrap();
    }
    let took = start.elapsed();
    assert_eq!(effects.0.load(Ordering::Relaxed), events.len() as u64);
    took
}

async fn reused(sb: &Sandbox, h: &Loaded, events: &[Event], batch: usize) -> Duration {
    let effects = Arc::new(Counter::default());
    let mut session = sb.session(h, effects.clone()).await.unwrap();
    let start = Instant::now();
    for chunk in events.chunks(batch) {
        session.call(chunk).await.unwrap();
    }
    let took = start.elapsed();
    assert_eq!(effects.0.load(Ordering::Relaxed), events.len() as u64);
    took
}

fn native(events: &[herald_guest::Event], batch: usize) -> Duration {
    let host = NativeHost(AtomicU64::new(0));
    let start = Instant::now();
    for chunk in events.chunks(batch) {
        std::hint::black_box(herald_guest::handle::<herald_handler_blocking::Blocking>(
            &host, chunk,
        ));
    }
    let took = start.elapsed();
    assert_eq!(host.0.load(Ordering::Relaxed), events.len() as u64);
    took
}

/// The built component `name` (`target/handlers/<name>.wasm`, with its
/// manifest), loaded with a deadline no benchmark reaches.
fn load(sb: &Sandbox, name: &str, recipe: &str) -> Loaded {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/handlers");
    let wasm = dir.join(format!("{name}.wasm"));
    let bytes = std::fs::read(&wasm)
        .unwrap_or_else(|e| panic!("{}: {e} (run `just {recipe}`)", wasm.display()));
    let mut manifest = Manifest::load(&dir.join(format!("{name}.toml"))).unwrap();
    manifest.limits.deadline = Duration::from_secs(60);
    sb.load(&bytes, manifest)
        .unwrap_or_else(|e| panic!("{}: {e:#}", wasm.display()))
}

/// Median time to create an instance of `h` (store, instantiation from the
/// pool, the snapshot's memory) and drop it, without calling it.
async fn instantiate(sb: &Sandbox, h: &Loaded) -> Duration {
    let effects = Arc::new(Counter::default());
    let n = if quick() { 50 } else { 200 };
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        drop(sb.session(h, effects.clone()).await.unwrap());
        took.push(start.elapsed());
    }
    took.sort();
    took[n / 2]
}

/// The blocking handler in Rust, Python and JavaScript (`handlers/blocking`,
/// `blocking-py`, `blocking-js`): what a fresh instance costs, and the cost
/// per event with a fresh instance per batch of 100, the node's way (issue
/// 27's target: at most 10x the Rust one), and in one instance reused.
fn languages(sb: &Sandbox, rt: &tokio::runtime::Runtime, events: &[Event]) {
    println!(
        "\nthe same handler in three languages, fresh instance per batch of 100, {} events",
        events.len()
    );
    println!(
        "{:<12} {:>9} {:>16} {:>10} {:>9} {:>17}",
        "language", "size", "instantiate µs", "µs/event", "vs Rust", "reused: µs/event"
    );
    let mut base = None;
    for (language, name, recipe) in [
        ("Rust", "blocking", "build"),
        ("Python", "blocking-py", "build-python"),
        ("JavaScript", "blocking-js", "build-js"),
    ] {
        let h = load(sb, name, recipe);
        let size = std::fs::metadata(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("../target/handlers/{name}.wasm")),
        )
        .map(|m| m.len())
        .unwrap_or(0);
        let alone = rt.block_on(instantiate(sb, &h));
        let took = median(|| rt.block_on(fresh(sb, &h, events, 100)));
        let per = took.as_secs_f64() * 1e6 / events.len() as f64;
        // The same batches in one instance: what is left is the handler and
        // the lifting of its events; the difference is what a fresh instance
        // per batch costs.
        let warm = median(|| rt.block_on(reused(sb, &h, events, 100)));
        let warm = warm.as_secs_f64() * 1e6 / events.len() as f64;
        let base = *base.get_or_insert(per);
        println!(
            "{language:<12} {:>8.1}M {:>16.1} {per:>10.3} {:>8.1}x {warm:>17.3}",
            size as f64 / (1 << 20) as f64,
            alone.as_secs_f64() * 1e6,
            per / base
        );
    }
}

fn main() {
    // The compile cache: a Python or JavaScript component takes seconds to
    // compile, and what is measured here is what comes after.
    let sb = Sandbox::new(SandboxConfig {
        max_instances: 16,
        ..SandboxConfig::default()
    })
    .unwrap();
    let h = load(&sb, "blocking", "build");
    let events = events();
    let natives = native_events(&events);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    println!(
        "blocking handler, {} ip-block events, median of {} runs (same process, same run)\n",
        events_n(),
        rounds()
    );
    println!(
        "{:<28} {:>6} {:>14} {:>10} {:>12}",
        "mode", "batch", "events/s", "µs/event", "vs native"
    );
    // `cargo bench --bench sandbox -- reused` runs only the rows whose name
    // contains "reused" (and the native baseline), e.g. under a profiler.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    for batch in [1usize, 100] {
        let base = median(|| native(&natives, batch));
        let mut rows = vec![("native (same logic)", base)];
        if wanted("wasm, fresh instance/batch") {
            let took = median(|| rt.block_on(fresh(&sb, &h, &events, batch)));
            rows.push(("wasm, fresh instance/batch", took));
        }
        if wanted("wasm, reused instance") {
            let took = median(|| rt.block_on(reused(&sb, &h, &events, batch)));
            rows.push(("wasm, reused instance", took));
        }
        for (name, took) in rows {
            let per = took.as_secs_f64() * 1e6 / events_n() as f64;
            println!(
                "{name:<28} {batch:>6} {:>14.0} {per:>10.3} {:>11.1}x",
                events_n() as f64 / took.as_secs_f64(),
                took.as_secs_f64() / base.as_secs_f64()
            );
        }
    }
    if wanted("languages") {
        languages(&sb, &rt, &events);
    }
}
