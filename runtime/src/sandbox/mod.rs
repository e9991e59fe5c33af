//! The sandbox: runs handler components under wasmtime.
//!
//! One [`Sandbox`] per process owns the engine (component model, async,
//! pooling allocator, epoch interruption) and a linker holding WASI with no
//! authority (no files, sockets or environment) plus herald's capability
//! interfaces. [`Sandbox::load`] compiles a component (or takes it from the
//! `.cwasm` cache), refuses it if it imports a capability its manifest does not
//! grant, and keeps one `InstancePre`. [`Sandbox::call`] runs one batch in a
//! fresh instance with the handler's deadline and memory cap; whatever the
//! guest does, the failure stays in that call and the instance is discarded.

mod bindings;
mod cache;
mod compile;
mod host;
mod stdio;

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
    Trap,
};
use wasmtime_wasi::WasiCtxBuilder;

pub use bindings::body_from_wit;
use bindings::{Handler, HandlerPre, Scratch, wit};
pub use cache::CompileInfo;
use host::HostState;
use stdio::GuestOutput;

use crate::bounded;
use crate::effects::Effects;
use crate::event::Event;
use crate::manifest::{Capability, MAX_MEMORY, Manifest};

/// The WIT package handlers are written against.
pub const PACKAGE: &str = "herald:coordination";
/// The version of [`PACKAGE`] this runtime speaks (see CHANGELOG.md).
pub const PACKAGE_VERSION: &str = "0.2.0";

/// How often the epoch advances: the resolution of call deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Past its deadline, a call that is not running wasm (waiting in a host
/// call or a WASI poll, where epochs cannot reach it) is dropped after this
/// much more wall-clock time.
pub const DEADLINE_GRACE: Duration = Duration::from_millis(50);

/// A component may hold at most this many core instances, tables and
/// memories. A Rust guest needs a handful of instances, a few tables and one
/// memory; a Python one (componentize-py) about twenty instances, and two
/// memories: CPython's and that of the stub standing in for `wasi:sockets`
/// (`guest-sdk/python/no-sockets`). The memory cap counts every memory of
/// an instance together ([`MemoryCap`]), so it is still the cap of
/// everything an instance holds.
const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 32;
const MAX_TABLES_PER_COMPONENT: u32 = 8;
const MAX_MEMORIES_PER_COMPONENT: u32 = 2;

/// Bytes of a freed slot's linear memory (and tables) reset in place rather
/// than decommitted, when the kernel reports which pages were dirtied: only
/// those pages are touched, so this bounds the work and the memory a warm
/// slot keeps, not what every reset costs.
const KEEP_RESIDENT: usize = 4 << 20;
const TABLE_KEEP_RESIDENT: usize = 64 << 10;
/// Freed slots kept warm (resident) for the next instance.
const WARM_SLOTS: u32 = 16;

/// A handler's verdict on one event, as the host sees it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", content = "reason", rename_all = "kebab-case")]
pub enum Outcome {
    Ok,
    Retry(String),
    Reject(String),
}

/// Why a call produced no outcomes. The whole batch is concerned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct CallError {
    pub kind: FailureKind,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// The call ran past its deadline and was interrupted.
    Deadline,
    /// The guest tried to grow its memory past the cap.
    Memory,
    /// The guest panicked.
    Panic,
    /// Any other trap.
    Trap,
    /// The instance could not be created (pool exhausted, start trapped).
    Instantiate,
    /// The guest broke the contract (wrong number of outcomes).
    Contract,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Deadline => "deadline",
            FailureKind::Memory => "memory",
            FailureKind::Panic => "panic",
            FailureKind::Trap => "trap",
            FailureKind::Instantiate => "instantiate",
            FailureKind::Contract => "contract",
        }
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// Where compiled components are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Instances that may be alive at once across all handlers.
    pub max_instances: u32,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            cache_dir: default_cache_dir(),
            max_instances: 256,
        }
    }
}

