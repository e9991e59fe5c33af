//! Message encryption for Web Push: the `aes128gcm` content coding of
//! RFC 8188 with the key agreement of RFC 8291.
//!
//! A subscription gives two keys (browsers as `subscription.toJSON().keys`,
//! JMAP clients as `PushSubscription.keys`, RFC 8620 §7.2), both base64url:
//! `p256dh`, the user agent's P-256 public key (65 bytes, uncompressed), and
//! `auth`, a 16-byte secret. For every message a fresh P-256 key pair and a
//! fresh 16-byte salt are drawn; then
//!
//! ```text
//! ecdh_secret = ECDH(as_private, ua_public)
//! IKM   = HKDF(salt = auth, ikm = ecdh_secret,
//!              info = "WebPush: info" 0x00 ua_public as_public, L = 32)
//! PRK   = HKDF-Extract(salt, IKM)
//! CEK   = HKDF-Expand(PRK, "Content-Encoding: aes128gcm" 0x00, 16)
//! NONCE = HKDF-Expand(PRK, "Content-Encoding: nonce" 0x00, 12)
//! body  = salt | rs (u32, 4096) | idlen (65) | as_public
//!         | AES-128-GCM(CEK, NONCE, payload | 0x02 | padding)
//! ```
//!
//! The message is one record (RFC 8291 §4), so the whole body fits in 4096
//! bytes: at most [`MAX_PAYLOAD`] bytes of payload. No padding is added:
//! the push service sees the payload's length.
//!
//! RustCrypto does the work: `p256` (ECDH), `hkdf` with `sha2`, `aes-gcm`.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use base64::Engine;
use hkdf::Hkdf;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{PublicKey, SecretKey};
use rand_core::{OsRng, RngCore};
use sha2::Sha256;

/// The record size written in the header (RFC 8291 §4: a push message is
/// one record of at most 4096 bytes).
pub const RECORD_SIZE: u32 = 4096;
/// An uncompressed P-256 point: `0x04 | x | y`.
const POINT_LEN: usize = 65;
const SALT_LEN: usize = 16;
const AUTH_LEN: usize = 16;
const TAG_LEN: usize = 16;
/// salt, rs, idlen, keyid (the sender's public key).
const HEADER_LEN: usize = SALT_LEN + 4 + 1 + POINT_LEN;
/// The most payload one message can carry: 4096 bytes of body less the
/// header, the AEAD tag and the record delimiter (RFC 8291 §4: 3993).
pub const MAX_PAYLOAD: usize = RECORD_SIZE as usize - HEADER_LEN - TAG_LEN - 1;

/// base64url, with or without padding (browsers leave it out, some JMAP
/// clients keep it).
const B64URL: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// base64url without padding, as Web Push writes keys and tokens.
pub(crate) fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A subscription's keys, checked: who a message is encrypted for.
#[derive(Clone)]
pub struct Receiver {
    public: PublicKey,
    /// `public` as the subscription gave it (uncompressed): part of the key
    /// derivation.
    public_bytes: [u8; POINT_LEN],
    auth: [u8; AUTH_LEN],
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("p256dh", &b64url(&self.public_bytes))
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// The keys of a subscription, base64url. Errors name the field
    /// (`keys.p256dh`, `keys.auth`) and say what is wrong: not base64url,
    /// the wrong length, not a point on P-256.
    pub fn parse(p256dh: &str, auth: &str) -> Result<Receiver, String> {
        let public_bytes = decode("keys.p256dh", p256dh)?;
        let public_bytes: [u8; POINT_LEN] = match public_bytes.try_into() {
            Ok(bytes) => bytes,
            Err(bytes) => {
                return Err(format!(
                    "field `keys.p256dh`: {} bytes, not the 65 of an uncompressed P-256 public key",
                    bytes.len()
                ));
            }
        };
        if public_bytes[0] != 0x04 {
            return Err(
                "field `keys.p256dh`: not an uncompressed P-256 public key (it does not begin with 0x04)"
                    .into(),
            );
        }
        let public = PublicKey::from_sec1_bytes(&public_bytes)
            .map_err(|_| "field `keys.p256dh`: not a point on the P-256 curve".to_string())?;
        let auth = decode("keys.auth", auth)?;
        let auth: [u8; AUTH_LEN] = auth.try_into().map_err(|bytes: Vec<u8>| {
            format!(
                "field `keys.auth`: {} bytes, not the 16 of a Web Push authentication secret",
                bytes.len()
            )
        })?;
        Ok(Receiver {
            public,
            public_bytes,
            auth,
        })
    }
}

