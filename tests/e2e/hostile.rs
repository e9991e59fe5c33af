//! Hostile input never stops a node: real `herald run` processes, the test
//! broker, real components from `handlers/fixtures/`, records from a plain
//! Kafka client. Each case shows the failure staying with its input (a
//! counted, bounded dead letter) and the node carrying on: a later event on
//! the same partition is applied and the offset committed past both.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use herald_tests::cluster::{Install, Letter, NodeProcess, TestCluster, ip_block, wait_until};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(60);
/// Applied by `blocking` after each poison record, to show the partition moved on.
const AFTER: &str = "203.0.113.250";

/// A one-partition cluster running the built-in `blocking` beside
/// `others`, and its node, assigned.
async fn node_with(name: &str, others: &[Install<'_>]) -> (TestCluster, NodeProcess) {
    let mut all = vec![Install::builtin("blocking")];
    all.extend(others.iter().copied());
    let c = TestCluster::new(name, 1, &all).await;
    let mut node = c.start("a");
    node.wait_assigned(&c.broadcast_group("a"));
    (c, node)
}

/// Publish `poison` and then an ordinary block; wait until the block is
/// applied and both offsets are committed. Returns the time that took.
async fn poison_then_carry_on(c: &TestCluster, node: &NodeProcess, poison: &Value) -> Duration {
    let started = Instant::now();
    c.publish("k", poison).await;
    c.publish("k", &ip_block("after", AFTER, "block", "ok"))
        .await;
    wait_until("the event after the poison is applied", LONG, || {
        node.blocklist().contains(AFTER)
    });
    let group = c.broadcast_group("a");
    wait_until("both offsets committed", LONG, || {
        c.committed(&group, 0) == Some(2)
    });
    started.elapsed()
}

/// The letters `handler` wrote for the poison record (offset 0).
fn of(letters: &[Letter], handler: &str) -> Vec<String> {
    letters
        .iter()
        .filter(|l| {
            l.header("herald-handler") == handler && l.header("herald-original-offset") == "0"
        })
        .map(|l| l.header("herald-error").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sleeping_handler_is_ended_at_its_deadline() {
    let (c, node) = node_with("sleeper", &[Install::builtin("fixtures/sleeper")]).await;
    let took = poison_then_carry_on(&c, &node, &ip_block("p", "203.0.113.1", "block", "x")).await;
    // Both events failed in `sleeper` (1 call + 3 retries each, 200 ms + grace).
    let letters = c.dead_letters(2).await;
    let errors = of(&letters, "sleeper");
    assert!(errors[0].starts_with("deadline:"), "{errors:?}");
    eprintln!("sleeper: moved past the poison record in {took:?}");
    // Without the deadline the sleeper never returns: a guard, far above
    // the 8 calls of 200 ms it takes.
    assert!(took < Duration::from_secs(50), "{took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_flood_is_cut_to_the_per_call_budget() {
    let (c, node) = node_with("logflood", &[Install::builtin("fixtures/logflood")]).await;
    poison_then_carry_on(&c, &node, &ip_block("p", "203.0.113.1", "block", "x")).await;
    let log = node.log_text();
    let lines = log
        .lines()
        .filter(|l| l.contains("handler=\"logflood\"") || l.contains("handler=logflood"))
        .count();
    // 100 000 lines asked for per event; at most 100 kept per call, and one
    // truncation notice.
    assert!(lines <= 2 * 101 + 10, "{lines} log lines from the flood");
    assert!(log.contains("log truncated"), "no truncation notice");
    assert!(
        log.len() < 2 * 1024 * 1024,
        "the node log grew to {} bytes",
        log.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_huge_reason_is_cut_before_it_is_dead_lettered() {
    let (c, node) = node_with("hugereason", &[Install::builtin("fixtures/hugereason")]).await;
    poison_then_carry_on(&c, &node, &ip_block("p", "203.0.113.1", "block", "x")).await;
    let letters = c.dead_letters(2).await;
    let errors = of(&letters, "hugereason");
    assert!(
        errors[0].len() < 1200,
        "a {} byte error header",
        errors[0].len()
    );
    assert!(
        errors[0].ends_with("bytes cut]"),
        "{}",
        &errors[0][errors[0].len() - 40..]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_outcome_count_fails_the_call() {
    let (c, node) = node_with("outcomes", &[Install::builtin("fixtures/outcomes")]).await;
    poison_then_carry_on(&c, &node, &ip_block("p-more", "203.0.113.1", "block", "x")).await;
    let letters = c.dead_letters(2).await;
    let errors = of(&letters, "outcomes");
    assert!(
        errors[0].contains("returned 2 outcomes for 1 events"),
        "{errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn outcomes_that_alias_one_big_reason_are_refused_before_they_are_copied() {
    let (c, node) = node_with("aliased", &[Install::builtin("fixtures/outcomes")]).await;
    let before = node.peak_rss_kib();
    // 1024 reasons, all the same 4 MiB of the guest's memory: 4 GiB to copy.
    poison_then_carry_on(&c, &node, &ip_block("p-alias", "203.0.113.1", "block", "x")).await;
    let letters = c.dead_letters(2).await;
    let errors = of(&letters, "outcomes");
    assert!(errors[0].contains("in one transfer"), "{errors:?}");
    let peak = node.peak_rss_kib();
    eprintln!("aliased outcomes: node peak RSS {before} KiB before, {peak} KiB after");
    // Before: wasmtime's default budget let 128 MiB be copied per attempt.
    assert!(
        peak < before + 48 * 1024,
        "peak RSS {peak} KiB, {before} KiB before"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_republish_loop_ends_at_the_hop_limit_and_unlisted_kinds_are_refused() {
    let (c, node) = node_with("republish", &[Install::builtin("fixtures/republish")]).await;
    let group = c.broadcast_group("a");
    c.publish("k", &ip_block("p", "203.0.113.9", "block", "x"))
        .await;
    // p (hops 0) → 1 → 2 → 3 → 4 → 5: the event of hop 5 is not handled.
    // p came on the events topic; what the handler published are blocks,
    // which go to the state topic, and so do their dead letters.
    let mut letters = c.dead_letters(1).await;
    letters.extend(c.dead_letters_of(&c.state_topic, 5).await);
    let hop = letters
        .iter()
        .filter(|l| l.header("herald-error").contains("publish.maxHops"))
        .count();
    assert_eq!(hop, 1, "{letters:#?}");
    // Each handled one tried to publish a state-change, which its manifest
    // does not list.
    let denied = letters
        .iter()
        .filter(|l| l.header("herald-handler") == "republish")
        .filter(|l| {
            l.header("herald-error")
                .contains("may not publish `state-change`")
        })
        .count();
    assert_eq!(denied, 5, "{letters:#?}");
    // The chain is over: 6 records in all, and the node carries on.
    c.publish("k", &ip_block("after", AFTER, "block", "ok"))
        .await;
    wait_until("the event after the loop is applied", LONG, || {
        node.blocklist().contains(AFTER)
    });
    let committed = || {
        (
            c.committed(&group, 0),
            c.committed_on(&group, &c.state_topic, 0),
        )
    };
    wait_until("every offset committed", LONG, || {
        let (events, state) = committed();
        events.is_some_and(|o| o >= 2) && state.is_some_and(|o| o >= 10)
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        committed(),
        (Some(2), Some(10)),
        "per chain, 1 record on the events topic and 5 on the state topic; two chains"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_host_refuses_to_block_what_would_cut_the_cluster_off() {
    let (c, node) = node_with("overreach", &[Install::builtin("fixtures/overreach")]).await;
    let reach = "0.0.0.0/0 ::/0 10.0.0.0/8 127.0.0.1 169.254.169.254";
    poison_then_carry_on(&c, &node, &ip_block("p", "203.0.113.1", "block", reach)).await;
    let letters = c.dead_letters(2).await;
    let errors = of(&letters, "overreach");
    assert!(
        errors[0].contains("denied: refusing to block 0.0.0.0/0"),
        "{errors:?}"
    );
    let blocked = node.blocklist();
    assert_eq!(
        blocked,
        BTreeSet::from(["203.0.113.1".to_string(), AFTER.to_string()]),
        "only what `blocking` applied"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_for_a_domain_it_does_not_cover_is_refused_by_the_store() {
    let c = TestCluster::new(
        "badcert",
        1,
        &[
            Install::builtin("certificate"),
            Install::builtin("fixtures/badcert"),
        ],
    )
    .await;
    let mut node = c.start("a");
    let group = c.broadcast_group("a");
    node.wait_assigned(&group);
    let cert = |id: &str| herald_tests::ec_certificate(id, "ec.key");
    c.publish("domain:mail.example.com", &cert("first")).await;
    c.publish("domain:mail.example.com", &cert("again")).await;
    wait_until("both offsets committed", LONG, || {
        c.committed(&group, 0) == Some(2)
    });
    let letters = c.dead_letters(2).await;
    let errors = of(&letters, "badcert");
    assert!(
        errors[0].contains("does not cover `not-covered.example.net`"),
        "{errors:?}"
    );
    let certs = node.state.join("certs");
    assert!(
        certs.join("mail.example.com").exists(),
        "the honest handler installed it"
    );
    assert!(!certs.join("not-covered.example.net").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_junk_record_and_a_letter_too_large_for_the_broker_do_not_stop_the_partition() {
    let (c, node) = node_with("junk", &[]).await;
    let group = c.broadcast_group("a");
    // ~600 KB of kind: refused early, named, and the letter stays small
    // enough to keep its payload.
    let junk = json!({"v":1,"id":"junk","kind":"x".repeat(600_000),"origin":"t","ts":1,"body":{}});
    c.publish_bytes(&c.topic, junk.to_string().as_bytes()).await;
    // Just under the producer's 1 MB: its letter, with herald's headers, is
    // over, so it goes without its payload.
    let big = vec![b'{'; 999_800];
    c.publish_bytes(&c.topic, &big).await;
    let started = Instant::now();
    c.publish("k", &ip_block("after", AFTER, "block", "ok"))
        .await;
    wait_until("the event after the junk is applied", LONG, || {
        node.blocklist().contains(AFTER)
    });
    wait_until("all three offsets committed", LONG, || {
        c.committed(&group, 0) == Some(3)
    });
    eprintln!(
        "junk: moved past two poison records in {:?}",
        started.elapsed()
    );
    let letters = c.dead_letters(2).await;
    let junk_letter = &letters[0];
    assert!(
        junk_letter
            .header("herald-error")
            .contains("field `kind` is 600000 bytes long")
    );
    assert_eq!(junk_letter.payload.len(), junk.to_string().len());
    let big_letter = &letters[1];
    assert_eq!(big_letter.header("herald-payload-dropped"), "999800");
    assert!(big_letter.payload.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalwart_record_of_a_million_events_is_refused_whole_in_bounded_memory() {
    let mut c = TestCluster::new("stwt-flood", 1, &[Install::builtin("blocking")]).await;
    let stwt = c.enable_stalwart().await;
    let mut node = c.start("a");
    node.wait_assigned(&c.broadcast_group("a"));
    let before = node.peak_rss_kib();
    // One-byte events (queue-refresh is its tag alone), just under 1 MB.
    let events = vec![herald::event::Body::QueueRefresh(herald::event::Empty {}); 990_000];
    c.publish_stalwart(&stwt, 1, events).await;
    c.publish("k", &ip_block("after", AFTER, "block", "ok"))
        .await;
    wait_until("the events topic moved on", LONG, || {
        node.blocklist().contains(AFTER)
    });
    let letters = c.dead_letters_of(&stwt, 1).await;
    assert!(
        letters[0]
            .header("herald-error")
            .contains("more than 10000 events in one record"),
        "{:?}",
        letters[0].headers
    );
    let group = c.broadcast_group("a");
    wait_until("the Stalwart record committed", LONG, || {
        c.committed_on(&group, &stwt, 0) == Some(1)
    });
    let peak = node.peak_rss_kib();
    eprintln!(
        "stalwart flood: node peak RSS {} KiB before, {} KiB after",
        before, peak
    );
    assert!(peak < 100 * 1024, "peak RSS {peak} KiB");
}

#[tokio::test(flavor = "multi_thread")]
async fn push_never_reaches_the_nodes_own_network() {
    let (c, node) = node_with("ssrf", &[Install::builtin("push").in_mode("broadcast")]).await;
    let push = |id: &str, endpoint: &str| {
        json!({"v":1,"id":id,"kind":"push","origin":"test","ts":1,
            "body":{"accountId":5,"endpoint":endpoint,"payload":"hi","ttl":60,"urgency":"normal"}})
    };
    // Refused before any connection: a literal loopback and private
    // address, and plain http.
    c.publish("account:5", &push("p1", "https://127.0.0.1:9/x"))
        .await;
    c.publish("account:5", &push("p2", "https://10.0.0.1/x"))
        .await;
    c.publish("account:5", &push("p3", "http://push.example/x"))
        .await;
    c.publish("k", &ip_block("after", AFTER, "block", "ok"))
        .await;
    wait_until("the event after the pushes is applied", LONG, || {
        node.blocklist().contains(AFTER)
    });
    let letters = c.dead_letters(3).await;
    let errors: Vec<_> = letters.iter().map(|l| l.header("herald-error")).collect();
    assert!(errors[0].contains("must be public"), "{errors:?}");
    assert!(errors[1].contains("must be public"), "{errors:?}");
    assert!(errors[2].contains("https is required"), "{errors:?}");
}