/// `$XDG_CACHE_HOME/herald/components`, else `~/.cache/herald/components`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("herald").join("components"))
}

pub struct Sandbox {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    cache: Option<cache::Cache>,
    ticker: Arc<Ticker>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.ticker.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.ticker.thread.get() {
            thread.unpark();
        }
    }
}

/// The epoch ticker's state. It advances the epoch only while some store
/// exists (a call may be running wasm); otherwise it sleeps parked, so an
/// idle node does not wake a thousand times a second for nothing. A store
/// created while it is parked unparks it; the deadline it sets counts from
/// there, as the epoch did not move meanwhile.
struct Ticker {
    stop: AtomicBool,
    /// Stores alive.
    live: AtomicUsize,
    thread: std::sync::OnceLock<std::thread::Thread>,
}

/// Held by every store: the ticker runs while any is alive.
struct Ticking(Arc<Ticker>);

impl Ticking {
    fn new(ticker: &Arc<Ticker>) -> Ticking {
        if ticker.live.fetch_add(1, Ordering::AcqRel) == 0
            && let Some(thread) = ticker.thread.get()
        {
            thread.unpark();
        }
        Ticking(ticker.clone())
    }
}

impl Drop for Ticking {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A handler ready to run: its manifest and its pre-linked component.
pub struct Loaded {
    pub manifest: Arc<Manifest>,
    /// SHA-256 of the `.wasm`.
    pub digest: String,
    /// What compiling it cost, and whether the code came from the cache.
    pub compile: CompileInfo,
    /// Bytes of linear memory an instance starts with.
    pub initial_memory: u64,
    name: Arc<str>,
    settings: Arc<BTreeMap<String, String>>,
    pre: HandlerPre<HostState>,
}

/// A component's interface, for `herald handler inspect`.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Inspection {
    pub digest: String,
    /// Bytes of linear memory an instance starts with: what the manifest's
    /// `limits.memory` must leave room above.
    pub initial_memory: u64,
    pub compile: CompileInfo,
    pub world: Option<&'static str>,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    /// herald capabilities the component needs granted.
    pub capabilities: Vec<Capability>,
}

