//! Cluster state that converges: three nodes read a randomised history of
//! signed blocks and unblocks of the same networks, written in different
//! spellings (so on different partitions), with replayed copies of older
//! records, mixed bundles and expiries, while one node is killed (SIGKILL)
//! and another restarted; at the end every node holds the same blocklist,
//! entry for entry (reason, expiry, version), and it is the one a model
//! computes from the versions alone. A fourth node then joins with nothing
//! left on its events topic (as after retention deleted it): the state
//! topic alone brings it to the same list.
//!
//! The state topic is compacted, and compaction keeps the last record of a
//! key, not the newest version: replays, junk and tombstones come last for
//! some keys, the nodes put the newest back, and a node that reads only
//! what compaction would keep ends with the same list.
//!
//! The same for one domain's certificates: four certificates written in
//! three spellings of the domain, replays, a SIGKILL and restarts, and
//! every node ends with the newest version's. And a publish chain leaves
//! as many records on a cluster of three nodes as on one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herald::trust::keys::{NodeKey, public_key_text, signature_text};
use herald::trust::{KEY_ID_HEADER, SIGNATURE_HEADER};
use herald_tests::api;
use herald_tests::cluster::{Install, NodeProcess, TestCluster, ip_block, wait_until};
use serde_json::{Value, json};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A small deterministic generator (xorshift), seeded from the clock and
/// printed, so that a failing interleaving can be run again.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// The networks of the history, each with the spellings a publisher may use.
fn networks() -> Vec<(&'static str, Vec<String>)> {
    let mut nets = Vec::new();
    for (canonical, spellings) in [
        (
            "198.51.100.1",
            vec!["198.51.100.1", "198.51.100.1/32", "::ffff:198.51.100.1"],
        ),
        (
            "198.51.100.2",
            vec!["198.51.100.2", "::ffff:198.51.100.2/128"],
        ),
        ("203.0.113.9", vec!["203.0.113.9/32", "::FFFF:203.0.113.9"]),
        (
            "198.51.101.0/24",
            vec!["198.51.101.0/24", "::ffff:198.51.101.0/120"],
        ),
        (
            "2001:db8:1::/48",
            vec!["2001:db8:1::/48", "2001:DB8:1::/48", "2001:db8:1:0::/48"],
        ),
        (
            "2001:db8::7",
            vec!["2001:db8::7", "2001:db8::7/128", "2001:DB8:0::7"],
        ),
    ] {
        nets.push((canonical, spellings.into_iter().map(String::from).collect()));
    }
    nets
}

/// One signed record as a plain client writes it.
#[derive(Clone)]
struct Signed {
    key: String,
    payload: String,
    signature: String,
}

fn sign(ops: &NodeKey, key: String, payload: String) -> Signed {
    let signature = signature_text(&ops.sign(Some(key.as_bytes()), payload.as_bytes()));
    Signed {
        key,
        payload,
        signature,
    }
}

/// Insert `n` copies of earlier records, each after the one it copies, as
/// a replay by anyone with write access would.
fn replay_older(rng: &mut Rng, records: &mut Vec<Signed>, n: usize) {
    for _ in 0..n {
        let at = 1 + rng.below(records.len() - 1);
        let copy = records[rng.below(at)].clone();
        records.insert(at, copy);
    }
}

/// Start nodes a, b and c, and publish `records` (signed by `ops`) to the
/// state topic, killing b (SIGKILL) a third of the way through and, at two
/// thirds, starting b again and restarting c. Returns the three nodes.
async fn publish_through_restarts(
    c: &TestCluster,
    ops: &NodeKey,
    records: &[Signed],
) -> [NodeProcess; 3] {
    let mut a = c.start("a");
    let mut b = c.start("b");
    let mut n3 = c.start("c");
    for (node, name) in [(&mut a, "a"), (&mut b, "b"), (&mut n3, "c")] {
        node.wait_assigned(&c.broadcast_group(name));
    }
    let third = records.len() / 3;
    for (i, r) in records.iter().enumerate() {
        if i == third {
            b.kill();
        }
        if i == 2 * third {
            b = c.start("b");
            assert!(n3.terminate().success());
            n3 = c.start("c");
        }
        c.publish_record_to(
            &c.state_topic,
            &r.key,
            r.payload.as_bytes(),
            &[
                (KEY_ID_HEADER, ops.id().as_bytes()),
                (SIGNATURE_HEADER, r.signature.as_bytes()),
            ],
        )
        .await;
    }
    [a, b, n3]
}

