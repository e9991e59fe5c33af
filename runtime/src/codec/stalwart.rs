//! Stalwart v0.16's binary batches on the topic `stwt.agora` (DESIGN.md,
//! "Stalwart v0.16 wire compatibility").
//!
//! A record's value is `uleb128(node_id: u16)` followed by events until the
//! end of the value; nothing else frames it (no length, count or version).
//! Each event is one raw tag byte and then its fields. Every integer is
//! unsigned LEB128 (7 bits a byte, least significant group first, high bit =
//! more follows); a string is a LEB128 byte length and then UTF-8; the marker
//! that starts each item of a cache invalidation is a raw byte, like the tag
//! (Stalwart pushes it as a `u8`; below 128 the two forms are the same bytes).
//!
//! Since no event carries its length, a decoder that meets a tag or a field
//! it cannot read has no way to find where the next event starts, and the rest
//! of the record is lost. Stalwart acts on each event as soon as it has
//! decoded it and stops at the first bad one, so the events before the fault
//! have taken effect on every Stalwart node. [`decode`] therefore returns
//! them along with the error instead of dropping the whole record: a herald
//! node that dropped them would miss state changes the rest of the cluster
//! applied.
//!
//! Decoding is strict about values where Stalwart is lax (a LEB128 whose bits
//! do not fit the field's type is an error here; Stalwart silently drops the
//! high bits) and lenient like Stalwart about form: an over-long LEB128 such
//! as `80 00` for 0 is accepted within the type's byte budget (3 bytes for a
//! `u16`, 5 for a `u32`, 10 for a `u64`). Encoding always writes the shortest
//! form, as Stalwart does, so a decoded record re-encodes to its own bytes
//! unless it held over-long integers, in which case it re-encodes shorter.

use crate::event::{
    Body, CacheInvalidate, CacheInvalidateAll, CacheItem, CacheScope, CalendarAlert, DataTypes,
    EmailPush, Empty, PushServerUpdate, QueueStatus, RegistryAction, RegistryChange, StateChange,
};

/// The topic Stalwart publishes its batches on (fixed in Stalwart's code).
pub const TOPIC: &str = "stwt.agora";

/// The most events Stalwart puts in one record; [`encode_batches`] keeps to
/// it. Decoding accepts any number, as Stalwart does.
pub const MAX_EVENTS_PER_RECORD: usize = 100;

/// Event tags, in Stalwart v0.16's numbering.
mod tag {
    pub const STATE_CHANGE: u8 = 0;
    pub const CALENDAR_ALERT: u8 = 1;
    pub const EMAIL_PUSH: u8 = 2;
    pub const PUSH_SERVER_UPDATE: u8 = 3;
    pub const REGISTRY_INSERT: u8 = 4;
    pub const REGISTRY_DELETE: u8 = 5;
    pub const REGISTRY_RELOAD: u8 = 6;
    pub const CACHE_INVALIDATE: u8 = 7;
    pub const CACHE_INVALIDATE_ALL: u8 = 8;
    pub const CACHE_INVALIDATE_NEGATIVE: u8 = 9;
    pub const QUEUE_RUNNING: u8 = 10;
    pub const QUEUE_PAUSED: u8 = 11;
    pub const QUEUE_REFRESH: u8 = 12;
}

/// The cache marker whose item carries two integers instead of one id.
const EMAIL_NEGATIVE_MARKER: u8 = 10;

/// One record on [`TOPIC`]: who sent it and what happened, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The sending node's id; a node ignores records carrying its own.
    pub node_id: u16,
    /// The events, in the order the sender produced them.
    pub events: Vec<Body>,
}

/// What [`decode`] made of a record whose node id could be read.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    /// The sending node's id.
    pub node_id: u16,
    /// Every event before the first fault (all of them when `error` is
    /// `None`). Stalwart nodes have applied these, so they stand.
    pub events: Vec<Body>,
    /// The fault that ended the record early, if any.
    pub error: Option<DecodeError>,
}

/// Why a record could not be read to its end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("byte {offset}: {kind}")]
pub struct DecodeError {
    /// Where the fault is, counted from the start of the record value: the
    /// first byte of the field at fault (see [`DecodeErrorKind`]).
    pub offset: usize,
    /// What is wrong there.
    pub kind: DecodeErrorKind,
}

/// The kinds of fault, each naming the field it was found in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeErrorKind {
    /// A LEB128 whose value does not fit the field's type, or that runs past
    /// the type's byte budget. The offset is where the integer starts.
    #[error("{field} does not fit in a {ty}")]
    Overflow {
        field: &'static str,
        ty: &'static str,
    },
    /// The record ends inside the field or where the field should start. The
    /// offset is where the field starts (or would have).
    #[error("the record ends before the end of the {field}")]
    Truncated { field: &'static str },
    /// A length or count larger than what is left of the record. The offset
    /// is where the length starts; `remaining` counts the bytes after it.
    #[error("{field} {len} runs past the end of the record ({remaining} bytes left)")]
    LengthPastEnd {
        field: &'static str,
        len: u64,
        remaining: usize,
    },
    /// A string that is not UTF-8. The offset is its first invalid byte.
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
    /// A tag Stalwart v0.16 does not write (newer Stalwart releases add
    /// tags, e.g. 13 and 14 for its task and index queues). The offset is
    /// the tag byte; nothing after it can be read.
    #[error("unknown event tag {0} (Stalwart v0.16 uses 0-12); the rest of the record is skipped")]
    UnknownTag(u8),
    /// A cache marker past the known caches. The offset is the marker byte.
    #[error("unknown cache marker {0} in a cache invalidation (known markers are 0-11)")]
    UnknownCacheMarker(u8),
    /// No bytes at all, so not even a node id.
    #[error("empty record: no node id")]
    Empty,
}