impl Sandbox {
    pub fn new(cfg: SandboxConfig) -> anyhow::Result<Sandbox> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .cranelift_opt_level(wasmtime::OptLevel::Speed);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(cfg.max_instances)
            // A Rust guest is a few core instances (the module plus shims)
            // with one memory and a couple of tables.
            .total_core_instances(cfg.max_instances * 4)
            .total_memories(cfg.max_instances * MAX_MEMORIES_PER_COMPONENT)
            .total_tables(cfg.max_instances * 4)
            .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
            .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
            .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
            .max_memory_size(MAX_MEMORY as usize);
        // A fresh instance per batch makes slot recycling part of every
        // call. By default a freed slot's memory is given back with
        // `madvise` and faulted in again, page by page, by the next
        // instance: most of a small batch's cost. Where the kernel can tell
        // which pages an instance dirtied (PAGEMAP_SCAN, Linux 6.7), only
        // those are reset, by copy from the memory image or zeroing, and
        // stay resident for the next instance. Isolation is the same: every
        // instance starts from the image's contents.
        if PoolingAllocationConfig::is_pagemap_scan_available() {
            pool.pagemap_scan(wasmtime::Enabled::Yes)
                .linear_memory_keep_resident(KEEP_RESIDENT)
                .table_keep_resident(TABLE_KEEP_RESIDENT)
                // What the warm slots keep resident is bounded by this.
                .max_unused_warm_slots(WARM_SLOTS);
        }
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)?;

        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        Handler::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;

        let cache = match cfg.cache_dir {
            Some(dir) => match cache::Cache::new(&engine, dir) {
                Ok(cache) => Some(cache),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"),
                        "compiling every component afresh, without a cache");
                    None
                }
            },
            None => None,
        };

        let ticker = Arc::new(Ticker {
            stop: AtomicBool::new(false),
            live: AtomicUsize::new(0),
            thread: std::sync::OnceLock::new(),
        });
        let (e, t) = (engine.clone(), ticker.clone());
        let thread = std::thread::Builder::new()
            .name("herald-epoch".into())
            .spawn(move || {
                while !t.stop.load(Ordering::Relaxed) {
                    if t.live.load(Ordering::Acquire) == 0 {
                        // An unpark between the check and here makes
                        // this return at once.
                        std::thread::park();
                        continue;
                    }
                    std::thread::sleep(EPOCH_TICK);
                    e.increment_epoch();
                }
            })?;
        let _ = ticker.thread.set(thread.thread().clone());

        Ok(Sandbox {
            engine,
            linker: Arc::new(linker),
            cache,
            ticker,
        })
    }

    /// Compile `wasm` (or take it from the cache) on the low-priority
    /// compile pool.
    fn compile(&self, wasm: &[u8], digest: &str) -> anyhow::Result<cache::Compiled> {
        compile::run(|| match &self.cache {
            Some(c) => c.component(&self.engine, wasm, digest),
            None => {
                let (component, took) = cache::compile(&self.engine, wasm)?;
                let info = CompileInfo {
                    compile_seconds: Some(took.as_secs_f64()),
                    ..CompileInfo::default()
                };
                Ok(cache::Compiled { component, info })
            }
        })
    }

    /// Load `wasm` (a file) with the manifest beside it.
    pub fn load_file(&self, wasm: &Path) -> anyhow::Result<Loaded> {
        let manifest = Manifest::load(&Manifest::path_for(wasm))?;
        let bytes =
            std::fs::read(wasm).with_context(|| format!("{}: cannot read", wasm.display()))?;
        self.load(&bytes, manifest)
            .with_context(|| format!("{}", wasm.display()))
    }

    /// Compile (or fetch from the cache) and check a component against its
    /// manifest's grants.
    pub fn load(&self, wasm: &[u8], manifest: Manifest) -> anyhow::Result<Loaded> {
        let digest = cache::digest(wasm);
        let initial_memory = initial_memory(wasm).context("not a valid WebAssembly component")?;
        let cap = manifest.limits.memory;
        if initial_memory > cap {
            let size = |b: u64| bytesize::ByteSize(b).display().iec().to_string();
            bail!(
                "handler `{}` starts with {} of linear memory, more than its manifest's \
                 limits.memory of {}: raise limits.memory, leaving room for a batch to grow \
                 (herald handler inspect shows what a component starts with)",
                manifest.name,
                size(initial_memory),
                size(cap)
            );
        }
        let cache::Compiled {
            component,
            info: compile,
        } = self
            .compile(wasm, &digest)
            .context("not a valid WebAssembly component")?;
        check_imports(&self.engine, &component, &manifest)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .context("cannot link the component")?;
        let pre = HandlerPre::new(pre)
            .map_err(anyhow::Error::from)
            .context("the component is not a herald handler")?;
        Ok(Loaded {
            name: manifest.name.as_str().into(),
            settings: Arc::new(manifest.settings.clone()),
            manifest: Arc::new(manifest),
            digest,
            compile,
            initial_memory,
            pre,
        })
    }

    /// Describe a component without running it.
    pub fn inspect(&self, wasm: &[u8]) -> anyhow::Result<Inspection> {
        let digest = cache::digest(wasm);
        let initial_memory = initial_memory(wasm).context("not a valid WebAssembly component")?;
        let cache::Compiled {
            component,
            info: compile,
        } = self
            .compile(wasm, &digest)
            .context("not a valid WebAssembly component")?;
        let ty = component.component_type();
        let describe = |name: &str, item: ComponentItem| {
            let what = match item {
                ComponentItem::ComponentFunc(_) => "func",
                ComponentItem::CoreFunc(_) => "core func",
                ComponentItem::Module(_) => "module",
                ComponentItem::Component(_) => "component",
                ComponentItem::ComponentInstance(_) => "instance",
                ComponentItem::Type(_) => "type",
                ComponentItem::Resource(_) => "resource",
            };
            format!("{what} {name}")
        };
        let imports: Vec<String> = ty
            .imports(&self.engine)
            .map(|(n, i)| describe(n, i.ty))
            .collect();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, i)| describe(n, i.ty))
            .collect();
        let capabilities = ty
            .imports(&self.engine)
            .filter_map(|(n, _)| herald_interface(n).and_then(Capability::from_interface))
            .collect();
        let is_handler = ty
            .exports(&self.engine)
            .any(|(n, i)| n == "handle" && matches!(i.ty, ComponentItem::ComponentFunc(_)));
        Ok(Inspection {
            digest,
            initial_memory,
            compile,
            world: is_handler.then_some(concat!("herald:coordination/handler@", "0.2.0")),
            imports,
            exports,
            capabilities,
        })
    }

    /// Run one batch in a fresh instance.
    pub async fn call<E: Borrow<Event> + Sync>(
        &self,
        handler: &Loaded,
        events: &[E],
        effects: Arc<dyn Effects>,
    ) -> Result<Vec<Outcome>, CallError> {
        // One wall-clock budget for everything: instantiation, guest code,
        // host calls and WASI waits.
        let deadline = handler.manifest.limits.deadline;
        let whole = async {
            let mut session = self.session(handler, effects).await?;
            session.call(events).await
        };
        tokio::time::timeout(deadline + DEADLINE_GRACE, whole)
            .await
            .unwrap_or_else(|_| Err(past_deadline(deadline)))
    }

    /// Instantiate a handler for several calls. The node uses a fresh
    /// instance per batch ([`Sandbox::call`]); reuse is for benchmarks.
    pub async fn session(
        &self,
        handler: &Loaded,
        effects: Arc<dyn Effects>,
    ) -> Result<Session, CallError> {
        let ticking = Ticking::new(&self.ticker);
        let stdout = GuestOutput::default();
        let stderr = GuestOutput::default();
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let state = HostState {
            handler: handler.name.clone(),
            settings: handler.settings.clone(),
            effects,
            wasi,
            table: Default::default(),
            limits: MemoryCap::new(handler.manifest.limits.memory),
            budget: host::CallBudget::default(),
            manifest: handler.manifest.clone(),
            causes: Vec::new(),
            call_events: 0,
            versions: Default::default(),
            stdout,
            stderr,
            deadline_at: std::time::Instant::now(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        // What the host copies out of the guest in one transfer (a host
        // call's arguments, `handle`'s outcomes) is charged before it is
        // copied: strings that all point at the same guest bytes cost each
        // time, so no transfer makes the host hold more than this, whatever
        // the guest aliases (wasmtime's default is 128 MiB).
        store.set_hostcall_fuel(host::LIFTED_BYTES);
        // At every epoch tick while wasm runs: past the call's deadline, trap;
        // before it, yield to tokio. A call over a large batch never holds a
        // worker thread (and the node's other tasks on it: fetching,
        // commits, the API) for more than a tick at a time.
        store.epoch_deadline_callback(|cx| {
            Ok(if std::time::Instant::now() >= cx.data().deadline_at {
                wasmtime::UpdateDeadline::Interrupt
            } else {
                wasmtime::UpdateDeadline::Yield(1)
            })
        });
        let deadline = handler.manifest.limits.deadline;
        set_deadline(&mut store, deadline);
        let instance = match handler.pre.instantiate_async(&mut store).await {
            Ok(i) => i,
            Err(e) => {
                let err = classify(&mut store, e, FailureKind::Instantiate);
                flush_output(&mut store);
                return Err(err);
            }
        };
        Ok(Session {
            store,
            instance,
            deadline,
            _ticking: ticking,
        })
    }
}

/// An instantiated handler.
pub struct Session {
    store: Store<HostState>,
    instance: Handler,
    deadline: Duration,
    _ticking: Ticking,
}

impl Session {
    pub async fn call<E: Borrow<Event> + Sync>(
        &mut self,
        events: &[E],
    ) -> Result<Vec<Outcome>, CallError> {
        let scratch: Vec<Scratch> = events
            .iter()
            .map(|e| Scratch::for_body(&e.borrow().body))
            .collect();
        let batch: Vec<wit::Event> = events
            .iter()
            .zip(&scratch)
            .map(|(e, s)| bindings::event_to_wit(e.borrow(), s))
            .collect();
        set_deadline(&mut self.store, self.deadline);
        let state = self.store.data_mut();
        state.budget.reset();
        state.call_events = events.len() as u32;
        // Only a publish looks up its cause: a handler whose manifest lists
        // nothing to publish is spared a copy of every event's id.
        state.causes.clear();
        if !state.manifest.publish.is_empty() {
            state.causes = events
                .iter()
                .map(|e| (e.borrow().id.clone(), e.borrow().hops))
                .collect();
        }
        // Dispatch works per partition, so a call's events share one source
        // and `handle` is called once. Should a caller mix sources, each run
        // of one source is a call of its own, in order, within the same
        // deadline. So is each run in which no entity repeats, for a handler
        // that writes state: a block or an install then takes the version of
        // the one event of its run about that entity.
        let versioned = state.manifest.capabilities.iter().any(|c| {
            matches!(
                c,
                crate::manifest::Capability::Blocklist | crate::manifest::Capability::Certificates
            )
        });
        let runs = runs(events, versioned);
        let (instance, store) = (&self.instance, &mut self.store);
        let call = async move {
            let mut outcomes = Vec::with_capacity(events.len());
            let mut start = 0;
            for run in runs.iter().map(|&(from, to)| &events[from..to]) {
                let source = bindings::source_to_wit(&run[0].borrow().position);
                let end = start + run.len();
                if versioned {
                    let versions = &mut store.data_mut().versions;
                    versions.clear();
                    for e in run {
                        let e = e.borrow();
                        for entity in e.body.entities() {
                            versions.insert(entity, e.version());
                        }
                    }
                }
                let answered = instance
                    .call_handle(&mut *store, source, &batch[start..end])
                    .await?;
                if answered.len() != run.len() {
                    return Ok(Err((answered.len(), run.len())));
                }
                outcomes.extend(answered);
                start = end;
            }
            wasmtime::Result::Ok(Ok(outcomes))
        };
        let result = match tokio::time::timeout(self.deadline + DEADLINE_GRACE, call).await {
            Ok(result) => result,
            Err(_) => return Err(past_deadline(self.deadline)),
        };
        let result = match result {
            Ok(Ok(outcomes)) => Ok(outcomes
                .into_iter()
                .map(|o| match o {
                    wit::Outcome::Ok => Outcome::Ok,
                    wit::Outcome::Retry(r) => Outcome::Retry(bounded::reason(r)),
                    wit::Outcome::Reject(r) => Outcome::Reject(bounded::reason(r)),
                })
                .collect()),
            Ok(Err((answered, asked))) => Err(CallError {
                kind: FailureKind::Contract,
                message: format!("returned {answered} outcomes for {asked} events"),
            }),
            Err(e) => Err(classify(&mut self.store, e, FailureKind::Trap)),
        };
        flush_output(&mut self.store);
        result
    }
}

/// The runs of `events` that are one `handle` call each, as index ranges:
/// one source each and, when `by_entity`, no entity twice in one run.
fn runs<E: Borrow<Event>>(events: &[E], by_entity: bool) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut seen = std::collections::HashSet::new();
    for (i, e) in events.iter().enumerate() {
        let e = e.borrow();
        let mut split = i > start && {
            let first = &events[start].borrow().position;
            first.partition != e.position.partition || first.topic != e.position.topic
        };
        let entities = if by_entity {
            e.body.entities()
        } else {
            Vec::new()
        };
        if !split && entities.iter().any(|x| seen.contains(x)) {
            split = true;
        }
        if split {
            runs.push((start, i));
            start = i;
            seen.clear();
        }
        seen.extend(entities);
    }
    if start < events.len() {
        runs.push((start, events.len()));
    }
    runs
}

