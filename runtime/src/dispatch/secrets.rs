//! Whether a dead letter would hand its reader a plaintext private key.
//!
//! Decided on what a reader gets once the text is decoded, not on how its
//! bytes happen to be spelled: a JSON escape (`PRIVATE\u0020KEY`), a
//! changed case or a torn PEM label still carries the key's base64 body,
//! and so does a `privateKeyPem` field whatever its label says. A letter
//! that might hold one loses its payload (or its error text) instead; a
//! false alarm costs a payload, a miss leaks a TLS key, so the rules lean
//! to the first.

use serde_json::Value;

/// Whether `payload` (a record's value, as it would go to the letter)
/// holds a plaintext private key, in its bytes or in the JSON they decode
/// to.
pub fn payload_holds_key(payload: &[u8]) -> bool {
    if text_holds_key(&String::from_utf8_lossy(payload)) {
        return true;
    }
    // serde_json bounds the nesting (128 levels), so the walk is bounded too.
    serde_json::from_slice::<Value>(payload).is_ok_and(|v| json_holds_key(&v, 0))
}

/// How many layers of encoding are undone: JSON in a JSON string in a
/// JSON string is as far as a reader plausibly goes.
const LAYERS: usize = 4;

/// Whether an error text holds a PEM private key, as written or once its
/// escapes are undone (layer after layer).
pub fn text_holds_key(text: &str) -> bool {
    let mut text = std::borrow::Cow::Borrowed(text);
    for _ in 0..LAYERS {
        if pem_label(&text) {
            return true;
        }
        let decoded = unescape(&text);
        if decoded == *text {
            return false;
        }
        text = decoded.into();
    }
    pem_label(&text)
}

/// A decoded JSON value: any string that holds a PEM private key (or is
/// JSON that does), and any field named like a private key whose value is
/// not sealed.
fn json_holds_key(value: &Value, layer: usize) -> bool {
    match value {
        Value::String(s) => {
            text_holds_key(s)
                || (layer < LAYERS
                    && s.trim_start().starts_with(['{', '['])
                    && serde_json::from_str::<Value>(s)
                        .is_ok_and(|v| json_holds_key(&v, layer + 1)))
        }
        Value::Array(items) => items.iter().any(|v| json_holds_key(v, layer)),
        Value::Object(fields) => fields.iter().any(|(name, v)| {
            let named_key = squeeze(name).contains("PRIVATEKEY");
            let plain = v
                .as_str()
                .is_some_and(|s| !s.trim().is_empty() && !herald_guest::x509::is_sealed(s));
            (named_key && plain) || json_holds_key(v, layer)
        }),
        _ => false,
    }
}

/// A PEM "BEGIN … PRIVATE KEY" label, ignoring case, spaces and
/// punctuation ("-----BEGIN EC PRIVATE KEY-----", "begin  private-key").
/// Prose about "the private key" has no BEGIN before it and passes.
fn pem_label(text: &str) -> bool {
    let s = squeeze(text);
    let mut rest = s.as_str();
    while let Some(at) = rest.find("BEGIN") {
        rest = &rest[at + "BEGIN".len()..];
        // The longest label before PRIVATEKEY: "ENCRYPTED", "OPENSSH".
        let window = &rest[..rest.len().min(24)];
        if window.contains("PRIVATEKEY") {
            return true;
        }
    }
    false
}

/// Letters and digits only, upper-cased.
fn squeeze(text: &str) -> String {
    text.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Undo JSON-style escapes (`\u0020`, `\n`, `\/`) wherever they are, valid
/// or not: what a reader decoding the text once would see.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('u') => {
                let hex: String = chars.clone().take(4).collect();
                match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    Some(decoded) if hex.len() == 4 => {
                        out.push(decoded);
                        for _ in 0..4 {
                            chars.next();
                        }
                    }
                    _ => out.push('u'),
                }
            }
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49\n-----END PRIVATE KEY-----\n";

    #[test]
    fn a_key_is_found_however_it_is_spelled() {
        for spelled in [
            KEY.to_string(),
            KEY.replace("PRIVATE KEY", "EC PRIVATE KEY"),
            KEY.to_lowercase(),
            KEY.replace("PRIVATE KEY", "PRIVATE  KEY"),
            serde_json::json!({"x": KEY}).to_string(),
            serde_json::json!({"x": KEY})
                .to_string()
                .replace("PRIVATE KEY", "PRIVATE\\u0020KEY"),
            serde_json::json!({"x": KEY})
                .to_string()
                .replace("BEGIN", "\\u0042EGIN"),
            // Encoded twice: a JSON string holding an escaped one.
            serde_json::json!({"x": serde_json::json!({"y": KEY.replace("PRIVATE KEY", "PRIVATE\\u0020KEY")}).to_string()})
                .to_string(),
        ] {
            assert!(payload_holds_key(spelled.as_bytes()), "{spelled}");
        }
    }

    #[test]
    fn a_key_field_counts_whatever_its_label_says() {
        let torn =
            serde_json::json!({"body": {"privateKeyPem": "-----BEGIN PRIV ATE\nMIGHAgEA\n"}});
        assert!(payload_holds_key(torn.to_string().as_bytes()));
        let sealed = serde_json::json!({"body": {"privateKeyPem":
            "-----BEGIN AGE ENCRYPTED FILE-----\nYWdl\n-----END AGE ENCRYPTED FILE-----\n"}});
        assert!(!payload_holds_key(sealed.to_string().as_bytes()));
    }

    #[test]
    fn prose_and_public_keys_pass() {
        for text in [
            "certificates.install: the private key does not match the certificate",
            "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
        ] {
            assert!(!text_holds_key(text), "{text}");
            assert!(!payload_holds_key(text.as_bytes()), "{text}");
        }
        assert!(!payload_holds_key(&[0xff, 0x00, b'{', b'\\']));
    }
}
