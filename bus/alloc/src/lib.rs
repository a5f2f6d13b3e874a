//! The process allocator, counting what a thread holds while it asks to be counted.
//!
//! A script run may hold only so many bytes in all (not only per value: many large strings in
//! separate variables add up). Rhai cannot tell what a run holds, so the allocator does: a
//! binary that runs scripts installs [`Counting`] as its global allocator, the engine
//! [`count`]s around each run and checks [`held`] as the script goes. Only the counting
//! thread's own allocations are added up; a thread that does not count pays one thread-local
//! read an allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    /// Whether this thread counts its allocations now.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    /// Bytes allocated less bytes freed by this thread since it started counting.
    static HELD: Cell<isize> = const { Cell::new(0) };
}

/// The system allocator, adding each allocation of a counting thread to its count. Install it
/// with `#[global_allocator] static ALLOC: pigeon_alloc::Counting = pigeon_alloc::Counting;`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counting;

fn add(bytes: isize) {
    // Const thread-locals without a destructor are there for the thread's whole life, so the
    // allocator never recurses into itself here.
    if COUNTING.get() {
        HELD.set(HELD.get().saturating_add(bytes));
    }
}

fn size(bytes: usize) -> isize {
    isize::try_from(bytes).unwrap_or(isize::MAX)
}

// SAFETY: every method hands the caller's arguments to `System` unchanged and returns what it
// returned; the count is plain arithmetic on thread-locals and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which is `System`'s.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            add(size(layout.size()));
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            add(size(layout.size()));
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator, that is by `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        add(-size(layout.size()));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` was allocated by `System` with `layout`; the caller upholds the rest.
        let moved = unsafe { System.realloc(ptr, layout, new_size) };
        if !moved.is_null() {
            add(size(new_size).saturating_sub(size(layout.size())));
        }
        moved
    }
}

/// Counts this thread's allocations until the guard is dropped, from zero.
#[must_use = "counting stops when the guard is dropped"]
#[derive(Debug)]
pub struct Counted {
    was: bool,
}

impl Drop for Counted {
    fn drop(&mut self) {
        COUNTING.set(self.was);
    }
}

/// Starts counting what this thread holds, from zero, until the guard is dropped.
pub fn count() -> Counted {
    HELD.set(0);
    Counted { was: COUNTING.replace(true) }
}

/// Bytes this thread allocated and has not freed since [`count`] (negative when it freed more
/// than it allocated since then; zero when [`Counting`] is not the global allocator).
pub fn held() -> isize {
    HELD.get()
}

/// Whether [`Counting`] is the process's global allocator (else nothing is counted).
pub fn installed() -> bool {
    let _counted = count();
    let probe = std::hint::black_box(Vec::<u8>::with_capacity(64));
    let seen = held() >= 64;
    drop(probe);
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static ALLOC: Counting = Counting;

    #[test]
    fn a_counting_thread_sees_what_it_holds_and_no_other_thread_adds_to_it() {
        assert!(installed());
        let counted = count();
        let kept = std::hint::black_box(vec![0u8; 1 << 20]);
        assert!(held() >= 1 << 20, "{}", held());
        std::thread::spawn(|| std::hint::black_box(vec![0u8; 8 << 20])).join().unwrap();
        assert!(held() < 2 << 20, "another thread's allocations are its own: {}", held());
        drop(kept);
        assert!(held() < 1 << 10, "freed: {}", held());
        drop(counted);
        let before = held();
        let _more = std::hint::black_box(vec![0u8; 1 << 20]);
        assert_eq!(held(), before, "not counting after the guard");
    }
}
