//! Stalwart's management API, as far as herald reads it: the blocked IPs of
//! Stalwart's registry, through JMAP.
//!
//! On `stwt.agora` Stalwart announces an automatic ban only as a pointer, a
//! registry insert of object type 17 (`BlockedIp`) and an object id; the
//! address lives in Stalwart's store. Stalwart 0.16 has no REST route for
//! registry objects: they are read with `POST <url>/jmap` and the methods
//! `x:BlockedIp/get` and `x:BlockedIp/query`, authenticated with an API key
//! (bearer) or HTTP Basic, by an account with the `SysBlockedIpGet` and
//! `SysBlockedIpQuery` permissions. Object ids travel in JMAP as Stalwart's
//! base-32 strings ([`jmap_id`]). docs/design.md (section 10) has the shapes
//! and where in Stalwart's source they come from.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::{Management, ManagementAuth};

/// Stalwart 0.16's registry object types herald knows (`ObjectType`,
/// numbered in alphabetical order of the type names).
pub const BLOCKED_IP: u16 = 17;
pub const CERTIFICATE: u16 = 23;

/// Objects asked for per `get`, and ids per `query` page: Stalwart's default
/// `jmap.getMaxResults`.
pub const PAGE: usize = 500;
/// The most blocked IPs read in one full listing.
pub const MAX_LISTED: usize = 200_000;
/// The largest answer read; Stalwart's answer for a page is a few tens of KiB.
const MAX_ANSWER: usize = 8 << 20;

/// Stalwart's id alphabet for JMAP (`base32_custom`).
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz792013";

/// A registry id as JMAP writes it: base 32 over [`ALPHABET`], most
/// significant digit first, no leading zero digits (`0` is `a`).
pub fn jmap_id(mut id: u64) -> String {
    let mut digits = Vec::with_capacity(13);
    loop {
        digits.push(ALPHABET[(id & 31) as usize]);
        id >>= 5;
        if id == 0 {
            break;
        }
    }
    digits.reverse();
    String::from_utf8(digits).expect("the alphabet is ASCII")
}

/// The registry id of a JMAP id string; none if it is not one.
pub fn parse_jmap_id(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 13 {
        return None;
    }
    s.bytes().try_fold(0u64, |id, b| {
        let digit = ALPHABET.iter().position(|a| *a == b)? as u64;
        id.checked_mul(32)?.checked_add(digit)
    })
}

/// One `BlockedIp` object as Stalwart describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockedIp {
    pub id: u64,
    /// An address, or `address/prefix`, as entered (host bits kept).
    pub address: String,
    /// `authFailure`, `rcptToFailure`, `loitering`, `portScanning`,
    /// `manual` or `other`.
    pub reason: String,
    /// Unix ms; none: until unblocked.
    pub expires_at: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBlockedIp {
    id: String,
    address: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    expires_at: Option<String>,
}

/// A client of one Stalwart server's management API.
pub struct Client {
    url: String,
    auth: ManagementAuth,
    http: reqwest::Client,
}

impl Client {
    pub fn new(m: &Management) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .timeout(m.timeout)
            .connect_timeout(m.timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("cannot build the HTTP client for stalwart.management")?;
        Ok(Client {
            url: format!("{}/jmap", m.url),
            auth: m.auth.clone(),
            http,
        })
    }

    /// The `BlockedIp` objects of `ids`, and the ids Stalwart does not have
    /// (deleted, or never there).
    pub async fn blocked_ips(&self, ids: &[u64]) -> anyhow::Result<(Vec<BlockedIp>, Vec<u64>)> {
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for chunk in ids.chunks(PAGE) {
            let ids: Vec<String> = chunk.iter().map(|id| jmap_id(*id)).collect();
            let answer = self.call("x:BlockedIp/get", json!({"ids": ids})).await?;
            found.extend(parse_list(&answer)?);
            for id in answer["notFound"].as_array().into_iter().flatten() {
                if let Some(id) = id.as_str().and_then(parse_jmap_id) {
                    missing.push(id);
                }
            }
        }
        Ok((found, missing))
    }

    /// Every `BlockedIp` of the registry, a page at a time.
    pub async fn all_blocked_ips(&self) -> anyhow::Result<Vec<BlockedIp>> {
        let mut all = Vec::new();
        loop {
            let page = self
                .call(
                    "x:BlockedIp/query",
                    json!({"position": all.len(), "limit": PAGE}),
                )
                .await?;
            let ids: Vec<u64> = page["ids"]
                .as_array()
                .ok_or_else(|| anyhow!("{}: x:BlockedIp/query answered without `ids`", self.url))?
                .iter()
                .filter_map(|id| id.as_str().and_then(parse_jmap_id))
                .collect();
            let got = ids.len();
            let (found, _) = self.blocked_ips(&ids).await?;
            all.extend(found);
            if got < PAGE {
                return Ok(all);
            }
            if all.len() >= MAX_LISTED {
                bail!(
                    "{}: Stalwart lists more than {MAX_LISTED} blocked IPs; herald reads no more",
                    self.url
                );
            }
        }
    }

