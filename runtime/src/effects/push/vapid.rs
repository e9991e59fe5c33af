//! VAPID (RFC 8292): how the node identifies itself to push services.
//!
//! Every push request carries `Authorization: vapid t=<JWT>, k=<key>`: `k`
//! is the node's P-256 public key (base64url, uncompressed), the same key
//! web clients gave the browser as `applicationServerKey` when they
//! subscribed, and `t` a JWT signed with ES256 by its private key, with
//! claims `aud` (the origin of the push endpoint), `exp` (12 hours ahead,
//! under RFC 8292's 24-hour limit) and, when `push.vapid.subject` is set,
//! `sub` (a `mailto:` or `https:` URL where the push service can reach the
//! operator). A token is reused for the same origin for up to an hour.
//!
//! A browser subscription is bound to one `applicationServerKey`, so every
//! node of a cluster must sign with the same key. The key lives in a file
//! (`push.vapid.keyFile`, default `<stateDir>/vapid.key`): a PEM P-256
//! private key (PKCS#8 `PRIVATE KEY` or SEC1 `EC PRIVATE KEY`, as
//! `openssl ecparam -name prime256v1 -genkey -noout` writes), or the 32-byte
//! key in base64url on one line (as the `web-push` tools print it). If the
//! file does not exist, a new key is created there (PKCS#8 PEM, mode 0600,
//! written to a temporary file and linked into place, so that two processes
//! never both create one and a reader never sees half a key). A file that is
//! readable or writable by anyone but its owner is refused.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use anyhow::anyhow;
use base64::Engine;
use p256::SecretKey;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rand_core::OsRng;

use super::ece::b64url;

/// The file's name in the state directory when the config names none.
pub const DEFAULT_KEY_FILE: &str = "vapid.key";
/// How long a token is valid (`exp` - now).
pub const TOKEN_LIFETIME_SECS: u64 = 12 * 3600;
/// How long a token is reused for the same origin.
const TOKEN_REUSE_SECS: u64 = 3600;
/// Origins whose token is kept; beyond that the cache starts over.
const MAX_CACHED: usize = 10_000;

/// The node's VAPID identity: its key and the `sub` claim.
pub struct Vapid {
    key: SigningKey,
    /// `k=`: the public key, base64url, uncompressed (65 bytes).
    public: String,
    subject: Option<String>,
    /// origin → (token, exp).
    tokens: Mutex<HashMap<String, (String, u64)>>,
}