/// A cluster of blocking nodes on 4 partitions trusting one publisher's
/// key, that key, and a random generator whose seed is printed.
async fn trusting_cluster(name: &str) -> (Rng, TestCluster, NodeKey) {
    let seed = now_ms() | 1;
    eprintln!("{name}: seed {seed}");
    let mut c = TestCluster::new(name, 4, &[Install::builtin("blocking")]).await;
    let ops = NodeKey::load_or_create(&c.dir.path().join("ops.key"))
        .unwrap()
        .0;
    c.settings = json!({"trust": {"keys": {
        ops.id(): {"publicKey": public_key_text(&ops.public()), "kinds": ["*"]}}}});
    (Rng(seed), c, ops)
}

/// The three nodes' lists, once each is `want` (network and version id,
/// in force): awaited, since a restarted node may still be replaying.
async fn caught_up(
    nodes: [&mut NodeProcess; 3],
    want: &[(String, Value)],
) -> Vec<BTreeMap<String, Value>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut lists = Vec::new();
    for node in nodes {
        loop {
            let list = entries(node).await;
            let has: Vec<(String, Value)> = list
                .iter()
                .map(|(net, e)| (net.clone(), e["version"]["id"].clone()))
                .collect();
            if has == want {
                lists.push(list);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a node never reached the model: has {has:?}, expected {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    lists
}

/// What a node's `GET /v1/blocklist` holds, by network.
async fn entries(node: &mut NodeProcess) -> BTreeMap<String, Value> {
    let (status, v) = api::get(node, "/v1/blocklist").await;
    assert_eq!(status, 200, "{v}");
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["network"].as_str().unwrap().to_string(), e.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_node_ends_with_the_blocklist_the_versions_decide() {
    let (mut rng, mut c, ops) = trusting_cluster("converge").await;

    // The history: 240 writes to six networks, each in a random spelling,
    // with versions (ts, id) that a publisher's clock gave them: mostly
    // rising, some equal (the id decides), some blocks already expired.
    let nets = networks();
    let start = now_ms() - 600_000;
    let mut history = Vec::new();
    let mut model: BTreeMap<&str, (u64, String, Value)> = BTreeMap::new();
    for step in 0..240u64 {
        let (canonical, spellings) = &nets[rng.below(nets.len())];
        let ip = spellings[rng.below(spellings.len())].clone();
        let ts = start + step * 1_000 + (rng.below(3) as u64) * 500;
        let id = format!("c{:03}-{}", rng.below(1000), step);
        let block = rng.below(5) < 3;
        let expires = match rng.below(5) {
            0 => Some(now_ms() - 1_000),
            1 => Some(now_ms() + 3_600_000),
            _ => None,
        };
        let event = json!({"v": 1, "id": id, "kind": "ip-block", "origin": "ops", "ts": ts,
            "body": {"ip": ip, "action": if block { "block" } else { "unblock" },
                     "reason": format!("step {step}"), "expiresAt": expires}});
        let newer = model
            .get(canonical)
            .is_none_or(|(t, i, _)| (ts, &id) > (*t, i));
        if newer {
            model.insert(canonical, (ts, id.clone(), event.clone()));
        }
        history.push(event);
    }
    // What the versions alone decide: per network, the newest write, in
    // force if it is a block that has not expired.
    let now = now_ms();
    let expected: BTreeMap<String, Value> = model
        .iter()
        .filter(|(_, (_, _, e))| {
            e["body"]["action"] == "block"
                && e["body"]["expiresAt"].as_u64().is_none_or(|t| t > now)
        })
        .map(|(net, (_, _, e))| (net.to_string(), e.clone()))
        .collect();

    // The records, in a random interleaving: most one event each, keyed by
    // the spelling the publisher used; some bundles of events of several
    // networks; then replays of older records, copied byte for byte.
    rng.shuffle(&mut history);
    let mut records = Vec::new();
    let mut rest = history.as_slice();
    while !rest.is_empty() {
        let n = if rng.below(6) == 0 {
            (2 + rng.below(4)).min(rest.len())
        } else {
            1
        };
        let (now, later) = rest.split_at(n);
        rest = later;
        let key = format!("ip:{}", now[0]["body"]["ip"].as_str().unwrap());
        let payload = if n == 1 {
            now[0].to_string()
        } else {
            Value::from(now.to_vec()).to_string()
        };
        records.push(sign(&ops, key, payload));
    }
    let originals = records.len();
    replay_older(&mut rng, &mut records, 60);

    let [mut a, mut b, mut n3] = publish_through_restarts(&c, &ops, &records).await;
    eprintln!(
        "converge: {} records ({originals} originals), {} networks in force expected",
        records.len(),
        expected.len()
    );

    // Each node has caught up when its list is the model's, network for
    // network and version for version; then all three must hold the very
    // same entries.
    let want: Vec<(String, Value)> = expected
        .iter()
        .map(|(net, e)| (net.clone(), e["id"].clone()))
        .collect();
    let lists = caught_up([&mut a, &mut b, &mut n3], &want).await;
    for (net, entry) in &lists[0] {
        let e = &expected[net];
        assert_eq!(entry["reason"], e["body"]["reason"], "{net}: {entry}");
        assert_eq!(entry["version"]["ts"], e["ts"], "{net}: {entry}");
    }
    assert_eq!(lists[0], lists[1], "nodes a and b differ");
    assert_eq!(lists[0], lists[2], "nodes a and c differ");

    // Node d starts from scratch, and its events topic holds nothing (the
    // test broker has neither retention nor DeleteRecords: a topic of its
    // own that was never written stands for one whose records are gone).
    // It reads the state topic from the start; once ready, it holds the
    // same entries as the others.
    let empty = format!("{}-expired", c.topic);
    herald_tests::cluster::create_topics(&c.broker, &[empty.clone(), format!("{empty}.dlq")], 4)
        .await;
    c.settings["topics"] = json!({"events": empty});
    let mut d = c.start("d");
    d.wait_assigned(&c.broadcast_group("d"));
    let ready_by = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, v) = api::get(&mut d, "/readyz").await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < ready_by, "node d never became ready: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Ready means caught up with the state topic: no waiting after it.
    assert_eq!(
        entries(&mut d).await,
        lists[0],
        "node d differs from the others"
    );
}

/// Partitions of the shared group that `node` holds, both topics together.
async fn shared_partitions(node: &mut NodeProcess) -> u64 {
    let (status, v) = api::get(node, "/v1/status").await;
    assert_eq!(status, 200, "{v}");
    v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["mode"] == "shared")
        .map(|g| g["assigned"].as_u64().unwrap_or(0))
        .sum()
}

/// Run the `republish` fixture's chain (a block, republished hop by hop up
/// to `publish.maxHops`) on a cluster of `nodes` nodes, and count the
/// records it left on the state topic once it is over.
async fn chain_records(nodes: usize) -> i64 {
    const PARTITIONS: i32 = 4;
    let c = TestCluster::new(
        &format!("chain{nodes}"),
        PARTITIONS,
        &[Install::builtin("fixtures/republish")],
    )
    .await;
    let mut running: Vec<NodeProcess> = ["a", "b", "c"][..nodes]
        .iter()
        .map(|n| c.start(n))
        .collect();
    // The group has settled once every node holds partitions and together
    // they hold all of both topics: no rebalance will hand a record on.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut held = Vec::new();
        for node in &mut running {
            held.push(shared_partitions(node).await);
        }
        if held.iter().all(|&n| n > 0) && held.iter().sum::<u64>() == 2 * PARTITIONS as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the shared group never settled: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.publish(
        "ip:203.0.113.9",
        &ip_block("root", "203.0.113.9", "block", "x"),
    )
    .await;
    // The chain is over when the event past the hop limit is dead-lettered
    // (its derived events, all blocks, are on the state topic) and the
    // shared group has committed everything there is.
    c.dead_letter_where(&c.state_topic, |l| {
        l.header("herald-error").contains("publish.maxHops")
    })
    .await;
    let done = || {
        (0..PARTITIONS).all(|p| {
            [&c.topic, &c.state_topic].iter().all(|t| {
                let end = c.high_watermark(t, p);
                end == 0 || c.committed_on(&c.shared_group(), t, p) == Some(end)
            })
        })
    };
    wait_until(
        "the shared group committed the chain",
        Duration::from_secs(120),
        done,
    );
    c.read_all(&c.state_topic).len() as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publish_chain_makes_as_many_records_on_three_nodes_as_on_one() {
    let one = chain_records(1).await;
    let three = chain_records(3).await;
    eprintln!("publish chain: {one} records on one node, {three} on three");
    // The root's five descendants (hops 1 to 5) on one node.
    assert_eq!(one, 5);
    assert_eq!(three, one, "the chain grew with the number of nodes");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_node_ends_with_the_certificate_the_versions_decide() {
    let seed = now_ms() | 1;
    eprintln!("converge certificates: seed {seed}");
    let mut rng = Rng(seed);
    let mut c = TestCluster::new("converge-certs", 4, &[Install::builtin("certificate")]).await;
    let ops = NodeKey::load_or_create(&c.dir.path().join("ops.key"))
        .unwrap()
        .0;
    let (identity, recipient) = herald::trust::keys::new_sealing_identity();
    let identity_file = c.dir.path().join("cluster.age");
    std::fs::write(&identity_file, identity).unwrap();
    // A secret: herald refuses one that others may read.
    std::fs::set_permissions(
        &identity_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let recipient: age::x25519::Recipient = recipient.parse().unwrap();
    c.settings = json!({
        "trust": {"keys": {ops.id(): {"publicKey": public_key_text(&ops.public()), "kinds": ["*"]}}},
        "certificates": {"identityFile": identity_file},
    });

    // Four certificates for one domain, written in several spellings (so
    // keyed onto different partitions), 40 writes with versions, then
    // replays of older records copied byte for byte.
    let pairs = ["ec", "p384", "rsa", "ed25519"];
    let spellings = ["mail.example.com", "MAIL.example.com", "mail.example.com."];
    let start = now_ms() - 600_000;
    let mut model: Option<(u64, String, &str)> = None;
    let mut records = Vec::new();
    for step in 0..40u64 {
        let pair = pairs[rng.below(pairs.len())];
        let domain = spellings[rng.below(spellings.len())];
        let ts = start + step * 1_000 + (rng.below(3) as u64) * 500;
        let id = format!("cert{:03}-{step}", rng.below(1000));
        let key = herald::trust::keys::seal(
            std::slice::from_ref(&recipient),
            &herald_tests::cert_fixture(&format!("{pair}.key")),
        )
        .unwrap();
        let event = json!({"v": 1, "id": id, "kind": "tls-certificate", "origin": "ops", "ts": ts,
            "body": {"domains": [domain],
                     "certificatePem": herald_tests::cert_fixture(&format!("{pair}.crt")),
                     "privateKeyPem": key, "notAfter": 1}});
        if model.as_ref().is_none_or(|(t, i, _)| (ts, &id) > (*t, i)) {
            model = Some((ts, id.clone(), pair));
        }
        records.push(sign(&ops, format!("domain:{domain}"), event.to_string()));
    }
    rng.shuffle(&mut records);
    replay_older(&mut rng, &mut records, 15);
    let (want_ts, want_id, want_pair) = model.unwrap();
    let want_chain = herald_tests::cert_fixture(&format!("{want_pair}.crt"));

    let [mut a, mut b, mut n3] = publish_through_restarts(&c, &ops, &records).await;

    // Every node ends with the newest version's certificate, whatever the
    // order it saw them in; a replayed older one never wins back.
    let deadline = Instant::now() + Duration::from_secs(120);
    for node in [&mut a, &mut b, &mut n3] {
        loop {
            let (status, v) = api::get(node, "/v1/certificates/mail.example.com").await;
            if status == 200 && v["version"]["id"] == want_id.as_str() {
                assert_eq!(v["version"]["ts"], want_ts, "{}", node.node);
                assert_eq!(v["chainPem"], want_chain.as_str(), "{}", node.node);
                assert_eq!(
                    v["privateKeyPem"],
                    herald_tests::cert_fixture(&format!("{want_pair}.key")).as_str(),
                    "{}",
                    node.node
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} never reached the model ({want_pair}, {want_id}): {status} {}",
                node.node,
                v["version"]
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// What compaction keeps of `records`: the last of each key.
fn compacted(
    records: &[herald_tests::cluster::RawRecord],
) -> Vec<herald_tests::cluster::RawRecord> {
    let mut last: BTreeMap<(i32, Vec<u8>), herald_tests::cluster::RawRecord> = BTreeMap::new();
    for r in records {
        last.insert((r.partition, r.key.clone()), r.clone());
    }
    let mut kept: Vec<_> = last.into_values().collect();
    kept.sort_by_key(|r| (r.partition, r.offset));
    kept
}

/// The version (ts, id) of a record of one event, if it is one.
fn version_of(value: Option<&[u8]>) -> Option<(u64, String)> {
    let v: Value = serde_json::from_slice(value?).ok()?;
    Some((v["ts"].as_u64()?, v["id"].as_str()?.to_string()))
}

#[tokio::test(flavor = "multi_thread")]
async fn what_compaction_keeps_of_the_state_topic_is_still_the_newest() {
    let (mut rng, mut c, ops) = trusting_cluster("compaction").await;
    // 120 single-event writes in random spellings, versions rising.
    let nets = networks();
    let start = now_ms() - 600_000;
    let mut records = Vec::new();
    // Per network, the newest write's id if it is a block.
    let mut model: BTreeMap<String, Option<String>> = BTreeMap::new();
    for step in 0..120u64 {
        let (canonical, spellings) = &nets[rng.below(nets.len())];
        let ip = spellings[rng.below(spellings.len())].clone();
        let action = if rng.below(5) < 3 { "block" } else { "unblock" };
        model.insert(
            canonical.to_string(),
            (action == "block").then(|| format!("k{step:03}")),
        );
        let event = json!({"v": 1, "id": format!("k{step:03}"), "kind": "ip-block", "origin": "ops",
            "ts": start + step * 1_000, "body": {"ip": ip, "action": action, "reason": format!("step {step}")}});
        records.push(sign(&ops, format!("ip:{ip}"), event.to_string()));
    }
    // Then, for keys already written, what would win compaction over the
    // newest: older records of the key copied again, and junk.
    let mut bad = 0;
    for _ in 0..30 {
        let older = records[rng.below(records.len())].clone();
        records.push(older);
        bad += 1;
    }
    for _ in 0..5 {
        let mut junk = records[rng.below(records.len())].clone();
        junk.payload = "not an event".into();
        records.push(junk);
        bad += 1;
    }
    let published = records.len();
    let [mut a, mut b, mut n3] = publish_through_restarts(&c, &ops, &records).await;

    // The nodes put the newest record of each key back last.
    let newest_is_last = |all: &[herald_tests::cluster::RawRecord]| {
        let mut newest: BTreeMap<Vec<u8>, (u64, String)> = BTreeMap::new();
        for r in all {
            if let Some(v) = version_of(r.value.as_deref()) {
                let n = newest.entry(r.key.clone()).or_insert(v.clone());
                *n = (*n).clone().max(v);
            }
        }
        compacted(all)
            .iter()
            .all(|r| version_of(r.value.as_deref()).as_ref() == newest.get(&r.key))
    };
    let mut all = Vec::new();
    wait_until(
        "the newest record of every key is last again",
        Duration::from_secs(120),
        || {
            all = c.read_records(&c.state_topic);
            newest_is_last(&all)
        },
    );
    let restored = all.len() - published;
    eprintln!(
        "compaction: {bad} bad records last on their keys, {restored} records put back by 3 nodes"
    );
    assert!(restored <= 3 * bad, "{restored} put back for {bad}");

    // A node that finds only what compaction keeps (a topic written with
    // it) and nothing on its events topic holds what the others hold.
    let kept = compacted(&all);
    let state = format!("{}-compacted", c.state_topic);
    let empty = format!("{}-expired", c.topic);
    let topics = [
        state.clone(),
        format!("{state}.dlq"),
        empty.clone(),
        format!("{empty}.dlq"),
    ];
    herald_tests::cluster::create_topics(&c.broker, &topics, 4).await;
    for r in &kept {
        let headers: Vec<(&str, &[u8])> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        c.publish_record_to(
            &state,
            std::str::from_utf8(&r.key).unwrap(),
            r.value.as_deref().unwrap_or_default(),
            &headers,
        )
        .await;
    }
    let want: Vec<(String, Value)> = model
        .into_iter()
        .filter_map(|(net, id)| Some((net, Value::from(id?))))
        .collect();
    let lists = caught_up([&mut a, &mut b, &mut n3], &want).await;
    assert_eq!(lists[0], lists[1], "nodes a and b differ");
    assert_eq!(lists[0], lists[2], "nodes a and c differ");
    c.settings["topics"] = json!({"events": empty, "state": state});
    let mut d = c.start("d");
    d.wait_assigned(&c.broadcast_group("d"));
    let ready_by = Instant::now() + Duration::from_secs(120);
    while api::get(&mut d, "/readyz").await.0 != 200 {
        assert!(Instant::now() < ready_by, "node d never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        entries(&mut d).await,
        lists[0],
        "a node that read the compacted topic differs"
    );
}