    /// One JMAP method call; its arguments as answered, or why not.
    async fn call(&self, method: &str, args: Value) -> anyhow::Result<Value> {
        let request = json!({
            "using": ["urn:ietf:params:jmap:core", "urn:stalwart:jmap"],
            "methodCalls": [[method, args, "0"]],
        });
        let builder = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(request.to_string());
        let builder = match &self.auth {
            ManagementAuth::Bearer(key) => builder.bearer_auth(key),
            ManagementAuth::Basic { username, password } => {
                builder.basic_auth(username, Some(password))
            }
        };
        let mut response = builder.send().await.map_err(|e| {
            anyhow!(
                "{}: {method}: {}",
                self.url,
                crate::bounded::error_chain(&e)
            )
        })?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| anyhow!("{}: {method}: reading the answer: {e}", self.url))?
        {
            if body.len() + chunk.len() > MAX_ANSWER {
                bail!(
                    "{}: {method}: the answer is larger than {MAX_ANSWER} bytes",
                    self.url
                );
            }
            body.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&body);
        let cut = crate::bounded::cut(&text, 300);
        match status.as_u16() {
            200 => {}
            401 => bail!(
                "{}: {method}: Stalwart refused herald's credentials (401; \
                 stalwart.management.apiKeyFile or username/passwordFile): {cut}",
                self.url
            ),
            code => bail!("{}: {method}: answered {code}: {cut}", self.url),
        }
        let answer: Value = serde_json::from_slice(&body).map_err(|e| {
            anyhow!(
                "{}: {method}: the answer is not JSON ({e}): {cut}",
                self.url
            )
        })?;
        let first = &answer["methodResponses"][0];
        match first[0].as_str() {
            Some(name) if name == method => Ok(first[1].clone()),
            Some("error") => bail!(
                "{}: {method}: Stalwart answered error `{}`: {} (does herald's account have \
                 the SysBlockedIpGet and SysBlockedIpQuery permissions?)",
                self.url,
                first[1]["type"].as_str().unwrap_or("?"),
                first[1]["description"].as_str().unwrap_or("")
            ),
            _ => bail!("{}: {method}: not a JMAP answer: {cut}", self.url),
        }
    }
}

/// The objects of a `get` answer's `list`.
fn parse_list(answer: &Value) -> anyhow::Result<Vec<BlockedIp>> {
    let list = answer["list"]
        .as_array()
        .ok_or_else(|| anyhow!("x:BlockedIp/get answered without `list`"))?;
    list.iter()
        .map(|v| {
            let raw: RawBlockedIp = serde_json::from_value(v.clone())
                .map_err(|e| anyhow!("x:BlockedIp/get: an object of `list`: {e}"))?;
            let id = parse_jmap_id(&raw.id)
                .ok_or_else(|| anyhow!("x:BlockedIp/get: `{}` is not a registry id", raw.id))?;
            let expires_at = match raw.expires_at {
                None => None,
                Some(t) => Some(
                    humantime::parse_rfc3339(&t)
                        .map_err(|e| {
                            anyhow!("x:BlockedIp/get: object {}: expiresAt `{t}`: {e}", raw.id)
                        })?
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64),
                ),
            };
            Ok(BlockedIp {
                id,
                address: raw.address,
                reason: raw.reason,
                expires_at,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_written_as_stalwart_writes_them() {
        // Stalwart's own examples (crates/types/src/id.rs).
        assert_eq!(jmap_id(0), "a");
        assert_eq!(jmap_id(1), "b");
        assert_eq!(jmap_id(32), "ba");
        assert_eq!(jmap_id(20080258862541), "singleton");
        for id in [0, 1, 31, 32, 342711554306740224, u64::MAX] {
            assert_eq!(parse_jmap_id(&jmap_id(id)), Some(id), "{id}");
        }
        assert_eq!(parse_jmap_id(""), None);
        assert_eq!(parse_jmap_id("A"), None);
        // 14 digits overflow a u64.
        assert_eq!(parse_jmap_id("zzzzzzzzzzzzzz"), None);
    }

    #[test]
    fn a_get_answer_is_read_with_its_expiry() {
        let answer = json!({"accountId": "b", "list": [
            {"address": "192.0.2.1", "reason": "authFailure", "createdAt": "2026-08-20T10:00:00Z",
             "expiresAt": "2026-08-20T11:00:00Z", "id": jmap_id(7)},
            {"address": "198.51.100.0/24", "reason": "manual", "createdAt": "2026-08-20T10:00:00Z",
             "expiresAt": null, "id": jmap_id(8)}], "notFound": []});
        let list = parse_list(&answer).unwrap();
        assert_eq!(list[0].id, 7);
        assert_eq!(list[0].expires_at, Some(1_787_223_600_000));
        assert_eq!(list[1].address, "198.51.100.0/24");
        assert_eq!(list[1].expires_at, None);
        let bad = json!({"list": [{"address": "192.0.2.1", "id": "not-an-id!"}]});
        assert!(
            parse_list(&bad)
                .unwrap_err()
                .to_string()
                .contains("not-an-id!")
        );
    }
}
