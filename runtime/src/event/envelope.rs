//! The JSON envelope around a body: reading it strictly (version, id,
//! lengths), writing it, and what a client may leave out when it submits an
//! event.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::*;

/// The envelope exactly as it travels.
#[derive(Serialize)]
struct Envelope {
    v: u32,
    id: String,
    kind: String,
    origin: String,
    ts: u64,
    #[serde(skip_serializing_if = "is_zero")]
    hops: u32,
    body: Value,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The envelope as read: the body stays raw text until the kind is known.
#[derive(Deserialize)]
struct RawEnvelope<'a> {
    v: u32,
    id: String,
    kind: std::borrow::Cow<'a, str>,
    origin: String,
    ts: u64,
    #[serde(default)]
    hops: u32,
    #[serde(default, borrow)]
    body: Option<&'a serde_json::value::RawValue>,
}

/// Why bytes are not an event. The message names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

/// The envelope read in one pass: when `kind` comes before `body` (as
/// every publisher herald knows writes it), the body is read straight into
/// its type, rather than skimmed as raw text and parsed again. Anything
/// this reader does not take (a body before its kind, `null`, an error of
/// any sort) is left to [`RawEnvelope`], whose answer, and error message, is
/// the decoder's.
struct OnePass<'a> {
    v: u32,
    id: String,
    kind: std::borrow::Cow<'a, str>,
    origin: String,
    ts: u64,
    hops: u32,
    body: Body,
}

impl<'de> Deserialize<'de> for OnePass<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, IgnoredAny, MapAccess, Visitor};
        use std::borrow::Cow;

        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "lowercase")]
        enum Field {
            V,
            Id,
            Kind,
            Origin,
            Ts,
            Hops,
            Body,
            #[serde(other)]
            Other,
        }

        /// A string borrowed from the input when it holds no escapes.
        struct Text<'a>(Cow<'a, str>);
        impl<'de> Deserialize<'de> for Text<'de> {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = Text<'de>;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str("a string")
                    }
                    fn visit_borrowed_str<E: Error>(self, s: &'de str) -> Result<Text<'de>, E> {
                        Ok(Text(Cow::Borrowed(s)))
                    }
                    fn visit_str<E: Error>(self, s: &str) -> Result<Text<'de>, E> {
                        Ok(Text(Cow::Owned(s.to_string())))
                    }
                }
                d.deserialize_str(V)
            }
        }

        struct BodyOf<'k>(&'k str);
        impl<'de> serde::de::DeserializeSeed<'de> for BodyOf<'_> {
            type Value = Body;
            fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Body, D::Error> {
                Body::parse(self.0, d).map_err(D::Error::custom)
            }
        }

        struct Envelope;
        impl<'de> Visitor<'de> for Envelope {
            type Value = OnePass<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an event envelope")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OnePass<'de>, A::Error> {
                let (mut v, mut id, mut kind, mut origin, mut ts, mut hops, mut body) =
                    (None, None, None, None, None, None, None);
                let again = |name| A::Error::custom(format_args!("duplicate field `{name}`"));
                while let Some(field) = map.next_key::<Field>()? {
                    match field {
                        Field::V if v.is_none() => v = Some(map.next_value::<u32>()?),
                        Field::Id if id.is_none() => id = Some(map.next_value::<String>()?),
                        Field::Kind if kind.is_none() => kind = Some(map.next_value::<Text>()?.0),
                        Field::Origin if origin.is_none() => {
                            origin = Some(map.next_value::<String>()?)
                        }
                        Field::Ts if ts.is_none() => ts = Some(map.next_value::<u64>()?),
                        Field::Hops if hops.is_none() => hops = Some(map.next_value::<u32>()?),
                        Field::Body if body.is_none() => match &kind {
                            Some(k) => body = Some(map.next_value_seed(BodyOf(k))?),
                            // The kind comes later: the two-pass reader's case.
                            None => return Err(A::Error::custom("body before kind")),
                        },
                        Field::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                        _ => return Err(again("of the envelope")),
                    }
                }
                let missing = |name| A::Error::custom(format_args!("missing field `{name}`"));
                Ok(OnePass {
                    v: v.ok_or_else(|| missing("v"))?,
                    id: id.ok_or_else(|| missing("id"))?,
                    kind: kind.ok_or_else(|| missing("kind"))?,
                    origin: origin.ok_or_else(|| missing("origin"))?,
                    ts: ts.ok_or_else(|| missing("ts"))?,
                    hops: hops.unwrap_or(0),
                    // No body: the two-pass reader's case.
                    body: body.ok_or_else(|| missing("body"))?,
                })
            }
        }
        d.deserialize_map(Envelope)
    }
}