/// A call that did not return within its deadline and grace: it was waiting
/// (a sleep, a poll, a slow host call) rather than running wasm.
fn past_deadline(deadline: Duration) -> CallError {
    CallError {
        kind: FailureKind::Deadline,
        message: format!(
            "did not return within its deadline of {deadline:?} (+{DEADLINE_GRACE:?} grace) \
             and was dropped"
        ),
    }
}

/// Give the call in progress `deadline` from now.
fn set_deadline(store: &mut Store<HostState>, deadline: Duration) {
    store.data_mut().deadline_at = std::time::Instant::now() + deadline;
    // The first check one tick from now; each check sets the next.
    store.set_epoch_deadline(1);
}

/// Turn a wasmtime error into what went wrong, in the guest's words where it
/// left any (a Rust panic message goes to stderr before the trap).
fn classify(store: &mut Store<HostState>, e: wasmtime::Error, default: FailureKind) -> CallError {
    let trap = e.downcast_ref::<Trap>().copied();
    let (stderr, _) = store.data().stderr.drain();
    // Put the lines back for flush_output to log them.
    let panic_at = stderr.iter().position(|l| l.contains("panicked at"));
    // wasmtime's own words for a transfer past the hostcall fuel set at
    // instantiation; its error type is private.
    let copied_too_much =
        format!("{e:#}").contains("fuel allocated for hostcalls has been exhausted");
    let kind = if store.data().limits.hit || copied_too_much {
        FailureKind::Memory
    } else if trap == Some(Trap::Interrupt) {
        FailureKind::Deadline
    } else if panic_at.is_some() {
        FailureKind::Panic
    } else {
        default
    };
    let message = match kind {
        FailureKind::Deadline => "ran past its deadline and was interrupted".to_string(),
        FailureKind::Memory if copied_too_much => format!(
            "handed the host more than {} in one transfer (counting every string and list \
             element, aliased or not)",
            bytesize::ByteSize(host::LIFTED_BYTES as u64)
                .display()
                .iec()
        ),
        FailureKind::Memory => format!(
            "tried to grow its memory past the cap of {} (limits.memory)",
            bytesize::ByteSize(store.data().limits.cap).display().iec()
        ),
        FailureKind::Panic => match python_exception(&stderr[..panic_at.unwrap_or(0)]) {
            Some(exception) => bounded::reason(exception),
            None => bounded::reason(stderr[panic_at.unwrap_or(0)..].join(" ")),
        },
        // The stub a Python handler's build puts in place of wasi:sockets
        // (guest-sdk/python/no-sockets) traps on every call.
        _ if format!("{e:?}").contains("herald_no_sockets.wasm!") => {
            "tried to use a socket of its own (wasi:sockets): a handler reaches the outside \
             only through herald's capabilities"
                .to_string()
        }
        _ => bounded::reason(format!("{e:#}")),
    };
    let handler = store.data().handler.clone();
    for line in &stderr {
        tracing::warn!(handler = %handler, stream = "stderr", "{line}");
    }
    CallError { kind, message }
}

