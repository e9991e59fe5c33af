//! Who may change a node: signed events and the trust policy.
//!
//! Anyone who can write to the events topic can put a record on it, so a
//! record's `origin` proves nothing. Every event herald publishes carries an
//! Ed25519 signature in two Kafka headers, [`KEY_ID_HEADER`] and
//! [`SIGNATURE_HEADER`], over the record's key and its exact value bytes
//! ([`signed_message`]): changing a byte of the value, or moving the value
//! under another entity's key, breaks it.
//!
//! With `trust` in the config, [`Policy::verify`] and [`Policy::admit`] run on
//! every record before any handler sees it: a bad signature, an unknown key,
//! a kind the key may not sign, an unsigned event of a kind that must be
//! signed, an event older than its kind's `maxAge`, or a TLS private key in
//! plaintext turns the record into a dead letter whose `herald-error` says
//! which ([`Untrusted`]), counted by `herald_untrusted_total{reason}`.
//!
//! A valid signature does not make an event fresh: a signed event replayed
//! later verifies again. What bounds a replay is `trust.maxAge` (per kind,
//! against the event's `ts`) and, for certificates, the store's refusal of a
//! certificate that expires before the installed one.

pub mod keys;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;

use crate::event::{Body, Event};

/// Header with the signing key's id ([`keys::key_id`]).
pub const KEY_ID_HEADER: &str = "herald-key-id";
/// Header with the Ed25519 signature, standard base64.
pub const SIGNATURE_HEADER: &str = "herald-signature";
/// Longest header value read; anything longer is malformed, not parsed.
pub const MAX_HEADER_LEN: usize = 128;

/// The bytes a signature covers: a domain tag, the record key (length-
/// prefixed; no key differs from an empty one) and the value.
pub fn signed_message(record_key: Option<&[u8]>, value: &[u8]) -> Vec<u8> {
    const TAG: &[u8] = b"herald-signed-record-v1\n";
    let mut m = Vec::with_capacity(TAG.len() + 4 + 64 + value.len());
    m.extend_from_slice(TAG);
    match record_key {
        Some(k) => {
            m.extend_from_slice(&(k.len() as u32).to_be_bytes());
            m.extend_from_slice(k);
        }
        None => m.extend_from_slice(&u32::MAX.to_be_bytes()),
    }
    m.extend_from_slice(value);
    m
}

/// A record's signature headers as found (not yet checked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    pub key_id: Vec<u8>,
    pub signature: Vec<u8>,
}

/// One trusted key and what it may sign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedKey {
    pub key: VerifyingKey,
    /// Kinds this key may sign; `None`: every kind.
    pub kinds: Option<BTreeSet<&'static str>>,
}

/// What to do with Stalwart's records, which carry no signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StalwartRecords {
    Accept,
    Refuse,
}

/// The `trust` section, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Key id → key.
    pub keys: BTreeMap<String, TrustedKey>,
    /// Kinds that must be signed.
    pub require: BTreeSet<&'static str>,
    /// Kind → the oldest an event of it may be when it arrives.
    pub max_age: BTreeMap<&'static str, Duration>,
    /// How far ahead of this node's clock an event's `ts` may be
    /// (`trust.maxSkew`, default [`DEFAULT_MAX_SKEW`]).
    pub max_skew: Duration,
    pub stalwart: StalwartRecords,
}

/// The default `trust.maxSkew`: NTP keeps a cluster's clocks within
/// milliseconds; five minutes allows for a node that lost its time source
/// for a while, and is what a far-future replay could gain at most.
pub const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(300);

impl Policy {
    /// A policy trusting `keys` (each under its own [`keys::key_id`]) with
    /// the defaults of a `trust` section that says nothing more: every kind
    /// must be signed, no kind has a maximum age, Stalwart's records are
    /// refused.
    pub fn new(keys: impl IntoIterator<Item = TrustedKey>) -> Policy {
        Policy {
            keys: keys
                .into_iter()
                .map(|k| (keys::key_id(&k.key), k))
                .collect(),
            require: crate::event::KINDS.iter().copied().collect(),
            max_age: BTreeMap::new(),
            max_skew: DEFAULT_MAX_SKEW,
            stalwart: StalwartRecords::Refuse,
        }
    }
}

/// Why a record was not let through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Untrusted {
    Unsigned {
        kind: &'static str,
    },
    Malformed(String),
    UnknownKey {
        id: String,
    },
    BadSignature {
        id: String,
    },
    KindNotAllowed {
        id: String,
        kind: &'static str,
    },
    TooOld {
        kind: &'static str,
        age: Duration,
        max: Duration,
    },
    FromTheFuture {
        kind: &'static str,
        ahead: Duration,
        max: Duration,
    },
    PlaintextKey,
    StalwartRefused,
}

