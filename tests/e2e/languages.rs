//! The blocking handler in Python and JavaScript (`handlers/blocking-py`,
//! `handlers/blocking-js`, built with the SDKs of `guest-sdk/`): the same
//! outcomes and effects as the Rust one on every event, the same end-to-end
//! tests on real nodes and a real broker, and the sandbox's limits holding
//! for a 20 MB interpreter as they do for a Rust component.

use std::process::Command;

use herald_tests::{
    compile_cache, handler, handler_test, herald_bin, ip_block, root, write_events,
};
use serde_json::{Value, json};

use crate::kafka;

const LANGUAGES: [&str; 3] = ["blocking", "blocking-py", "blocking-js"];

/// Every spelling of `guest-sdk/tests/networks.jsonl` (the cases the SDKs'
/// `net` modules are checked against, some 3000), blocked and unblocked,
/// with and without an expiry.
fn events() -> Vec<Value> {
    let cases = std::fs::read_to_string(root().join("guest-sdk/tests/networks.jsonl")).unwrap();
    let mut events = Vec::new();
    for (i, line) in cases.lines().enumerate() {
        let case: Value = serde_json::from_str(line).unwrap();
        let Some(ip) = case["input"].as_str() else {
            continue;
        };
        let action = if i % 4 == 3 { "unblock" } else { "block" };
        let mut event = ip_block(&format!("e{i}"), ip, action, "languages");
        if i % 3 == 0 {
            event["body"]["expiresAt"] = json!(1_795_693_600_000u64 + i as u64);
        }
        events.push(event);
    }
    events
}

/// A manifest for the blocking handler with `allowlist`.
fn manifest(allowlist: &str) -> String {
    format!(
        "subscribe = [\"ip-block\"]\nmode = \"broadcast\"\ncapabilities = [\"blocklist\"]\n\
         [limits]\ndeadline = \"2s\"\nmemory = \"32MiB\"\n[settings]\nallowlist = {allowlist:?}\n"
    )
}

