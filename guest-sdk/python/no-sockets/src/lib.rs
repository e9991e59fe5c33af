//! herald-no-sockets: `wasi:sockets`, with every function a trap.
//!
//! A component built by componentize-py imports every `wasi:sockets`
//! interface, whatever the Python code does: CPython's runtime links the
//! socket functions of wasi-libc. herald refuses a handler that imports
//! sockets (a handler reaches the outside only through herald's
//! capabilities), so `guest-sdk/python/build.py` plugs this component into
//! every Python handler (`wac plug`): the handler then imports no sockets,
//! and a socket call traps inside its own instance, failing that call.
//!
//! The interfaces are those componentize-py 0.25.1 imports, `@0.2.9`, as
//! `wasm-tools component wit` prints them from such a component
//! (`wit/world.wit`): the plug must import the same versions of `wasi:io`
//! and `wasi:clocks` as the handler, or their resources would be two
//! different types. So it is built without std, whose own WASI imports are
//! of another version.

// Only a component: natively (`cargo test --workspace`, clippy) the crate
// is empty.
#![cfg(target_arch = "wasm32")]
#![no_std]

extern crate alloc;

wit_bindgen::generate!({
    path: "wit",
    world: "no-sockets",
    // Every export implemented as `unreachable!()`: a trap.
    stubs,
    generate_all,
});

#[panic_handler]
fn trap(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}

/// Memory for the arguments the caller copies in before a call traps: taken
/// page by page from `memory.grow`, never given back (the instance lives
/// for one batch).
struct Pages;

unsafe impl core::alloc::GlobalAlloc for Pages {
    unsafe fn alloc(&self, layout: core::alloc::Layout) -> *mut u8 {
        let pages = layout.size().div_ceil(65536).max(1);
        match core::arch::wasm32::memory_grow(0, pages) {
            usize::MAX => core::ptr::null_mut(),
            page => (page * 65536) as *mut u8,
        }
    }

    unsafe fn dealloc(&self, _: *mut u8, _: core::alloc::Layout) {}
}

#[global_allocator]
static PAGES: Pages = Pages;

/// The canonical ABI's allocator export, for the arguments a caller copies
/// in (without std, wit-bindgen's own is not linked in).
///
/// # Safety
///
/// Called by the component model's lowering only, as the ABI says.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cabi_realloc(
    old: *mut u8,
    old_len: usize,
    align: usize,
    new_len: usize,
) -> *mut u8 {
    if new_len == 0 {
        return align as *mut u8;
    }
    let layout = core::alloc::Layout::from_size_align(new_len, align).expect("ABI layout");
    // SAFETY: a non-zero size; `Pages` gives page-aligned, fresh memory.
    let new = unsafe { core::alloc::GlobalAlloc::alloc(&PAGES, layout) };
    if new.is_null() {
        core::arch::wasm32::unreachable()
    }
    if !old.is_null() {
        // SAFETY: the caller's old block is `old_len` bytes; the new one is
        // fresh, so they do not overlap.
        unsafe { core::ptr::copy_nonoverlapping(old, new, old_len.min(new_len)) };
    }
    new
}
