//! A BLIS-style single-precision matrix product for x86-64: an AVX-512 micro-kernel where
//! the CPU has AVX-512F, else an AVX2/FMA one (AVX2 and FMA are the minimum).
//!
//! Blocking (after Goto & van de Geijn, as in BLIS's Haswell/Zen configuration):
//!
//! ```text
//! for jc in N by NC:            B block  [KC x NC]  packed, lives in L3
//!   for pc in K by KC:
//!     pack B[pc.., jc..] into NR-column panels
//!     for ic in M by MC:        A block  [MC x KC]  packed, lives in L2
//!       pack A[ic.., pc..] into MR-row panels
//!       for jr in NC by NR:     B panel  [KC x NR]  stays in L1 across the ir loop
//!         for ir in MC by MR:   micro-kernel: C[MR x NR] += A panel · B panel
//! ```
//!
//! The AVX2 micro-kernel keeps a 6 x 16 tile of C in 12 of the 16 ymm registers; each
//! step of k loads two vectors of B, broadcasts six elements of A and issues 12 FMAs, so
//! the two FMA pipes of a Zen 3 / Haswell core stay busy with only 8 loads per 12 FMAs.
//! The AVX-512 one keeps a 12 x 32 tile in 24 of the 32 zmm registers (two B vectors,
//! twelve broadcasts, 24 FMAs per step): twice the flops per instruction, which on a
//! core with two 512-bit FMA units (Xeon) is twice the peak; its edge tiles are stored
//! with lane masks.
//! Packing makes both operands contiguous in exactly the order the kernel reads them,
//! which absorbs any transpose or stride of the `MatRef` views, and pads the edge
//! panels with zeros so the kernel never branches on shape; only the store of an edge
//! tile is partial. (With weights packed beforehand and a request's few rows, both
//! kernels read A's rows in place instead, and do the products' other work themselves:
//! bias and GELU in registers, the next weight panel's prefetches: `TileExtras`.)
//! `accumulate = false` is handled by *storing* (not scaling) on the first K block, so
//! garbage (even NaN) in the destination is never read.
//!
//! Threads: the larger of M and N is shared out among the rayon threads, and every
//! thread packs its own blocks (the shared operand is packed once per thread). For the
//! model's shapes that redundant packing is a few percent at most. Rows are claimed in
//! chunks as threads come free (each thread then packs all of B's depth for a column
//! block at once), since two vCPUs of one VM can run unevenly; columns and
//! depth are split into one range per thread. Packing buffers are thread-local and
//! reused, so steady-state calls do not allocate.

use super::epilogue::Epilogue;
use super::fastmath::avx512::gelu_ps;
use super::matref::MatRef;
use super::workspace;
use rayon::prelude::*;
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Chunks of a product's rows (or weight panels) per thread, claimed as threads come
/// free, so that a thread on a slower core takes fewer.
const CLAIMS_PER_THREAD: usize = 4;
/// Largest packed A block that is kept whole for products with a prepacked B (a
/// request's rows; a quarter of a 2 MiB L2).
const SMALL_A_BLOCK_BYTES: usize = 512 * 1024;
/// The most rows of any register tile.
const MAX_MR: usize = 12;
/// Rows of the AVX2 register tile (A panel width) (the AVX-512 tile: [`Avx512`]).
const MR: usize = 6;
/// Columns of the AVX2 register tile (B panel width) in ymm vectors, and in floats.
const NV: usize = 2;
const NR: usize = 8 * NV;
/// Depth of a packed block: a B panel is `KC * NR * 4` = 24 KiB, in a 32 KiB L1d. The
/// model's 384-deep products then run in one block, so each C tile is stored once, not
/// stored, read back and stored again (256, i.e. two blocks of 192, was 1-14% slower by
/// median on those products on two Zen 3 threads: `gemm_tune`, docs/results.md, session
/// 30).
const KC: usize = 384;
/// Rows of a packed A block: `MC * KC * 4` = 216 KiB, inside a 512 KiB L2.
const MC: usize = 144;
/// Columns of a packed B block: `KC * NC * 4` = 2 MiB, in L3 (3072 was measurably
/// slower on bert-base's N = 3072 products).
const NC: usize = 2048;

/// Cache block sizes (upper bounds; the actual blocks are evened out per shape).
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct Blocking {
    pub kc: usize,
    pub mc: usize,
    pub nc: usize,
}

const BLOCKING: Blocking = Blocking {
    kc: KC,
    mc: MC,
    nc: NC,
};

/// Whether this CPU has AVX2 and FMA (detected once).
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// A micro-kernel: the instruction set it needs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Isa {
    Avx2,
    Avx512,
}

impl Isa {
    /// The widest micro-kernel this CPU runs; `COREFOCUS_GEMM_ISA=avx2` in the environment
    /// keeps the AVX2 one (to compare whole runs on one binary).
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            let forced_avx2 = std::env::var("COREFOCUS_GEMM_ISA").is_ok_and(|v| v == "avx2");
            if !forced_avx2 && is_x86_feature_detected!("avx512f") {
                Isa::Avx512
            } else {
                Isa::Avx2
            }
        })
    }

    /// Whether this CPU runs it.
    pub fn available(self) -> bool {
        match self {
            Isa::Avx2 => available(),
            Isa::Avx512 => available() && is_x86_feature_detected!("avx512f"),
        }
    }

    /// Cache blocks for the kernel. The AVX-512 kernel wants deeper, shorter blocks:
    /// fewer passes over the C tiles per product, and its 32-column B panel fills L1
    /// sooner (`examples/gemm_tune.rs` on the model's shapes: 125-152 GFLOP/s on one
    /// Xeon core at kc 768 / mc 48, 117-143 at the AVX2 kernel's then 256 / 144). With a
    /// 2 MiB L2, B blocks of at most 512 columns (1.5 MiB at kc 768) stay in it while
    /// every A block passes: `gemm_tune 5 768,48,2048 768,48,512` on that Xeon (two
    /// runs), N = 1536 products 199-207 -> 205-218 GFLOP/s on one thread, 403-411 ->
    /// 427-428 on two, bert-base's N = 3072 ones 204-206 -> 213-214 / 399-403 ->
    /// 416-422, the rest unchanged. Other CPUs keep 2048 columns until measured.
    /// Prepacked products with many rows take their panels in groups as wide.
    pub fn blocking(self) -> Blocking {
        match self {
            Isa::Avx2 => BLOCKING,
            Isa::Avx512 => Blocking {
                kc: 768,
                mc: 48,
                nc: if l2_bytes() >= 2 << 20 { 512 } else { NC },
            },
        }
    }

    /// The register tile's rows and columns.
    fn tile(self) -> (usize, usize) {
        match self {
            Isa::Avx2 => (Avx2::MR, Avx2::NR),
            Isa::Avx512 => (Avx512::MR, Avx512::NR),
        }
    }
}

/// `f::<K>(args)` with `K` the micro-kernel of `isa` (the one dispatch from a run-time
/// instruction set to the kernels' compile-time types).
macro_rules! with_kernel {
    ($isa:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $isa {
            Isa::Avx2 => $f::<Avx2>($($arg),*),
            Isa::Avx512 => $f::<Avx512>($($arg),*),
        }
    };
}

/// The size of the L2 cache of the CPU the process starts on (sysfs), 0 where unknown.
fn l2_bytes() -> usize {
    static L2: OnceLock<usize> = OnceLock::new();
    *L2.get_or_init(|| {
        let text = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cache/index2/size");
        text.ok()
            .and_then(|t| {
                let t = t.trim();
                let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit())?);
                let scale = match unit {
                    "K" => 1 << 10,
                    "M" => 1 << 20,
                    _ => return None,
                };
                Some(digits.parse::<usize>().ok()? * scale)
            })
            .unwrap_or(0)
    })
}

/// What a kernel does besides its tile's arithmetic: a product's [`Epilogue`] applied in
/// registers before the store (fused into the last k block: no second pass over the
/// tile), and cache lines of the next weight panel fetched into L2 while it computes.
#[derive(Clone, Copy)]
struct TileExtras {
    /// The bias of the tile's first column (its `nr` values are added), or null.
    bias: *const f32,
    gelu: bool,
    /// The first of `prefetch_lines` consecutive 64-byte lines to fetch into L2.
    prefetch: *const f32,
    prefetch_lines: usize,
}

impl TileExtras {
    const NONE: TileExtras = TileExtras {
        bias: std::ptr::null(),
        gelu: false,
        prefetch: std::ptr::null(),
        prefetch_lines: 0,
    };

    /// `epilogue` for the tile whose first column is `col0`.
    fn epilogue_at(epilogue: &Epilogue, col0: usize) -> TileExtras {
        TileExtras {
            bias: epilogue
                .bias
                .map_or(std::ptr::null(), |b| b[col0..].as_ptr()),
            gelu: epilogue.gelu,
            ..TileExtras::NONE
        }
    }
}

/// A register-tile kernel: `c (+)= a_panel · b_panel` for one `MR x NR` tile.
trait MicroKernel {
    const MR: usize;
    const NR: usize;
    /// Whether `tile` does its [`TileExtras`] itself (else they must be
    /// [`TileExtras::NONE`]: the caller prefetches before the call and applies the
    /// epilogue to the stored tile) and reads A in place (`lda > 0`; else A is packed).
    const TAKES_EXTRAS: bool;
    /// Whether products of many rows read A in place too (else only a request's few).
    const IN_PLACE_MANY_ROWS: bool;
    /// The fewest rows whose tile keeps the FMA units busy (fewer rows leave too few
    /// independent sums to cover the FMA latency): see [`row_tiles`].
    const FULL_RATE_ROWS: usize;
    /// Stores only the `mr x nr` corner that exists; `overwrite` stores without reading
    /// `c`; `extras` are done as well.
    ///
    /// # Safety
    /// The CPU has the kernel's instruction set; the panels hold `kc * MR` and `kc * NR`
    /// floats; the `mr x nr` tile at `c` (row stride `ldc`) is in bounds; a non-null
    /// `extras.bias` has `nr` values; the prefetched lines lie in one allocation.
    /// With `lda > 0`, `a_panel` is instead A's first row in place, row-major with row
    /// stride `lda`, `mr` rows of `kc` elements.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        kc: usize,
        a_panel: *const f32,
        lda: usize,
        b_panel: *const f32,
        c: *mut f32,
        ldc: usize,
        mr: usize,
        nr: usize,
        overwrite: bool,
        extras: TileExtras,
    );
}

