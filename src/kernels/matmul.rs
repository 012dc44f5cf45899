//! The one seam to the matrix-multiply engine: our AVX2/FMA kernel (`gemm_x86`) where
//! the CPU has it, else the `gemm` crate (which picks AVX-512 /
//! AVX2 / SSE kernels at run time). Everything else in the engine calls `matmul`, so a
//! different backend (CUDA later) replaces this file, not the model.

pub use super::epilogue::Epilogue;
pub use super::matref::MatRef;

/// Whether a matmul may use the rayon pool itself. Kernels that already run inside a
/// parallel loop (per batch x head) pass `Serial` to avoid nested oversubscription.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Par {
    Serial,
    Rayon,
}

/// Which engine computes a product: `Auto` is the AVX2/FMA kernel of `gemm_x86` where
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
    matmul_with(
        Backend::Auto,
        dst,
        dst_row_stride,
        a,
        b,
        accumulate,
        par,
        Epilogue::default(),
    );
}

/// `COREFOCUS_GEMM=crate` in the environment makes `Auto` use the `gemm` crate, to
/// compare whole training steps on one binary.
fn gemm_crate_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var("COREFOCUS_GEMM").is_ok_and(|v| v == "crate"))
}

/// `matmul` on a chosen backend, then `epilogue` (bias, GELU) on the result: fused into
/// the product's last pass over each tile where our kernel runs.
#[allow(clippy::too_many_arguments)]
pub fn matmul_with(
    backend: Backend,
    dst: &mut [f32],
    dst_row_stride: usize,
    a: MatRef,
    b: MatRef,
    accumulate: bool,
    par: Par,
    epilogue: Epilogue,
) {
    assert_eq!(a.cols, b.rows, "matmul: inner dimensions differ");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if let Some(bias) = epilogue.bias {
        assert_eq!(bias.len(), n, "matmul: bias length");
    }
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
        epilogue.apply_all(dst, dst_row_stride, m, n);
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
    if backend == Backend::Auto && n > 32 && super::gemm_x86::available() && !gemm_crate_forced() {
        super::gemm_x86::gemm(dst, dst_row_stride, a, b, accumulate, threads, epilogue);
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
    epilogue.apply_all(dst, dst_row_stride, m, n);
}

/// The arithmetic of products with prepared weights ([`PackedRhs`]): `F32` everywhere,
/// `Bf16` (operands rounded to bf16, f32 accumulation) on CPUs with AMX or AVX512-BF16, or
/// `Int8` (weights per column and activations per row quantised to int8, exact integer
/// sums) on CPUs with AVX512-VNNI; the last two for inference.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    Int8,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }

    /// An error unless this CPU computes products at this precision.
    pub fn check_available(self) -> anyhow::Result<()> {
        #[cfg(target_arch = "x86_64")]
        let (amx, vnni) = (super::gemm_bf16::available(), super::gemm_int8::available());
        #[cfg(not(target_arch = "x86_64"))]
        let (amx, vnni) = (false, false);
        anyhow::ensure!(
            self != Precision::Int8 || vnni,
            "--precision int8 needs AVX512-VNNI (Intel Cascade Lake or newer Xeons, AMD Zen 4 or \
             newer); this CPU offers none: use --precision f32"
        );
        anyhow::ensure!(
            self != Precision::Bf16 || amx,
            "--precision bf16 needs Intel AMX (Sapphire Rapids or newer Xeons, Linux 5.16 or \
             newer) or AVX512-BF16 (AMD Zen 4 or newer, Intel Cooper Lake); this CPU or kernel \
             offers neither: use --precision f32"
        );
        Ok(())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "int8" => Ok(Precision::Int8),
            other => Err(format!("unknown precision `{other}` (f32, bf16 or int8)")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A right-hand operand prepared once for many products: the weights of a model that
/// only infers, packed in the GEMM's panel layout so that no product re-packs them (the
/// packing reads the whole weight matrix, strided, on every call otherwise).
pub struct PackedRhs {
    inner: Packed,
}

enum Packed {
    #[cfg(target_arch = "x86_64")]
    X86(super::gemm_x86::PackedB),
    /// Rounded to bf16 for the AMX / AVX512-BF16 kernel.
    #[cfg(target_arch = "x86_64")]
    Amx(super::gemm_bf16::PackedBf16),
    /// Quantised to int8 per column for the AVX512-VNNI kernel.
    #[cfg(target_arch = "x86_64")]
    Int8(super::gemm_int8::PackedI8),
    /// Where our kernel does not run: a dense row-major copy for `matmul`.
    Dense {
        data: Vec<f32>,
        rows: usize,
        cols: usize,
    },
}

impl PackedRhs {
    /// Prepares `b` (`[k, n]`, any strides) for [`matmul_packed`].
    pub fn new(b: MatRef) -> PackedRhs {
        Self::with_precision(b, Precision::F32)
    }

    /// [`Self::new`] at `precision` (bf16, int8: panics unless
    /// [`Precision::check_available`]).
    pub fn with_precision(b: MatRef, precision: Precision) -> PackedRhs {
        b.check("rhs");
        #[cfg(target_arch = "x86_64")]
        match precision {
            Precision::Int8 => {
                let inner = Packed::Int8(super::gemm_int8::PackedI8::new(b));
                return PackedRhs { inner };
            }
            Precision::Bf16 => {
                let inner = Packed::Amx(super::gemm_bf16::PackedBf16::new(b));
                return PackedRhs { inner };
            }
            Precision::F32 => {}
        }
        #[cfg(not(target_arch = "x86_64"))]
        assert!(
            precision == Precision::F32,
            "{precision} products need AVX512-VNNI (int8) or AMX / AVX512-BF16 (bf16)"
        );
        #[cfg(target_arch = "x86_64")]
        if b.cols > 32 && super::gemm_x86::available() && !gemm_crate_forced() {
            let isa = super::gemm_x86::Isa::best();
            return PackedRhs {
                inner: Packed::X86(super::gemm_x86::PackedB::new(isa, b)),
            };
        }
        let mut data = Vec::with_capacity(b.rows * b.cols);
        for r in 0..b.rows {
            data.extend((0..b.cols).map(|c| b.data[r * b.row_stride + c * b.col_stride]));
        }
        PackedRhs {
            inner: Packed::Dense {
                data,
                rows: b.rows,
                cols: b.cols,
            },
        }
    }

    /// The precision its products run at.
    pub fn precision(&self) -> Precision {
        match &self.inner {
            #[cfg(target_arch = "x86_64")]
            Packed::Amx(_) => Precision::Bf16,
            #[cfg(target_arch = "x86_64")]
            Packed::Int8(_) => Precision::Int8,
            _ => Precision::F32,
        }
    }

    /// `[k, n]`.
    pub fn shape(&self) -> (usize, usize) {
        match &self.inner {
            #[cfg(target_arch = "x86_64")]
            Packed::X86(p) => (p.rows(), p.cols()),
            #[cfg(target_arch = "x86_64")]
            Packed::Amx(p) => (p.rows(), p.cols()),
            #[cfg(target_arch = "x86_64")]
            Packed::Int8(p) => (p.rows(), p.cols()),
            Packed::Dense { rows, cols, .. } => (*rows, *cols),
        }
    }
}

/// `matmul` with a right-hand operand prepared by [`PackedRhs::new`], then `epilogue` on
/// the result.
pub fn matmul_packed(
    dst: &mut [f32],
    dst_row_stride: usize,
    a: MatRef,
    b: &PackedRhs,
    accumulate: bool,
    par: Par,
    epilogue: Epilogue,
) {
    let (k, n) = b.shape();
    assert_eq!(a.cols, k, "matmul: inner dimensions differ");
    let threads = match par {
        Par::Serial => 1,
        Par::Rayon if a.rows * n * k < 64 * 64 * 64 => 1,
        Par::Rayon => rayon::current_num_threads(),
    };
    match &b.inner {
        #[cfg(target_arch = "x86_64")]
        Packed::X86(p) => {
            super::gemm_x86::gemm_packed(dst, dst_row_stride, a, p, accumulate, threads, epilogue)
        }
        #[cfg(target_arch = "x86_64")]
        Packed::Amx(p) => {
            super::gemm_bf16::gemm_bf16(dst, dst_row_stride, a, p, accumulate, threads, epilogue)
        }
        #[cfg(target_arch = "x86_64")]
        Packed::Int8(p) => {
            super::gemm_int8::gemm_int8(dst, dst_row_stride, a, p, accumulate, threads, epilogue)
        }
        Packed::Dense { data, rows, cols } => {
            let b = MatRef::new(data, *rows, *cols);
            matmul(dst, dst_row_stride, a, b, accumulate, par);
            epilogue.apply_all(dst, dst_row_stride, a.rows, *cols);
        }
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
            // Packed once, then multiplied (n > 32: our kernel where the CPU runs it).
            let packed = PackedRhs::new(bv);
            let mut got = vec![f32::NAN; m * n];
            matmul_packed(&mut got, n, av, &packed, false, par, Epilogue::default());
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-4, "packed: {g} vs {w}");
            }
            // With a bias and GELU fused in: as a separate bias pass and GELU.
            let bias: Vec<f32> = (0..n).map(|j| 0.1 * j as f32 - 2.0).collect();
            let fused = Epilogue {
                bias: Some(&bias),
                gelu: true,
            };
            matmul_packed(&mut got, n, av, &packed, false, par, fused);
            let mut pre: Vec<f32> = want
                .iter()
                .enumerate()
                .map(|(i, w)| w + bias[i % n])
                .collect();
            let mut act = vec![0.0; pre.len()];
            crate::kernels::activations::gelu_forward(&pre, &mut act);
            for (g, w) in got.iter().zip(&act) {
                assert!((g - w).abs() < 1e-4, "fused: {g} vs {w}");
            }
            // Where our kernel does not run (n <= 32: a dense copy), the same.
            let narrow = PackedRhs::new(MatRef::new(&bt[..20 * k], 20, k).t());
            let mut got = vec![f32::NAN; m * 20];
            let narrow_bias = &bias[..20];
            let fused = Epilogue {
                bias: Some(narrow_bias),
                gelu: true,
            };
            matmul_packed(&mut got, 20, av, &narrow, false, par, fused);
            pre = naive(av, MatRef::new(&bt[..20 * k], 20, k).t());
            pre.iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x += narrow_bias[i % 20]);
            let mut act = vec![0.0; pre.len()];
            crate::kernels::activations::gelu_forward(&pre, &mut act);
            for (g, w) in got.iter().zip(&act) {
                assert!((g - w).abs() < 1e-4, "dense fused: {g} vs {w}");
            }
        }
    }
}
