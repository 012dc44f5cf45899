//! A counting global allocator: current and peak bytes held on the heap, so a benchmark
//! can report the peak memory of one training step (reset the peak before the step).
//! The binary installs it with `#[global_allocator]`; in other processes the counters
//! simply stay at zero. Buffers idle in the activation pool (`kernels::workspace`) are
//! allocated but hold no tensor: they are subtracted, so "current" and "peak" are the
//! bytes live tensors hold.
//!
//! It also starts every block of 4 KiB or more on a 64-byte cache line: the system
//! allocator starts them 16 bytes past one, so each 64-byte vector load of a tensor
//! would straddle two lines (the f32 training step ran about 5% faster aligned).

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

/// Blocks of at least this many bytes start on a cache line ([`with_line_alignment`]).
const LINE_ALIGNED_FROM: usize = 4096;

/// The layout the system allocator is asked for: `layout`, but 64-byte aligned where it
/// is large. A large `Vec<f32>` from the system allocator starts 16 bytes past a cache
/// line, so every 64-byte vector load of a tensor (activations, weights, gradients)
/// would straddle two lines. A pure function of the layout, so that `dealloc` and
/// `realloc` hand the system the layout the block was allocated with.
fn with_line_alignment(layout: Layout) -> Layout {
    if layout.size() >= LINE_ALIGNED_FROM && layout.align() < 64 {
        // Fails only where the size rounded up to 64 would overflow: then as asked.
        Layout::from_size_align(layout.size(), 64).unwrap_or(layout)
    } else {
        layout
    }
}

// SAFETY: delegates every call to the system allocator with `with_line_alignment`'s
// layout (the same for a block's allocation and its release) and only updates counters.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(with_line_alignment(layout));
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(with_line_alignment(layout));
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, with_line_alignment(layout));
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = realloc_line_aligned(ptr, layout, new_size);
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

/// The system's `realloc` of a block allocated with `with_line_alignment(layout)`, to a
/// block of `with_line_alignment` of the new size.
///
/// # Safety
/// As for [`GlobalAlloc::realloc`], with `ptr` from `System` with that layout.
unsafe fn realloc_line_aligned(ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
    let old = with_line_alignment(layout);
    // Valid: `realloc`'s contract makes `new_size` with `layout.align()` a layout.
    let new = with_line_alignment(Layout::from_size_align_unchecked(new_size, layout.align()));
    if old.align() == new.align() {
        return System.realloc(ptr, old, new_size);
    }
    // Crossing the size threshold changes the alignment: a new block.
    let p = System.alloc(new);
    if !p.is_null() {
        std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
        System.dealloc(ptr, old);
    }
    p
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

#[cfg(test)]
mod tests {
    use super::{realloc_line_aligned, with_line_alignment, LINE_ALIGNED_FROM};
    use std::alloc::{GlobalAlloc, Layout, System};

    // The system allocator directly, with the counting allocator's layouts: calling
    // `CountingAlloc` here would move the process-wide counters other tests read.
    #[test]
    fn large_blocks_start_on_a_line_and_keep_their_bytes_across_reallocs() {
        let f32s = |n: usize| Layout::array::<f32>(n).unwrap();
        assert_eq!(with_line_alignment(f32s(100)).align(), 4);
        assert_eq!(with_line_alignment(f32s(LINE_ALIGNED_FROM / 4)).align(), 64);
        assert_eq!(
            with_line_alignment(Layout::from_size_align(8192, 128).unwrap()).align(),
            128
        );
        unsafe {
            // Small -> large -> larger -> small, the contents carried over each time.
            let small = f32s(100);
            let p = System.alloc(with_line_alignment(small)) as *mut f32;
            for i in 0..100 {
                *p.add(i) = i as f32;
            }
            let mut layout = small;
            let mut p = p as *mut u8;
            for n in [5000usize, 300_000, 60] {
                p = realloc_line_aligned(p, layout, 4 * n);
                assert!(!p.is_null());
                layout = f32s(n);
                if 4 * n >= LINE_ALIGNED_FROM {
                    assert_eq!(p as usize % 64, 0, "{n} floats");
                }
                let q = p as *mut f32;
                for i in 0..n.min(100) {
                    assert_eq!(*q.add(i), i as f32, "{n} floats, element {i}");
                }
            }
            System.dealloc(p, with_line_alignment(layout));
            for n in [1024usize, 4096, 1 << 20] {
                let l = with_line_alignment(f32s(n));
                let p = System.alloc(l);
                assert_eq!(p as usize % 64, 0);
                System.dealloc(p, l);
            }
        }
    }
}
