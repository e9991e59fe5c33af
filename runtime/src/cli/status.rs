//! `herald status --config <file>`: what an operator runs first. Asks the
//! node's local API (`GET /v1/status`) and prints readiness, groups and
//! their partitions with consumer lag, per-handler counters, dead letters
//! of the last hour, the blocklist's size and certificates with the days
//! they have left; `--json` prints the API's answer as is, for scripts.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use serde_json::Value;

use crate::config::Config;

/// Print the node's status; returns whether it is ready.
pub async fn status(config: &Path, json: bool, out: &mut dyn Write) -> anyhow::Result<bool> {
    let (url, token) = super::node::local_api(&Config::load(config)?, "/v1/status")?;
    let response = reqwest::Client::new()
        .get(&url)
        .bearer_auth(token)
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
        .with_context(|| {
            format!("cannot reach the node's API at {url}: is `herald run` running?")
        })?;
    let code = response.status();
    let bytes = response.bytes().await?;
    let body: Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{url} answered {code} without JSON"))?;
    anyhow::ensure!(code.is_success(), "{url} answered {code}: {body}");
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&body)?)?;
    } else {
        human(&body, out)?;
    }
    Ok(body["ready"] == true)
}

fn human(s: &Value, out: &mut dyn Write) -> std::io::Result<()> {
    let ready = if s["ready"] == true {
        "READY"
    } else {
        "NOT READY"
    };
    writeln!(out, "node {}: {ready}", text(&s["node"]))?;
    writeln!(out, "\ngroups")?;
    for g in s["groups"].as_array().into_iter().flatten() {
        let state = match (
            g["running"] == true,
            g["joined"] == true,
            g["brokerReachable"] == true,
        ) {
            (false, _, _) => "not running (no handler in this mode)",
            (true, _, false) => "brokers unreachable",
            (true, false, true) => "joining",
            (true, true, true) => "joined",
        };
        writeln!(
            out,
            "  {:<9} {}  {state}",
            text(&g["mode"]),
            text(&g["group"])
        )?;
        for p in g["partitions"].as_array().into_iter().flatten() {
            let lag = match p["lag"].as_i64() {
                Some(l) => format!("lag {l}"),
                None => "lag unknown".into(),
            };
            writeln!(out, "    {}/{}  {lag}", text(&p["topic"]), p["partition"])?;
        }
    }
    writeln!(out, "\nhandlers")?;
    for h in s["handlers"].as_array().into_iter().flatten() {
        let c = &h["counters"];
        writeln!(
            out,
            "  {:<14} {:<9} handled {}  rejected {}  retried {}  dead-lettered {}  failed calls {}",
            text(&h["name"]),
            text(&h["mode"]),
            c["handled"],
            c["rejected"],
            c["retried"],
            c["deadLettered"],
            c["failedCalls"]
        )?;
    }
    writeln!(
        out,
        "\ndead letters in the last hour: {}",
        s["deadLettersLastHour"]
    )?;
    writeln!(out, "blocklist: {} entries", s["blocklist"]["entries"])?;
    writeln!(out, "\ncertificates")?;
    let certs = s["certificates"].as_array().cloned().unwrap_or_default();
    if certs.is_empty() {
        writeln!(out, "  none")?;
    }
    for c in certs {
        let days = c["daysLeft"].as_i64().unwrap_or(0);
        let warn = if days < 14 { "  RENEW SOON" } else { "" };
        let at = c["notAfter"]
            .as_u64()
            .map(|ms| {
                let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
                humantime::format_rfc3339_seconds(t).to_string()
            })
            .unwrap_or_default();
        writeln!(
            out,
            "  {:<32} expires {at} ({days} days){warn}",
            text(&c["domain"])
        )?;
    }
    Ok(())
}

fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}
