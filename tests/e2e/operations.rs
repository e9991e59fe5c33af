//! What an operator relies on: readiness that follows the broker, start-up
//! that fails fast on missing topics, the README's API commands working as
//! written, and a demo that prints for people and stops quietly.

use std::process::{Command, Stdio};
use std::time::Duration;

use herald_tests::cluster::{
    Install, NodeProcess, OwnBroker, TOKEN, TestCluster, free_port, ip_block, unique, wait_until,
};
use serde_json::json;

const LONG: Duration = Duration::from_secs(60);

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn readyz(node: &mut NodeProcess) -> (u16, serde_json::Value) {
    let r = http()
        .get(format!("{}/readyz", node.api()))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_the_broker_away_and_back() {
    let mut broker = OwnBroker::start(free_port());
    let c = TestCluster::on_broker(
        broker.address(),
        "ready",
        1,
        &[Install::builtin("blocking")],
    )
    .await;
    let mut node = c.start("a");
    node.wait_assigned(&c.broadcast_group("a"));
    let mut ready = (0, json!(null));
    for _ in 0..100 {
        ready = readyz(&mut node).await;
        if ready.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready.0, 200, "{}", ready.1);
    assert_eq!(ready.1["ready"], true);

    // The broker goes away: after the session timeout (6 s here) the node
    // is not ready any more, and says why.
    broker.kill();
    let gone = std::time::Instant::now();
    let mut down = (0, json!(null));
    while gone.elapsed() < LONG {
        down = readyz(&mut node).await;
        if down.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = gone.elapsed();
    assert_eq!(down.0, 503, "{}", down.1);
    assert_eq!(down.1["groups"][0]["brokerReachable"], false, "{}", down.1);
    assert!(
        took >= Duration::from_secs(5),
        "503 after only {took:?}: before the session timeout"
    );
    eprintln!("readiness: 503 {took:?} after the broker went away");

    // It comes back (empty: a memory broker), the node rejoins, and is
    // ready again.
    let broker = OwnBroker::start(broker.port);
    herald_tests::cluster::create_topics(
        &broker.address(),
        &[c.topic.clone(), format!("{}.dlq", c.topic)],
        1,
    )
    .await;
    let back = std::time::Instant::now();
    let mut up = (0, json!(null));
    while back.elapsed() < LONG {
        up = readyz(&mut node).await;
        if up.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(up.0, 200, "{}", up.1);
    eprintln!(
        "readiness: 200 again {:?} after the broker came back",
        back.elapsed()
    );
    assert!(node.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_topic_stops_start_up_naming_it_and_the_setting() {
    let mut c = TestCluster::new("topics", 1, &[Install::builtin("blocking")]).await;
    let absent = unique("absent");
    c.settings = json!({"topics": {"events": absent}});
    let mut run = Command::new(herald_tests::herald_bin())
        .args(["run", "--config"])
        .arg(c.config("a"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while run.try_wait().unwrap().is_none() && started.elapsed() < LONG {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Still running means it did not refuse: end it, and fail below.
    let _ = run.kill();
    let out = run.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&absent) && err.contains("topics.create"),
        "{err}"
    );

    // With `topics.create`, the node creates what is missing and runs.
    c.settings =
        json!({"topics": {"events": absent, "create": {"partitions": 2, "replicationFactor": 1}}});
    let mut node = c.start("b");
    node.wait_for_log("topic created", LONG);
    node.wait_assigned(&c.broadcast_group("b"));
    assert!(node.terminate().success());
}

/// The README's API section, run as written against a real node: only the
/// token file and the address are the node's own.
#[tokio::test(flavor = "multi_thread")]
async fn the_readmes_curl_commands_work_as_written() {
    let readme = std::fs::read_to_string(herald_tests::root().join("README.md")).unwrap();
    let section = &readme[readme.find("### The local API").expect("API section")..];
    let start = section.find("```sh\n").unwrap() + 6;
    let block = &section[start..start + section[start..].find("```").unwrap()];
    assert!(block.contains("curl"), "{block}");

    let mut c = TestCluster::new(
        "readme",
        1,
        &[
            Install::builtin("blocking"),
            Install::builtin("certificate"),
        ],
    )
    .await;
    // The README reads the generated token: no token in this node's config.
    c.settings = json!({"api": {"token": null}});
    // Its Stalwart line needs Stalwart's topic.
    c.enable_stalwart().await;
    let mut node = c.start("a");
    node.wait_assigned(&c.broadcast_group("a"));
    // Ready (the state topic read to its end) before the README's lines run:
    // its `curl -f $A/readyz` asks for 200.
    let ready_by = std::time::Instant::now() + LONG;
    while herald_tests::api::get(&mut node, "/readyz").await.0 != 200 {
        assert!(
            std::time::Instant::now() < ready_by,
            "the node never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let api = node.api();
    // The certificate the README asks for.
    c.publish(
        "domain:mail.example.com",
        &herald_tests::ec_certificate("cert", "ec.key"),
    )
    .await;
    c.publish("k", &ip_block("seen", "203.0.113.7", "block", "x"))
        .await;
    wait_until("the certificate is installed", LONG, || {
        node.state.join("certs/mail.example.com").exists()
    });
    wait_until("the block is applied", LONG, || {
        node.blocklist().contains("203.0.113.7")
    });

    let script = block
        .replace("/var/lib/herald", &node.state.display().to_string())
        .replace("http://127.0.0.1:8470", &api);
    // Every curl fails on an HTTP error; a stream (`-N`) is cut after a
    // second, which is all it needs to show it answers.
    let wrapper = r#"set -e
curl() {
    case " $* " in
        *" -N "*) command curl -sS --fail-with-body -m 1 "$@" || [ $? -eq 28 ] ;;
        *) command curl -sS --fail-with-body -m 10 "$@" ;;
    esac
    echo
}
"#;
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("{wrapper}{script}"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "README commands failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("\"blocked\":true"), "{stdout}");
    assert!(stdout.contains("herald_events_handled_total"), "{stdout}");
    let _ = TOKEN;
    assert!(node.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_prints_times_and_stops_without_errors() {
    let mut demo = Command::new(herald_tests::herald_bin())
        .args(["demo", "--handlers"])
        .arg(herald_tests::handlers_dir())
        .env("HERALD_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = demo.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + LONG;
    while !seen
        .iter()
        .any(|l: &String| l.contains("Ctrl-C stops the node"))
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        seen.push(rx.recv_timeout(left).expect("the demo's closing line"));
    }
    let pid = demo.id().to_string();
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    let out = demo.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = seen.join("\n");
    assert!(
        !text.contains("Some(") && !text.contains("expires None"),
        "{text}"
    );
    assert!(text.contains("expires 20"), "an RFC 3339 time: {text}");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains("ERROR"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn herald_status_shows_what_an_operator_needs_first() {
    let mut c = TestCluster::new(
        "status",
        2,
        &[
            Install::builtin("blocking"),
            Install::builtin("certificate"),
        ],
    )
    .await;
    // `herald status` finds the node at its configured address.
    c.settings = json!({"api": {"listen": format!("127.0.0.1:{}", free_port())}});
    let mut node = c.start("a");
    let group = c.broadcast_group("a");
    node.wait_assigned(&group);
    c.publish(
        "domain:mail.example.com",
        &herald_tests::ec_certificate("cert", "ec.key"),
    )
    .await;
    c.publish("k", &ip_block("ok", "203.0.113.7", "block", "x"))
        .await;
    c.publish("k", &ip_block("bad", "not-an-ip", "block", "x"))
        .await;
    wait_until("the events are handled", LONG, || {
        node.blocklist().contains("203.0.113.7")
            && node.state.join("certs/mail.example.com").exists()
    });
    let status = |json: bool| {
        let mut cmd = Command::new(herald_tests::herald_bin());
        cmd.args(["status", "--config"]).arg(c.config("a"));
        if json {
            cmd.arg("--json");
        }
        cmd.output().unwrap()
    };
    // The dead letter is counted once it is written.
    let mut out = status(true);
    for _ in 0..100 {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let lag_known = v["groups"][0]["partitions"]
            .as_array()
            .is_some_and(|p| !p.is_empty());
        if v["deadLettersLastHour"] == 1 && v["ready"] == true && lag_known {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        out = status(true);
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ready"], true, "{v}");
    assert_eq!(v["deadLettersLastHour"], 1, "{v}");
    assert_eq!(v["blocklist"]["entries"], 1, "{v}");
    assert_eq!(v["groups"][0]["group"], group, "{v}");
    assert_eq!(v["certificates"][0]["domain"], "mail.example.com", "{v}");
    assert!(
        v["certificates"][0]["daysLeft"].as_i64().unwrap() > 0,
        "{v}"
    );

    let human = status(false);
    assert!(human.status.success());
    let text = String::from_utf8_lossy(&human.stdout);
    for expect in [
        "node a: READY",
        &format!("broadcast {group}  joined"),
        "blocking",
        "dead letters in the last hour: 1",
        "blocklist: 1 entries",
        "mail.example.com",
        " days)",
    ] {
        assert!(text.contains(expect), "no `{expect}` in:\n{text}");
    }
    assert!(
        text.contains("/0  lag ") || text.contains("/1  lag "),
        "{text}"
    );
    assert!(node.terminate().success());
}

/// `herald run` under a stand-in for systemd: the notification socket gets
/// READY=1 once the node is ready, WATCHDOG=1 while it runs, STOPPING=1 at
/// SIGTERM.
#[tokio::test(flavor = "multi_thread")]
async fn herald_tells_systemd_when_it_is_ready_alive_and_stopping() {
    let mut c = TestCluster::new("notify", 1, &[Install::builtin("blocking")]).await;
    let port = free_port();
    c.settings = json!({"api": {"listen": format!("127.0.0.1:{port}")}});
    let socket_path = c.dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(LONG)).unwrap();
    // As systemd starts it: WATCHDOG_PID is the service's own pid.
    let mut node = Command::new("sh")
        .arg("-c")
        .arg(r#"WATCHDOG_PID=$$ exec "$0" run --config "$1""#)
        .arg(herald_tests::herald_bin())
        .arg(c.config("a"))
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !(seen.iter().any(|m: &String| m.contains("READY=1"))
        && seen.iter().any(|m| m.contains("WATCHDOG=1")))
    {
        let n = socket.recv(&mut buf).expect("a notification");
        seen.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    // Ready means ready: the API says so too.
    let ready = http()
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    Command::new("kill")
        .args(["-TERM", &node.id().to_string()])
        .status()
        .unwrap();
    loop {
        let n = socket.recv(&mut buf).expect("STOPPING=1");
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            break;
        }
    }
    assert!(node.wait().unwrap().success());
}
