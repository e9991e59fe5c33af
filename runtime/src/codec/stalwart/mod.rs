//! Stalwart v0.16's binary batches on the topic `stwt.agora` (the wire
//! format is described in `docs/design.md`).
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

mod read;
#[cfg(test)]
mod tests;
mod write;

#[cfg(test)]
use read::cache_invalidate_all;
use read::{Reader, decode_event};
use write::{encode_events, wire_problem};

/// The topic Stalwart publishes its batches on (fixed in Stalwart's code).
pub const TOPIC: &str = "stwt.agora";

/// The most events Stalwart puts in one record; [`encode_batches`] keeps to
/// it. Decoding accepts any number, as Stalwart does.
pub const MAX_EVENTS_PER_RECORD: usize = 100;

/// Default of the most events herald decodes from one record
/// (`stalwart.maxEventsPerRecord`). Stalwart writes at most 100; a record
/// of a megabyte of one-byte events would otherwise be a million.
pub const DEFAULT_MAX_EVENTS: usize = 10_000;

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
    /// More events than the decoder was allowed to hold; the offset is
    /// where the first event past the limit starts. The whole record is
    /// refused: herald never holds an unbounded number of events.
    #[error("more than {0} events in one record")]
    TooManyEvents(usize),
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
    decode_at_most(bytes, usize::MAX)
}

/// [`decode`], holding at most `max_events` events: a record with more is
/// refused whole ([`DecodeErrorKind::TooManyEvents`], and no events kept).
pub fn decode_at_most(bytes: &[u8], max_events: usize) -> Result<Decoded, DecodeError> {
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
        if events.len() == max_events {
            return Ok(Decoded {
                node_id,
                events: Vec::new(),
                error: Some(DecodeError {
                    offset: reader.pos,
                    kind: DecodeErrorKind::TooManyEvents(max_events),
                }),
            });
        }
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
