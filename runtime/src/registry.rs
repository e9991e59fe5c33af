//! The handlers a node runs: loaded from the handler folder (each `.wasm`
//! with its `.toml` manifest beside it) and handed out as snapshots, so a
//! batch runs against one consistent set even while the set changes.
//!
//! [`Registry::reload`] applies what changed in the folder: a new or changed
//! component or manifest is loaded and swapped in, a removed one dropped.
//! The swap happens between batches (a batch keeps the snapshot it started
//! with), so every event is handled by exactly one version. A new version
//! that fails to load leaves the old one running, with the error logged and
//! counted.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::manifest::{Manifest, Mode};
use crate::sandbox::{Loaded, Sandbox};

/// The handlers of one mode, as a batch sees them.
pub type HandlerSet = Arc<Vec<Arc<Loaded>>>;

/// Per-handler counters, kept across versions of a handler.
#[derive(Default, Debug)]
pub struct HandlerStats {
    pub handled: AtomicU64,
    pub rejected: AtomicU64,
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub failed_calls: AtomicU64,
}

impl HandlerStats {
    pub fn snapshot(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "handled": get(&self.handled),
            "rejected": get(&self.rejected),
            "retried": get(&self.retried),
            "deadLettered": get(&self.dead_lettered),
            "failedCalls": get(&self.failed_calls),
        })
    }
}

/// What a reload did.
#[derive(Debug, Default, serde::Serialize)]
pub struct ReloadReport {
    pub loaded: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: Vec<String>,
    /// Files that did not load, with the error; their previous version (if
    /// any) is still running.
    pub failed: Vec<(String, String)>,
}

/// A handler file as last seen, to tell what changed.
struct Seen {
    fingerprint: String,
    loaded: Arc<Loaded>,
}

pub struct Registry {
    dir: PathBuf,
    sandbox: Arc<Sandbox>,
    broadcast: RwLock<HandlerSet>,
    shared: RwLock<HandlerSet>,
    seen: Mutex<BTreeMap<PathBuf, Seen>>,
    stats: Mutex<HashMap<String, Arc<HandlerStats>>>,
    /// Bumped on every change of the set; the node watches it to join or
    /// leave consumer groups.
    generation: watch::Sender<u64>,
}

