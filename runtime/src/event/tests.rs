//! The JSON envelope and bodies: accepted shapes and error messages.

use serde_json::Value;

use super::*;

fn parse(s: &str) -> Result<Event, DecodeError> {
    Event::from_json(s.as_bytes(), Position::default())
}

#[test]
fn design_example_parses_and_round_trips() {
    let line = r#"{"v":1,"id":"0f3c","kind":"ip-block","origin":"node-2","ts":1795690000000,
        "body":{"ip":"203.0.113.7","action":"block","reason":"auth failures","expiresAt":1795693600000}}"#;
    let ev = parse(line).unwrap();
    assert_eq!(
        ev.body,
        Body::IpBlock(IpBlock {
            ip: "203.0.113.7".into(),
            action: BlockAction::Block,
            reason: "auth failures".into(),
            expires_at: Some(1795693600000),
        })
    );
    let again = Event::from_json(ev.to_json().to_string().as_bytes(), Position::default());
    assert_eq!(again.unwrap(), ev);
}

#[test]
fn every_catalogue_body_parses() {
    let bodies = [
        (
            "state-change",
            r#"{"accountId":5,"changeId":300,"types":["Email","Mailbox","Thread"]}"#,
        ),
        (
            "push",
            r#"{"accountId":5,"endpoint":"https://push.example/sub/abc","payload":"x","ttl":60,"urgency":"normal"}"#,
        ),
        (
            "tls-certificate",
            r#"{"domains":["mail.example.com"],"certificatePem":"a","privateKeyPem":"b","notAfter":1}"#,
        ),
        (
            "cache-invalidate",
            r#"{"items":[{"cache":"access-token","id":7},{"cache":"email-negative","domainId":2,"hash":305419896}]}"#,
        ),
        ("settings-reload", "{}"),
        ("queue-status", r#"{"running":true}"#),
        (
            "registry-change",
            r#"{"action":"insert","objectType":17,"id":123456789012}"#,
        ),
    ];
    for (kind, body) in bodies {
        let line =
            format!(r#"{{"v":1,"id":"e","kind":"{kind}","origin":"n","ts":1,"body":{body}}}"#);
        let ev = parse(&line).unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(ev.body.kind(), kind);
        let back: Value = serde_json::from_str(body).unwrap();
        assert_eq!(ev.body.to_json(), back, "{kind} round trip");
    }
}

#[test]
fn errors_name_the_field() {
    let e = parse(
        r#"{"v":1,"id":"e","kind":"ip-block","origin":"n","ts":1,"body":{"action":"block"}}"#,
    )
    .unwrap_err();
    assert!(e.0.contains("ip-block") && e.0.contains("`ip`"), "{e}");
    let e =
        parse(r#"{"v":2,"id":"e","kind":"ip-block","origin":"n","ts":1,"body":{}}"#).unwrap_err();
    assert!(e.0.contains("`v`"), "{e}");
    let e = parse(r#"{"v":1,"id":"e","kind":"nope","origin":"n","ts":1,"body":{}}"#).unwrap_err();
    assert!(e.0.contains("unknown kind `nope`"), "{e}");
    let e = parse(r#"{"v":1,"id":"e","kind":"state-change","origin":"n","ts":1,"body":{"accountId":1,"changeId":2,"types":["Mail"]}}"#)
        .unwrap_err();
    assert!(e.0.contains("unknown data type `Mail`"), "{e}");
}

#[test]
fn unknown_data_type_bits_survive_json() {
    let t = DataTypes(1 | (1 << 40));
    let j = serde_json::to_string(&t).unwrap();
    assert_eq!(j, r#"["Email","bit40"]"#);
    assert_eq!(serde_json::from_str::<DataTypes>(&j).unwrap(), t);
}
