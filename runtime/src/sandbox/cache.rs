//! On-disk cache of compiled components (`.cwasm`).
//!
//! Compiling a component takes tens of milliseconds per handler, loading a
//! precompiled one a fraction of a millisecond, so a node restart or a hot
//! reload should not compile again. Entries are keyed by the SHA-256 of the
//! `.wasm` and by the engine's compatibility hash (wasmtime version, target,
//! and the settings that change the generated code), so a changed engine never
//! loads code compiled for another.
//!
//! Beside each entry, `<entry>.json` records how long compiling took, for
//! `herald handler inspect` and the log: a 20 MB Python component takes
//! seconds to compile and tens of megabytes of cache, a Rust one a fraction
//! of each.
//!
//! Deserialising a `.cwasm` runs its code natively: the cache directory must
//! be writable by herald alone (or root), and so must each file; a cache
//! that others may write is not used, a file that others may write is not
//! loaded (`crate::perms`). A corrupt or stale entry is compiled again and
//! replaced.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    pub fn component(
        &self,
        engine: &Engine,
        wasm: &[u8],
        digest: &str,
    ) -> anyhow::Result<Compiled> {
        let path = self.path(digest);
        if path.exists() {
            match crate::perms::check_trusted_file(&path) {
                // SAFETY: the file was written by `store` below from bytes
                // that wasmtime compiled, in a directory only herald (or
                // root) may write to, and nobody else may write the file.
                Ok(()) => match unsafe { Component::deserialize_file(engine, &path) } {
                    Ok(component) => {
                        let info = CompileInfo {
                            from_cache: true,
                            compile_seconds: read_compile_seconds(&path),
                            cache_bytes: std::fs::metadata(&path).ok().map(|m| m.len()),
                            cache_file: Some(path),
                        };
                        return Ok(Compiled { component, info });
                    }
                    Err(e) => tracing::warn!(path = %path.display(), error = %e,
                        "discarding unusable compiled component"),
                },
                Err(e) => tracing::warn!(error = %format!("{e:#}"),
                    "not loading a compiled component others may have written; compiling again"),
            }
        }
        let (component, took) = compile(engine, wasm)?;
        let mut info = CompileInfo {
            from_cache: false,
            compile_seconds: Some(took.as_secs_f64()),
            cache_file: None,
            cache_bytes: None,
        };
        match store(&path, &component, took) {
            Ok(bytes) => {
                info.cache_file = Some(path);
                info.cache_bytes = Some(bytes);
            }
            Err(e) => tracing::warn!(path = %path.display(), error = %format!("{e:#}"),
                "cannot write the compile cache; carrying on without it"),
        }
        Ok(Compiled { component, info })
    }
}

/// A compiled component, and what compiling it cost.
pub struct Compiled {
    pub component: Component,
    pub info: CompileInfo,
}

/// What compiling a component cost: `herald handler inspect` shows it, the
/// node logs it when it loads a handler.
#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompileInfo {
    /// The code came from the cache rather than the compiler.
    pub from_cache: bool,
    /// How long compiling took: now, or when the cache entry was made
    /// (`None` for an entry made before herald recorded it).
    pub compile_seconds: Option<f64>,
    /// The cache file the code is kept in, and its size.
    pub cache_file: Option<PathBuf>,
    pub cache_bytes: Option<u64>,
}

/// Compile `wasm`, timed.
pub fn compile(engine: &Engine, wasm: &[u8]) -> anyhow::Result<(Component, Duration)> {
    let start = Instant::now();
    let component = Component::new(engine, wasm)?;
    Ok((component, start.elapsed()))
}

/// The record beside a cache entry.
fn record_path(entry: &Path) -> PathBuf {
    entry.with_extension("json")
}

fn read_compile_seconds(entry: &Path) -> Option<f64> {
    let text = std::fs::read(record_path(entry)).ok()?;
    let record: serde_json::Value = serde_json::from_slice(&text).ok()?;
    record.get("compileSeconds")?.as_f64()
}

/// Write the entry and its record; returns the entry's size.
fn store(path: &Path, component: &Component, took: Duration) -> anyhow::Result<u64> {
    let bytes = component.serialize()?;
    crate::durable::replace(path, &bytes)?;
    let record = serde_json::json!({"compileSeconds": took.as_secs_f64()});
    crate::durable::replace(&record_path(path), record.to_string().as_bytes())?;
    Ok(bytes.len() as u64)
}

/// Hex SHA-256 of the component bytes: its identity in logs and the API.
pub fn digest(wasm: &[u8]) -> String {
    hex::encode(Sha256::digest(wasm))
}
