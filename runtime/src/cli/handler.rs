//! `herald handler test` and `herald handler inspect`: try a handler
//! component outside a node, through the real sandbox.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use serde_json::json;

use crate::effects::Recorder;
use crate::event::{Event, Position};
use crate::manifest::{Capability, Manifest, Mode};
use crate::sandbox::{Outcome, Sandbox, SandboxConfig};

/// The manifest to test with: `--manifest`, else the one beside the
/// component, else one that subscribes to everything and grants everything
/// (said on stderr, since a node would not load the component that way).
fn manifest_for(wasm: &Path, explicit: Option<&Path>) -> anyhow::Result<Manifest> {
    if let Some(path) = explicit {
        return Manifest::load(path);
    }
    let beside = Manifest::path_for(wasm);
    if beside.exists() {
        return Manifest::load(&beside);
    }
    eprintln!(
        "note: no manifest at {}; testing with every kind subscribed and every capability granted",
        beside.display()
    );
    let stem = wasm
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("handler");
    Ok(Manifest {
        name: stem.to_string(),
        version: "0.0.0".into(),
        subscribe: crate::event::KINDS.iter().map(|k| k.to_string()).collect(),
        mode: Mode::Broadcast,
        capabilities: Capability::ALL.into_iter().collect(),
        publish: crate::event::KINDS.iter().map(|k| k.to_string()).collect(),
        limits: Default::default(),
        settings: Default::default(),
        start: None,
    })
}

/// Run every event of `events` (JSON lines) through the handler, one call
/// each so that effects can be told apart, and print one JSON line per
/// event. Returns the number of lines that were not events.
pub async fn test(
    wasm: &Path,
    events: &Path,
    manifest: Option<&Path>,
    out: &mut dyn Write,
) -> anyhow::Result<usize> {
    let manifest = manifest_for(wasm, manifest)?;
    let sandbox = Sandbox::new(SandboxConfig::default())?;
    let bytes = std::fs::read(wasm).with_context(|| format!("{}: cannot read", wasm.display()))?;
    let handler = sandbox
        .load(&bytes, manifest)
        .with_context(|| format!("{}", wasm.display()))?;
    let file = std::fs::File::open(events)
        .with_context(|| format!("{}: cannot read", events.display()))?;
    let recorder = Arc::new(Recorder::new());
    let topic = events.display().to_string();
    let mut bad = 0;
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line_no = n + 1;
        let line = line.with_context(|| format!("{topic}: line {line_no}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let position = Position {
            topic: topic.as_str().into(),
            partition: 0,
            offset: line_no as i64,
        };
        let event = match Event::from_json(line.as_bytes(), position) {
            Ok(e) => e,
            Err(e) => {
                bad += 1;
                writeln!(out, "{}", json!({"line": line_no, "error": e.to_string()}))?;
                continue;
            }
        };
        let mut report = json!({"line": line_no, "id": event.id, "kind": event.body.kind()});
        if !handler.manifest.subscribes_to(event.body.kind()) {
            report["outcome"] = json!("not-subscribed");
        } else {
            match sandbox
                .call(&handler, std::slice::from_ref(&event), recorder.clone())
                .await
            {
                Ok(mut outcomes) => match outcomes.remove(0) {
                    Outcome::Ok => report["outcome"] = json!("ok"),
                    Outcome::Retry(r) => {
                        report["outcome"] = json!("retry");
                        report["reason"] = json!(r);
                    }
                    Outcome::Reject(r) => {
                        report["outcome"] = json!("reject");
                        report["reason"] = json!(r);
                    }
                },
                // A failed call rejects its events; a node would retry them
                // first, but the verdict on a lone event is the same.
                Err(e) => {
                    report["outcome"] = json!("reject");
                    report["failure"] = json!(e.kind);
                    report["reason"] = json!(e.to_string());
                }
            }
            report["effects"] = serde_json::to_value(recorder.take())?;
        }
        writeln!(out, "{report}")?;
    }
    Ok(bad)
}

/// Print a component's world, imports and exports.
pub fn inspect(wasm: &Path, as_json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let sandbox = Sandbox::new(SandboxConfig::default())?;
    let bytes = std::fs::read(wasm).with_context(|| format!("{}: cannot read", wasm.display()))?;
    let info = sandbox
        .inspect(&bytes)
        .with_context(|| format!("{}", wasm.display()))?;
    if as_json {
        writeln!(out, "{}", serde_json::to_string_pretty(&info)?)?;
        return Ok(());
    }
    writeln!(out, "component  {}", wasm.display())?;
    writeln!(out, "sha256     {}", info.digest)?;
    let size = |b: u64| bytesize::ByteSize(b).display().iec().to_string();
    writeln!(
        out,
        "memory     starts with {} of linear memory (limits.memory must leave room above it)",
        size(info.initial_memory)
    )?;
    let c = &info.compile;
    let took = match c.compile_seconds {
        Some(s) => format!("compiled in {s:.2} s"),
        None => "compile time not recorded".into(),
    };
    match (&c.cache_file, c.cache_bytes) {
        (Some(file), Some(bytes)) => writeln!(
            out,
            "compile    {took}{}; cached in {} ({})",
            if c.from_cache {
                " (when first loaded)"
            } else {
                ""
            },
            file.display(),
            size(bytes)
        )?,
        _ => writeln!(out, "compile    {took}; not cached")?,
    }
    writeln!(
        out,
        "world      {}",
        info.world
            .unwrap_or("(not a herald handler: no `handle` export)")
    )?;
    let caps: Vec<String> = info.capabilities.iter().map(|c| c.to_string()).collect();
    writeln!(
        out,
        "needs      {}",
        if caps.is_empty() {
            "-".into()
        } else {
            caps.join(", ")
        }
    )?;
    writeln!(out, "imports")?;
    for i in &info.imports {
        writeln!(out, "  {i}")?;
    }
    writeln!(out, "exports")?;
    for e in &info.exports {
        writeln!(out, "  {e}")?;
    }
    Ok(())
}
