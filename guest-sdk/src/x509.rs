//! Certificate checks (feature `x509`): what the built-in certificate
//! handler verifies before it asks for an install, and what the node's
//! certificate store verifies again before it installs anything: the
//! PEM chain parses (the first certificate is the leaf), the private key
//! belongs to the leaf, the leaf is valid now, and its names cover every
//! requested domain. Each failure is a sentence saying what is wrong.
//!
//! Keys are compared through their public halves: RSA by modulus and
//! exponent (both in the private key), ECDSA P-256/P-384 by the point
//! derived from the private scalar, Ed25519 by the key derived from the
//! seed. Nothing here verifies signatures or builds a path to a trusted root.
//!
//! A key sealed to the cluster ([`is_sealed`]: age's armored form, as
//! `herald cert publish` sends it) reaches a handler still sealed: only the
//! node's host holds the identity that opens it. [`check`] then checks the
//! chain alone, and the host checks the pair again after unsealing.

use p256::elliptic_curve::sec1::ToEncodedPoint;
use pkcs8::der::Decode;
use pkcs8::der::asn1::OctetStringRef;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;
use x509_parser::public_key::PublicKey as ParsedKey;
use x509_parser::time::ASN1Time;

/// Checks a published certificate at `now` (Unix seconds); answers the
/// leaf's notAfter in Unix milliseconds.
pub fn check(domains: &[String], chain_pem: &str, key_pem: &str, now: i64) -> Result<u64, String> {
    if domains.is_empty() {
        return Err("no domains given for the certificate".into());
    }
    if domains.iter().any(|d| d.trim().is_empty()) {
        return Err("an empty domain name is among the certificate's domains".into());
    }
    let chain = read_chain(chain_pem)?;
    let leaf = parse_chain(&chain)?;
    let leaf_key = leaf_key(&leaf)?;
    // A sealed key is checked by the host once unsealed.
    if !is_sealed(key_pem) {
        let key = private_key(key_pem)?;
        if key != leaf_key {
            let mut reason = format!(
                "the private key does not match the certificate (leaf {})",
                leaf.subject()
            );
            if key.algorithm() != leaf_key.algorithm() {
                let (k, l) = (key.algorithm(), leaf_key.algorithm());
                reason += &format!(": the key is {k}, the certificate's is {l}");
            }
            return Err(reason);
        }
    }
    let validity = leaf.validity();
    if now > validity.not_after.timestamp() {
        return Err(format!(
            "certificate expired at {}",
            rfc3339(validity.not_after)
        ));
    }
    if now < validity.not_before.timestamp() {
        return Err(format!(
            "certificate is not valid before {}",
            rfc3339(validity.not_before)
        ));
    }
    let names = leaf_names(&leaf)?;
    if let Some(d) = domains.iter().find(|d| !names.iter().any(|n| covers(n, d))) {
        let names = if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        };
        return Err(format!("certificate does not cover `{d}` (names: {names})"));
    }
    Ok(validity.not_after.timestamp().max(0) as u64 * 1000)
}

/// Whether a private key travels sealed (an age file in ASCII armor) rather
/// than as a plaintext PEM key.
pub fn is_sealed(key_pem: &str) -> bool {
    key_pem
        .trim_start()
        .starts_with("-----BEGIN AGE ENCRYPTED FILE-----")
}

/// Whether certificate name `name` covers `domain`: equal ignoring case and
/// a final dot, or a wildcard `*.parent` for exactly one label more.
pub fn covers(name: &str, domain: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if name == domain {
        return true;
    }
    match (name.strip_prefix("*."), domain.split_once('.')) {
        (Some(parent), Some((label, rest))) => {
            !parent.is_empty() && !label.is_empty() && rest == parent
        }
        _ => false,
    }
}

/// The DER of each CERTIFICATE block, in order.
fn read_chain(pem: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut chain = Vec::new();
    for (i, block) in Pem::iter_from_buffer(pem.as_bytes()).enumerate() {
        let block = block.map_err(|e| format!("cannot parse the certificate chain: {e}"))?;
        if block.label != "CERTIFICATE" {
            let n = i + 1;
            return Err(format!(
                "cannot parse the certificate chain: PEM block {n} is {}, not CERTIFICATE",
                block.label
            ));
        }
        chain.push(block.contents);
    }
    if chain.is_empty() {
        return Err("cannot parse the certificate chain: no CERTIFICATE block".into());
    }
    Ok(chain)
}