struct Avx2;
struct Avx512;
const _: () = assert!(MAX_MR >= Avx2::MR && MAX_MR >= Avx512::MR);

impl MicroKernel for Avx2 {
    const MR: usize = MR;
    const NR: usize = NR;
    const TAKES_EXTRAS: bool = true;
    // Six rows read in place made the training products with row-major A slower on a
    // Zen 3 core than packing them (docs/results.md, session 27).
    const IN_PLACE_MANY_ROWS: bool = false;
    // Two rows are four sums of two vectors each, half of the eight that two FMA units
    // of latency 4 need.
    const FULL_RATE_ROWS: usize = 4;
    unsafe fn tile(
        kc: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        mr: usize,
        nr: usize,
        overwrite: bool,
        extras: TileExtras,
    ) {
        // A short tile (the rest of a block: 128 rows = 20 x 6 + 4 + 4 read in place,
        // 21 x 6 + 2 packed, see `row_tiles`) runs only the rows it has.
        let a = ASource { ptr: a, lda };
        match (mr, lda > 0) {
            (0..=2, false) => kernel_avx2::<2, false>(kc, a, b, c, ldc, mr, nr, overwrite, extras),
            (3..=4, false) => kernel_avx2::<4, false>(kc, a, b, c, ldc, mr, nr, overwrite, extras),
            (_, false) => kernel_avx2::<6, false>(kc, a, b, c, ldc, mr, nr, overwrite, extras),
            (0..=2, true) => kernel_avx2::<2, true>(kc, a, b, c, ldc, mr, nr, overwrite, extras),
            (3..=4, true) => kernel_avx2::<4, true>(kc, a, b, c, ldc, mr, nr, overwrite, extras),
            (_, true) => kernel_avx2::<6, true>(kc, a, b, c, ldc, mr, nr, overwrite, extras),
        }
    }
}

impl MicroKernel for Avx512 {
    const MR: usize = 12;
    const NR: usize = 32;
    const TAKES_EXTRAS: bool = true;
    const IN_PLACE_MANY_ROWS: bool = true;
    // Its shortest tile (4 rows of two vectors) has eight sums already.
    const FULL_RATE_ROWS: usize = 1;
    unsafe fn tile(
        kc: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        mr: usize,
        nr: usize,
        overwrite: bool,
        extras: TileExtras,
    ) {
        // A short last tile (128 rows = 10 x 12 + 8) runs only the rows it has: the
        // panel keeps its 12-row layout, the kernel reads the first 4 or 8.
        let a = ASource { ptr: a, lda };
        match (mr, lda > 0) {
            (0..=4, false) => {
                kernel_avx512::<4, false>(kc, a, b, c, ldc, mr, nr, overwrite, extras)
            }
            (5..=8, false) => {
                kernel_avx512::<8, false>(kc, a, b, c, ldc, mr, nr, overwrite, extras)
            }
            (_, false) => kernel_avx512::<12, false>(kc, a, b, c, ldc, mr, nr, overwrite, extras),
            (0..=4, true) => kernel_avx512::<4, true>(kc, a, b, c, ldc, mr, nr, overwrite, extras),
            (5..=8, true) => kernel_avx512::<8, true>(kc, a, b, c, ldc, mr, nr, overwrite, extras),
            (_, true) => kernel_avx512::<12, true>(kc, a, b, c, ldc, mr, nr, overwrite, extras),
        }
    }
}

/// A read-only operand: element (r, c) at `ptr + r * rs + c * cs`.
#[derive(Clone, Copy)]
struct Operand {
    ptr: *const f32,
    rs: usize,
    cs: usize,
}

impl Operand {
    /// The view starting at element (r, c).
    ///
    /// # Safety
    /// (r, c) must be inside the matrix the operand was made from.
    unsafe fn at(self, r: usize, c: usize) -> Self {
        Operand {
            ptr: self.ptr.add(r * self.rs + c * self.cs),
            ..self
        }
    }
}

/// The destination: element (r, c) at `ptr + r * ld + c` (also the bf16 and int8
/// products' raw destination).
#[derive(Clone, Copy)]
pub(crate) struct Dst {
    pub(crate) ptr: *mut f32,
    pub(crate) ld: usize,
}

// SAFETY: the pointers are only dereferenced inside the products' parallel regions, where
// the borrows they came from are alive, and the threads write disjoint parts of `Dst`.
unsafe impl Send for Operand {}
unsafe impl Sync for Operand {}
unsafe impl Send for Dst {}
unsafe impl Sync for Dst {}

fn check_view(m: &MatRef, what: &str) {
    let last = (m.rows - 1) * m.row_stride + (m.cols - 1) * m.col_stride;
    assert!(
        last < m.data.len(),
        "gemm: {what} view {}x{} exceeds its buffer",
        m.rows,
        m.cols
    );
}

/// What the bf16 and int8 products start with: the inner dimensions, the bias length and
/// the destination checked, and the answer when there is nothing to multiply
/// ([`trivial_product`]; true when the product is done); then the left operand's view.
pub(super) fn start_product(
    dst: &mut [f32],
    ldc: usize,
    a: &MatRef,
    (k, n): (usize, usize),
    accumulate: bool,
    epilogue: &Epilogue,
) -> bool {
    assert_eq!(a.cols, k, "gemm: inner dimensions differ");
    if let Some(bias) = epilogue.bias {
        assert_eq!(bias.len(), n, "gemm: bias length");
    }
    if trivial_product(dst, ldc, a.rows, n, k, accumulate) {
        epilogue.apply_all(dst, ldc, a.rows, n);
        return true;
    }
    a.check("lhs");
    false
}

/// Checks the destination of an `m x n` product and finishes the products with nothing
/// to multiply (an empty result, or k = 0: zeros unless accumulating); true if done.
pub(super) fn trivial_product(
    dst: &mut [f32],
    ldc: usize,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
) -> bool {
    if m == 0 || n == 0 {
        return true;
    }
    assert!(
        (m == 1 || ldc >= n) && (m - 1) * ldc + n <= dst.len(),
        "gemm: destination too small"
    );
    if k == 0 && !accumulate {
        for row in 0..m {
            dst[row * ldc..row * ldc + n].fill(0.0);
        }
    }
    k == 0
}

/// The raw destination and left operand of a product, `a` checked against its buffer.
fn destination_and_lhs(dst: &mut [f32], ldc: usize, a: &MatRef) -> (Dst, Operand) {
    check_view(a, "lhs");
    let c = Dst {
        ptr: dst.as_mut_ptr(),
        ld: ldc,
    };
    let a_op = Operand {
        ptr: a.data.as_ptr(),
        rs: a.row_stride,
        cs: a.col_stride,
    };
    (c, a_op)
}

/// `dst[i * ldc + j] (+)= Σ_p a[i, p] · b[p, j]`, with the work split over up to
/// `threads` rayon tasks (1 = the calling thread only). `accumulate = false` overwrites
/// without reading `dst`; `epilogue` is applied to each finished tile of the result (as
/// in [`gemm_packed`]). Panics if AVX2/FMA are missing or a view is out of range.
pub(crate) fn gemm(
    dst: &mut [f32],
    ldc: usize,
    a: MatRef,
    b: MatRef,
    accumulate: bool,
    threads: usize,
    epilogue: Epilogue,
) {
    let isa = Isa::best();
    gemm_with_blocking(
        isa,
        isa.blocking(),
        dst,
        ldc,
        a,
        b,
        accumulate,
        threads,
        epilogue,
    );
}

