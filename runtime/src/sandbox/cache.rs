//! On-disk cache of compiled components (`.cwasm`).
//!
//! Compiling a component takes tens of milliseconds per handler, loading a
//! precompiled one a fraction of a millisecond, so a node restart or a hot
//! reload should not compile again. Entries are keyed by the SHA-256 of the
//! `.wasm` and by the engine's compatibility hash (wasmtime version, target,
//! and the settings that change the generated code), so a changed engine never
//! loads code compiled for another.
//!
//! Deserialising a `.cwasm` runs its code natively: the cache directory must
//! be writable by herald alone (or root), and so must each file; a cache
//! that others may write is not used, a file that others may write is not
//! loaded (`crate::perms`). A corrupt or stale entry is compiled again and
//! replaced.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

pub struct Cache {
    dir: PathBuf,
    engine_key: String,
}

impl Cache {
    /// The cache in `dir`, created (for herald's user alone) if missing.
    /// A folder that others may write is refused: what it holds would run
    /// as herald.
    pub fn new(engine: &Engine, dir: PathBuf) -> anyhow::Result<Cache> {
        if !dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .with_context(|| format!("cannot create the compile cache {}", dir.display()))?;
        }
        crate::perms::check_trusted(&dir).context("the compile cache")?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Ok(Cache {
            dir,
            engine_key: format!("{:016x}", h.finish()),
        })
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_key))
    }

    /// The compiled component for `wasm`, from the cache when it is there.
    /// Returns whether it was a cache hit.
    pub fn component(
        &self,
        engine: &Engine,
        wasm: &[u8],
        digest: &str,
    ) -> anyhow::Result<(Component, bool)> {
        let path = self.path(digest);
        if path.exists() {
            match crate::perms::check_trusted_file(&path) {
                // SAFETY: the file was written by `store` below from bytes
                // that wasmtime compiled, in a directory only herald (or
                // root) may write to, and nobody else may write the file.
                Ok(()) => match unsafe { Component::deserialize_file(engine, &path) } {
                    Ok(c) => return Ok((c, true)),
                    Err(e) => tracing::warn!(path = %path.display(), error = %e,
                        "discarding unusable compiled component"),
                },
                Err(e) => tracing::warn!(error = %format!("{e:#}"),
                    "not loading a compiled component others may have written; compiling again"),
            }
        }
        let component = Component::new(engine, wasm)?;
        if let Err(e) = store(&path, &component) {
            tracing::warn!(path = %path.display(), error = %format!("{e:#}"),
                "cannot write the compile cache; carrying on without it");
        }
        Ok((component, false))
    }
}

fn store(path: &Path, component: &Component) -> anyhow::Result<()> {
    crate::durable::replace(path, &component.serialize()?)
}

/// Hex SHA-256 of the component bytes: its identity in logs and the API.
pub fn digest(wasm: &[u8]) -> String {
    hex::encode(Sha256::digest(wasm))
}
