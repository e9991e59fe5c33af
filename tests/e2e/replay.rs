//! One handler paused, resumed and replayed while the others go on, and a
//! new handler that starts from the history: real node, real broker, the
//! commands as the README writes them.

use std::process::Command;
use std::time::{Duration, Instant};

use herald_tests::api::get;
use herald_tests::cluster::{Install, NodeProcess, TestCluster, free_port, ip_block, wait_until};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(60);

/// `herald handler <args> --config <config>`: success and output.
fn herald(args: &[&str], config: &std::path::Path) -> (bool, String) {
    let out = Command::new(herald_tests::herald_bin())
        .arg("handler")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The README's three commands (pause, resume, replay), as written there.
fn readme_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(herald_tests::root().join("README.md")).unwrap();
    let section = &readme[readme
        .find("### Pausing, replaying and starting one handler")
        .expect("the README's section")..];
    let block = &section[section.find("```sh\n").unwrap() + 6..];
    block[..block.find("```").unwrap()]
        .lines()
        .map(str::to_string)
        .collect()
}

/// Run one of the README's lines for `config`.
fn run_readme(line: &str, config: &std::path::Path) -> (bool, String) {
    let line = line.replace("/etc/herald/herald.json", &config.display().to_string());
    let args: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&args[..2], ["herald", "handler"], "{line}");
    let config_at = args.iter().position(|a| *a == "--config").unwrap();
    herald(&args[2..config_at], config)
}

/// One handler's entry of `/v1/status` (null while it is not loaded).
async fn handler(node: &mut NodeProcess, name: &str) -> Value {
    let (_, s) = get(node, "/v1/status").await;
    s["handlers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == name)
        .cloned()
        .unwrap_or_default()
}

async fn handler_until(
    node: &mut NodeProcess,
    name: &str,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + LONG;
    loop {
        let h = handler(node, name).await;
        if cond(&h) {
            return h;
        }
        assert!(Instant::now() < deadline, "timed out: {what}; last: {h}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn handled(h: &Value) -> u64 {
    h["counters"]["handled"].as_u64().unwrap_or(0)
}

fn state_change(id: &str) -> Value {
    json!({"v": 1, "id": id, "kind": "state-change", "origin": "test", "ts": 1,
        "body": {"accountId": 5, "changeId": 1, "types": ["Email"]}})
}

#[tokio::test(flavor = "multi_thread")]
async fn one_handler_pauses_resumes_and_replays_while_the_others_go_on() {
    let mut c = TestCluster::new(
        "replay",
        2,
        &[
            Install::builtin("blocking"),
            Install::builtin("mailbox"),
            Install::builtin("push").in_mode("shared"),
        ],
    )
    .await;
    // The commands find the node's API in its config: a port of its own.
    c.settings = json!({"api": {"listen": format!("127.0.0.1:{}", free_port())}});
    let mut a = c.start("a");
    let config = c.config("a");
    a.wait_assigned(&c.broadcast_group("a"));
    c.publish("k1", &ip_block("b1", "203.0.113.1", "block", "x"))
        .await;
    wait_until("the first block", LONG, || {
        a.blocklist().contains("203.0.113.1")
    });

    let readme = readme_commands();
    assert_eq!(readme.len(), 3, "{readme:?}");
    let (ok, out) = run_readme(&readme[0], &config);
    assert!(ok, "{out}");
    assert!(out.contains("paused"), "{out}");
    // Paused: the block waits (counted as the handler's lag, from its own
    // group's offsets), and the mailbox handler goes on.
    let mailbox_before = handled(&handler(&mut a, "mailbox").await);
    c.publish("k2", &ip_block("b2", "203.0.113.2", "block", "x"))
        .await;
    c.publish("account:5", &state_change("s1")).await;
    handler_until(&mut a, "mailbox", "the mailbox handler goes on", |h| {
        handled(h) > mailbox_before
    })
    .await;
    let paused = handler_until(&mut a, "blocking", "the paused handler's lag", |h| {
        h["paused"] == true && h["lag"].as_i64().unwrap_or(0) >= 1
    })
    .await;
    assert!(
        paused["ownGroup"]
            .as_str()
            .unwrap()
            .ends_with(".handler.blocking"),
        "{paused}"
    );
    assert!(!a.blocklist().contains("203.0.113.2"));
    let (ok, out) = herald(&["pause", "blocking"], &config);
    assert!(ok && out.contains("already paused"), "{out}");

    // Resumed: it takes up where it stopped.
    let (ok, out) = run_readme(&readme[1], &config);
    assert!(ok && out.contains("resumed"), "{out}");
    wait_until("the block after resume", LONG, || {
        a.blocklist().contains("203.0.113.2")
    });
    let resumed = handler_until(&mut a, "blocking", "caught up", |h| {
        h["paused"] == false && h["lag"] == 0
    })
    .await;

    // Replayed from a time before any of them: both blocks again, to the
    // same blocklist.
    let (ok, out) = run_readme(&readme[2], &config);
    assert!(ok && out.contains("handles again"), "{out}");
    handler_until(&mut a, "blocking", "the history handled again", |h| {
        handled(h) >= handled(&resumed) + 2
    })
    .await;
    let list = a.blocklist();
    assert!(
        list.contains("203.0.113.1") && list.contains("203.0.113.2"),
        "{list:?}"
    );

    // A shared handler belongs to the cluster's group: refused, with why.
    let (ok, out) = herald(&["pause", "push"], &config);
    assert!(!ok && out.contains("shared handler"), "{out}");
    let (ok, out) = herald(&["replay", "blocking", "--from", "yesterday"], &config);
    assert!(!ok && out.contains("`yesterday` is not"), "{out}");

    // A new handler whose manifest says `start = "earliest"` handles the
    // history at once; without it, it would start where the group is.
    // (At the top: below `[settings]` it would be a setting.)
    let manifest = "start = \"earliest\"\n".to_string()
        + &std::fs::read_to_string(herald_tests::handler("blocking").with_extension("toml"))
            .unwrap();
    let dir = c.handlers_dir();
    std::fs::write(dir.join("late.toml"), manifest).unwrap();
    std::fs::copy(herald_tests::handler("blocking"), dir.join("late.wasm")).unwrap();
    handler_until(&mut a, "late", "the new handler handles the history", |h| {
        handled(h) >= 2
    })
    .await;

    // The pause survives a restart: the handler stays in its own group.
    let (ok, out) = herald(&["pause", "blocking"], &config);
    assert!(ok, "{out}");
    assert!(a.terminate().success());
    let mut a = c.start("a");
    let h = handler_until(&mut a, "blocking", "still paused after a restart", |h| {
        h["paused"] == true
    })
    .await;
    assert_eq!(handled(&h), 0, "{h}");
    assert!(a.terminate().success());
}
