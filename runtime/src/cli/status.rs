//! `herald status --config <file>`: what an operator runs first. Asks the
//! node's local API (`GET /v1/status`) and prints readiness, groups and
//! their partitions with consumer lag, per-handler counters, dead letters
//! of the last hour, the blocklist's size, certificates with the days
//! they have left, and whether the node's probes come back (coordination);
//! `--cluster` adds every node heard from, the silent ones named; `--json`
//! prints the API's answer as is, for scripts.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use serde_json::Value;

use crate::config::Config;

/// Print the node's status; returns whether it is ready (and, with
/// `cluster`, whether its probes come back and no node is silent).
pub async fn status(
    config: &Path,
    json: bool,
    cluster: bool,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
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
        coordination(&body["coordination"], out)?;
        if cluster {
            nodes(&body["coordination"], out)?;
        }
    }
    let c = &body["coordination"];
    let cluster_ok = c["working"] != false
        && c["nodes"]
            .as_array()
            .is_none_or(|n| n.iter().all(|n| n["silent"] != true));
    Ok(body["ready"] == true && (!cluster || cluster_ok))
}

/// Whether this node's probes come back, and from whom, per topic.
fn coordination(c: &Value, out: &mut dyn Write) -> std::io::Result<()> {
    let verdict = match c["working"].as_bool() {
        None => "not probed (probeInterval is 0)".to_string(),
        Some(true) => "working: this node's probes come back on every topic".to_string(),
        Some(false)
            if c["topics"]
                .as_array()
                .is_some_and(|t| t.iter().all(|t| t["lastSentAt"].is_null())) =>
        {
            "not known yet: no probe sent".to_string()
        }
        Some(false) => format!(
            "NOT WORKING: no answer from this node to its own probes within {} s on some topic",
            c["silentAfterMs"].as_u64().unwrap_or(0) / 1000
        ),
    };
    writeln!(
        out,
        "
coordination: {verdict}"
    )?;
    for t in c["topics"].as_array().into_iter().flatten() {
        let answers: Vec<String> = t["answers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                format!(
                    "{} {:.1} ms",
                    text(&a["node"]),
                    a["ms"].as_f64().unwrap_or(0.0)
                )
            })
            .collect();
        let answers = if answers.is_empty() {
            "no answer".to_string()
        } else {
            answers.join(", ")
        };
        writeln!(out, "  {:<24} {answers}", text(&t["topic"]))?;
    }
    Ok(())
}

/// `--cluster`: every node heard from, with version, handlers and lag; a
/// node not heard from lately is named SILENT.
fn nodes(c: &Value, out: &mut dyn Write) -> std::io::Result<()> {
    let now = crate::event::now_ms();
    writeln!(
        out,
        "
cluster: nodes heard from (silent after {} s)",
        c["silentAfterMs"].as_u64().unwrap_or(0) / 1000
    )?;
    let nodes = c["nodes"].as_array().cloned().unwrap_or_default();
    if nodes.is_empty() {
        writeln!(out, "  none yet")?;
    }
    for n in nodes {
        let ago = now.saturating_sub(n["lastHeardAt"].as_u64().unwrap_or(0)) / 1000;
        let state = if n["silent"] == true {
            format!("SILENT: not heard from for {ago} s")
        } else {
            format!("heard {ago} s ago")
        };
        let handlers: Vec<String> = n["handlers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| {
                let lag = h["lag"]
                    .as_i64()
                    .map_or("lag unknown".to_string(), |l| format!("lag {l}"));
                let paused = if h["paused"] == true { ", PAUSED" } else { "" };
                format!("{} ({}, {lag}{paused})", text(&h["name"]), text(&h["mode"]))
            })
            .collect();
        writeln!(
            out,
            "  {:<16} herald {:<8} {state}\n    handlers: {}",
            text(&n["node"]),
            text(&n["version"]),
            if handlers.is_empty() {
                "none".to_string()
            } else {
                handlers.join(", ")
            }
        )?;
    }
    Ok(())
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
            "  {:<14} {:<9} handled {}  rejected {}  retried {}  dead-lettered {}  failed calls {}  {}{}",
            text(&h["name"]),
            text(&h["mode"]),
            c["handled"],
            c["rejected"],
            c["retried"],
            c["deadLettered"],
            c["failedCalls"],
            h["lag"]
                .as_i64()
                .map_or("lag unknown".to_string(), |l| format!("lag {l}")),
            match (h["paused"] == true, h["ownGroup"].as_str()) {
                (true, _) => "  PAUSED".to_string(),
                (false, Some(g)) => format!("  (own group {g})"),
                (false, None) => String::new(),
            }
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