/// An uncaught Python exception, from the traceback a componentize-py
/// component writes before its runtime panics ("Python function threw an
/// unexpected exception", which names nothing): the exception and the last
/// place it went through, `KeyError: 'x' (at "/1/handler.py", line 31, in
/// ip_block)`.
fn python_exception(stderr: &[String]) -> Option<String> {
    let start = stderr
        .iter()
        .rposition(|l| l.starts_with("Traceback (most recent call last):"))?;
    let traceback = &stderr[start + 1..];
    let exception = traceback.iter().rev().find(|l| !l.starts_with(' '))?;
    let at = traceback
        .iter()
        .rev()
        .find_map(|l| l.trim_start().strip_prefix("File "));
    Some(match at {
        Some(at) => format!("uncaught Python exception {exception} (at {at})"),
        None => format!("uncaught Python exception {exception}"),
    })
}

fn flush_output(store: &mut Store<HostState>) {
    let data = store.data();
    for (name, out) in [("stdout", &data.stdout), ("stderr", &data.stderr)] {
        let (lines, dropped) = out.drain();
        for line in lines {
            tracing::info!(handler = %data.handler, stream = name, "{line}");
        }
        if dropped > 0 {
            tracing::warn!(handler = %data.handler, stream = name, dropped,
                "guest output over the per-call limit was dropped");
        }
    }
}

