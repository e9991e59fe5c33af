//! Compiling components without stalling the node.
//!
//! A Rust handler compiles in tens of milliseconds, a Python or JavaScript
//! one (20 MB of interpreter) in 15 to 20 seconds of both cores. A hot
//! reload compiles while the node handles events, so compiling runs on a
//! pool of its own whose threads run at a low priority (nice 10): cranelift
//! gets the CPU the node's tokio workers leave, and a batch never waits
//! behind it. wasmtime compiles a component's functions in parallel with
//! rayon, on the pool it is called from, so running it inside this pool is
//! enough. What was compiled is kept in the cache (`cache.rs`), so this
//! happens once per component and engine.

use std::sync::OnceLock;

/// The niceness of compiling threads: the tokio workers (0) get about ten
/// times their share of a busy CPU.
const NICENESS: libc::c_int = 10;

/// Run `f` (which compiles) on the low-priority compile pool, waiting for
/// it. Called from blocking contexts only (a reload task, start-up, the
/// CLI).
pub fn run<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    match pool() {
        Some(pool) => pool.install(f),
        None => f(),
    }
}

fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("herald-compile-{i}"))
            .start_handler(|_| lower_priority())
            .build()
            .map_err(
                |e| tracing::warn!(error = %e, "no compile pool; compiling at normal priority"),
            )
            .ok()
    })
    .as_ref()
}

/// Lower the calling thread's priority (on Linux, nice applies per thread).
fn lower_priority() {
    // SAFETY: gettid and setpriority on the calling thread touch no memory.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICENESS)
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "compile thread keeps its priority");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn compiling_threads_run_at_a_lower_priority() {
        let nice = super::run(|| {
            // SAFETY: reads the calling thread's priority.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
        });
        // SAFETY: as above, for this (test) thread.
        let ours = unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
        assert_eq!(nice, (ours + super::NICENESS).min(19));
    }
}