/// `gemm` with a chosen micro-kernel and block sizes (for tests and tuning experiments).
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn gemm_with_blocking(
    isa: Isa,
    blocking: Blocking,
    dst: &mut [f32],
    ldc: usize,
    a: MatRef,
    b: MatRef,
    accumulate: bool,
    threads: usize,
    epilogue: Epilogue,
) {
    assert!(
        blocking.kc > 0 && blocking.mc > 0 && blocking.nc > 0,
        "gemm: empty blocks"
    );
    assert!(isa.available(), "gemm: the CPU lacks {isa:?}");
    assert_eq!(a.cols, b.rows, "gemm: inner dimensions differ");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if let Some(bias) = epilogue.bias {
        assert_eq!(bias.len(), n, "gemm: bias length");
    }
    if trivial_product(dst, ldc, m, n, k, accumulate) {
        epilogue.apply_all(dst, ldc, m, n);
        return;
    }
    check_view(&b, "rhs");
    let (c, a_op) = destination_and_lhs(dst, ldc, &a);
    let b_op = Operand {
        ptr: b.data.as_ptr(),
        rs: b.row_stride,
        cs: b.col_stride,
    };
    // Split the dimension with more register tiles: the other operand is then the one
    // every thread packs for itself, and it is the smaller share of the work.
    let (mr, nr) = isa.tile();
    let split_rows = m.div_ceil(mr) >= n.div_ceil(nr);
    let (len, unit) = if split_rows { (m, mr) } else { (n, nr) };
    let tiles = len.div_ceil(unit);
    // Waking a pool thread costs tens of microseconds; give each part at least about
    // four million multiply-adds (~50 µs of work).
    let parts = threads.min(tiles).min((m * n * k) >> 22).max(1);
    if parts == 1 {
        // SAFETY: the kernel's instruction set is present (asserted); all of a, b and the
        // m x n result lie inside their slices (checked above), and `dst` is borrowed
        // mutably.
        unsafe {
            with_kernel!(
                isa,
                serial_with(blocking, c, a_op, b_op, m, n, k, accumulate, epilogue)
            )
        };
        return;
    }
    // A long inner dimension (a weight gradient's k is the batch's rows) is split instead
    // where that packs less: with rows (columns) split, every part packs all of B (A);
    // with k split, each packs its share of both, and the parts' sums are added after.
    let other = if split_rows { n } else { m };
    let packed_splitting_rows_or_columns = k * (len.div_ceil(parts) + other);
    let packed_splitting_depth = k.div_ceil(parts) * (m + n) + m * n;
    if k > m + n && packed_splitting_depth * 5 < packed_splitting_rows_or_columns * 4 {
        let depth = k.div_ceil(parts);
        // Part 0 sums into dst as asked; part t > 0 into partials[t - 1].
        let mut partials: Vec<Vec<f32>> = (1..parts).map(|_| workspace::take(m * n)).collect();
        let partial_dsts: Vec<Dst> = partials
            .iter_mut()
            .map(|p| Dst {
                ptr: p.as_mut_ptr(),
                ld: n,
            })
            .collect();
        (0..parts).into_par_iter().for_each(|t| {
            let (c, a_op, b_op) = (c, a_op, b_op);
            let k0 = t * depth;
            // parts <= m + n < k, so every part has a share of the depth.
            let kc = depth.min(k - k0);
            let (into, accumulate) = match t {
                0 => (c, accumulate),
                _ => (partial_dsts[t - 1], false),
            };
            // SAFETY: as above for the whole product; part t reads columns k0 .. k0 + kc
            // of a and the matching rows of b, and writes only its own destination (dst
            // for part 0, its partial buffer of m x n for the others).
            unsafe {
                with_kernel!(
                    isa,
                    serial_with(
                        blocking,
                        into,
                        a_op.at(0, k0),
                        b_op.at(k0, 0),
                        m,
                        n,
                        kc,
                        accumulate,
                        Epilogue::default(),
                    )
                )
            };
        });
        // The partial sums added row by row over the pool, in part order (each element
        // as `dst + partial 1 + partial 2 ...`, whatever the split of the rows).
        dst[..(m - 1) * ldc + n]
            .par_chunks_mut(ldc)
            .with_min_len(16)
            .enumerate()
            .for_each(|(r, out)| {
                for partial in &partials {
                    let row = &partial[r * n..(r + 1) * n];
                    out[..n].iter_mut().zip(row).for_each(|(d, &p)| *d += p);
                }
            });
        partials.into_iter().for_each(workspace::recycle);
        epilogue.apply_all(dst, ldc, m, n);
        return;
    }
    if split_rows {
        // Rows are claimed in chunks as threads come free, each thread packing all of B
        // once: two vCPUs of one VM can run unevenly, and with equal halves the call
        // waits on the slower one (docs/results.md, session 27).
        let chunk = tiles.div_ceil(parts * CLAIMS_PER_THREAD) * unit;
        let next = AtomicUsize::new(0);
        (0..parts).into_par_iter().for_each(|_| {
            let (c, a_op, b_op) = (c, a_op, b_op);
            // SAFETY: as above for the whole product; each chunk of rows is claimed by
            // one thread only, which writes just those rows of the result.
            unsafe {
                with_kernel!(
                    isa,
                    serial_claiming_rows_with(
                        blocking, c, a_op, b_op, m, n, k, accumulate, epilogue, chunk, &next,
                    )
                )
            };
        });
        return;
    }
    // Columns: static parts (each packs its own columns of B).
    let per_part = tiles.div_ceil(parts) * unit;
    (0..parts).into_par_iter().for_each(|t| {
        // Capture the whole wrappers (which are Sync), not their raw-pointer fields.
        let (c, a_op, b_op) = (c, a_op, b_op);
        let start = t * per_part;
        if start >= len {
            return;
        }
        let count = per_part.min(len - start);
        // SAFETY: as above for the whole product; part t covers columns start .. start +
        // count of the result, disjoint from every other part, and reads the matching
        // columns of b.
        unsafe {
            let c_part = Dst {
                ptr: c.ptr.add(start),
                ..c
            };
            with_kernel!(
                isa,
                serial_with(
                    blocking,
                    c_part,
                    a_op,
                    b_op.at(0, start),
                    m,
                    count,
                    k,
                    accumulate,
                    epilogue.from_column(start),
                )
            )
        }
    });
}

/// A right-hand operand packed once into the micro-kernel's B panels (for weights that
/// many products read unchanged: inference): `[k, n]`, cut into the kernel's kc blocks,
/// each block the `n.div_ceil(NR)` panels of `pack`. A product with it packs only A.
pub struct PackedB {
    isa: Isa,
    /// The cache blocks of the products with it (`isa.blocking()` but in tuning).
    blocking: Blocking,
    k: usize,
    n: usize,
    /// Depth of every kc block but maybe the last.
    kc_step: usize,
    /// `n` rounded up to whole panels.
    n_padded: usize,
    /// The panels, from `data[start]` on: 64-byte aligned there, so that no vector load
    /// of a panel straddles two cache lines (a large `Vec<f32>` starts 16 bytes past a
    /// line: loads of the unaligned panels made products 4-9% slower).
    data: Vec<f32>,
    start: usize,
}

impl PackedB {
    /// Packs `b` (`[k, n]`, any strides) for `isa`'s kernel.
    pub fn new(isa: Isa, b: MatRef) -> PackedB {
        PackedB::with_blocking(isa, isa.blocking(), b)
    }

    /// [`PackedB::new`] with other cache blocks (for block-size tuning).
    #[doc(hidden)]
    pub fn with_blocking(isa: Isa, blocking: Blocking, b: MatRef) -> PackedB {
        assert!(isa.available(), "pack: the CPU lacks {isa:?}");
        let (k, n) = (b.rows, b.cols);
        let (_, nr) = isa.tile();
        let kc_step = k.div_ceil(k.div_ceil(blocking.kc).max(1)).max(1);
        let n_padded = n.next_multiple_of(nr);
        let mut data = vec![0.0f32; k * n_padded + LINE_SLACK];
        let start = line_start(&data);
        if k > 0 && n > 0 {
            check_view(&b, "rhs");
            let op = Operand {
                ptr: b.data.as_ptr(),
                rs: b.row_stride,
                cs: b.col_stride,
            };
            for pc in (0..k).step_by(kc_step) {
                let kc = kc_step.min(k - pc);
                // SAFETY: AVX2 is present (`available` asserted); the source block lies in
                // `b` (checked); block pc starts at start + pc * n_padded and holds
                // n_padded * kc floats, inside `data`.
                unsafe {
                    let src = op.at(pc, 0);
                    pack(
                        nr,
                        data.as_mut_ptr().add(start + pc * n_padded),
                        src.ptr,
                        src.cs,
                        src.rs,
                        n,
                        kc,
                    );
                }
            }
        }
        PackedB {
            isa,
            blocking,
            k,
            n,
            kc_step,
            n_padded,
            data,
            start,
        }
    }

    pub fn rows(&self) -> usize {
        self.k
    }

    pub fn cols(&self) -> usize {
        self.n
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        4 * self.data.len()
    }
}

/// `dst[i * ldc + j] (+)= Σ_p a[i, p] · b[p, j]` with `b` packed beforehand, split over up
/// to `threads` rayon tasks as [`gemm`]; `epilogue` is applied to each finished tile of
/// the result (after the whole sum, accumulated or not).
pub fn gemm_packed(
    dst: &mut [f32],
    ldc: usize,
    a: MatRef,
    b: &PackedB,
    accumulate: bool,
    threads: usize,
    epilogue: Epilogue,
) {
    assert_eq!(a.cols, b.k, "gemm: inner dimensions differ");
    let (m, n, k) = (a.rows, b.n, b.k);
    if let Some(bias) = epilogue.bias {
        assert_eq!(bias.len(), n, "gemm: bias length");
    }
    if trivial_product(dst, ldc, m, n, k, accumulate) {
        epilogue.apply_all(dst, ldc, m, n);
        return;
    }
    let (c, a_op) = destination_and_lhs(dst, ldc, &a);
    let (mr, nr) = b.isa.tile();
    let panels = n.div_ceil(nr);
    let split_rows = m.div_ceil(mr) >= panels;
    let tiles = if split_rows { m.div_ceil(mr) } else { panels };
    let parts = threads.min(tiles).min((m * n * k) >> 22).max(1);
    // Threads claim chunks of tiles as they come free (the vCPUs run unevenly, see
    // `gemm`); on one thread, all at once.
    let per_chunk = if parts == 1 {
        tiles
    } else {
        tiles.div_ceil(parts * CLAIMS_PER_THREAD)
    };
    let chunks = tiles.div_ceil(per_chunk);
    let next = AtomicUsize::new(0);
    let run = |_: usize| loop {
        let (c, a_op) = (c, a_op);
        let chunk = next.fetch_add(1, Ordering::Relaxed);
        if chunk >= chunks {
            return;
        }
        let (t0, t1) = (chunk * per_chunk, ((chunk + 1) * per_chunk).min(tiles));
        // SAFETY: the kernel's instruction set is present (checked when `b` was packed);
        // a (m x k) and the m x n result are in bounds (checked above); each chunk is
        // claimed once, and its thread writes only its rows (or panels' columns).
        unsafe {
            if split_rows {
                let rows = (t0 * mr, (t1 * mr).min(m));
                let c_part = Dst {
                    ptr: c.ptr.add(rows.0 * c.ld),
                    ..c
                };
                let a_part = a_op.at(rows.0, 0);
                let m_part = rows.1 - rows.0;
                with_kernel!(
                    b.isa,
                    serial_packed_with(
                        c_part,
                        a_part,
                        b,
                        m_part,
                        (0, panels),
                        accumulate,
                        epilogue
                    )
                );
            } else {
                with_kernel!(
                    b.isa,
                    serial_packed_with(c, a_op, b, m, (t0, t1), accumulate, epilogue)
                );
            }
        }
    };
    if parts == 1 {
        run(0);
    } else {
        (0..parts).into_par_iter().for_each(run);
    }
}