/// The checks every envelope passes, whichever reader read it.
fn check(v: u32, id: &str, origin: &str, kind: &str) -> Result<(), DecodeError> {
    if v != ENVELOPE_VERSION {
        return Err(DecodeError(format!(
            "envelope: field `v` is {v}, this node reads version {ENVELOPE_VERSION}"
        )));
    }
    if id.is_empty() {
        return Err(DecodeError("envelope: field `id` is empty".into()));
    }
    // Ids and origins end up in logs, headers, file lines and derived
    // ids: a sender does not get to make them arbitrarily long.
    for (field, value) in [("id", id), ("origin", origin)] {
        if value.len() > MAX_ID_LEN {
            return Err(DecodeError(format!(
                "envelope: field `{field}` is {} bytes long, at most {MAX_ID_LEN} are allowed",
                value.len()
            )));
        }
    }
    if kind.len() > MAX_ID_LEN {
        return Err(DecodeError(format!(
            "envelope: field `kind` is {} bytes long; no kind is longer than {MAX_ID_LEN}",
            kind.len()
        )));
    }
    Ok(())
}

impl Event {
    /// Parse the JSON envelope. `position` is where the bytes were found.
    pub fn from_json(bytes: &[u8], position: Position) -> Result<Event, DecodeError> {
        // Checked as UTF-8 once, whole, rather than string by string.
        if let Ok(text) = std::str::from_utf8(bytes)
            && let Ok(env) = serde_json::from_str::<OnePass>(text)
        {
            check(env.v, &env.id, &env.origin, &env.kind)?;
            return Ok(Event {
                id: env.id,
                origin: env.origin,
                ts: env.ts,
                hops: env.hops,
                position,
                body: env.body,
            });
        }
        let env: RawEnvelope =
            serde_json::from_slice(bytes).map_err(|e| DecodeError(format!("envelope: {e}")))?;
        check(env.v, &env.id, &env.origin, &env.kind)?;
        let body = match env.body.map(|b| b.get()) {
            None | Some("null") => "{}",
            Some(text) => text,
        };
        let body = Body::from_json_str(&env.kind, body).map_err(DecodeError)?;
        Ok(Event {
            id: env.id,
            origin: env.origin,
            ts: env.ts,
            hops: env.hops,
            position,
            body,
        })
    }

    /// Parse a record value, one envelope or a bundle (a JSON array of at
    /// most [`MAX_BUNDLE`] envelopes), onto the end of `out`, where a batch's
    /// events are gathered: no vector of its own for every record. A bundle
    /// that fails part-way leaves the events before the fault in `out` and
    /// answers the fault, naming the element.
    pub fn read_record(
        bytes: &[u8],
        position: Position,
        out: &mut Vec<Event>,
    ) -> Result<(), DecodeError> {
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'[') {
            out.push(Event::from_json(bytes, position)?);
            return Ok(());
        }
        let items: Vec<&serde_json::value::RawValue> =
            serde_json::from_slice(bytes).map_err(|e| DecodeError(format!("bundle: {e}")))?;
        if items.len() > MAX_BUNDLE {
            return Err(DecodeError(format!(
                "bundle: {} envelopes, at most {MAX_BUNDLE} are allowed",
                items.len()
            )));
        }
        out.reserve(items.len());
        for (i, item) in items.iter().enumerate() {
            let event = Event::from_json(item.get().as_bytes(), position.clone())
                .map_err(|e| DecodeError(format!("bundle element {i}: {e}")))?;
            out.push(event);
        }
        Ok(())
    }

    /// A bundle record's value: `events` as one JSON array.
    pub fn bundle_json(events: &[Event]) -> String {
        Value::Array(events.iter().map(Event::to_json).collect()).to_string()
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(Envelope {
            v: ENVELOPE_VERSION,
            id: self.id.clone(),
            kind: self.body.kind().to_string(),
            origin: self.origin.clone(),
            ts: self.ts,
            hops: self.hops,
            body: self.body.to_json(),
        })
        .expect("envelopes always serialise")
    }

    /// An event submitted by a client (`herald publish`, the local API) in
    /// the public JSON form; `v`, `id`, `origin` and `ts` may be left out and
    /// are filled in as for an event this node publishes.
    pub fn from_submitted(text: &str, origin: &str) -> Result<Event, DecodeError> {
        let mut v: Value =
            serde_json::from_str(text).map_err(|e| DecodeError(format!("not JSON: {e}")))?;
        let obj = v.as_object_mut().ok_or_else(|| {
            DecodeError("an event is a JSON object: {\"kind\":...,\"body\":{...}}".into())
        })?;
        obj.entry("v").or_insert(ENVELOPE_VERSION.into());
        obj.entry("id")
            .or_insert(uuid::Uuid::now_v7().to_string().into());
        obj.entry("origin").or_insert(origin.into());
        obj.entry("ts").or_insert(now_ms().into());
        let event = Event::from_json(v.to_string().as_bytes(), Position::default())?;
        if event.body.is_host_only() {
            // Signed with the node's key, a submitted probe answer would
            // vouch for a node that never answered.
            return Err(DecodeError(format!(
                "kind `{}` is herald's own: nodes publish it themselves, nothing may submit it",
                event.body.kind()
            )));
        }
        Ok(event)
    }

    /// A new event published by this node now.
    pub fn new(origin: &str, body: Body) -> Event {
        Event {
            id: uuid::Uuid::now_v7().to_string(),
            origin: origin.to_string(),
            ts: now_ms(),
            hops: 0,
            position: Position::default(),
            body,
        }
    }
}