impl std::fmt::Debug for Vapid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vapid")
            .field("public", &self.public)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl Vapid {
    /// The key in `path`, created there if the file does not exist. See the
    /// [module documentation](self) for the formats and the rules.
    pub fn load_or_create(path: &Path, subject: Option<String>) -> anyhow::Result<Vapid> {
        let key = match std::fs::symlink_metadata(path) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => create(path)?,
            _ => read(path)?,
        };
        Ok(Vapid::new(key, subject))
    }

    /// The key in `path`, which must exist.
    pub fn load(path: &Path, subject: Option<String>) -> anyhow::Result<Vapid> {
        Ok(Vapid::new(read(path)?, subject))
    }

    fn new(key: SecretKey, subject: Option<String>) -> Vapid {
        let public = b64url(key.public_key().to_encoded_point(false).as_bytes());
        Vapid {
            key: SigningKey::from(key),
            public,
            subject,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// The public key, base64url (no padding) of the 65-byte uncompressed
    /// point: `k=` of every request, and the `applicationServerKey` web
    /// clients subscribe with.
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// The `Authorization` header for a request to `origin` (scheme, host
    /// and port of the endpoint, as `Url::origin` writes it) at `now`
    /// (Unix seconds).
    pub fn authorization(&self, origin: &str, now: u64) -> String {
        let mut tokens = super::lock(&self.tokens);
        let token = match tokens.get(origin) {
            Some((token, exp)) if *exp >= now + TOKEN_LIFETIME_SECS - TOKEN_REUSE_SECS => {
                token.clone()
            }
            _ => {
                let exp = now + TOKEN_LIFETIME_SECS;
                let token = self.sign(origin, exp);
                if tokens.len() >= MAX_CACHED {
                    tokens.clear();
                }
                tokens.insert(origin.to_owned(), (token.clone(), exp));
                token
            }
        };
        format!("vapid t={token}, k={}", self.public)
    }

    /// A JWT for `aud`, valid until `exp`.
    fn sign(&self, aud: &str, exp: u64) -> String {
        let header = b64url(br#"{"typ":"JWT","alg":"ES256"}"#);
        let mut claims = serde_json::json!({"aud": aud, "exp": exp});
        if let Some(sub) = &self.subject {
            claims["sub"] = sub.clone().into();
        }
        let claims = b64url(claims.to_string().as_bytes());
        let signing_input = format!("{header}.{claims}");
        // ES256: ECDSA over SHA-256, the signature as r | s (64 bytes).
        let signature: Signature = self.key.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", b64url(&signature.to_bytes()))
    }
}

/// Is `subject` a `sub` RFC 8292 accepts: a `mailto:` or `https:` URL?
pub fn check_subject(subject: &str) -> Result<(), String> {
    let ok = match subject.split_once(':') {
        Some(("mailto", rest)) => rest.contains('@') && !rest.contains(char::is_whitespace),
        Some(("https", rest)) => {
            rest.starts_with("//") && rest.len() > 2 && !rest.contains(char::is_whitespace)
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{subject}` is not a mailto: or https: URL (like \"mailto:postmaster@example.com\")"
        ))
    }
}

fn read(path: &Path) -> anyhow::Result<SecretKey> {
    let shown = path.display();
    let text =
        crate::durable::read_secret(path).map_err(|e| anyhow!("VAPID key file {shown}: {e:#}"))?;
    parse_key(&text).map_err(|why| anyhow!("VAPID key file {shown}: {why}"))
}

/// A P-256 private key: PKCS#8 or SEC1 PEM, or 32 bytes in base64url.
fn parse_key(text: &str) -> Result<SecretKey, String> {
    let text = text.trim();
    if text.contains("-----BEGIN PRIVATE KEY-----") {
        return SecretKey::from_pkcs8_pem(text)
            .map_err(|err| format!("not a PKCS#8 P-256 private key ({err})"));
    }
    if text.contains("-----BEGIN EC PRIVATE KEY-----") {
        return SecretKey::from_sec1_pem(text)
            .map_err(|err| format!("not a SEC1 P-256 private key ({err})"));
    }
    if text.is_empty() {
        return Err("empty".into());
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| {
            "not a P-256 private key (PEM `PRIVATE KEY` or `EC PRIVATE KEY`, or 32 bytes in base64url)"
                .to_string()
        })?;
    if bytes.len() != 32 {
        return Err(format!(
            "{} bytes of base64url, not the 32 of a P-256 private key",
            bytes.len()
        ));
    }
    SecretKey::from_slice(&bytes).map_err(|_| "not a valid P-256 private key".into())
}

/// A new key in `path`, which does not exist (see
/// [`crate::durable::create_secret`]); if a file appeared there meanwhile,
/// that one is read instead.
fn create(path: &Path) -> anyhow::Result<SecretKey> {
    let shown = path.display();
    let key = SecretKey::random(&mut OsRng);
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|err| anyhow!("VAPID key file {shown}: encoding the new key: {err}"))?;
    match crate::durable::create_secret(path, pem.as_bytes()) {
        Ok(()) => {
            tracing::info!(path = %shown, "created a new VAPID key");
            Ok(key)
        }
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => read(path),
        Err(err) => Err(anyhow!("VAPID key file {shown}: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::VerifyingKey;
    use p256::ecdsa::signature::Verifier;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_a_0600_key_once_and_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/vapid.key");
        let one = Vapid::load_or_create(&path, None).unwrap();
        assert_eq!(mode(&path), 0o600);
        let two = Vapid::load_or_create(&path, None).unwrap();
        assert_eq!(one.public_key(), two.public_key());
        assert_eq!(
            Vapid::load(&path, None).unwrap().public_key(),
            one.public_key()
        );
        // 65 bytes, uncompressed.
        let public = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(one.public_key())
            .unwrap();
        assert_eq!((public.len(), public[0]), (65, 4));
        // No temporary file left behind.
        assert_eq!(
            std::fs::read_dir(dir.path().join("sub")).unwrap().count(),
            1
        );
    }

    #[test]
    fn concurrent_creators_agree_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vapid.key");
        let keys: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| Vapid::load_or_create(&path, None).unwrap().public.clone()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
    }

    #[test]
    fn refuses_open_unreadable_missing_and_malformed_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vapid.key");
        let err = Vapid::load(&path, None).unwrap_err();
        assert!(format!("{err:#}").contains("cannot read it"), "{err:#}");

        Vapid::load_or_create(&path, None).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Vapid::load_or_create(&path, None).unwrap_err().to_string();
        assert!(
            err.contains("mode 0644") && err.contains("chmod 600"),
            "{err}"
        );

        for (text, want) in [
            ("", "empty"),
            ("hello", "not a P-256 private key"),
            ("AAAA", "3 bytes of base64url"),
            (
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "not a PKCS#8 P-256 private key",
            ),
            (
                "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
                "not a SEC1 P-256 private key",
            ),
            // The scalar 0 is not a private key.
            (
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                "not a valid P-256",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let err = Vapid::load_or_create(&path, None).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(err.starts_with("VAPID key file "), "{err}");
        }

        std::fs::create_dir(dir.path().join("dir")).unwrap();
        let err = Vapid::load_or_create(&dir.path().join("dir"), None).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn reads_sec1_pem_and_base64url_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vapid.key");
        let key = SecretKey::random(&mut OsRng);
        let public = b64url(key.public_key().to_encoded_point(false).as_bytes());
        for text in [
            key.to_sec1_pem(LineEnding::LF).unwrap().to_string(),
            format!("{}\n", b64url(&key.to_bytes())),
        ] {
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
            assert_eq!(Vapid::load(&path, None).unwrap().public_key(), public);
            std::fs::remove_file(&path).unwrap();
        }
    }

    fn claims(token: &str) -> serde_json::Value {
        let part = token.split('.').nth(1).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn tokens_are_es256_jwts_for_the_origin_reused_for_an_hour() {
        let vapid = Vapid::new(
            SecretKey::random(&mut OsRng),
            Some("mailto:ops@example.com".into()),
        );
        let now = 1_700_000_000;
        let header = vapid.authorization("https://push.example", now);
        let (t, k) = header
            .strip_prefix("vapid t=")
            .unwrap()
            .split_once(", k=")
            .unwrap();
        assert_eq!(k, vapid.public_key());
        let c = claims(t);
        assert_eq!(c["aud"], "https://push.example");
        assert_eq!(c["exp"], now + 12 * 3600);
        assert_eq!(c["sub"], "mailto:ops@example.com");
        let (input, signature) = t.rsplit_once('.').unwrap();
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .unwrap();
        assert_eq!(signature.len(), 64);
        let signature = Signature::from_slice(&signature).unwrap();
        let verifier: &VerifyingKey = vapid.key.as_ref();
        verifier.verify(input.as_bytes(), &signature).unwrap();
        let header_json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(input.split('.').next().unwrap())
            .unwrap();
        let header_json: serde_json::Value = serde_json::from_slice(&header_json).unwrap();
        assert_eq!(header_json["alg"], "ES256");

        // Reused within the hour, renewed after; another origin, another token.
        assert_eq!(
            vapid.authorization("https://push.example", now + 3599),
            header
        );
        let later = vapid.authorization("https://push.example", now + 3601);
        assert_ne!(later, header);
        assert_eq!(
            claims(
                later
                    .split([' ', ','])
                    .nth(1)
                    .unwrap()
                    .trim_start_matches("t=")
            )["exp"],
            now + 3601 + 12 * 3600
        );
        let other = vapid.authorization("https://other.example", now);
        assert_eq!(
            claims(
                other
                    .split([' ', ','])
                    .nth(1)
                    .unwrap()
                    .trim_start_matches("t=")
            )["aud"],
            "https://other.example"
        );

        // No subject, no `sub`.
        let bare = Vapid::new(SecretKey::random(&mut OsRng), None);
        let t = bare.authorization("https://push.example", now);
        let t = t.split([' ', ',']).nth(1).unwrap().trim_start_matches("t=");
        assert!(claims(t).get("sub").is_none());
    }

    #[test]
    fn subjects() {
        for ok in ["mailto:ops@example.com", "https://example.com/contact"] {
            check_subject(ok).unwrap();
        }
        for bad in [
            "ops@example.com",
            "http://example.com",
            "mailto:",
            "https:",
            "mailto:a @b",
            "",
        ] {
            assert!(check_subject(bad).is_err(), "{bad}");
        }
    }
}
