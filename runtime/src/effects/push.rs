//! The node's Web Push client: what [`Effect::PushDeliver`] turns into when
//! the `push` handler (shared mode, so once per cluster) asks the host to
//! deliver a notification.
//!
//! A delivery is one `POST` of the payload to the subscription's endpoint
//! with the headers of RFC 8030: `TTL`, `Urgency` and
//! `Content-Type: application/octet-stream`. The payload is opaque: the
//! publisher already encrypted it for the subscription, so no
//! `Content-Encoding` is added here. The answer decides what happens next:
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
//! Endpoints must be `https` URLs. Plain `http` is accepted only when
//! [`PushSettings::allow_http`] says so or the host is a loopback address or
//! `localhost` (test setups); the check comes before any connection.
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

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, HeaderMap, LOCATION, RETRY_AFTER};

use super::EffectError;
use crate::event::Urgency;

/// Name of the record of delivered event ids in the state directory.
const LOG_FILE: &str = "push-delivered.log";
/// How long a delivered id is remembered.
const KEEP: Duration = Duration::from_secs(7 * 24 * 3600);
/// The most ids remembered; the oldest are forgotten first.
const MAX_IDS: usize = 1_000_000;
/// While running, the file is compacted only once it has at least this many
/// lines (and more than twice as many as are remembered).
#[cfg(not(test))]
const COMPACT_MIN_LINES: usize = 4096;
#[cfg(test)]
const COMPACT_MIN_LINES: usize = 64;
/// First wait between attempts when the service gives no `Retry-After`.
const DEFAULT_BACKOFF: Duration = Duration::from_millis(200);
/// Wait used for a `Retry-After` given as an HTTP-date (not parsed).
const HTTP_DATE_WAIT: Duration = Duration::from_secs(1);
/// How much of an error answer's body is quoted in the error.
const BODY_QUOTE: usize = 200;

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
    /// Accept plain `http` endpoints on any host (default false: only on a
    /// loopback address or `localhost`).
    pub allow_http: bool,
}

