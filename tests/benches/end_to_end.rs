//! End-to-end benchmark on the test broker (`just bench` starts it):
//!
//! 1. throughput: events/s through a herald node with the blocking handler
//!    (consume, decode, sandbox call, blocklist effect, commit) against a
//!    plain rdkafka consumer reading the same topic on the same broker in the
//!    same run; the ratio is what to read. Every reader is timed over the
//!    same window, from its 10 %th event to its 90 %th (its steady rate),
//!    and the CPU the process spent per event in that window is printed
//!    beside its rate (the rate moves with the shared machine's load more
//!    than the CPU does), and the broker's (it shares the two cores);
//! 2. latency: p50/p99 from publish to handled (the mailbox handler's IDLE
//!    wake-up) at fixed publish rates (1 000 and 10 000 events/s, an
//!    open-loop publisher: each event is due at its own time, whatever came
//!    of the ones before, and its latency counts from then), beside a plain
//!    consumer's, and herald's wake-up less the plain consumer's receipt of
//!    the same event (herald's share, with the broker's mostly taken out);
//!    the publisher's own lateness and the broker's produce acknowledgement
//!    are printed above them, as what no reader can do better than; then,
//!    one event at a time between two `herald run` processes, a publish
//!    through node B's API against a plain producer's, each until node A's
//!    IDLE stream carries it; and the CPU a `herald run` that receives
//!    nothing uses;
//! 3. memory and start-up: how soon a `herald run` with the four built-in
//!    handlers has them loaded from the compiled cache and its API
//!    listening (target: 300 ms), and its resident memory, idle after
//!    100 000 events (target: 64 MiB);
//! 4. trust: the same node over the same signed bundles of 100 events,
//!    with and without a trust policy (target: the checked rate ≥ 0.9× the
//!    unchecked one);
//! 5. boot: a new node's start from the state topic with one record per
//!    entity (100 000; what compaction leaves) until it is ready, against a
//!    replay of those entities' history from the events topic (1 000 000
//!    writes) until it is committed.
//!
//! `HERALD_BENCH_QUICK=1` (`just bench-quick`, about 90 s once built) runs
//! every section smaller (50 000 events in one round, the 1 000 events/s
//! rate only and shorter, one restart, 20 000 events for memory) to check a
//! change cheaply; its figures are for comparing with each other, not with
//! the targets (at 50 000 events the throughput section does not reach what
//! holds the node back at 200 000).
//! The node runs in-process (the same `Node` that `herald run` starts) so
//! that the bench can watch its effects as they happen.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::config::Config;
use herald::effects::notify::Notice;
use herald::manifest::Mode;
use herald::node::Node;
use herald_tests::api::Stream;
use herald_tests::cluster::{Install, TestCluster, ip_block, unique};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 4;

fn quick() -> bool {
    std::env::var_os("HERALD_BENCH_QUICK").is_some_and(|v| v != "0")
}

/// Events of the throughput section.
fn events() -> u32 {
    if quick() { 50_000 } else { 200_000 }
}

/// Rounds of the throughput section (medians are taken).
fn rounds() -> usize {
    if quick() { 1 } else { 3 }
}

fn ip(i: u32) -> String {
    // The benchmarking range (RFC 2544): never a node's own address.
    format!("198.{}.{}.{}", 18 + i / 65536, (i / 256) % 256, i % 256)
}