/// Why events cannot be written in Stalwart v0.16's format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {index}: {kind}")]
pub struct EncodeError {
    /// Position of the event at fault in the list given to the encoder.
    pub index: usize,
    /// Why it has no v0.16 form.
    pub kind: EncodeErrorKind,
}

/// The reasons an event has no v0.16 form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeErrorKind {
    /// A kind herald carries only in its JSON envelope (`push`, `ip-block`,
    /// `tls-certificate`, `settings-reload`).
    #[error("kind `{0}` has no Stalwart v0.16 form")]
    NoWireForm(&'static str),
    /// On the wire recurrence id 0 means "no recurrence", so `Some(0)` would
    /// come back as `None`.
    #[error("calendar alert with recurrence id 0: on the wire 0 means no recurrence")]
    ZeroRecurrence,
    /// Stalwart's registry insert and delete always name an object.
    #[error("registry {action} without an object id")]
    MissingRegistryId { action: &'static str },
    /// A registry reload carries no object id on the wire; writing it anyway
    /// would silently drop the id.
    #[error("registry reload with object id {0}: a reload names no object on the wire")]
    RegistryReloadWithId(u64),
}

/// Decode one record value.
///
/// Returns `Err` only when not even the node id can be read. Otherwise the
/// events are decoded in order up to the end of the value or the first fault;
/// the fault, if any, is in [`Decoded::error`] and the events before it are
/// kept (see the module documentation for why).
pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError {
            offset: 0,
            kind: DecodeErrorKind::Empty,
        });
    }
    let mut reader = Reader { bytes, pos: 0 };
    let node_id = reader.u16("node id")?;
    let mut events = Vec::new();
    let mut error = None;
    while !reader.at_end() {
        match decode_event(&mut reader) {
            Ok(event) => events.push(event),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    Ok(Decoded {
        node_id,
        events,
        error,
    })
}

/// Encode a record as one value, whatever its number of events (use
/// [`encode_batches`] to keep to [`MAX_EVENTS_PER_RECORD`]).
pub fn encode(record: &Record) -> Result<Vec<u8>, EncodeError> {
    encode_events(record.node_id, &record.events, 0)
}

/// Encode events as records of at most [`MAX_EVENTS_PER_RECORD`] events each,
/// in order, as Stalwart batches them. No events give no records. The index in
/// an error counts from the start of `events`, not of its record.
pub fn encode_batches(node_id: u16, events: &[Body]) -> Result<Vec<Vec<u8>>, EncodeError> {
    events
        .chunks(MAX_EVENTS_PER_RECORD)
        .enumerate()
        .map(|(n, chunk)| encode_events(node_id, chunk, n * MAX_EVENTS_PER_RECORD))
        .collect()
}

/// Whether this event can be written in Stalwart v0.16's format, i.e. whether
/// [`encode`] accepts it. Decides by value, not only by kind: a calendar alert
/// with recurrence id 0 has none.
pub fn has_wire_form(body: &Body) -> bool {
    wire_problem(body).is_none()
}

// ---------------------------------------------------------------- decoding

/// A cursor over a record value. Every read either advances past a whole
/// field or fails with an error at the field's first byte (at the first
/// invalid byte for a string that is not UTF-8).
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// An unsigned integer type of the wire format: its name and width.
#[derive(Clone, Copy)]
struct IntType {
    name: &'static str,
    bits: u32,
}

const U16: IntType = IntType {
    name: "u16",
    bits: 16,
};
const U32: IntType = IntType {
    name: "u32",
    bits: 32,
};
const U64: IntType = IntType {
    name: "u64",
    bits: 64,
};

impl Reader<'_> {
    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    fn error(&self, offset: usize, kind: DecodeErrorKind) -> DecodeError {
        DecodeError { offset, kind }
    }

    /// One raw byte (a tag or a cache marker).
    fn byte(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        let byte = *self
            .bytes
            .get(self.pos)
            .ok_or_else(|| self.error(self.pos, DecodeErrorKind::Truncated { field }))?;
        self.pos += 1;
        Ok(byte)
    }

    /// An unsigned LEB128 of type `ty`. The byte budget is what the type's
    /// width needs (`ceil(bits / 7)`), and the last byte of the budget may
    /// carry neither a continuation bit nor bits past the width: either is an
    /// overflow. The loop is therefore bounded whatever the input.
    fn uleb(&mut self, field: &'static str, ty: IntType) -> Result<u64, DecodeError> {
        let start = self.pos;
        let budget = ty.bits.div_ceil(7);
        let mut value = 0u64;
        for i in 0..budget {
            let byte = *self
                .bytes
                .get(self.pos)
                .ok_or_else(|| self.error(start, DecodeErrorKind::Truncated { field }))?;
            self.pos += 1;
            let shift = 7 * i;
            let payload = u64::from(byte & 0x7f);
            let more = byte & 0x80 != 0;
            if i + 1 == budget && (more || payload >> (ty.bits - shift) != 0) {
                return Err(self.error(start, DecodeErrorKind::Overflow { field, ty: ty.name }));
            }
            value |= payload << shift;
            if !more {
                return Ok(value);
            }
        }
        // Not reached: the last byte of the budget either ends the value or
        // is an overflow. Kept as an error rather than a panic.
        Err(self.error(start, DecodeErrorKind::Overflow { field, ty: ty.name }))
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        // The budget check guarantees the value fits.
        self.uleb(field, U16).map(|v| v as u16)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.uleb(field, U32).map(|v| v as u32)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.uleb(field, U64)
    }

    /// A length or count that must not exceed the bytes left after it, so a
    /// hostile value cannot make the decoder allocate more than the record's
    /// own size.
    fn length(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let start = self.pos;
        let len = self.u64(field)?;
        let remaining = self.remaining();
        if len > remaining as u64 {
            return Err(self.error(
                start,
                DecodeErrorKind::LengthPastEnd {
                    field,
                    len,
                    remaining,
                },
            ));
        }
        Ok(len as usize)
    }

    /// A length-prefixed UTF-8 string; `len_field` names its length.
    fn string(
        &mut self,
        field: &'static str,
        len_field: &'static str,
    ) -> Result<String, DecodeError> {
        let len = self.length(len_field)?;
        let start = self.pos;
        // In bounds: `length` has checked `len` against the bytes left.
        let raw = &self.bytes[start..start + len];
        let text = std::str::from_utf8(raw).map_err(|e| {
            self.error(
                start + e.valid_up_to(),
                DecodeErrorKind::InvalidUtf8 { field },
            )
        })?;
        self.pos += len;
        Ok(text.to_string())
    }
}

