//! The handler against the fixtures of tests/fixtures (see make.sh there).

use super::*;
use herald_guest::testing::{self, Effect, RecordingHost};
use herald_guest::{EffectError, Outcome};

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!("../tests/fixtures/", $name))
    };
}

const EC_CRT: &str = fixture!("ec.crt");
const EC_KEY: &str = fixture!("ec.key");
/// 2125-01-01T00:00:00Z, every 100-year fixture's notAfter.
const NOT_AFTER: u64 = 4_891_363_200_000;

fn run(host: &impl Host, domains: &[&str], crt: &str, key: &str) -> Outcome {
    herald_guest::handle::<Certificates>(host, &[testing::tls_certificate(domains, crt, key)])
        .remove(0)
}

fn installs(domains: &[&str], crt: &str, key: &str) {
    let host = RecordingHost::new();
    assert_eq!(run(&host, domains, crt, key), Outcome::Ok, "{domains:?}");
    assert_eq!(
        host.effects(),
        vec![Effect::InstallCertificate(Certificate {
            domains: domains.iter().map(|d| d.to_string()).collect(),
            chain_pem: crt.into(),
            private_key_pem: key.into(),
            not_after: NOT_AFTER,
        })]
    );
}

/// The reason a certificate is rejected for; nothing may be installed.
fn rejected(domains: &[&str], crt: &str, key: &str) -> String {
    let host = RecordingHost::new();
    let out = run(&host, domains, crt, key);
    assert!(host.effects().is_empty(), "{:?}", host.effects());
    match out {
        Outcome::Reject(reason) => reason,
        other => panic!("{other:?}"),
    }
}

#[test]
fn installs_ec_rsa_and_ed25519() {
    installs(&["mail.example.com", "imap.example.org"], EC_CRT, EC_KEY);
    installs(&["mail.example.com"], EC_CRT, fixture!("ec-sec1.key"));
    installs(
        &["mail.example.com"],
        fixture!("p384.crt"),
        fixture!("p384.key"),
    );
    installs(
        &["mail.example.com"],
        fixture!("rsa.crt"),
        fixture!("rsa.key"),
    );
    installs(
        &["mail.example.com"],
        fixture!("rsa.crt"),
        fixture!("rsa-pkcs1.key"),
    );
    installs(
        &["Mail.Example.COM"],
        fixture!("ed25519.crt"),
        fixture!("ed25519.key"),
    );
    installs(
        &["mail.example.net"],
        fixture!("chain.crt"),
        fixture!("chain.key"),
    );
    installs(
        &["legacy.example.net"],
        fixture!("cn-only.crt"),
        fixture!("cn-only.key"),
    );
}

#[test]
fn the_real_not_after_is_installed_not_the_claim() {
    let host = RecordingHost::new();
    let mut ev = testing::tls_certificate(&["mail.example.com"], EC_CRT, EC_KEY);
    if let herald_guest::Body::TlsCertificate(c) = &mut ev.body {
        c.not_after = u64::MAX;
    }
    assert_eq!(
        herald_guest::handle::<Certificates>(&host, &[ev]),
        vec![Outcome::Ok]
    );
    assert!(
        matches!(&host.effects()[..], [Effect::InstallCertificate(c)] if c.not_after == NOT_AFTER)
    );
}

#[test]
fn a_key_of_another_certificate_is_rejected() {
    let mismatch = "the private key does not match the certificate (leaf CN=mail.example.com)";
    assert_eq!(
        rejected(&["mail.example.com"], EC_CRT, fixture!("other.key")),
        mismatch
    );
    assert_eq!(
        rejected(
            &["mail.example.com"],
            fixture!("rsa.crt"),
            fixture!("other-rsa.key")
        ),
        mismatch
    );
    let r = rejected(&["mail.example.com"], EC_CRT, fixture!("rsa.key"));
    assert!(
        r.contains("does not match") && r.contains("RSA") && r.contains("ECDSA P-256"),
        "{r}"
    );
    let r = rejected(
        &["mail.example.com"],
        fixture!("ed25519.crt"),
        fixture!("p384.key"),
    );
    assert!(r.contains("does not match") && r.contains("Ed25519"), "{r}");
}

