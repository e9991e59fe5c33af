//! How a handler fails: the node's typed capability errors ([`EffectError`]),
//! a handler's own verdict ([`Fail`]) and the glue that lets `?` turn one
//! into the other.

use std::fmt;

/// Why the node did not apply what a handler asked (`effect-error` in
/// `wit/herald.wit`). Every fallible [`Host`](crate::Host) method answers
/// with it, so a handler decides by class, not by reading a message.
///
/// `?` in a handler function turns it into a [`Fail`]: `Transient` retries
/// the event, the other classes reject it (see [`Fail`]'s `From` impl for
/// why). Match it yourself where a class means something else to your
/// handler, as `Gone` does for push.
///
/// Displayed as `class: message` (`transient: broker unreachable`), which is
/// the reason the event carries when it is retried or dead-lettered.
//
// Written by hand rather than generated: wit-bindgen gives every type used as
// a `result` error a `Display` that prints its `Debug` form, which would leave
// no room for the readable one below. The bindings are told (`with` in
// lib.rs) to lift the WIT variant straight into this enum, so it must keep
// the WIT cases, in order, each carrying a `String`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EffectError {
    /// Might work later (network error, 429/5xx, producer queue full, disk
    /// error): answer `retry`.
    Transient(String),
    /// The target no longer exists (a push subscription answered 404 or
    /// 410): nothing to retry.
    Gone(String),
    /// Will never work as asked (malformed network, unparseable certificate,
    /// invalid domain): answer `reject`.
    Invalid(String),
    /// The node's policy refuses it whatever the handler says (a kind the
    /// manifest may not publish, a protected network).
    Denied(String),
}

impl EffectError {
    /// The class, as written in the WIT: `transient`, `gone`, `invalid` or
    /// `denied`.
    pub fn class(&self) -> &'static str {
        match self {
            EffectError::Transient(_) => "transient",
            EffectError::Gone(_) => "gone",
            EffectError::Invalid(_) => "invalid",
            EffectError::Denied(_) => "denied",
        }
    }

    /// The node's message, without the class.
    pub fn message(&self) -> &str {
        match self {
            EffectError::Transient(m)
            | EffectError::Gone(m)
            | EffectError::Invalid(m)
            | EffectError::Denied(m) => m,
        }
    }
}

impl fmt::Display for EffectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class(), self.message())
    }
}

impl std::error::Error for EffectError {}

/// What a handler function returns: `Ok(())` when the event is handled (or
/// there is nothing to do), `Err(`[`Fail`]`)` otherwise.
pub type Handled = Result<(), Fail>;

/// Why a handler did not handle an event, and what herald should do with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fail {
    /// Transient: herald retries the event later with backoff, holding its
    /// partition so that order is kept.
    Retry(String),
    /// Permanent: the event goes to the dead-letter topic with the reason.
    Reject(String),
}

impl Fail {
    /// The reason given.
    pub fn reason(&self) -> &str {
        match self {
            Fail::Retry(r) | Fail::Reject(r) => r,
        }
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fail::Retry(r) => write!(f, "retry: {r}"),
            Fail::Reject(r) => write!(f, "reject: {r}"),
        }
    }
}

impl std::error::Error for Fail {}

/// What `?` does with a capability's error: the class decides, the reason is
/// the error's [`Display`](fmt::Display) text (`transient: disk full`).
///
/// - `Transient` → [`Fail::Retry`]: the node may manage next time.
/// - `Invalid` → [`Fail::Reject`]: asking again cannot help.
/// - `Denied` → [`Fail::Reject`]: the node's policy will refuse it again;
///   retrying would only hold the partition forever.
/// - `Gone` → [`Fail::Reject`]: the target no longer exists, so there is
///   nothing to retry. Where that is the normal end of things rather than a
///   fault (a push subscription that was deleted: the node has already told
///   the cluster), the handler matches `Gone` itself and answers `Ok(())`
///   instead of using `?`.
impl From<EffectError> for Fail {
    fn from(e: EffectError) -> Fail {
        let reason = e.to_string();
        match e {
            EffectError::Transient(_) => Fail::Retry(reason),
            EffectError::Gone(_) | EffectError::Invalid(_) | EffectError::Denied(_) => {
                Fail::Reject(reason)
            }
        }
    }
}

