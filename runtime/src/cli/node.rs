//! `herald run` and `herald publish`.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::event::Event;
use crate::kafka::producer::Producer;
use crate::node::{Node, stop_on_signals};

/// `herald run --config <file>`: the node service, until SIGTERM/SIGINT.
pub async fn run(config: &Path) -> anyhow::Result<()> {
    limit_malloc_arenas();
    raise_file_limit();
    let config = Config::load(config)?;
    tracing::info!(node = %config.node_id, brokers = ?config.brokers, "herald starting");
    let node = Arc::new(Node::open(config)?.with_metrics(install_metrics()?));
    let shutdown = CancellationToken::new();
    stop_on_signals(shutdown.clone());
    tokio::spawn(tell_systemd(node.clone(), shutdown.clone()));
    let result = node.run(shutdown).await;
    tracing::info!("herald stopped");
    result
}

/// Two glibc malloc arenas instead of eight per core: a node's threads
/// mostly wait, and every arena keeps its own freed memory.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: called first thing, before the runtime starts its threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// The soft limit of open files up to the hard one (the unit's
/// `LimitNOFILE`): the default soft 1 024 is shared by the journal, the
/// broker connections, the certificate store and every API client, and a
/// flood of clients must not leave the event path without a descriptor.
fn raise_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for both calls to read and write.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && {
            let soft = limit.rlim_cur;
            limit.rlim_cur = limit.rlim_max;
            soft == limit.rlim_max || libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
        }
    };
    if raised {
        tracing::debug!(files = limit.rlim_cur, "open file limit");
    } else {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot raise the open file limit");
    }
}

/// The URL of `path` on the node's local API, and the token to present:
/// how the CLI talks to a running node.
pub(super) fn local_api(config: &Config, path: &str) -> anyhow::Result<(String, String)> {
    let token = crate::api::existing_token(config)?
        .context("no api.token in the config and no generated token in the state directory")?;
    Ok((format!("http://{}{path}", config.api.listen), token))
}

/// Tell the service manager `state`, if there is one; a failure is logged
/// and otherwise ignored (the node runs on without it).
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}

/// Under systemd (`Type=notify`): READY=1 once the node is ready, so that
/// `systemctl start` returns when it really is; STOPPING=1 on shutdown; and,
/// with `WatchdogSec=`, WATCHDOG=1 at half the interval for as long as the
/// runtime's timers run (a wedged event loop stops them and systemd
/// restarts the node). Outside systemd every call is a no-op.
async fn tell_systemd(node: Arc<Node>, shutdown: CancellationToken) {
    use sd_notify::NotifyState;
    let mut watchdog = None;
    let mut usec = 0;
    if sd_notify::watchdog_enabled(false, &mut usec) {
        watchdog = Some(std::time::Duration::from_micros(usec / 2));
    }
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    let mut ready_sent = false;
    let mut last_ping = std::time::Instant::now();
    loop {
        if ready_sent && watchdog.is_none() {
            // Nothing left to tell until shutdown: no more wake-ups.
            shutdown.cancelled().await;
            notify(&[NotifyState::Stopping]);
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                notify(&[NotifyState::Stopping]);
                return;
            }
            _ = tick.tick() => {}
        }
        if !ready_sent && node.ready() {
            ready_sent = true;
            tracing::info!("ready");
            notify(&[NotifyState::Ready]);
        }
        if let Some(every) = watchdog
            && last_ping.elapsed() >= every
        {
            last_ping = std::time::Instant::now();
            notify(&[NotifyState::Watchdog]);
        }
    }
}

/// `herald publish --config <file> <event.json>` (`-` for stdin): prints
/// where the event landed, or fails with the delivery error once
/// `timeoutMessage` has passed.
pub async fn publish(
    config: &Path,
    event: &Path,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    let text = if event == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        std::fs::read_to_string(event)
            .with_context(|| format!("{}: cannot read", event.display()))?
    };
    let name = event.display().to_string();
    let producer = Producer::new(&config)?;
    // An array is a bundle: one record per entity, each signed once and
    // handled in order.
    if let Ok(serde_json::Value::Array(items)) = serde_json::from_str(&text) {
        let events = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                Event::from_submitted(&item.to_string(), &config.node_id)
                    .with_context(|| format!("{name}: element {i}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        // One record per entity: a line for each.
        for (delivered, members) in producer.publish_bundle(&events).await? {
            let ids: Vec<&str> = members.iter().map(|&i| events[i].id.as_str()).collect();
            writeln!(
                out,
                "{}",
                json!({"topic": delivered.topic, "partition": delivered.partition,
                       "offset": delivered.offset, "ids": ids})
            )?;
        }
        return Ok(());
    }
    let event = Event::from_submitted(&text, &config.node_id).with_context(|| name.clone())?;
    let delivered = producer.publish(&event).await?;
    writeln!(
        out,
        "{}",
        json!({"topic": delivered.topic, "partition": delivered.partition,
               "offset": delivered.offset, "id": event.id, "kind": event.body.kind()})
    )?;
    Ok(())
}

/// Install the process-wide Prometheus recorder that `/metrics` renders.
pub fn install_metrics() -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("herald_handler_call_seconds".into()),
            &[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                5.0,
            ],
        )?
        .install_recorder()?)
}

/// `herald handler reload --config <file>`: ask the running node, through
/// its local API, to re-read the handler folder now.
/// `herald handler pause|resume|replay NAME`: ask the node's API; prints
/// what the node did (or why not) and returns whether it did it.
pub async fn control(
    config: &Path,
    name: &str,
    action: &str,
    from: Option<&str>,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<bool> {
    let path = format!("/v1/handlers/{name}/{action}");
    let (url, token) = local_api(&Config::load(config)?, &path)?;
    let mut request = reqwest::Client::new().post(&url).bearer_auth(token);
    if let Some(from) = from {
        request = request.body(serde_json::json!({ "from": from }).to_string());
    }
    let response = request
        .timeout(std::time::Duration::from_secs(60))
        .send()
        .await
        .with_context(|| format!("cannot reach the node's API at {url}"))?;
    let ok = response.status().is_success();
    let answer: serde_json::Value =
        serde_json::from_slice(&response.bytes().await?).unwrap_or_default();
    let text = if ok {
        &answer["done"]
    } else {
        &answer["error"]
    };
    writeln!(out, "{}", text.as_str().unwrap_or("(no answer)"))?;
    Ok(ok)
}

pub async fn reload(config: &Path, out: &mut dyn std::io::Write) -> anyhow::Result<bool> {
    let (url, token) = local_api(&Config::load(config)?, "/v1/handlers/reload")?;
    let response = reqwest::Client::new()
        .post(&url)
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("cannot reach the node's API at {url}"))?;
    let ok = response.status().is_success();
    writeln!(out, "{}", response.text().await?)?;
    Ok(ok)
}
