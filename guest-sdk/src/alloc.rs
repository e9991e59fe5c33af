//! The component's allocator: small blocks from free lists, the rest from
//! the system allocator.
//!
//! A handler's allocations are mostly small and short: every string of
//! every event in a batch (the canonical ABI allocates each one through
//! `cabi_realloc`), a canonical address, a reason. Through the system
//! allocator (wasi-libc's dlmalloc) each one costs a few hundred
//! instructions to allocate and as many to free, about a sixth of what a
//! guest spends per event. Here a block of up to [`SMALL`] bytes comes from
//! the free list of its size class, or is carved from a chunk, and goes
//! back to that list when freed, in a few instructions either way.
//!
//! Freed small blocks are reused by their own size class only and never go
//! back to the system allocator. An instance lives for one batch, so this
//! costs at most a batch's peak of small blocks per class, and the handler's
//! memory cap bounds it like any other memory.
//!
//! Only in the component: native builds (unit tests) keep the system
//! allocator. A handler that wants its own allocator turns the `allocator`
//! feature off.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;

/// Size classes are multiples of this, which is also every small block's
/// alignment.
const GRAIN: usize = 16;
/// The largest block served from the free lists.
const SMALL: usize = 256;
const CLASSES: usize = SMALL / GRAIN;
/// Small blocks are carved from chunks of this size.
const CHUNK: usize = 16 * 1024;

pub struct SmallBlocks(UnsafeCell<State>);

struct State {
    /// Per class, the first free block; each free block holds the next.
    free: [*mut u8; CLASSES],
    /// What is left of the current chunk.
    next: *mut u8,
    end: *mut u8,
}

// SAFETY: the component runs on one thread (wasm32-wasip2 has no threads),
// so the state is never touched from two threads.
unsafe impl Sync for SmallBlocks {}

impl SmallBlocks {
    pub const fn new() -> SmallBlocks {
        SmallBlocks(UnsafeCell::new(State {
            free: [ptr::null_mut(); CLASSES],
            next: ptr::null_mut(),
            end: ptr::null_mut(),
        }))
    }
}

impl Default for SmallBlocks {
    fn default() -> SmallBlocks {
        SmallBlocks::new()
    }
}

/// The size class of `layout`, if it is small.
fn class(layout: Layout) -> Option<usize> {
    (layout.size() <= SMALL && layout.align() <= GRAIN)
        .then(|| layout.size().max(1).div_ceil(GRAIN) - 1)
}

unsafe impl GlobalAlloc for SmallBlocks {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class(layout) else {
            // SAFETY: the caller's layout, passed on.
            return unsafe { System.alloc(layout) };
        };
        // SAFETY: one thread (see `Sync`), and no reference to the state
        // outlives this call.
        let state = unsafe { &mut *self.0.get() };
        let head = state.free[class];
        if !head.is_null() {
            // SAFETY: a free block holds the next free block of its class.
            state.free[class] = unsafe { head.cast::<*mut u8>().read() };
            return head;
        }
        let size = (class + 1) * GRAIN;
        if (state.end as usize) - (state.next as usize) < size {
            // SAFETY: a valid, non-zero layout. What was left of the old
            // chunk (less than one block) is given up.
            let chunk = unsafe { System.alloc(Layout::from_size_align_unchecked(CHUNK, GRAIN)) };
            if chunk.is_null() {
                return chunk;
            }
            state.next = chunk;
            // SAFETY: within the chunk just allocated.
            state.end = unsafe { chunk.add(CHUNK) };
        }
        let block = state.next;
        // SAFETY: `size` bytes are left in the chunk (checked above).
        state.next = unsafe { block.add(size) };
        block
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(class) = class(layout) else {
            // SAFETY: allocated by `System` with this layout (see `alloc`).
            return unsafe { System.dealloc(block, layout) };
        };
        // SAFETY: one thread; the block is at least GRAIN bytes and aligned
        // to GRAIN, so it can hold the list's link.
        unsafe {
            let state = &mut *self.0.get();
            block.cast::<*mut u8>().write(state.free[class]);
            state.free[class] = block;
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees a valid layout for `new_size`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class(layout), class(new_layout)) {
            // The block already has room.
            (Some(old), Some(new)) if old == new => block,
            // Both large: the system allocator may grow in place.
            // SAFETY: the caller's arguments, passed on.
            (None, None) => unsafe { System.realloc(block, layout, new_size) },
            _ => {
                // SAFETY: as `GlobalAlloc::realloc`'s default: a new block,
                // the smaller size copied, the old block freed.
                unsafe {
                    let moved = self.alloc(new_layout);
                    if !moved.is_null() {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                    moved
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of every small size come out aligned, apart, and reused by
    /// their own class once freed; large ones go to the system.
    #[test]
    fn small_blocks_are_reused_by_class() {
        let a = SmallBlocks::new();
        unsafe {
            let mut blocks = Vec::new();
            for size in 1..=SMALL {
                let layout = Layout::from_size_align(size, 1).unwrap();
                let p = a.alloc(layout);
                assert!(!p.is_null());
                assert_eq!(p as usize % GRAIN, 0, "size {size}");
                p.write_bytes(size as u8, size);
                blocks.push((p, layout));
            }
            // Nothing overlapped: each block still holds its own bytes.
            for &(p, layout) in &blocks {
                let bytes = std::slice::from_raw_parts(p, layout.size());
                assert!(bytes.iter().all(|&b| b == layout.size() as u8));
            }
            let (p, layout) = blocks[40];
            a.dealloc(p, layout);
            // The same class gets the block back; another class does not.
            let other = a.alloc(Layout::from_size_align(200, 8).unwrap());
            assert_ne!(other, p);
            let again = a.alloc(Layout::from_size_align(33 + 8, 4).unwrap());
            assert_eq!(again, p);
            // Growing within the class keeps the block; past it, moves it
            // with its bytes.
            again.write_bytes(7, 41);
            assert_eq!(
                a.realloc(again, Layout::from_size_align(41, 4).unwrap(), 48),
                again
            );
            let moved = a.realloc(again, Layout::from_size_align(48, 4).unwrap(), 1000);
            assert_ne!(moved, again);
            assert!(
                std::slice::from_raw_parts(moved, 41)
                    .iter()
                    .all(|&b| b == 7)
            );
            a.dealloc(moved, Layout::from_size_align(1000, 4).unwrap());
            // Over-aligned requests go to the system allocator.
            let aligned = Layout::from_size_align(64, 64).unwrap();
            let q = a.alloc(aligned);
            assert_eq!(q as usize % 64, 0);
            a.dealloc(q, aligned);
        }
    }
}
