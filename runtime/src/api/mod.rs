//! The local API: how the mail server process on the same node reaches
//! herald. Loopback by default (a non-loopback address must be allowed in
//! the config), optionally a Unix socket as well. Every endpoint but
//! `/healthz` and `/readyz` requires `Authorization: Bearer <token>`: the
//! node's own token may do everything, each of `api.tokens` only what its
//! scopes name (read, publish, certificates, stalwart, admin).
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/healthz` | the process is up |
//! | GET | `/readyz` | handlers loaded and consumer groups joined |
//! | GET | `/metrics` | Prometheus metrics |
//! | POST | `/v1/events` | publish an event (JSON form; `id`, `ts` optional) |
//! | GET | `/v1/stream?account=N` | Server-Sent Events: state changes (of account N, or all) and certificates |
//! | GET | `/v1/blocklist` | the blocklist |
//! | GET | `/v1/blocklist/{ip}` | whether an address is blocked, and by which entry |
//! | GET | `/v1/certificates/{domain}` | the current certificate (chain and key) for a domain |
//! | GET | `/v1/handlers` | loaded handlers: version, mode, subscriptions, counters |
//! | GET | `/v1/status` | readiness, groups with lag, handler counters, dead letters, blocklist, certificates |
//! | POST | `/v1/handlers/reload` | re-read the handler folder now |
//! | POST | `/v1/handlers/{name}/pause`, `/resume` | stop or restart one broadcast handler's consumption |
//! | POST | `/v1/handlers/{name}/replay` | `{"from": "<time|offset|earliest>"}`: handle history again |
//! | POST | `/v1/stalwart/events` | publish events on Stalwart's topic, in its v0.16 format |

mod listen;
mod owner;
mod stream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Scope, TokenSource};
use crate::effects::blocklist::Blocklist;
use crate::effects::certs::CertStore;
use crate::effects::notify::Hub;
use crate::event::{Event, now_ms};
use crate::kafka::consumer;
use crate::kafka::producer::{Producer, StalwartError};
use crate::registry::Registry;

/// What the API serves, and nothing more: the node hands it these parts
/// when it starts, and the API never sees the node itself.
pub struct ApiState {
    pub node_id: String,
    pub registry: Arc<Registry>,
    pub blocklist: Arc<Blocklist>,
    pub certificates: Arc<CertStore>,
    pub notices: Arc<Hub>,
    pub producer: Arc<Producer>,
    /// Each delivery mode's group (mode, group id, consumer status).
    pub groups: [(&'static str, String, Arc<consumer::Status>); 2],
    /// Dead letters written lately.
    pub recent_letters: Arc<crate::dispatch::RecentLetters>,
    /// The Prometheus recorder's handle, when this process installed one.
    pub metrics: Option<PrometheusHandle>,
    /// Round trips of this node's probes, and the nodes heard from.
    pub prober: Arc<crate::dispatch::probe::Prober>,
    /// Pause, resume and replay per handler.
    pub control: Arc<crate::control::Control>,
}

impl ApiState {
    /// Handlers loaded and every running group ready: what `/readyz` and
    /// `/v1/status` answer (the node's systemd notification uses the same
    /// rule, `consumer::all_ready`).
    fn ready(&self, now_ms: u64) -> bool {
        !self.registry.all().is_empty()
            && consumer::all_ready(self.groups.iter().map(|(_, _, s)| &**s), now_ms)
    }
}

#[derive(Clone)]
struct Api {
    state: Arc<ApiState>,
    /// Every token the API accepts, with what it may do.
    grants: Arc<[Grant]>,
    /// One permit per `/v1/stream` subscription (`api.maxStreams`).
    streams: Arc<tokio::sync::Semaphore>,
}

/// A token the API accepts.
struct Grant {
    name: String,
    secret: String,
    /// What it may do; none for the node's own token, which may do all.
    scopes: Option<std::collections::BTreeSet<Scope>>,
    /// The kinds it may publish; none: any.
    kinds: Option<std::collections::BTreeSet<String>>,
}

/// The kinds the request's token may publish (none: any), for `publish`.
#[derive(Clone)]
struct PublishKinds(Option<std::collections::BTreeSet<String>>);

/// The node's own token (full access) and `api.tokens`, secrets read.
fn grants(config: &Config) -> anyhow::Result<Vec<Grant>> {
    let mut grants = vec![Grant {
        name: "api.token".into(),
        secret: token(config)?,
        scopes: None,
        kinds: None,
    }];
    for (i, t) in config.api.tokens.iter().enumerate() {
        let secret = match &t.source {
            TokenSource::Inline(secret) => secret.trim().to_string(),
            TokenSource::File(file) => {
                crate::config::read_token_file(&format!("api.tokens[{i}].tokenFile"), file)?
            }
        };
        anyhow::ensure!(
            grants.iter().all(|g| g.secret != secret),
            "api.tokens[{i}]: the same token as another; each must be its own"
        );
        grants.push(Grant {
            name: t.name.clone(),
            secret,
            scopes: Some(t.scopes.clone()),
            kinds: t.publish_kinds.clone(),
        });
    }
    Ok(grants)
}

impl std::ops::Deref for Api {
    type Target = ApiState;
    fn deref(&self) -> &ApiState {
        &self.state
    }
}

/// The bearer token: `api.token`, else the file `api.tokenFile` names, else
/// one generated at first start and kept in `<stateDir>/api.token` (0600),
/// where the mail server can read it.
pub fn token(config: &Config) -> anyhow::Result<String> {
    if let Some(t) = existing_token(config)? {
        return Ok(t);
    }
    let path = config.state_dir.join("api.token");
    let mut bytes = [0u8; 32];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let t = hex::encode(bytes);
    crate::durable::replace_secret(&path, t.as_bytes())?;
    tracing::info!(path = %path.display(), "generated an API token");
    Ok(t)
}

/// The token as configured, or as generated by an earlier start; none if
/// neither exists yet. Clients (`herald handler reload`) read it this way.
pub fn existing_token(config: &crate::config::Config) -> anyhow::Result<Option<String>> {
    let api = &config.api;
    if let Some(t) = &api.token {
        return Ok(Some(t.clone()));
    }
    if let Some(file) = &api.token_file {
        return crate::config::read_token_file("api.tokenFile", file).map(Some);
    }
    Ok(std::fs::read_to_string(config.state_dir.join("api.token"))
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty()))
}

fn router(api: Api) -> Router {
    // Each route group is guarded by the scope it needs.
    let guard = |scope| middleware::from_fn_with_state((api.clone(), scope), authorise);
    let read = Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/stream", get(stream::stream))
        .route("/v1/blocklist", get(blocklist))
        .route("/v1/blocklist/{ip}", get(blocklist_check))
        .route("/v1/handlers", get(handlers))
        .route("/v1/status", get(status))
        .route_layer(guard(Scope::Read));
    let publish_events = Router::new()
        .route("/v1/events", post(publish))
        .route_layer(guard(Scope::Publish));
    let certificates = Router::new()
        .route("/v1/certificates/{domain}", get(certificate))
        .route_layer(guard(Scope::Certificates));
    let stalwart = Router::new()
        .route("/v1/stalwart/events", post(stalwart_publish))
        .route_layer(guard(Scope::Stalwart));
    let admin = Router::new()
        .route("/v1/handlers/reload", post(reload))
        .route("/v1/handlers/{name}/{action}", post(handler_control))
        .route_layer(guard(Scope::Admin));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .merge(read)
        .merge(publish_events)
        .merge(certificates)
        .merge(stalwart)
        .merge(admin)
        .with_state(api)
}

/// Serve until `stop`. Returns the TCP address actually bound (the config
/// may ask for port 0).
pub async fn serve(
    state: ApiState,
    config: &Config,
    stop: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let app = router(Api {
        state: Arc::new(state),
        grants: grants(config)?.into(),
        streams: Arc::new(tokio::sync::Semaphore::new(config.api.limits.streams)),
    });
    let listen = config.api.listen;
    let tcp = std::net::TcpListener::bind(listen)
        .with_context(|| format!("api.listen: cannot listen on {listen}"))?;
    tcp.set_nonblocking(true)?;
    let addr = tcp.local_addr()?;
    let unix = match config.api.unix_socket.clone() {
        Some(path) => Some((bind_unix(&path)?, path)),
        None => None,
    };
    let limits = config.api.limits;
    // The API has a thread and a runtime of its own: however many clients
    // it serves, and whatever they ask, the event path's workers never run
    // an API task.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the API's runtime")?;
    std::thread::Builder::new()
        .name("herald-api".into())
        .spawn(move || {
            runtime.block_on(async move {
                // Each listener is served on its own: one that cannot be
                // served never takes the other down with it.
                let on_tcp = async {
                    match tokio::net::TcpListener::from_std(tcp) {
                        Ok(tcp) => {
                            tracing::info!(%addr, "api listening");
                            listen::serve(tcp, app.clone(), limits, stop.clone()).await
                        }
                        Err(e) => tracing::error!(error = %e, "api stopped"),
                    }
                };
                let on_unix = async {
                    let Some((unix, path)) = unix else { return };
                    match tokio::net::UnixListener::from_std(unix) {
                        Ok(unix) => {
                            tracing::info!(path = %path.display(), "api listening");
                            listen::serve(unix, app.clone(), limits, stop.clone()).await
                        }
                        Err(e) => tracing::error!(error = %e, "api (unix socket) stopped"),
                    }
                };
                tokio::join!(on_tcp, on_unix);
            })
        })
        .context("cannot start the API's thread")?;
    Ok(addr)
}

fn bind_unix(path: &PathBuf) -> anyhow::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    // A socket left by a previous run.
    if path.exists() {
        std::fs::remove_file(path)
            .with_context(|| format!("api.unixSocket: cannot replace {}", path.display()))?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("api.unixSocket: cannot listen on {}", path.display()))?;
    listener.set_nonblocking(true)?;
    // The token guards it too, but nobody else on the node should even connect.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

async fn authorise(
    State((api, scope)): State<(Api, Scope)>,
    mut request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compared with every token, so that the time taken does not tell
    // which one came close.
    let matched: Vec<&Grant> = match presented {
        Some(t) => api
            .grants
            .iter()
            .filter(|g| constant_time_eq(t.as_bytes(), g.secret.as_bytes()))
            .collect(),
        None => Vec::new(),
    };
    let Some(grant) = matched.first() else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"error": "a valid bearer token is required"})),
        )
            .into_response();
    };
    if let Some(scopes) = &grant.scopes
        && !scopes.contains(&scope)
    {
        metrics::counter!("herald_api_forbidden_total", "token" => grant.name.clone(),
            "scope" => scope.name())
        .increment(1);
        let has: Vec<&str> = scopes.iter().map(|s| s.name()).collect();
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "token `{}` may not do this: it needs the `{}` scope (api.tokens: {})",
                grant.name,
                scope.name(),
                has.join(", ")
            ),
        );
    }
    request
        .extensions_mut()
        .insert(PublishKinds(grant.kinds.clone()));
    next.run(request).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

async fn ready(State(api): State<Api>) -> Response {
    let handlers = api.registry.all().len();
    let now = now_ms();
    let groups: Vec<_> = api
        .groups
        .iter()
        .filter(|(_, _, s)| s.running.load(Ordering::Relaxed))
        .map(|(mode, _, s)| {
            json!({"mode": mode, "ready": s.ready(now),
                   "joined": s.joined.load(Ordering::Relaxed),
                   "brokerReachable": s.broker_reachable(),
                   "partitions": s.assigned.load(Ordering::Relaxed)})
        })
        .collect();
    let ready = api.ready(now);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"ready": ready, "handlers": handlers, "groups": groups})),
    )
        .into_response()
}

/// Everything `herald status` shows, in one answer.
async fn status(State(api): State<Api>) -> Response {
    let now = now_ms();
    let groups: Vec<_> = api
        .groups
        .iter()
        .map(|(mode, group, s)| {
            let lag = s.lag.lock().unwrap().clone();
            let partitions: Vec<_> = lag
                .iter()
                .map(|((topic, partition), lag)| json!({"topic": topic, "partition": partition, "lag": lag}))
                .collect();
            json!({"mode": mode, "group": group,
                   "running": s.running.load(Ordering::Relaxed),
                   "joined": s.joined.load(Ordering::Relaxed),
                   "brokerReachable": s.broker_reachable(),
                   "ready": s.ready(now),
                   "assigned": s.assigned.load(Ordering::Relaxed),
                   "partitions": partitions})
        })
        .collect();
    let handlers: Vec<_> = api
        .registry
        .all()
        .iter()
        .map(|h| {
            let name = &h.manifest.name;
            let (paused, lag) = api.control.handler_lag(name, h.manifest.mode);
            let own = api
                .control
                .detached(name)
                .map(|_| crate::control::group(&api.groups[0].1, name));
            json!({"name": name, "mode": h.manifest.mode, "paused": paused, "lag": lag,
                   "ownGroup": own, "counters": api.registry.stats(name).snapshot()})
        })
        .collect();
    let certificates: Vec<_> = api
        .certificates
        .list()
        .into_iter()
        .map(|(domain, not_after)| {
            let days = (not_after as i64 - now as i64).div_euclid(86_400_000);
            json!({"domain": domain, "notAfter": not_after, "daysLeft": days})
        })
        .collect();
    Json(json!({
        "node": api.node_id,
        "ready": api.ready(now),
        "groups": groups,
        "handlers": handlers,
        "deadLettersLastHour": api.recent_letters.last_hour(now),
        "blocklist": {"entries": api.blocklist.len()},
        "certificates": certificates,
        "coordination": api.prober.status(now),
    }))
    .into_response()
}

async fn metrics(State(api): State<Api>) -> Response {
    match &api.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "metrics are not enabled in this process",
        ),
    }
}

async fn publish(
    State(api): State<Api>,
    axum::Extension(PublishKinds(kinds)): axum::Extension<PublishKinds>,
    body: String,
) -> Response {
    let event = match Event::from_submitted(&body, &api.node_id) {
        Ok(e) => e,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    if let Some(kinds) = &kinds
        && !kinds.contains(event.body.kind())
    {
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "this token may not publish `{}` events (its publishKinds: {})",
                event.body.kind(),
                kinds.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        );
    }
    match api.producer.publish(&event).await {
        Ok(d) => (
            StatusCode::ACCEPTED,
            Json(json!({"id": event.id, "kind": event.body.kind(),
                "topic": d.topic,
                "partition": d.partition, "offset": d.offset})),
        )
            .into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")),
    }
}

async fn blocklist(State(api): State<Api>) -> Response {
    Json(json!({"entries": api.blocklist.list(now_ms())})).into_response()
}

async fn blocklist_check(State(api): State<Api>, UrlPath(ip): UrlPath<String>) -> Response {
    let Ok(addr) = ip.parse::<std::net::IpAddr>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`{ip}` is not an IP address"),
        );
    };
    let entry = api.blocklist.check(addr, now_ms());
    Json(json!({"ip": ip, "blocked": entry.is_some(), "entry": entry})).into_response()
}

async fn certificate(State(api): State<Api>, UrlPath(domain): UrlPath<String>) -> Response {
    match api.certificates.get(&domain) {
        Some(c) => Json(c).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no certificate for `{domain}`"),
        ),
    }
}

async fn handlers(State(api): State<Api>) -> Response {
    let list: Vec<_> = api
        .registry
        .all()
        .iter()
        .map(|h| {
            let m = &h.manifest;
            json!({
                "name": m.name, "version": m.version, "sha256": h.digest,
                "mode": m.mode, "subscribe": m.subscribe, "capabilities": m.capabilities,
                "limits": {"deadlineMs": m.limits.deadline.as_millis() as u64, "memoryBytes": m.limits.memory},
                "counters": api.registry.stats(&m.name).snapshot(),
            })
        })
        .collect();
    Json(json!({"handlers": list})).into_response()
}

async fn reload(State(api): State<Api>) -> Response {
    let registry = api.registry.clone();
    match tokio::task::spawn_blocking(move || registry.reload()).await {
        Ok(Ok(report)) => {
            let status = if report.failed.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            (status, Json(report)).into_response()
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayFrom {
    from: String,
}

/// Pause, resume or replay one handler; the node's supervisor carries it
/// out and says what it did.
async fn handler_control(
    State(api): State<Api>,
    UrlPath((name, action)): UrlPath<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    use crate::control::Command;
    let command = match action.as_str() {
        "pause" => Command::Pause,
        "resume" => Command::Resume,
        "replay" => {
            let from: ReplayFrom = match serde_json::from_slice(&body) {
                Ok(f) => f,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("replay takes {{\"from\": \"<time|offset|earliest>\"}}: {e}"),
                    );
                }
            };
            match from.from.parse() {
                Ok(at) => Command::Replay(at),
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("field `from`: {e:#}")),
            }
        }
        other => {
            return error(
                StatusCode::NOT_FOUND,
                format!("`{other}`: a handler can be paused, resumed or replayed"),
            );
        }
    };
    match api.control.request(&name, command).await {
        Ok(done) => Json(json!({"handler": name, "done": done})).into_response(),
        Err(why) => error(StatusCode::CONFLICT, why),
    }
}

#[derive(serde::Deserialize)]
struct StalwartEvent {
    kind: String,
    #[serde(default)]
    body: serde_json::Value,
}

/// Publish events on Stalwart's topic as this node's Stalwart node id (the
/// producer batches them as Stalwart does). The body is a JSON array of
/// `{"kind", "body"}`.
async fn stalwart_publish(State(api): State<Api>, body: axum::body::Bytes) -> Response {
    // JSON whatever the request's content type says: `curl -d` sends a
    // form type, and the README's examples must work as written.
    let events: Vec<StalwartEvent> = match serde_json::from_slice(&body) {
        Ok(events) => events,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body must be a JSON array of {{\"kind\", \"body\"}}: {e}"),
            );
        }
    };
    let mut bodies = Vec::with_capacity(events.len());
    for (i, e) in events.into_iter().enumerate() {
        match crate::event::Body::from_json(&e.kind, e.body) {
            Ok(b) => bodies.push(b),
            Err(why) => return error(StatusCode::BAD_REQUEST, format!("event {i}: {why}")),
        }
    }
    match api.producer.publish_stalwart(&bodies).await {
        Ok(sent) => (
            StatusCode::ACCEPTED,
            Json(json!({"topic": sent.topic, "records": sent.records})),
        )
            .into_response(),
        Err(e @ StalwartError::Disabled) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e @ StalwartError::Encode(_)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ StalwartError::Delivery(_)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}
