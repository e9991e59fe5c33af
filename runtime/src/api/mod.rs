//! The local API: how the mail server process on the same node reaches
//! herald. Loopback by default (a non-loopback address must be allowed in
//! the config), optionally a Unix socket as well. Every endpoint but
//! `/healthz` and `/readyz` requires `Authorization: Bearer <token>`.
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
//! | POST | `/v1/handlers/reload` | re-read the handler folder now |
//! | POST | `/v1/stalwart/events` | publish events on Stalwart's topic, in its v0.16 format |

mod stream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::event::{Event, now_ms};
use crate::node::Node;

#[derive(Clone)]
struct Api {
    node: Arc<Node>,
    token: Arc<str>,
}

/// The bearer token: `api.token`, else the file `api.tokenFile` names, else
/// one generated at first start and kept in `<stateDir>/api.token` (0600),
/// where the mail server can read it.
pub fn token(node: &Node) -> anyhow::Result<String> {
    let api = &node.config.api;
    if let Some(t) = &api.token {
        return Ok(t.clone());
    }
    if let Some(file) = &api.token_file {
        let t = std::fs::read_to_string(file)
            .with_context(|| format!("api.tokenFile: cannot read {}", file.display()))?;
        let t = t.trim().to_string();
        anyhow::ensure!(!t.is_empty(), "api.tokenFile: {} is empty", file.display());
        return Ok(t);
    }
    let path = node.config.state_dir.join("api.token");
    if let Ok(t) = std::fs::read_to_string(&path)
        && !t.trim().is_empty()
    {
        return Ok(t.trim().to_string());
    }
    let mut bytes = [0u8; 32];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let t = hex::encode(bytes);
    write_secret(&path, &t)?;
    tracing::info!(path = %path.display(), "generated an API token");
    Ok(t)
}

fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn router(api: Api) -> Router {
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/events", post(publish))
        .route("/v1/stream", get(stream::stream))
        .route("/v1/blocklist", get(blocklist))
        .route("/v1/blocklist/{ip}", get(blocklist_check))
        .route("/v1/certificates/{domain}", get(certificate))
        .route("/v1/handlers", get(handlers))
        .route("/v1/handlers/reload", post(reload))
        .route("/v1/stalwart/events", post(stalwart_publish))
        .layer(middleware::from_fn_with_state(api.clone(), authorise));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .merge(protected)
        .with_state(api)
}

/// Serve until `stop`. Returns the TCP address actually bound (the config
/// may ask for port 0).
pub async fn serve(node: Arc<Node>, stop: CancellationToken) -> anyhow::Result<SocketAddr> {
    let token: Arc<str> = token(&node)?.into();
    let app = router(Api {
        node: node.clone(),
        token,
    });
    let listener = tokio::net::TcpListener::bind(node.config.api.listen)
        .await
        .with_context(|| format!("api.listen: cannot listen on {}", node.config.api.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "api listening");
    let (app_tcp, stop_tcp) = (app.clone(), stop.clone());
    tokio::spawn(async move {
        let served = axum::serve(listener, app_tcp)
            .with_graceful_shutdown(stop_tcp.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "api stopped");
        }
    });
    if let Some(path) = node.config.api.unix_socket.clone() {
        let listener = bind_unix(&path)?;
        tracing::info!(path = %path.display(), "api listening");
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "api (unix socket) stopped");
            }
        });
    }
    Ok(addr)
}

fn bind_unix(path: &PathBuf) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    // A socket left by a previous run.
    if path.exists() {
        std::fs::remove_file(path)
            .with_context(|| format!("api.unixSocket: cannot replace {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("api.unixSocket: cannot listen on {}", path.display()))?;
    // The token guards it too, but nobody else on the node should even connect.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

async fn authorise(State(api): State<Api>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(t) if constant_time_eq(t.as_bytes(), api.token.as_bytes()) => next.run(request).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"error": "a valid bearer token is required"})),
        )
            .into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

