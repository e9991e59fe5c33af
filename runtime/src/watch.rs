//! Hot reload: watch the handler folder and apply changes between batches.
//!
//! Deployers copy files in place, which a watcher sees as several events
//! (create, writes, maybe a rename of the manifest): changes are gathered
//! until the folder has been quiet for [`SETTLE`], then the registry
//! reloads. A component caught half-written fails to load, the old version
//! keeps running, and the write that completes it triggers another reload.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::registry::Registry;

/// How long the folder must be quiet before a reload.
pub const SETTLE: Duration = Duration::from_millis(300);

pub async fn handler_folder(
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = event.is_ok_and(|e| {
            e.paths
                .iter()
                .any(|p| p.extension().is_some_and(|x| x == "wasm" || x == "toml"))
        });
        if relevant {
            let _ = tx.send(());
        }
    })
    .context("cannot watch the handler folder")?;
    watcher
        .watch(registry.dir(), RecursiveMode::NonRecursive)
        .with_context(|| format!("cannot watch {}", registry.dir().display()))?;
    tracing::info!(dir = %registry.dir().display(), "watching the handler folder");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            got = rx.recv() => if got.is_none() { return Ok(()) },
        }
        // Let the burst of events settle.
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(SETTLE) => break,
                got = rx.recv() => if got.is_none() { return Ok(()) },
            }
        }
        let r = registry.clone();
        match tokio::task::spawn_blocking(move || r.reload()).await? {
            Ok(report) => {
                metrics::counter!("herald_handler_reloads_total").increment(1);
                tracing::info!(loaded = ?report.loaded, removed = ?report.removed,
                    failed = report.failed.len(), "handler folder reloaded");
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot reload the handler folder")
            }
        }
    }
}