/// Parses every certificate of the chain; answers the leaf.
fn parse_chain(chain: &[Vec<u8>]) -> Result<X509Certificate<'_>, String> {
    let mut certs = Vec::new();
    for (n, der) in (1..).zip(chain) {
        let bad =
            |what: String| format!("cannot parse the certificate chain: certificate {n}{what}");
        match x509_parser::parse_x509_certificate(der) {
            Ok(([], cert)) => certs.push(cert),
            Ok(_) => return Err(bad(" has trailing data".into())),
            Err(e) => return Err(bad(format!(": {e}"))),
        }
    }
    certs
        .into_iter()
        .next()
        .ok_or_else(|| "cannot parse the certificate chain: it is empty".into())
}

/// The leaf's dNSName entries, or its subject CN when it has no
/// subjectAltName extension.
fn leaf_names(leaf: &X509Certificate) -> Result<Vec<String>, String> {
    match leaf.subject_alternative_name() {
        Ok(Some(san)) => Ok(san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect()),
        Ok(None) => Ok(leaf
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(String::from)
            .collect()),
        Err(e) => Err(format!(
            "cannot parse the certificate's subjectAltName: {e}"
        )),
    }
}

/// A public key as the leaf states it or as derived from the private key.
#[derive(PartialEq)]
enum PublicKey {
    /// Modulus and exponent, big-endian without leading zeros.
    Rsa(Vec<u8>, Vec<u8>),
    /// Uncompressed SEC1 points.
    P256(Vec<u8>),
    P384(Vec<u8>),
    Ed25519(Vec<u8>),
}

impl PublicKey {
    fn algorithm(&self) -> &'static str {
        match self {
            PublicKey::Rsa(..) => "RSA",
            PublicKey::P256(_) => "ECDSA P-256",
            PublicKey::P384(_) => "ECDSA P-384",
            PublicKey::Ed25519(_) => "Ed25519",
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

/// The supported key kind for an algorithm OID (and curve OID, for EC), or
/// the name of the unsupported algorithm.
fn kind(algorithm: &str, curve: Option<&str>) -> Result<Kind, String> {
    match (algorithm, curve) {
        (RSA, _) => Ok(Kind::Rsa),
        (EC, Some("1.2.840.10045.3.1.7")) => Ok(Kind::P256),
        (EC, Some("1.3.132.0.34")) => Ok(Kind::P384),
        ("1.3.101.112", _) => Ok(Kind::Ed25519),
        (EC, Some(curve)) => Err(match curve {
            "1.3.132.0.35" => "ECDSA P-521".into(),
            "1.3.132.0.10" => "ECDSA secp256k1".into(),
            other => format!("ECDSA on curve {other}"),
        }),
        (EC, None) => Err("ECDSA without a named curve".into()),
        (other, _) => Err(match other {
            "1.3.101.113" => "Ed448".into(),
            "1.3.101.110" => "X25519".into(),
            "1.3.101.111" => "X448".into(),
            "1.2.840.113549.1.1.10" => "RSASSA-PSS".into(),
            "1.2.840.10040.4.1" => "DSA".into(),
            other => format!("with OID {other}"),
        }),
    }
}

/// rsaEncryption and id-ecPublicKey.
const RSA: &str = "1.2.840.113549.1.1.1";
const EC: &str = "1.2.840.10045.2.1";

const SUPPORTED: &str = "supported: RSA, ECDSA P-256, ECDSA P-384, Ed25519";

fn leaf_key(leaf: &X509Certificate) -> Result<PublicKey, String> {
    let spki = leaf.public_key();
    let algorithm = spki.algorithm.algorithm.to_id_string();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    let kind = kind(&algorithm, curve.map(|c| c.to_id_string()).as_deref())
        .map_err(|a| format!("unsupported certificate key algorithm {a} ({SUPPORTED})"))?;
    let bits = spki.subject_public_key.data.as_ref();
    let bad = |e: &dyn std::fmt::Display| format!("cannot read the certificate's public key: {e}");
    match kind {
        Kind::Rsa => match spki.parsed() {
            Ok(ParsedKey::RSA(k)) => Ok(PublicKey::Rsa(trim(k.modulus), trim(k.exponent))),
            Ok(_) => Err(bad(&"not an RSA key")),
            Err(e) => Err(bad(&e)),
        },
        Kind::P256 => p256::PublicKey::from_sec1_bytes(bits)
            .map(|k| PublicKey::P256(k.to_encoded_point(false).as_bytes().to_vec()))
            .map_err(|e| bad(&e)),
        Kind::P384 => p384::PublicKey::from_sec1_bytes(bits)
            .map(|k| PublicKey::P384(k.to_encoded_point(false).as_bytes().to_vec()))
            .map_err(|e| bad(&e)),
        Kind::Ed25519 if bits.len() == 32 => Ok(PublicKey::Ed25519(bits.to_vec())),
        Kind::Ed25519 => Err(bad(&format!("an Ed25519 key of {} bytes", bits.len()))),
    }
}

/// The public half of the one private key in `pem`.
fn private_key(pem: &str) -> Result<PublicKey, String> {
    let bad = |e: &dyn std::fmt::Display| format!("cannot parse the private key: {e}");
    let mut keys = Vec::new();
    for block in Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| bad(&e))?;
        // `openssl ecparam -genkey` writes the curve before the key.
        if block.label != "EC PARAMETERS" {
            keys.push(block);
        }
    }
    let block = match keys.as_slice() {
        [block] => block,
        [] => return Err(bad(&"no PEM private key block")),
        _ => {
            return Err(bad(&format!(
                "{} PEM blocks where one key was expected",
                keys.len()
            )));
        }
    };
    let der = block.contents.as_slice();
    match block.label.as_str() {
        "PRIVATE KEY" => {
            let info = pkcs8::PrivateKeyInfo::try_from(der).map_err(|e| bad(&e))?;
            let curve = info.algorithm.parameters_oid().ok().map(|c| c.to_string());
            let kind = kind(&info.algorithm.oid.to_string(), curve.as_deref())
                .map_err(|a| format!("unsupported private key algorithm {a} ({SUPPORTED})"))?;
            match kind {
                Kind::Rsa => rsa(info.private_key),
                Kind::P256 | Kind::P384 => ec(info.private_key, curve),
                Kind::Ed25519 => {
                    let seed = OctetStringRef::from_der(info.private_key).map_err(|e| bad(&e))?;
                    let seed: &[u8; 32] = seed.as_bytes().try_into().map_err(|_| {
                        bad(&format!(
                            "an Ed25519 seed of {} bytes",
                            seed.as_bytes().len()
                        ))
                    })?;
                    let key = ed25519_dalek::SigningKey::from_bytes(seed).verifying_key();
                    Ok(PublicKey::Ed25519(key.to_bytes().to_vec()))
                }
            }
        }
        "EC PRIVATE KEY" => ec(der, None),
        "RSA PRIVATE KEY" => rsa(der),
        "ENCRYPTED PRIVATE KEY" => {
            Err("the private key is encrypted; it must be given in the clear".into())
        }
        other => Err(bad(&format!(
            "a {other} block; expected PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY"
        ))),
    }
}