#[test]
fn the_three_languages_give_every_event_the_same_outcome_and_effects() {
    let events = events();
    // A working allowlist (IPv4, IPv6, a mapped address), then a broken one.
    for (allowlist, name) in [
        ("192.0.2.0/24, 2001:db8::1 ::ffff:10.1.0.0/112", "good"),
        ("10.0.0.0/8, nope", "broken"),
    ] {
        let manifest = manifest(allowlist);
        let run = handler_test("blocking", &events, Some(&manifest));
        assert!(run.ok, "{}", run.stderr);
        let rust = run.lines;
        assert_eq!(rust.len(), events.len());
        let count = |outcome: &str| rust.iter().filter(|l| l["outcome"] == outcome).count();
        if name == "good" {
            // Not a vacuous comparison: blocks, unblocks and rejects by the
            // hundred, loopback and the allowlist among the reasons.
            assert!(count("ok") > 500 && count("reject") > 1000, "{allowlist}");
            for reason in ["covers loopback", "allowlisted by", "host bits set"] {
                assert!(
                    rust.iter()
                        .any(|l| l["reason"].as_str().is_some_and(|r| r.contains(reason))),
                    "{reason}"
                );
            }
        } else {
            assert!(count("retry") > 500, "{allowlist}");
        }
        for other in &LANGUAGES[1..] {
            let theirs = handler_test(other, &events, Some(&manifest)).lines;
            assert_eq!(theirs.len(), rust.len(), "{other}");
            for (r, t) in rust.iter().zip(&theirs) {
                assert_eq!(t, r, "{other} differs from Rust ({name} allowlist)");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn python_broadcast_reaches_every_node_and_shared_reaches_one() {
    kafka::broadcast_and_shared("blocking-py").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn javascript_broadcast_reaches_every_node_and_shared_reaches_one() {
    kafka::broadcast_and_shared("blocking-js").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_late_joiner_rebuilds_its_blocklist_from_the_log() {
    kafka::late_joiner("blocking-py").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn javascript_late_joiner_rebuilds_its_blocklist_from_the_log() {
    kafka::late_joiner("blocking-js").await;
}

/// `herald handler test` on the hostile Python fixture, one event per
/// line with `reason` saying how to misbehave.
fn hostile(reasons: &[&str], manifest: Option<&str>) -> (Vec<Value>, String) {
    let events: Vec<Value> = reasons
        .iter()
        .enumerate()
        .map(|(i, r)| ip_block(&format!("h{i}"), &format!("203.0.113.{i}"), "block", r))
        .collect();
    let run = handler_test("fixtures/hostile-py", &events, manifest);
    (run.lines, run.stderr)
}

#[test]
fn a_python_handler_is_held_to_its_deadline_memory_and_no_sockets() {
    let (lines, stderr) = hostile(&["spin", "ok", "hog", "ok", "socket", "raise", "ok"], None);
    assert_eq!(lines.len(), 7, "{stderr}");
    let failure = |i: usize| lines[i]["failure"].as_str().unwrap_or("none").to_string();
    assert_eq!(failure(0), "deadline", "{}", lines[0]);
    assert_eq!(failure(2), "memory", "{}", lines[2]);
    assert!(
        lines[2]["reason"].as_str().unwrap().contains("32.0 MiB"),
        "{}",
        lines[2]
    );
    // The stub in place of wasi:sockets traps: the call fails, nothing is
    // sent, and it is no deadline or memory failure.
    assert_eq!(failure(4), "trap", "{}", lines[4]);
    assert!(
        lines[4]["reason"]
            .as_str()
            .unwrap()
            .contains("wasi:sockets"),
        "{}",
        lines[4]
    );
    // A Python exception that is neither Retry nor Reject is a bug: the
    // call fails, as a Rust panic does.
    assert_ne!(lines[5]["outcome"], "ok", "{}", lines[5]);
    assert!(lines[5]["failure"].is_string(), "{}", lines[5]);
    // Each failure stayed in its own call: a fresh instance handles the next.
    for i in [1, 3, 6] {
        assert_eq!(lines[i]["outcome"], "ok", "{}", lines[i]);
        assert_eq!(lines[i]["effects"][0]["network"], format!("203.0.113.{i}"));
    }
}

#[test]
fn a_python_handler_whose_manifest_leaves_it_too_little_memory_is_refused_naming_the_field() {
    let (lines, stderr) = hostile(
        &["ok"],
        Some(
            "subscribe = [\"ip-block\"]\nmode = \"broadcast\"\ncapabilities = [\"blocklist\"]\n\
             [limits]\nmemory = \"4MiB\"\n",
        ),
    );
    assert!(lines.is_empty(), "{lines:?}");
    assert!(stderr.contains("limits.memory of 4.0 MiB"), "{stderr}");
    assert!(stderr.contains("starts with"), "{stderr}");
}

#[test]
fn a_python_handler_importing_an_ungranted_capability_is_refused_naming_it() {
    // blocking-py imports `blocklist`; a manifest without it must not load it.
    let run = handler_test(
        "blocking-py",
        &[ip_block("a", "203.0.113.7", "block", "x")],
        Some("subscribe = [\"ip-block\"]\nmode = \"broadcast\"\n"),
    );
    assert!(!run.ok);
    let stderr = run.stderr;
    assert!(
        stderr.contains("herald:coordination/blocklist@0.2.0")
            && stderr.contains("add \"blocklist\" to `capabilities`"),
        "{stderr}"
    );
}

#[test]
fn inspect_says_what_a_python_component_costs() {
    let out = Command::new(herald_bin())
        .args(["handler", "inspect", "--json"])
        .arg(handler("blocking-py"))
        .env("XDG_CACHE_HOME", compile_cache())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    // CPython's pre-initialised heap: megabytes, not the kilobytes of Rust.
    let memory = info["initialMemory"].as_u64().unwrap();
    assert!(memory > 4 << 20 && memory < 32 << 20, "{info}");
    assert!(
        info["compile"]["compileSeconds"].as_f64().unwrap() > 0.0,
        "{info}"
    );
    assert!(
        info["compile"]["cacheBytes"].as_u64().unwrap() > 1 << 20,
        "{info}"
    );
    let imports: Vec<&str> = info["imports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap())
        .collect();
    assert!(
        !imports.iter().any(|i| i.contains("wasi:sockets")),
        "{imports:?}"
    );
    assert!(
        imports
            .iter()
            .any(|i| i.contains("herald:coordination/blocklist"))
    );
    assert!(
        !imports
            .iter()
            .any(|i| i.contains("herald:coordination/push"))
    );
}

#[test]
fn the_readmes_python_and_javascript_commands_work_as_written() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let block = readme
        .split("```sh\njust build-python && just build-js\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the README's Python and JavaScript commands");
    // Where the README's relative paths hold: a folder with the checkout's
    // target/ and an events file of its own.
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(root().join("target"), dir.path().join("target")).unwrap();
    write_events(
        dir.path(),
        "events.jsonl",
        &[
            ip_block("e1", "203.0.113.7", "block", "auth failures"),
            ip_block("e2", "not-an-ip", "block", "x"),
            ip_block("e3", "::ffff:127.0.0.1", "block", "x"),
        ],
    );
    let run = |line: &str| {
        let args: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(args[0], "herald", "{line}");
        let out = Command::new(herald_bin())
            .args(&args[1..])
            .current_dir(dir.path())
            .env("XDG_CACHE_HOME", compile_cache())
            .output()
            .unwrap();
        assert!(out.status.success(), "{line}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let rust = run("herald handler test target/handlers/blocking.wasm events.jsonl");
    assert!(rust.contains("covers loopback"), "{rust}");
    let lines: Vec<&str> = block.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 3, "{block}");
    for line in lines {
        let out = run(line);
        if line.contains(" test ") {
            assert_eq!(out, rust, "{line}");
        } else {
            assert!(
                out.contains("starts with") && out.contains("compiled in"),
                "{out}"
            );
        }
    }
}
