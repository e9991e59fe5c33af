//! A stand-in for Stalwart 0.16's management API, as far as herald uses it:
//! `POST /jmap` with `x:BlockedIp/get`, `x:BlockedIp/query` and
//! `x:Certificate/get`, answering as Stalwart v0.16.18 does (checked
//! against its source: `crates/http/src/request.rs` for the route,
//! `crates/jmap/src/registry/get.rs` and `query.rs` for the methods,
//! `crates/registry/src/schema/structs_impl.rs` for the objects' JSON,
//! `crates/jmap-proto/src/error/request.rs` for the 401, and
//! `crates/types/src/id.rs` for ids as base-32 strings). Written apart from
//! herald's client, so that the two are checked against each other.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// Stalwart's id alphabet (`crates/utils/src/codec/base32_custom.rs`).
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz792013";

/// An id as Stalwart's JMAP writes it: positional base 32, no leading zeros.
pub fn id_string(id: u64) -> String {
    let mut digits = Vec::new();
    let mut n = id;
    while n > 0 {
        digits.push(ALPHABET[(n % 32) as usize] as char);
        n /= 32;
    }
    if digits.is_empty() {
        digits.push('a');
    }
    digits.iter().rev().collect()
}

fn parse_id(s: &str) -> Option<u64> {
    let mut n: u64 = 0;
    for c in s.bytes() {
        let d = ALPHABET.iter().position(|a| *a == c)? as u64;
        n = n.checked_mul(32)?.checked_add(d)?;
    }
    (!s.is_empty()).then_some(n)
}

/// One `BlockedIp` of the registry.
#[derive(Clone, Debug)]
pub struct Ban {
    pub address: String,
    pub reason: String,
    /// `YYYY-MM-DDTHH:MM:SSZ`, or none (until unbanned).
    pub expires_at: Option<String>,
}

#[derive(Default)]
struct Registry {
    bans: BTreeMap<u64, Ban>,
    /// Every method call, with the ids it asked for (if any).
    calls: Vec<(String, Vec<u64>)>,
}

/// The running stand-in; dropping it stops it.
pub struct StalwartApi {
    pub url: String,
    registry: Arc<Mutex<Registry>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StalwartApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StalwartApi {
    /// Listen on loopback; requests must carry `Bearer <api_key>`.
    pub async fn start(api_key: &str) -> StalwartApi {
        let registry = Arc::new(Mutex::new(Registry::default()));
        let app = axum::Router::new()
            .route("/jmap", post(jmap))
            .with_state((registry.clone(), format!("Bearer {api_key}")));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        StalwartApi {
            url: format!("http://{addr}"),
            registry,
            task,
        }
    }

    pub fn ban(&self, id: u64, ban: Ban) {
        self.registry.lock().unwrap().bans.insert(id, ban);
    }

    pub fn unban(&self, id: u64) {
        self.registry.lock().unwrap().bans.remove(&id);
    }

    /// The method calls made so far, with the ids each asked for.
    pub fn calls(&self) -> Vec<(String, Vec<u64>)> {
        self.registry.lock().unwrap().calls.clone()
    }

    /// Stop answering (the port is closed).
    pub fn stop(&self) {
        self.task.abort();
    }
}

type Shared = (Arc<Mutex<Registry>>, String);

fn problem(status: StatusCode, title: &str, detail: &str) -> Response {
    let body = json!({"type": "about:blank", "status": status.as_u16(), "title": title,
        "detail": detail});
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/problem+json".parse().unwrap(),
    );
    r
}

async fn jmap(
    State((registry, auth)): State<Shared>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(auth.as_str())
    {
        let mut r = problem(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "You have to authenticate first.",
        );
        r.headers_mut().append(
            header::WWW_AUTHENTICATE,
            "Bearer realm=\"Stalwart Server\"".parse().unwrap(),
        );
        r.headers_mut().append(
            header::WWW_AUTHENTICATE,
            "Basic realm=\"Stalwart Server\"".parse().unwrap(),
        );
        return r;
    }
    if let Some(ct) = headers.get(header::CONTENT_TYPE)
        && !ct.to_str().unwrap_or("").starts_with("application/json")
    {
        return problem(
            StatusCode::BAD_REQUEST,
            "Not JSON",
            "urn:ietf:params:jmap:error:notJSON",
        );
    }
    let Ok(request) = serde_json::from_str::<Value>(&body) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "Not JSON",
            "urn:ietf:params:jmap:error:notJSON",
        );
    };
    let (Some(_), Some(calls)) = (
        request["using"].as_array(),
        request["methodCalls"].as_array(),
    ) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "Invalid JMAP request",
            "notRequest",
        );
    };
    let mut registry = registry.lock().unwrap();
    let mut responses = Vec::new();
    for call in calls {
        let (name, args, id) = (call[0].as_str().unwrap_or(""), &call[1], call[2].clone());
        let asked: Option<Vec<String>> = args["ids"].as_array().map(|ids| {
            ids.iter()
                .map(|i| i.as_str().unwrap_or("").to_string())
                .collect()
        });
        registry.calls.push((
            name.to_string(),
            asked.iter().flatten().filter_map(|s| parse_id(s)).collect(),
        ));
        let answer = match name {
            "x:BlockedIp/get" => {
                let (mut list, mut not_found) = (Vec::new(), Vec::new());
                let wanted: Vec<String> = asked.unwrap_or_else(|| {
                    registry
                        .bans
                        .keys()
                        .take(500)
                        .map(|i| id_string(*i))
                        .collect()
                });
                for s in wanted {
                    match parse_id(&s).and_then(|i| registry.bans.get(&i)) {
                        Some(b) => list.push(json!({"address": b.address, "reason": b.reason,
                            "createdAt": "2026-12-01T10:00:00Z", "expiresAt": b.expires_at,
                            "id": s})),
                        None => not_found.push(json!(s)),
                    }
                }
                json!([name, {"accountId": "b", "list": list, "notFound": not_found}, id])
            }
            "x:BlockedIp/query" => {
                let position = args["position"].as_u64().unwrap_or(0) as usize;
                let limit = args["limit"].as_u64().unwrap_or(500) as usize;
                let ids: Vec<String> = registry
                    .bans
                    .keys()
                    .skip(position)
                    .take(limit)
                    .map(|i| id_string(*i))
                    .collect();
                json!([name, {"accountId": "b", "queryState": "0", "canCalculateChanges": false,
                    "position": position, "ids": ids}, id])
            }
            "x:Certificate/get" => {
                json!([name, {"accountId": "b", "list": [], "notFound": []}, id])
            }
            _ => json!(["error", {"type": "unknownMethod"}, id]),
        };
        responses.push(answer);
    }
    let mut r = json!({"methodResponses": responses, "sessionState": "3e8a1f2c"})
        .to_string()
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/json; charset=utf-8".parse().unwrap(),
    );
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_as_stalwart_writes_them() {
        assert_eq!(super::id_string(0), "a");
        assert_eq!(super::id_string(1), "b");
        assert_eq!(super::id_string(32), "ba");
        assert_eq!(super::id_string(20080258862541), "singleton");
        assert_eq!(super::parse_id("singleton"), Some(20080258862541));
    }
}
