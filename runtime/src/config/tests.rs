//! The configuration file: accepted shapes, defaults and error messages.

use super::*;

const COORDINATOR: &str = r#"{ "@type": "Kafka", "brokers": ["kafka1:9092"], "groupId": "stalwart-cluster",
    "timeoutSession": "5s", "timeoutMessage": "5s" }"#;

fn err(text: &str) -> String {
    format!("{:#}", Config::parse(text).unwrap_err())
}

/// The DESIGN example with `extra` (JSON members, no braces) added.
fn with(extra: &str) -> String {
    format!(
        r#"{{ "@type": "Kafka", "brokers": ["kafka1:9092"], "groupId": "g", "nodeId": "n1"{}{extra} }}"#,
        if extra.is_empty() { "" } else { "," }
    )
}

#[test]
fn config_coordinator_example_parses_with_defaults() {
    let c = Config::parse(COORDINATOR).unwrap();
    assert_eq!(c.brokers, ["kafka1:9092"]);
    assert_eq!(c.group_id, "stalwart-cluster");
    assert_eq!(c.timeout_session, Duration::from_secs(5));
    assert_eq!(c.timeout_message, Duration::from_secs(5));
    assert_eq!(Some(c.node_id.clone()), hostname());
    assert_eq!(c.handlers, Path::new("/etc/herald/handlers"));
    assert_eq!(c.state_dir, Path::new("/var/lib/herald"));
    assert_eq!(c.topics, Topics::default());
    assert_eq!(c.topics.events, "herald.events");
    assert_eq!(c.topics.dead_letter("herald.events"), "herald.events.dlq");
    assert_eq!(c.batch.size, 100);
    assert_eq!(c.batch.linger, Duration::ZERO);
    assert_eq!(c.retry, Retry::default());
    assert_eq!(c.commit_interval, Duration::from_millis(250));
    assert_eq!(c.api.listen, "127.0.0.1:8470".parse().unwrap());
    assert!(c.api.token.is_none() && c.api.unix_socket.is_none());
    assert!(!c.stalwart.enabled);
    assert_eq!(c.stalwart.topic, "stwt.agora");
    assert!(c.kafka.is_empty());
    // Never the mail server's own group.
    assert_eq!(c.shared_group(), "stalwart-cluster.herald");
    assert_eq!(
        c.broadcast_group(),
        format!("stalwart-cluster.herald.{}", c.node_id)
    );
    // The same with defaults filled in by hand.
    let mut d = Config::for_brokers("kafka1:9092", "stalwart-cluster", &c.node_id);
    assert_eq!(c, d);
    d.brokers.clear();
    assert_ne!(c, d);
}

