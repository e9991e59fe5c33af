//! Signed events and sealed private keys on a real broker with two nodes:
//! only what a trusted key signed changes a node, every refusal is a dead
//! letter that says why, and a certificate rolled out with
//! `herald cert publish` reaches every node with its key, which no topic
//! ever holds in plaintext.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald::trust::keys::NodeKey;
use herald_tests::cluster::{Install, TestCluster, wait_until};
use herald_tests::{cert_fixture, herald_bin};
use serde_json::{Value, json};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn block(id: &str, ip: &str, ts: u64) -> Value {
    json!({"v":1,"id":id,"kind":"ip-block","origin":"ops","ts":ts,
           "body":{"ip":ip,"action":"block","reason":"trust test"}})
}

fn herald(args: &[&str]) -> String {
    let out = Command::new(herald_bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "herald {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn only_trusted_publishers_change_nodes() {
    let mut cluster = TestCluster::new(
        "trust",
        2,
        &[
            Install::builtin("blocking"),
            Install::builtin("certificate"),
        ],
    )
    .await;
    let keys = cluster.dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let key = |name: &str| NodeKey::load_or_create(&keys.join(name)).unwrap().0;
    // Two operator keys (a rotation in progress), the ACME host's key, which
    // may only sign certificates, and a key nobody trusts.
    let (ops, ops_next, acme, stranger) = (key("ops"), key("ops-next"), key("acme"), key("x"));
    let identity = keys.join("cluster.age");
    let generated = herald(&[
        "keys",
        "generate",
        "--sealing",
        "--out",
        identity.to_str().unwrap(),
    ]);
    let recipient = generated
        .lines()
        .find_map(|l| l.strip_prefix("recipient:"))
        .unwrap()
        .trim()
        .to_string();
    let entry = |k: &NodeKey, kinds: Value| json!({"publicKey": herald::trust::keys::public_key_text(&k.public()), "kinds": kinds});
    cluster.settings = json!({
        "trust": {
            "keys": {
                ops.id(): entry(&ops, json!(["*"])),
                ops_next.id(): entry(&ops_next, json!(["*"])),
                acme.id(): entry(&acme, json!(["tls-certificate"])),
            },
            "maxAge": {"ip-block": "1h"},
        },
        "certificates": {
            "identityFile": identity,
            "sealTo": [recipient],
            // A reload hook that reports and fails, and one that hangs: the
            // install stands and the partition goes on.
            "hooks": [
                {"name": "report", "domains": ["*.example.com"], "command": ["sh", "-c",
                    "echo \"$HERALD_CERT_DOMAIN $HERALD_CERT_PRIVKEY\" >> \"$HOOK_OUT\"; exit 1"]},
                {"name": "hang", "domains": ["*"], "command": ["sleep", "600"], "timeout": "30s"},
            ],
        },
    });
    let hook_out = |node: &str| cluster.dir.path().join(format!("{node}.hook"));
    let mut nodes: Vec<_> = ["n1", "n2"]
        .iter()
        .map(|n| cluster.start_with_env(n, &[("HOOK_OUT", hook_out(n).to_str().unwrap())]))
        .collect();
    for n in &mut nodes {
        let group = cluster.broadcast_group(&n.node);
        n.wait_assigned(&group);
    }

    let now = now_ms();
    // Refused, each for its own reason.
    cluster
        .publish("ip:198.18.1.1", &block("unsigned", "198.18.1.1", now))
        .await;
    cluster
        .publish_signed(
            "ip:198.18.1.2",
            &block("stranger", "198.18.1.2", now),
            &stranger,
        )
        .await;
    let honest = block("tampered", "198.18.1.3", now).to_string();
    let sig =
        herald::trust::keys::signature_text(&ops.sign(Some(b"ip:198.18.1.3"), honest.as_bytes()));
    let tampered = honest.replace("198.18.1.3", "198.18.1.33");
    cluster
        .publish_record(
            "ip:198.18.1.3",
            tampered.as_bytes(),
            &[
                (herald::trust::KEY_ID_HEADER, ops.id().as_bytes()),
                (herald::trust::SIGNATURE_HEADER, sig.as_bytes()),
            ],
        )
        .await;
    cluster
        .publish_signed(
            "ip:198.18.1.4",
            &block("acme-blocks", "198.18.1.4", now),
            &acme,
        )
        .await;
    let two_hours_ago = now - 2 * 3600 * 1000;
    cluster
        .publish_signed(
            "ip:198.18.1.5",
            &block("replayed", "198.18.1.5", two_hours_ago),
            &ops,
        )
        .await;
    let mut plaintext = herald_tests::ec_certificate("plaintext", "other.key");
    plaintext["ts"] = json!(now);
    cluster
        .publish_signed("domain:mail.example.com", &plaintext, &acme)
        .await;
    // The same with the key's PEM label written with a JSON escape: what
    // counts is what the record decodes to, not how its bytes spell it.
    let mut escaped = herald_tests::ec_certificate("plaintext-escaped", "other.key");
    escaped["ts"] = json!(now);
    let escaped = escaped
        .to_string()
        .replace("PRIVATE KEY", "PRIVATE\\u0020KEY");
    assert!(escaped.contains("PRIVATE\\u0020KEY"));
    cluster
        .publish_signed_text("domain:mail.example.com", &escaped, &acme)
        .await;

    // Applied on every node: both operator keys, and a certificate rolled
    // out the way an ACME deploy hook does it, signed by the ACME key.
    cluster
        .publish_signed("ip:198.18.2.1", &block("ops", "198.18.2.1", now), &ops)
        .await;
    cluster
        .publish_signed(
            "ip:198.18.2.2",
            &block("ops-next", "198.18.2.2", now),
            &ops_next,
        )
        .await;
    // A bundle: one record, one signature, two events.
    let bundle = json!([
        block("b1", "198.18.2.4", now),
        block("b2", "198.18.2.5", now)
    ]);
    cluster.publish_signed("bundle", &bundle, &ops).await;
    let publisher = cluster.config("publisher");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&publisher).unwrap()).unwrap();
    cfg["signingKey"] = json!(keys.join("acme"));
    std::fs::write(&publisher, cfg.to_string()).unwrap();
    // The README's deploy-hook line, run as written with certbot's
    // environment (only the config path is this test's).
    let readme = std::fs::read_to_string(herald_tests::root().join("README.md")).unwrap();
    let section = &readme[readme.find("### Signed events and sealed keys").unwrap()..];
    let start = section.find("```sh\n").unwrap() + 6;
    let hook = section[start..start + section[start..].find("```").unwrap()]
        .replace("/etc/herald/acme.json", publisher.to_str().unwrap());
    let lineage = cluster.dir.path().join("live/mail.example.com");
    std::fs::create_dir_all(&lineage).unwrap();
    std::fs::write(lineage.join("fullchain.pem"), cert_fixture("ec.crt")).unwrap();
    std::fs::write(lineage.join("privkey.pem"), cert_fixture("ec.key")).unwrap();
    let bin_dir = herald_bin().parent().unwrap().to_path_buf();
    let out = Command::new("bash")
        .args(["-ec", &hook])
        .env("RENEWED_DOMAINS", "mail.example.com")
        .env("RENEWED_LINEAGE", &lineage)
        .env(
            "PATH",
            format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the README's deploy hook: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let published: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(published["keyId"], acme.id());
    cluster
        .publish_signed(
            "ip:198.18.2.3",
            &block("after-cert", "198.18.2.3", now),
            &ops,
        )
        .await;

    let plain_key = cert_fixture("ec.key");
    for n in &nodes {
        wait_until(
            &format!("{}: the signed blocks applied", n.node),
            Duration::from_secs(60),
            || {
                let b = n.blocklist();
                ["198.18.2.1", "198.18.2.2", "198.18.2.4", "198.18.2.5"]
                    .iter()
                    .all(|ip| b.contains(*ip))
            },
        );
        let installed = n.state.join("certs/mail.example.com/privkey.pem");
        wait_until(
            &format!("{}: certificate installed", n.node),
            Duration::from_secs(60),
            || installed.exists(),
        );
        assert_eq!(std::fs::read_to_string(&installed).unwrap(), plain_key);
        let mode = std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", installed.display());
        // The event after the certificate is handled while the hanging
        // hook still runs.
        wait_until(
            &format!("{}: the block after the certificate", n.node),
            Duration::from_secs(25),
            || n.blocklist().contains("198.18.2.3"),
        );
        assert!(
            !n.log_text().contains("certificate hook timed out"),
            "{}",
            n.node
        );
        let reported = std::fs::read_to_string(hook_out(&n.node)).unwrap();
        assert_eq!(
            reported.trim(),
            format!("mail.example.com {}", installed.display())
        );
    }
    for n in &mut nodes {
        n.wait_for_log("certificate hook failed", Duration::from_secs(10));
        n.wait_for_log("certificate hook timed out", Duration::from_secs(60));
        // Neither undid the install.
        assert!(n.state.join("certs/mail.example.com/privkey.pem").exists());
    }

    // Seven refusals on each of the two nodes, each named.
    let letters = cluster.dead_letters(14).await;
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for l in &letters {
        let error = l.header("herald-error");
        let reason = error
            .split("untrusted (")
            .nth(1)
            .and_then(|r| r.split(')').next())
            .unwrap_or_else(|| panic!("not a trust refusal: {error}"));
        *reasons.entry(reason.to_string()).or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = [
        "unsigned",
        "unknown-key",
        "bad-signature",
        "kind-not-allowed",
        "too-old",
    ]
    .iter()
    .map(|r| (r.to_string(), 2))
    .chain([("plaintext-key".to_string(), 4)])
    .collect();
    assert_eq!(reasons, expected);
    for n in &nodes {
        let b = n.blocklist();
        for ip in [
            "198.18.1.1",
            "198.18.1.2",
            "198.18.1.3",
            "198.18.1.33",
            "198.18.1.4",
            "198.18.1.5",
        ] {
            assert!(!b.contains(ip), "{}: {ip} applied", n.node);
        }
    }

    // The published key travels sealed: no record of the events topic holds
    // it, and no dead letter holds any plaintext key, not even the one the
    // test itself put on the topic in the clear.
    let key_body: String = plain_key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    for record in cluster.read_all(&cluster.topic) {
        let text = String::from_utf8_lossy(&record).replace("\\n", "");
        assert!(
            !text.contains(&key_body),
            "the events topic holds the published key"
        );
    }
    let dead = cluster.read_all(&format!("{}.dlq", cluster.topic));
    assert_eq!(dead.len(), 14);
    let other_body: String = cert_fixture("other.key")
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    for record in dead {
        let text = String::from_utf8_lossy(&record).replace("\\n", "");
        assert!(!text.contains("PRIVATE KEY"));
        assert!(
            !text.contains(&other_body[..40]),
            "a dead letter holds the plaintext key"
        );
    }
    for n in &nodes {
        assert!(!n.log_text().contains("PRIVATE KEY"), "{}'s log", n.node);
    }
}