/// The product with a packed B on the calling thread, for B's panels `panels.0 ..
/// panels.1` (their columns of `c`).
///
/// # Safety
/// As for [`serial_with`], with `K` the kernel `b` was packed for.
unsafe fn serial_packed_with<K: MicroKernel>(
    c: Dst,
    a: Operand,
    b: &PackedB,
    m: usize,
    panels: (usize, usize),
    accumulate: bool,
    epilogue: Epilogue,
) {
    let (k, n) = (b.k, b.n);
    // A few rows (a request's tokens): all of them in one A block, so that each weight
    // panel is read from memory once per product rather than once per `mc` rows.
    let mc_max = if m * b.kc_step * 4 <= SMALL_A_BLOCK_BYTES {
        m
    } else {
        b.blocking.mc
    };
    let mc_step = m.div_ceil(m.div_ceil(mc_max)).next_multiple_of(K::MR);
    // With many rows the weights are read once per A block and stay in L2 after the
    // first: fetching them ahead only costs instructions.
    let prefetch = mc_step >= m;
    // A's rows in place where the kernel can read them so (packing them was ~7% of a
    // 1 x 128 forward pass in perf's samples: every thread packed all of A).
    let in_place = a_in_place::<K>(a, prefetch);
    let pack_len = if in_place { 0 } else { mc_step * b.kc_step };
    // Many rows: B's panels in groups of the blocking's nc columns, each group's kc
    // block staying in L2 while every A block passes (as `serial_with`'s column blocks).
    // A request's rows: all panels at once, the weights streaming through with the
    // prefetches below.
    let group = if prefetch {
        (panels.1 - panels.0).max(1)
    } else {
        (b.blocking.nc / K::NR).max(1)
    };
    with_pack_space(pack_len, 0, |pack_a, _| {
        for pc in (0..k).step_by(b.kc_step) {
            let kc = b.kc_step.min(k - pc);
            let overwrite = pc == 0 && !accumulate;
            let last_block = pc + kc == k;
            let b_block = b.data.as_ptr().add(b.start + pc * b.n_padded);
            for g0 in (panels.0..panels.1).step_by(group) {
                let panels = (g0, (g0 + group).min(panels.1));
                for ic in (0..m).step_by(mc_step) {
                    let mc = mc_step.min(m - ic);
                    let a_block = a.at(ic, pc);
                    let fetch = PanelPrefetch::new(prefetch, kc, mc.div_ceil(K::MR), K::NR);
                    if panels.0 < panels.1 {
                        fetch.whole(b_block.add(panels.0 * K::NR * kc));
                    }
                    if !in_place {
                        pack(K::MR, pack_a, a_block.ptr, a_block.rs, a_block.cs, mc, kc);
                    }
                    for q in panels.0..panels.1 {
                        let jr = q * K::NR;
                        let b_panel = b_block.add(jr * kc);
                        let next_panel = (q + 1 < panels.1).then(|| b_panel.add(K::NR * kc));
                        let nr = K::NR.min(n - jr);
                        for (t, (ir, mr)) in row_tiles::<K>(mc, in_place).enumerate() {
                            let tile = c.ptr.add((ic + ir) * c.ld + jr);
                            finish_tile::<K>(
                                (kc, a_tile(in_place, a_block, pack_a, ir, kc), b_panel),
                                tile,
                                c.ld,
                                (mr, nr),
                                overwrite,
                                last_block.then_some((&epilogue, jr)),
                                fetch.share(next_panel, t),
                            );
                        }
                    }
                }
            }
        }
    });
}

/// Fetching weight panels into L2 ahead of the tiles that read them, for products of a
/// few rows. The weights come from L3 or memory (a model's are larger than L2): while one
/// panel's tiles are computed, the next panel is fetched, a share before each tile, and
/// the first panel whole while A is packed (at 1 x 128 the products waited on the
/// weights; measured in docs/results.md, 3 Dec evening). Disabled, it fetches nothing.
#[derive(Clone, Copy)]
struct PanelPrefetch {
    /// 64-byte lines of one `kc x NR` panel; 0 when disabled.
    panel_lines: usize,
    lines_per_tile: usize,
}

impl PanelPrefetch {
    fn new(enabled: bool, kc: usize, tiles: usize, nr: usize) -> Self {
        let panel_lines = if enabled { kc * nr / 16 } else { 0 };
        PanelPrefetch {
            panel_lines,
            lines_per_tile: panel_lines.div_ceil(tiles.max(1)),
        }
    }

    /// Fetches all of the panel at `panel`.
    ///
    /// # Safety
    /// `panel` points at a packed panel of this product's weights (prefetches do not
    /// fault, but the address arithmetic must stay inside the allocation).
    unsafe fn whole(&self, panel: *const f32) {
        for line in 0..self.panel_lines {
            _mm_prefetch::<_MM_HINT_T1>(panel.add(16 * line) as *const i8);
        }
    }

    /// Tile `t`'s share of the next panel, as [`finish_tile`] takes it: `(first, lines)`,
    /// or no lines when there is no next panel or prefetching is off.
    ///
    /// # Safety
    /// As for [`PanelPrefetch::whole`], for `next`.
    unsafe fn share(&self, next: Option<*const f32>, t: usize) -> (*const f32, usize) {
        match next {
            Some(next) if self.panel_lines > 0 => {
                let first = (t * self.lines_per_tile).min(self.panel_lines);
                let lines = self.lines_per_tile.min(self.panel_lines - first);
                (next.add(16 * first), lines)
            }
            _ => (std::ptr::null(), 0),
        }
    }
}

/// The left operand of a tile: a packed panel (`lda` = 0) or A's rows in place.
#[derive(Clone, Copy)]
struct ASource {
    ptr: *const f32,
    lda: usize,
}

impl ASource {
    /// With A in place (`ROW_MAJOR_A`), one pointer per row of the tile (rows past `mr`
    /// repeat the last one; their results are never stored), which the kernel advances by
    /// one shared offset; else the panel's pointer in every slot (unused).
    ///
    /// # Safety
    /// With A in place, its first `mr` rows lie `lda` apart in one allocation.
    #[inline(always)]
    unsafe fn rows<const ROWS: usize, const ROW_MAJOR_A: bool>(
        self,
        mr: usize,
    ) -> [*const f32; ROWS] {
        std::array::from_fn(|r| {
            if ROW_MAJOR_A {
                self.ptr.add(r.min(mr.max(1) - 1) * self.lda)
            } else {
                self.ptr
            }
        })
    }
}

