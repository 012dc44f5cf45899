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
//!
//! The pool keeps at most as many idle bytes as pooled buffers ever held at once (the
//! run's working set: one training step's activations for the model and batch at hand),
//! never more than [`MAX_POOLED_BYTES`]. Without that bound a run whose batch shapes
//! drift (every batch padded to its own longest text) kept a buffer of every shape it
//! had met, up to the hard limit: `demo`, a 4-layer hidden-128 model, reached 4.8 GB of
//! RSS for 290 MiB of tensors.

use std::sync::Mutex;

/// Idle bytes the pool keeps at most, whatever the working set: enough for a bert-base
/// 4 x 512 training step's activations (~1.8 GB) twice over. Beyond the bound in force
/// the least recently recycled buffers are freed.
pub const MAX_POOLED_BYTES: usize = 4 << 30;

/// A pooled buffer serves a request of `len` only if its capacity is at most this
/// multiple of `len` (a small request must not pin a huge buffer).
const MAX_SLACK: usize = 2;

/// Requests below this many elements are not worth pooling.
const MIN_POOLED_LEN: usize = 1 << 14;

/// Idle buffers, least recently recycled first, holding at most `limit` bytes and (when
/// `adaptive`) at most the peak of the bytes handed out and not yet returned.
struct Pool {
    free: Vec<Vec<f32>>,
    bytes: usize,
    limit: usize,
    adaptive: bool,
    /// Bytes of buffers handed out by [`take`] and not yet recycled.
    in_use: usize,
    /// The most `in_use` has been (since the last [`clear`]).
    peak_in_use: usize,
}

impl Pool {
    const fn new(limit: usize, adaptive: bool) -> Pool {
        Pool {
            free: Vec::new(),
            bytes: 0,
            limit,
            adaptive,
            in_use: 0,
            peak_in_use: 0,
        }
    }

    /// The idle bytes the pool may keep now.
    fn bound(&self) -> usize {
        if self.adaptive {
            self.limit.min(self.peak_in_use)
        } else {
            self.limit
        }
    }

    /// `bytes` more are in use (taken from the pool or freshly allocated for a taker).
    fn lent(&mut self, bytes: usize) {
        self.in_use += bytes;
        self.peak_in_use = self.peak_in_use.max(self.in_use);
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
        self.lent(bytes_of(&v));
        Some(v)
    }

    /// Keeps `v` (unless it alone exceeds the limit), returning the least recently
    /// recycled buffers it displaced, or `v` itself, to be freed.
    fn put(&mut self, v: Vec<f32>) -> Vec<Vec<f32>> {
        let bytes = bytes_of(&v);
        self.in_use = self.in_use.saturating_sub(bytes);
        let limit = self.bound();
        if bytes > limit {
            return vec![v];
        }
        let (mut oldest, mut freed) = (0, 0);
        while self.bytes - freed + bytes > limit {
            freed += bytes_of(&self.free[oldest]);
            oldest += 1;
        }
        let evicted = self.free.drain(..oldest).collect();
        self.bytes = self.bytes - freed + bytes;
        self.free.push(v);
        evicted
    }
}

static POOL: Mutex<Pool> = Mutex::new(Pool::new(MAX_POOLED_BYTES, true));

fn pool() -> std::sync::MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

fn bytes_of(v: &Vec<f32>) -> usize {
    v.capacity() * std::mem::size_of::<f32>()
}

/// A buffer of `len` elements with unspecified (stale or NaN) contents.
pub fn take(len: usize) -> Vec<f32> {
    if len < MIN_POOLED_LEN {
        return vec![f32::NAN; len];
    }
    let taken = pool().take(len);
    if let Some(mut v) = taken {
        crate::alloc::reused(bytes_of(&v));
        // Within capacity: truncating or extending by NaN touches no new memory.
        v.resize(len, f32::NAN);
        return v;
    }
    let v = vec![f32::NAN; len];
    pool().lent(bytes_of(&v));
    v
}

/// Returns a buffer to the pool (small ones are simply freed), evicting the least
/// recently recycled buffers when the pool would exceed its limit.
pub fn recycle(v: Vec<f32>) {
    if v.capacity() < MIN_POOLED_LEN {
        return;
    }
    crate::alloc::retired(bytes_of(&v));
    let freed = pool().put(v);
    // Freed outside the lock; each leaves the pool's count once deallocated.
    for old in freed {
        let bytes = bytes_of(&old);
        drop(old);
        crate::alloc::pooled_freed(bytes);
    }
}

/// Frees every pooled buffer and forgets the working set (the benchmark calls this so
/// that a variant's memory is measured from an empty pool; `demo` between runs, whose
/// model and batch may differ).
pub fn clear() {
    let free = {
        let mut p = pool();
        p.bytes = 0;
        p.peak_in_use = p.in_use;
        std::mem::take(&mut p.free)
    };
    for v in free {
        let bytes = bytes_of(&v);
        drop(v);
        crate::alloc::pooled_freed(bytes);
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
        let mut pool = Pool::new(1000 * 4, false);
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
    fn an_adaptive_pool_keeps_no_more_idle_than_its_working_set() {
        // Issue 16 item 4: shapes that drift step after step (no earlier buffer fits the
        // next step's requests) used to pile up to the 4 GiB limit.
        let mut pool = Pool::new(1 << 30, true);
        let mut most_in_use = 0;
        for step in 0..200usize {
            let lens = [1000 + 10 * step, 3000 + 30 * step, 500 + 5 * step];
            let taken: Vec<Vec<f32>> = lens
                .iter()
                .map(|&len| {
                    pool.take(len).unwrap_or_else(|| {
                        let v = Vec::with_capacity(len);
                        pool.lent(bytes_of(&v));
                        v
                    })
                })
                .collect();
            most_in_use = most_in_use.max(taken.iter().map(bytes_of).sum::<usize>());
            for v in taken {
                drop(pool.put(v));
            }
            assert!(
                pool.bytes <= most_in_use,
                "step {step}: {} idle",
                pool.bytes
            );
        }
        assert_eq!(pool.in_use, 0);
        assert_eq!(pool.peak_in_use, most_in_use);
        // The same requests again are served from the pool.
        assert!(pool.take(3000 + 30 * 199).is_some());
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
