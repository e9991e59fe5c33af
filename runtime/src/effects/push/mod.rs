//! The node's Web Push client: what [`super::Effect::PushDeliver`] turns into when
//! the `push` handler (shared mode, so once per cluster) asks the host to
//! deliver a notification.
//!
//! A delivery is one `POST` to the subscription's endpoint with the headers
//! of RFC 8030 (`TTL`, `Urgency`, and `Topic` when the event names one) and
//! the VAPID `Authorization` of RFC 8292 ([`vapid`]). With the
//! subscription's keys (`p256dh` and `auth`) the payload is encrypted for
//! it ([`ece`], RFC 8291) and sent with `Content-Encoding: aes128gcm`;
//! without keys nothing is sent but the headers (a "tickle": push services
//! refuse unencrypted payloads), and the payload is left out. The answer
//! decides what happens next:
//!
//! - any 2xx: delivered;
//! - 429, 5xx, a network error or a timeout: retried within the call, up to
//!   [`PushSettings::attempts`] requests in all, waiting what `Retry-After`
//!   asks or else 200 ms, 400 ms, 800 ms…; a `Retry-After` longer than
//!   [`PushSettings::max_retry_after`] is not waited for: the call returns
//!   [`EffectError::Transient`] at once and herald's own backoff retries the
//!   event later, without holding a handler call for an hour;
//! - 404 or 410: [`EffectError::Gone`], the subscription no longer exists;
//! - any other answer, redirects included (they are never followed: a push
//!   service that redirects is misconfigured, and following it would send
//!   the payload somewhere the subscriber never named): [`EffectError::Invalid`].
//!
//! Endpoints must be `https` URLs on public addresses ([`guard`] checks
//! the host and every address it resolves to, and the connection goes to
//! the addresses checked); plain `http` and private targets only when
//! [`PushSettings::allow_private`] says so (test setups). No proxy from the
//! environment is used, and at most a few KiB of an answer are read.
//!
//! Kafka delivers at least once: a node can crash after the POST and before
//! the offset commit, and the event is then handled again. So that a
//! subscriber does not see the same notification twice, the client remembers
//! the ids of the events it delivered and answers [`Delivered::Before`]
//! without a request for an id it already delivered. The record lives in
//! memory and in `push-delivered.log` in the state directory, one
//! `<unix-ms> <event id>` line per delivery, appended and `fsync`ed before
//! [`PushClient::deliver`] returns: by the time the node commits the offset,
//! the record is durable. At open the file is read back (a torn last line,
//! from a crash in the middle of an append, is ignored: it was never synced,
//! so its delivery was never reported). Ids are kept for 7 days, longer than
//! any event stays unconsumed, and at most 1,000,000 of them; the file is
//! rewritten without the dropped lines (to a temporary file renamed into
//! place) when more than half of its lines are no longer needed. Concurrent
//! calls for the same id are serialised by a per-id guard, so they never
//! both POST.
//!
//! Every call counts in `herald_push_deliveries_total{status}`, status being
//! `delivered`, `duplicate`, `gone`, `invalid` or `transient`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use reqwest::Url;
use reqwest::header::{
    AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, LOCATION, RETRY_AFTER,
};

use super::EffectError;
use crate::event::{PushKeys, Urgency, now_ms};

mod delivered;
pub mod ece;
pub mod guard;
pub mod outbox;
#[cfg(test)]
mod tests;
pub mod vapid;

pub use delivered::LOG_FILE;
use delivered::Log;
pub use outbox::{Outbox, Queued, Submitted};
pub use vapid::Vapid;

const DEFAULT_BACKOFF: Duration = Duration::from_millis(200);
/// Wait used for a `Retry-After` given as an HTTP-date (not parsed).
const HTTP_DATE_WAIT: Duration = Duration::from_secs(1);
/// How much of an error answer's body is quoted in the error.
const BODY_QUOTE: usize = 200;
/// How much of an answer's body is read at all: a push service has nothing
/// to say that needs more, and an endpoint may be hostile.
const BODY_READ: usize = 4 * 1024;

