//! Reading a record value: a cursor over LEB128 integers and strings, and
//! one function per event tag.

use super::*;

/// A cursor over a record value. Every read either advances past a whole
/// field or fails with an error at the field's first byte (at the first
/// invalid byte for a string that is not UTF-8).
pub(super) struct Reader<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) pos: usize,
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
    pub(super) fn at_end(&self) -> bool {
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

    pub(super) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
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
pub(super) fn decode_event(r: &mut Reader<'_>) -> Result<Body, DecodeError> {
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
    if count > MAX_CACHE_ITEMS {
        // A list this long costs every handler more than it saves: the
        // items are read (the record's next event starts after them) but
        // not kept, and the event becomes "invalidate everything", which
        // covers them all. A hostile 900 KB record stays a small event.
        for _ in 0..count {
            decode_cache_item(r)?;
        }
        metrics::counter!("herald_stalwart_cache_lists_folded_total").increment(1);
        return Ok(cache_invalidate_all(CacheScope::All));
    }
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        items.push(decode_cache_item(r)?);
    }
    Ok(Body::CacheInvalidate(CacheInvalidate { items }))
}

/// The most items one `cache-invalidate` event keeps; a longer list is
/// read as `cache-invalidate-all`.
pub const MAX_CACHE_ITEMS: usize = 1024;

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

pub(super) fn cache_invalidate_all(scope: CacheScope) -> Body {
    Body::CacheInvalidateAll(CacheInvalidateAll { scope })
}