/// PKCS#1 RSAPrivateKey.
fn rsa(der: &[u8]) -> Result<PublicKey, String> {
    let key = pkcs1::RsaPrivateKey::try_from(der)
        .map_err(|e| format!("cannot parse the RSA private key: {e}"))?;
    Ok(PublicKey::Rsa(
        trim(key.modulus.as_bytes()),
        trim(key.public_exponent.as_bytes()),
    ))
}

/// SEC1 ECPrivateKey; the curve is its own or, failing that, `outer`'s
/// (the PKCS#8 algorithm parameters). An embedded public key is ignored.
fn ec(der: &[u8], outer: Option<String>) -> Result<PublicKey, String> {
    let bad = |e: &dyn std::fmt::Display| format!("cannot parse the EC private key: {e}");
    let key = sec1::EcPrivateKey::try_from(der).map_err(|e| bad(&e))?;
    let curve = key
        .parameters
        .and_then(|p| p.named_curve())
        .map(|c| c.to_string())
        .or(outer);
    let kind = kind(EC, curve.as_deref())
        .map_err(|a| format!("unsupported private key algorithm {a} ({SUPPORTED})"))?;
    match kind {
        Kind::P256 => p256::SecretKey::from_slice(key.private_key)
            .map(|k| PublicKey::P256(k.public_key().to_encoded_point(false).as_bytes().to_vec()))
            .map_err(|e| bad(&e)),
        Kind::P384 => p384::SecretKey::from_slice(key.private_key)
            .map(|k| PublicKey::P384(k.public_key().to_encoded_point(false).as_bytes().to_vec()))
            .map_err(|e| bad(&e)),
        Kind::Rsa | Kind::Ed25519 => Err(bad(&"not an EC key")),
    }
}

fn trim(bytes: &[u8]) -> Vec<u8> {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    bytes[start..].to_vec()
}

fn rfc3339(t: ASN1Time) -> String {
    let t = t.to_datetime();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}