impl Default for PushSettings {
    fn default() -> PushSettings {
        PushSettings {
            attempts: 4,
            max_retry_after: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            allow_http: false,
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
    /// ids delivered before a restart are read back from it.
    pub fn open(state_dir: &Path, settings: PushSettings) -> anyhow::Result<PushClient> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the push HTTP client")?;
        let log = Log::open(state_dir, now_ms())?;
        Ok(PushClient {
            http,
            settings,
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

    /// POST `payload` to `endpoint` with Web Push headers (`TTL: ttl`,
    /// `Urgency: urgency`), at most once per `event_id` from this node:
    /// an id this node already delivered returns [`Delivered::Before`]
    /// without a request. On success the id is durably recorded before this
    /// returns. Errors: [`EffectError::Transient`] (429, 5xx, network error
    /// or timeout after the last attempt, or a `Retry-After` too long to wait
    /// for), [`EffectError::Gone`] (404, 410), [`EffectError::Invalid`] (a
    /// bad endpoint or event id, a redirect, any other 4xx).
    pub async fn deliver(
        &self,
        event_id: &str,
        endpoint: &str,
        payload: &[u8],
        ttl: u32,
        urgency: Urgency,
    ) -> Result<Delivered, EffectError> {
        let result = self
            .deliver_inner(event_id, endpoint, payload, ttl, urgency)
            .await;
        let status = match &result {
            Ok(Delivered::Now { .. }) => "delivered",
            Ok(Delivered::Before) => "duplicate",
            Err(EffectError::Gone(_)) => "gone",
            Err(EffectError::Invalid(_)) => "invalid",
            Err(EffectError::Transient(_)) => "transient",
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

    async fn deliver_inner(
        &self,
        event_id: &str,
        endpoint: &str,
        payload: &[u8],
        ttl: u32,
        urgency: Urgency,
    ) -> Result<Delivered, EffectError> {
        check_event_id(event_id)?;
        if lock(&self.log).contains(event_id) {
            return Ok(Delivered::Before);
        }
        let url = check_endpoint(endpoint, self.settings.allow_http)?;

        let _guard = self.claim(event_id).await;
        // Another call for the same id may have delivered while we waited.
        if lock(&self.log).contains(event_id) {
            return Ok(Delivered::Before);
        }
        let (status, attempts) = self.post(&url, payload, ttl, urgency).await?;
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
    async fn post(
        &self,
        url: &Url,
        payload: &[u8],
        ttl: u32,
        urgency: Urgency,
    ) -> Result<(u16, u32), EffectError> {
        let attempts = self.settings.attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = self
                .http
                .post(url.clone())
                .timeout(self.settings.request_timeout)
                .header("TTL", ttl.to_string())
                .header("Urgency", urgency_name(urgency))
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(payload.to_vec())
                .send()
                .await;
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
                            let body = response.bytes().await.unwrap_or_default();
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
                Err(err) => (error_text(&err), None),
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

/// The record of delivered event ids, in memory and on disk.
struct Log {
    dir: PathBuf,
    path: PathBuf,
    /// Open for appending.
    file: File,
    /// Lines in the file.
    lines: usize,
    /// Id → unix ms of its delivery.
    delivered: HashMap<Arc<str>, u64>,
    /// The same ids, oldest first, to forget them in order.
    order: VecDeque<(u64, Arc<str>)>,
}

impl Log {
    fn open(dir: &Path, now: u64) -> anyhow::Result<Log> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(LOG_FILE);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        // Everything after the last newline is a torn append.
        let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let torn = whole < text.len();
        if torn {
            tracing::warn!(file = %path.display(), "ignoring a torn last line");
        }
        let cutoff = now.saturating_sub(KEEP.as_millis() as u64);
        let mut lines = 0;
        let mut unreadable = 0;
        // Id → (unix ms, line) of its latest record.
        let mut latest: HashMap<&str, (u64, usize)> = HashMap::new();
        for line in text[..whole].split(|&b| b == b'\n') {
            if line.is_empty() {
                continue;
            }
            lines += 1;
            let Some((ms, id)) = std::str::from_utf8(line)
                .ok()
                .and_then(|l| l.split_once(' '))
                .and_then(|(ms, id)| Some((ms.parse::<u64>().ok()?, id)))
                .filter(|(_, id)| !id.is_empty())
            else {
                unreadable += 1;
                continue;
            };
            if ms >= cutoff {
                let at = latest.entry(id).or_insert((ms, lines));
                *at = (*at).max((ms, lines));
            }
        }
        if unreadable > 0 {
            tracing::warn!(file = %path.display(), unreadable, "ignoring unreadable lines");
        }
        // Oldest first, in file order for the same millisecond.
        let mut kept: Vec<(u64, usize, &str)> = latest
            .into_iter()
            .map(|(id, (ms, line))| (ms, line, id))
            .collect();
        kept.sort_unstable();
        if kept.len() > MAX_IDS {
            kept.drain(..kept.len() - MAX_IDS);
        }
        let order: VecDeque<(u64, Arc<str>)> = kept
            .into_iter()
            .map(|(ms, _, id)| (ms, Arc::from(id)))
            .collect();
        let delivered = order.iter().map(|(ms, id)| (id.clone(), *ms)).collect();
        drop(text);

        let file = append(&path)?;
        let mut log = Log {
            dir: dir.to_owned(),
            path,
            file,
            lines,
            delivered,
            order,
        };
        if (lines - log.order.len()) * 2 > lines {
            log.rewrite()?;
        } else if torn {
            // Cut the torn bytes, so that the next append starts a new line.
            log.file
                .set_len(whole as u64)
                .and_then(|()| log.file.sync_all())
                .with_context(|| format!("truncating {}", log.path.display()))?;
        }
        Ok(log)
    }

    fn contains(&self, id: &str) -> bool {
        self.delivered.contains_key(id)
    }

    /// Remember `id`, delivered at `now`: in memory at once, and appended to
    /// the file and synced. The memory is trimmed and, when most of the file
    /// is no longer needed, the file rewritten.
    fn record(&mut self, id: &str, now: u64) -> anyhow::Result<()> {
        let id: Arc<str> = Arc::from(id);
        self.delivered.insert(id.clone(), now);
        self.order.push_back((now, id.clone()));
        self.forget(now);

        self.lines += 1;
        self.file
            .write_all(format!("{now} {id}\n").as_bytes())
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("appending to {}", self.path.display()))?;

        if self.lines >= COMPACT_MIN_LINES
            && self.lines > 2 * self.order.len()
            && let Err(err) = self.rewrite()
        {
            // The append above is synced: only the compaction waits.
            tracing::warn!(file = %self.path.display(), "compacting failed: {err:#}");
        }
        Ok(())
    }

    /// Forget the ids older than [`KEEP`], and the oldest beyond [`MAX_IDS`].
    fn forget(&mut self, now: u64) {
        let cutoff = now.saturating_sub(KEEP.as_millis() as u64);
        while let Some((ms, _)) = self.order.front()
            && (*ms < cutoff || self.order.len() > MAX_IDS)
        {
            let (ms, id) = self.order.pop_front().expect("front exists");
            if self.delivered.get(&id) == Some(&ms) {
                self.delivered.remove(&id);
            }
        }
    }

    /// Write the remembered ids to a new file and rename it into place.
    fn rewrite(&mut self) -> anyhow::Result<()> {
        let tmp = tempfile::NamedTempFile::new_in(&self.dir)
            .with_context(|| format!("creating a temporary file in {}", self.dir.display()))?;
        let mut out = BufWriter::new(tmp);
        for (ms, id) in &self.order {
            writeln!(out, "{ms} {id}")?;
        }
        let tmp = out.into_inner().map_err(|e| e.into_error())?;
        tmp.as_file().sync_all()?;
        tmp.persist(&self.path)
            .with_context(|| format!("replacing {}", self.path.display()))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", self.dir.display()))?;
        self.file = append(&self.path)?;
        self.lines = self.order.len();
        Ok(())
    }
}

fn append(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
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

/// `endpoint` as a URL, if it is one push may be sent to.
fn check_endpoint(endpoint: &str, allow_http: bool) -> Result<Url, EffectError> {
    let invalid =
        |why: &str| EffectError::Invalid(format!("push endpoint {} {why}", quote(endpoint)));
    let url = Url::parse(endpoint).map_err(|err| invalid(&format!("is not a URL ({err})")))?;
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        return Err(invalid("has no host"));
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if allow_http || is_loopback(host) => Ok(url),
        "http" => Err(invalid(
            "is plain http to a host that is not loopback (https is required)",
        )),
        _ => Err(invalid("is not an https URL")),
    }
}

/// `host` as `Url::host_str` gives it (IPv6 in brackets, names lowercased).
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
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
    let mut text = if err.is_timeout() {
        format!("push request timed out: {err}")
    } else {
        format!("push request failed: {err}")
    };
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};

    use super::*;

    /// One answer of the test push service.
    #[derive(Clone)]
    struct Reply {
        status: u16,
        headers: Vec<(&'static str, String)>,
        delay: Duration,
    }

    fn reply(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    impl Reply {
        fn header(mut self, name: &'static str, value: &str) -> Reply {
            self.headers.push((name, value.to_owned()));
            self
        }

        fn delay(mut self, delay: Duration) -> Reply {
            self.delay = delay;
            self
        }
    }

    /// A request the test push service received.
    struct Seen {
        path: String,
        headers: HeaderMap,
        body: Bytes,
        at: Instant,
    }

    #[derive(Clone)]
    struct Service {
        seen: Arc<Mutex<Vec<Seen>>>,
        script: Arc<Mutex<VecDeque<Reply>>>,
        fallback: Reply,
    }

    /// A push service on 127.0.0.1 answering `script` in order, then
    /// `fallback` forever.
    struct TestServer {
        base: String,
        service: Service,
    }

    impl TestServer {
        async fn start(script: Vec<Reply>, fallback: Reply) -> TestServer {
            let service = Service {
                seen: Arc::default(),
                script: Arc::new(Mutex::new(script.into())),
                fallback,
            };
            let app = Router::new().fallback(answer).with_state(service.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            TestServer { base, service }
        }

        fn url(&self, path: &str) -> String {
            format!("{}{path}", self.base)
        }

        fn requests(&self) -> usize {
            self.service.seen.lock().unwrap().len()
        }
    }

    async fn answer(
        State(service): State<Service>,
        uri: axum::http::Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        service.seen.lock().unwrap().push(Seen {
            path: uri.path().to_owned(),
            headers,
            body,
            at: Instant::now(),
        });
        let reply = service
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| service.fallback.clone());
        tokio::time::sleep(reply.delay).await;
        let mut response = StatusCode::from_u16(reply.status).unwrap().into_response();
        for (name, value) in reply.headers {
            response.headers_mut().insert(name, value.parse().unwrap());
        }
        response
    }

    fn settings() -> PushSettings {
        PushSettings {
            attempts: 3,
            max_retry_after: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            allow_http: false,
        }
    }

    fn client(dir: &Path, settings: PushSettings) -> PushClient {
        PushClient::open(dir, settings)
            .unwrap()
            .with_backoff(Duration::from_millis(10))
    }

    #[tokio::test]
    async fn delivers_once_and_remembers_across_reopen() {
        let server = TestServer::start(vec![], reply(201)).await;
        let dir = tempfile::tempdir().unwrap();
        let push = client(dir.path(), settings());
        let endpoint = server.url("/sub/abc");

        let first = push
            .deliver("ev-1", &endpoint, b"hi", 60, Urgency::Normal)
            .await;
        assert_eq!(
            first,
            Ok(Delivered::Now {
                status: 201,
                attempts: 1
            })
        );
        assert_eq!(push.remembered(), 1);
        let again = push
            .deliver("ev-1", &endpoint, b"hi", 60, Urgency::Normal)
            .await;
        assert_eq!(again, Ok(Delivered::Before));
        assert_eq!(server.requests(), 1);
        drop(push);

        let reopened = client(dir.path(), settings());
        assert_eq!(reopened.remembered(), 1);
        let after = reopened
            .deliver("ev-1", &endpoint, b"hi", 60, Urgency::Normal)
            .await;
        assert_eq!(after, Ok(Delivered::Before));
        assert_eq!(server.requests(), 1);
        // A different id is delivered, and appended on its own line.
        let other = reopened
            .deliver("ev-2", &endpoint, b"hi", 60, Urgency::Normal)
            .await;
        assert_eq!(
            other,
            Ok(Delivered::Now {
                status: 201,
                attempts: 1
            })
        );
        assert_eq!(server.requests(), 2);
        let text = std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        let ids: Vec<&str> = text.lines().map(|l| l.split_once(' ').unwrap().1).collect();
        assert_eq!(ids, ["ev-1", "ev-2"]);
    }

    #[tokio::test]
    async fn sends_web_push_headers_and_body() {
        let server = TestServer::start(vec![], reply(200)).await;
        let dir = tempfile::tempdir().unwrap();
        let push = client(dir.path(), settings());
        let payload = [0u8, 1, 2, 255, 254, b'x'];

        let cases = [
            (Urgency::VeryLow, "very-low"),
            (Urgency::Low, "low"),
            (Urgency::Normal, "normal"),
            (Urgency::High, "high"),
        ];
        for (i, (urgency, _)) in cases.iter().enumerate() {
            let id = format!("ev-{i}");
            let got = push
                .deliver(
                    &id,
                    &server.url("/sub/xyz"),
                    &payload,
                    3600 + i as u32,
                    *urgency,
                )
                .await;
            assert_eq!(
                got,
                Ok(Delivered::Now {
                    status: 200,
                    attempts: 1
                })
            );
        }
        let seen = server.service.seen.lock().unwrap();
        assert_eq!(seen.len(), 4);
        for (i, (request, (_, name))) in seen.iter().zip(cases).enumerate() {
            assert_eq!(request.path, "/sub/xyz");
            assert_eq!(request.headers["ttl"], (3600 + i).to_string().as_str());
            assert_eq!(request.headers["urgency"], name);
            assert_eq!(request.headers["content-type"], "application/octet-stream");
            assert!(request.headers.get("content-encoding").is_none());
            assert_eq!(&request.body[..], &payload[..]);
        }
    }

    #[tokio::test]
    async fn retries_a_5xx() {
        let server = TestServer::start(vec![reply(503)], reply(200)).await;
        let dir = tempfile::tempdir().unwrap();
        let push = client(dir.path(), settings());
        let got = push
            .deliver("ev", &server.url("/s"), b"p", 60, Urgency::High)
            .await;
        assert_eq!(
            got,
            Ok(Delivered::Now {
                status: 200,
                attempts: 2
            })
        );
        assert_eq!(server.requests(), 2);
    }

    #[tokio::test]
    async fn waits_what_retry_after_asks() {
        let server =
            TestServer::start(vec![reply(429).header("retry-after", "1")], reply(202)).await;
        let dir = tempfile::tempdir().unwrap();
        let push = client(dir.path(), settings());
        let started = Instant::now();
        let got = push
            .deliver("ev", &server.url("/s"), b"p", 60, Urgency::Low)
            .await;
        assert_eq!(
            got,
            Ok(Delivered::Now {
                status: 202,
                attempts: 2
            })
        );
        assert!(
            started.elapsed() >= Duration::from_millis(950),
            "{:?}",
            started.elapsed()
        );
        let seen = server.service.seen.lock().unwrap();
        assert!(seen[1].at - seen[0].at >= Duration::from_millis(950));
    }

    #[tokio::test]
    async fn does_not_wait_for_a_long_retry_after() {
        let server = TestServer::start(vec![], reply(503).header("retry-after", "3600")).await;
        let dir = tempfile::tempdir().unwrap();
        let push = client(dir.path(), settings());
        let started = Instant::now();
        let got = push
            .deliver("ev", &server.url("/s"), b"p", 60, Urgency::Normal)
            .await;
        let Err(EffectError::Transient(why)) = got else {
            panic!("expected transient, got {got:?}");
        };
        assert!(why.contains("503") && why.contains("3600"), "{why}");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(server.requests(), 1);
        assert_eq!(push.remembered(), 0);
    }

    #[tokio::test]
    async fn gives_up_after_the_last_attempt() {
        let server = TestServer::start(vec![], reply(500)).await;
        let dir = tempfile::tempdir().unwrap();
        let push = client(dir.path(), settings());
        let got = push
            .deliver("ev", &server.url("/s"), b"p", 60, Urgency::Normal)
            .await;
        let Err(EffectError::Transient(why)) = got else {
            panic!("expected transient, got {got:?}");
        };
        assert!(why.contains("500") && why.contains("3 attempts"), "{why}");
        assert_eq!(server.requests(), 3);
        assert_eq!(push.remembered(), 0);
    }

    #[tokio::test]
    async fn gone_is_not_retried_nor_recorded() {
        let server = TestServer::start(vec![reply(410)], reply(200)).await;
        let dir = tempfile::tempdir().unwrap();
        let push = client(dir.path(), settings());
        let got = push
            .deliver("ev", &server.url("/s"), b"p", 60, Urgency::Normal)
            .await;
        let Err(EffectError::Gone(why)) = got else {
            panic!("expected gone, got {got:?}");
        };
        assert!(why.contains("410"), "{why}");
        assert_eq!(server.requests(), 1);
        assert_eq!(push.remembered(), 0);
        // Not recorded: a later call tries again.
        let later = push
            .deliver("ev", &server.url("/s"), b"p", 60, Urgency::Normal)
            .await;
        assert_eq!(
            later,
            Ok(Delivered::Now {
                status: 200,
                attempts: 1
            })
        );
        assert_eq!(server.requests(), 2);
    }

    #[tokio::test]
    async fn not_found_is_gone() {
        let server = TestServer::start(vec![], reply(404)).await;
        let dir = tempfile::tempdir().unwrap();
        let push = client(dir.path(), settings());
        let got = push
            .deliver("ev", &server.url("/s"), b"p", 60, Urgency::Normal)
            .await;
        assert!(matches!(got, Err(EffectError::Gone(_))), "{got:?}");
        assert_eq!(server.requests(), 1);
    }

    #[tokio::test]
    async fn other_4xx_is_invalid() {
        for status in [400, 401, 403, 413] {
            let server = TestServer::start(vec![], reply(status)).await;
            let dir = tempfile::tempdir().unwrap();
            let push = client(dir.path(), settings());
            let got = push
                .deliver("ev", &server.url("/s"), b"p", 60, Urgency::Normal)
                .await;
            let Err(EffectError::Invalid(why)) = got else {
                panic!("expected invalid for {status}, got {got:?}");
            };
            assert!(why.contains(&status.to_string()), "{why}");
            assert_eq!(server.requests(), 1);
            assert_eq!(push.remembered(), 0);
        }
    }

    #[tokio::test]
    async fn redirects_are_invalid_and_not_followed() {
        let server = TestServer::start(vec![], reply(200)).await;
        server
            .service
            .script
            .lock()
            .unwrap()
            .push_back(reply(302).header("location", &server.url("/elsewhere")));
        let dir = tempfile::tempdir().unwrap();
        let push = client(dir.path(), settings());
        let got = push
            .deliver("ev", &server.url("/s"), b"p", 60, Urgency::Normal)
            .await;
        let Err(EffectError::Invalid(why)) = got else {
            panic!("expected invalid, got {got:?}");
        };
        assert!(why.contains("302") && why.contains("/elsewhere"), "{why}");
        assert_eq!(server.requests(), 1);
    }

    #[tokio::test]
    async fn refuses_bad_endpoints_without_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let push = client(dir.path(), settings());
        for endpoint in [
            "http://203.0.113.1/x",
            "http://push.example/x",
            "ftp://push.example/x",
            "not a url",
            "file:///etc/passwd",
            "mailto:someone@push.example",
        ] {
            let started = Instant::now();
            let got = push
                .deliver("ev", endpoint, b"p", 60, Urgency::Normal)
                .await;
            let Err(EffectError::Invalid(why)) = got else {
                panic!("expected invalid for {endpoint}, got {got:?}");
            };
            assert!(why.contains(endpoint), "{why}");
            assert!(started.elapsed() < Duration::from_millis(200));
        }
        assert_eq!(push.remembered(), 0);
    }

    #[test]
    fn endpoint_rules() {
        for ok in [
            "https://push.example/sub/1",
            "http://127.0.0.1:8080/x",
            "http://127.1.2.3/x",
            "http://[::1]:9/x",
            "http://localhost/x",
            "http://LOCALHOST:1/x",
        ] {
            assert!(check_endpoint(ok, false).is_ok(), "{ok}");
        }
        assert!(check_endpoint("http://203.0.113.1/x", false).is_err());
        assert!(check_endpoint("http://203.0.113.1/x", true).is_ok());
        assert!(check_endpoint("http://localhost.evil.example/x", false).is_err());
        assert!(check_endpoint("ws://push.example/x", true).is_err());
    }

    #[test]
    fn retry_after_values() {
        let parse = |v: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(RETRY_AFTER, v.parse().unwrap());
            retry_after(&headers)
        };
        assert_eq!(parse("1"), Some(Duration::from_secs(1)));
        assert_eq!(parse(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(
            parse("99999999999999999999999"),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(parse("Wed, 21 Oct 2015 07:28:00 GMT"), Some(HTTP_DATE_WAIT));
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn network_errors_are_retried_then_transient() {
        // A port nothing listens on.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}/s", listener.local_addr().unwrap());
        drop(listener);
        let dir = tempfile::tempdir().unwrap();
        let push = client(dir.path(), settings());
        let got = push
            .deliver("ev", &endpoint, b"p", 60, Urgency::Normal)
            .await;
        let Err(EffectError::Transient(why)) = got else {
            panic!("expected transient, got {got:?}");
        };
        assert!(why.contains("3 attempts"), "{why}");
        assert_eq!(push.remembered(), 0);
    }

    #[tokio::test]
    async fn timeouts_are_retried_then_transient() {
        let slow = reply(200).delay(Duration::from_secs(2));
        let server = TestServer::start(vec![], slow).await;
        let dir = tempfile::tempdir().unwrap();
        let settings = PushSettings {
            attempts: 2,
            request_timeout: Duration::from_millis(150),
            ..settings()
        };
        let push = client(dir.path(), settings);
        let got = push
            .deliver("ev", &server.url("/s"), b"p", 60, Urgency::Normal)
            .await;
        let Err(EffectError::Transient(why)) = got else {
            panic!("expected transient, got {got:?}");
        };
        assert!(
            why.contains("timed out") && why.contains("2 attempts"),
            "{why}"
        );
        assert_eq!(server.requests(), 2);
    }

    #[tokio::test]
    async fn concurrent_calls_for_one_id_post_once() {
        let server = TestServer::start(vec![], reply(201).delay(Duration::from_millis(300))).await;
        let dir = tempfile::tempdir().unwrap();
        let push = client(dir.path(), settings());
        let endpoint = server.url("/s");
        let (a, b, c) = tokio::join!(
            push.deliver("ev", &endpoint, b"p", 60, Urgency::Normal),
            push.deliver("ev", &endpoint, b"p", 60, Urgency::Normal),
            push.deliver("ev", &endpoint, b"p", 60, Urgency::Normal),
        );
        let mut results = [a.unwrap(), b.unwrap(), c.unwrap()];
        results.sort_by_key(|r| matches!(r, Delivered::Before));
        assert_eq!(
            results,
            [
                Delivered::Now {
                    status: 201,
                    attempts: 1
                },
                Delivered::Before,
                Delivered::Before
            ]
        );
        assert_eq!(server.requests(), 1);
        assert!(push.in_flight.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn concurrent_calls_on_a_multithreaded_runtime() {
        let server = TestServer::start(vec![], reply(201).delay(Duration::from_millis(50))).await;
        let dir = tempfile::tempdir().unwrap();
        let push = Arc::new(client(dir.path(), settings()));
        let endpoint = server.url("/s");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        let push2 = push.clone();
        let results = tokio::task::spawn_blocking(move || {
            runtime.block_on(async move {
                let tasks: Vec<_> = (0..16)
                    .map(|i| {
                        let push = push2.clone();
                        let endpoint = endpoint.clone();
                        tokio::spawn(async move {
                            let id = format!("ev-{}", i % 4);
                            push.deliver(&id, &endpoint, b"p", 60, Urgency::Normal)
                                .await
                        })
                    })
                    .collect();
                let mut results = Vec::new();
                for task in tasks {
                    results.push(task.await.unwrap().unwrap());
                }
                results
            })
        })
        .await
        .unwrap();
        let now = results
            .iter()
            .filter(|r| matches!(r, Delivered::Now { .. }))
            .count();
        assert_eq!(now, 4);
        assert_eq!(server.requests(), 4);
        assert_eq!(push.remembered(), 4);
        assert!(push.in_flight.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn rejects_ids_that_cannot_be_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let push = client(dir.path(), settings());
        for id in ["", "a\nb", "a\r"] {
            let got = push
                .deliver(id, "https://push.example/s", b"p", 60, Urgency::Normal)
                .await;
            assert!(matches!(got, Err(EffectError::Invalid(_))), "{got:?}");
        }
    }

    #[test]
    fn open_ignores_a_torn_line_and_drops_expired_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        let now = now_ms();
        let old = now - KEEP.as_millis() as u64 - 1000;
        let mut text = String::new();
        for i in 0..5 {
            text.push_str(&format!("{old} old-{i}\n"));
        }
        text.push_str(&format!(
            "{now} fresh-1\n{now} fresh with spaces\n{now} torn"
        ));
        std::fs::write(&path, text).unwrap();

        let push = PushClient::open(dir.path(), settings()).unwrap();
        assert_eq!(push.remembered(), 2);
        {
            let log = lock(&push.log);
            assert!(log.contains("fresh-1") && log.contains("fresh with spaces"));
            assert!(!log.contains("torn") && !log.contains("old-0"));
        }
        // More than half the lines were expired: the file was rewritten.
        let rewritten = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            rewritten,
            format!("{now} fresh-1\n{now} fresh with spaces\n")
        );
        drop(push);

        // A torn line alone is cut, so the next append starts a new line.
        std::fs::write(&path, format!("{now} a\n{now} b\n{now} to")).unwrap();
        let push = PushClient::open(dir.path(), settings()).unwrap();
        assert_eq!(push.remembered(), 2);
        lock(&push.log).record("c", now + 1).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{now} a\n{now} b\n{} c\n", now + 1));
        drop(push);
        assert_eq!(
            PushClient::open(dir.path(), settings())
                .unwrap()
                .remembered(),
            3
        );
    }

    #[test]
    fn record_forgets_old_ids_and_compacts() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), 1_000).unwrap();
        for i in 0..COMPACT_MIN_LINES {
            log.record(&format!("old-{i}"), 1_000).unwrap();
        }
        assert_eq!(log.delivered.len(), COMPACT_MIN_LINES);
        // A week later, the next record forgets them all and compacts.
        let later = 1_000 + KEEP.as_millis() as u64 + 1;
        log.record("new", later).unwrap();
        assert_eq!(log.delivered.len(), 1);
        assert!(log.contains("new") && !log.contains("old-0"));
        let text = std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        assert_eq!(text, format!("{later} new\n"));
        log.record("newer", later + 1).unwrap();
        let text = std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        assert_eq!(text.lines().count(), 2);
    }
}