/// The `.wasm` files of a folder, sorted so that load order is stable.
pub fn components(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    // Whoever may write the folder decides what every event does here.
    crate::perms::check_trusted(dir).context("the handler folder")?;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the handler folder {}", dir.display()))?
    {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "wasm") && path.is_file() {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// What identifies a version: the component's bytes and the manifest's text.
fn fingerprint(wasm: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(wasm).with_context(|| format!("{}: cannot read", wasm.display()))?;
    let manifest = std::fs::read(Manifest::path_for(wasm)).unwrap_or_default();
    let mut h = Sha256::new();
    h.update(&bytes);
    h.update(b"\0manifest\0");
    h.update(&manifest);
    Ok(hex::encode(h.finalize()))
}

impl Registry {
    /// Load every component of `dir`. A node refuses to start with a handler
    /// that does not load: running without it would commit events it was
    /// meant to handle.
    pub fn load(sandbox: Arc<Sandbox>, dir: &Path) -> anyhow::Result<Registry> {
        let registry = Registry {
            dir: dir.to_path_buf(),
            sandbox,
            broadcast: RwLock::new(Arc::new(Vec::new())),
            shared: RwLock::new(Arc::new(Vec::new())),
            seen: Mutex::new(BTreeMap::new()),
            stats: Mutex::new(HashMap::new()),
            generation: watch::channel(0).0,
        };
        let report = registry.reload()?;
        if let Some((file, error)) = report.failed.first() {
            bail!("{file}: {error}");
        }
        Ok(registry)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Apply what changed in the folder since the last look.
    pub fn reload(&self) -> anyhow::Result<ReloadReport> {
        let mut report = ReloadReport::default();
        let files = components(&self.dir)?;
        let mut seen = self.seen.lock().unwrap();
        let gone: Vec<PathBuf> = seen
            .keys()
            .filter(|p| !files.contains(p))
            .cloned()
            .collect();
        for path in gone {
            let old = seen.remove(&path).expect("listed above");
            tracing::info!(handler = %old.loaded.manifest.name, file = %path.display(), "handler removed");
            report.removed.push(old.loaded.manifest.name.clone());
        }
        for path in files {
            let fp = match fingerprint(&path) {
                Ok(fp) => fp,
                Err(e) => {
                    report
                        .failed
                        .push((path.display().to_string(), format!("{e:#}")));
                    continue;
                }
            };
            if seen.get(&path).is_some_and(|s| s.fingerprint == fp) {
                report
                    .unchanged
                    .push(seen[&path].loaded.manifest.name.clone());
                continue;
            }
            let trusted = crate::perms::check_trusted(&path).and_then(|()| {
                let manifest = Manifest::path_for(&path);
                match manifest.exists() {
                    true => crate::perms::check_trusted(&manifest),
                    false => Ok(()),
                }
            });
            if let Err(e) = trusted {
                let error = format!("{e:#}");
                tracing::error!(file = %path.display(), error = %error,
                    "handler not loaded; any previous version keeps running");
                report.failed.push((path.display().to_string(), error));
                continue;
            }
            match self.sandbox.load_file(&path) {
                Ok(loaded) => {
                    let name = loaded.manifest.name.clone();
                    let clash = seen
                        .iter()
                        .any(|(p, s)| *p != path && s.loaded.manifest.name == name);
                    if clash {
                        let error = format!("a handler named `{name}` is already loaded");
                        report.failed.push((path.display().to_string(), error));
                        continue;
                    }
                    tracing::info!(
                        handler = %name,
                        version = %loaded.manifest.version,
                        mode = ?loaded.manifest.mode,
                        subscribe = ?loaded.manifest.subscribe,
                        cached = loaded.compile.from_cache,
                        compile_seconds = ?loaded.compile.compile_seconds,
                        "handler loaded"
                    );
                    report.loaded.push(name);
                    seen.insert(
                        path,
                        Seen {
                            fingerprint: fp,
                            loaded: Arc::new(loaded),
                        },
                    );
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    tracing::error!(file = %path.display(), error = %error,
                        "handler did not load; any previous version keeps running");
                    metrics::counter!("herald_handler_load_failures_total",
                        "file" => path.display().to_string())
                    .increment(1);
                    report.failed.push((path.display().to_string(), error));
                }
            }
        }
        let mut broadcast = Vec::new();
        let mut shared = Vec::new();
        for s in seen.values() {
            match s.loaded.manifest.mode {
                Mode::Broadcast => broadcast.push(s.loaded.clone()),
                Mode::Shared => shared.push(s.loaded.clone()),
            }
        }
        drop(seen);
        if !report.loaded.is_empty() || !report.removed.is_empty() {
            *self.broadcast.write().unwrap() = Arc::new(broadcast);
            *self.shared.write().unwrap() = Arc::new(shared);
            self.generation.send_modify(|g| *g += 1);
        }
        Ok(report)
    }

    /// The handlers of `mode` right now.
    pub fn snapshot(&self, mode: Mode) -> HandlerSet {
        match mode {
            Mode::Broadcast => self.broadcast.read().unwrap().clone(),
            Mode::Shared => self.shared.read().unwrap().clone(),
        }
    }

    /// Every handler, both modes.
    pub fn all(&self) -> Vec<Arc<Loaded>> {
        let mut all: Vec<_> = self.snapshot(Mode::Broadcast).iter().cloned().collect();
        all.extend(self.snapshot(Mode::Shared).iter().cloned());
        all
    }

    /// The counters of handler `name`.
    pub fn stats(&self, name: &str) -> Arc<HandlerStats> {
        self.stats
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Changes whenever the set of handlers changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}
