//! `herald handler test` and `herald handler inspect`, run as a user would:
//! the real binary on real components.

use std::process::Command;

use herald_tests::{handler, herald_bin, ip_block};
use serde_json::Value;

fn handler_test(wasm: &str, events: &[Value]) -> (Vec<Value>, bool) {
    let run = herald_tests::handler_test(wasm, events, None);
    (run.lines, run.ok)
}

#[test]
fn blocking_shows_the_effect_and_rejects_garbage() {
    let (lines, ok) = handler_test(
        "blocking",
        &[
            ip_block("a", "203.0.113.7", "block", "test"),
            ip_block("b", "not-an-ip", "block", "test"),
        ],
    );
    assert!(ok);
    assert_eq!(lines[0]["outcome"], "ok");
    assert_eq!(lines[0]["effects"][0]["effect"], "block");
    assert_eq!(lines[0]["effects"][0]["network"], "203.0.113.7");
    assert_eq!(lines[1]["outcome"], "reject");
    assert!(lines[1]["reason"].as_str().unwrap().contains("not-an-ip"));
    assert_eq!(lines[1]["effects"], Value::Array(vec![]));
}

#[test]
fn a_panic_is_reported_as_a_reject_with_its_message() {
    let (lines, ok) = handler_test(
        "fixtures/panic",
        &[ip_block("a", "203.0.113.7", "block", "test")],
    );
    assert!(ok);
    assert_eq!(lines[0]["outcome"], "reject");
    assert_eq!(lines[0]["failure"], "panic");
    assert!(
        lines[0]["reason"]
            .as_str()
            .unwrap()
            .contains("fixture panic on 203.0.113.7")
    );
}

#[test]
fn malformed_lines_are_named_and_fail_the_run() {
    let bad = serde_json::json!({"v":1,"id":"x","kind":"ip-block","origin":"t","ts":1,"body":{}});
    let (lines, ok) = handler_test(
        "blocking",
        &[bad, ip_block("a", "203.0.113.7", "block", "test")],
    );
    assert!(!ok, "a bad line must fail the run");
    assert_eq!(lines[0]["line"], 1);
    assert!(lines[0]["error"].as_str().unwrap().contains("`ip`"));
    assert_eq!(
        lines[1]["outcome"], "ok",
        "the run carries on past a bad line"
    );
}

#[test]
fn inspect_names_world_and_capabilities() {
    let out = Command::new(herald_bin())
        .args(["handler", "inspect", "--json"])
        .arg(handler("blocking"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["world"], "herald:coordination/handler@0.2.0");
    assert_eq!(
        info["capabilities"],
        serde_json::json!(["config", "blocklist"])
    );
    assert!(
        info["exports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "func handle")
    );
}

fn config_check(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.json");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(herald_bin())
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn config_check_accepts_the_examples() {
    let example =
        std::fs::read_to_string(herald_tests::root().join("runtime/herald.example.json")).unwrap();
    let (ok, out) = config_check(&example);
    assert!(ok, "{out}");
    // The README's configuration example, as printed there.
    let readme = std::fs::read_to_string(herald_tests::root().join("README.md")).unwrap();
    let section = &readme[readme.find("## Configuration").unwrap()..];
    let start = section.find("```json\n").unwrap() + 8;
    let block = &section[start..start + section[start..].find("```").unwrap()];
    let (ok, out) = config_check(block);
    assert!(ok, "the README's configuration: {out}");
    assert!(out.contains("nor 198.51.100.0/24"), "{out}");
    // The README's scoped tokens, in a config of their own.
    let section = &readme[readme.find("### The local API").unwrap()..];
    let start = section.find("```json\n").unwrap() + 8;
    let tokens = &section[start..start + section[start..].find("```").unwrap()];
    let (ok, out) = config_check(&format!(
        r#"{{"brokers": ["kafka1:9092"], "groupId": "g", {tokens}}}"#
    ));
    assert!(ok, "the README's api.tokens: {out}");
    // The Coordinator object exactly as the mail server writes it.
    let (ok, out) = config_check(
        r#"{ "@type": "Kafka", "brokers": ["kafka1:9092"], "groupId": "stalwart-cluster",
             "timeoutSession": "5s", "timeoutMessage": "5s", "nodeId": "mx1" }"#,
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("broadcast: stalwart-cluster.herald.mx1"),
        "{out}"
    );
}

#[test]
fn config_check_refuses_no_brokers() {
    let (ok, out) = config_check(r#"{"@type":"Kafka","brokers":[],"groupId":"g"}"#);
    assert!(!ok);
    assert!(out.contains("at least one broker is required"), "{out}");
}

/// `herald keys show` makes the node's key on first use (0600) and prints
/// the trust entry, which another node's config then accepts as written;
/// `keys generate` never overwrites a key.
#[test]
fn keys_show_prints_a_trust_entry_that_config_check_accepts() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.json");
    let state = dir.path().join("state");
    std::fs::write(
        &config,
        serde_json::json!({"brokers": ["kafka1:9092"], "groupId": "g", "nodeId": "n1",
                           "stateDir": state})
        .to_string(),
    )
    .unwrap();
    let show = || {
        let out = Command::new(herald_bin())
            .args(["keys", "show", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let first = show();
    assert!(first.contains("(created"), "{first}");
    let mode = std::fs::metadata(state.join("node.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let second = show();
    assert!(!second.contains("(created"), "{second}");
    let entry = second
        .lines()
        .find_map(|l| l.strip_prefix("trust entry: "))
        .expect("a trust entry line");
    assert!(first.contains(entry), "the key changed between runs");
    let (ok, out) = config_check(&format!(
        r#"{{"brokers": ["kafka1:9092"], "groupId": "g", "nodeId": "n2",
            "trust": {{"keys": {{{entry}}}}}}}"#
    ));
    assert!(ok, "{out}");

    let again = Command::new(herald_bin())
        .args(["keys", "generate", "--out"])
        .arg(state.join("node.key"))
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("never overwritten"));
}