/// How the client talks to push services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushSettings {
    /// Requests made at most in one [`PushClient::deliver`] call when the
    /// service answers 429 or 5xx or cannot be reached (default 4; 0 counts
    /// as 1).
    pub attempts: u32,
    /// The longest `Retry-After` waited for within a call (default 10 s). A
    /// longer one ends the call with [`EffectError::Transient`], so that the
    /// event is retried later by herald's own backoff.
    pub max_retry_after: Duration,
    /// Timeout of each request, answer body included (default 10 s).
    pub request_timeout: Duration,
    /// Accept plain `http` and endpoints on loopback, private, link-local
    /// and other non-public addresses (`push.allowPrivate`, default false:
    /// for test setups only).
    pub allow_private: bool,
    /// The node's VAPID key (`push.vapid.keyFile`; none: `vapid.key` in the
    /// state directory), created if missing. See [`vapid`].
    pub vapid_key_file: Option<PathBuf>,
    /// The `sub` claim of VAPID tokens (`push.vapid.subject`): a `mailto:`
    /// or `https:` URL; none leaves the claim out.
    pub vapid_subject: Option<String>,
}

impl Default for PushSettings {
    fn default() -> PushSettings {
        PushSettings {
            attempts: 4,
            max_retry_after: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            allow_private: false,
            vapid_key_file: None,
            vapid_subject: None,
        }
    }
}

/// One notification to deliver.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    /// The subscription's push endpoint (an `https` URL).
    pub endpoint: &'a str,
    /// What the user agent receives, encrypted for `keys`; not sent without
    /// them.
    pub payload: &'a [u8],
    /// The subscription's keys (base64url `p256dh` and `auth`).
    pub keys: Option<&'a PushKeys>,
    /// Seconds the push service may keep the message (`TTL`).
    pub ttl: u32,
    pub urgency: Urgency,
    /// Replaces an undelivered message with the same topic (`Topic`: at most
    /// 32 characters of the base64url alphabet).
    pub topic: Option<&'a str>,
}

impl<'a> Message<'a> {
    /// A message without keys or topic.
    pub fn new(endpoint: &'a str, payload: &'a [u8], ttl: u32, urgency: Urgency) -> Message<'a> {
        Message {
            endpoint,
            payload,
            keys: None,
            ttl,
            urgency,
            topic: None,
        }
    }
}

/// What a successful [`PushClient::deliver`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    /// The push service accepted the message now, answering `status` to the
    /// last of `attempts` requests.
    Now { status: u16, attempts: u32 },
    /// This node already delivered this event id: no request was made.
    Before,
}

