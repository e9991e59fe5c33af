//! End-to-end benchmark on the test broker (`just bench` starts it):
//!
//! 1. throughput: events/s through a herald node with the blocking handler
//!    (consume, decode, sandbox call, blocklist effect, commit) against a
//!    plain rdkafka consumer reading the same topic on the same broker in the
//!    same run; the ratio is what to read;
//! 2. latency: p50/p99 from publish to handled (the mailbox handler's IDLE
//!    wake-up) at a fixed publish rate;
//! 3. memory: the resident memory of a `herald run` process with the four
//!    built-in handlers, idle after 100 000 events (target: 64 MiB).
//!
//! The node runs in-process (the same `Node` that `herald run` starts) so
//! that the bench can watch its effects as they happen.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::config::Config;
use herald::effects::notify::Notice;
use herald::manifest::Mode;
use herald::node::Node;
use herald_tests::cluster::{Install, TestCluster, ip_block, unique};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const EVENTS: u32 = 200_000;
const ROUNDS: usize = 3;
const PARTITIONS: i32 = 4;

fn ip(i: u32) -> String {
    // The benchmarking range (RFC 2544): never a node's own address.
    format!("198.{}.{}.{}", 18 + i / 65536, (i / 256) % 256, i % 256)
}

/// A plain consumer of the topic; with `decode`, it also parses each record
/// into herald's event (what any consumer of the JSON contract must do).
async fn plain_consumer(broker: &str, topic: &str, decode: bool) -> Duration {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", unique("plain"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut n = 0;
    let mut started = None;
    while n < EVENTS {
        let m = consumer.recv().await.unwrap();
        if decode {
            let payload = rdkafka::Message::payload(&m).unwrap();
            let event = herald::event::Event::from_json(payload, Default::default()).unwrap();
            std::hint::black_box(event);
        }
        std::hint::black_box(&m);
        started.get_or_insert_with(Instant::now);
        n += 1;
    }
    started.unwrap().elapsed()
}

fn node_config(c: &TestCluster, node: &str) -> Config {
    Config::load(&c.config(node)).unwrap()
}

async fn herald_node(c: &TestCluster, round: usize) -> Duration {
    let node = Arc::new(Node::open(node_config(c, &format!("bench-{round}"))).unwrap());
    let stop = CancellationToken::new();
    let running = tokio::spawn(node.clone().run(stop.clone()));
    let blocklist = node.blocklist().clone();
    // Start the clock when the first event is applied, like the plain
    // consumer's at its first message.
    while blocklist.is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let started = Instant::now();
    while blocklist.len() < EVENTS as usize {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = started.elapsed();
    stop.cancel();
    running.await.unwrap().unwrap();
    took
}

async fn throughput() {
    let c = TestCluster::new(
        "bench-throughput",
        PARTITIONS,
        &[Install::builtin("blocking")],
    )
    .await;
    let events: Vec<_> = (0..EVENTS)
        .map(|i| (ip(i), ip_block(&format!("e{i}"), &ip(i), "block", "bench")))
        .collect();
    for chunk in events.chunks(5_000) {
        c.publish_all(chunk).await;
    }
    // Alternate the two readers, fresh groups each round; take medians.
    let (mut plains, mut decoding, mut nodes) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        plains.push(plain_consumer(&c.broker, &c.topic, false).await);
        decoding.push(plain_consumer(&c.broker, &c.topic, true).await);
        nodes.push(herald_node(&c, round).await);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        EVENTS as f64 / v[ROUNDS / 2].as_secs_f64()
    };
    let plain_rate = median(&mut plains);
    let decoding_rate = median(&mut decoding);
    let node_rate = median(&mut nodes);
    println!(
        "end to end, {EVENTS} ip-block events on {PARTITIONS} partitions, same broker, same run, median of {ROUNDS}\n"
    );
    println!("{:<44} {:>12}", "reader", "events/s");
    println!(
        "{:<44} {:>12.0}",
        "plain rdkafka consumer (read only)", plain_rate
    );
    println!(
        "{:<44} {:>12.0}",
        "plain rdkafka consumer + JSON decode", decoding_rate
    );
    println!(
        "{:<44} {:>12.0}",
        "herald node, blocking handler, committed", node_rate
    );
    println!(
        "{:<44} {:>12.2}",
        "ratio herald / plain (read only)",
        node_rate / plain_rate
    );
    println!(
        "{:<44} {:>12.2}",
        "ratio herald / plain + decode",
        node_rate / decoding_rate
    );
}

