//! At-least-once under crashes: 10 000 ip-block events while one node is
//! killed (SIGKILL) and restarted at random points; afterwards every event
//! was applied on that node and its blocklist is exactly the expected set.

use std::collections::BTreeSet;
use std::time::Duration;

use herald_tests::cluster::{Install, TestCluster, ip_block, wait_until};

const EVENTS: u32 = 10_000;
const KILLS: u32 = 6;

fn ip(i: u32) -> String {
    // The benchmarking range (RFC 2544): never a node's own address.
    format!("198.{}.{}.{}", 18 + i / 65536, (i / 256) % 256, i % 256)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_event_survives_repeated_sigkill() {
    let c = TestCluster::new("crash", 4, &[Install::builtin("blocking")]).await;
    let group = c.broadcast_group("victim");
    let mut node = c.start("victim");
    node.wait_assigned(&group);

    // Every 10th address is unblocked again, later in its own partition:
    // replays must keep that order for the final set to be right.
    let mut expected = BTreeSet::new();
    let mut published = BTreeSet::new();
    let mut seed = 0x2545F4914F6CDD1Du64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let chunk = EVENTS / KILLS;
    let mut mid_work = 0;
    for k in 0..=KILLS {
        let mut events = Vec::new();
        for i in (k * chunk)..((k + 1) * chunk).min(EVENTS) {
            events.push((
                ip(i),
                ip_block(&format!("b{i}"), &ip(i), "block", "crash test"),
            ));
            if i % 10 == 0 {
                events.push((
                    ip(i),
                    ip_block(&format!("u{i}"), &ip(i), "unblock", "crash test"),
                ));
            } else {
                expected.insert(ip(i));
            }
        }
        c.publish_all(&events).await;
        published.extend(events.iter().map(|(k, _)| k.clone()));
        if k < KILLS {
            // The node (re)joins and works through the backlog; kill it at
            // a random point of that.
            if k > 0 {
                node.wait_assigned(&group);
            }
            tokio::time::sleep(Duration::from_millis(rand(200))).await;
            let applied = node.blocklist();
            node.kill();
            if !expected.iter().all(|ip| applied.contains(ip)) {
                mid_work += 1;
            }
            node = c.start("victim");
        }
    }
    node.wait_assigned(&group);
    wait_until(
        "the node caught up after the crashes",
        Duration::from_secs(300),
        || node.blocklist().len() == expected.len(),
    );
    assert_eq!(
        node.blocklist(),
        expected,
        "blocklist differs from the expected set"
    );
    eprintln!("{KILLS} SIGKILLs, {mid_work} of them with work in progress");
    // The test means something only if kills land mid-work; how many do
    // depends on the machine's speed, so ask for half of them.
    assert!(
        mid_work >= KILLS / 2,
        "only {mid_work} kills landed while the node was working"
    );
}
