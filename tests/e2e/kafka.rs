//! The Kafka path end to end: real `herald run` processes, the test broker,
//! real components. Broadcast reaches every node, shared reaches one, a
//! killed node's shared partitions move, retries hold the partition, dead
//! letters carry their headers, a late joiner replays, and the mail
//! server's own consumer group is never touched.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use herald_tests::cluster::{Install, TestCluster, ip_block, read_store, wait_until};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;

const LONG: Duration = Duration::from_secs(60);

fn ips(range: std::ops::Range<u32>) -> BTreeSet<String> {
    range
        .map(|i| format!("198.51.{}.{}", i / 250, i % 250))
        .collect()
}

async fn publish_blocks(c: &TestCluster, range: std::ops::Range<u32>) {
    for i in range {
        let ip = format!("198.51.{}.{}", i / 250, i % 250);
        c.publish(&ip, &ip_block(&format!("e{i}"), &ip, "block", "test"))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn broadcast_reaches_every_node_and_shared_reaches_one() {
    broadcast_and_shared("blocking").await;
}

/// Broadcast reaches every node and shared reaches one, with `handler` (the
/// blocking handler in one language: `blocking`, `blocking-py`,
/// `blocking-js`).
pub async fn broadcast_and_shared(handler: &str) {
    let mut broadcast = TestCluster::new("broadcast", 3, &[Install::builtin(handler)]).await;
    let mut shared =
        TestCluster::new("shared", 3, &[Install::builtin(handler).in_mode("shared")]).await;
    broadcast.precompile();
    shared.precompile();
    let mut nodes = Vec::new();
    for n in ["a", "b", "c"] {
        let mut b = broadcast.start(n);
        b.wait_assigned(&broadcast.broadcast_group(n));
        nodes.push(b);
    }
    let mut shared_nodes: Vec<_> = ["a", "b", "c"].iter().map(|n| shared.start(n)).collect();
    for s in &mut shared_nodes {
        s.wait_assigned(&shared.shared_group());
    }
    publish_blocks(&broadcast, 0..30).await;
    publish_blocks(&shared, 0..30).await;
    let expected = ips(0..30);
    for b in &nodes {
        wait_until(
            &format!("node {} has every broadcast block", b.node),
            LONG,
            || b.blocklist() == expected,
        );
    }
    // Shared: every event handled, each on exactly one node.
    wait_until("the shared blocks are all handled", LONG, || {
        let union: BTreeSet<String> = shared_nodes.iter().flat_map(|n| n.blocklist()).collect();
        union == expected
    });
    let total: usize = shared_nodes.iter().map(|n| n.blocklist().len()).sum();
    assert_eq!(
        total,
        expected.len(),
        "a shared event was handled on two nodes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_nodes_shared_partitions_move_and_nothing_is_lost() {
    let c = TestCluster::new(
        "failover",
        6,
        &[Install::builtin("blocking").in_mode("shared")],
    )
    .await;
    let mut nodes: Vec<_> = ["a", "b", "c"].iter().map(|n| c.start(n)).collect();
    for n in &mut nodes {
        n.wait_assigned(&c.shared_group());
    }
    publish_blocks(&c, 0..150).await;
    nodes[2].kill();
    publish_blocks(&c, 150..300).await;
    let (alive, dead) = nodes.split_at(2);
    let expected = ips(0..300);
    wait_until("every event handled after the kill", LONG, || {
        let mut union: BTreeSet<String> = alive.iter().flat_map(|n| n.blocklist()).collect();
        union.extend(read_store(&dead[0].state));
        union == expected
    });
    // What came after the kill was handled by the survivors alone.
    let survivors: BTreeSet<String> = alive.iter().flat_map(|n| n.blocklist()).collect();
    assert!(ips(150..300).is_subset(&survivors));
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_holds_the_partition_until_it_succeeds() {
    let c = TestCluster::new("retry", 1, &[Install::builtin("fixtures/flaky")]).await;
    let mut c = c;
    // Enough attempts to outlast the hold.
    c.settings =
        serde_json::json!({"retry": {"attempts": 1000, "backoff": "20ms", "maxBackoff": "50ms"}});
    let mut node = c.start("a");
    let group = c.broadcast_group("a");
    node.wait_assigned(&group);
    let until = herald::event::now_ms() + 3_000;
    c.publish(
        "k",
        &ip_block(
            "held",
            "203.0.113.1",
            "block",
            &format!("retry-until:{until}"),
        ),
    )
    .await;
    c.publish("k", &ip_block("after", "203.0.113.2", "block", "ok"))
        .await;
    node.wait_for_log("retrying", LONG);
    // While the first event is retried, nothing after it is handled and its
    // offset is not committed.
    assert!(node.blocklist().is_empty());
    assert_eq!(c.committed(&group, 0), None);
    wait_until("both handled once the hold ends", LONG, || {
        node.blocklist() == BTreeSet::from(["203.0.113.1".to_string(), "203.0.113.2".to_string()])
    });
    assert!(
        herald::event::now_ms() >= until,
        "handled before the handler allowed it"
    );
    wait_until("offset committed past both", LONG, || {
        c.committed(&group, 0) == Some(2)
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handler_that_always_fails_sends_to_the_dead_letter_topic() {
    let c = TestCluster::new("dlq", 1, &[Install::builtin("fixtures/flaky")]).await;
    let mut node = c.start("a");
    let group = c.broadcast_group("a");
    node.wait_assigned(&group);
    c.publish("k", &ip_block("always", "203.0.113.1", "block", "retry"))
        .await;
    c.publish("k", &ip_block("rejected", "203.0.113.2", "block", "reject"))
        .await;
    c.publish("k", &{
        let mut bad = ip_block("bad", "x", "block", "x");
        bad["body"] = serde_json::json!({"action": "block"});
        bad
    })
    .await;
    c.publish("k", &ip_block("fine", "203.0.113.3", "block", "ok"))
        .await;
    wait_until("the partition moved on", LONG, || {
        node.blocklist() == BTreeSet::from(["203.0.113.3".to_string()])
    });
    wait_until("offset committed past all four", LONG, || {
        c.committed(&group, 0) == Some(4)
    });

    let mut letters: Vec<_> = c
        .dead_letters(3)
        .await
        .into_iter()
        .map(|l| l.headers)
        .collect();
    // Records that do not decode are dead-lettered before the batch's
    // handler failures: order the letters by original offset.
    letters.sort_by_key(|h| h["herald-original-offset"].parse::<i64>().unwrap());
    let retried = &letters[0];
    assert_eq!(retried["herald-handler"], "flaky");
    assert_eq!(
        retried["herald-attempts"], "4",
        "3 retries after the first call"
    );
    assert!(
        retried["herald-error"].contains("fixture asked to retry"),
        "{retried:?}"
    );
    assert_eq!(retried["herald-original-topic"], c.topic);
    assert_eq!(retried["herald-original-partition"], "0");
    assert_eq!(retried["herald-original-offset"], "0");
    assert_eq!(letters[1]["herald-original-offset"], "1");
    assert!(letters[1]["herald-error"].contains("fixture asked to reject"));
    // The undecodable record goes straight there, naming what is wrong.
    assert_eq!(letters[2]["herald-original-offset"], "2");
    assert_eq!(letters[2]["herald-handler"], "");
    assert!(
        letters[2]["herald-error"].contains("`ip`"),
        "{:?}",
        letters[2]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_late_joiner_rebuilds_its_blocklist_from_the_log() {
    late_joiner("blocking").await;
}

/// A late joiner rebuilds its blocklist from the log, with `handler` (as
/// [`broadcast_and_shared`]).
pub async fn late_joiner(handler: &str) {
    let mut c = TestCluster::new("late", 3, &[Install::builtin(handler)]).await;
    c.precompile();
    let mut first = c.start("a");
    first.wait_assigned(&c.broadcast_group("a"));
    publish_blocks(&c, 0..100).await;
    // Unblocks of the same entities, later in their partitions.
    for i in 0..20 {
        let ip = format!("198.51.{}.{}", i / 250, i % 250);
        c.publish(&ip, &ip_block(&format!("u{i}"), &ip, "unblock", "test"))
            .await;
    }
    let expected = ips(20..100);
    wait_until("the first node is current", LONG, || {
        first.blocklist() == expected
    });
    let mut late = c.start("late");
    late.wait_assigned(&c.broadcast_group("late"));
    wait_until("the late node replayed the log", LONG, || {
        late.blocklist() == expected
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_commits_and_exits_zero() {
    let c = TestCluster::new("sigterm", 2, &[Install::builtin("blocking")]).await;
    let mut node = c.start("a");
    let group = c.broadcast_group("a");
    node.wait_assigned(&group);
    publish_blocks(&c, 0..50).await;
    wait_until("handled", LONG, || node.blocklist() == ips(0..50));
    let status = node.terminate();
    assert!(status.success(), "herald exited with {status}");
    let total: i64 = (0..2).map(|p| c.committed(&group, p).unwrap_or(0)).sum();
    assert_eq!(total, 50, "every handled record is committed at shutdown");
}

/// Counts a consumer's rebalances: what a Stalwart node would suffer.
struct Rebalances {
    assigned: std::sync::atomic::AtomicUsize,
    revoked: std::sync::atomic::AtomicUsize,
}

impl rdkafka::ClientContext for Rebalances {}

impl rdkafka::consumer::ConsumerContext for Rebalances {
    fn pre_rebalance(
        &self,
        _: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        use rdkafka::consumer::Rebalance;
        use std::sync::atomic::Ordering::SeqCst;
        match rebalance {
            Rebalance::Assign(_) => self.assigned.fetch_add(1, SeqCst),
            Rebalance::Revoke(_) => self.revoked.fetch_add(1, SeqCst),
            Rebalance::Error(_) => 0,
        };
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn herald_never_rebalances_the_mail_servers_own_group() {
    use std::sync::atomic::Ordering::SeqCst;
    // Broadcast (mailbox, reading Stalwart's topic too) and shared (push)
    // handlers, so the node runs both of its groups.
    let mut c = TestCluster::new(
        "guest",
        2,
        &[Install::builtin("mailbox"), Install::builtin("push")],
    )
    .await;
    let stwt = c.enable_stalwart().await;

    // A Stalwart node: group `groupId` on Stalwart's topic.
    let context = Rebalances {
        assigned: Default::default(),
        revoked: Default::default(),
    };
    let stalwart: Arc<StreamConsumer<Rebalances>> = Arc::new(
        ClientConfig::new()
            .set("bootstrap.servers", &c.broker)
            .set("group.id", &c.group)
            .set("session.timeout.ms", "6000")
            .set("auto.offset.reset", "earliest")
            .create_with_context(context)
            .unwrap(),
    );
    stalwart.subscribe(&[&stwt]).unwrap();
    let (tx, mut received) = tokio::sync::mpsc::unbounded_channel();
    let polling = stalwart.clone();
    let poller = tokio::spawn(async move {
        loop {
            let m = polling.recv().await.unwrap();
            let _ = tx.send(m.payload().map(|p| p.to_vec()));
        }
    });
    wait_until("the Stalwart consumer has its partitions", LONG, || {
        stalwart.context().assigned.load(SeqCst) == 1 && stalwart.assignment().unwrap().count() == 1
    });

    // herald nodes come, go cleanly, and die.
    let mut a = c.start("a");
    a.wait_assigned_all(&[c.broadcast_group("a"), c.shared_group()]);
    let mut b = c.start("b");
    b.wait_assigned_all(&[c.broadcast_group("b"), c.shared_group()]);
    assert!(a.terminate().success());
    b.kill();
    let mut a = c.start("a");
    a.wait_assigned_all(&[c.broadcast_group("a"), c.shared_group()]);

    // The mail server's group still works, and herald still hears Stalwart.
    let record = c
        .publish_stalwart(
            &stwt,
            1,
            vec![herald::event::Body::QueueRefresh(herald::event::Empty {})],
        )
        .await;
    let got = tokio::time::timeout(LONG, received.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.as_deref(), Some(&record[..]));

    let ctx = stalwart.context();
    assert_eq!(
        (ctx.assigned.load(SeqCst), ctx.revoked.load(SeqCst)),
        (1, 0),
        "the mail server's consumer was rebalanced while herald nodes came and went"
    );
    poller.abort();
    assert!(a.terminate().success());
}