/// Decode one event, starting at its tag byte.
fn decode_event(r: &mut Reader<'_>) -> Result<Body, DecodeError> {
    let tag_offset = r.pos;
    let tag = r.byte("event tag")?;
    Ok(match tag {
        tag::STATE_CHANGE => {
            // Field order on the wire differs from the struct's.
            let change_id = r.u64("change id")?;
            let types = DataTypes(r.u64("data types")?);
            let account_id = r.u32("account id")?;
            Body::StateChange(StateChange {
                account_id,
                change_id,
                types,
            })
        }
        tag::CALENDAR_ALERT => decode_calendar_alert(r)?,
        tag::EMAIL_PUSH => Body::EmailPush(EmailPush {
            account_id: r.u32("account id")?,
            email_id: r.u32("email id")?,
            change_id: r.u64("change id")?,
        }),
        tag::PUSH_SERVER_UPDATE => Body::PushServerUpdate(PushServerUpdate {
            account_id: r.u32("account id")?,
        }),
        tag::REGISTRY_INSERT => decode_registry_item(r, RegistryAction::Insert)?,
        tag::REGISTRY_DELETE => decode_registry_item(r, RegistryAction::Delete)?,
        tag::REGISTRY_RELOAD => Body::RegistryChange(RegistryChange {
            action: RegistryAction::Reload,
            object_type: r.u16("object type")?,
            id: None,
        }),
        tag::CACHE_INVALIDATE => decode_cache_invalidate(r)?,
        tag::CACHE_INVALIDATE_ALL => cache_invalidate_all(CacheScope::All),
        tag::CACHE_INVALIDATE_NEGATIVE => cache_invalidate_all(CacheScope::Negative),
        tag::QUEUE_RUNNING => Body::QueueStatus(QueueStatus { running: true }),
        tag::QUEUE_PAUSED => Body::QueueStatus(QueueStatus { running: false }),
        tag::QUEUE_REFRESH => Body::QueueRefresh(Empty {}),
        other => return Err(r.error(tag_offset, DecodeErrorKind::UnknownTag(other))),
    })
}

fn decode_calendar_alert(r: &mut Reader<'_>) -> Result<Body, DecodeError> {
    let account_id = r.u32("account id")?;
    let event_id = r.u32("event id")?;
    // An i64 written as its two's complement u64; 0 stands for "none".
    let recurrence = r.u64("recurrence id")? as i64;
    let uid = r.string("uid", "uid length")?;
    let alert_id = r.string("alert id", "alert id length")?;
    Ok(Body::CalendarAlert(CalendarAlert {
        account_id,
        event_id,
        recurrence_id: (recurrence != 0).then_some(recurrence),
        uid,
        alert_id,
    }))
}

fn decode_registry_item(r: &mut Reader<'_>, action: RegistryAction) -> Result<Body, DecodeError> {
    Ok(Body::RegistryChange(RegistryChange {
        action,
        object_type: r.u16("object type")?,
        id: Some(r.u64("object id")?),
    }))
}

