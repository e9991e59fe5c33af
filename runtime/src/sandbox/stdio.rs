//! Guest stdout/stderr, captured per instance and sent to tracing tagged
//! with the handler's name once the call is over.
//!
//! Output is bounded: a guest that prints in a loop fills its buffer and the
//! rest is dropped (with a note), rather than growing host memory or failing
//! the call. The tail of stderr is also kept for error messages, since that
//! is where a Rust guest's panic message goes.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Bytes kept per stream per call.
const CAPACITY: usize = 64 * 1024;

#[derive(Clone, Default)]
pub struct GuestOutput {
    inner: Arc<Mutex<Buffer>>,
}

#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    dropped: usize,
}

impl GuestOutput {
    /// Take what was written, as lines.
    pub fn drain(&self) -> (Vec<String>, usize) {
        let mut b = self.inner.lock().unwrap();
        let text = String::from_utf8_lossy(&b.bytes).into_owned();
        let dropped = std::mem::take(&mut b.dropped);
        b.bytes.clear();
        let lines = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        (lines, dropped)
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut b = self.inner.lock().unwrap();
        let room = CAPACITY.saturating_sub(b.bytes.len());
        let kept = room.min(buf.len());
        b.bytes.extend_from_slice(&buf[..kept]);
        b.dropped += buf.len() - kept;
        // Claim everything was written: the guest must not block or fail
        // because the host chose to keep less.
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