/// Delivers Web Push messages, at most once per event id from this node.
/// See the [module documentation](self).
pub struct PushClient {
    http: reqwest::Client,
    settings: PushSettings,
    vapid: Vapid,
    /// First wait between attempts without `Retry-After`; doubles each time.
    backoff: Duration,
    log: Arc<Mutex<Log>>,
    /// One lock per event id being delivered, so that concurrent calls for
    /// the same id run one after the other.
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl PushClient {
    /// Open the client. `state_dir`: where the record of delivered event ids
    /// is kept (file `push-delivered.log`); it is created if missing, and the
    /// ids delivered before a restart are read back from it. The VAPID key is
    /// read from [`PushSettings::vapid_key_file`] (by default `vapid.key` in
    /// `state_dir`), and created there if missing.
    pub fn open(state_dir: &Path, settings: PushSettings) -> anyhow::Result<PushClient> {
        let key_file = settings
            .vapid_key_file
            .clone()
            .unwrap_or_else(|| state_dir.join(vapid::DEFAULT_KEY_FILE));
        let vapid = Vapid::load_or_create(&key_file, settings.vapid_subject.clone())?;
        if settings.vapid_subject.is_none() {
            tracing::warn!(
                "push.vapid.subject is not set: VAPID tokens carry no `sub` contact, which some push services refuse"
            );
        }
        let mut http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // A proxy from the environment would see every payload and
            // decide where it goes; pushes go straight to the endpoint.
            .no_proxy();
        if !settings.allow_private {
            http = http.dns_resolver(Arc::new(guard::Guarded));
        }
        let http = http
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the push HTTP client")?;
        let log = Log::open(state_dir, now_ms())?;
        Ok(PushClient {
            http,
            settings,
            vapid,
            backoff: DEFAULT_BACKOFF,
            log: Arc::new(Mutex::new(log)),
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    /// Shorter waits between attempts, so that tests run fast.
    #[cfg(test)]
    fn with_backoff(mut self, backoff: Duration) -> PushClient {
        self.backoff = backoff;
        self
    }

    /// The node's VAPID public key (base64url): the `applicationServerKey`
    /// web clients subscribe with.
    pub fn vapid_public_key(&self) -> &str {
        self.vapid.public_key()
    }

    /// POST `message` to its endpoint with Web Push headers, encrypted
    /// when it has keys, at most once per `event_id` from this node:
    /// an id this node already delivered returns [`Delivered::Before`]
    /// without a request. On success the id is durably recorded before this
    /// returns. Errors: [`EffectError::Transient`] (429, 5xx, network error
    /// or timeout after the last attempt, or a `Retry-After` too long to wait
    /// for), [`EffectError::Gone`] (404, 410), [`EffectError::Invalid`] (a
    /// bad endpoint, event id, key or topic, a payload too large to encrypt,
    /// a redirect, any other 4xx).
    pub async fn deliver(
        &self,
        event_id: &str,
        message: &Message<'_>,
    ) -> Result<Delivered, EffectError> {
        let result = self.deliver_inner(event_id, message).await;
        let status = match &result {
            Ok(Delivered::Now { .. }) => "delivered",
            Ok(Delivered::Before) => "duplicate",
            Err(EffectError::Gone(_)) => "gone",
            Err(EffectError::Invalid(_)) => "invalid",
            Err(EffectError::Transient(_)) => "transient",
            Err(EffectError::Denied(_)) => "denied",
        };
        metrics::counter!("herald_push_deliveries_total", "status" => status).increment(1);
        match &result {
            Ok(Delivered::Now { status, attempts }) => {
                tracing::debug!(event_id, status, attempts, "push delivered")
            }
            Ok(Delivered::Before) => {
                tracing::debug!(event_id, "push already delivered by this node")
            }
            Err(err) => tracing::info!(event_id, %err, "push not delivered"),
        }
        result
    }

    /// Number of event ids remembered (for tests/metrics).
    pub fn remembered(&self) -> usize {
        lock(&self.log).delivered.len()
    }

    /// Whether this node delivered `event_id` already.
    pub fn delivered(&self, event_id: &str) -> bool {
        lock(&self.log).contains(event_id)
    }

    /// Refuse what can never be sent (bad event id, endpoint, topic or
    /// keys, a payload too large to encrypt) without a request; the
    /// endpoint's origin otherwise.
    pub fn check(&self, event_id: &str, message: &Message<'_>) -> Result<String, EffectError> {
        let (url, _) = self.validate(event_id, message)?;
        Ok(url.origin().ascii_serialization())
    }

    /// The checks of [`PushClient::check`]: the endpoint's URL, and whom
    /// to encrypt for (none without keys). Nothing is encrypted yet.
    fn validate(
        &self,
        event_id: &str,
        message: &Message<'_>,
    ) -> Result<(Url, Option<ece::Receiver>), EffectError> {
        check_event_id(event_id)?;
        let url = check_endpoint(message.endpoint, self.settings.allow_private)?;
        if let Some(topic) = message.topic {
            check_topic(topic)?;
        }
        let receiver = match message.keys {
            Some(keys) => {
                ece::check_size(message.payload).map_err(EffectError::Invalid)?;
                Some(ece::Receiver::parse(&keys.p256dh, &keys.auth).map_err(EffectError::Invalid)?)
            }
            None => None,
        };
        Ok((url, receiver))
    }

    async fn deliver_inner(
        &self,
        event_id: &str,
        message: &Message<'_>,
    ) -> Result<Delivered, EffectError> {
        // (An id that cannot be recorded is never in the log: `validate`
        // refuses it.)
        if lock(&self.log).contains(event_id) {
            return Ok(Delivered::Before);
        }
        let (url, receiver) = self.validate(event_id, message)?;
        // Encrypted once: every attempt sends the same body.
        let body = match receiver {
            Some(receiver) => {
                Some(ece::encrypt(&receiver, message.payload).map_err(EffectError::Invalid)?)
            }
            None => None,
        };

        let _guard = self.claim(event_id).await;
        // Another call for the same id may have delivered while we waited.
        if lock(&self.log).contains(event_id) {
            return Ok(Delivered::Before);
        }
        let (status, attempts) = self.post(&url, message, body).await?;
        self.record(event_id).await?;
        Ok(Delivered::Now { status, attempts })
    }

    /// Wait until no other call is delivering `event_id`, and hold it until
    /// the returned guard is dropped.
    async fn claim(&self, event_id: &str) -> InFlight<'_> {
        let slot = lock(&self.in_flight)
            .entry(event_id.to_owned())
            .or_default()
            .clone();
        // Built before waiting, so that a cancelled wait still cleans up.
        let mut in_flight = InFlight {
            map: &self.in_flight,
            id: event_id.to_owned(),
            slot: Some(slot.clone()),
            guard: None,
        };
        in_flight.guard = Some(slot.lock_owned().await);
        in_flight
    }

    /// The request loop: Ok((status, attempts)) on a 2xx.
    /// `body`: the encrypted payload, or none for a message without keys.
    async fn post(
        &self,
        url: &Url,
        message: &Message<'_>,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, u32), EffectError> {
        let attempts = self.settings.attempts.max(1);
        let origin = url.origin().ascii_serialization();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let now = now_ms() / 1000;
            let mut request = self
                .http
                .post(url.clone())
                .timeout(self.settings.request_timeout)
                .header("TTL", message.ttl.to_string())
                .header("Urgency", urgency_name(message.urgency))
                .header(AUTHORIZATION, self.vapid.authorization(&origin, now));
            if let Some(topic) = message.topic {
                request = request.header("Topic", topic);
            }
            request = match &body {
                Some(body) => request
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_ENCODING, "aes128gcm")
                    .body(body.clone()),
                // No body, but said so: some push services answer 411
                // to a POST without a length.
                None => request.header(CONTENT_LENGTH, "0").body(Vec::new()),
            };
            let sent = request.send().await;
            let (failure, retry_after) = match sent {
                Ok(response) => {
                    let status = response.status().as_u16();
                    match status {
                        200..=299 => return Ok((status, attempt)),
                        404 | 410 => {
                            return Err(EffectError::Gone(format!(
                                "push service answered {status}: subscription gone"
                            )));
                        }
                        429 | 500..=599 => (
                            format!("push service answered {status}"),
                            retry_after(response.headers()),
                        ),
                        300..=399 => {
                            let to = response
                                .headers()
                                .get(LOCATION)
                                .and_then(|v| v.to_str().ok())
                                .map(|v| format!(" to {}", quote(v)))
                                .unwrap_or_default();
                            return Err(EffectError::Invalid(format!(
                                "push service answered {status} (redirect{to}): redirects are not followed"
                            )));
                        }
                        _ => {
                            let body = read_some(response).await;
                            let body = String::from_utf8_lossy(&body);
                            let body = body.trim();
                            let detail = if body.is_empty() {
                                String::new()
                            } else {
                                format!(": {}", quote(body))
                            };
                            return Err(EffectError::Invalid(format!(
                                "push service answered {status}{detail}"
                            )));
                        }
                    }
                }
                Err(err) => {
                    if let Some(refused) = guard::refusal(&err) {
                        return Err(EffectError::Invalid(refused.to_string()));
                    }
                    (error_text(&err), None)
                }
            };
            if attempt >= attempts {
                return Err(EffectError::Transient(format!(
                    "{failure} after {attempt} attempts"
                )));
            }
            let wait = match retry_after {
                Some(wait) if wait > self.settings.max_retry_after => {
                    return Err(EffectError::Transient(format!(
                        "{failure} asking to retry after {} s, longer than the {} s waited for in a call",
                        wait.as_secs_f64(),
                        self.settings.max_retry_after.as_secs_f64()
                    )));
                }
                Some(wait) => wait,
                None => self
                    .backoff
                    .saturating_mul(1 << (attempt - 1).min(16))
                    .min(self.settings.max_retry_after),
            };
            tracing::debug!(%failure, attempt, ?wait, "push attempt failed, retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// Remember `event_id` as delivered, durably (the file is synced on a
    /// blocking thread, off the async workers).
    async fn record(&self, event_id: &str) -> Result<(), EffectError> {
        let log = self.log.clone();
        let id = event_id.to_owned();
        let recorded = tokio::task::spawn_blocking(move || lock(&log).record(&id, now_ms()))
            .await
            .map_err(|err| {
                EffectError::Transient(format!("delivered, but recording it failed: {err}"))
            })?;
        recorded.map_err(|err| {
            // The id is remembered in memory anyway: a retry answers Before
            // instead of delivering a second time.
            tracing::error!(event_id, "push delivered, but recording it failed: {err:#}");
            EffectError::Transient(format!("delivered, but recording it failed: {err:#}"))
        })
    }
}

/// Holds the per-id lock; removes the id's entry when the last holder or
/// waiter goes.
struct InFlight<'a> {
    map: &'a Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    id: String,
    slot: Option<Arc<tokio::sync::Mutex<()>>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut map = lock(self.map);
        self.guard.take();
        self.slot.take();
        if let Some(slot) = map.get(&self.id)
            && Arc::strong_count(slot) == 1
        {
            map.remove(&self.id);
        }
    }
}

/// An id is written on one line of the record: no line breaks.
fn check_event_id(id: &str) -> Result<(), EffectError> {
    if id.is_empty() || id.contains(['\n', '\r']) {
        return Err(EffectError::Invalid(format!(
            "event id {} cannot be recorded",
            quote(id)
        )));
    }
    Ok(())
}

/// RFC 8030 §5.4: a topic is at most 32 characters of the URL-safe base64
/// alphabet.
fn check_topic(topic: &str) -> Result<(), EffectError> {
    let ok = !topic.is_empty()
        && topic.len() <= 32
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(EffectError::Invalid(format!(
            "field `topic`: {} is not 1 to 32 characters of the base64url alphabet (A-Z a-z 0-9 - _), as RFC 8030 requires",
            quote(topic)
        )))
    }
}

/// `endpoint` as a URL, if it is one push may be sent to.
fn check_endpoint(endpoint: &str, allow_private: bool) -> Result<Url, EffectError> {
    let invalid =
        |why: &str| EffectError::Invalid(format!("push endpoint {} {why}", quote(endpoint)));
    let url = Url::parse(endpoint).map_err(|err| invalid(&format!("is not a URL ({err})")))?;
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        return Err(invalid("has no host"));
    };
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        "http" => return Err(invalid("is plain http (https is required)")),
        _ => return Err(invalid("is not an https URL")),
    }
    if !allow_private {
        // `Url::host_str` gives IPv6 in brackets.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Some(why) = bare.parse::<IpAddr>().ok().and_then(guard::forbidden) {
            return Err(invalid(&format!("is {why}: push endpoints must be public")));
        }
        if host == "localhost" || host.ends_with(".localhost") {
            return Err(invalid("is localhost: push endpoints must be public"));
        }
    }
    Ok(url)
}

