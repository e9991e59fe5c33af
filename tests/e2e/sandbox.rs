//! The sandbox with real components built from `handlers/`: the built-in
//! handlers do what they say, and hostile components are contained while the
//! host carries on with the next batch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::effects::{Effect, Recorder};
use herald::event::{BlockAction, Body, DataTypes, Event, IpBlock, StateChange};
use herald::manifest::Manifest;
use herald::sandbox::{FailureKind, Loaded, Outcome, Sandbox, SandboxConfig};
use herald_tests::handler;

fn sandbox(cache: &tempfile::TempDir) -> Sandbox {
    Sandbox::new(SandboxConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        max_instances: 32,
    })
    .unwrap()
}

fn load(sb: &Sandbox, name: &str) -> Loaded {
    sb.load_file(&handler(name)).unwrap()
}

fn ip_block(ip: &str) -> Event {
    Event::new(
        "test",
        Body::IpBlock(IpBlock {
            ip: ip.into(),
            action: BlockAction::Block,
            reason: "test".into(),
            expires_at: None,
        }),
    )
}

fn state_change(types: DataTypes) -> Event {
    Event::new(
        "test",
        Body::StateChange(StateChange {
            account_id: 5,
            change_id: 300,
            types,
        }),
    )
}

#[tokio::test]
async fn blocking_blocks_valid_addresses_and_rejects_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox(&dir);
    let h = load(&sb, "blocking");
    let rec = Arc::new(Recorder::new());
    let events = [
        ip_block("203.0.113.7"),
        ip_block("not-an-ip"),
        ip_block("127.0.0.1"),
    ];
    let out = sb.call(&h, &events, rec.clone()).await.unwrap();
    assert_eq!(out[0], Outcome::Ok);
    assert!(
        matches!(&out[1], Outcome::Reject(r) if r.contains("not-an-ip")),
        "{out:?}"
    );
    assert!(
        matches!(&out[2], Outcome::Reject(r) if r.contains("loopback")),
        "{out:?}"
    );
    assert_eq!(
        rec.take(),
        vec![Effect::Block {
            network: "203.0.113.7".into(),
            reason: "test".into(),
            expires_at: None,
            // The block is the first event's write: it carries its version.
            version: Some(events[0].version()),
        }]
    );
}

#[tokio::test]
async fn mailbox_wakes_idle_only_for_mail() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox(&dir);
    let h = load(&sb, "mailbox");
    let rec = Arc::new(Recorder::new());
    let email = DataTypes::from_names(["Email", "Thread"]).unwrap();
    let thread = DataTypes::from_names(["Thread"]).unwrap();
    let out = sb
        .call(
            &h,
            &[state_change(email), state_change(thread)],
            rec.clone(),
        )
        .await
        .unwrap();
    assert_eq!(out, vec![Outcome::Ok, Outcome::Ok]);
    assert_eq!(
        rec.take(),
        vec![Effect::IdleNotify {
            account_id: 5,
            change_id: 300,
            types: email
        }]
    );
}

#[tokio::test]
async fn a_batch_gets_one_outcome_per_event() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox(&dir);
    let h = load(&sb, "blocking");
    let rec = Arc::new(Recorder::new());
    let batch: Vec<Event> = (0..100)
        .map(|i| ip_block(&format!("198.51.100.{i}")))
        .collect();
    let out = sb.call(&h, &batch, rec.clone()).await.unwrap();
    assert_eq!(out.len(), 100);
    assert!(out.iter().all(|o| *o == Outcome::Ok));
    assert_eq!(rec.take().len(), 100);
}

/// The guest is told each event's topic, partition and offset: once per run
/// of one partition, when a call mixes them, and in order.
#[tokio::test]
async fn each_event_arrives_with_its_source_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox(&dir);
    let h = load(&sb, "fixtures/outcomes");
    let at = |topic: &str, partition: i32, offset: i64| {
        let mut e = ip_block("203.0.113.7");
        e.id = format!("{offset}-where");
        e.position.topic = topic.into();
        e.position.partition = partition;
        e.position.offset = offset;
        e
    };
    let batch = [
        at("herald.events", 0, 10),
        at("herald.events", 0, 11),
        at("herald.events", 3, 7),
        at("other", 3, 8),
        at("herald.events", 0, 12),
    ];
    let out = sb
        .call(&h, &batch, Arc::new(Recorder::new()))
        .await
        .unwrap();
    let expected: Vec<Outcome> = [
        "herald.events/0/10",
        "herald.events/0/11",
        "herald.events/3/7",
        "other/3/8",
        "herald.events/0/12",
    ]
    .into_iter()
    .map(|w| Outcome::Reject(w.to_string()))
    .collect();
    assert_eq!(out, expected);
}