fn decode_cache_invalidate(r: &mut Reader<'_>) -> Result<Body, DecodeError> {
    // Every item takes at least two bytes (marker and id), so a count above
    // the bytes left is certainly wrong; `length` rejects it before anything
    // is allocated for it, which bounds the allocation by the record's size.
    let count = r.length("cache item count")?;
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        items.push(decode_cache_item(r)?);
    }
    Ok(Body::CacheInvalidate(CacheInvalidate { items }))
}

fn decode_cache_item(r: &mut Reader<'_>) -> Result<CacheItem, DecodeError> {
    let marker_offset = r.pos;
    let marker = r.byte("cache marker")?;
    if marker == EMAIL_NEGATIVE_MARKER {
        let domain_id = r.u32("domain id")?;
        let hash = r.u32("local part hash")?;
        return Ok(CacheItem::EmailNegative { domain_id, hash });
    }
    // Check the marker before reading the id so that the error points at the
    // marker rather than at whatever follows it.
    if CacheItem::from_marker(marker, 0).is_none() {
        return Err(r.error(marker_offset, DecodeErrorKind::UnknownCacheMarker(marker)));
    }
    let id = r.u32("cache id")?;
    CacheItem::from_marker(marker, id)
        .ok_or_else(|| r.error(marker_offset, DecodeErrorKind::UnknownCacheMarker(marker)))
}

fn cache_invalidate_all(scope: CacheScope) -> Body {
    Body::CacheInvalidateAll(CacheInvalidateAll { scope })
}

// ---------------------------------------------------------------- encoding

/// Why `body` cannot be encoded, if it cannot. The one place that decides,
/// so that [`has_wire_form`] and [`encode`] never disagree.
fn wire_problem(body: &Body) -> Option<EncodeErrorKind> {
    match body {
        Body::Push(_)
        | Body::IpBlock(_)
        | Body::TlsCertificate(_)
        | Body::SettingsReload(_)
        | Body::PushSubscriptionGone(_) => Some(EncodeErrorKind::NoWireForm(body.kind())),
        Body::CalendarAlert(alert) if alert.recurrence_id == Some(0) => {
            Some(EncodeErrorKind::ZeroRecurrence)
        }
        Body::RegistryChange(change) => match (change.action, change.id) {
            (RegistryAction::Insert, None) => {
                Some(EncodeErrorKind::MissingRegistryId { action: "insert" })
            }
            (RegistryAction::Delete, None) => {
                Some(EncodeErrorKind::MissingRegistryId { action: "delete" })
            }
            (RegistryAction::Reload, Some(id)) => Some(EncodeErrorKind::RegistryReloadWithId(id)),
            _ => None,
        },
        _ => None,
    }
}

/// Encode `events` as one record; `first_index` is the position of
/// `events[0]` in the caller's list, for error messages.
fn encode_events(
    node_id: u16,
    events: &[Body],
    first_index: usize,
) -> Result<Vec<u8>, EncodeError> {
    // Most events take under 10 bytes; this avoids regrowing for typical
    // batches without trusting any length.
    let mut out = Vec::with_capacity(3 + events.len() * 10);
    put_uleb(&mut out, u64::from(node_id));
    for (i, event) in events.iter().enumerate() {
        encode_event(&mut out, event).map_err(|kind| EncodeError {
            index: first_index + i,
            kind,
        })?;
    }
    Ok(out)
}

fn encode_event(out: &mut Vec<u8>, body: &Body) -> Result<(), EncodeErrorKind> {
    if let Some(problem) = wire_problem(body) {
        return Err(problem);
    }
    match body {
        Body::StateChange(b) => {
            out.push(tag::STATE_CHANGE);
            put_uleb(out, b.change_id);
            put_uleb(out, b.types.0);
            put_uleb(out, u64::from(b.account_id));
        }
        Body::CalendarAlert(b) => {
            out.push(tag::CALENDAR_ALERT);
            put_uleb(out, u64::from(b.account_id));
            put_uleb(out, u64::from(b.event_id));
            put_uleb(out, b.recurrence_id.unwrap_or(0) as u64);
            put_str(out, &b.uid);
            put_str(out, &b.alert_id);
        }
        Body::EmailPush(b) => {
            out.push(tag::EMAIL_PUSH);
            put_uleb(out, u64::from(b.account_id));
            put_uleb(out, u64::from(b.email_id));
            put_uleb(out, b.change_id);
        }
        Body::PushServerUpdate(b) => {
            out.push(tag::PUSH_SERVER_UPDATE);
            put_uleb(out, u64::from(b.account_id));
        }
        Body::RegistryChange(b) => {
            // wire_problem has checked that insert and delete carry an id
            // and reload none.
            let tag = match b.action {
                RegistryAction::Insert => tag::REGISTRY_INSERT,
                RegistryAction::Delete => tag::REGISTRY_DELETE,
                RegistryAction::Reload => tag::REGISTRY_RELOAD,
            };
            out.push(tag);
            put_uleb(out, u64::from(b.object_type));
            if let Some(id) = b.id {
                put_uleb(out, id);
            }
        }
        Body::CacheInvalidate(b) => {
            out.push(tag::CACHE_INVALIDATE);
            put_uleb(out, b.items.len() as u64);
            for item in &b.items {
                put_cache_item(out, item);
            }
        }
        Body::CacheInvalidateAll(b) => out.push(match b.scope {
            CacheScope::All => tag::CACHE_INVALIDATE_ALL,
            CacheScope::Negative => tag::CACHE_INVALIDATE_NEGATIVE,
        }),
        Body::QueueStatus(b) => out.push(if b.running {
            tag::QUEUE_RUNNING
        } else {
            tag::QUEUE_PAUSED
        }),
        Body::QueueRefresh(_) => out.push(tag::QUEUE_REFRESH),
        // Rejected by wire_problem above.
        Body::Push(_)
        | Body::IpBlock(_)
        | Body::TlsCertificate(_)
        | Body::SettingsReload(_)
        | Body::PushSubscriptionGone(_) => {}
    }
    Ok(())
}

