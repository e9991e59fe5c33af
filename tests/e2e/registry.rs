//! Stalwart's own bans, enforced cluster-wide: a registry pointer on
//! Stalwart's topic is resolved once, through a stand-in of Stalwart's
//! management API (`herald_tests::stalwart_api`), and every node ends with
//! the ban; a reload after an unban lifts it everywhere, and touches no ban
//! that did not come from Stalwart. An API that does not answer costs a
//! dead letter that names it, and nothing else.

use std::time::{Duration, Instant};

use herald::event::{Body, RegistryAction, RegistryChange};
use herald_tests::api::get;
use herald_tests::cluster::{Install, NodeProcess, TestCluster, ip_block, wait_until};
use herald_tests::stalwart_api::{Ban, StalwartApi};
use serde_json::json;

const LONG: Duration = Duration::from_secs(60);
const KEY: &str = "API_aGVyYWxkLXRlc3Qta2V5";
/// An automatic ban's id as Stalwart makes them (a snowflake).
const BAN: u64 = 342711554306740224;
const MANUAL: u64 = 342711554306740225;

fn pointer(action: RegistryAction, object_type: u16, id: Option<u64>) -> Body {
    Body::RegistryChange(RegistryChange {
        action,
        object_type,
        id,
    })
}

/// Until every node is in the shared group and its partitions are all
/// assigned: a rebalance later would hand a partition's records to a
/// second node.
async fn shared_group_settled(nodes: &mut [NodeProcess], partitions: u64) {
    let deadline = Instant::now() + LONG;
    loop {
        let mut total = 0;
        let mut joined = 0;
        for n in nodes.iter_mut() {
            let (_, s) = get(n, "/v1/status").await;
            let shared = &s["groups"][1];
            assert_eq!(shared["mode"], "shared", "{s}");
            total += shared["assigned"].as_u64().unwrap_or(0);
            joined += u64::from(shared["joined"] == true);
        }
        if total == partitions && joined == nodes.len() as u64 {
            return;
        }
        assert!(Instant::now() < deadline, "the shared group never settled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stalwarts_bans_reach_every_node_and_its_unbans_too() {
    let api = StalwartApi::start(KEY).await;
    let soon =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(3600))
            .to_string();
    api.ban(
        BAN,
        Ban {
            address: "198.51.100.7".into(),
            reason: "authFailure".into(),
            expires_at: Some(soon),
        },
    );
    // Only the blocking handler: the shared group runs for the pointers alone.
    let mut c = TestCluster::new("bans", 2, &[Install::builtin("blocking")]).await;
    let stwt = c.enable_stalwart().await;
    let key_file = c.dir.path().join("stalwart.key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    c.settings["stalwart"]["management"] = json!({"url": api.url, "apiKeyFile": key_file});
    let mut nodes: Vec<NodeProcess> = ["a", "b", "c"].iter().map(|n| c.start(n)).collect();
    // 2 + 2 partitions of herald's topics, 1 of Stalwart's.
    shared_group_settled(&mut nodes, 5).await;

    // A ban of Stalwart's: a pointer, from Stalwart node 3.
    c.publish_stalwart(
        &stwt,
        3,
        vec![pointer(RegistryAction::Insert, 17, Some(BAN))],
    )
    .await;
    for n in &nodes {
        wait_until(&format!("{} blocks Stalwart's ban", n.node), LONG, || {
            n.blocklist().contains("198.51.100.7")
        });
    }
    let gets: Vec<_> = api
        .calls()
        .into_iter()
        .filter(|(m, ids)| m == "x:BlockedIp/get" && ids.contains(&BAN))
        .collect();
    assert_eq!(gets.len(), 1, "one node resolves a pointer: {gets:?}");
    // The ban's expiry came with it.
    let (_, list) = get(&mut nodes[2], "/v1/blocklist").await;
    let entry = list["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["network"] == "198.51.100.7")
        .unwrap_or_else(|| panic!("{list}"))
        .clone();
    assert!(entry["expiresAt"].as_u64().is_some(), "{entry}");
    assert!(
        entry["reason"].as_str().unwrap().contains("authFailure"),
        "{entry}"
    );

    // A ban herald's own publisher made, which Stalwart knows nothing of.
    c.publish("k", &ip_block("own", "203.0.113.9", "block", "by hand"))
        .await;
    for n in &nodes {
        wait_until("herald's own ban", LONG, || {
            n.blocklist().contains("203.0.113.9")
        });
    }

    // In Stalwart: the ban lifted, a manual ban added, then "reload blocked
    // IPs" (a registry reload of type 17, the only announcement of either).
    api.unban(BAN);
    api.ban(
        MANUAL,
        Ban {
            address: "100.64.7.0/24".into(),
            reason: "manual".into(),
            expires_at: None,
        },
    );
    c.publish_stalwart(&stwt, 3, vec![pointer(RegistryAction::Reload, 17, None)])
        .await;
    for n in &nodes {
        wait_until(
            &format!("{} follows Stalwart's registry", n.node),
            LONG,
            || {
                let b = n.blocklist();
                !b.contains("198.51.100.7") && b.contains("100.64.7.0/24")
            },
        );
        assert!(
            n.blocklist().contains("203.0.113.9"),
            "{}: herald's own ban stays",
            n.node
        );
    }

    // A certificate's pointer cannot be followed (Stalwart masks its key):
    // counted, not installed, and the partition moves on.
    c.publish_stalwart(
        &stwt,
        3,
        vec![pointer(RegistryAction::Insert, 23, Some(77))],
    )
    .await;
    let mut counted = false;
    let deadline = Instant::now() + LONG;
    while !counted {
        for n in nodes.iter_mut() {
            let m = herald_tests::api::metrics(n).await;
            counted |= m.lines().any(|l| {
                l.starts_with("herald_stalwart_pointers_total{")
                    && l.contains("object=\"certificate\"")
                    && l.contains("result=\"unresolvable\"")
            });
        }
        assert!(
            Instant::now() < deadline,
            "the certificate pointer was not counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Stalwart's API goes away: the pointer is retried by `retry`, then
    // dead-lettered with an error that names the API.
    api.stop();
    c.publish_stalwart(
        &stwt,
        3,
        vec![pointer(RegistryAction::Insert, 17, Some(BAN + 9))],
    )
    .await;
    let letter = c
        .dead_letter_where(&stwt, |l| l.header("herald-handler") == "stalwart-registry")
        .await;
    let error = letter.header("herald-error");
    assert!(error.contains(&format!("{}/jmap", api.url)), "{error}");
    for n in nodes.iter_mut() {
        assert!(n.terminate().success());
    }
}
