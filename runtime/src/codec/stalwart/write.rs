//! Writing events in the shortest form Stalwart writes them.

use super::*;

/// Why `body` cannot be encoded, if it cannot. The one place that decides,
/// so that [`has_wire_form`] and [`encode`] never disagree.
pub(super) fn wire_problem(body: &Body) -> Option<EncodeErrorKind> {
    match body {
        Body::Push(_)
        | Body::IpBlock(_)
        | Body::TlsCertificate(_)
        | Body::SettingsReload(_)
        | Body::PushSubscriptionGone(_)
        | Body::Probe(_) => Some(EncodeErrorKind::NoWireForm(body.kind())),
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
pub(super) fn encode_events(
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
        | Body::PushSubscriptionGone(_)
        | Body::Probe(_) => {}
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