/// A plain consumer of the topic; with `decode`, it also parses each record
/// into herald's event (what any consumer of the JSON contract must do).
async fn plain_consumer(broker: &str, topic: &str, decode: bool) -> Window {
    let mut config = ClientConfig::new();
    if decode {
        // herald's own fetch settings: a consumer that decodes falls behind
        // its prefetch queue, and librdkafka's default backoff then leaves
        // it waiting a second for the next fetch (the read-only one never
        // falls behind, and keeps librdkafka's defaults).
        for (key, value) in herald::CONSUMER_FETCH_DEFAULTS {
            config.set(key, value);
        }
    }
    let consumer: StreamConsumer = config
        .set("bootstrap.servers", broker)
        .set("group.id", unique("plain"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let (from, to) = window();
    let mut n = 0;
    let mut started = None;
    let mut cpu = Cpu::default();
    while n < to {
        let m = consumer.recv().await.unwrap();
        if decode {
            let payload = rdkafka::Message::payload(&m).unwrap();
            let event = herald::event::Event::from_json(payload, Default::default()).unwrap();
            std::hint::black_box(event);
        }
        std::hint::black_box(&m);
        n += 1;
        if n == from {
            started = Some(Instant::now());
            cpu = Cpu::now();
        }
    }
    Window {
        took: started.unwrap().elapsed(),
        cpu: Cpu::now() - cpu,
        events: to - from,
    }
}

/// One reader's timed window: how long it took, the events it covered,
/// and the CPU this process used meanwhile (the reader and its librdkafka
/// threads; for herald, the whole node). The machine's two cores are
/// shared with the broker and with whatever else runs on it, so the CPU a
/// reader spends per event varies less from run to run than its rate does.
#[derive(Clone, Copy)]
struct Window {
    took: Duration,
    cpu: Cpu,
    events: u32,
}

impl Window {
    /// Events per second.
    fn rate(&self) -> f64 {
        self.events as f64 / self.took.as_secs_f64()
    }

    /// µs of this process's CPU per event of the window.
    fn cpu_per_event(&self) -> f64 {
        self.per_event(self.cpu.process)
    }

    /// µs of the broker's CPU per event of the window: what serving this
    /// reader cost the broker, which runs on the same two cores.
    fn broker_cpu_per_event(&self) -> f64 {
        self.per_event(self.cpu.broker)
    }

    fn per_event(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 1e6 / self.events as f64
    }
}

/// The middle of `rounds` figures.
fn median(windows: &[Window], figure: fn(&Window) -> f64) -> f64 {
    let mut v: Vec<f64> = windows.iter().map(figure).collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// CPU time so far of this process and of the broker.
#[derive(Clone, Copy, Default)]
struct Cpu {
    process: Duration,
    broker: Duration,
}

impl Cpu {
    fn now() -> Self {
        Self {
            process: process_cpu(),
            broker: broker_cpu(),
        }
    }
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, earlier: Cpu) -> Cpu {
        Cpu {
            process: self.process - earlier.process,
            broker: self.broker - earlier.broker,
        }
    }
}

/// User and system CPU time of the broker so far (`HERALD_BROKER_PID`,
/// set by tests/broker.sh), from /proc in clock ticks (10 ms): good to a
/// few per cent over a full run's windows (a quarter of a second or more),
/// too coarse for a quick run's. Zero when the pid is not known.
fn broker_cpu() -> Duration {
    let Some(stat) = std::env::var("HERALD_BROKER_PID")
        .ok()
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
    else {
        return Duration::ZERO;
    };
    // Fields after the command name, which is in parentheses: utime and
    // stime are the 12th and 13th of them.
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default()
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf only reads a system setting.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ticks = fields.get(11).unwrap_or(&0) + fields.get(12).unwrap_or(&0);
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// User and system CPU time of this process so far, all threads.
fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Every reader is timed from its `from`-th event to its `to`-th: the
/// steady rate, leaving out how each gets going (a group join, a first
/// fetch, a first batch decoded and checked before anything is applied)
/// and the tail.
fn window() -> (u32, u32) {
    (events() / 10, events() * 9 / 10)
}

fn node_config(c: &TestCluster, node: &str) -> Config {
    Config::load(&c.config(node)).unwrap()
}

async fn herald_node(c: &TestCluster, round: usize) -> Window {
    let events = events() as usize;
    let node = Arc::new(Node::open(node_config(c, &format!("bench-{round}"))).unwrap());
    let stop = CancellationToken::new();
    let running = tokio::spawn(node.clone().run(stop.clone()));
    let blocklist = node.blocklist().clone();
    let took = tokio::task::spawn_blocking({
        let blocklist = blocklist.clone();
        move || watch(&blocklist)
    })
    .await
    .unwrap();
    // The rest is applied before the node stops, so that no round leaves
    // work behind for the next.
    while blocklist.len() < events {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.cancel();
    running.await.unwrap().unwrap();
    took
}

/// A herald node's window, timed on a thread of its own by watching the
/// blocklist fill: over the same events as the plain consumers (see
/// `window`), counting those it actually covered. Starting at the first
/// applied event instead left out, with signed bundles, a whole batch
/// fetched, decoded and checked before it: the trust section then measured
/// checking as free. Watching from an async task instead let the node's
/// workers, busy on the runtime's threads, keep the watcher from running:
/// a quick run once "timed" 40 000 events in 80 µs that way.
fn watch(blocklist: &herald::effects::blocklist::Blocklist) -> Window {
    let (from, to) = window();
    let reach = |n: u32| loop {
        let len = blocklist.len() as u32;
        if len >= n {
            return len;
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    let first = reach(from);
    let (started, cpu) = (Instant::now(), Cpu::now());
    let last = reach(to);
    Window {
        took: started.elapsed(),
        cpu: Cpu::now() - cpu,
        events: last - first,
    }
}

async fn throughput() {
    let (n, rounds) = (events(), rounds());
    let mut c = TestCluster::new(
        "bench-throughput",
        PARTITIONS,
        &[Install::builtin("blocking")],
    )
    .await;
    // Every event blocks another address: room for all of them.
    c.settings = json!({"blocklist": {"maxEntries": 1_000_000}});
    let events: Vec<_> = (0..n)
        .map(|i| (ip(i), ip_block(&format!("e{i}"), &ip(i), "block", "bench")))
        .collect();
    for chunk in events.chunks(5_000) {
        c.publish_all(chunk).await;
    }
    // Alternate the two readers, fresh groups each round; take medians.
    let (mut plains, mut decoding, mut nodes) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        plains.push(plain_consumer(&c.broker, &c.topic, false).await);
        decoding.push(plain_consumer(&c.broker, &c.topic, true).await);
        nodes.push(herald_node(&c, round).await);
    }
    // Each column's own median: the rate, and the CPU per event of the
    // reader and of the broker.
    let medians = |v: &[Window]| {
        (
            median(v, Window::rate),
            median(v, Window::cpu_per_event),
            median(v, Window::broker_cpu_per_event),
        )
    };
    let plain = medians(&plains);
    let decoded = medians(&decoding);
    let node = medians(&nodes);
    println!(
        "end to end, {n} ip-block events on {PARTITIONS} partitions, same broker, same run, median of {rounds}\n"
    );
    println!(
        "{:<44} {:>12} {:>16} {:>18}",
        "reader", "events/s", "CPU µs/event", "broker µs/event"
    );
    for (reader, (rate, cpu, broker)) in [
        ("plain rdkafka consumer (read only)", plain),
        ("plain rdkafka consumer + JSON decode", decoded),
        ("herald node, blocking handler, committed", node),
    ] {
        println!("{reader:<44} {rate:>12.0} {cpu:>16.2} {broker:>18.2}");
    }
    let (plain_rate, decoding_rate, node_rate) = (plain.0, decoded.0, node.0);
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

/// Publish→handled at `rate` events/s for `seconds`: the herald node's
/// IDLE wake-ups and a plain consumer's receipts, same topic, same time.
async fn latency_at(rate: u64, seconds: u64) {
    let c = TestCluster::new("bench-latency", PARTITIONS, &[Install::builtin("mailbox")]).await;
    let node = Arc::new(Node::open(node_config(&c, "latency")).unwrap());
    let mut idle = node.notices().subscribe(None);
    let stop = CancellationToken::new();
    let running = tokio::spawn(node.clone().run(stop.clone()));
    while node.assigned_partitions(Mode::Broadcast) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let total = rate * seconds;
    // Baseline: a plain consumer of the same topic, same broker, same time.
    let mut config = ClientConfig::new();
    // Same fetch and socket settings as herald's consumers.
    for (key, value) in herald::CONSUMER_FETCH_DEFAULTS {
        config.set(key, value);
    }
    let plain: StreamConsumer = config
        .set("bootstrap.servers", &c.broker)
        .set("group.id", unique("plain-latency"))
        .set("socket.nagle.disable", "true")
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
    // Let both readers connect and start fetching before the clock starts:
    // their first connection is not what is measured.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let epoch = Instant::now();
    let give_up = Duration::from_secs(seconds + 20);
    let baseline = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(total as usize);
        while lat.len() < total as usize && epoch.elapsed() < give_up {
            let Ok(m) = tokio::time::timeout(Duration::from_secs(1), plain.recv()).await else {
                continue;
            };
            let m = m.unwrap();
            let v: serde_json::Value =
                serde_json::from_slice(rdkafka::Message::payload(&m).unwrap()).unwrap();
            let sent = v["body"]["changeId"].as_u64().unwrap();
            lat.push((sent, epoch.elapsed().as_micros() as u64 - sent));
        }
        lat
    });
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &c.broker)
        .set("linger.ms", "0")
        // As herald's producer: no Nagle delay on small produce requests.
        .set("socket.nagle.disable", "true")
        .create()
        .unwrap();
    let topic = c.topic.clone();
    // Open loop: event i is due at i/rate; it is handed to the producer
    // then (or as soon after as the publisher gets to it) without waiting
    // for the ones before, and its change id carries the due time, so a
    // late publish counts against latency rather than hiding it.
    // Beside the readers, two figures of the publishing side: how late the
    // publisher handed each event to the producer (the bench's own share:
    // its timer's resolution is a millisecond), and when the broker
    // acknowledged it (the produce request's round trip).
    let publisher = tokio::spawn(async move {
        let mut deliveries = Vec::with_capacity(total as usize);
        let mut late = Vec::with_capacity(total as usize);
        for i in 0..total {
            let due = Duration::from_nanos(i * 1_000_000_000 / rate);
            tokio::time::sleep_until((epoch + due).into()).await;
            let sent = due.as_micros() as u64;
            late.push(epoch.elapsed().as_micros() as i64 - sent as i64);
            let ev = json!({"v":1,"id":format!("l{i}"),"kind":"state-change","origin":"bench","ts":1,
                "body":{"accountId": i % 100,"changeId": sent,"types":["Email"]}});
            let payload = ev.to_string();
            let key = format!("account:{}", i % 100);
            loop {
                let record = FutureRecord::to(&topic).key(&key).payload(&payload);
                match producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push(tokio::spawn(async move {
                            delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
                            epoch.elapsed().as_micros() as i64 - sent as i64
                        }));
                        break;
                    }
                    // Queue full: the producer is behind; try again.
                    Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            }
        }
        let mut acked = Vec::with_capacity(total as usize);
        for d in deliveries {
            acked.push(d.await.unwrap());
        }
        // Dropping a producer joins its poll thread, which can block for
        // its 100 ms poll: not on a runtime thread while readers are timed.
        (late, acked, producer)
    });
    let mut latencies = Vec::with_capacity(total as usize);
    // Notices this reader was too slow to take (the stream's buffer
    // overflowed): handled by the node, but not timed here.
    let mut missed = 0;
    while latencies.len() + missed < total as usize && epoch.elapsed() < give_up {
        let Ok(notice) = tokio::time::timeout(Duration::from_secs(1), idle.recv()).await else {
            continue;
        };
        match notice {
            Ok(Notice::StateChange { change_id, .. }) => {
                latencies.push((change_id, epoch.elapsed().as_micros() as u64 - change_id))
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => missed += n as usize,
            Err(e) => panic!("idle stream: {e}"),
        }
    }
    let (late, acked, producer) = publisher.await.unwrap();
    stop.cancel();
    running.await.unwrap().unwrap();
    let plain = baseline.await.unwrap();
    drop(producer);
    // herald's own share: for each event both readers timed, how much later
    // herald's wake-up came than the plain consumer's receipt. Both fetch
    // from the same broker with the same settings, so what the broker adds
    // (a produce, a fetch held or polled) mostly cancels out; it can be
    // below zero when herald's fetch happened to return first.
    let added: Vec<i64> = {
        let plain: std::collections::HashMap<u64, u64> = plain.iter().copied().collect();
        latencies
            .iter()
            .filter_map(|(id, lat)| Some(*lat as i64 - *plain.get(id)? as i64))
            .collect()
    };
    println!(
        "\npublish -> handled, {rate} events/s for {seconds} s (open loop), same broker, same run\n"
    );
    println!(
        "{:<44} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "", "min ms", "p50 ms", "p99 ms", "max ms", "received"
    );
    let only_latency =
        |v: Vec<(u64, u64)>| -> Vec<i64> { v.into_iter().map(|(_, lat)| lat as i64).collect() };
    for (name, mut lat) in [
        ("publisher: handed to the producer", late),
        ("publisher: acknowledged by the broker", acked),
        ("plain rdkafka consumer (received)", only_latency(plain)),
        (
            "herald node, mailbox handler (IDLE wake-up)",
            only_latency(latencies),
        ),
        ("herald's wake-up - plain receipt, same event", added),
    ] {
        lat.sort();
        let p = |q: f64| {
            lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
                .map_or(f64::NAN, |&v| v as f64 / 1000.0)
        };
        println!(
            "{name:<44} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9}",
            p(0.0),
            p(0.5),
            p(0.99),
            p(1.0),
            format!("{}/{total}", lat.len())
        );
    }
    if missed > 0 {
        println!("({missed} wake-ups handled but not timed: the bench's reader fell behind)");
    }
}

/// CPU used by a `herald run` (mailbox handler, joined) that receives
/// nothing, over a few seconds.
async fn idle_cpu() {
    let c = TestCluster::new("bench-idle", PARTITIONS, &[Install::builtin("mailbox")]).await;
    let mut node = c.start("idle");
    node.wait_assigned(&c.broadcast_group("idle"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let window = Duration::from_secs(if quick() { 2 } else { 10 });
    let (cpu, wall) = (node.cpu_time(), Instant::now());
    tokio::time::sleep(window).await;
    let used = node.cpu_time() - cpu;
    println!(
        "{:<44} {:>8.2} %  of one core over {:?} (idle, nothing to receive)",
        "herald run, CPU while idle",
        used.as_secs_f64() * 100.0 / wall.elapsed().as_secs_f64(),
        window
    );
    assert!(node.terminate().success());
}

async fn latency() {
    // Quick: the lower rate only (at the higher one the test broker falls
    // seconds behind, and catching up is most of the section's time).
    let (seconds, rates): (u64, &[u64]) = if quick() {
        (3, &[1_000])
    } else {
        (10, &[1_000, 10_000])
    };
    for &rate in rates {
        latency_at(rate, seconds).await;
    }
    api_latency().await;
    idle_cpu().await;
}

/// Closed loop, one event at a time: node B's API (`POST /v1/events`) or a
/// plain producer publishes a state change, and the time until node A's
/// IDLE stream (`GET /v1/stream`, two real `herald run` processes) carries
/// it. The two paths alternate, so both see the same broker and load.
async fn api_latency() {
    let c = TestCluster::new("bench-api", PARTITIONS, &[Install::builtin("mailbox")]).await;
    let mut a = c.start("a");
    let mut b = c.start("b");
    a.wait_assigned(&c.broadcast_group("a"));
    b.wait_assigned(&c.broadcast_group("b"));
    let mut stream = Stream::open(&mut a, "?account=5").await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/events", b.api());
    // The baseline publishes as herald's producer does: no linger, no Nagle.
    let plain: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &c.broker)
        .set("linger.ms", "0")
        .set("socket.nagle.disable", "true")
        .create()
        .unwrap();
    let rounds: u64 = if quick() { 60 } else { 300 };
    let (mut api, mut fresh, mut producer) = (Vec::new(), Vec::new(), Vec::new());
    let mut client_setup = Vec::new();
    // The first three (one per path) open connections: not timed.
    for change in 0..rounds + 3 {
        let ev = json!({"kind": "state-change",
            "body": {"accountId": 5, "changeId": change, "types": ["Email"]}});
        let path = change % 3;
        // Path 1: a new connection per request, as a script with curl
        // makes. The client is made before the clock starts: building one
        // (its TLS context) is the caller's cost, not the API's.
        let client = if path == 1 {
            let made = Instant::now();
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            client_setup.push(made.elapsed().as_micros() as i64);
            client
        } else {
            http.clone()
        };
        let started = Instant::now();
        if path < 2 {
            let r = client
                .post(&url)
                .bearer_auth(herald_tests::cluster::TOKEN)
                .header("content-type", "application/json")
                .body(ev.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 202);
        } else {
            let mut ev = ev;
            ev["v"] = json!(1);
            ev["id"] = json!(format!("api-bench-{change}"));
            ev["origin"] = json!("bench");
            ev["ts"] = json!(herald::event::now_ms());
            let payload = ev.to_string();
            plain
                .send(
                    FutureRecord::to(&c.topic)
                        .key("account:5")
                        .payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
        let (_, data) = stream.next().await;
        assert_eq!(data["changeId"], change);
        if change >= 3 {
            let took = started.elapsed().as_micros() as i64;
            [&mut api, &mut fresh, &mut producer][path as usize].push(took);
        }
    }
    println!("\npublish -> other node's IDLE stream, one event at a time, same run\n");
    println!(
        "{:<44} {:>9} {:>9} {:>9} {:>9}",
        "", "min ms", "p50 ms", "p99 ms", "max ms"
    );
    let mut p50 = Vec::new();
    for (name, mut lat) in [
        ("plain producer -> node A's stream", producer),
        ("POST /v1/events on node B -> A's stream", api),
        ("the same, a new HTTP connection each", fresh),
    ] {
        lat.sort();
        let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)] as f64 / 1000.0;
        println!(
            "{name:<44} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            p(0.0),
            p(0.5),
            p(0.99),
            p(1.0)
        );
        p50.push(p(0.5));
    }
    println!(
        "{:<44} {:>9.2}  (target: at most 2)",
        "ratio API / producer at p50",
        p50[1] / p50[0]
    );
    client_setup.sort();
    println!(
        "{:<44} {:>9.1} ms at p50 (reqwest::Client with TLS: the caller's cost)",
        "making an HTTP client, not timed above",
        client_setup[client_setup.len() / 2] as f64 / 1000.0
    );
    assert!(a.terminate().success() && b.terminate().success());
}

/// RSS of a real `herald run` with the four built-in handlers after
/// 100 000 events (blocks and unblocks of 1 000 addresses, state changes,
/// and a certificate now and then), once it has been idle a few seconds.
async fn memory() {
    let n: u32 = if quick() { 20_000 } else { 100_000 };
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
    // Start-up: the first start compiles the handlers into the cache; the
    // next ones load them from it, as a restarted node does. Timed from
    // process start to the API listening (handlers loaded by then), and to
    // the first assignment (which adds the broker's group join).
    let group = c.broadcast_group("memory");
    let mut first = c.start("memory");
    first.wait_assigned(&group);
    assert!(first.terminate().success());
    let (mut api, mut joined) = (Vec::new(), Vec::new());
    let starts = if quick() { 1 } else { 3 };
    for _ in 0..starts {
        let started = Instant::now();
        let mut node = c.start("memory");
        node.api();
        api.push(started.elapsed());
        node.wait_assigned(&group);
        joined.push(started.elapsed());
        assert!(node.terminate().success());
    }
    api.sort();
    joined.sort();
    let mut node = c.start("memory");
    node.wait_assigned(&group);
    let started_rss = node.rss_kib();
    let certificate = herald_tests::ec_certificate("c", "ec.key");
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
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
        < n as i64
    {
        assert!(
            handled.elapsed() < Duration::from_secs(600),
            "the node fell behind"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(if quick() { 2 } else { 5 })).await;
    let (idle, peak) = (node.rss_kib(), node.peak_rss_kib());
    println!("\nstart-up and memory of `herald run` with the four built-in handlers\n");
    println!(
        "{:<44} {:>9.0} ms   (target <= 300; median of {starts}, compiled cache warm)",
        "process start -> handlers loaded, API up",
        api[starts / 2].as_secs_f64() * 1000.0
    );
    println!(
        "{:<44} {:>9.0} ms   (adds the broker's group join)",
        "process start -> partitions assigned",
        joined[starts / 2].as_secs_f64() * 1000.0
    );
    println!(
        "{:<44} {:>9.1} MiB",
        "resident after start-up",
        started_rss as f64 / 1024.0
    );
    println!(
        "{:<44} {:>9.1} MiB  (target <= 64)",
        format!("resident, idle after {n} events"),
        idle as f64 / 1024.0
    );
    println!(
        "{:<44} {:>9.1} MiB",
        "peak while handling them",
        peak as f64 / 1024.0
    );
    assert!(node.terminate().success());
}

/// What `trust` costs end to end: the same node over the same signed
/// bundles of 100 ip-block events, with no trust policy and with one that
/// checks every signature, alternated in one run.
async fn trust() {
    use herald::trust::keys::{NodeKey, public_key_text};
    const PER_RECORD: u32 = 100;
    let (n, rounds) = (events(), rounds());
    let mut c = TestCluster::new("bench-trust", PARTITIONS, &[Install::builtin("blocking")]).await;
    let (key, _) = NodeKey::load_or_create(&c.dir.path().join("feed.key")).unwrap();
    let now = herald::event::now_ms();
    for b in 0..n / PER_RECORD {
        let bundle: Vec<serde_json::Value> = (b * PER_RECORD..(b + 1) * PER_RECORD)
            .map(|i| {
                let mut e = ip_block(&format!("e{i}"), &ip(i), "block", "bench");
                e["ts"] = json!(now);
                e
            })
            .collect();
        c.publish_signed(&format!("feed:{b}"), &json!(bundle), &key)
            .await;
    }
    let open = json!({"blocklist": {"maxEntries": 1_000_000}});
    let mut trusted = open.clone();
    trusted["trust"] = json!({"keys": {key.id(): {
        "publicKey": public_key_text(&key.public()), "kinds": ["ip-block"]}}});
    let (mut without, mut with) = (Vec::new(), Vec::new());
    // One run to warm the broker's and the kernel's caches, then alternate
    // which goes first, so that neither always meets the warmer state.
    c.settings = open.clone();
    herald_node(&c, 2 * rounds).await;
    for round in 0..rounds {
        for trust_on in [round % 2 == 1, round % 2 == 0] {
            if trust_on {
                c.settings = trusted.clone();
                with.push(herald_node(&c, rounds + round).await);
            } else {
                c.settings = open.clone();
                without.push(herald_node(&c, round).await);
            }
        }
    }
    let (open_rate, trusted_rate) = (median(&without, Window::rate), median(&with, Window::rate));
    println!(
        "\ntrust, {n} ip-block events in signed bundles of {PER_RECORD}, same node, topic and run, median of {rounds}\n"
    );
    println!(
        "{:<44} {:>12}",
        "herald node, blocking handler, committed", "events/s"
    );
    println!("{:<44} {:>12.0}", "no trust policy (baseline)", open_rate);
    println!(
        "{:<44} {:>12.0}",
        "trust: every signature checked", trusted_rate
    );
    println!(
        "{:<44} {:>12.2}",
        "ratio with / without trust (target ≥ 0.90)",
        trusted_rate / open_rate
    );
}

#[tokio::main]
async fn main() {
    // Sections whose name contains the filter, or one of its comma-separated
    // parts (`latency,memory`).
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let filter = filter.map(|f| f.split(',').map(str::to_string).collect::<Vec<_>>());
    let wanted = |section: &str| {
        filter
            .as_ref()
            .is_none_or(|parts| parts.iter().any(|p| section.contains(p.as_str())))
    };
    if wanted("throughput") {
        throughput().await;
    }
    if wanted("latency") {
        latency().await;
    }
    if wanted("memory") {
        memory().await;
    }
    if wanted("trust") {
        trust().await;
    }
    if wanted("boot") {
        boot().await;
    }
}

/// A new node's start: from the state topic holding one record per entity
/// (what compaction leaves), until the node is ready (caught up), against
/// the same entities' history of ten writes each replayed from the events
/// topic, until the node has committed all of it. The test broker does not
/// compact, so the state topic is written as compaction would leave it.
async fn boot() {
    let entities: u32 = if quick() { 10_000 } else { 100_000 };
    let writes = 10;
    let settings = json!({"blocklist": {"maxEntries": 1_000_000}});
    let block = |i: u32, n: u32| {
        let action = if n % 2 == 1 { "block" } else { "unblock" };
        let mut e = ip_block(&format!("w{n}-{i}"), &ip(i), action, "bench");
        e["ts"] = json!(1_000 + u64::from(n));
        (format!("ip:{}", ip(i)), e)
    };
    // From the state topic: the last write of each entity.
    let mut from_state = TestCluster::new(
        "bench-boot-state",
        PARTITIONS,
        &[Install::builtin("blocking")],
    )
    .await;
    from_state.settings = settings.clone();
    let last: Vec<_> = (0..entities).map(|i| block(i, writes - 1)).collect();
    for chunk in last.chunks(5_000) {
        from_state
            .publish_all_to(&from_state.state_topic, chunk)
            .await;
    }
    let node = Arc::new(Node::open(node_config(&from_state, "boot-state")).unwrap());
    let started = Instant::now();
    let stop = CancellationToken::new();
    let running = tokio::spawn(node.clone().run(stop.clone()));
    while !node.ready() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let state_took = started.elapsed();
    assert_eq!(
        node.blocklist().len(),
        entities as usize,
        "ready before caught up"
    );
    stop.cancel();
    running.await.unwrap().unwrap();

    // Replayed from the events topic: every write of every entity.
    let mut replay = TestCluster::new(
        "bench-boot-replay",
        PARTITIONS,
        &[Install::builtin("blocking")],
    )
    .await;
    replay.settings = settings;
    for n in 0..writes {
        let round: Vec<_> = (0..entities).map(|i| block(i, n)).collect();
        for chunk in round.chunks(5_000) {
            replay.publish_all(chunk).await;
        }
    }
    let ends: Vec<i64> = (0..PARTITIONS)
        .map(|p| replay.high_watermark(&replay.topic, p))
        .collect();
    let node = Arc::new(Node::open(node_config(&replay, "boot-replay")).unwrap());
    let group = replay.broadcast_group("boot-replay");
    let started = Instant::now();
    let stop = CancellationToken::new();
    let running = tokio::spawn(node.clone().run(stop.clone()));
    // Polled from a blocking thread (each look is a client of its own), at
    // a resolution far below what is timed.
    let done =
        || (0..PARTITIONS).all(|p| replay.committed(&group, p).unwrap_or(-1) >= ends[p as usize]);
    while !tokio::task::block_in_place(done) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let replay_took = started.elapsed();
    assert_eq!(node.blocklist().len(), entities as usize);
    stop.cancel();
    running.await.unwrap().unwrap();

    println!("\na new node's start, {entities} entities, same broker, same run\n");
    println!(
        "{:<44} {:>10.2} s",
        "from the state topic (one record each)",
        state_took.as_secs_f64()
    );
    println!(
        "{:<44} {:>10.2} s  ({} events)",
        "replaying the events topic (ten each)",
        replay_took.as_secs_f64(),
        entities * writes
    );
    println!(
        "{:<44} {:>10.2}",
        "ratio replay / state topic",
        replay_took.as_secs_f64() / state_took.as_secs_f64()
    );
}