/// After a hostile call, the same handler handles the next batch normally.
async fn carries_on(sb: &Sandbox, h: &Loaded) {
    let rec = Arc::new(Recorder::new());
    let out = sb
        .call(
            h,
            &[state_change(DataTypes::from_names(["Email"]).unwrap())],
            rec,
        )
        .await
        .unwrap();
    assert_eq!(out, vec![Outcome::Ok]);
}

#[tokio::test]
async fn an_endless_loop_ends_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox(&dir);
    let h = load(&sb, "fixtures/spin");
    assert_eq!(h.manifest.limits.deadline, Duration::from_millis(100));
    let started = Instant::now();
    let err = sb
        .call(&h, &[ip_block("203.0.113.7")], Arc::new(Recorder::new()))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.kind, FailureKind::Deadline, "{err}");
    assert!(
        took >= Duration::from_millis(100),
        "interrupted early: {took:?}"
    );
    // The spinner never returns by itself: a guard, not a timing.
    assert!(took < Duration::from_secs(30), "not interrupted: {took:?}");
    carries_on(&sb, &h).await;
}

#[tokio::test]
async fn growing_memory_past_the_cap_fails_that_call() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox(&dir);
    let h = load(&sb, "fixtures/hog");
    assert_eq!(h.manifest.limits.memory, 8 << 20);
    let err = sb
        .call(&h, &[ip_block("203.0.113.7")], Arc::new(Recorder::new()))
        .await
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::Memory, "{err}");
    assert!(err.message.contains("8.0 MiB"), "{err}");
    carries_on(&sb, &h).await;
}

#[tokio::test]
async fn a_panic_fails_the_call_with_its_message() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox(&dir);
    let h = load(&sb, "fixtures/panic");
    let err = sb
        .call(&h, &[ip_block("203.0.113.7")], Arc::new(Recorder::new()))
        .await
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::Panic, "{err}");
    assert!(
        err.message.contains("fixture panic on 203.0.113.7"),
        "{err}"
    );
    carries_on(&sb, &h).await;
}

#[tokio::test]
async fn an_ungranted_capability_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox(&dir);
    let wasm = handler("fixtures/ungranted");
    let err = format!("{:#}", sb.load_file(&wasm).err().expect("must be refused"));
    assert!(err.contains("herald:coordination/push@0.2.0"), "{err}");
    assert!(err.contains("does not grant"), "{err}");
    // The same component loads once the deployer grants the capability.
    let granted = Manifest::parse(
        "subscribe = [\"push\"]\nmode = \"shared\"\ncapabilities = [\"push\"]",
        "ungranted",
    )
    .unwrap();
    sb.load(&std::fs::read(&wasm).unwrap(), granted).unwrap();
}

#[tokio::test]
async fn broken_wasm_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox(&dir);
    let manifest = Manifest::parse("subscribe = [\"push\"]\nmode = \"shared\"", "junk").unwrap();
    let err = format!("{:#}", sb.load(b"\0asm garbage", manifest).err().unwrap());
    assert!(err.contains("not a valid WebAssembly component"), "{err}");
}

#[tokio::test]
async fn compiled_components_are_cached_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let first = sandbox(&dir);
    let compiled = load(&first, "blocking").compile;
    assert!(!compiled.from_cache);
    drop(first);
    let second = sandbox(&dir);
    let h = load(&second, "blocking");
    assert!(h.compile.from_cache, "a restart must not compile again");
    // What the first load measured is remembered beside the entry.
    assert_eq!(h.compile.compile_seconds, compiled.compile_seconds);
    assert!(h.compile.compile_seconds.unwrap() > 0.0);
    assert_eq!(h.compile.cache_bytes, compiled.cache_bytes);
    let out = second
        .call(&h, &[ip_block("203.0.113.7")], Arc::new(Recorder::new()))
        .await
        .unwrap();
    assert_eq!(out, vec![Outcome::Ok]);
    // One compiled file and its record.
    let mut cached: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .extension()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    cached.sort();
    assert_eq!(cached, ["cwasm", "json"]);
}
