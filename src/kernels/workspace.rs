//! Reusable activation buffers.
//!
//! A training step allocates the same large buffers every step (a layer's tape alone is
//! ~200 MB at MiniLM 8 x 512). `vec![0.0; n]` would zero-fill each of them, one thread
//! streaming gigabytes per step; buffers taken from this pool skip that fill. Their
//! contents are stale, so [`take`] is only for outputs a kernel overwrites entirely
//! (every kernel's unit test starts from NaN-filled outputs to hold them to that).
//! A fresh buffer is NaN-filled too, so a caller that wrongly relies on zeros fails
//! loudly from the first step, not only once buffers come back dirty.
//!
//! Pooled bytes are reported to the counting allocator as not live, so the memory
//! benchmarks measure what tensors hold, not what the pool keeps in reserve.

use std::sync::Mutex;

/// Idle bytes the pool may keep; a buffer recycled beyond this is freed.
const MAX_POOLED_BYTES: usize = 6 << 30;

/// A pooled buffer serves a request of `len` only if its capacity is at most this
/// multiple of `len` (a small request must not pin a huge buffer).
const MAX_SLACK: usize = 2;

/// Requests below this many elements are not worth pooling.
const MIN_POOLED_LEN: usize = 1 << 14;

struct Pool {
    free: Vec<Vec<f32>>,
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    free: Vec::new(),
    bytes: 0,
});

fn bytes_of(v: &Vec<f32>) -> usize {
    v.capacity() * std::mem::size_of::<f32>()
}

/// A buffer of `len` elements with unspecified (stale or NaN) contents.
pub fn take(len: usize) -> Vec<f32> {
    if len >= MIN_POOLED_LEN {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let best = pool
            .free
            .iter()
            .enumerate()
            .filter(|(_, v)| v.capacity() >= len && v.capacity() <= len * MAX_SLACK)
            .min_by_key(|(_, v)| v.capacity())
            .map(|(i, _)| i);
        if let Some(i) = best {
            let mut v = pool.free.swap_remove(i);
            pool.bytes -= bytes_of(&v);
            drop(pool);
            crate::bench::alloc::reused(bytes_of(&v));
            // Within capacity: truncating or extending by NaN touches no new memory.
            v.resize(len, f32::NAN);
            return v;
        }
    }
    vec![f32::NAN; len]
}

/// Returns a buffer to the pool (or frees it when the pool is full or it is small).
pub fn recycle(v: Vec<f32>) {
    if v.capacity() < MIN_POOLED_LEN {
        return;
    }
    let bytes = bytes_of(&v);
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if pool.bytes + bytes > MAX_POOLED_BYTES {
        return;
    }
    pool.bytes += bytes;
    pool.free.push(v);
    drop(pool);
    crate::bench::alloc::retired(bytes);
}

/// Frees every pooled buffer (the benchmark calls this between variants so one
/// variant's buffers do not serve, or crowd out, the next one's).
pub fn clear() {
    let free = {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        pool.bytes = 0;
        std::mem::take(&mut pool.free)
    };
    for v in free {
        let bytes = bytes_of(&v);
        crate::bench::alloc::reused(bytes);
        drop(v);
    }
}

/// Bytes the pool holds idle.
pub fn pooled_bytes() -> usize {
    POOL.lock().unwrap_or_else(|e| e.into_inner()).bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test touches the global pool, so parallel tests cannot interleave with it.
    #[test]
    fn reuses_fitting_buffers_and_never_hands_out_too_large_ones() {
        clear();
        let a = take(MIN_POOLED_LEN * 4);
        assert_eq!(a.len(), MIN_POOLED_LEN * 4);
        assert!(a.iter().all(|x| x.is_nan()), "fresh buffers are NaN-filled");
        let ptr = a.as_ptr();
        recycle(a);
        assert_eq!(pooled_bytes(), MIN_POOLED_LEN * 4 * 4);

        // Too small a request for this buffer (slack > 2x): a fresh one.
        let small = take(MIN_POOLED_LEN);
        assert_ne!(small.as_ptr(), ptr);
        // A fitting request gets the pooled buffer back, at the requested length.
        let b = take(MIN_POOLED_LEN * 3);
        assert_eq!(b.as_ptr(), ptr);
        assert_eq!(b.len(), MIN_POOLED_LEN * 3);
        assert_eq!(pooled_bytes(), 0);

        // Small buffers are not pooled.
        recycle(vec![0.0; 10]);
        assert_eq!(pooled_bytes(), 0);
        recycle(b);
        recycle(small);
        clear();
        assert_eq!(pooled_bytes(), 0);
    }
}