/// Fetches the `mr x nr` C tile at `c` (row stride `ldc`) into L1: the kernel touches it
/// only after its loop, so its (often L3 or memory) latency then overlaps the arithmetic
/// instead of following it.
///
/// # Safety
/// The tile lies in one allocation (prefetches do not fault, the address arithmetic must
/// stay inside it).
#[inline(always)]
unsafe fn fetch_tile(c: *mut f32, ldc: usize, mr: usize, nr: usize) {
    for r in 0..mr {
        let row = c.add(r * ldc);
        _mm_prefetch::<_MM_HINT_T0>(row as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(row.add(nr - 1) as *const i8);
    }
}

/// One register tile of the product, `(kc, a_panel, b_panel)`, into the `mr x nr` tile at
/// `c`; with `epilogue` (the product's, and the tile's first column), after the last k
/// block, the epilogue too; and `prefetch` (`(first, lines)`: 64-byte lines of a weight
/// panel to fetch into L2). Both happen inside the kernel where it takes them (spread
/// over its k loop, in registers before the store), else around the call.
///
/// # Safety
/// As for [`MicroKernel::tile`]; nothing else accesses the tile during the call.
unsafe fn finish_tile<K: MicroKernel>(
    (kc, (a_panel, lda), b_panel): (usize, (*const f32, usize), *const f32),
    c: *mut f32,
    ldc: usize,
    (mr, nr): (usize, usize),
    overwrite: bool,
    epilogue: Option<(&Epilogue, usize)>,
    (prefetch, prefetch_lines): (*const f32, usize),
) {
    let epilogue = epilogue.filter(|(e, _)| !e.is_none());
    let extras = if K::TAKES_EXTRAS {
        let with_epilogue = match epilogue {
            Some((e, col0)) => TileExtras::epilogue_at(e, col0),
            None => TileExtras::NONE,
        };
        TileExtras {
            prefetch,
            prefetch_lines,
            ..with_epilogue
        }
    } else {
        for line in 0..prefetch_lines {
            _mm_prefetch::<_MM_HINT_T1>(prefetch.add(16 * line) as *const i8);
        }
        TileExtras::NONE
    };
    K::tile(kc, a_panel, lda, b_panel, c, ldc, mr, nr, overwrite, extras);
    if let Some((e, col0)) = epilogue.filter(|_| !K::TAKES_EXTRAS) {
        // SAFETY: the tile's rows lie in the result (the kernel just wrote them), do not
        // overlap, and no other thread touches them.
        let mut rows: [&mut [f32]; MAX_MR] = std::array::from_fn(|r| {
            if r < mr {
                std::slice::from_raw_parts_mut(c.add(r * ldc), nr)
            } else {
                &mut []
            }
        });
        e.apply_rows(&mut rows[..mr], col0);
    }
}

thread_local! {
    static PACK_A: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static PACK_B: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A 64-byte aligned pointer to `len` floats of `buf`, growing it as needed.
fn aligned_space(buf: &mut Vec<f32>, len: usize) -> *mut f32 {
    if buf.len() < len + LINE_SLACK {
        buf.resize(len + LINE_SLACK, 0.0);
    }
    let start = line_start(buf);
    buf[start..].as_mut_ptr()
}

/// Floats of slack a buffer needs so that [`line_start`] leaves `len` usable floats.
const LINE_SLACK: usize = 16;

/// The index of `buf`'s first element on a 64-byte boundary (at most `LINE_SLACK`).
fn line_start(buf: &[f32]) -> usize {
    buf.as_ptr().align_offset(64).min(LINE_SLACK)
}

/// Runs `f` with packing space for A and B from this thread's reusable buffers (or
/// fresh ones in the unexpected case that they are already in use).
fn with_pack_space<R>(a_len: usize, b_len: usize, f: impl FnOnce(*mut f32, *mut f32) -> R) -> R {
    PACK_A.with(|pa| {
        PACK_B.with(|pb| match (pa.try_borrow_mut(), pb.try_borrow_mut()) {
            (Ok(mut pa), Ok(mut pb)) => {
                f(aligned_space(&mut pa, a_len), aligned_space(&mut pb, b_len))
            }
            _ => {
                let (mut pa, mut pb) = (Vec::new(), Vec::new());
                f(aligned_space(&mut pa, a_len), aligned_space(&mut pb, b_len))
            }
        })
    })
}

/// The blocked product on the calling thread (see the module comment).
///
/// # Safety
/// AVX2, FMA and `K`'s instruction set are available; a (m x k), b (k x n) and c (m x n)
/// are in bounds, and nothing else accesses the m x n part of c during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn serial_with<K: MicroKernel>(
    blocking: Blocking,
    c: Dst,
    a: Operand,
    b: Operand,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    epilogue: Epilogue,
) {
    // Even block sizes: K = 500 runs as 2 x 250 rather than 384 + 116.
    let kc_step = k.div_ceil(k.div_ceil(blocking.kc));
    let mc_step = m.div_ceil(m.div_ceil(blocking.mc)).next_multiple_of(K::MR);
    let nc_step = n.div_ceil(n.div_ceil(blocking.nc)).next_multiple_of(K::NR);
    let in_place = a_in_place::<K>(a, false);
    let pack_a_len = if in_place { 0 } else { mc_step * kc_step };
    with_pack_space(pack_a_len, nc_step * kc_step, |pack_a, pack_b| {
        for jc in (0..n).step_by(nc_step) {
            let nc = nc_step.min(n - jc);
            for pc in (0..k).step_by(kc_step) {
                let kc = kc_step.min(k - pc);
                let overwrite = pc == 0 && !accumulate;
                let last_block = pc + kc == k;
                let b_block = b.at(pc, jc);
                // B's panels run along its columns: panel width index = column (cs),
                // depth index = row (rs).
                pack(K::NR, pack_b, b_block.ptr, b_block.cs, b_block.rs, nc, kc);
                let a_blocks = ABlocks {
                    a,
                    pack: pack_a,
                    in_place,
                    mc_step,
                };
                let b_block = (pack_b as *const f32, jc, nc);
                let epilogue = last_block.then_some(&epilogue);
                block_tiles::<K>(c, a_blocks, (0, m), (pc, kc), b_block, overwrite, epilogue);
            }
        }
    });
}

/// Where a product's A blocks come from: A's rows in place, or packed into `pack` one
/// block of `mc_step` rows at a time.
#[derive(Clone, Copy)]
struct ABlocks {
    a: Operand,
    pack: *mut f32,
    in_place: bool,
    mc_step: usize,
}

/// One packed B block (`b_block`: its panels, first column `jc`, `nc` wide, depth rows
/// `pc .. pc + kc`) times A's rows `rows.0 .. rows.1`, A block by A block, into the
/// result's tiles; `epilogue` where this is the last depth block.
///
/// # Safety
/// As for [`serial_with`], for those rows and columns; `b_block` holds the block packed.
unsafe fn block_tiles<K: MicroKernel>(
    c: Dst,
    a_blocks: ABlocks,
    rows: (usize, usize),
    (pc, kc): (usize, usize),
    (b_block, jc, nc): (*const f32, usize, usize),
    overwrite: bool,
    epilogue: Option<&Epilogue>,
) {
    let ABlocks {
        a,
        pack: pack_a,
        in_place,
        mc_step,
    } = a_blocks;
    for ic in (rows.0..rows.1).step_by(mc_step) {
        let mc = mc_step.min(rows.1 - ic);
        let a_block = a.at(ic, pc);
        if !in_place {
            pack(K::MR, pack_a, a_block.ptr, a_block.rs, a_block.cs, mc, kc);
        }
        for jr in (0..nc).step_by(K::NR) {
            let b_panel = b_block.add(jr * kc);
            let nr = K::NR.min(nc - jr);
            for (ir, mr) in row_tiles::<K>(mc, in_place) {
                let tile = c.ptr.add((ic + ir) * c.ld + jc + jr);
                finish_tile::<K>(
                    (kc, a_tile(in_place, a_block, pack_a, ir, kc), b_panel),
                    tile,
                    c.ld,
                    (mr, nr),
                    overwrite,
                    epilogue.map(|e| (e, jc + jr)),
                    (std::ptr::null(), 0),
                );
            }
        }
    }
}

/// [`serial_with`] for the rows claimed from `next` in chunks of `chunk` rows, until none are
/// left (other threads claim the rest): each column block of B is packed once, all its
/// depth, and then serves every chunk this thread claims in it. The sums run over the
/// depth in the same order as [`serial_with`]'s, so the result does not depend on who
/// claimed what.
///
/// # Safety
/// As for [`serial_with`] for the whole m x n product, with no other thread writing the
/// rows this one claims (claims are handed out once each) and `K`'s instruction set
/// available.
#[allow(clippy::too_many_arguments)]
unsafe fn serial_claiming_rows_with<K: MicroKernel>(
    blocking: Blocking,
    c: Dst,
    a: Operand,
    b: Operand,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    epilogue: Epilogue,
    chunk: usize,
    next: &AtomicUsize,
) {
    let kc_step = k.div_ceil(k.div_ceil(blocking.kc));
    let mc_step = m.div_ceil(m.div_ceil(blocking.mc)).next_multiple_of(K::MR);
    let nc_step = n.div_ceil(n.div_ceil(blocking.nc)).next_multiple_of(K::NR);
    let depth_blocks = k.div_ceil(kc_step);
    let in_place = a_in_place::<K>(a, false);
    let pack_a_len = if in_place { 0 } else { mc_step * kc_step };
    let chunks_per_block = m.div_ceil(chunk);
    let claims = n.div_ceil(nc_step) * chunks_per_block;
    with_pack_space(
        pack_a_len,
        depth_blocks * nc_step * kc_step,
        |pack_a, pack_b| {
            let mut packed_block = None;
            loop {
                let claim = next.fetch_add(1, Ordering::Relaxed);
                if claim >= claims {
                    return;
                }
                let jc = claim / chunks_per_block * nc_step;
                let nc = nc_step.min(n - jc);
                if packed_block != Some(jc) {
                    // B's panels run along its columns: panel width index = column (cs),
                    // depth index = row (rs); depth block d at d * nc_step * kc_step.
                    for (d, pc) in (0..k).step_by(kc_step).enumerate() {
                        let b_block = b.at(pc, jc);
                        let kc = kc_step.min(k - pc);
                        let dst = pack_b.add(d * nc_step * kc_step);
                        pack(K::NR, dst, b_block.ptr, b_block.cs, b_block.rs, nc, kc);
                    }
                    packed_block = Some(jc);
                }
                let rows0 = claim % chunks_per_block * chunk;
                let rows = (rows0, (rows0 + chunk).min(m));
                let a_blocks = ABlocks {
                    a,
                    pack: pack_a,
                    in_place,
                    mc_step,
                };
                for (d, pc) in (0..k).step_by(kc_step).enumerate() {
                    let kc = kc_step.min(k - pc);
                    let overwrite = pc == 0 && !accumulate;
                    let last_block = pc + kc == k;
                    let b_block = (pack_b.add(d * nc_step * kc_step) as *const f32, jc, nc);
                    let epilogue = last_block.then_some(&epilogue);
                    block_tiles::<K>(c, a_blocks, rows, (pc, kc), b_block, overwrite, epilogue);
                }
            }
        },
    );
}

/// Whether the micro-kernel reads A's rows where they are instead of a packed panel:
/// where A is row-major. That saves the packing pass over A (docs/results.md, session
/// 12); the tile's rows are then separate streams, fine for a request's few rows
/// (`few_rows`) and, with the AVX-512 kernel, otherwise too unless they are 4 KiB apart
/// (rows a multiple of 1024 floats, e.g. 3072-wide FFN activations), where all of a
/// tile's would fall into one L1 set.
fn a_in_place<K: MicroKernel>(a: Operand, few_rows: bool) -> bool {
    K::TAKES_EXTRAS
        && a.cs == 1
        && a.rs > 0
        && (few_rows || (K::IN_PLACE_MANY_ROWS && !a.rs.is_multiple_of(1024)))
}

/// The left operand of the tile whose first row is row `ir` of the A block `a_block`:
/// A's rows in place (with their row stride), or the block's packed panel (`kc` deep).
///
/// # Safety
/// `pack_a` holds the block packed when `in_place` is false; row `ir` lies in the block.
unsafe fn a_tile(
    in_place: bool,
    a_block: Operand,
    pack_a: *const f32,
    ir: usize,
    kc: usize,
) -> (*const f32, usize) {
    if in_place {
        (a_block.ptr.add(ir * a_block.rs), a_block.rs)
    } else {
        (pack_a.add(ir * kc), 0)
    }
}

/// The register tiles `(first row, rows)` of an A block of `mc` rows: `K::MR` rows
/// each, and the rest; but where the rest would be fewer than `K::FULL_RATE_ROWS` and A
/// is read in place (packed panels start every `MR` rows), the last full tile and the
/// rest are split into two tiles of at least those rows (128 = 20 x 6 + 4 + 4 rather
/// than 21 x 6 + 2, whose 2-row tile has half the independent sums the FMA units need).
fn row_tiles<K: MicroKernel>(mc: usize, in_place: bool) -> impl Iterator<Item = (usize, usize)> {
    let (mr, min_rows) = (K::MR, K::FULL_RATE_ROWS);
    let rest = mc % mr;
    let split = in_place && rest > 0 && rest < min_rows && mc > mr;
    let full = mc / mr - usize::from(split);
    let tail = if split {
        [mr + rest - min_rows, min_rows]
    } else {
        [rest, 0]
    };
    let tail = tail
        .into_iter()
        .filter(|&rows| rows > 0)
        .scan(full * mr, |first, rows| {
            let tile = (*first, rows);
            *first += rows;
            Some(tile)
        });
    (0..full).map(move |t| (t * mr, mr)).chain(tail)
}

/// Packs a `width x depth` slice of an operand into panels of `w_panel` (`W`) along the
/// width: panel q holds, for each p < depth, elements (q*W .. q*W+W, p) contiguously, with
/// zeros past `width`. Element (w, p) of the source is at `src + w * w_stride + p *
/// d_stride` (for A: w = row, p = column; for B: w = column, p = row).
///
/// # Safety
/// AVX2 is available; the source elements are in bounds and `dst` has room for
/// `width.div_ceil(W) * W * depth` floats.
#[target_feature(enable = "avx2")]
unsafe fn pack(
    w_panel: usize,
    dst: *mut f32,
    src: *const f32,
    w_stride: usize,
    d_stride: usize,
    width: usize,
    depth: usize,
) {
    #[allow(non_snake_case)]
    let W = w_panel;
    // Full panels whose W elements are contiguous at each depth: copied a source row at a
    // time (see `copy_rows`), for the kernels' panel widths; any other width (none is
    // used) goes through the element loop below.
    let full = width / W;
    let full = match (w_stride, W) {
        (1, 32) => copy_rows::<32>(dst, src, d_stride, depth, full),
        (1, 16) => copy_rows::<16>(dst, src, d_stride, depth, full),
        (1, 12) => copy_rows::<12>(dst, src, d_stride, depth, full),
        (1, 6) => copy_rows::<6>(dst, src, d_stride, depth, full),
        _ => 0,
    };
    for q in full..width.div_ceil(W) {
        let valid = W.min(width - q * W);
        let src = src.add(q * W * w_stride);
        let dst = dst.add(q * W * depth);
        if valid == W && d_stride == 1 {
            pack_transposing(W, dst, src, w_stride, depth);
        } else {
            for p in 0..depth {
                for w in 0..W {
                    *dst.add(p * W + w) = if w < valid {
                        *src.add(w * w_stride + p * d_stride)
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// The first `panels` panels of `pack` where each depth step's `W * panels` elements are
/// contiguous (`w_stride` 1: a row-major B, or a column-major A such as a weight
/// gradient's transposed output gradient): each source run is read once, in order, and
/// dealt out to the panels. Two things make this cheaper than a copy per panel and step
/// (packing fell from 7.8% to 4.5% of a MiniLM training step's `perf` samples): with `W`
/// a constant each piece is a few inlined vector moves (a copy whose length is known
/// only at run time calls libc's `memcpy`, a call that costs about as much as 12-32
/// floats' copy), and the source is read along its rows, which the hardware prefetchers
/// follow, rather than a panel's width at a time down them.
///
/// # Safety
/// As for `pack`: the source's `depth` runs of `W * panels` floats, `d_stride` apart,
/// are in bounds, and `dst` has room for `W * panels * depth`. Returns `panels`.
#[inline(always)]
unsafe fn copy_rows<const W: usize>(
    dst: *mut f32,
    src: *const f32,
    d_stride: usize,
    depth: usize,
    panels: usize,
) -> usize {
    for p in 0..depth {
        let from = src.add(p * d_stride);
        let to = dst.add(p * W);
        for q in 0..panels {
            std::ptr::copy_nonoverlapping(from.add(q * W), to.add(q * W * depth), W);
        }
    }
    panels
}

/// One full panel whose source runs are contiguous along the depth (a row-major A or a
/// transposed B): 8 x 8 blocks are transposed in registers.
///
/// # Safety
/// As for `pack`, with `W` full rows of `depth` contiguous elements at `src`.
#[target_feature(enable = "avx2")]
#[allow(non_snake_case)]
unsafe fn pack_transposing(
    W: usize,
    dst: *mut f32,
    src: *const f32,
    w_stride: usize,
    depth: usize,
) {
    let full = depth / 8 * 8;
    for p0 in (0..full).step_by(8) {
        for w0 in (0..W).step_by(8) {
            let rows = 8.min(W - w0);
            let mut r = [_mm256_setzero_ps(); 8];
            for (i, v) in r.iter_mut().enumerate().take(rows) {
                *v = _mm256_loadu_ps(src.add((w0 + i) * w_stride + p0));
            }
            let t = transpose_8x8(r);
            for (i, &v) in t.iter().enumerate() {
                let out = dst.add((p0 + i) * W + w0);
                if rows == 8 {
                    _mm256_storeu_ps(out, v);
                } else if rows == 4 {
                    // The AVX-512 panel's last 4 of its 12 rows.
                    _mm_storeu_ps(out, _mm256_castps256_ps128(v));
                } else {
                    // A panel narrower than 8 (W = MR): only the first `rows` lanes.
                    let mut lanes = [0.0f32; 8];
                    _mm256_storeu_ps(lanes.as_mut_ptr(), v);
                    std::ptr::copy_nonoverlapping(lanes.as_ptr(), out, rows);
                }
            }
        }
    }
    for p in full..depth {
        for w in 0..W {
            *dst.add(p * W + w) = *src.add(w * w_stride + p);
        }
    }
}

/// Rows of an 8 x 8 block to its columns.
#[target_feature(enable = "avx2")]
pub(crate) fn transpose_8x8(r: [__m256; 8]) -> [__m256; 8] {
    // Interleave pairs of rows, then pairs of pairs, then swap 128-bit halves.
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ]
}

/// The AVX2 register tile ([`Avx2`]: 6 x 16): `c (+)= a · b_panel` over `kc` steps,
/// storing only the `mr x nr` corner that exists (`overwrite` stores without reading
/// `c`). `ROWS` (2, 4 or 6) of the tile's rows are computed; A is the packed panel or,
/// with `ROW_MAJOR_A`, its rows in place. The [`TileExtras`] are done here as in
/// [`kernel_avx512`]: the epilogue in registers before the store, the prefetches spread
/// over the k loop.
///
/// # Safety
/// AVX2/FMA available; the panels hold `kc * 6` and `kc * 16` floats (in place: `mr`
/// rows of `kc` floats `lda` apart); `mr <= ROWS`; the `mr x nr` tile at `c` (row stride
/// `ldc`) is in bounds; a non-null `extras.bias` has `nr` values.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_avx2<const ROWS: usize, const ROW_MAJOR_A: bool>(
    kc: usize,
    a_source: ASource,
    b_panel: *const f32,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    overwrite: bool,
    extras: TileExtras,
) {
    const { assert!(ROWS <= MR) };
    debug_assert!(mr <= ROWS);
    fetch_tile(c, ldc, mr, nr);
    let mut acc = [[_mm256_setzero_ps(); NV]; ROWS];
    let (mut a, mut b) = (a_source.ptr, b_panel);
    let a_rows = a_source.rows::<ROWS, ROW_MAJOR_A>(mr);
    let mut a_off = 0usize;
    // One step of k: NV vectors of B, ROWS broadcasts of A, ROWS * NV FMAs.
    macro_rules! step {
        ($p:expr) => {
            let mut bv = [_mm256_setzero_ps(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm256_loadu_ps(b.add($p * NR + 8 * v));
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let av = if ROW_MAJOR_A {
                    _mm256_broadcast_ss(&*a_rows[r].add(a_off + $p))
                } else {
                    _mm256_broadcast_ss(&*a.add($p * MR + r))
                };
                for (x, &bv) in acc_r.iter_mut().zip(&bv) {
                    *x = _mm256_fmadd_ps(av, bv, *x);
                }
            }
        };
    }
    let (mut line, mut lines_left) = (extras.prefetch, extras.prefetch_lines);
    for _ in 0..kc / 4 {
        if lines_left > 0 {
            _mm_prefetch::<_MM_HINT_T1>(line as *const i8);
            line = line.wrapping_add(16);
            lines_left -= 1;
        }
        step!(0);
        step!(1);
        step!(2);
        step!(3);
        if ROW_MAJOR_A {
            a_off += 4;
        } else {
            a = a.add(4 * MR);
        }
        b = b.add(4 * NR);
    }
    for _ in 0..kc % 4 {
        step!(0);
        if ROW_MAJOR_A {
            a_off += 1;
        } else {
            a = a.add(MR);
        }
        b = b.add(NR);
    }
    for _ in 0..lines_left {
        _mm_prefetch::<_MM_HINT_T1>(line as *const i8);
        line = line.wrapping_add(16);
    }
    // The same operations, in the same order, as the stored tile followed by
    // `Epilogue::apply_rows`: (c + a·b) + bias, then GELU.
    let finish = |x: __m256, out: *const f32, bias: *const f32| {
        let mut x = if overwrite {
            x
        } else {
            _mm256_add_ps(_mm256_loadu_ps(out), x)
        };
        if !extras.bias.is_null() {
            x = _mm256_add_ps(x, _mm256_loadu_ps(bias));
        }
        if extras.gelu {
            x = crate::kernels::fastmath::avx2::gelu_ps(x);
        }
        x
    };
    if nr == NR {
        for (r, acc_r) in acc.iter().enumerate().take(mr) {
            let row = c.add(r * ldc);
            for (v, &x) in acc_r.iter().enumerate() {
                let out = row.add(8 * v);
                _mm256_storeu_ps(out, finish(x, out, extras.bias.wrapping_add(8 * v)));
            }
        }
    } else {
        // An edge tile: through a full tile on the stack (its missing columns padded with
        // zeros, the bias's too), of which the existing corner is copied out.
        let mut tile = [0.0f32; MR * NR];
        let mut bias = [0.0f32; NR];
        if !extras.bias.is_null() {
            std::ptr::copy_nonoverlapping(extras.bias, bias.as_mut_ptr(), nr);
        }
        for (r, acc_r) in acc.iter().enumerate().take(mr) {
            let row = tile.as_mut_ptr().add(r * NR);
            if !overwrite {
                std::ptr::copy_nonoverlapping(c.add(r * ldc), row, nr);
            }
            for (v, &x) in acc_r.iter().enumerate() {
                let out = row.add(8 * v);
                _mm256_storeu_ps(out, finish(x, out, bias.as_ptr().add(8 * v)));
            }
            std::ptr::copy_nonoverlapping(row, c.add(r * ldc), nr);
        }
    }
}

/// The AVX-512 register tile ([`Avx512`]: 12 x 32): as [`kernel`], with 512-bit vectors
/// and masked stores for edge tiles; `ROWS` (4, 8 or 12) of the panel's 12 rows are
/// computed. The epilogue (bias, GELU) is applied in registers before the store: as a
/// separate pass over the stored tile (re-read, a call per tile) it cost about a fifth of
/// the time of the feed-forward block's first product (4096 x 1536 x 384 with bias and
/// GELU, 268 against 334 GFLOP/s without them on 2 Xeon threads at 3e6f854; a one-off
/// timing, not kept).
///
/// # Safety
/// AVX-512F available; the panels hold `kc * 12` and `kc * 32` floats; `mr <= ROWS`; the
/// `mr x nr` tile at `c` (row stride `ldc`) is in bounds; a non-null `extras.bias` has
/// `nr` values.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_avx512<const ROWS: usize, const ROW_MAJOR_A: bool>(
    kc: usize,
    a_source: ASource,
    b_panel: *const f32,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    overwrite: bool,
    extras: TileExtras,
) {
    const MR: usize = Avx512::MR;
    const NR: usize = Avx512::NR;
    const NV: usize = NR / 16;
    const { assert!(ROWS <= MR) };
    debug_assert!(mr <= ROWS);
    fetch_tile(c, ldc, mr, nr);
    let mut acc = [[_mm512_setzero_ps(); NV]; ROWS];
    let (mut a, mut b) = (a_source.ptr, b_panel);
    let a_rows = a_source.rows::<ROWS, ROW_MAJOR_A>(mr);
    let mut a_off = 0usize;
    macro_rules! step {
        ($p:expr) => {
            let mut bv = [_mm512_setzero_ps(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(b.add($p * NR + 16 * v));
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let av = if ROW_MAJOR_A {
                    _mm512_set1_ps(*a_rows[r].add(a_off + $p))
                } else {
                    _mm512_set1_ps(*a.add($p * MR + r))
                };
                for (x, &bv) in acc_r.iter_mut().zip(&bv) {
                    *x = _mm512_fmadd_ps(av, bv, *x);
                }
            }
        };
    }
    // One prefetch every four steps of k: issued all at once before the tile, the
    // lines of the next weight panel filled the L2 miss queue and the core waited (6%
    // of the samples of a 1 x 128 forward pass, under perf, sat on those instructions).
    let (mut line, mut lines_left) = (extras.prefetch, extras.prefetch_lines);
    for _ in 0..kc / 4 {
        if lines_left > 0 {
            _mm_prefetch::<_MM_HINT_T1>(line as *const i8);
            line = line.wrapping_add(16);
            lines_left -= 1;
        }
        step!(0);
        step!(1);
        step!(2);
        step!(3);
        if ROW_MAJOR_A {
            a_off += 4;
        } else {
            a = a.add(4 * MR);
        }
        b = b.add(4 * NR);
    }
    for _ in 0..kc % 4 {
        step!(0);
        if ROW_MAJOR_A {
            a_off += 1;
        } else {
            a = a.add(MR);
        }
        b = b.add(NR);
    }
    for _ in 0..lines_left {
        _mm_prefetch::<_MM_HINT_T1>(line as *const i8);
        line = line.wrapping_add(16);
    }
    // Lane masks of the columns that exist in each vector of the tile.
    let mut masks = [0u16; NV];
    for (v, m) in masks.iter_mut().enumerate() {
        let cols = nr.saturating_sub(16 * v).min(16);
        *m = ((1u32 << cols) - 1) as u16;
    }
    let mut bias = [_mm512_setzero_ps(); NV];
    if !extras.bias.is_null() {
        for (v, b) in bias.iter_mut().enumerate() {
            *b = _mm512_maskz_loadu_ps(masks[v], extras.bias.add(16 * v));
        }
    }
    for (r, acc_r) in acc.iter().enumerate().take(mr) {
        let row = c.add(r * ldc);
        for (v, &x) in acc_r.iter().enumerate() {
            let (out, m) = (row.add(16 * v), masks[v]);
            if m == 0 {
                continue;
            }
            // The same operations, in the same order, as the stored tile followed by
            // `Epilogue::apply_rows`: (c + a·b) + bias, then GELU.
            let mut x = if overwrite {
                x
            } else if m == u16::MAX {
                _mm512_add_ps(_mm512_loadu_ps(out), x)
            } else {
                _mm512_add_ps(_mm512_maskz_loadu_ps(m, out), x)
            };
            if !extras.bias.is_null() {
                x = _mm512_add_ps(x, bias[v]);
            }
            if extras.gelu {
                x = gelu_ps(x);
            }
            if m == u16::MAX {
                _mm512_storeu_ps(out, x);
            } else {
                _mm512_mask_storeu_ps(out, m, x);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::{naive_matmul as naive, random_vec};
    use crate::rng::Rng;

    /// Layouts of a `rows x cols` operand: 0 row-major, 1 transposed storage, 2 rows
    /// of a wider buffer at an offset (a head slice).
    fn view(data: &[f32], rows: usize, cols: usize, layout: usize) -> MatRef<'_> {
        match layout {
            0 => MatRef::new(data, rows, cols),
            1 => MatRef::new(data, cols, rows).t(),
            _ => MatRef::strided(&data[3..], rows, cols, cols + 5),
        }
    }

    fn buffer(seed: u64, rows: usize, cols: usize) -> Vec<f32> {
        // Large enough for every layout above (the strided one needs the most).
        random_vec(seed, 3 + rows * (cols + 5), 1.0)
    }

    /// The micro-kernels this CPU runs (every test runs each).
    fn isas() -> Vec<Isa> {
        [Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|i| i.available())
            .collect()
    }

    fn check(m: usize, n: usize, k: usize, a_layout: usize, b_layout: usize, threads: usize) {
        for isa in isas() {
            check_isa(isa, m, n, k, a_layout, b_layout, threads);
        }
    }

    fn check_isa(
        isa: Isa,
        m: usize,
        n: usize,
        k: usize,
        a_layout: usize,
        b_layout: usize,
        threads: usize,
    ) {
        let a_buf = buffer((m * 1000 + k) as u64, m, k);
        let b_buf = buffer((k * 1000 + n) as u64 + 7, k, n);
        let a = view(&a_buf, m, k, a_layout);
        let b = view(&b_buf, k, n, b_layout);
        let want = naive(a, b);
        // A destination with a wider row stride, so writes past column n would show.
        let ldc = n + 3;
        let mut got = vec![f32::NAN; m * ldc];
        gemm_with_blocking(
            isa,
            isa.blocking(),
            &mut got,
            ldc,
            a,
            b,
            false,
            threads,
            Epilogue::default(),
        );
        let tol = |w: f64| 1e-5 * (k as f64).sqrt() * (1.0 + w.abs());
        let case =
            format!("{isa:?} m {m} n {n} k {k} layouts {a_layout}/{b_layout} threads {threads}");
        for i in 0..m {
            for j in 0..n {
                let (g, w) = (got[i * ldc + j] as f64, want[i * n + j]);
                assert!((g - w).abs() <= tol(w), "{case}: ({i}, {j}) {g} vs {w}");
            }
            for j in n..ldc {
                assert!(got[i * ldc + j].is_nan(), "{case}: wrote past the row");
            }
        }
        // The same product with B packed beforehand, its panels on cache lines.
        let packed = PackedB::new(isa, b);
        assert_eq!(
            packed.data[packed.start..].as_ptr() as usize % 64,
            0,
            "{case}"
        );
        let mut got_packed = vec![f32::NAN; m * ldc];
        gemm_packed(
            &mut got_packed,
            ldc,
            a,
            &packed,
            false,
            threads,
            Epilogue::default(),
        );
        for i in 0..m {
            for j in 0..n {
                let (g, w) = (got_packed[i * ldc + j] as f64, want[i * n + j]);
                assert!(
                    (g - w).abs() <= tol(w),
                    "{case} packed: ({i}, {j}) {g} vs {w}"
                );
            }
            for j in n..ldc {
                assert!(
                    got_packed[i * ldc + j].is_nan(),
                    "{case} packed: wrote past the row"
                );
            }
        }
        // Bias and GELU applied to each finished tile (only after the last k block).
        let bias: Vec<f32> = (0..n).map(|j| 0.05 * j as f32 - 1.0).collect();
        let fused = Epilogue {
            bias: Some(&bias),
            gelu: true,
        };
        let mut got_fused = vec![f32::NAN; m * ldc];
        gemm_packed(&mut got_fused, ldc, a, &packed, false, threads, fused);
        for i in 0..m {
            let mut row: Vec<f32> = (0..n).map(|j| (want[i * n + j] as f32) + bias[j]).collect();
            crate::kernels::activations::gelu_in_place(&mut row);
            for j in 0..n {
                let (g, w) = (got_fused[i * ldc + j] as f64, row[j] as f64);
                assert!(
                    (g - w).abs() <= tol(w) + 1e-6,
                    "{case} fused: ({i}, {j}) {g} vs {w}"
                );
            }
        }
        gemm_packed(
            &mut got_packed,
            ldc,
            a,
            &packed,
            true,
            threads,
            Epilogue::default(),
        );
        for i in 0..m {
            for j in 0..n {
                let (g, w) = (got_packed[i * ldc + j] as f64, 2.0 * want[i * n + j]);
                assert!(
                    (g - w).abs() <= 2.0 * tol(w),
                    "{case} packed accumulate: {g} vs {w}"
                );
            }
        }
        // Accumulating adds a second product on top.
        gemm_with_blocking(
            isa,
            isa.blocking(),
            &mut got,
            ldc,
            a,
            b,
            true,
            threads,
            Epilogue::default(),
        );
        for i in 0..m {
            for j in 0..n {
                let (g, w) = (got[i * ldc + j] as f64, 2.0 * want[i * n + j]);
                assert!(
                    (g - w).abs() <= 2.0 * tol(w),
                    "{case} accumulate: {g} vs {w}"
                );
            }
        }
    }

    /// The tiles cover the block's rows once, in order; a short rest borrows rows from
    /// the last full tile only where A is read in place and the kernel wants it.
    #[test]
    fn row_tiles_cover_every_row_once() {
        fn tiles<K: MicroKernel>(mc: usize, in_place: bool) -> Vec<(usize, usize)> {
            let tiles: Vec<_> = row_tiles::<K>(mc, in_place).collect();
            let mut next = 0;
            for &(first, rows) in &tiles {
                assert!(
                    first == next && rows > 0 && rows <= K::MR,
                    "{mc}: {tiles:?}"
                );
                next += rows;
            }
            assert_eq!(next, mc, "{mc}: {tiles:?}");
            tiles
        }
        for mc in 0..100 {
            for in_place in [false, true] {
                tiles::<Avx2>(mc, in_place);
                let wide = tiles::<Avx512>(mc, in_place);
                assert!(
                    wide.iter().all(|&(f, _)| f % Avx512::MR == 0),
                    "{mc}: {wide:?}"
                );
            }
        }
        assert_eq!(tiles::<Avx2>(128, true)[20..], [(120, 4), (124, 4)]);
        assert_eq!(tiles::<Avx2>(127, true)[20..], [(120, 3), (123, 4)]);
        assert_eq!(tiles::<Avx2>(128, false)[21..], [(126, 2)]);
        assert_eq!(tiles::<Avx2>(2, true), [(0, 2)]);
        assert_eq!(tiles::<Avx2>(10, true), [(0, 6), (6, 4)]);
    }

    #[test]
    fn edge_shapes_match_naive_in_every_layout() {
        // Around both kernels' tiles (AVX2 6 x 16, AVX-512 12 x 32).
        let dims = [1, MR - 1, MR, MR + 1, 12, 13, NR - 1, NR + 1, 31, 33];
        // (and the AVX-512 kernel's short-tile boundaries: last tiles of 4, 8 and 9 rows)
        for &m in dims.iter().chain(&[4, 8, 20, 21]) {
            for &n in &dims {
                for k in [1, 7, 8, 17] {
                    for layouts in [(0, 0), (1, 1), (2, 1), (1, 2)] {
                        check(m, n, k, layouts.0, layouts.1, 1);
                    }
                }
            }
        }
    }

    #[test]
    fn fused_epilogue_equals_a_pass_over_the_stored_tiles() {
        // The AVX-512 kernel applies bias and GELU in registers: bit for bit what
        // `Epilogue::apply_all` does to the stored product, with edge tiles (rows 4, 8,
        // 12; masked columns), two k blocks (only the last one applies it) and
        // accumulation onto the destination.
        for isa in isas() {
            let kc = isa.blocking().kc;
            // (12 x 2048 x 512: two threads split the columns, each with its part of the bias)
            let shapes = [
                (29, 45, 2 * kc + 3),
                (12, 32, 7),
                (5, 17, kc),
                (128, 384, 384),
                (12, 2048, 512),
            ];
            for (m, n, k) in shapes {
                let (a_buf, b_buf) = (buffer(1, m, k), buffer(2, k, n));
                let (a, b) = (view(&a_buf, m, k, 0), view(&b_buf, k, n, 1));
                let packed = PackedB::new(isa, b);
                let bias: Vec<f32> = (0..n).map(|j| 0.07 * j as f32 - 1.5).collect();
                for gelu in [false, true] {
                    for accumulate in [false, true] {
                        let epilogue = Epilogue {
                            bias: Some(&bias),
                            gelu,
                        };
                        let start = random_vec(3, m * n, 1.0);
                        let mut fused = start.clone();
                        gemm_packed(&mut fused, n, a, &packed, accumulate, 2, epilogue);
                        let mut separate = start.clone();
                        gemm_packed(
                            &mut separate,
                            n,
                            a,
                            &packed,
                            accumulate,
                            2,
                            Epilogue::default(),
                        );
                        epilogue.apply_all(&mut separate, n, m, n);
                        // The same through the product that packs B itself.
                        let mut unpacked = start.clone();
                        gemm_with_blocking(
                            isa,
                            isa.blocking(),
                            &mut unpacked,
                            n,
                            a,
                            b,
                            accumulate,
                            2,
                            epilogue,
                        );
                        let mut unpacked_separate = start.clone();
                        let none = Epilogue::default();
                        let blocking = isa.blocking();
                        let dst = &mut unpacked_separate;
                        gemm_with_blocking(isa, blocking, dst, n, a, b, accumulate, 2, none);
                        epilogue.apply_all(&mut unpacked_separate, n, m, n);
                        let pairs = [(&fused, &separate), (&unpacked, &unpacked_separate)];
                        for (path, (got, want)) in pairs.iter().enumerate() {
                            for (i, (f, s)) in got.iter().zip(want.iter()).enumerate() {
                                assert!(
                                    f.to_bits() == s.to_bits(),
                                    "{isa:?} {m}x{n}x{k} path {path} gelu {gelu} \
                                     accumulate {accumulate} [{i}]: {f} vs {s}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn block_boundaries_match_naive() {
        // Per kernel: K around one and two kc blocks, M around mc, N across panels.
        for isa in isas() {
            let Blocking { kc, mc, .. } = isa.blocking();
            let (mr, nr) = isa.tile();
            for k in [kc - 1, kc, kc + 1, 2 * kc + 3] {
                for layouts in [(0, 1), (1, 0), (2, 2)] {
                    check_isa(isa, mc + 1, 2 * nr + 5, k, layouts.0, layouts.1, 1);
                }
            }
            check_isa(isa, 2 * mc + mr + 1, nr, 40, 0, 1, 1);
        }
    }

    #[test]
    fn random_shapes_and_thread_splits_match_naive() {
        let mut rng = Rng::new(11);
        for _ in 0..40 {
            let m = 1 + (rng.uniform() * 200.0) as usize;
            let n = 1 + (rng.uniform() * 200.0) as usize;
            let k = 1 + (rng.uniform() * 300.0) as usize;
            let layouts = (
                (rng.uniform() * 3.0) as usize,
                (rng.uniform() * 3.0) as usize,
            );
            let threads = 1 + (rng.uniform() * 3.0) as usize;
            check(m, n, k, layouts.0, layouts.1, threads);
        }
        // Both split directions with the rayon pool.
        check(300, 20, 50, 0, 1, 2);
        check(20, 300, 50, 1, 0, 2);
        // A long inner dimension: split in depth (a weight gradient's shape; enough
        // work for two and three parts), three parts leaving a shorter last share, the
        // transposed A of a gradient.
        check(64, 48, 4099, 1, 0, 2);
        check(64, 48, 4099, 0, 0, 3);
    }

    #[test]
    fn depth_split_accumulates_and_applies_the_epilogue_once() {
        // Work for two parts, which pack less splitting k than splitting m.
        let (m, n, k) = (64, 48, 5000);
        let a_buf = buffer(5, m, k);
        let b_buf = buffer(6, k, n);
        let (a, b) = (view(&a_buf, m, k, 1), view(&b_buf, k, n, 0));
        let want = naive(a, b);
        let bias: Vec<f32> = (0..n).map(|j| 0.5 - 0.01 * j as f32).collect();
        let ldc = n + 2;
        let start: Vec<f32> = (0..m * ldc).map(|i| (i % 7) as f32 - 3.0).collect();
        let mut got = start.clone();
        let epilogue = Epilogue {
            bias: Some(&bias),
            gelu: false,
        };
        gemm(&mut got, ldc, a, b, true, 2, epilogue);
        for i in 0..m {
            for j in 0..n {
                let w = start[i * ldc + j] as f64 + want[i * n + j] + bias[j] as f64;
                let g = got[i * ldc + j] as f64;
                assert!(
                    (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "({i}, {j}) {g} vs {w}"
                );
            }
            assert_eq!(
                got[i * ldc + n..(i + 1) * ldc],
                start[i * ldc + n..(i + 1) * ldc]
            );
        }
    }

    #[test]
    fn large_nc_split_and_empty_depth() {
        check(7, NC + NR + 3, 5, 0, 0, 1);
        // Enough rows for several A blocks (also per thread: 1000 x 200 floats is more
        // than a request's A block) and columns for several B blocks (the prepacked
        // product's panel groups too), on one thread and two.
        check(2000, 1100, 200, 0, 1, 1);
        check(2000, 1100, 200, 0, 0, 2);
        let a = MatRef::new(&[], 3, 0);
        let b = MatRef::new(&[], 0, 4);
        let mut out = vec![f32::NAN; 12];
        gemm(&mut out, 4, a, b, false, 2, Epilogue::default());
        assert!(out.iter().all(|&x| x == 0.0));
    }
}