/// The per-instance memory cap, over all the instance's linear memories
/// together, remembering whether the guest hit it so a failed call can say
/// so.
pub(crate) struct MemoryCap {
    cap: u64,
    /// Bytes of linear memory the instance holds, all memories together.
    used: u64,
    hit: bool,
}

impl MemoryCap {
    fn new(cap: u64) -> MemoryCap {
        MemoryCap {
            cap,
            used: 0,
            hit: false,
        }
    }
}

impl ResourceLimiter for MemoryCap {
    /// Called for each memory as it is created (from 0 to its minimum) and
    /// as it grows.
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let used = self.used - current as u64 + desired as u64;
        let ok = used <= self.cap;
        self.hit |= !ok;
        if ok {
            self.used = used;
        }
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// The linear memory an instance of `wasm` starts with: the minimum sizes of
/// the memories its core modules define, added up. A Rust handler starts
/// with about 1 MiB, a Python one with CPython's pre-initialised heap
/// (12 MiB and more).
fn initial_memory(wasm: &[u8]) -> anyhow::Result<u64> {
    let mut total = 0u64;
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        if let wasmparser::Payload::MemorySection(memories) = payload? {
            for memory in memories {
                let memory = memory?;
                let page = 1u64 << memory.page_size_log2.unwrap_or(16);
                total = total.saturating_add(memory.initial.saturating_mul(page));
            }
        }
    }
    Ok(total)
}

