//! The handlers a node runs: loaded from the handler folder (each `.wasm`
//! with its `.toml` manifest beside it) and handed out as snapshots, so a
//! batch runs against one consistent set even while the set changes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{Context, bail};

use crate::manifest::Mode;
use crate::sandbox::{Loaded, Sandbox};

/// The handlers of one mode, as a batch sees them.
pub type HandlerSet = Arc<Vec<Arc<Loaded>>>;

pub struct Registry {
    dir: PathBuf,
    broadcast: RwLock<HandlerSet>,
    shared: RwLock<HandlerSet>,
}

/// The `.wasm` files of a folder, sorted so that load order is stable.
pub fn components(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
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

impl Registry {
    /// Load every component of `dir`. A node refuses to start with a handler
    /// that does not load: running without it would commit events it was
    /// meant to handle.
    pub fn load(sandbox: &Sandbox, dir: &Path) -> anyhow::Result<Registry> {
        let mut broadcast = Vec::new();
        let mut shared = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        for path in components(dir)? {
            let loaded = sandbox.load_file(&path)?;
            if !names.insert(loaded.manifest.name.clone()) {
                bail!(
                    "{}: a handler named `{}` is already loaded",
                    path.display(),
                    loaded.manifest.name
                );
            }
            tracing::info!(
                handler = %loaded.manifest.name,
                version = %loaded.manifest.version,
                mode = ?loaded.manifest.mode,
                subscribe = ?loaded.manifest.subscribe,
                cached = loaded.from_cache,
                "handler loaded"
            );
            match loaded.manifest.mode {
                Mode::Broadcast => broadcast.push(Arc::new(loaded)),
                Mode::Shared => shared.push(Arc::new(loaded)),
            }
        }
        Ok(Registry {
            dir: dir.to_path_buf(),
            broadcast: RwLock::new(Arc::new(broadcast)),
            shared: RwLock::new(Arc::new(shared)),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
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
}