#[test]
fn config_settings_store_shape_parses_the_same() {
    let store = Config::parse(
        r#"{"@type":"Kafka","brokers":{"kafka1:9092":true,"old:9092":false},"groupId":"g","timeoutSession":5000,"timeoutMessage":5000}"#,
    )
    .unwrap();
    let plain = Config::parse(
        r#"{"@type":"Kafka","brokers":["kafka1:9092"],"groupId":"g","timeoutSession":"5s","timeoutMessage":"5s"}"#,
    )
    .unwrap();
    assert_eq!(store.brokers, ["kafka1:9092"]);
    assert_eq!(store.brokers, plain.brokers);
    assert_eq!(store.timeout_session, plain.timeout_session);
    assert_eq!(store.timeout_message, plain.timeout_message);
    assert_eq!(store, plain);
    let e = err(r#"{"brokers":{"kafka1:9092":"yes"},"groupId":"g"}"#);
    assert!(e.contains("field `brokers"), "{e}");
}

#[test]
fn config_example_file_parses() {
    let c = Config::parse(include_str!("../../herald.example.json")).unwrap();
    assert_eq!(c.brokers, ["127.0.0.1:9092"]);
    assert_eq!(c.node_id, "node-1");
    assert_eq!(c.handlers, Path::new("target/handlers"));
    assert_eq!(
        c.topics.create,
        Some(TopicCreate {
            partitions: 6,
            replication_factor: 1
        })
    );
    assert_eq!(c.api.token.as_deref(), Some("change-me"));
    assert_eq!(c.stalwart.node_id, Some(900));
    assert_eq!(c.kafka["security.protocol"], "SASL_SSL");
    assert_eq!(c.broadcast_group(), "stalwart-cluster.herald.node-1");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("herald.example.json");
    assert_eq!(Config::load(&path).unwrap(), c);
    // Secrets stay out of Debug output.
    assert!(!format!("{c:?}").contains("change-me"));
}

#[test]
fn config_brokers_required() {
    for text in [
        r#"{"brokers": [], "groupId": "g"}"#,
        r#"{"groupId": "g"}"#,
        r#"{"brokers": {"kafka1:9092": false}, "groupId": "g"}"#,
        r#"{"brokers": null, "groupId": "g"}"#,
    ] {
        let e = err(text);
        assert!(e.contains("at least one broker is required"), "{e}");
        assert!(e.contains("field `brokers`"), "{e}");
    }
}

#[test]
fn config_broker_addresses_checked() {
    for ok in ["kafka1:9092", "10.0.0.1:9092", "[::1]:9092", "a.b-c_d:1"] {
        let c = Config::parse(&format!(r#"{{"brokers": ["{ok}"], "groupId": "g"}}"#));
        assert_eq!(c.unwrap().brokers, [ok]);
    }
    for bad in [
        "kafka1",
        "kafka1:",
        "kafka1:port",
        ":9092",
        "::1:9092",
        "[::1]",
        "h:70000",
        "h:0",
        "a b:1",
    ] {
        let e = err(&format!(
            r#"{{"brokers": ["kafka1:9092", "{bad}"], "groupId": "g"}}"#
        ));
        assert!(e.contains("field `brokers`") && e.contains(bad), "{e}");
    }
    let e = err(r#"{"brokers": "kafka1:9092", "groupId": "g"}"#);
    assert!(e.contains("field `brokers`"), "{e}");
    let e = err(r#"{"brokers": [9092], "groupId": "g"}"#);
    assert!(e.contains("field `brokers[0]`"), "{e}");
}

#[test]
fn config_type_must_be_kafka() {
    let e = err(r#"{"@type": "Redis", "brokers": ["k:1"], "groupId": "g"}"#);
    assert!(e.contains("field `@type`") && e.contains("Redis"), "{e}");
    assert!(e.contains("\"Kafka\""), "{e}");
    let e = err(r#"{"@type": "kafka", "brokers": ["k:1"], "groupId": "g"}"#);
    assert!(e.contains("field `@type`"), "{e}");
    let e = err(r#"{"@type": 1, "brokers": ["k:1"], "groupId": "g"}"#);
    assert!(e.contains("field `@type`"), "{e}");
    // Missing: a herald-only file.
    Config::parse(r#"{"brokers": ["k:1"], "groupId": "g"}"#).unwrap();
}

#[test]
fn config_group_and_node_checked() {
    let e = err(r#"{"brokers": ["k:1"]}"#);
    assert!(e.contains("field `groupId`"), "{e}");
    for bad in [r#""""#, r#""a b""#, r#""a/b""#, "1"] {
        let e = err(&format!(r#"{{"brokers": ["k:1"], "groupId": {bad}}}"#));
        assert!(e.contains("field `groupId`"), "{bad}: {e}");
    }
    let long = "g".repeat(250);
    let e = err(&format!(r#"{{"brokers": ["k:1"], "groupId": "{long}"}}"#));
    assert!(e.contains("field `groupId`"), "{e}");
    for bad in [r#""""#, r#""node 1""#, r#""node:1""#, "7"] {
        let e = err(&format!(
            r#"{{"brokers": ["k:1"], "groupId": "g", "nodeId": {bad}}}"#
        ));
        assert!(e.contains("field `nodeId`"), "{bad}: {e}");
    }
    let long = "n".repeat(248);
    let e = err(&format!(
        r#"{{"brokers": ["k:1"], "groupId": "g", "nodeId": "{long}"}}"#
    ));
    assert!(e.contains("field `nodeId`"), "{e}");
}

#[test]
fn config_wrong_types_name_the_field() {
    let e = err(&with(r#""timeoutSession": true"#));
    assert!(e.contains("field `timeoutSession`"), "{e}");
    let e = err(&with(r#""batch": {"size": "x"}"#));
    assert!(e.contains("field `batch.size`"), "{e}");
    let e = err(&with(r#""api": {"allowNonLoopback": "yes"}"#));
    assert!(e.contains("field `api.allowNonLoopback`"), "{e}");
    let e = err(&with(r#""stalwart": {"nodeId": 70000}"#));
    assert!(e.contains("field `stalwart.nodeId`"), "{e}");
    let e = err(&with(r#""topics": 5"#));
    assert!(e.contains("field `topics`"), "{e}");
    let e = err(&with(r#""kafka": {"linger.ms": null}"#));
    assert!(e.contains("field `kafka.linger.ms`"), "{e}");
    let e = err("[]");
    assert!(e.contains("JSON object"), "{e}");
    let e = err("{");
    assert!(e.contains("not valid JSON"), "{e}");
}

#[test]
fn config_unknown_keys_named() {
    let e = err(&with(r#""topics": {"evnets": "x"}"#));
    assert!(e.contains("field `topics.evnets`"), "{e}");
    assert!(e.contains("unknown field"), "{e}");
    let e = err(&with(r#""nodeid": "x""#));
    assert!(
        e.contains("field `nodeid`") && e.contains("unknown field"),
        "{e}"
    );
    let e = err(&with(
        r#""topics": {"create": {"partitions": 1, "replicationFactor": 1, "x": 1}}"#,
    ));
    assert!(e.contains("field `topics.create.x`"), "{e}");
    let e = err(&with(r#""topics": {"create": {"partitions": 1}}"#));
    assert!(
        e.contains("field `topics.create`") && e.contains("replicationFactor"),
        "{e}"
    );
}

#[test]
fn config_durations() {
    let c = Config::parse(&with(
        r#""timeoutSession": "500ms", "timeoutMessage": "1m", "commitInterval": 750,
           "batch": {"linger": 0}, "retry": {"backoff": "1s", "maxBackoff": 60000}"#,
    ))
    .unwrap();
    assert_eq!(c.timeout_session, Duration::from_millis(500));
    assert_eq!(c.timeout_message, Duration::from_secs(60));
    assert_eq!(c.commit_interval, Duration::from_millis(750));
    assert_eq!(c.batch.linger, Duration::ZERO);
    assert_eq!(c.retry.backoff, Duration::from_secs(1));
    assert_eq!(c.retry.max_backoff, Duration::from_secs(60));
    for bad in [
        r#""timeoutSession": 0"#,
        r#""timeoutSession": "0s""#,
        r#""timeoutSession": "soon""#,
        r#""timeoutSession": -5"#,
        r#""timeoutSession": 1.5"#,
        r#""timeoutSession": "2h""#,
    ] {
        let e = err(&with(bad));
        assert!(e.contains("field `timeoutSession`"), "{bad}: {e}");
    }
    let e = err(&with(r#""timeoutMessage": 0"#));
    assert!(e.contains("field `timeoutMessage`"), "{e}");
    let e = err(&with(r#""commitInterval": "0ms""#));
    assert!(e.contains("field `commitInterval`"), "{e}");
    let e = err(&with(
        r#""retry": {"backoff": "1s", "maxBackoff": "500ms"}"#,
    ));
    assert!(e.contains("field `retry.maxBackoff`"), "{e}");
}

#[test]
fn config_limits() {
    for (bad, field) in [
        (r#""batch": {"size": 0}"#, "batch.size"),
        (r#""batch": {"size": 10001}"#, "batch.size"),
        (r#""retry": {"attempts": 1001}"#, "retry.attempts"),
        (
            r#""topics": {"create": {"partitions": 0, "replicationFactor": 1}}"#,
            "topics.create.partitions",
        ),
        (
            r#""topics": {"create": {"partitions": 1, "replicationFactor": 0}}"#,
            "topics.create.replicationFactor",
        ),
        (r#""topics": {"events": "a b"}"#, "topics.events"),
        (
            r#""topics": {"deadLetterSuffix": ""}"#,
            "topics.deadLetterSuffix",
        ),
        (r#""handlers": """#, "handlers"),
        (r#""stalwart": {"enabled": true}"#, "stalwart.nodeId"),
    ] {
        let e = err(&with(bad));
        assert!(e.contains(&format!("field `{field}`")), "{bad}: {e}");
    }
    let c = Config::parse(&with(
        r#""batch": {"size": 10000}, "retry": {"attempts": 0}"#,
    ))
    .unwrap();
    assert_eq!((c.batch.size, c.retry.attempts), (10000, 0));
    let c = Config::parse(&with(r#""stalwart": {"enabled": true, "nodeId": 3}"#)).unwrap();
    assert_eq!(c.stalwart.node_id, Some(3));
}

#[test]
fn config_kafka_passthrough() {
    let c = Config::parse(&with(
        r#""kafka": {"security.protocol": "SASL_SSL", "linger.ms": 5, "enable.ssl.certificate.verification": false, "sasl.password": "pw"},
            "kafkaUnsafe": ["enable.ssl.certificate.verification"]"#,
    ))
    .unwrap();
    assert_eq!(c.kafka["security.protocol"], "SASL_SSL");
    assert_eq!(c.kafka["linger.ms"], "5");
    assert_eq!(c.kafka["enable.ssl.certificate.verification"], "false");
    assert!(!format!("{c:?}").contains("\"pw\""));
    for (owned, _) in OWNED_KAFKA_PROPERTIES {
        let e = err(&with(&format!(r#""kafka": {{"{owned}": "x"}}"#)));
        assert!(e.contains(owned) && e.contains("field `kafka"), "{e}");
    }
    // What runs commands, loads code or stops checking the broker needs
    // the operator to say so, whatever the spelling of its name.
    for (name, _) in UNSAFE_KAFKA_PROPERTIES {
        for spelled in [name.to_string(), format!(" {} ", name.to_uppercase())] {
            let e = err(&with(&format!(r#""kafka": {{"{spelled}": "x"}}"#)));
            assert!(
                e.contains(&format!("field `kafka.{spelled}`")) && e.contains("kafkaUnsafe"),
                "{e}"
            );
        }
        let c = Config::parse(&with(&format!(
            r#""kafka": {{"{name}": "x"}}, "kafkaUnsafe": ["{name}"]"#
        )))
        .unwrap();
        assert_eq!(c.kafka[*name], "x");
    }
    let e = err(&with(r#""kafkaUnsafe": ["linger.ms"]"#));
    assert!(e.contains("field `kafkaUnsafe[0]`"), "{e}");
}

#[test]
fn config_api_listen() {
    let e = err(&with(r#""api": {"listen": "0.0.0.0:8470"}"#));
    assert!(e.contains("field `api.listen`"), "{e}");
    assert!(e.contains("api.allowNonLoopback"), "{e}");
    let c = Config::parse(&with(
        r#""api": {"listen": "0.0.0.0:8470", "allowNonLoopback": true}"#,
    ))
    .unwrap();
    assert!(c.api.allow_non_loopback);
    let c = Config::parse(&with(r#""api": {"listen": "[::1]:8470"}"#)).unwrap();
    assert!(c.api.listen.ip().is_loopback());
    let e = err(&with(r#""api": {"listen": "localhost"}"#));
    assert!(
        e.contains("field `api.listen`") && e.contains("localhost"),
        "{e}"
    );
    let e = err(&with(r#""api": {"token": "t", "tokenFile": "/etc/t"}"#));
    assert!(
        e.contains("field `api.token`") && e.contains("tokenFile"),
        "{e}"
    );
    let c = Config::parse(&with(
        r#""api": {"unixSocket": "/run/herald.sock", "tokenFile": "/etc/herald/token"}"#,
    ))
    .unwrap();
    assert_eq!(
        c.api.unix_socket.as_deref(),
        Some(Path::new("/run/herald.sock"))
    );
}

#[test]
fn config_load_prefixes_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.json");
    std::fs::write(&path, with(r#""topics": {"evnets": "x"}"#)).unwrap();
    let e = Config::load(&path).unwrap_err();
    let prefix = format!("{}: field `topics.evnets`: ", path.display());
    assert!(format!("{e}").starts_with(&prefix), "{e}");
    assert!(format!("{e:#}").starts_with(&prefix), "{e:#}");
    let missing = dir.path().join("nope.json");
    let e = Config::load(&missing).unwrap_err();
    assert!(
        format!("{e}").starts_with(&format!("{}: ", missing.display())),
        "{e}"
    );
}

#[test]
fn config_retry_delay() {
    let r = Retry::default();
    assert_eq!(r.delay(1), Duration::from_millis(100));
    assert_eq!(r.delay(0), Duration::from_millis(100));
    assert_eq!(r.delay(2), Duration::from_millis(200));
    assert_eq!(r.delay(4), Duration::from_millis(800));
    assert_eq!(r.delay(8), Duration::from_secs(10));
    assert_eq!(r.delay(40), Duration::from_secs(10));
    assert_eq!(r.delay(u32::MAX), Duration::from_secs(10));
}

#[test]
fn config_for_brokers() {
    let c = Config::for_brokers("a:1, b:2", "g", "n");
    assert_eq!(c.brokers, ["a:1", "b:2"]);
    assert_eq!(c.broadcast_group(), "g.herald.n");
    assert_eq!(c.shared_group(), "g.herald");
}

#[test]
fn herald_never_joins_the_mail_servers_group() {
    let with = |extra: &str| {
        Config::parse(&format!(
            r#"{{ "brokers": ["k:9092"], "groupId": "stalwart", "nodeId": "n1"{extra} }}"#
        ))
    };
    let c = with("").unwrap();
    assert_ne!(c.shared_group(), c.group_id);
    assert_ne!(c.broadcast_group(), c.group_id);
    let custom = with(r#", "groupPrefix": "herald-prod""#).unwrap();
    assert_eq!(custom.shared_group(), "herald-prod");
    assert_eq!(custom.broadcast_group(), "herald-prod.n1");
    let err = with(r#", "groupPrefix": "stalwart""#)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("field `groupPrefix`") && err.contains("mail server"),
        "{err}"
    );
    // A prefix and node id that spell the mail server's group are refused too.
    let err = Config::parse(
        r#"{ "brokers": ["k:9092"], "groupId": "a.b", "groupPrefix": "a", "nodeId": "b" }"#,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("field `nodeId`"), "{err}");
    let err = with(r#", "groupPrefix": "bad name!""#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("field `groupPrefix`"), "{err}");
}

#[test]
fn config_trust_keys_kinds_and_stalwart_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = crate::trust::keys::NodeKey::load_or_create(&dir.path().join("k")).unwrap();
    let (id, public) = (key.id(), crate::trust::keys::public_key_text(&key.public()));
    let c = Config::parse(&with(&format!(
        r#""trust": {{"keys": {{"{id}": {{"publicKey": "{public}", "kinds": ["tls-certificate"]}}}},
            "require": ["ip-block"], "maxAge": {{"push": "1h"}}}}"#
    )))
    .unwrap();
    let trust = c.trust.unwrap();
    assert_eq!(trust.keys[id].kinds.as_ref().unwrap().len(), 1);
    assert_eq!(
        trust.require.iter().copied().collect::<Vec<_>>(),
        ["ip-block"]
    );
    assert_eq!(trust.max_age["push"], Duration::from_secs(3600));
    // Default once `trust` is set: every kind must be signed.
    let c = Config::parse(&with(r#""trust": {}"#)).unwrap();
    assert_eq!(c.trust.unwrap().require.len(), crate::event::KINDS.len());
    assert!(Config::parse(&with("")).unwrap().trust.is_none());

    let e = err(&with(&format!(
        r#""trust": {{"keys": {{"0000000000000000": {{"publicKey": "{public}", "kinds": ["*"]}}}}}}"#
    )));
    assert!(
        e.contains("trust.keys.0000000000000000") && e.contains(id),
        "{e}"
    );
    let e = err(&with(&format!(
        r#""trust": {{"keys": {{"{id}": {{"publicKey": "{public}", "kinds": ["ip-blok"]}}}}}}"#
    )));
    assert!(
        e.contains(&format!("trust.keys.{id}.kinds")) && e.contains("ip-blok"),
        "{e}"
    );
    let e = err(&with(r#""trust": {"maxAge": {"push": "10ms"}}"#));
    assert!(e.contains("trust.maxAge.push"), "{e}");
    let e = err(&with(
        r#""stalwart": {"enabled": true, "nodeId": 9}, "trust": {}"#,
    ));
    assert!(e.contains("trust.stalwart"), "{e}");
    let e = err(&with(r#""certificates": {"sealTo": ["age1nope"]}"#));
    assert!(e.contains("certificates.sealTo[0]"), "{e}");
}

#[test]
fn config_firewall_nftables_defaults_and_errors_name_the_field() {
    assert_eq!(Config::parse(&with("")).unwrap().firewall.nftables, None);
    let c = Config::parse(&with(r#""firewall": {"nftables": {}}"#)).unwrap();
    assert_eq!(c.firewall.nftables, Some(Nftables::default()));
    let c = Config::parse(&with(
        r#""firewall": {"nftables": {"table": "edge_1", "family": "ip6", "hook": "prerouting", "priority": -300}}"#,
    ))
    .unwrap();
    assert_eq!(
        c.firewall.nftables,
        Some(Nftables {
            table: "edge_1".into(),
            family: NftFamily::Ip6,
            hook: NftHook::Prerouting,
            priority: -300
        })
    );
    for (bad, field) in [
        (
            r#"{"nftables": {"table": "her ald"}}"#,
            "firewall.nftables.table",
        ),
        (
            r#"{"nftables": {"table": "1herald"}}"#,
            "firewall.nftables.table",
        ),
        (
            r#"{"nftables": {"table": "x\"; flush ruleset"}}"#,
            "firewall.nftables.table",
        ),
        (
            r#"{"nftables": {"family": "bridge"}}"#,
            "firewall.nftables.family",
        ),
        (
            r#"{"nftables": {"hook": "output"}}"#,
            "firewall.nftables.hook",
        ),
        (
            r#"{"nftables": {"priority": "first"}}"#,
            "firewall.nftables.priority",
        ),
        (r#"{"nftables": {"prio": 1}}"#, "firewall.nftables"),
        (r#"{"iptables": {}}"#, "firewall"),
    ] {
        let e = err(&with(&format!(r#""firewall": {bad}"#)));
        assert!(e.contains(&format!("field `{field}")), "{bad}: {e}");
    }
}

#[test]
fn config_push_vapid() {
    let c = Config::parse(COORDINATOR).unwrap();
    assert_eq!(c.push_vapid, PushVapid::default());
    assert_eq!(
        c.push_vapid_key_file(),
        std::path::Path::new("/var/lib/herald/vapid.key")
    );
    let c = Config::parse(&with(
        r#""stateDir": "/srv/herald", "push": {"vapid": {"subject": "mailto:ops@example.com"}}"#,
    ))
    .unwrap();
    assert_eq!(
        c.push_vapid_key_file(),
        std::path::Path::new("/srv/herald/vapid.key")
    );
    assert_eq!(
        c.push_vapid.subject.as_deref(),
        Some("mailto:ops@example.com")
    );
    let c = Config::parse(&with(
        r#""push": {"vapid": {"keyFile": "/etc/herald/vapid.key", "subject": "https://example.com/ops"}}"#,
    ))
    .unwrap();
    assert_eq!(
        c.push_vapid_key_file(),
        std::path::Path::new("/etc/herald/vapid.key")
    );

    let e = err(&with(
        r#""push": {"vapid": {"subject": "ops@example.com"}}"#,
    ));
    assert!(e.contains("field `push.vapid.subject`"), "{e}");
    assert!(e.contains("mailto:"), "{e}");
    let e = err(&with(r#""push": {"vapid": {"keyFile": ""}}"#));
    assert!(e.contains("field `push.vapid.keyFile`"), "{e}");
    let e = err(&with(r#""push": {"vapid": {"key": "x"}}"#));
    assert!(e.contains("push.vapid"), "{e}");
}

#[test]
fn config_certificate_hooks_are_checked() {
    let c = Config::parse(&with(
        r#""certificates": {"hooks": [{"domains": ["*.example.com"], "command": ["systemctl", "reload", "nginx"]}]}"#,
    ))
    .unwrap();
    let hook = &c.certificates.hooks[0];
    assert_eq!(hook.name, "systemctl");
    assert_eq!(hook.timeout, Duration::from_secs(30));
    for (bad, field) in [
        (
            r#"{"domains": ["*"], "command": []}"#,
            "certificates.hooks[0].command",
        ),
        (
            r#"{"domains": [], "command": ["x"]}"#,
            "certificates.hooks[0].domains",
        ),
        (
            r#"{"domains": ["a b"], "command": ["x"]}"#,
            "certificates.hooks[0].domains",
        ),
        (
            r#"{"domains": ["*"], "command": ["x"], "timeout": "2h"}"#,
            "certificates.hooks[0].timeout",
        ),
        (
            r#"{"domains": ["*"], "command": ["x"], "shell": true}"#,
            "certificates.hooks[0]",
        ),
    ] {
        let e = err(&with(&format!(r#""certificates": {{"hooks": [{bad}]}}"#)));
        assert!(e.contains(&format!("field `{field}")), "{bad}: {e}");
    }
}

#[test]
fn config_api_tokens_are_scoped() {
    let c = Config::parse(&with(
        r#""api": {"tokens": [
            {"name": "stalwart", "token": "s3cret", "scopes": ["read", "publish"],
             "publishKinds": ["state-change", "push"]},
            {"name": "acme", "tokenFile": "/etc/herald/acme.token", "scopes": ["certificates"]}]}"#,
    ))
    .unwrap();
    assert_eq!(c.api.tokens.len(), 2);
    let mail = &c.api.tokens[0];
    assert!(mail.scopes.contains(&Scope::Publish) && !mail.scopes.contains(&Scope::Admin));
    assert_eq!(
        mail.publish_kinds
            .as_ref()
            .unwrap()
            .iter()
            .collect::<Vec<_>>(),
        ["push", "state-change"]
    );
    assert!(!format!("{c:?}").contains("s3cret"));
    for (tokens, field) in [
        (r#"[{"name": "x", "scopes": ["read"]}]"#, "api.tokens[0]"),
        (
            r#"[{"name": "x", "token": "t", "scopes": []}]"#,
            "api.tokens[0].scopes",
        ),
        (
            r#"[{"name": "x", "token": "t", "scopes": ["root"]}]"#,
            "root",
        ),
        (
            r#"[{"name": "x", "token": "t", "scopes": ["read"], "publishKinds": ["push"]}]"#,
            "api.tokens[0].publishKinds",
        ),
        (
            r#"[{"name": "x", "token": "t", "scopes": ["publish"], "publishKinds": ["ip-blok"]}]"#,
            "ip-blok",
        ),
        (
            r#"[{"name": "x", "token": "t", "scopes": ["read"]}, {"name": "x", "token": "u", "scopes": ["read"]}]"#,
            "api.tokens[1].name",
        ),
    ] {
        let e = err(&with(&format!(r#""api": {{"tokens": {tokens}}}"#)));
        assert!(e.contains(field), "{tokens}: {e}");
    }
}

#[test]
fn config_probe_interval_is_checked() {
    assert_eq!(
        Config::parse(&with("")).unwrap().probe_interval,
        DEFAULT_PROBE_INTERVAL
    );
    assert_eq!(
        Config::parse(&with(r#""probeInterval": 0"#))
            .unwrap()
            .probe_interval,
        Duration::ZERO
    );
    let e = err(&with(r#""probeInterval": "10ms""#));
    assert!(e.contains("field `probeInterval`"), "{e}");
}

#[test]
fn config_stalwart_management_reads_its_secret_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "API_abc\n").unwrap();
    let section = |m: &str| {
        with(&format!(
            r#""stalwart": {{"enabled": true, "nodeId": 9, "management": {m}}}"#
        ))
    };
    let c = Config::parse(&section(&format!(
        r#"{{"url": "https://mail-1.example.com/", "apiKeyFile": "{}"}}"#,
        key.display()
    )))
    .unwrap();
    let m = c.stalwart.management.unwrap();
    assert_eq!(m.url, "https://mail-1.example.com");
    assert!(m.auth == ManagementAuth::Bearer("API_abc".into()));
    assert_eq!(m.timeout, Duration::from_secs(5));
    // The secret never shows in the config's debug form.
    assert!(!format!("{m:?}").contains("API_abc"));

    let e = err(&section(
        r#"{"url": "https://m", "apiKeyFile": "/nonexistent/key"}"#,
    ));
    assert!(
        e.contains("field `stalwart.management.apiKeyFile`: cannot read /nonexistent/key"),
        "{e}"
    );
    let e = err(&section(r#"{"url": "ftp://m", "apiKeyFile": "/k"}"#));
    assert!(e.contains("field `stalwart.management.url`"), "{e}");
    let e = err(&section(&format!(
        r#"{{"url": "https://m", "apiKeyFile": "{}", "username": "admin"}}"#,
        key.display()
    )));
    assert!(e.contains("either `apiKeyFile`"), "{e}");
    let e = err(&with(&format!(
        r#""stalwart": {{"management": {{"url": "https://m", "apiKeyFile": "{}"}}}}"#,
        key.display()
    )));
    assert!(e.contains("`stalwart.enabled` is not true"), "{e}");
}