fn decode(field: &str, text: &str) -> Result<Vec<u8>, String> {
    if text.is_empty() {
        return Err(format!("field `{field}`: empty"));
    }
    // Keys are 88 characters at most: nothing longer is worth decoding.
    if text.len() > 256 {
        return Err(format!(
            "field `{field}`: {} characters, far longer than a key",
            text.len()
        ));
    }
    B64URL
        .decode(text.trim())
        .map_err(|err| format!("field `{field}`: not base64url ({err})"))
}

/// Encrypt `payload` for `receiver` with a fresh key pair and salt: the
/// body of a `Content-Encoding: aes128gcm` request. Errors (a payload too
/// large for one record) name the field `payload`.
pub fn encrypt(receiver: &Receiver, payload: &[u8]) -> Result<Vec<u8>, String> {
    check_size(payload)?;
    let ephemeral = SecretKey::random(&mut OsRng);
    let mut salt = [0u8; SALT_LEN];
    OsRng.fill_bytes(&mut salt);
    Ok(seal(receiver, payload, &ephemeral, &salt))
}

/// A payload too large for one record is refused, naming `payload`.
pub fn check_size(payload: &[u8]) -> Result<(), String> {
    if payload.len() > MAX_PAYLOAD {
        return Err(format!(
            "field `payload`: {} bytes, more than the {MAX_PAYLOAD} an encrypted Web Push message can carry (RFC 8291 §4: one record of 4096 bytes)",
            payload.len()
        ));
    }
    Ok(())
}

/// [`encrypt`] with the sender's key pair and the salt given: the tests
/// use it to reproduce RFC 8291's example. `payload` must fit
/// ([`MAX_PAYLOAD`]).
fn seal(
    receiver: &Receiver,
    payload: &[u8],
    ephemeral: &SecretKey,
    salt: &[u8; SALT_LEN],
) -> Vec<u8> {
    let as_public = ephemeral.public_key().to_encoded_point(false);
    let shared =
        p256::ecdh::diffie_hellman(ephemeral.to_nonzero_scalar(), receiver.public.as_affine());
    let mut key_info = Vec::with_capacity(14 + 2 * POINT_LEN);
    key_info.extend_from_slice(b"WebPush: info\0");
    key_info.extend_from_slice(&receiver.public_bytes);
    key_info.extend_from_slice(as_public.as_bytes());
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(&receiver.auth), shared.raw_secret_bytes())
        .expand(&key_info, &mut ikm)
        .expect("32 bytes is a valid HKDF-SHA-256 length");
    seal_record(&ikm, salt, as_public.as_bytes(), RECORD_SIZE, payload)
}

