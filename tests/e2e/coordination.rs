//! Is coordination working? Round-trip probes between real nodes on the
//! real broker: every node answers every probe, the asker times the round
//! trip per topic and node, and a node that stops answering is named.

use std::process::Command;
use std::time::{Duration, Instant};

use herald_tests::api::get;
use herald_tests::cluster::{Install, NodeProcess, TestCluster, free_port};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(60);

/// Poll `node`'s `/v1/status` until `cond` holds of its `coordination`.
async fn coordination_until(
    node: &mut NodeProcess,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + LONG;
    loop {
        let (code, status) = get(node, "/v1/status").await;
        assert_eq!(code, 200, "{status}");
        let c = status["coordination"].clone();
        if cond(&c) {
            return c;
        }
        assert!(Instant::now() < deadline, "timed out: {what}; last: {c:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The nodes that answered this node's probes on `topic`.
fn answered(c: &Value, topic: &str) -> Vec<String> {
    let t = c["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == topic)
        .unwrap_or_else(|| panic!("{topic} is not probed: {c}"));
    let mut nodes: Vec<String> = t["answers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["node"].as_str().unwrap().to_string())
        .collect();
    nodes.sort();
    nodes
}

/// The README's command, as written there, for a node's config.
fn readme_status_command() -> String {
    let readme = std::fs::read_to_string(herald_tests::root().join("README.md")).unwrap();
    let section = &readme[readme
        .find("### Is coordination working?")
        .expect("the README's coordination section")..];
    let block = &section[section.find("```sh\n").unwrap() + 6..];
    let line = block[..block.find("```").unwrap()].trim();
    assert!(line.starts_with("herald status"), "{line}");
    line.to_string()
}

fn run_status(line: &str, config: &std::path::Path) -> (bool, String) {
    let args: Vec<String> = line
        .replace("/etc/herald/herald.json", &config.display().to_string())
        .split_whitespace()
        .skip(1)
        .map(str::to_string)
        .collect();
    let out = Command::new(herald_tests::herald_bin())
        .args(&args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn every_node_answers_probes_and_a_silent_one_is_named() {
    let mut c = TestCluster::new(
        "probe",
        2,
        &[
            Install::builtin("blocking"),
            Install::builtin("push").in_mode("shared"),
        ],
    )
    .await;
    // a's API on a port of its own, for the CLI (which reads it from the
    // config); b's config is written after, with another.
    c.settings =
        json!({"probeInterval": "2s", "api": {"listen": format!("127.0.0.1:{}", free_port())}});
    let (events, state) = (c.topic.clone(), c.state_topic.clone());
    let mut a = c.start("a");
    let a_config = c.config("a");
    c.settings["api"]["listen"] = json!("127.0.0.1:0");
    let mut b = c.start("b");
    let both = vec!["a".to_string(), "b".to_string()];
    let seen = coordination_until(
        &mut a,
        "a's probes answered by a and b on both topics",
        |c| c["working"] == true && answered(c, &events) == both && answered(c, &state) == both,
    )
    .await;
    for t in seen["topics"].as_array().unwrap() {
        for answer in t["answers"].as_array().unwrap() {
            assert!(answer["ms"].as_f64().unwrap() > 0.0, "{answer}");
        }
    }
    // What b says of itself, as a heard it.
    let nodes = seen["nodes"].as_array().unwrap();
    let nb = nodes.iter().find(|n| n["node"] == "b").expect("b heard");
    assert_eq!(nb["silent"], false);
    assert_eq!(nb["version"], env!("CARGO_PKG_VERSION"));
    let mut handlers: Vec<(String, String)> = nb["handlers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["name"].as_str().unwrap().into(),
                h["mode"].as_str().unwrap().into(),
            )
        })
        .collect();
    handlers.sort();
    assert_eq!(
        handlers,
        vec![
            ("blocking".into(), "broadcast".into()),
            ("push".into(), "shared".into())
        ]
    );
    // b hears a too: every node answers every node's probe.
    coordination_until(&mut b, "b's probes answered by a", |c| {
        answered(c, &events).contains(&"a".to_string())
    })
    .await;
    // The round trip is a metric, per topic and answering node.
    let metrics = herald_tests::api::metrics(&mut a).await;
    let (node, topic) = ("node=\"b\"".to_string(), format!("topic=\"{events}\""));
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("herald_probe_round_trip_seconds")
                && l.contains(&node)
                && l.contains(&topic)),
        "no herald_probe_round_trip_seconds for b on {events} in:\n{metrics}"
    );

    // The README's command, as written, once both nodes are ready (b's
    // joining moved partitions of the shared group).
    for n in [&mut a, &mut b] {
        let deadline = Instant::now() + LONG;
        while get(n, "/readyz").await.0 != 200 {
            assert!(Instant::now() < deadline, "{} never became ready", n.node);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let command = readme_status_command();
    let (ok, out) = run_status(&command, &a_config);
    assert!(ok, "{out}");
    assert!(out.contains("coordination: working"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("b ") && l.contains("heard")),
        "{out}"
    );

    // b goes away: a names it, and the command says so with its status.
    assert!(b.terminate().success());
    coordination_until(&mut a, "b named silent", |c| {
        c["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["node"] == "b" && n["silent"] == true)
    })
    .await;
    let (ok, out) = run_status(&command, &a_config);
    assert!(!ok, "a silent node must fail the cluster check: {out}");
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("b ") && l.contains("SILENT")),
        "{out}"
    );
    assert!(a.terminate().success());
}
