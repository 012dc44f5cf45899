//! The one seam to the matrix-multiply engine: our AVX2/FMA kernel (`gemm_avx2`) where
//! the CPU has it, else the `gemm` crate (which picks AVX-512 /
//! AVX2 / SSE kernels at run time). Everything else in the engine calls `matmul`, so a
//! different backend (CUDA later) replaces this file, not the model.

pub use super::matref::MatRef;

/// Whether a matmul may use the rayon pool itself. Kernels that already run inside a
/// parallel loop (per batch x head) pass `Serial` to avoid nested oversubscription.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Par {
    Serial,
    Rayon,
}

/// Which engine computes a product: `Auto` is the AVX2/FMA kernel of `gemm_avx2` where
/// the CPU has it, else the `gemm` crate; `GemmCrate` forces the crate (for comparisons).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Backend {
    Auto,
    GemmCrate,
}

/// `dst (+)= a * b` where `dst` is a dense row-major `[a.rows, b.cols]` matrix with row
/// stride `dst_row_stride`. `accumulate = false` overwrites `dst` (its previous contents
/// are never read, so it may hold garbage).
pub fn matmul(
    dst: &mut [f32],
    dst_row_stride: usize,
    a: MatRef,
    b: MatRef,
    accumulate: bool,
    par: Par,
) {
    matmul_with(Backend::Auto, dst, dst_row_stride, a, b, accumulate, par);
}

/// `COREFOCUS_GEMM=crate` in the environment makes `Auto` use the `gemm` crate, to
/// compare whole training steps on one binary.
fn gemm_crate_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var("COREFOCUS_GEMM").is_ok_and(|v| v == "crate"))
}

/// `matmul` on a chosen backend.
pub fn matmul_with(
    backend: Backend,
    dst: &mut [f32],
    dst_row_stride: usize,
    a: MatRef,
    b: MatRef,
    accumulate: bool,
    par: Par,
) {
    assert_eq!(a.cols, b.rows, "matmul: inner dimensions differ");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        (m - 1) * dst_row_stride + n <= dst.len(),
        "matmul: destination too small"
    );
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * dst_row_stride..r * dst_row_stride + n].fill(0.0);
            }
        }
        return;
    }
    a.check("lhs");
    b.check("rhs");
    let threads = match par {
        Par::Serial => 1,
        // Small products are faster on one thread than split across the pool.
        Par::Rayon if m * n * k < 64 * 64 * 64 => 1,
        Par::Rayon => rayon::current_num_threads(),
    };
    #[cfg(target_arch = "x86_64")]
    // Products only one or two register tiles wide (n <= 32, e.g. [512 x 512] x
    // [512 x 32]) stay on the crate: packing A costs more than it saves there.
    if backend == Backend::Auto && n > 32 && super::gemm_avx2::available() && !gemm_crate_forced() {
        super::gemm_avx2::gemm(dst, dst_row_stride, a, b, accumulate, threads);
        return;
    }
    let parallelism = match threads {
        1 => gemm::Parallelism::None,
        t => gemm::Parallelism::Rayon(t),
    };
    // SAFETY: all three views were bounds-checked above against their slices, `dst` is
    // borrowed mutably and so cannot alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_row_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: MatRef, b: MatRef) -> Vec<f32> {
        let mut out = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                let mut s = 0.0f64;
                for p in 0..a.cols {
                    s += a.data[i * a.row_stride + p * a.col_stride] as f64
                        * b.data[p * b.row_stride + j * b.col_stride] as f64;
                }
                out[i * b.cols + j] = s as f32;
            }
        }
        out
    }

    #[test]
    fn matches_naive_with_transposes_and_accumulation() {
        let mut rng = crate::rng::Rng::new(1);
        let (m, k, n) = (37, 70, 45);
        let a: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
        let bt: Vec<f32> = (0..n * k).map(|_| rng.normal() as f32).collect();
        let av = MatRef::new(&a, m, k);
        let bv = MatRef::new(&bt, n, k).t();
        let want = naive(av, bv);
        for par in [Par::Serial, Par::Rayon] {
            let mut got = vec![f32::NAN; m * n];
            matmul(&mut got, n, av, bv, false, par);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-4, "{g} vs {w}");
            }
            matmul(&mut got, n, av, bv, true, par);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - 2.0 * w).abs() < 2e-4);
            }
        }
    }
}
