use std::os::unix::fs::PermissionsExt;

use super::keys::*;
use super::*;
use crate::event::{Event, Position};

fn node_key(dir: &std::path::Path, name: &str) -> NodeKey {
    NodeKey::load_or_create(&dir.join(name)).unwrap().0
}

fn policy(keys: &[(&NodeKey, Option<&[&'static str]>)]) -> Policy {
    Policy::new(keys.iter().map(|(k, kinds)| TrustedKey {
        key: k.public(),
        kinds: kinds.map(|k| k.iter().copied().collect()),
    }))
}

const BLOCK: &[u8] = br#"{"v":1,"id":"e1","kind":"ip-block","origin":"n1","ts":1000,"body":{"ip":"198.18.0.1","action":"block","reason":"r"}}"#;

fn signed(k: &NodeKey, key: &[u8], value: &[u8]) -> Signature {
    Signature {
        key_id: k.id().as_bytes().to_vec(),
        signature: signature_text(&k.sign(Some(key), value)).into_bytes(),
    }
}

/// Verify and admit as the decoder does.
fn check(p: &Policy, key: &[u8], value: &[u8], sig: Option<&Signature>) -> Result<(), Untrusted> {
    let signer = p.verify(Some(key), value, sig)?;
    let event = Event::from_json(value, Position::default()).unwrap();
    p.admit(&event, signer.as_ref(), 2000)
}

#[test]
fn signed_records_verify_and_any_change_breaks_them() {
    let dir = tempfile::tempdir().unwrap();
    let k = node_key(dir.path(), "a.key");
    let p = policy(&[(&k, None)]);
    let sig = signed(&k, b"ip:198.18.0.1", BLOCK);
    assert_eq!(check(&p, b"ip:198.18.0.1", BLOCK, Some(&sig)), Ok(()));

    let tampered = String::from_utf8(BLOCK.to_vec())
        .unwrap()
        .replace("198.18.0.1", "198.18.0.2");
    let e = check(&p, b"ip:198.18.0.1", tampered.as_bytes(), Some(&sig)).unwrap_err();
    assert_eq!(e.reason(), "bad-signature");
    // The same value under another entity's key.
    let e = check(&p, b"ip:198.18.0.9", BLOCK, Some(&sig)).unwrap_err();
    assert_eq!(e.reason(), "bad-signature");
    // Another key claiming this key's id.
    let other = node_key(dir.path(), "b.key");
    let mut forged = signed(&other, b"ip:198.18.0.1", BLOCK);
    forged.key_id = k.id().as_bytes().to_vec();
    let e = check(&p, b"ip:198.18.0.1", BLOCK, Some(&forged)).unwrap_err();
    assert_eq!(e.reason(), "bad-signature");
    assert!(e.to_string().contains(k.id()), "{e}");
}

#[test]
fn unknown_keys_unsigned_kinds_and_malformed_headers_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (k, stranger) = (node_key(dir.path(), "a"), node_key(dir.path(), "b"));
    let p = policy(&[(&k, None)]);
    let e = check(&p, b"k", BLOCK, Some(&signed(&stranger, b"k", BLOCK))).unwrap_err();
    assert_eq!(
        e,
        Untrusted::UnknownKey {
            id: stranger.id().into()
        }
    );
    let e = check(&p, b"k", BLOCK, None).unwrap_err();
    assert_eq!(e, Untrusted::Unsigned { kind: "ip-block" });
    assert!(e.to_string().contains("trust.require"), "{e}");
    let mut bad = signed(&k, b"k", BLOCK);
    bad.signature = b"not base64!".to_vec();
    assert_eq!(
        check(&p, b"k", BLOCK, Some(&bad)).unwrap_err().reason(),
        "malformed-signature"
    );
    bad.signature = vec![b'A'; 10_000];
    assert_eq!(
        check(&p, b"k", BLOCK, Some(&bad)).unwrap_err().reason(),
        "malformed-signature"
    );

    // A kind left out of `require` may come unsigned; a bad signature is
    // refused all the same.
    let mut lax = p.clone();
    lax.require.remove("ip-block");
    assert_eq!(check(&lax, b"k", BLOCK, None), Ok(()));
    let mut wrong = signed(&k, b"k", BLOCK);
    wrong.signature = signed(&k, b"k", b"other").signature;
    assert_eq!(
        check(&lax, b"k", BLOCK, Some(&wrong)).unwrap_err().reason(),
        "bad-signature"
    );
}

#[test]
fn a_key_signs_only_its_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let acme = node_key(dir.path(), "acme");
    let p = policy(&[(&acme, Some(&["tls-certificate"]))]);
    let e = check(&p, b"k", BLOCK, Some(&signed(&acme, b"k", BLOCK))).unwrap_err();
    assert_eq!(
        e,
        Untrusted::KindNotAllowed {
            id: acme.id().into(),
            kind: "ip-block"
        }
    );
}

#[test]
fn max_age_bounds_replays() {
    let dir = tempfile::tempdir().unwrap();
    let k = node_key(dir.path(), "a");
    let mut p = policy(&[(&k, None)]);
    p.max_age.insert("ip-block", Duration::from_secs(1));
    let sig = signed(&k, b"k", BLOCK);
    // ts 1000 ms, checked at 2000 ms: one second old, allowed.
    assert_eq!(check(&p, b"k", BLOCK, Some(&sig)), Ok(()));
    let event = Event::from_json(BLOCK, Position::default()).unwrap();
    let signer = p.verify(Some(b"k"), BLOCK, Some(&sig)).unwrap();
    let e = p.admit(&event, signer.as_ref(), 62_000).unwrap_err();
    assert_eq!(e.reason(), "too-old");
    assert!(e.to_string().contains("trust.maxAge.ip-block"), "{e}");
}

#[test]
fn an_event_dated_ahead_of_the_clock_is_refused_and_cannot_outlive_max_age() {
    let dir = tempfile::tempdir().unwrap();
    let k = node_key(dir.path(), "a");
    let mut p = policy(&[(&k, None)]);
    p.max_age.insert("ip-block", Duration::from_secs(3600));
    let sig = signed(&k, b"k", BLOCK);
    let event = Event::from_json(BLOCK, Position::default()).unwrap();
    let signer = p.verify(Some(b"k"), BLOCK, Some(&sig)).unwrap();
    // ts is 1 000 ms: within the default five minutes of a clock at 0 ...
    assert_eq!(p.admit(&event, signer.as_ref(), 0), Ok(()));
    // ... but ten years ahead of a clock at 1 000 - 10 years is refused,
    // where a saturating age of 0 would have let it through maxAge.
    let ten_years = 10 * 365 * 86_400_000u64;
    let mut ahead = event.clone();
    ahead.ts = ten_years;
    let e = p.admit(&ahead, signer.as_ref(), 1_000).unwrap_err();
    assert_eq!(e.reason(), "from-the-future");
    assert!(e.to_string().contains("trust.maxSkew"), "{e}");
    let mut strict = policy(&[(&k, None)]);
    strict.max_skew = Duration::from_secs(1);
    let signer = strict.verify(Some(b"k"), BLOCK, Some(&sig)).unwrap();
    ahead.ts = 2_001;
    assert_eq!(
        strict
            .admit(&ahead, signer.as_ref(), 1_000)
            .unwrap_err()
            .reason(),
        "from-the-future"
    );
    ahead.ts = 2_000;
    assert_eq!(strict.admit(&ahead, signer.as_ref(), 1_000), Ok(()));
}

#[test]
fn keys_are_sealed_to_the_cluster_and_plaintext_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (text, recipient) = new_sealing_identity();
    let path = dir.path().join("cluster.age");
    crate::durable::create_secret(&path, text.as_bytes()).unwrap();
    let unsealer = Unsealer::load(&path).unwrap();
    assert_eq!(unsealer.recipient(), recipient);
    let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
    let sealed = seal(&[recipient.parse().unwrap()], pem).unwrap();
    assert!(herald_guest::x509::is_sealed(&sealed));
    assert!(!sealed.contains("PRIVATE KEY"));
    assert_eq!(unsealer.unseal(&sealed).unwrap(), pem);

    // Another cluster's identity cannot open it.
    let (other, _) = new_sealing_identity();
    let other_path = dir.path().join("other.age");
    crate::durable::create_secret(&other_path, other.as_bytes()).unwrap();
    assert!(
        Unsealer::load(&other_path)
            .unwrap()
            .unseal(&sealed)
            .is_err()
    );

    let k = node_key(dir.path(), "a");
    let p = policy(&[(&k, None)]);
    let cert = |key: &str| {
        serde_json::json!({"v":1,"id":"c","kind":"tls-certificate","origin":"n","ts":1000,
            "body":{"domains":["mail.example.com"],"certificatePem":"x","privateKeyPem":key,
                    "notAfter":0}})
        .to_string()
    };
    let plain = cert(pem);
    let e = check(
        &p,
        b"k",
        plain.as_bytes(),
        Some(&signed(&k, b"k", plain.as_bytes())),
    );
    assert_eq!(e, Err(Untrusted::PlaintextKey));
    let ok = cert(&sealed);
    assert_eq!(
        check(
            &p,
            b"k",
            ok.as_bytes(),
            Some(&signed(&k, b"k", ok.as_bytes()))
        ),
        Ok(())
    );
}

#[test]
fn key_files_are_private_and_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.key");
    let (k, created) = NodeKey::load_or_create(&path).unwrap();
    assert!(created);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let (again, created) = NodeKey::load_or_create(&path).unwrap();
    assert!(!created);
    assert_eq!(again.id(), k.id());
    assert!(crate::durable::create_secret(&path, b"x").is_err());

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = NodeKey::load(&path).err().unwrap().to_string();
    assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");

    let junk = dir.path().join("junk.key");
    crate::durable::create_secret(&junk, b"hello").unwrap();
    let e = NodeKey::load(&junk).err().unwrap().to_string();
    assert!(e.contains("junk.key") && e.contains("PKCS#8"), "{e}");
}

#[test]
fn key_ids_and_public_keys_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let k = node_key(dir.path(), "a");
    let text = public_key_text(&k.public());
    assert_eq!(parse_public_key(&text).unwrap(), k.public());
    assert_eq!(key_id(&k.public()), k.id());
    assert_eq!(k.id().len(), 16);
    assert!(parse_public_key("AAAA").unwrap_err().contains("3 bytes"));
}
