//! A BLIS-style single-precision matrix product for x86-64 with AVX2 and FMA.
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
//! The micro-kernel keeps a 6 x 16 tile of C in 12 of the 16 ymm registers; each step
//! of k loads two vectors of B, broadcasts six elements of A and issues 12 FMAs, so the
//! two FMA pipes of a Zen 3 / Haswell core stay busy with only 8 loads per 12 FMAs.
//! Packing makes both operands contiguous in exactly the order the kernel reads them,
//! which absorbs any transpose or stride of the `MatRef` views, and pads the edge
//! panels with zeros so the kernel never branches on shape; only the store of an edge
//! tile is partial. `accumulate = false` is handled by *storing* (not scaling) on the
//! first K block, so garbage (even NaN) in the destination is never read.
//!
//! Threads: the larger of M and N is cut into one contiguous range per rayon thread,
//! and every thread packs its own blocks (the shared operand is packed once per
//! thread). For the model's shapes that redundant packing is a few percent at most,
//! and the threads never wait on each other. Packing buffers are thread-local and
//! reused, so steady-state calls do not allocate.

use super::matref::MatRef;
use rayon::prelude::*;
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::sync::OnceLock;

/// Rows of the register tile (A panel width).
const MR: usize = 6;
/// Columns of the register tile (B panel width) in ymm vectors, and in floats.
const NV: usize = 2;
const NR: usize = 8 * NV;
/// Depth of a packed block: a B panel is `KC * NR * 4` = 16 KiB, half of L1d.
const KC: usize = 256;
/// Rows of a packed A block: `MC * KC * 4` = 144 KiB, well inside a 512 KiB L2.
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

/// The destination: element (r, c) at `ptr + r * ld + c`.
#[derive(Clone, Copy)]
struct Dst {
    ptr: *mut f32,
    ld: usize,
}

// SAFETY: the pointers are only dereferenced inside `gemm`'s parallel region, where the
// borrows they came from are alive, and the threads write disjoint parts of `Dst`.
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

/// `dst[i * ldc + j] (+)= Σ_p a[i, p] · b[p, j]`, with the work split over up to
/// `threads` rayon tasks (1 = the calling thread only). `accumulate = false` overwrites
/// without reading `dst`. Panics if AVX2/FMA are missing or a view is out of range.
pub(crate) fn gemm(
    dst: &mut [f32],
    ldc: usize,
    a: MatRef,
    b: MatRef,
    accumulate: bool,
    threads: usize,
) {
    gemm_with_blocking(BLOCKING, dst, ldc, a, b, accumulate, threads);
}

/// `gemm` with chosen block sizes (for tuning experiments).
#[doc(hidden)]
pub fn gemm_with_blocking(
    blocking: Blocking,
    dst: &mut [f32],
    ldc: usize,
    a: MatRef,
    b: MatRef,
    accumulate: bool,
    threads: usize,
) {
    assert!(
        blocking.kc > 0 && blocking.mc > 0 && blocking.nc > 0,
        "gemm: empty blocks"
    );
    assert!(available(), "gemm: AVX2 and FMA are required");
    assert_eq!(a.cols, b.rows, "gemm: inner dimensions differ");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        (m == 1 || ldc >= n) && (m - 1) * ldc + n <= dst.len(),
        "gemm: destination too small"
    );
    if k == 0 {
        if !accumulate {
            for row in 0..m {
                dst[row * ldc..row * ldc + n].fill(0.0);
            }
        }
        return;
    }
    check_view(&a, "lhs");
    check_view(&b, "rhs");
    let c = Dst {
        ptr: dst.as_mut_ptr(),
        ld: ldc,
    };
    let a_op = Operand {
        ptr: a.data.as_ptr(),
        rs: a.row_stride,
        cs: a.col_stride,
    };
    let b_op = Operand {
        ptr: b.data.as_ptr(),
        rs: b.row_stride,
        cs: b.col_stride,
    };
    // Split the dimension with more register tiles: the other operand is then the one
    // every thread packs for itself, and it is the smaller share of the work.
    let split_rows = m.div_ceil(MR) >= n.div_ceil(NR);
    let (len, unit) = if split_rows { (m, MR) } else { (n, NR) };
    let tiles = len.div_ceil(unit);
    // Waking a pool thread costs tens of microseconds; give each part at least about
    // four million multiply-adds (~50 µs of work).
    let parts = threads.min(tiles).min((m * n * k) >> 22).max(1);
    if parts == 1 {
        // SAFETY: AVX2/FMA are present (asserted); all of a, b and the m x n result lie
        // inside their slices (checked above), and `dst` is borrowed mutably.
        unsafe { serial(blocking, c, a_op, b_op, m, n, k, accumulate) };
        return;
    }
    let per_part = tiles.div_ceil(parts) * unit;
    (0..parts).into_par_iter().for_each(|t| {
        // Capture the whole wrappers (which are Sync), not their raw-pointer fields.
        let (c, a_op, b_op) = (c, a_op, b_op);
        let start = t * per_part;
        if start >= len {
            return;
        }
        let count = per_part.min(len - start);
        // SAFETY: as above for the whole product; part t covers rows (or columns)
        // start .. start + count of the result, disjoint from every other part, and
        // reads the matching rows of a (or columns of b).
        unsafe {
            if split_rows {
                let c_part = Dst {
                    ptr: c.ptr.add(start * c.ld),
                    ..c
                };
                serial(
                    blocking,
                    c_part,
                    a_op.at(start, 0),
                    b_op,
                    count,
                    n,
                    k,
                    accumulate,
                );
            } else {
                let c_part = Dst {
                    ptr: c.ptr.add(start),
                    ..c
                };
                serial(
                    blocking,
                    c_part,
                    a_op,
                    b_op.at(0, start),
                    m,
                    count,
                    k,
                    accumulate,
                );
            }
        }
    });
}