#[test]
fn expired_and_not_yet_valid_are_rejected() {
    let r = rejected(
        &["mail.example.net"],
        fixture!("expired.crt"),
        fixture!("expired.key"),
    );
    assert_eq!(r, "certificate expired at 2021-01-01T00:00:00Z");
    let r = rejected(
        &["mail.example.net"],
        fixture!("future.crt"),
        fixture!("future.key"),
    );
    assert_eq!(r, "certificate is not valid before 2100-01-01T00:00:00Z");
}

#[test]
fn uncovered_domains_are_rejected_by_name() {
    let r = rejected(&["mail.example.com", "other.example.com"], EC_CRT, EC_KEY);
    assert_eq!(
        r,
        "certificate does not cover `other.example.com` (names: mail.example.com, *.example.org)"
    );
    // The wildcard covers one label, no more and no less.
    for domain in ["example.org", "a.b.example.org", "example.com"] {
        let r = rejected(&[domain], EC_CRT, EC_KEY);
        assert!(r.contains(&format!("`{domain}`")), "{r}");
    }
    // Without subjectAltName the CN is the name.
    let r = rejected(
        &["mail.example.net"],
        fixture!("cn-only.crt"),
        fixture!("cn-only.key"),
    );
    assert_eq!(
        r,
        "certificate does not cover `mail.example.net` (names: legacy.example.net)"
    );
}

#[test]
fn unsupported_algorithms_are_named() {
    let r = rejected(
        &["mail.example.com"],
        fixture!("ed448.crt"),
        fixture!("ed448.key"),
    );
    assert!(r.contains("unsupported") && r.contains("Ed448"), "{r}");
}

#[test]
fn garbage_is_rejected() {
    let r = rejected(&["mail.example.com"], "hello", EC_KEY);
    assert_eq!(
        r,
        "cannot parse the certificate chain: no CERTIFICATE block"
    );
    let broken = "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n";
    let r = rejected(&["mail.example.com"], broken, EC_KEY);
    assert!(r.starts_with("cannot parse the certificate chain: "), "{r}");
    let junk = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let r = rejected(&["mail.example.com"], junk, EC_KEY);
    assert!(
        r.starts_with("cannot parse the certificate chain: certificate 1"),
        "{r}"
    );
    let r = rejected(&["mail.example.com"], &format!("{EC_CRT}{EC_KEY}"), EC_KEY);
    assert!(r.contains("PRIVATE KEY, not CERTIFICATE"), "{r}");
    let r = rejected(&["mail.example.com"], EC_CRT, "nope");
    assert!(r.starts_with("cannot parse the private key"), "{r}");
    let r = rejected(&["mail.example.com"], EC_CRT, EC_CRT);
    assert!(
        r.starts_with("cannot parse the private key") && r.contains("CERTIFICATE"),
        "{r}"
    );
}

#[test]
fn domains_must_be_given() {
    assert_eq!(
        rejected(&[], EC_CRT, EC_KEY),
        "no domains given for the certificate"
    );
    assert!(rejected(&["mail.example.com", ""], EC_CRT, EC_KEY).contains("empty domain"));
}

#[test]
fn wildcards_cover_exactly_one_label() {
    use herald_guest::x509::covers;
    assert!(covers("*.example.com", "mail.example.com"));
    assert!(covers("*.EXAMPLE.com", "Mail.example.com."));
    assert!(covers("*.example.com", "*.example.com"));
    assert!(!covers("*.example.com", "example.com"));
    assert!(!covers("*.example.com", "a.b.example.com"));
    assert!(!covers("*.example.com", ".example.com"));
    assert!(!covers("*.example.com", "mail.example.org"));
    assert!(!covers("mail.example.com", "imap.example.com"));
    assert!(!covers("m*.example.com", "mail.example.com"));
}

/// The node's store failing now is transient: the event is retried; a
/// certificate the node itself finds invalid is rejected.
#[test]
fn node_errors_go_by_class() {
    let host = RecordingHost::new().fail_install(EffectError::Transient("disk full".into()));
    assert_eq!(
        run(&host, &["mail.example.com"], EC_CRT, EC_KEY),
        Outcome::Retry("transient: disk full".into())
    );
    assert_eq!(host.effects().len(), 1);
    let host = RecordingHost::new().fail_install(EffectError::Invalid("bad domain".into()));
    assert_eq!(
        run(&host, &["mail.example.com"], EC_CRT, EC_KEY),
        Outcome::Reject("invalid: bad domain".into())
    );
}
