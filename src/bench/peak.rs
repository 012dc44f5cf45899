//! The machine's measured single-precision FMA peak, the yardstick for `bench`'s achieved
//! GFLOP/s: every rayon thread runs independent chains of FMAs at once (enough chains to
//! cover the FMA latency on both pipes), at the widest vector the CPU has (AVX-512 where
//! present, else AVX2), so the figure is what the cores deliver here, turbo and sharing
//! included, not a datasheet number.

use std::time::Instant;

/// The FMA peak and the vector width it was measured at.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct FmaPeak {
    pub gflops: f64,
    /// `avx512` or `avx2`.
    pub isa: &'static str,
}

/// GFLOP/s of all rayon threads issuing FMAs together (best of a few short trials) at
/// the widest vector width available; `None` without AVX2/FMA.
pub fn fma_peak() -> Option<FmaPeak> {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was detected.
            let g = best_of(|iters| unsafe { avx512::fma_chains(iters) }, 16);
            return Some(FmaPeak {
                gflops: g,
                isa: "avx512",
            });
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: AVX2 and FMA were detected.
            let g = best_of(|iters| unsafe { avx2::fma_chains(iters) }, 8);
            return Some(FmaPeak {
                gflops: g,
                isa: "avx2",
            });
        }
        None
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// Best GFLOP/s of ten trials of `chains(iters)` on every rayon thread at once. Each
/// trial's clock starts when every thread has arrived (a spin barrier), so a pool thread
/// slow to wake does not halve the figure (one bench run reported 220 GFLOP/s, and a
/// training step at 106% of it, when a thread woke late for every trial); a trial lasts
/// as long as its slowest thread.
#[cfg(target_arch = "x86_64")]
fn best_of(chains: impl Fn(usize) -> f32 + Sync, lanes: usize) -> f64 {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const ITERS: usize = 4_000_000;
    let mut best = 0.0f64;
    for _ in 0..10 {
        let arrived = AtomicUsize::new(0);
        let threads = rayon::current_num_threads();
        let runs: Vec<(f32, f64)> = rayon::broadcast(|_| {
            arrived.fetch_add(1, Ordering::SeqCst);
            while arrived.load(Ordering::SeqCst) < threads {
                std::hint::spin_loop();
            }
            let t0 = Instant::now();
            let sum = chains(ITERS);
            (sum, t0.elapsed().as_secs_f64())
        });
        let secs = runs.iter().map(|r| r.1).fold(0.0, f64::max);
        std::hint::black_box(runs.iter().map(|r| r.0).sum::<f32>());
        // chains x lanes x 2 flops per FMA, per iteration, per thread.
        let flops = (runs.len() * ITERS * CHAINS * lanes * 2) as f64;
        best = best.max(flops / secs / 1e9);
    }
    best
}

/// Independent accumulators: 2 FMA pipes x 4-5 cycles latency needs >= 10.
#[cfg(target_arch = "x86_64")]
const CHAINS: usize = 12;

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::CHAINS;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma_chains(iters: usize) -> f32 {
        let a = _mm512_set1_ps(0.999_999);
        let b = _mm512_set1_ps(1e-7);
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for c in acc.iter_mut() {
                *c = _mm512_fmadd_ps(*c, a, b);
            }
        }
        let mut total = _mm512_setzero_ps();
        for c in acc {
            total = _mm512_add_ps(total, c);
        }
        _mm512_reduce_add_ps(total)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::CHAINS;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma_chains(iters: usize) -> f32 {
        let a = _mm256_set1_ps(0.999_999);
        let b = _mm256_set1_ps(1e-7);
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for c in acc.iter_mut() {
                *c = _mm256_fmadd_ps(*c, a, b);
            }
        }
        let mut total = _mm256_setzero_ps();
        for c in acc {
            total = _mm256_add_ps(total, c);
        }
        let mut out = [0.0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), total);
        out.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn peak_is_positive_where_measured() {
        if let Some(p) = super::fma_peak() {
            assert!(p.gflops > 1.0 && p.gflops.is_finite(), "{p:?}");
        }
    }
}
