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

/// Idle bytes the pool keeps at most: enough for a bert-base 4 x 512 training step's
/// activations (~1.8 GB) twice over. Beyond it the least recently recycled buffers are
/// freed, so a server whose batch shapes drift does not hoard buffers it no longer uses.
const MAX_POOLED_BYTES: usize = 4 << 30;

/// A pooled buffer serves a request of `len` only if its capacity is at most this
/// multiple of `len` (a small request must not pin a huge buffer).
const MAX_SLACK: usize = 2;

/// Requests below this many elements are not worth pooling.
const MIN_POOLED_LEN: usize = 1 << 14;

/// Idle buffers, least recently recycled first, holding at most `limit` bytes.
struct Pool {
    free: Vec<Vec<f32>>,
    bytes: usize,
    limit: usize,
}

impl Pool {
    const fn new(limit: usize) -> Pool {
        Pool {
            free: Vec::new(),
            bytes: 0,
            limit,
        }
    }

    /// The smallest idle buffer that fits `len` within the slack, removed from the pool.
    fn take(&mut self, len: usize) -> Option<Vec<f32>> {
        let best = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, v)| v.capacity() >= len && v.capacity() <= len * MAX_SLACK)
            .min_by_key(|(_, v)| v.capacity())
            .map(|(i, _)| i)?;
        let v = self.free.remove(best);
        self.bytes -= bytes_of(&v);
        Some(v)
    }

    /// Keeps `v` (unless it alone exceeds the limit), returning the least recently
    /// recycled buffers it displaced, or `v` itself, to be freed.
    fn put(&mut self, v: Vec<f32>) -> Vec<Vec<f32>> {
        let bytes = bytes_of(&v);
        if bytes > self.limit {
            return vec![v];
        }
        let (mut oldest, mut freed) = (0, 0);
        while self.bytes - freed + bytes > self.limit {
            freed += bytes_of(&self.free[oldest]);
            oldest += 1;
        }
        let evicted = self.free.drain(..oldest).collect();
        self.bytes = self.bytes - freed + bytes;
        self.free.push(v);
        evicted
    }
}

static POOL: Mutex<Pool> = Mutex::new(Pool::new(MAX_POOLED_BYTES));

fn pool() -> std::sync::MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

fn bytes_of(v: &Vec<f32>) -> usize {
    v.capacity() * std::mem::size_of::<f32>()
}

/// A buffer of `len` elements with unspecified (stale or NaN) contents.
pub fn take(len: usize) -> Vec<f32> {
    if len >= MIN_POOLED_LEN {
        let taken = pool().take(len);
        if let Some(mut v) = taken {
            crate::alloc::reused(bytes_of(&v));
            // Within capacity: truncating or extending by NaN touches no new memory.
            v.resize(len, f32::NAN);
            return v;
        }
    }
    vec![f32::NAN; len]
}

/// Returns a buffer to the pool (small ones are simply freed), evicting the least
/// recently recycled buffers when the pool would exceed its limit.
pub fn recycle(v: Vec<f32>) {
    if v.capacity() < MIN_POOLED_LEN {
        return;
    }
    crate::alloc::retired(bytes_of(&v));
    let freed = pool().put(v);
    // Freed outside the lock; each leaves the pool's count first.
    for old in freed {
        crate::alloc::reused(bytes_of(&old));
    }
}

/// Frees every pooled buffer (the benchmark calls this so that a variant's memory is
/// measured from an empty pool).
pub fn clear() {
    let free = {
        let mut p = pool();
        p.bytes = 0;
        std::mem::take(&mut p.free)
    };
    for v in free {
        crate::alloc::reused(bytes_of(&v));
    }
}

/// Bytes the pool holds idle.
pub fn pooled_bytes() -> usize {
    pool().bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    // A local pool: the global one is shared with every test running alongside.
    #[test]
    fn hands_out_the_smallest_fitting_buffer_and_evicts_the_oldest() {
        let mut pool = Pool::new(1000 * 4);
        let ptrs: Vec<*const f32> = [300, 200, 400]
            .into_iter()
            .map(|n| {
                let v = Vec::<f32>::with_capacity(n);
                let p = v.as_ptr();
                assert!(pool.put(v).is_empty());
                p
            })
            .collect();
        assert_eq!(pool.bytes, 900 * 4);
        // 150 fits 200 and 300 within 2x: the smaller one.
        let got = pool.take(150).unwrap();
        assert_eq!(got.as_ptr(), ptrs[1]);
        // 100 has nothing within 2x (300 and 400 are too large).
        assert!(pool.take(100).is_none());
        assert_eq!(pool.bytes, 700 * 4);
        // 500 more: the oldest (300) makes room, the 400 stays.
        let evicted = pool.put(Vec::with_capacity(500));
        assert_eq!(evicted.len(), 1);
        assert_eq!(evicted[0].as_ptr(), ptrs[0]);
        assert_eq!(pool.bytes, 900 * 4);
        let got = pool.take(400).unwrap();
        assert_eq!(got.as_ptr(), ptrs[2]);
        // A buffer larger than the whole limit is not kept.
        assert_eq!(pool.put(Vec::with_capacity(2000)).len(), 1);
        assert_eq!(pool.bytes, 500 * 4);
    }

    #[test]
    fn fresh_buffers_are_nan_filled_at_the_requested_length() {
        for len in [10, MIN_POOLED_LEN * 2] {
            let v = take(len);
            assert_eq!(v.len(), len);
            // Stale contents are possible for pooled sizes; fresh ones are NaN.
            if len < MIN_POOLED_LEN {
                assert!(v.iter().all(|x| x.is_nan()));
            }
            recycle(v);
        }
    }
}