/// `Err(Fail::Retry(reason))`: the event failed for now; herald retries it.
///
/// For `return retry(format!("…"))` in a handler function.
pub fn retry(reason: impl Into<String>) -> Handled {
    Err(Fail::Retry(reason.into()))
}

/// `Err(Fail::Reject(reason))`: the event can never be handled; herald
/// sends it to the dead-letter topic.
///
/// For `return reject(format!("…"))` in a handler function.
pub fn reject(reason: impl Into<String>) -> Handled {
    Err(Fail::Reject(reason.into()))
}

/// Choose the verdict for any error yourself, with the error's
/// [`Display`](fmt::Display) text as the reason; then `?` it.
///
/// ```
/// use herald_guest::net::parse_network;
/// use herald_guest::{Fail, OrFail};
///
/// fn check(ip: &str) -> Result<(), Fail> {
///     let net = parse_network(ip).or_reject()?; // malformed: dead-letter it
///     assert!(net.addr().is_ipv4());
///     Ok(())
/// }
/// assert!(matches!(check("bogus"), Err(Fail::Reject(r)) if r.contains("bogus")));
/// ```
///
/// On a capability's [`EffectError`] it overrides the class: `.or_retry()?`
/// retries whatever the node answered.
pub trait OrFail<T> {
    /// On `Err(e)`, [`Fail::Retry`] with `e.to_string()`.
    fn or_retry(self) -> Result<T, Fail>;
    /// On `Err(e)`, [`Fail::Reject`] with `e.to_string()`.
    fn or_reject(self) -> Result<T, Fail>;
}

impl<T, E: fmt::Display> OrFail<T> for Result<T, E> {
    fn or_retry(self) -> Result<T, Fail> {
        self.map_err(|e| Fail::Retry(e.to_string()))
    }
    fn or_reject(self) -> Result<T, Fail> {
        self.map_err(|e| Fail::Reject(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effect_errors_display_their_class() {
        assert_eq!(
            EffectError::Transient("disk full".into()).to_string(),
            "transient: disk full"
        );
        assert_eq!(EffectError::Gone("410".into()).to_string(), "gone: 410");
        assert_eq!(EffectError::Invalid("x".into()).to_string(), "invalid: x");
        assert_eq!(EffectError::Denied("y".into()).to_string(), "denied: y");
    }

    #[test]
    fn question_mark_maps_by_class() {
        fn run(e: EffectError) -> Handled {
            Err(e)?;
            Ok(())
        }
        assert_eq!(
            run(EffectError::Transient("503".into())),
            Err(Fail::Retry("transient: 503".into()))
        );
        for e in [
            EffectError::Gone("410".into()),
            EffectError::Invalid("bad".into()),
            EffectError::Denied("no".into()),
        ] {
            assert_eq!(run(e.clone()), Err(Fail::Reject(e.to_string())));
        }
    }

    #[test]
    fn or_retry_and_or_reject_override() {
        let e: Result<(), EffectError> = Err(EffectError::Invalid("bad".into()));
        assert_eq!(
            e.clone().or_retry(),
            Err(Fail::Retry("invalid: bad".into()))
        );
        assert_eq!(e.or_reject(), Err(Fail::Reject("invalid: bad".into())));
        let s: Result<u8, String> = Err("nope".into());
        assert_eq!(s.or_reject(), Err(Fail::Reject("nope".into())));
        assert_eq!(Ok::<_, String>(3).or_retry(), Ok(3));
        assert_eq!(retry("later"), Err(Fail::Retry("later".into())));
        assert_eq!(reject("never"), Err(Fail::Reject("never".into())));
    }
}