thread_local! {
    static PACK_A: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static PACK_B: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A 64-byte aligned pointer to `len` floats of `buf`, growing it as needed.
fn aligned_space(buf: &mut Vec<f32>, len: usize) -> *mut f32 {
    // 16 floats of slack for the alignment shift.
    if buf.len() < len + 16 {
        buf.resize(len + 16, 0.0);
    }
    let offset = buf.as_ptr().align_offset(64).min(16);
    buf[offset..].as_mut_ptr()
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
/// AVX2 and FMA are available; a (m x k), b (k x n) and c (m x n) are in bounds, and
/// nothing else accesses the m x n part of c during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn serial(
    blocking: Blocking,
    c: Dst,
    a: Operand,
    b: Operand,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
) {
    // Even block sizes: K = 384 runs as 2 x 192 rather than 256 + 128.
    let kc_step = k.div_ceil(k.div_ceil(blocking.kc));
    let mc_step = m.div_ceil(m.div_ceil(blocking.mc)).next_multiple_of(MR);
    let nc_step = n.div_ceil(n.div_ceil(blocking.nc)).next_multiple_of(NR);
    with_pack_space(mc_step * kc_step, nc_step * kc_step, |pack_a, pack_b| {
        for jc in (0..n).step_by(nc_step) {
            let nc = nc_step.min(n - jc);
            for pc in (0..k).step_by(kc_step) {
                let kc = kc_step.min(k - pc);
                let overwrite = pc == 0 && !accumulate;
                let b_block = b.at(pc, jc);
                // B's panels run along its columns: panel width index = column (cs),
                // depth index = row (rs).
                pack::<NR>(pack_b, b_block.ptr, b_block.cs, b_block.rs, nc, kc);
                for ic in (0..m).step_by(mc_step) {
                    let mc = mc_step.min(m - ic);
                    let a_block = a.at(ic, pc);
                    pack::<MR>(pack_a, a_block.ptr, a_block.rs, a_block.cs, mc, kc);
                    for jr in (0..nc).step_by(NR) {
                        let b_panel = pack_b.add(jr * kc);
                        let nr = NR.min(nc - jr);
                        for ir in (0..mc).step_by(MR) {
                            let mr = MR.min(mc - ir);
                            let tile = c.ptr.add((ic + ir) * c.ld + jc + jr);
                            kernel(
                                kc,
                                pack_a.add(ir * kc),
                                b_panel,
                                tile,
                                c.ld,
                                mr,
                                nr,
                                overwrite,
                            );
                        }
                    }
                }
            }
        }
    });
}

/// Packs a `width x depth` slice of an operand into panels of `W` along the width:
/// panel q holds, for each p < depth, elements (q*W .. q*W+W, p) contiguously, with
/// zeros past `width`. Element (w, p) of the source is at `src + w * w_stride + p *
/// d_stride` (for A: w = row, p = column; for B: w = column, p = row).
///
/// # Safety
/// AVX2 is available; the source elements are in bounds and `dst` has room for
/// `width.div_ceil(W) * W * depth` floats.
#[target_feature(enable = "avx2")]
unsafe fn pack<const W: usize>(
    dst: *mut f32,
    src: *const f32,
    w_stride: usize,
    d_stride: usize,
    width: usize,
    depth: usize,
) {
    for q in 0..width.div_ceil(W) {
        let valid = W.min(width - q * W);
        let src = src.add(q * W * w_stride);
        let dst = dst.add(q * W * depth);
        if valid == W && w_stride == 1 {
            // The panel's W elements are contiguous at each depth: a copy per step.
            for p in 0..depth {
                std::ptr::copy_nonoverlapping(src.add(p * d_stride), dst.add(p * W), W);
            }
        } else if valid == W && d_stride == 1 {
            pack_transposing::<W>(dst, src, w_stride, depth);
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

/// One full panel whose source runs are contiguous along the depth (a row-major A or a
/// transposed B): 8 x 8 blocks are transposed in registers.
///
/// # Safety
/// As for `pack`, with `W` full rows of `depth` contiguous elements at `src`.
#[target_feature(enable = "avx2")]
unsafe fn pack_transposing<const W: usize>(
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

/// The MR x NR register tile: `c (+)= a_panel · b_panel` over `kc` steps, storing only
/// the `mr x nr` corner that exists. `overwrite` stores without reading `c`.
///
/// # Safety
/// AVX2/FMA available; the panels hold `kc * MR` and `kc * NR` floats; the `mr x nr`
/// tile at `c` (row stride `ldc`) is in bounds.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(
    kc: usize,
    a_panel: *const f32,
    b_panel: *const f32,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    overwrite: bool,
) {
    // The C tile is touched only after the loop; fetch it now so that its (often
    // L3 or memory) latency overlaps the arithmetic instead of following it.
    for r in 0..mr {
        let row = c.add(r * ldc);
        _mm_prefetch::<_MM_HINT_T0>(row as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(row.add(nr - 1) as *const i8);
    }
    let mut acc = [[_mm256_setzero_ps(); NV]; MR];
    let (mut a, mut b) = (a_panel, b_panel);
    // One step of k: NV vectors of B, MR broadcasts of A, MR * NV FMAs.
    macro_rules! step {
        ($p:expr) => {
            let mut bv = [_mm256_setzero_ps(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm256_loadu_ps(b.add($p * NR + 8 * v));
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*a.add($p * MR + r));
                for (x, &bv) in acc_r.iter_mut().zip(&bv) {
                    *x = _mm256_fmadd_ps(av, bv, *x);
                }
            }
        };
    }
    for _ in 0..kc / 4 {
        step!(0);
        step!(1);
        step!(2);
        step!(3);
        a = a.add(4 * MR);
        b = b.add(4 * NR);
    }
    for _ in 0..kc % 4 {
        step!(0);
        a = a.add(MR);
        b = b.add(NR);
    }
    if mr == MR && nr == NR {
        for (r, acc_r) in acc.iter().enumerate() {
            let row = c.add(r * ldc);
            for (v, &x) in acc_r.iter().enumerate() {
                let out = row.add(8 * v);
                let x = if overwrite {
                    x
                } else {
                    _mm256_add_ps(_mm256_loadu_ps(out), x)
                };
                _mm256_storeu_ps(out, x);
            }
        }
    } else {
        let mut tile = [0.0f32; MR * NR];
        for (r, acc_r) in acc.iter().enumerate() {
            for (v, &x) in acc_r.iter().enumerate() {
                _mm256_storeu_ps(tile.as_mut_ptr().add(r * NR + 8 * v), x);
            }
        }
        for r in 0..mr {
            for j in 0..nr {
                let out = c.add(r * ldc + j);
                let x = tile[r * NR + j];
                *out = if overwrite { x } else { *out + x };
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

    fn check(m: usize, n: usize, k: usize, a_layout: usize, b_layout: usize, threads: usize) {
        let a_buf = buffer((m * 1000 + k) as u64, m, k);
        let b_buf = buffer((k * 1000 + n) as u64 + 7, k, n);
        let a = view(&a_buf, m, k, a_layout);
        let b = view(&b_buf, k, n, b_layout);
        let want = naive(a, b);
        // A destination with a wider row stride, so writes past column n would show.
        let ldc = n + 3;
        let mut got = vec![f32::NAN; m * ldc];
        gemm(&mut got, ldc, a, b, false, threads);
        let tol = |w: f64| 1e-5 * (k as f64).sqrt() * (1.0 + w.abs());
        let case = format!("m {m} n {n} k {k} layouts {a_layout}/{b_layout} threads {threads}");
        for i in 0..m {
            for j in 0..n {
                let (g, w) = (got[i * ldc + j] as f64, want[i * n + j]);
                assert!((g - w).abs() <= tol(w), "{case}: ({i}, {j}) {g} vs {w}");
            }
            for j in n..ldc {
                assert!(got[i * ldc + j].is_nan(), "{case}: wrote past the row");
            }
        }
        // Accumulating adds a second product on top.
        gemm(&mut got, ldc, a, b, true, threads);
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

    #[test]
    fn edge_shapes_match_naive_in_every_layout() {
        let dims = [1, MR - 1, MR, MR + 1, NR - 1, NR + 1, 33];
        for &m in &dims {
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
    fn block_boundaries_match_naive() {
        // K around one and two KC blocks, M around MC, N across NR panels.
        for k in [KC - 1, KC, KC + 1, 2 * KC + 3] {
            for layouts in [(0, 1), (1, 0), (2, 2)] {
                check(MC + 1, 2 * NR + 5, k, layouts.0, layouts.1, 1);
            }
        }
        check(2 * MC + MR + 1, NR, 40, 0, 1, 1);
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
    }

    #[test]
    fn large_nc_split_and_empty_depth() {
        check(7, NC + NR + 3, 5, 0, 0, 1);
        let a = MatRef::new(&[], 3, 0);
        let b = MatRef::new(&[], 0, 4);
        let mut out = vec![f32::NAN; 12];
        gemm(&mut out, 4, a, b, false, 2);
        assert!(out.iter().all(|&x| x == 0.0));
    }
}
