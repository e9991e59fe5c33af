//! `herald keys` and `herald cert publish`: the operator's side of signed
//! events and sealed private keys.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use serde_json::json;

use crate::config::Config;
use crate::event::{Body, Event, TlsCertificate};
use crate::kafka::producer::Producer;
use crate::trust::keys::{
    self, NodeKey, key_id, new_sealing_identity, new_signing_key, public_key_text,
};

/// `herald keys generate --out F [--sealing]`: write a new signing key (or,
/// with `sealing`, the cluster's age identity) to `out`, mode 0600, never
/// over an existing file; print what other nodes' configs need.
pub fn generate(out_path: &Path, sealing: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let create = |text: &str| {
        crate::durable::create_secret(out_path, text.as_bytes()).with_context(|| {
            format!(
                "cannot create {} (an existing file is never overwritten)",
                out_path.display()
            )
        })
    };
    if sealing {
        let (text, recipient) = new_sealing_identity();
        create(&text)?;
        writeln!(out, "sealing identity: {}", out_path.display())?;
        writeln!(out, "recipient:        {recipient}")?;
        writeln!(
            out,
            "every node: \"certificates\": {{\"identityFile\": \"{}\"}} (copy the file, mode 0600)",
            out_path.display()
        )?;
        writeln!(
            out,
            "publishers: \"certificates\": {{\"sealTo\": [\"{recipient}\"]}}"
        )?;
    } else {
        let (key, pem) = new_signing_key()?;
        create(&pem)?;
        print_key(out_path, &key.verifying_key(), out)?;
    }
    Ok(())
}

/// `herald keys show --config F`: the node's signing key id and public key
/// (created if the node has not made it yet), and the config entry that
/// trusts it.
pub fn show(config: &Path, out: &mut dyn Write) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    let path = config.signing_key_path();
    let (key, created) = NodeKey::load_or_create(&path)
        .with_context(|| format!("signing key (`signingKey`, {})", path.display()))?;
    if created {
        writeln!(out, "(created {})", path.display())?;
    }
    print_key(&path, &key.public(), out)
}

fn print_key(
    path: &Path,
    public: &ed25519_dalek::VerifyingKey,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let (id, text) = (key_id(public), public_key_text(public));
    writeln!(out, "signing key: {}", path.display())?;
    writeln!(out, "key id:      {id}")?;
    writeln!(out, "public key:  {text}")?;
    writeln!(
        out,
        "trust entry: \"{id}\": {}",
        json!({"publicKey": text, "kinds": ["*"]})
    )?;
    Ok(())
}

/// `herald cert publish`: check a certificate and its key, seal the key to
/// `certificates.sealTo`, sign and publish a `tls-certificate` event; print
/// where it landed. The plaintext key never leaves this process.
pub async fn publish_certificate(
    config: &Path,
    domains: &[String],
    cert: &Path,
    key: &Path,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    let recipients = config.certificates.recipients();
    if recipients.is_empty() {
        bail!(
            "certificates.sealTo is empty: name the cluster's age recipient (age1…; \
             `herald keys generate --sealing` prints it) so the key can be sealed"
        );
    }
    let read = |p: &Path| {
        std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))
    };
    let (chain, plain_key) = (read(cert)?, read(key)?);
    let now = (crate::event::now_ms() / 1000) as i64;
    let not_after = herald_guest::x509::check(domains, &chain, &plain_key, now)
        .map_err(|e| anyhow::anyhow!("{} with {}: {e}", cert.display(), key.display()))?;
    let sealed = keys::seal(&recipients, &plain_key)?;
    drop(plain_key);
    let event = Event::new(
        &config.node_id,
        Body::TlsCertificate(TlsCertificate {
            domains: domains.to_vec(),
            certificate_pem: chain,
            private_key_pem: sealed,
            not_after,
        }),
    );
    let producer = Producer::new(&config)?;
    let delivered = producer.publish(&event).await?;
    writeln!(
        out,
        "{}",
        json!({"topic": delivered.topic, "partition": delivered.partition,
               "offset": delivered.offset, "id": event.id, "kind": "tls-certificate",
               "domains": domains, "notAfter": not_after,
               "keyId": producer.signing_key().id()})
    )?;
    Ok(())
}

/// `herald cert force`: check a certificate and its key and install them in
/// this node's store (`stateDir`), whatever version or notAfter is
/// installed. The install gets the version (now, `force-<node>`): a replay
/// of anything older stays stale, and the cluster's next certificate for the
/// domain, newer still, replaces it. The reload hooks are the operator's to
/// run (`systemctl reload` the mail server) once this returns.
pub fn force_certificate(
    config: &Path,
    domains: &[String],
    cert: &Path,
    key: &Path,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    let read = |p: &Path| {
        std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))
    };
    let (chain, plain_key) = (read(cert)?, read(key)?);
    let now_ms = crate::event::now_ms();
    let not_after = herald_guest::x509::check(domains, &chain, &plain_key, (now_ms / 1000) as i64)
        .map_err(|e| anyhow::anyhow!("{} with {}: {e}", cert.display(), key.display()))?;
    let store = crate::effects::certs::CertStore::open(&config.state_dir)?;
    let version = crate::event::Version::new(now_ms, &format!("force-{}", config.node_id));
    let report = store.install_at(domains, &chain, &plain_key, not_after, Some(&version), true)?;
    writeln!(
        out,
        "{}",
        json!({"installed": report.changed, "notAfter": not_after, "version": version,
               "stateDir": config.state_dir})
    )?;
    Ok(())
}
