//! Hostile input, second round: what a security review found, each on a
//! real node. IPv6 networks that carry IPv4 (an IPv4-mapped /95 would
//! answer "blocked" for every IPv4 client of a dual-stack socket), state
//! files and policies that changed under the node, handler folders and
//! compile caches that others may write, and librdkafka properties that
//! run commands.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use herald_tests::api;
use herald_tests::cluster::{Install, TestCluster, ip_block, wait_until};
use serde_json::json;

const LONG: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn an_ipv6_network_is_judged_by_the_ipv4_it_carries() {
    let c = TestCluster::new("embedded", 1, &[Install::builtin("blocking")]).await;
    let mut node = c.start("a");
    node.wait_assigned(&c.broadcast_group("a"));
    // Each covers loopback, or all of IPv4, through an IPv6 form of IPv4.
    let hostile = [
        "::fffe:0:0/95",
        "64:ff9b::/96",
        "2002:7f00::/32",
        "2001::/32",
    ];
    for (i, net) in hostile.iter().enumerate() {
        c.publish(
            &format!("ip:{net}"),
            &ip_block(&format!("h{i}"), net, "block", "x"),
        )
        .await;
    }
    // A NAT64 form of a public address is an ordinary block.
    c.publish(
        "ip:64:ff9b::cb00:7107",
        &ip_block("ok", "64:ff9b::cb00:7107", "block", "ok"),
    )
    .await;
    wait_until("the ordinary block is applied", LONG, || {
        node.blocklist().contains("64:ff9b::cb00:7107")
    });
    let letters = c.dead_letters(hostile.len()).await;
    for (net, letter) in hostile.iter().zip(&letters) {
        let error = letter.header("herald-error");
        assert!(
            error.contains(&format!("refusing to block {net}")) && error.contains(" addresses"),
            "{net}: {error}"
        );
    }
    for ip in ["::ffff:127.0.0.1", "::ffff:8.8.8.8", "127.0.0.1"] {
        let (status, v) = api::get(&mut node, &format!("/v1/blocklist/{ip}")).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["blocked"], false, "{ip}: {v}");
    }
    let (_, v) = api::get(&mut node, "/v1/blocklist").await;
    assert_eq!(v["entries"].as_array().unwrap().len(), 1, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn state_on_disk_is_checked_against_the_policy_at_start() {
    let mut c = TestCluster::new("disk", 1, &[Install::builtin("blocking")]).await;
    // What a hand edit, a damaged disk, or an entry that today's policy
    // (a /24 at least) refuses, would leave in the journal.
    c.settings = json!({"blocklist": {"minPrefixV4": 24}});
    let state = c.dir.path().join("a");
    std::fs::create_dir_all(&state).unwrap();
    let lines: String = ["0.0.0.0/0", "::fffe:0:0/95", "198.18.0.0/16", "203.0.113.7"]
        .iter()
        .map(|n| format!("{{\"op\":\"block\",\"network\":\"{n}\",\"reason\":\"on disk\"}}\n"))
        .collect();
    std::fs::write(state.join("blocklist.journal"), lines).unwrap();
    let mut node = c.start("a");
    node.wait_assigned(&c.broadcast_group("a"));
    wait_until("the checked list is exported", LONG, || {
        node.blocklist().contains("203.0.113.7")
    });
    assert_eq!(
        node.blocklist(),
        ["203.0.113.7".to_string()].into(),
        "only what the policy allows reaches the firewall's list"
    );
    let (_, v) = api::get(&mut node, "/v1/blocklist").await;
    let held: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["network"].as_str().unwrap())
        .collect();
    assert_eq!(held, ["203.0.113.7"], "{v}");
    let log = node.log_text();
    assert_eq!(
        log.matches("dropping a blocklist entry from disk that the policy refuses")
            .count(),
        3,
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handler_folder_or_compile_cache_others_may_write_is_refused() {
    let c = TestCluster::new("perms", 1, &[Install::builtin("blocking")]).await;
    let folder = c.handlers_dir().to_path_buf();
    let mode = |path: &std::path::Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    mode(&folder, 0o777);
    let mut node = c.start("a");
    node.wait_for_log("may be written by any user", LONG);
    assert!(!node.wait_exit(LONG).success());
    assert!(
        node.log_text().contains("the handler folder"),
        "{}",
        node.log_text()
    );
    mode(&folder, 0o755);

    // A run that compiles and caches, then a cache file made writable by
    // everyone: the next start compiles again rather than load it.
    let mut node = c.start("a");
    node.wait_assigned(&c.broadcast_group("a"));
    assert!(node.terminate().success());
    let cache = c.dir.path().join("a/components");
    let cached: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    mode(&cached[0], 0o666);
    let mut node = c.start("a");
    node.wait_for_log(
        "not loading a compiled component others may have written",
        LONG,
    );
    node.wait_assigned(&c.broadcast_group("a"));
    c.publish("k", &ip_block("p", "203.0.113.9", "block", "x"))
        .await;
    wait_until("the handler still works", LONG, || {
        node.blocklist().contains("203.0.113.9")
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_properties_that_run_code_need_an_acknowledgement() {
    let mut c = TestCluster::new("unsafe", 1, &[Install::builtin("blocking")]).await;
    c.settings = json!({"kafka": {"sasl.kerberos.kinit.cmd": "touch /tmp/herald-pwned"}});
    let mut node = c.start("a");
    node.wait_for_log("kafkaUnsafe", LONG);
    assert!(!node.wait_exit(LONG).success());
    assert!(
        node.log_text()
            .contains("field `kafka.sasl.kerberos.kinit.cmd`"),
        "{}",
        node.log_text()
    );
}

/// Open files up to the hard limit in this process: the flood below needs
/// thousands of sockets.
fn raise_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is valid for both calls.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_api_connections_does_not_stop_the_event_path() {
    use std::io::Read;
    raise_file_limit();
    let mut c = TestCluster::new("flood", 1, &[Install::builtin("blocking")]).await;
    c.settings = json!({"api": {"maxConnections": 300, "maxConnectionsPerClient": 200,
                                "maxStreams": 2, "headerTimeout": "15s"}});
    let mut node = c.start("a");
    node.wait_assigned(&c.broadcast_group("a"));
    let addr = node.api().trim_start_matches("http://").to_string();

    // Two streams are the most; a third is refused at once.
    let _one = api::Stream::open(&mut node, "").await;
    let _two = api::Stream::open(&mut node, "").await;
    let (status, v) = api::get(&mut node, "/v1/stream").await;
    assert_eq!(status, 503, "{v}");
    assert!(v.to_string().contains("api.maxStreams"), "{v}");

    // 3 000 connections that never send a request, from one client.
    let before = node.rss_kib();
    let idle: Vec<std::net::TcpStream> = (0..3000)
        .filter_map(|_| std::net::TcpStream::connect(&addr).ok())
        .collect();
    eprintln!("flood: {} connections opened", idle.len());
    // Past the client's bound, a connection is answered at once and closed.
    let mut late = std::net::TcpStream::connect(&addr).unwrap();
    late.set_read_timeout(Some(LONG)).unwrap();
    let mut answer = String::new();
    late.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("api.maxConnectionsPerClient"), "{answer}");

    // Meanwhile the event path goes on: blocks applied and committed.
    let group = c.broadcast_group("a");
    for i in 0..50 {
        let ip = format!("198.18.3.{i}");
        c.publish(
            &format!("ip:{ip}"),
            &ip_block(&format!("f{i}"), &ip, "block", "flood"),
        )
        .await;
    }
    wait_until("every block of the flood applied", LONG, || {
        node.blocklist().len() == 50
    });
    wait_until("every block committed", LONG, || {
        c.committed(&group, 0) == Some(50)
    });
    let grown = node.rss_kib().saturating_sub(before);
    eprintln!("flood: the node's RSS grew by {grown} KiB");
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");

    // The idle connections are closed at the header timeout, and the API
    // answers again while they are still held open by the client.
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let answered = reqwest::Client::new()
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if answered {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/healthz never answered again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(idle);
}

#[tokio::test(flavor = "multi_thread")]
async fn another_local_user_holding_connections_takes_nobody_elses_slots() {
    let mut c = TestCluster::new("peruser", 1, &[Install::builtin("blocking")]).await;
    c.settings = json!({"api": {"maxConnectionsPerClient": 20, "headerTimeout": "60s"}});
    let mut node = c.start("a");
    node.wait_assigned(&c.broadcast_group("a"));
    let addr = node.api().trim_start_matches("http://").to_string();
    let (host, port) = addr.rsplit_once(':').unwrap();
    // User 65534 (nobody) opens 40 connections over TCP loopback, all from
    // 127.0.0.1 like every local user, and holds them.
    let script = format!(
        "for i in $(seq 40); do exec {{fd}}<>/dev/tcp/{host}/{port}; done; echo held; exec sleep 600"
    );
    let mut other = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "bash",
            "-c",
            &script,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(other.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "held");
    // Its own bound stopped it at 20...
    let metrics = api::metrics(&mut node).await;
    assert!(
        metrics.contains(
            r#"herald_api_connections_refused_total{why="api.maxConnectionsPerClient"} 20"#
        ),
        "{metrics}"
    );
    // ...and this user (the mail server, say) is not refused: its slots are
    // its own. (By address, the other user's 20 would have been its too, and
    // none would be left.) Half of them: the metrics request above may still
    // hold one of this user's slots for a moment after it is answered.
    let held: Vec<std::net::TcpStream> = (0..10)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    let (status, v) = api::get(&mut node, "/v1/blocklist").await;
    assert_eq!(status, 200, "{v}");
    drop(held);
    let _ = other.kill();
    let _ = other.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_junk_is_dead_lettered_in_batches() {
    const JUNK: usize = 20_000;
    let c = TestCluster::new("junk", 1, &[Install::builtin("blocking")]).await;
    let mut node = c.start("a");
    let group = c.broadcast_group("a");
    node.wait_assigned(&group);
    c.publish_burst(&c.topic, b"\x01", JUNK).await;
    let started = std::time::Instant::now();
    // The guard is generous; the figure is printed, not asserted.
    wait_until(
        "every junk record committed",
        Duration::from_secs(600),
        || c.committed(&group, 0) == Some(JUNK as i64),
    );
    eprintln!(
        "junk: {JUNK} one-byte records lettered and committed {:.1} s after the burst was on the topic",
        started.elapsed().as_secs_f64()
    );
    // One letter each, no more, no fewer, and the partition moves on.
    // (Counted by reading them: the test broker's high watermark of a
    // topic written by concurrent batches can lag its last offset.)
    let letters = c.read_all(&format!("{}.dlq", c.topic)).len();
    assert_eq!(letters, JUNK);
    c.publish("k", &ip_block("after", "203.0.113.77", "block", "ok"))
        .await;
    wait_until("the block after the junk is applied", LONG, || {
        node.blocklist().contains("203.0.113.77")
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn junk_is_lettered_once_per_cluster_not_once_per_node() {
    const JUNK: usize = 2_000;
    // Broadcast and shared handlers: every node's broadcast group and the
    // shared group read the same junk.
    let mut c = TestCluster::new(
        "junk-cluster",
        1,
        &[Install::builtin("blocking"), Install::builtin("push")],
    )
    .await;
    let stalwart = c.enable_stalwart().await;
    let mut nodes: Vec<_> = ["a", "b", "c"].iter().map(|n| c.start(n)).collect();
    let mut groups: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| c.broadcast_group(n))
        .collect();
    for (node, group) in nodes.iter_mut().zip(&groups) {
        node.wait_assigned_all(&[group.clone(), c.shared_group()]);
    }
    groups.push(c.shared_group());
    c.publish_burst(&c.topic, b"\x01", JUNK).await;
    // And on Stalwart's topic, whose events only broadcast handlers get.
    // (A lone 0x01 would be a valid empty batch there: 0xff starts a
    // number that never ends.)
    c.publish_burst(&stalwart, b"\xff", JUNK).await;
    let done = || {
        groups.iter().all(|g| {
            c.committed(g, 0) == Some(JUNK as i64)
                && c.committed_on(g, &stalwart, 0) == Some(JUNK as i64)
        })
    };
    wait_until(
        "every group committed the junk",
        Duration::from_secs(600),
        done,
    );
    // Before: one letter per group and record, 4 per record here (3 on
    // Stalwart's topic).
    let letters = c.read_all(&format!("{}.dlq", c.topic)).len();
    let stalwart_letters = c.read_all(&format!("{stalwart}.dlq")).len();
    eprintln!(
        "junk: {JUNK} records on 3 nodes made {letters} letters, {stalwart_letters} on Stalwart's topic"
    );
    assert_eq!((letters, stalwart_letters), (JUNK, JUNK));
    for node in &mut nodes {
        node.terminate();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scoped_token_may_do_only_what_its_scopes_say() {
    let mut c = TestCluster::new("scopes", 1, &[Install::builtin("blocking")]).await;
    c.settings = json!({"api": {"tokens": [
        {"name": "mail", "token": "mail-token", "scopes": ["read", "publish"],
         "publishKinds": ["state-change"]},
        {"name": "acme", "token": "acme-token", "scopes": ["certificates"]}]}});
    let mut node = c.start("a");
    node.wait_assigned(&c.broadcast_group("a"));
    let base = node.api();
    let client = reqwest::Client::new();
    let call = |method: &str, path: &str, token: &str, body: Option<serde_json::Value>| {
        let mut r = match method {
            "GET" => client.get(format!("{base}{path}")),
            _ => client.post(format!("{base}{path}")),
        }
        .bearer_auth(token);
        if let Some(body) = body {
            r = r.body(body.to_string());
        }
        async move {
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }
    };
    let change = json!({"kind": "state-change",
        "body": {"accountId": 5, "changeId": 1, "types": ["Email"]}});
    let block = json!({"kind": "ip-block",
        "body": {"ip": "203.0.113.5", "action": "block", "reason": "x"}});
    // The mail server's token: read and publish state changes, nothing else.
    assert_eq!(
        call("GET", "/v1/blocklist", "mail-token", None).await.0,
        200
    );
    assert_eq!(
        call("POST", "/v1/events", "mail-token", Some(change.clone()))
            .await
            .0,
        202
    );
    let (status, text) = call("POST", "/v1/events", "mail-token", Some(block.clone())).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("may not publish `ip-block`"), "{text}");
    let (status, text) = call(
        "GET",
        "/v1/certificates/mail.example.com",
        "mail-token",
        None,
    )
    .await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("`certificates` scope"), "{text}");
    assert_eq!(
        call("POST", "/v1/handlers/reload", "mail-token", None)
            .await
            .0,
        403
    );
    // The ACME host's: certificates only.
    assert_eq!(
        call(
            "GET",
            "/v1/certificates/mail.example.com",
            "acme-token",
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        call("GET", "/v1/blocklist", "acme-token", None).await.0,
        403
    );
    // The node's own token may do everything; an unknown one nothing.
    let own = herald_tests::cluster::TOKEN;
    assert_eq!(call("POST", "/v1/events", own, Some(block)).await.0, 202);
    assert_eq!(call("GET", "/v1/blocklist", "guess", None).await.0, 401);
}