fn put_cache_item(out: &mut Vec<u8>, item: &CacheItem) {
    out.push(item.marker());
    match *item {
        CacheItem::EmailNegative { domain_id, hash } => {
            put_uleb(out, u64::from(domain_id));
            put_uleb(out, u64::from(hash));
        }
        _ => put_uleb(out, u64::from(item.id().unwrap_or(0))),
    }
}

/// The shortest unsigned LEB128 form of `value`, as Stalwart writes it.
fn put_uleb(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_uleb(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes(hex_with_spaces: &str) -> Vec<u8> {
        let compact: String = hex_with_spaces.split_whitespace().collect();
        hex::decode(compact).expect("test hex")
    }

    /// Decode, insist the record is whole, and check it re-encodes to the
    /// same bytes.
    fn decode_whole(hex: &str) -> Decoded {
        let raw = bytes(hex);
        let decoded = decode(&raw).expect("node id");
        assert_eq!(decoded.error, None, "{hex}");
        let record = Record {
            node_id: decoded.node_id,
            events: decoded.events.clone(),
        };
        assert_eq!(encode(&record).unwrap(), raw, "re-encoding {hex}");
        decoded
    }

    /// Decode a record that must end in a fault: the events before it and the
    /// fault.
    fn decode_faulty(hex: &str) -> (Vec<Body>, DecodeError) {
        let decoded = decode(&bytes(hex)).expect("node id");
        let error = decoded.error.expect("a fault");
        (decoded.events, error)
    }

    fn state_change(account_id: u32, change_id: u64, types: &[&str]) -> Body {
        Body::StateChange(StateChange {
            account_id,
            change_id,
            types: DataTypes::from_names(types.iter().copied()).unwrap(),
        })
    }

    fn registry(action: RegistryAction, object_type: u16, id: Option<u64>) -> Body {
        Body::RegistryChange(RegistryChange {
            action,
            object_type,
            id,
        })
    }

    fn err(offset: usize, kind: DecodeErrorKind) -> DecodeError {
        DecodeError { offset, kind }
    }

    #[test]
    fn design_example() {
        let d = decode_whole("01 00ac021905 0702 0007 0a02f8acd19101 04 11 94b4e4f4cb03 0c");
        assert_eq!(d.node_id, 1);
        assert_eq!(
            d.events,
            vec![
                state_change(5, 300, &["Email", "Mailbox", "Thread"]),
                Body::CacheInvalidate(CacheInvalidate {
                    items: vec![
                        CacheItem::AccessToken(7),
                        CacheItem::EmailNegative {
                            domain_id: 2,
                            hash: 0x12345678
                        },
                    ]
                }),
                registry(RegistryAction::Insert, 17, Some(123456789012)),
                Body::QueueRefresh(Empty {}),
            ]
        );
    }

    #[test]
    fn real_sample_jmap_email_set() {
        let d = decode_whole("0000031901");
        assert_eq!(d.node_id, 0);
        assert_eq!(
            d.events,
            vec![state_change(1, 3, &["Email", "Mailbox", "Thread"])]
        );
    }

    #[test]
    fn real_sample_account_created() {
        let d = decode_whole("0007010a01f6bb81ef0f");
        assert_eq!(d.node_id, 0);
        assert_eq!(
            d.events,
            vec![Body::CacheInvalidate(CacheInvalidate {
                items: vec![CacheItem::EmailNegative {
                    domain_id: 1,
                    hash: 4259339766
                }]
            })]
        );
    }

    #[test]
    fn real_sample_calendar_alert() {
        let d = decode_whole("0001010100187665632d616c61726d2d31406578616d706c652e74657374026b31");
        assert_eq!(d.node_id, 0);
        assert_eq!(
            d.events,
            vec![Body::CalendarAlert(CalendarAlert {
                account_id: 1,
                event_id: 1,
                recurrence_id: None,
                uid: "vec-alarm-1@example.test".into(),
                alert_id: "k1".into(),
            })]
        );
    }

    #[test]
    fn real_sample_automatic_ban() {
        let d = decode_whole("00041180a080b7fccae3e004");
        assert_eq!(d.node_id, 0);
        assert_eq!(
            d.events,
            vec![registry(
                RegistryAction::Insert,
                17,
                Some(342711554306740224)
            )]
        );
    }

    #[test]
    fn every_tag_decodes() {
        let d = decode_whole("07 02020304 0304 040405 050506 0607 0700 08 09 0a 0b 0c");
        assert_eq!(d.node_id, 7);
        assert_eq!(
            d.events,
            vec![
                Body::EmailPush(EmailPush {
                    account_id: 2,
                    email_id: 3,
                    change_id: 4
                }),
                Body::PushServerUpdate(PushServerUpdate { account_id: 4 }),
                registry(RegistryAction::Insert, 4, Some(5)),
                registry(RegistryAction::Delete, 5, Some(6)),
                registry(RegistryAction::Reload, 7, None),
                Body::CacheInvalidate(CacheInvalidate { items: vec![] }),
                cache_invalidate_all(CacheScope::All),
                cache_invalidate_all(CacheScope::Negative),
                Body::QueueStatus(QueueStatus { running: true }),
                Body::QueueStatus(QueueStatus { running: false }),
                Body::QueueRefresh(Empty {}),
            ]
        );
    }

    #[test]
    fn domain_negative_keeps_its_value() {
        // Stalwart writes 0 after marker 11; any other value survives too.
        let d = decode_whole("00 07 02 0b00 0b05");
        assert_eq!(
            d.events,
            vec![Body::CacheInvalidate(CacheInvalidate {
                items: vec![CacheItem::DomainNegative(0), CacheItem::DomainNegative(5)]
            })]
        );
    }

    #[test]
    fn limits_decode() {
        // u16::MAX node id, u32::MAX account, u64::MAX change id and types.
        let d = decode_whole("ffff03 00 ffffffffffffffffff01 ffffffffffffffffff01 ffffffff0f");
        assert_eq!(d.node_id, u16::MAX);
        assert_eq!(
            d.events,
            vec![Body::StateChange(StateChange {
                account_id: u32::MAX,
                change_id: u64::MAX,
                types: DataTypes(u64::MAX),
            })]
        );
    }

    #[test]
    fn overlong_integers_are_accepted_and_re_encoded_short() {
        let d = decode(&bytes("8000 03 80808080 00")).unwrap();
        assert_eq!(d.error, None);
        assert_eq!(d.node_id, 0);
        assert_eq!(
            d.events,
            vec![Body::PushServerUpdate(PushServerUpdate { account_id: 0 })]
        );
        let again = encode(&Record {
            node_id: d.node_id,
            events: d.events,
        });
        assert_eq!(again.unwrap(), bytes("00 03 00"));
    }

    #[test]
    fn node_id_overflow() {
        // 65536 needs 17 bits.
        let e = decode(&bytes("808004 0c")).unwrap_err();
        assert_eq!(
            e,
            err(
                0,
                DecodeErrorKind::Overflow {
                    field: "node id",
                    ty: "u16"
                }
            )
        );
        assert_eq!(e.to_string(), "byte 0: node id does not fit in a u16");
        // A fourth byte is past a u16's budget even if the value is small.
        assert!(decode(&bytes("80808000")).is_err());
    }

    #[test]
    fn node_id_truncated() {
        let e = decode(&bytes("80")).unwrap_err();
        assert_eq!(e, err(0, DecodeErrorKind::Truncated { field: "node id" }));
    }

    #[test]
    fn empty_input() {
        let e = decode(&[]).unwrap_err();
        assert_eq!(e, err(0, DecodeErrorKind::Empty));
        assert_eq!(e.to_string(), "byte 0: empty record: no node id");
    }

    #[test]
    fn u32_overflow() {
        // Queue refresh, then a push server update whose account id has bit 32.
        let (events, e) = decode_faulty("00 0c 03 ffffffff10");
        assert_eq!(events, vec![Body::QueueRefresh(Empty {})]);
        let overflow = DecodeErrorKind::Overflow {
            field: "account id",
            ty: "u32",
        };
        assert_eq!(e, err(3, overflow.clone()));
        // Six bytes for a u32 overflow even when the value would be 0.
        let (events, e) = decode_faulty("00 0c 03 808080808000");
        assert_eq!(events.len(), 1);
        assert_eq!(e, err(3, overflow));
    }

    #[test]
    fn u64_overflow() {
        let overflow = DecodeErrorKind::Overflow {
            field: "change id",
            ty: "u64",
        };
        // The tenth byte may only carry bit 63.
        let (events, e) = decode_faulty("00 08 00 ffffffffffffffffff02 00 00");
        assert_eq!(events, vec![cache_invalidate_all(CacheScope::All)]);
        assert_eq!(e, err(3, overflow.clone()));
        // Eleven bytes.
        let (events, e) = decode_faulty("00 08 00 8080808080808080808000 00 00");
        assert_eq!(events.len(), 1);
        assert_eq!(e, err(3, overflow));
    }

    #[test]
    fn truncated_inside_a_leb128() {
        let (events, e) = decode_faulty("00 0a 02 80");
        assert_eq!(
            events,
            vec![Body::QueueStatus(QueueStatus { running: true })]
        );
        assert_eq!(
            e,
            err(
                3,
                DecodeErrorKind::Truncated {
                    field: "account id"
                }
            )
        );
        assert_eq!(
            e.to_string(),
            "byte 3: the record ends before the end of the account id"
        );
    }

    #[test]
    fn truncated_missing_field() {
        let (events, e) = decode_faulty("00 0b 04 11");
        assert_eq!(
            events,
            vec![Body::QueueStatus(QueueStatus { running: false })]
        );
        assert_eq!(e, err(4, DecodeErrorKind::Truncated { field: "object id" }));
        // A cache invalidation whose second item ends after its marker.
        let (events, e) = decode_faulty("00 0c 07 02 0007 00");
        assert_eq!(events, vec![Body::QueueRefresh(Empty {})]);
        assert_eq!(e, err(7, DecodeErrorKind::Truncated { field: "cache id" }));
    }

    #[test]
    fn string_length_past_end() {
        let (events, e) = decode_faulty("00 09 01 01 01 00 18 76");
        assert_eq!(events, vec![cache_invalidate_all(CacheScope::Negative)]);
        assert_eq!(
            e,
            err(
                6,
                DecodeErrorKind::LengthPastEnd {
                    field: "uid length",
                    len: 24,
                    remaining: 1
                }
            )
        );
        assert_eq!(
            e.to_string(),
            "byte 6: uid length 24 runs past the end of the record (1 bytes left)"
        );
    }

    #[test]
    fn absurd_cache_count_is_refused_without_allocating() {
        let (events, e) = decode_faulty("00 0c 07 ffffffffffffffffff01");
        assert_eq!(events, vec![Body::QueueRefresh(Empty {})]);
        assert_eq!(
            e,
            err(
                3,
                DecodeErrorKind::LengthPastEnd {
                    field: "cache item count",
                    len: u64::MAX,
                    remaining: 0
                }
            )
        );
    }

    #[test]
    fn invalid_utf8() {
        // uid "a" followed by a broken two-byte sequence; the offset is the
        // first bad byte.
        let (events, e) = decode_faulty("00 0c 01 01 01 00 03 61c328 00");
        assert_eq!(events, vec![Body::QueueRefresh(Empty {})]);
        assert_eq!(e, err(8, DecodeErrorKind::InvalidUtf8 { field: "uid" }));
        let (_, e) = decode_faulty("00 01 01 01 00 00 01 ff");
        assert_eq!(
            e,
            err(7, DecodeErrorKind::InvalidUtf8 { field: "alert id" })
        );
    }

    #[test]
    fn unknown_tag_ends_the_record() {
        // Tag 13 is not in v0.16; the queue refresh after it is lost.
        let (events, e) = decode_faulty("00 0c 0d 0c");
        assert_eq!(events, vec![Body::QueueRefresh(Empty {})]);
        assert_eq!(e, err(2, DecodeErrorKind::UnknownTag(13)));
        assert!(e.to_string().starts_with("byte 2: unknown event tag 13"));
    }

    #[test]
    fn unknown_cache_marker() {
        // The whole cache invalidation goes, its good first item included.
        let (events, e) = decode_faulty("00 0c 07 02 0007 0c05");
        assert_eq!(events, vec![Body::QueueRefresh(Empty {})]);
        assert_eq!(e, err(6, DecodeErrorKind::UnknownCacheMarker(12)));
        // A marker ≥ 128 is one raw byte, not the start of a LEB128.
        let (_, e) = decode_faulty("00 07 01 8000");
        assert_eq!(e, err(3, DecodeErrorKind::UnknownCacheMarker(0x80)));
    }

    #[test]
    fn kinds_without_a_wire_form_are_refused() {
        let record = Record {
            node_id: 1,
            events: vec![Body::QueueRefresh(Empty {}), Body::SettingsReload(Empty {})],
        };
        let e = encode(&record).unwrap_err();
        assert_eq!(e.index, 1);
        assert_eq!(e.kind, EncodeErrorKind::NoWireForm("settings-reload"));
        assert_eq!(
            e.to_string(),
            "event 1: kind `settings-reload` has no Stalwart v0.16 form"
        );
        assert!(!has_wire_form(&Body::SettingsReload(Empty {})));
    }

    #[test]
    fn values_without_a_wire_form_are_refused() {
        let alert = Body::CalendarAlert(CalendarAlert {
            account_id: 1,
            event_id: 2,
            recurrence_id: Some(0),
            uid: "u".into(),
            alert_id: "a".into(),
        });
        let cases = [
            (alert, EncodeErrorKind::ZeroRecurrence),
            (
                registry(RegistryAction::Insert, 17, None),
                EncodeErrorKind::MissingRegistryId { action: "insert" },
            ),
            (
                registry(RegistryAction::Delete, 17, None),
                EncodeErrorKind::MissingRegistryId { action: "delete" },
            ),
            (
                registry(RegistryAction::Reload, 17, Some(3)),
                EncodeErrorKind::RegistryReloadWithId(3),
            ),
        ];
        for (body, kind) in cases {
            assert!(!has_wire_form(&body), "{body:?}");
            let e = encode_batches(0, &[body]).unwrap_err();
            assert_eq!(e, EncodeError { index: 0, kind });
        }
    }

    #[test]
    fn batches_hold_at_most_100_events() {
        let events: Vec<Body> = (0..250)
            .map(|i| Body::PushServerUpdate(PushServerUpdate { account_id: i }))
            .collect();
        let records = encode_batches(3, &events).unwrap();
        let counts: Vec<usize> = records
            .iter()
            .map(|r| {
                let d = decode(r).unwrap();
                assert_eq!((d.node_id, &d.error), (3, &None));
                d.events.len()
            })
            .collect();
        assert_eq!(counts, [100, 100, 50]);
        let back: Vec<Body> = records
            .iter()
            .flat_map(|r| decode(r).unwrap().events)
            .collect();
        assert_eq!(back, events);
        assert!(encode_batches(3, &[]).unwrap().is_empty());
    }

    #[test]
    fn batch_errors_count_from_the_first_event() {
        let mut events = vec![Body::QueueRefresh(Empty {}); 150];
        events[120] = Body::SettingsReload(Empty {});
        assert_eq!(encode_batches(0, &events).unwrap_err().index, 120);
    }

    // ------------------------------------------------------------ proptests

    fn any_u64() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            Just(1),
            Just(127),
            Just(128),
            Just(u64::MAX),
            any::<u64>()
        ]
    }

    fn any_u32() -> impl Strategy<Value = u32> {
        prop_oneof![
            Just(0u32),
            Just(1),
            Just(127),
            Just(128),
            Just(u32::MAX),
            any::<u32>()
        ]
    }

    fn any_u16() -> impl Strategy<Value = u16> {
        prop_oneof![
            Just(0u16),
            Just(1),
            Just(127),
            Just(128),
            Just(u16::MAX),
            any::<u16>()
        ]
    }

    fn any_string() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "\\PC{0,40}",
            // Long and multi-byte: 1000 chars of 1- to 4-byte UTF-8.
            "[aé€😀]{1000}",
        ]
    }

    fn any_recurrence() -> impl Strategy<Value = Option<i64>> {
        prop_oneof![
            Just(None),
            Just(Some(i64::MIN)),
            Just(Some(-1)),
            Just(Some(1)),
            Just(Some(i64::MAX)),
            any::<i64>().prop_map(|v| (v != 0).then_some(v)),
        ]
    }

    fn any_cache_item() -> impl Strategy<Value = CacheItem> {
        (0u8..12, any_u32(), any_u32()).prop_map(|(marker, a, b)| {
            CacheItem::from_marker(marker, a).unwrap_or(CacheItem::EmailNegative {
                domain_id: a,
                hash: b,
            })
        })
    }

    /// Every body with a v0.16 form, across its whole value range.
    fn any_wire_body() -> impl Strategy<Value = Body> {
        prop_oneof![
            (any_u32(), any_u64(), any_u64()).prop_map(|(account_id, change_id, types)| {
                Body::StateChange(StateChange {
                    account_id,
                    change_id,
                    types: DataTypes(types),
                })
            }),
            (
                any_u32(),
                any_u32(),
                any_recurrence(),
                any_string(),
                any_string()
            )
                .prop_map(|(account_id, event_id, recurrence_id, uid, alert_id)| {
                    Body::CalendarAlert(CalendarAlert {
                        account_id,
                        event_id,
                        recurrence_id,
                        uid,
                        alert_id,
                    })
                }),
            (any_u32(), any_u32(), any_u64()).prop_map(|(account_id, email_id, change_id)| {
                Body::EmailPush(EmailPush {
                    account_id,
                    email_id,
                    change_id,
                })
            }),
            any_u32()
                .prop_map(|account_id| Body::PushServerUpdate(PushServerUpdate { account_id })),
            (any::<bool>(), any_u16(), any_u64()).prop_map(|(insert, object_type, id)| {
                let action = if insert {
                    RegistryAction::Insert
                } else {
                    RegistryAction::Delete
                };
                registry(action, object_type, Some(id))
            }),
            any_u16().prop_map(|t| registry(RegistryAction::Reload, t, None)),
            prop::collection::vec(any_cache_item(), 0..20)
                .prop_map(|items| Body::CacheInvalidate(CacheInvalidate { items })),
            Just(cache_invalidate_all(CacheScope::All)),
            Just(cache_invalidate_all(CacheScope::Negative)),
            any::<bool>().prop_map(|running| Body::QueueStatus(QueueStatus { running })),
            Just(Body::QueueRefresh(Empty {})),
        ]
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(
            node_id in any_u16(),
            events in prop::collection::vec(any_wire_body(), 0..30),
        ) {
            prop_assert!(events.iter().all(has_wire_form));
            let record = Record { node_id, events };
            let raw = encode(&record).unwrap();
            let decoded = decode(&raw).unwrap();
            prop_assert_eq!(decoded.error, None);
            prop_assert_eq!(decoded.node_id, record.node_id);
            prop_assert_eq!(decoded.events, record.events);
        }

        /// The fuzz target's property, run on every `cargo test` too.
        #[test]
        fn decoding_arbitrary_bytes_is_total_and_consistent(
            raw in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            if let Ok(d) = decode(&raw) {
                let Decoded { node_id, events, error } = d;
                if error.is_none() {
                    let again = encode(&Record { node_id, events: events.clone() }).unwrap();
                    // Only over-long LEB128s make the input longer than its
                    // canonical form.
                    prop_assert!(again == raw || again.len() < raw.len());
                    let d2 = decode(&again).unwrap();
                    prop_assert_eq!((d2.node_id, d2.events, d2.error), (node_id, events, None));
                }
            }
        }
    }
}