async fn latency() {
    const RATE: u64 = 200;
    const SECONDS: u64 = 10;
    let c = TestCluster::new("bench-latency", PARTITIONS, &[Install::builtin("mailbox")]).await;
    let node = Arc::new(Node::open(node_config(&c, "latency")).unwrap());
    let mut idle = node.notices().subscribe(None);
    let stop = CancellationToken::new();
    let running = tokio::spawn(node.clone().run(stop.clone()));
    while node.assigned_partitions(Mode::Broadcast) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let epoch = Instant::now();
    let total = RATE * SECONDS;
    // Baseline: a plain consumer of the same topic, same broker, same time.
    let plain: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &c.broker)
        .set("group.id", unique("plain-latency"))
        // Same as herald's consumers.
        .set("fetch.wait.max.ms", "20")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    // Assigned directly (no group to join): it reads from the start at once.
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(&c.topic, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    plain.assign(&tpl).unwrap();
    let baseline = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(total as usize);
        while lat.len() < total as usize {
            let m = plain.recv().await.unwrap();
            let v: serde_json::Value =
                serde_json::from_slice(rdkafka::Message::payload(&m).unwrap()).unwrap();
            let sent = v["body"]["changeId"].as_u64().unwrap();
            lat.push(epoch.elapsed().as_micros() as u64 - sent);
        }
        lat
    });
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &c.broker)
        .set("linger.ms", "0")
        .create()
        .unwrap();
    let topic = c.topic.clone();
    let publisher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
        for i in 0..total {
            tick.tick().await;
            // The change id carries the publish time (µs since the start).
            let sent = epoch.elapsed().as_micros() as u64;
            let ev = json!({"v":1,"id":format!("l{i}"),"kind":"state-change","origin":"bench","ts":1,
                "body":{"accountId": i % 100,"changeId": sent,"types":["Email"]}});
            let payload = ev.to_string();
            let key = format!("account:{}", i % 100);
            let record = FutureRecord::to(&topic).key(&key).payload(&payload);
            producer
                .send(record, Duration::from_secs(5))
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    });
    let mut latencies = Vec::with_capacity(total as usize);
    while latencies.len() < total as usize {
        let Notice::StateChange { change_id, .. } = idle.recv().await.expect("idle stream") else {
            continue;
        };
        latencies.push(epoch.elapsed().as_micros() as u64 - change_id);
    }
    publisher.await.unwrap();
    stop.cancel();
    running.await.unwrap().unwrap();
    let mut plain = baseline.await.unwrap();
    println!("\npublish -> handled, {RATE} events/s for {SECONDS} s, same broker, same run\n");
    println!("{:<44} {:>9} {:>9} {:>9}", "", "p50 ms", "p99 ms", "max ms");
    for (name, lat) in [
        ("plain rdkafka consumer (received)", &mut plain),
        (
            "herald node, mailbox handler (IDLE wake-up)",
            &mut latencies,
        ),
    ] {
        lat.sort();
        let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)] as f64 / 1000.0;
        println!(
            "{name:<44} {:>9.1} {:>9.1} {:>9.1}",
            p(0.5),
            p(0.99),
            p(1.0)
        );
    }
}

/// RSS of a real `herald run` with the four built-in handlers after
/// 100 000 events (blocks and unblocks of 1 000 addresses, state changes,
/// and a certificate now and then), once it has been idle a few seconds.
async fn memory() {
    const N: u32 = 100_000;
    let c = TestCluster::new(
        "bench-memory",
        PARTITIONS,
        &[
            Install::builtin("mailbox"),
            Install::builtin("push"),
            Install::builtin("blocking"),
            Install::builtin("certificate"),
        ],
    )
    .await;
    let mut node = c.start("memory");
    let group = c.broadcast_group("memory");
    node.wait_assigned(&group);
    let started_rss = node.rss_kib();
    let certificate = herald_tests::ec_certificate("c", "ec.key");
    for chunk in (0..N).collect::<Vec<_>>().chunks(10_000) {
        let events: Vec<_> = chunk
            .iter()
            .map(|&i| match i % 10 {
                0..=3 => {
                    let action = if (i / 1000) % 2 == 0 {
                        "block"
                    } else {
                        "unblock"
                    };
                    let ip = ip(i % 1000);
                    (ip.clone(), ip_block(&format!("m{i}"), &ip, action, "bench"))
                }
                9 if i % 1000 == 9 => {
                    let mut c = certificate.clone();
                    c["id"] = format!("c{i}").into();
                    ("domain:mail.example.com".to_string(), c)
                }
                _ => (
                    format!("account:{}", i % 500),
                    json!({"v":1,"id":format!("s{i}"),"kind":"state-change","origin":"bench",
                        "ts":1,"body":{"accountId": i % 500,"changeId": i,"types":["Email"]}}),
                ),
            })
            .collect();
        c.publish_all(&events).await;
    }
    let handled = Instant::now();
    while (0..PARTITIONS)
        .map(|p| c.committed(&group, p).unwrap_or(0))
        .sum::<i64>()
        < N as i64
    {
        assert!(
            handled.elapsed() < Duration::from_secs(600),
            "the node fell behind"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (idle, peak) = (node.rss_kib(), node.peak_rss_kib());
    println!("\nmemory of `herald run` with the four built-in handlers\n");
    println!(
        "{:<44} {:>9.1} MiB",
        "resident after start-up",
        started_rss as f64 / 1024.0
    );
    println!(
        "{:<44} {:>9.1} MiB  (target <= 64)",
        "resident, idle after 100 000 events",
        idle as f64 / 1024.0
    );
    println!(
        "{:<44} {:>9.1} MiB",
        "peak while handling them",
        peak as f64 / 1024.0
    );
    assert!(node.terminate().success());
}

#[tokio::main]
async fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if filter.as_deref().is_none_or(|f| "throughput".contains(f)) {
        throughput().await;
    }
    if filter.as_deref().is_none_or(|f| "latency".contains(f)) {
        latency().await;
    }
    if filter.as_deref().is_none_or(|f| "memory".contains(f)) {
        memory().await;
    }
}