/// `herald:coordination/idle@0.1.0` → `idle`.
fn herald_interface(import: &str) -> Option<&str> {
    let rest = import.strip_prefix(PACKAGE)?.strip_prefix('/')?;
    Some(rest.split('@').next().unwrap_or(rest))
}

/// `herald:coordination/idle@0.1.0` → `0.1.0`.
fn herald_version(import: &str) -> Option<&str> {
    import
        .strip_prefix(PACKAGE)?
        .strip_prefix('/')?
        .split_once('@')
        .map(|(_, v)| v)
}

/// Refuse a component that imports what its manifest does not grant, naming
/// the interface, before anything of it runs.
fn check_imports(
    engine: &Engine,
    component: &Component,
    manifest: &Manifest,
) -> anyhow::Result<()> {
    for (name, _) in component.component_type().imports(engine) {
        if let Some(version) = herald_version(name)
            && version != PACKAGE_VERSION
        {
            bail!(
                "handler `{}` was built against {PACKAGE}@{version}; this herald speaks \
                 {PACKAGE}@{PACKAGE_VERSION} only (rebuild it with the current herald-guest SDK; \
                 see CHANGELOG.md)",
                manifest.name
            );
        }
        if let Some(iface) = herald_interface(name) {
            if iface == "types" {
                continue;
            }
            match Capability::from_interface(iface) {
                Some(cap) if manifest.capabilities.contains(&cap) => {}
                Some(cap) => bail!(
                    "handler `{}` imports `{name}`, a capability its manifest does not grant \
                     (add \"{cap}\" to `capabilities` to allow it)",
                    manifest.name
                ),
                None => bail!("imports `{name}`, which this herald does not provide"),
            }
        } else if name.starts_with("wasi:") {
            if !PROVIDED_WASI.iter().any(|p| name.starts_with(p)) {
                bail!(
                    "handler `{}` imports `{name}`, which herald does not provide: a handler \
                     reaches the outside only through herald's capabilities (push, publish, …), \
                     never by network or HTTP of its own. Build the component without it: \
                     componentize-js with `-d http -d fetch-event` (guest-sdk/js/build.mjs \
                     does); componentize-py imports `wasi:sockets` whatever the code does, so \
                     plug a stub into it (guest-sdk/python/build.py does: `just build-python`); \
                     otherwise leave out the code that uses it",
                    manifest.name
                );
            }
        } else {
            bail!("imports `{name}`, which herald does not provide");
        }
    }
    Ok(())
}

