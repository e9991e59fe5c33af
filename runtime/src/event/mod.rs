//! The coordination event as herald's host code sees it, and its JSON form.
//!
//! The JSON envelope (`{"v":1,"id","kind","origin","ts","body"}`) is a public
//! contract: mail servers, scripts and third-party Kafka clients produce it.
//! Field names are camelCase and times are Unix milliseconds; CHANGELOG.md
//! keeps the contract's history. Unknown fields are tolerated so that a newer publisher does not
//! break an older node; a missing or mistyped field is an error naming it.

mod body;
mod envelope;
pub mod probe;
pub mod version;

pub use body::*;
pub use envelope::DecodeError;
pub use version::{Entity, Version};

/// An id derived from `parts` (a cause's id, a handler, a count): the same
/// parts give the same id, so an effect repeated by a retry is recognised.
pub fn derived_id(prefix: &str, parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    format!("{prefix}-{}", &hex::encode(h.finalize())[..32])
}

/// The longest `id`, `origin` or `kind` an envelope may carry, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// The only envelope version this node understands.
pub const ENVELOPE_VERSION: u32 = 1;

/// The most envelopes one bundle record may hold (a JSON array of
/// envelopes: one record, one signature, handled in order).
pub const MAX_BUNDLE: usize = 1000;

/// Where a record came from. Events read from a file carry the file name as
/// the topic and the line number as the offset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Position {
    /// Shared with the record and its other events.
    pub topic: std::sync::Arc<str>,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub id: String,
    pub origin: String,
    /// Unix milliseconds.
    pub ts: u64,
    /// How many handler publishes led to this event: 0 for an event from
    /// outside, the cause's hops + 1 for one a handler published. Past
    /// `publish.maxHops` an event is dead-lettered, not handled, which ends
    /// publish loops.
    pub hops: u32,
    pub position: Position,
    pub body: Body,
}

impl Event {
    /// This event's version, for the entities it writes ([`version`]).
    pub fn version(&self) -> Version {
        Version::new(self.ts, &self.id)
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
