//! A counting global allocator: current and peak bytes held on the heap, so a benchmark
//! can report the peak memory of one training step (reset the peak before the step).
//! The binary installs it with `#[global_allocator]`; in other processes the counters
//! simply stay at zero. Buffers idle in the activation pool (`kernels::workspace`) are
//! allocated but hold no tensor: they are subtracted, so "current" and "peak" are the
//! bytes live tensors hold.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct CountingAlloc;

/// Heap bytes allocated through the counting allocator.
static CURRENT: AtomicUsize = AtomicUsize::new(0);
/// Of those, bytes idle in the activation pool.
static POOLED: AtomicUsize = AtomicUsize::new(0);
/// Peak of CURRENT - POOLED.
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn live(heap: usize) -> usize {
    heap.saturating_sub(POOLED.load(Ordering::Relaxed))
}

fn grew(size: usize) {
    let now = CURRENT.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(live(now), Ordering::Relaxed);
}

/// A buffer of `bytes` went idle into the activation pool.
pub fn retired(bytes: usize) {
    POOLED.fetch_add(bytes, Ordering::Relaxed);
}

/// A buffer of `bytes` left the activation pool to hold a tensor again.
pub fn reused(bytes: usize) {
    // Saturating: the pool reports even where this allocator is not installed.
    let _ = POOLED.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
        Some(p.saturating_sub(bytes))
    });
    PEAK.fetch_max(current_bytes(), Ordering::Relaxed);
}

// SAFETY: delegates every call to the system allocator and only updates counters.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

/// A pooled buffer of `bytes` was freed (after its deallocation: counting it as live in
/// between would raise the peak by a buffer no tensor held).
pub fn pooled_freed(bytes: usize) {
    let _ = POOLED.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
        Some(p.saturating_sub(bytes))
    });
}

/// Bytes live tensors hold: allocated through the counting allocator, not idle in the pool.
pub fn current_bytes() -> usize {
    live(CURRENT.load(Ordering::Relaxed))
}

/// Peak bytes since the last `reset_peak`.
pub fn peak_bytes() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// Starts a new peak measurement from the current level.
pub fn reset_peak() {
    PEAK.store(current_bytes(), Ordering::Relaxed);
}

/// Whether the counting allocator is installed in this process.
pub fn is_counting() -> bool {
    let before = current_bytes();
    let v: Vec<u8> = std::hint::black_box(Vec::with_capacity(4096));
    let after = current_bytes();
    drop(v);
    after >= before + 4096
}

/// Peak resident set size of the process (VmHWM), in bytes, where /proc is available.
pub fn peak_rss_bytes() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Current resident set size (VmRSS), in bytes.
pub fn rss_bytes() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