async fn ready(State(api): State<Api>) -> Response {
    let n = &api.node;
    let handlers = n.registry.all().len();
    let groups: Vec<_> = [("broadcast", &n.broadcast), ("shared", &n.shared)]
        .into_iter()
        .filter(|(_, s)| s.running.load(Ordering::Relaxed))
        .map(|(mode, s)| {
            json!({"mode": mode, "joined": s.joined.load(Ordering::Relaxed),
                   "partitions": s.assigned.load(Ordering::Relaxed)})
        })
        .collect();
    let ready =
        handlers > 0 && !groups.is_empty() && groups.iter().all(|g| g["joined"] == json!(true));
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

async fn metrics(State(api): State<Api>) -> Response {
    match &api.node.metrics {
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

async fn publish(State(api): State<Api>, body: String) -> Response {
    let event = match Event::from_submitted(&body, &api.node.config.node_id) {
        Ok(e) => e,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match api.node.producer.publish(&event).await {
        Ok(d) => (
            StatusCode::ACCEPTED,
            Json(json!({"id": event.id, "kind": event.body.kind(),
                "topic": api.node.config.topics.events,
                "partition": d.partition, "offset": d.offset})),
        )
            .into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")),
    }
}

async fn blocklist(State(api): State<Api>) -> Response {
    Json(json!({"entries": api.node.effects.blocklist.list(now_ms())})).into_response()
}

async fn blocklist_check(State(api): State<Api>, UrlPath(ip): UrlPath<String>) -> Response {
    let Ok(addr) = ip.parse::<std::net::IpAddr>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`{ip}` is not an IP address"),
        );
    };
    let entry = api.node.effects.blocklist.check(addr, now_ms());
    Json(json!({"ip": ip, "blocked": entry.is_some(), "entry": entry})).into_response()
}

async fn certificate(State(api): State<Api>, UrlPath(domain): UrlPath<String>) -> Response {
    match api.node.effects.certificates.get(&domain) {
        Some(c) => Json(c).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no certificate for `{domain}`"),
        ),
    }
}

async fn handlers(State(api): State<Api>) -> Response {
    let list: Vec<_> = api
        .node
        .registry
        .all()
        .iter()
        .map(|h| {
            let m = &h.manifest;
            json!({
                "name": m.name, "version": m.version, "sha256": h.digest,
                "mode": m.mode, "subscribe": m.subscribe, "capabilities": m.capabilities,
                "limits": {"deadlineMs": m.limits.deadline.as_millis() as u64, "memoryBytes": m.limits.memory},
                "counters": api.node.registry.stats(&m.name).snapshot(),
            })
        })
        .collect();
    Json(json!({"handlers": list})).into_response()
}

async fn reload(State(api): State<Api>) -> Response {
    let registry = api.node.registry.clone();
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
struct StalwartEvent {
    kind: String,
    #[serde(default)]
    body: serde_json::Value,
}

/// Publish events to Stalwart's `stwt.agora` as this node's Stalwart node
/// id: batches of at most 100 events per record, without a key, as Stalwart
/// itself does. The body is a JSON array of `{"kind", "body"}`.
async fn stalwart_publish(
    State(api): State<Api>,
    Json(events): Json<Vec<StalwartEvent>>,
) -> Response {
    use crate::codec::stalwart;
    let cfg = &api.node.config.stalwart;
    let Some(node_id) = cfg.node_id.filter(|_| cfg.enabled) else {
        return error(
            StatusCode::CONFLICT,
            "stalwart is not enabled in this node's config",
        );
    };
    let mut bodies = Vec::with_capacity(events.len());
    for (i, e) in events.into_iter().enumerate() {
        match crate::event::Body::from_json(&e.kind, e.body) {
            Ok(b) => bodies.push(b),
            Err(why) => return error(StatusCode::BAD_REQUEST, format!("event {i}: {why}")),
        }
    }
    let records = match stalwart::encode_batches(node_id, &bodies) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let mut sent = Vec::new();
    for record in records {
        match api.node.producer.send_raw(&cfg.topic, None, &record).await {
            Ok(d) => sent
                .push(json!({"partition": d.partition, "offset": d.offset, "bytes": record.len()})),
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")),
        }
    }
    (
        StatusCode::ACCEPTED,
        Json(json!({"topic": cfg.topic, "records": sent})),
    )
        .into_response()
}