/// At most [`BODY_READ`] bytes of an answer's body.
async fn read_some(mut response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < BODY_READ {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk[..chunk.len().min(BODY_READ - body.len())])
            }
            _ => break,
        }
    }
    body
}

/// RFC 8030's name for `urgency`.
fn urgency_name(urgency: Urgency) -> &'static str {
    match urgency {
        Urgency::VeryLow => "very-low",
        Urgency::Low => "low",
        Urgency::Normal => "normal",
        Urgency::High => "high",
    }
}

/// The wait a `Retry-After` asks for: delta-seconds, or 1 s for anything
/// else (an HTTP-date, not parsed here).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()
        .unwrap_or("x")
        .trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        // Overlong digit strings are a very long wait, not no wait.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    Some(HTTP_DATE_WAIT)
}

/// A reqwest error with its causes ("error sending request: … : connection
/// refused"), which its own text leaves out.
fn error_text(err: &reqwest::Error) -> String {
    let what = if err.is_timeout() {
        "timed out"
    } else {
        "failed"
    };
    format!("push request {what}: {}", crate::bounded::error_chain(err))
}

/// `text` quoted for an error message, control characters escaped, cut
/// after [`BODY_QUOTE`] characters.
fn quote(text: &str) -> String {
    let mut quoted: String = text.chars().take(BODY_QUOTE).collect();
    if quoted.len() < text.len() {
        quoted.push('…');
    }
    format!("{quoted:?}")
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