/// RFC 8188 `aes128gcm` with a single record (the last, delimiter 0x02)
/// and no padding: header, then ciphertext and tag.
fn seal_record(
    ikm: &[u8],
    salt: &[u8; SALT_LEN],
    keyid: &[u8],
    rs: u32,
    plaintext: &[u8],
) -> Vec<u8> {
    debug_assert!(plaintext.len() + 1 + TAG_LEN <= rs as usize);
    let prk = Hkdf::<Sha256>::new(Some(salt), ikm);
    let mut cek = [0u8; 16];
    let mut nonce = [0u8; 12];
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .expect("16 bytes is a valid HKDF-SHA-256 length");
    prk.expand(b"Content-Encoding: nonce\0", &mut nonce)
        .expect("12 bytes is a valid HKDF-SHA-256 length");

    let mut body = Vec::with_capacity(SALT_LEN + 5 + keyid.len() + plaintext.len() + 1 + TAG_LEN);
    body.extend_from_slice(salt);
    body.extend_from_slice(&rs.to_be_bytes());
    body.push(u8::try_from(keyid.len()).expect("a keyid of at most 255 bytes"));
    body.extend_from_slice(keyid);
    let header = body.len();
    body.extend_from_slice(plaintext);
    body.push(0x02);
    // The first record's nonce is NONCE itself (sequence number 0).
    let mut record = body.split_off(header);
    Aes128Gcm::new(&cek.into())
        .encrypt_in_place(Nonce::from_slice(&nonce), b"", &mut record)
        .expect("a record under 64 GiB always encrypts");
    body.append(&mut record);
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(text: &str) -> Vec<u8> {
        B64URL.decode(text).unwrap()
    }

    /// RFC 8291 Appendix A (and §5, which shows the body).
    const PLAINTEXT: &str = "When I grow up, I want to be a watermelon";
    const AS_PRIVATE: &str = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw";
    const AS_PUBLIC: &str =
        "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8";
    const UA_PUBLIC: &str =
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    const SALT: &str = "DGv6ra1nlYgDCS1FRnbzlw";
    const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
    const HEADER: &str = "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8";
    const CIPHERTEXT: &str =
        "8pfeW0KbunFT06SuDKoJH9Ql87S1QUrdirN6GcG7sFz1y1sqLgVi1VhjVkHsUoEsbI_0LpXMuGvnzQ";
    const BODY: &str = "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN";

    #[test]
    fn rfc8291_appendix_a_byte_for_byte() {
        let receiver = Receiver::parse(UA_PUBLIC, AUTH).unwrap();
        let ephemeral = SecretKey::from_slice(&b(AS_PRIVATE)).unwrap();
        assert_eq!(
            ephemeral.public_key().to_encoded_point(false).as_bytes(),
            b(AS_PUBLIC)
        );
        let salt: [u8; 16] = b(SALT).try_into().unwrap();
        let body = seal(&receiver, PLAINTEXT.as_bytes(), &ephemeral, &salt);
        assert_eq!(b64url(&body[..HEADER_LEN]), HEADER);
        assert_eq!(b64url(&body[HEADER_LEN..]), CIPHERTEXT);
        assert_eq!(b64url(&body), BODY);
    }

    /// RFC 8188 §3.1: the content coding alone, from a known input keying
    /// material, without a keyid.
    #[test]
    fn rfc8188_section_3_1_byte_for_byte() {
        let salt: [u8; 16] = b("I1BsxtFttlv3u_Oo94xnmw").try_into().unwrap();
        let body = seal_record(
            &b("yqdlZ-tYemfogSmv7Ws5PQ"),
            &salt,
            b"",
            4096,
            b"I am the walrus",
        );
        assert_eq!(
            b64url(&body),
            "I1BsxtFttlv3u_Oo94xnmwAAEAAA-NAVub2qFgBEuQKRapoZu-IxkIva3MEB1PD-ly8Thjg"
        );
    }

    #[test]
    fn every_message_has_its_own_key_and_salt() {
        let receiver = Receiver::parse(UA_PUBLIC, AUTH).unwrap();
        let one = encrypt(&receiver, b"same").unwrap();
        let two = encrypt(&receiver, b"same").unwrap();
        assert_eq!(one.len(), HEADER_LEN + 4 + 1 + TAG_LEN);
        assert_ne!(one[..16], two[..16], "salt reused");
        assert_ne!(one[21..86], two[21..86], "sender key reused");
        assert_eq!(&one[16..21], &[0, 0, 0x10, 0, 65]);
    }

    #[test]
    fn the_largest_payload_fills_one_4096_byte_record() {
        let receiver = Receiver::parse(UA_PUBLIC, AUTH).unwrap();
        assert_eq!(MAX_PAYLOAD, 3993);
        let body = encrypt(&receiver, &[7; MAX_PAYLOAD]).unwrap();
        assert_eq!(body.len(), 4096);
        let err = encrypt(&receiver, &[7; MAX_PAYLOAD + 1]).unwrap_err();
        assert!(err.starts_with("field `payload`: 3994 bytes"), "{err}");
    }

    #[test]
    fn malformed_keys_are_refused_with_the_field_named() {
        let cases = [
            ("not base64!", AUTH, "field `keys.p256dh`: not base64url"),
            ("", AUTH, "field `keys.p256dh`: empty"),
            (&UA_PUBLIC[..40], AUTH, "field `keys.p256dh`: 30 bytes"),
            // A compressed point: valid P-256, but Web Push wants it uncompressed.
            (
                "AiVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcx",
                AUTH,
                "field `keys.p256dh`: 33 bytes",
            ),
            (UA_PUBLIC, "BTBZMqHH6r4Tts7J", "field `keys.auth`: 12 bytes"),
            (
                UA_PUBLIC,
                "B*BZMqHH6r4Tts7J_aSIgg",
                "field `keys.auth`: not base64url",
            ),
            (UA_PUBLIC, "", "field `keys.auth`: empty"),
            (
                &"A".repeat(100_000),
                AUTH,
                "field `keys.p256dh`: 100000 characters",
            ),
        ];
        for (p256dh, auth, want) in cases {
            let err = Receiver::parse(p256dh, auth).unwrap_err();
            assert!(err.starts_with(want), "{p256dh:?} {auth:?}: {err}");
        }
        // 0x04 and 64 bytes that are not a point on the curve.
        let mut off_curve = b(UA_PUBLIC);
        off_curve[64] ^= 1;
        let err = Receiver::parse(&b64url(&off_curve), AUTH).unwrap_err();
        assert_eq!(err, "field `keys.p256dh`: not a point on the P-256 curve");
        // The right length but not uncompressed.
        let mut wrong_form = b(UA_PUBLIC);
        wrong_form[0] = 0x05;
        let err = Receiver::parse(&b64url(&wrong_form), AUTH).unwrap_err();
        assert!(err.contains("does not begin with 0x04"), "{err}");
        // Padding is accepted.
        Receiver::parse(&format!("{UA_PUBLIC}="), "BTBZMqHH6r4Tts7J_aSIgg==").unwrap();
    }
}