/// The WASI interfaces a handler may import: what a language's runtime needs
/// to start (arguments, environment, standard streams, clocks, randomness,
/// and a file system with nothing in it). No `wasi:sockets`, no `wasi:http`:
/// the linker has sockets, but a handler is refused before it could ask.
const PROVIDED_WASI: &[&str] = &[
    "wasi:cli/",
    "wasi:clocks/",
    "wasi:io/",
    "wasi:random/",
    "wasi:filesystem/",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_name_their_interface_and_package_version() {
        let old = "herald:coordination/idle@0.1.0";
        assert_eq!(herald_interface(old), Some("idle"));
        assert_eq!(herald_version(old), Some("0.1.0"));
        assert_eq!(
            herald_version("herald:coordination/types@0.2.0"),
            Some(PACKAGE_VERSION)
        );
        assert_eq!(herald_version("wasi:io/streams@0.2.6"), None);
    }

    fn check(wat: &str) -> anyhow::Result<()> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        let engine = Engine::new(&config).unwrap();
        let component = Component::new(&engine, wat::parse_str(wat).unwrap()).unwrap();
        let manifest =
            Manifest::parse("subscribe = [\"ip-block\"]\nmode = \"broadcast\"", "net").unwrap();
        check_imports(&engine, &component, &manifest)
    }

    #[test]
    fn an_uncaught_python_exception_is_named_with_where_it_was_raised() {
        let lines = |text: &str| text.lines().map(String::from).collect::<Vec<_>>();
        let stderr = lines(
            "Traceback (most recent call last):\n  File \"/0/herald_guest/__init__.py\", line 342, \
             in handle\n  File \"/1/handler.py\", line 31, in ip_block\n    raise KeyError(\"x\")\n\
             KeyError: 'a bug'",
        );
        assert_eq!(
            python_exception(&stderr).as_deref(),
            Some(
                "uncaught Python exception KeyError: 'a bug' (at \"/1/handler.py\", line 31, \
                 in ip_block)"
            )
        );
        assert_eq!(
            python_exception(&lines("thread 'main' panicked at src/lib.rs:1:1")),
            None
        );
    }

    #[test]
    fn network_and_http_imports_are_refused_by_name() {
        for iface in [
            "wasi:http/outgoing-handler@0.2.0",
            "wasi:sockets/tcp@0.2.0",
            "wasi:sockets/ip-name-lookup@0.2.3",
            "wasi:keyvalue/store@0.2.0-draft",
        ] {
            let e = check(&format!("(component (import \"{iface}\" (instance)))"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("imports `{iface}`, which herald does not provide")),
                "{e}"
            );
            assert!(e.contains("-d http"), "{e}");
        }
        check("(component (import \"wasi:filesystem/types@0.2.6\" (instance)))").unwrap();
        check("(component (import \"wasi:clocks/monotonic-clock@0.2.6\" (instance)))").unwrap();
    }
}