impl Untrusted {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Untrusted::Unsigned { .. } => "unsigned",
            Untrusted::Malformed(_) => "malformed-signature",
            Untrusted::UnknownKey { .. } => "unknown-key",
            Untrusted::BadSignature { .. } => "bad-signature",
            Untrusted::KindNotAllowed { .. } => "kind-not-allowed",
            Untrusted::TooOld { .. } => "too-old",
            Untrusted::FromTheFuture { .. } => "from-the-future",
            Untrusted::PlaintextKey => "plaintext-key",
            Untrusted::StalwartRefused => "stalwart-refused",
        }
    }
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "untrusted ({}): ", self.reason())?;
        match self {
            Untrusted::Unsigned { kind } => write!(
                f,
                "a `{kind}` event must be signed (trust.require) and this record has no \
                 {SIGNATURE_HEADER} header"
            ),
            Untrusted::Malformed(what) => f.write_str(what),
            Untrusted::UnknownKey { id } => {
                write!(f, "signed by key `{id}`, which is not in trust.keys")
            }
            Untrusted::BadSignature { id } => write!(
                f,
                "the signature does not match the record for key `{id}`: \
                 the value or key was changed after signing, or another key signed it"
            ),
            Untrusted::KindNotAllowed { id, kind } => write!(
                f,
                "key `{id}` may not sign `{kind}` events (trust.keys.{id}.kinds)"
            ),
            Untrusted::TooOld { kind, age, max } => write!(
                f,
                "the `{kind}` event is {}s old, older than trust.maxAge.{kind} ({}s)",
                age.as_secs(),
                max.as_secs()
            ),
            Untrusted::FromTheFuture { kind, ahead, max } => write!(
                f,
                "the `{kind}` event's ts is {}s ahead of this node's clock, more than \
                 trust.maxSkew ({}s): the publisher's clock (or this node's) is wrong, \
                 or the event was dated ahead to outlive maxAge and win every later write",
                ahead.as_secs(),
                max.as_secs()
            ),
            Untrusted::PlaintextKey => f.write_str(
                "the tls-certificate event carries its private key in plaintext; with trust on, \
                 keys must be sealed to the cluster (herald cert publish)",
            ),
            Untrusted::StalwartRefused => {
                f.write_str("records on Stalwart's topic are unsigned and trust.stalwart is refuse")
            }
        }
    }
}

/// The key that signed a record, once checked: the kind is checked after
/// the value is parsed.
pub struct Signer<'a> {
    id: &'a str,
    trusted: &'a TrustedKey,
}

impl Policy {
    /// Check a record's signature, before its value is parsed. `Ok(None)`:
    /// unsigned (whether that is allowed depends on the kind).
    pub fn verify(
        &self,
        key: Option<&[u8]>,
        value: &[u8],
        signature: Option<&Signature>,
    ) -> Result<Option<Signer<'_>>, Untrusted> {
        let Some(sig) = signature else {
            return Ok(None);
        };
        let malformed = |what: &str| Untrusted::Malformed(what.to_string());
        let id = std::str::from_utf8(&sig.key_id)
            .ok()
            .filter(|id| id.len() <= MAX_HEADER_LEN)
            .ok_or_else(|| malformed("the herald-key-id header is not a key id"))?;
        let Some((id, trusted)) = self.keys.get_key_value(id) else {
            return Err(Untrusted::UnknownKey {
                id: crate::bounded::cut(id, 64).into_owned(),
            });
        };
        let signature = (sig.signature.len() <= MAX_HEADER_LEN)
            .then(|| keys::parse_signature(&sig.signature))
            .flatten()
            .ok_or_else(|| malformed("the herald-signature header is not a base64 signature"))?;
        trusted
            .key
            .verify_strict(&signed_message(key, value), &signature)
            .map_err(|_| Untrusted::BadSignature { id: id.clone() })?;
        Ok(Some(Signer { id, trusted }))
    }

    /// Check a parsed event against its signer (if any), the kinds that must
    /// be signed, its age at `now_ms`, and the form of its secrets.
    pub fn admit(
        &self,
        event: &Event,
        signer: Option<&Signer<'_>>,
        now_ms: u64,
    ) -> Result<(), Untrusted> {
        let kind = event.body.kind();
        match signer {
            Some(s) if s.trusted.kinds.as_ref().is_some_and(|k| !k.contains(kind)) => {
                return Err(Untrusted::KindNotAllowed {
                    id: s.id.to_string(),
                    kind,
                });
            }
            Some(_) => {}
            // herald's own kinds are always signed where trust is on: an
            // unsigned answer to a probe would vouch for a node that is not
            // there.
            None if self.require.contains(kind) || event.body.is_host_only() => {
                return Err(Untrusted::Unsigned { kind });
            }
            None => {}
        }
        // A version is the publisher's `ts`: one far ahead would win every
        // later write to its entity until that time, and would never be
        // too old for `maxAge`. Refused, so that both bounds hold.
        let ahead = Duration::from_millis(event.ts.saturating_sub(now_ms));
        if ahead > self.max_skew {
            return Err(Untrusted::FromTheFuture {
                kind,
                ahead,
                max: self.max_skew,
            });
        }
        if let Some(max) = self.max_age.get(kind) {
            let age = Duration::from_millis(now_ms.saturating_sub(event.ts));
            if age > *max {
                return Err(Untrusted::TooOld {
                    kind,
                    age,
                    max: *max,
                });
            }
        }
        if let Body::TlsCertificate(c) = &event.body
            && !herald_guest::x509::is_sealed(&c.private_key_pem)
        {
            return Err(Untrusted::PlaintextKey);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
