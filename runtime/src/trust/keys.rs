//! Key files: the node's Ed25519 signing key and the cluster's age identity
//! that unseals TLS private keys.
//!
//! Both are secrets, created and read as [`crate::durable::create_secret`]
//! and [`crate::durable::read_secret`] make and check them (0600).

use std::path::Path;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::durable;

/// The id of a public key: the first 8 bytes of its SHA-256, in hex. Short
/// enough for a header and a config line, long enough that two keys of one
/// cluster never share it by chance; the trust list checks that an id and
/// its key agree, so a typo cannot make one key pass for another.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// A public key as the config writes it: 32 bytes, standard base64.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let bytes = B64
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("{} bytes, an Ed25519 public key has 32", b.len()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "not a valid Ed25519 public key".to_string())
}

/// A public key in the config's form.
pub fn public_key_text(key: &VerifyingKey) -> String {
    B64.encode(key.as_bytes())
}

/// The key this process signs with, and its id.
pub struct NodeKey {
    key: SigningKey,
    id: String,
}

impl NodeKey {
    /// Load the key at `path`, creating it (0600, never over an existing
    /// file) if there is none. Answers whether it was created.
    pub fn load_or_create(path: &Path) -> anyhow::Result<(NodeKey, bool)> {
        match std::fs::symlink_metadata(path) {
            Ok(_) => Ok((NodeKey::load(path)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (key, pem) = new_signing_key()?;
                match durable::create_secret(path, pem.as_bytes()) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), id = key_id(&key.verifying_key()),
                            "created this node's signing key");
                        Ok((NodeKey::from_key(key), true))
                    }
                    // Another process made it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Ok((NodeKey::load(path)?, false))
                    }
                    Err(e) => Err(e).with_context(|| {
                        format!("cannot create the signing key {}", path.display())
                    }),
                }
            }
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Load an existing key file (PKCS#8 PEM, as `openssl genpkey -algorithm
    /// ed25519` writes it too).
    pub fn load(path: &Path) -> anyhow::Result<NodeKey> {
        let pem = read_secret(path)?;
        let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
            anyhow::anyhow!(
                "{}: not an Ed25519 private key in PKCS#8 PEM: {e}",
                path.display()
            )
        })?;
        Ok(NodeKey::from_key(key))
    }

    fn from_key(key: SigningKey) -> NodeKey {
        let id = key_id(&key.verifying_key());
        NodeKey { key, id }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn public(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The signature of a record with this record key and value.
    pub fn sign(&self, record_key: Option<&[u8]>, value: &[u8]) -> [u8; 64] {
        self.key
            .sign(&super::signed_message(record_key, value))
            .to_bytes()
    }
}

/// The cluster's age identity, which opens sealed TLS private keys.
pub struct Unsealer {
    identity: age::x25519::Identity,
}

impl Unsealer {
    /// Load an identity file (`AGE-SECRET-KEY-1…`, comments allowed), as
    /// `herald keys generate --sealing` or `age-keygen` writes it.
    pub fn load(path: &Path) -> anyhow::Result<Unsealer> {
        let text = read_secret(path)?;
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .with_context(|| format!("{}: no age identity in the file", path.display()))?;
        let identity = line
            .parse::<age::x25519::Identity>()
            .map_err(|e| anyhow::anyhow!("{}: not an age X25519 identity: {e}", path.display()))?;
        Ok(Unsealer { identity })
    }

    /// The plaintext of a sealed key. The error never contains key material.
    pub fn unseal(&self, sealed: &str) -> Result<String, String> {
        let plain = age::decrypt(&self.identity, sealed.as_bytes())
            .map_err(|e| format!("cannot unseal the private key: {e}"))?;
        String::from_utf8(plain).map_err(|_| "the unsealed private key is not text".into())
    }

    /// The recipient that seals to this identity (for `certificates.sealTo`).
    pub fn recipient(&self) -> String {
        self.identity.to_public().to_string()
    }
}

/// Seal a private key to the cluster's recipients (ASCII armor: it travels
/// inside a JSON string).
pub fn seal(recipients: &[age::x25519::Recipient], plaintext: &str) -> anyhow::Result<String> {
    use std::io::Write as _;
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .context("no recipient to seal the key to (certificates.sealTo)")?;
    let mut out = Vec::new();
    let armor = age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor)?;
    let mut writer = encryptor.wrap_output(armor)?;
    writer.write_all(plaintext.as_bytes())?;
    writer.finish()?.finish()?;
    Ok(String::from_utf8(out).expect("armor is ASCII"))
}

/// A new age identity file's text and its recipient.
pub fn new_sealing_identity() -> (String, String) {
    use age::secrecy::ExposeSecret;
    let id = age::x25519::Identity::generate();
    let recipient = id.to_public().to_string();
    let text = format!(
        "# herald sealing identity: opens TLS private keys sealed to\n# recipient: {recipient}\n{}\n",
        id.to_string().expose_secret()
    );
    (text, recipient)
}

/// A new signing key and its file's text (PKCS#8 PEM).
pub fn new_signing_key() -> anyhow::Result<(SigningKey, String)> {
    let key = SigningKey::generate(&mut rand_core::OsRng);
    let pem = key
        .to_pkcs8_pem(Default::default())
        .map_err(|e| anyhow::anyhow!("cannot encode a new signing key: {e}"))?;
    Ok((key, pem.to_string()))
}

/// A secret file's text; errors name the file.
fn read_secret(path: &Path) -> anyhow::Result<String> {
    durable::read_secret(path).map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))
}

/// The signature header's value for `sig`.
pub fn signature_text(sig: &[u8; 64]) -> String {
    B64.encode(sig)
}

/// Parse a signature header's value.
pub fn parse_signature(text: &[u8]) -> Option<ed25519_dalek::Signature> {
    let bytes = B64.decode(text).ok()?;
    let bytes: [u8; 64] = bytes.try_into().ok()?;
    Some(ed25519_dalek::Signature::from_bytes(&bytes))
}
