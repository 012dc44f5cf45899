//! int8 matrix products for inference (`--precision int8`), with AVX512-VNNI's `vpdpbusd`
//! (Intel Cascade Lake and newer, AMD Zen 4 and newer): one instruction adds, in each of
//! 16 lanes, four products of an unsigned and a signed byte into an i32, four times the
//! multiply-adds of an f32 FMA.
//!
//! Dynamic quantisation, as ONNX Runtime's `quantize_dynamic` does it (with finer scales):
//! - the weights once, when packed: per output column j, `s_j = max_p |b[p, j]| / 127` and
//!   `w[p, j] = round(b[p, j] / s_j)` in -127..=127;
//! - the activations on every product, per row i, to the unsigned bytes that `vpdpbusd`
//!   wants, over the row's own range (which includes 0): `t_i = (max_p a⁺ - min_p a⁻) / 255`,
//!   the zero point `z_i = round(-min_p a⁻ / t_i)` and `u[i, p] = round(a[i, p] / t_i) + z_i`
//!   in 0..=255, so that 0 is exact and a row of GELU outputs (almost all above -0.17) gets
//!   all 256 levels rather than the half a symmetric scale would leave it;
//! - the result `c[i, j] = t_i s_j (Σ_p u w - z_i Σ_p w[p, j])`: the integer sum is exact
//!   (at most 255 * 127 * 4 per instruction and lane, K < 2^16), the column sums
//!   `Σ_p w[p, j]` are kept with the packed weights, and only the final scaling rounds.
//!
//! Layout: B in panels of 32 columns, each k group of 4 as 32 x 4 bytes (one 32-bit word
//! per column: a `vpdpbusd` operand of 16 columns is 64 contiguous bytes); A in panels of
//! 12 rows, each k group as 12 x 4 bytes (one word per row, broadcast). The kernel keeps a
//! 12 x 32 tile of i32 sums in 24 zmm registers, as the f32 AVX-512 kernel keeps its f32
//! tile, and scales it into f32 when it stores.

use super::epilogue::Epilogue;
use super::gemm_x86::Dst;
use super::matref::MatRef;
use rayon::prelude::*;
use std::arch::x86_64::*;
use std::sync::OnceLock;

/// Rows of the register tile (an A panel).
const MR: usize = 12;
/// Columns of the register tile (a B panel): two zmm vectors of i32.
const NR: usize = 32;
/// Rows per A block: the tiles that share each B panel while it is in cache (a panel is
/// 32 k bytes: in L1 at k = 384, in L2 at 1536).
const MC: usize = 48;
/// The inner dimension's limit for exact i32 sums (255 * 127 * 65536 < 2^31).
const MAX_K: usize = 1 << 16;

/// Whether this CPU has AVX-512 with VNNI (detected once). `COREFOCUS_INT8=off` in the
/// environment pretends not (to see, and test, what a CPU without it does).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        !std::env::var("COREFOCUS_INT8").is_ok_and(|v| v == "off")
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    })
}

/// A right-hand operand (`[k, n]`, the weights) quantised to int8 per column and packed.
pub struct PackedI8 {
    k: usize,
    n: usize,
    /// k groups of 4 (k rounded up; the padding weights are 0).
    groups: usize,
    /// Panel-major: panel q, group g, column c, byte t at `((q * groups + g) * NR + c) * 4 + t`.
    data: Vec<i8>,
    /// Per column (padded to whole panels with 0): the quantisation scale `s_j`.
    scales: Vec<f32>,
    /// Per column (padded): `Σ_p w[p, j]`, what each unit of a row's zero point adds.
    col_sums: Vec<i32>,
}

impl PackedI8 {
    /// Quantises and packs `b` (`[k, n]`, any strides). Panics if k >= 65536.
    pub fn new(b: MatRef) -> PackedI8 {
        b.check("rhs");
        let (k, n) = (b.rows, b.cols);
        assert!(k < MAX_K, "gemm_int8: inner dimension {k} too large");
        let groups = k.div_ceil(4);
        let panels = n.div_ceil(NR);
        let mut data = vec![0i8; panels * groups * NR * 4];
        let mut scales = vec![0.0f32; panels * NR];
        let mut col_sums = vec![0i32; panels * NR];
        let at = |p: usize, j: usize| b.data[p * b.row_stride + j * b.col_stride];
        for j in 0..n {
            let amax = (0..k).map(|p| at(p, j).abs()).fold(0.0f32, f32::max);
            let scale = amax / 127.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let (q, c) = (j / NR, j % NR);
            let mut sum = 0i32;
            for p in 0..k {
                let w = quantise(at(p, j), inv);
                sum += w as i32;
                data[((q * groups + p / 4) * NR + c) * 4 + p % 4] = w;
            }
            scales[j] = scale;
            col_sums[j] = sum;
        }
        PackedI8 {
            k,
            n,
            groups,
            data,
            scales,
            col_sums,
        }
    }

    pub fn rows(&self) -> usize {
        self.k
    }

    pub fn cols(&self) -> usize {
        self.n
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }
}

/// `x * inv` rounded to the nearest integer (ties to even, as the vector conversion
/// rounds) and clamped to -127..=127.
fn quantise(x: f32, inv: f32) -> i8 {
    (x * inv).round_ties_even().clamp(-127.0, 127.0) as i8
}

/// Panels of the left operand quantised per row (12 rows each, padding rows with scale
/// 0), with each row's scale and zero point: `data` holds panel `first + q` at
/// `q * groups * MR * 4`, `scales` and `zeros` its rows at `q * MR`.
#[derive(Clone, Copy)]
struct LhsView {
    data: *const u8,
    scales: *const f32,
    zeros: *const i32,
    first: usize,
}

/// One part's quantised panels, row scales and zero points.
type PartBuffers<'a> = ((&'a mut [u8], &'a mut [f32]), &'a mut [i32]);

// SAFETY: read-only views of buffers that outlive the parallel region they are used in.
unsafe impl Send for LhsView {}
unsafe impl Sync for LhsView {}

thread_local! {
    /// The calling thread's last left-operand buffers, reused by its next product.
    static LHS_BUFFERS: std::cell::Cell<(Vec<u8>, Vec<f32>, Vec<i32>)> =
        const { std::cell::Cell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// Quantises the rows of panels `first ..` of `a` into `data` (whole panels of
/// `groups` words per row), `scales` and `zeros` (one per row, padding rows included).
fn quantise_panels(
    a: MatRef,
    groups: usize,
    first: usize,
    data: &mut [u8],
    scales: &mut [f32],
    zeros: &mut [i32],
) {
    let mut gathered = Vec::new();
    let rows = scales.iter_mut().zip(zeros.iter_mut()).enumerate();
    for (r, (scale, zero)) in rows {
        let i = first * MR + r;
        let row: &[f32] = if i >= a.rows {
            &[]
        } else if a.col_stride == 1 {
            &a.data[i * a.row_stride..i * a.row_stride + a.cols]
        } else {
            gathered.clear();
            gathered.extend((0..a.cols).map(|p| a.data[i * a.row_stride + p * a.col_stride]));
            &gathered
        };
        let panel = &mut data[r / MR * groups * MR * 4..][..groups * MR * 4];
        // SAFETY: AVX-512 is present (the caller checked `available`); the panel holds
        // `groups` words of its row r % MR, MR words apart.
        (*scale, *zero) =
            unsafe { quantise_row(row, groups, panel[r % MR * 4..].as_mut_ptr(), MR * 4) };
    }
}

/// A row's scale and zero point: the range `[min(lo, 0), max(hi, 0)]` in 255 steps (an
/// all-zero row: scale 0, zero point 0).
fn row_range(lo: f32, hi: f32) -> (f32, i32) {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let scale = (hi - lo) / 255.0;
    if scale > 0.0 {
        (
            scale,
            ((-lo / scale).round_ties_even() as i32).clamp(0, 255),
        )
    } else {
        (0.0, 0)
    }
}

/// Quantises one row (empty: a padding row) into `groups` 4-byte words `stride` bytes
/// apart at `dst`, each byte `round(a / t) + z` in 0..=255 (the k padding past the row's
/// end: a = 0, the byte z), and returns the row's scale t and zero point z.
///
/// # Safety
/// AVX-512F/BW are present; `row.len() <= 4 * groups`; `dst` has `groups` words `stride`
/// bytes apart.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantise_row(row: &[f32], groups: usize, dst: *mut u8, stride: usize) -> (f32, i32) {
    let chunk = |c: usize| {
        let lanes = row.len().saturating_sub(16 * c).min(16);
        _mm512_maskz_loadu_ps(lane_mask(lanes), row.as_ptr().wrapping_add(16 * c))
    };
    let chunks = (4 * groups).div_ceil(16);
    // (The masked lanes load as 0, which the range includes anyway.)
    let (mut lo, mut hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    for c in 0..row.len().div_ceil(16) {
        let x = chunk(c);
        lo = _mm512_min_ps(lo, x);
        hi = _mm512_max_ps(hi, x);
    }
    let (scale, zero) = row_range(_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi));
    let inv = _mm512_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
    let (min, max, zero_point) = (
        _mm512_setzero_si512(),
        _mm512_set1_epi32(255),
        _mm512_set1_epi32(zero),
    );
    for c in 0..chunks {
        // Rounded to nearest even, as `quantise` rounds.
        let q = _mm512_cvtps_epi32(_mm512_mul_ps(chunk(c), inv));
        let q = _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(q, zero_point), min), max);
        let mut words = [0u32; 4];
        _mm_storeu_si128(words.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(q));
        for (w, word) in words.iter().enumerate().take(groups - 4 * c) {
            (dst.add((4 * c + w) * stride) as *mut u32).write_unaligned(*word);
        }
    }
    (scale, zero)
}

/// `dst[i * ldc + j] (+)= Σ_p a[i, p] · b[p, j]` with both operands quantised to int8 (see
/// the module's comment), split over up to `threads` rayon tasks, `epilogue` applied to
/// each finished tile. Panics unless [`available`] or if a view is out of range.
pub fn gemm_int8(
    dst: &mut [f32],
    ldc: usize,
    a: MatRef,
    b: &PackedI8,
    accumulate: bool,
    threads: usize,
    epilogue: Epilogue,
) {
    assert!(available(), "gemm_int8: this CPU has no AVX512-VNNI");
    if super::gemm_x86::start_product(dst, ldc, &a, (b.k, b.n), accumulate, &epilogue) {
        return;
    }
    let (m, n) = (a.rows, b.n);
    let c = Dst {
        ptr: dst.as_mut_ptr(),
        ld: ldc,
    };
    let (row_panels, panels, groups) = (m.div_ceil(MR), b.panels(), b.groups);
    let panel_len = groups * MR * 4;
    let (mut data, mut scales, mut zeros) = LHS_BUFFERS.take();
    // Every element is written before it is read, so the old contents need no clearing.
    data.resize(row_panels * panel_len, 0);
    scales.resize(row_panels * MR, 0.0);
    zeros.resize(row_panels * MR, 0);
    let wanted = threads.min((m * n * b.k) >> 22).max(1);
    if row_panels >= wanted {
        // Threads split the rows, and each quantises its own: the int8 weights (a quarter
        // of f32's; MiniLM's fit in L3) cost every thread less to stream whole than
        // quantising all rows on one thread while the others wait (1 x 128: 11 panels).
        let per_part = row_panels.div_ceil(wanted);
        let part = |(t, ((data, scales), zeros)): (usize, PartBuffers)| {
            let first = t * per_part;
            quantise_panels(a, groups, first, data, scales, zeros);
            let lhs = LhsView {
                data: data.as_ptr(),
                scales: scales.as_ptr(),
                zeros: zeros.as_ptr(),
                first,
            };
            let rows = (first, first + scales.len() / MR);
            // SAFETY: VNNI is present (asserted); the destination holds m x n (checked)
            // and part t writes only its own rows; `lhs` holds those rows' panels and
            // `b` is padded to whole panels.
            unsafe { serial(c, m, n, lhs, b, rows, (0, panels), accumulate, epilogue) };
        };
        let chunks = (per_part * panel_len, per_part * MR);
        if wanted == 1 {
            part((0, ((&mut data[..], &mut scales[..]), &mut zeros[..])));
        } else {
            data.par_chunks_mut(chunks.0)
                .zip(scales.par_chunks_mut(chunks.1))
                .zip(zeros.par_chunks_mut(chunks.1))
                .enumerate()
                .for_each(part);
        }
    } else {
        // Fewer row panels than threads (a few rows): quantised once, columns split.
        quantise_panels(a, groups, 0, &mut data, &mut scales, &mut zeros);
        let lhs = LhsView {
            data: data.as_ptr(),
            scales: scales.as_ptr(),
            zeros: zeros.as_ptr(),
            first: 0,
        };
        let parts = wanted.min(panels);
        let per_part = panels.div_ceil(parts);
        (0..parts).into_par_iter().for_each(|t| {
            let cols = (t * per_part, ((t + 1) * per_part).min(panels));
            if cols.0 < cols.1 {
                // SAFETY: as above, part t writing only its own columns.
                unsafe { serial(c, m, n, lhs, b, (0, row_panels), cols, accumulate, epilogue) };
            }
        });
    }
    LHS_BUFFERS.set((data, scales, zeros));
}

/// Row panels `rows.0 .. rows.1` x column panels `cols.0 .. cols.1` on the calling thread:
/// a block of [`MC`] rows at a time, each B panel against the block's tiles.
///
/// # Safety
/// VNNI is present; `c` holds the `m x n` result; `lhs` holds row panels `rows`; no
/// other thread writes these tiles.
#[allow(clippy::too_many_arguments)]
unsafe fn serial(
    c: Dst,
    m: usize,
    n: usize,
    lhs: LhsView,
    b: &PackedI8,
    rows: (usize, usize),
    cols: (usize, usize),
    accumulate: bool,
    epilogue: Epilogue,
) {
    let groups = b.groups;
    for block in (rows.0..rows.1).step_by(MC / MR) {
        let block_end = (block + MC / MR).min(rows.1);
        for q in cols.0..cols.1 {
            let j0 = q * NR;
            let nr = NR.min(n - j0);
            let b_panel = b.data.as_ptr().add(q * groups * NR * 4);
            for pi in block..block_end {
                let i0 = pi * MR;
                let mr = MR.min(m - i0);
                let tile = c.ptr.add(i0 * c.ld + j0);
                // A short last tile computes only the rows it has, in steps of 4 (128
                // rows: ten tiles of 12 and one of 8).
                let kernel = match mr {
                    9.. => tile_product::<12>,
                    5..=8 => tile_product::<8>,
                    _ => tile_product::<4>,
                };
                kernel(
                    groups,
                    lhs.data.add((pi - lhs.first) * groups * MR * 4),
                    b_panel,
                    Scales {
                        rows: lhs.scales.add(i0 - lhs.first * MR),
                        zeros: lhs.zeros.add(i0 - lhs.first * MR),
                        cols: b.scales.as_ptr().add(j0),
                        col_sums: b.col_sums.as_ptr().add(j0),
                    },
                    tile,
                    c.ld,
                    mr,
                    nr,
                    accumulate,
                );
                if !epilogue.is_none() {
                    // SAFETY: the tile's rows lie in the result (just written), do not
                    // overlap, and no other thread touches them.
                    let mut out: [&mut [f32]; MR] = std::array::from_fn(|r| {
                        if r < mr {
                            std::slice::from_raw_parts_mut(tile.add(r * c.ld), nr)
                        } else {
                            &mut []
                        }
                    });
                    epilogue.apply_rows(&mut out[..mr], j0);
                }
            }
        }
    }
}

/// A tile's scaling: 12 row scales and zero points, 32 column scales and sums.
struct Scales {
    rows: *const f32,
    zeros: *const i32,
    cols: *const f32,
    col_sums: *const i32,
}

/// The first `ROWS` (at least `mr`) rows of a 12 x 32 tile: the i32 sums over all
/// `groups`, scaled into f32 and stored (or added) into the first `mr` rows and `nr`
/// columns at `c`.
///
/// # Safety
/// VNNI is present; `a` holds 12 x 4 bytes per group, `b` 32 x 4, the scales 12 / 32 / 32
/// values; `c` has `mr` rows of `nr` writable floats `ldc` apart.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_product<const ROWS: usize>(
    groups: usize,
    a: *const u8,
    b: *const i8,
    scales: Scales,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    accumulate: bool,
) {
    let mut acc = [[_mm512_setzero_si512(); 2]; ROWS];
    for g in 0..groups {
        let bv = [
            _mm512_loadu_si512(b.add(g * NR * 4).cast()),
            _mm512_loadu_si512(b.add(g * NR * 4 + 64).cast()),
        ];
        let a_group = a.add(g * MR * 4);
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_epi32((a_group.add(r * 4) as *const i32).read_unaligned());
            acc_r[0] = _mm512_dpbusd_epi32(acc_r[0], av, bv[0]);
            acc_r[1] = _mm512_dpbusd_epi32(acc_r[1], av, bv[1]);
        }
    }
    let col_scale = [
        _mm512_loadu_ps(scales.cols),
        _mm512_loadu_ps(scales.cols.add(16)),
    ];
    let col_sum = [
        _mm512_loadu_si512(scales.col_sums.cast()),
        _mm512_loadu_si512(scales.col_sums.add(16).cast()),
    ];
    let masks = [lane_mask(nr.min(16)), lane_mask(nr.saturating_sub(16))];
    for (r, acc_r) in acc.iter().enumerate().take(mr) {
        let row_scale = _mm512_set1_ps(*scales.rows.add(r));
        let zero = _mm512_set1_epi32(*scales.zeros.add(r));
        let row = c.add(r * ldc);
        for h in 0..2 {
            let offset = _mm512_mullo_epi32(zero, col_sum[h]);
            let sum = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc_r[h], offset));
            let mut v = _mm512_mul_ps(sum, _mm512_mul_ps(col_scale[h], row_scale));
            let dst = row.add(16 * h);
            if accumulate {
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(masks[h], dst));
            }
            _mm512_mask_storeu_ps(dst, masks[h], v);
        }
    }
}

/// The first `lanes` (0..=16) of 16.
fn lane_mask(lanes: usize) -> __mmask16 {
    ((1u32 << lanes) - 1) as __mmask16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the kernel computes, in f64: the product of the quantised operands, scaled.
    fn quantised_product(a: MatRef, b: MatRef) -> Vec<f64> {
        let col_scale: Vec<f32> = (0..b.cols)
            .map(|j| {
                (0..b.rows)
                    .map(|p| b.data[p * b.row_stride + j * b.col_stride].abs())
                    .fold(0.0, f32::max)
                    / 127.0
            })
            .collect();
        let mut out = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            let row: Vec<f32> = (0..a.cols)
                .map(|p| a.data[i * a.row_stride + p * a.col_stride])
                .collect();
            let (lo, hi) = row
                .iter()
                .fold((0.0f32, 0.0f32), |(l, h), &x| (l.min(x), h.max(x)));
            let (t, z) = row_range(lo, hi);
            let t_inv = if t > 0.0 { 1.0 / t } else { 0.0 };
            // What the bytes stand for: u - z.
            let q: Vec<i64> = row
                .iter()
                .map(|&x| {
                    ((x * t_inv).round_ties_even() as i64 + z as i64).clamp(0, 255) - z as i64
                })
                .collect();
            for j in 0..b.cols {
                let s = col_scale[j];
                let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
                let dot: i64 = (0..a.cols)
                    .map(|p| {
                        q[p] * quantise(b.data[p * b.row_stride + j * b.col_stride], inv) as i64
                    })
                    .sum();
                out[i * b.cols + j] = dot as f64 * (t as f64) * (s as f64);
            }
        }
        out
    }

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..n).map(|_| rng.normal() as f32).collect()
    }

    #[test]
    fn products_are_those_of_the_quantised_operands_in_every_shape() {
        if !available() {
            eprintln!("skipped: no AVX512-VNNI on this CPU");
            return;
        }
        for (m, n, k) in [
            (1, 33, 5),
            (12, 32, 4),
            (10, 40, 20),
            (11, 1536, 1536),
            (13, 45, 70),
            (37, 64, 129),
            (128, 384, 384),
            (100, 96, 1536),
        ] {
            let a = random(m * k, 1);
            let b = random(k * n, 2);
            let (av, bv) = (MatRef::new(&a, m, k), MatRef::new(&b, k, n));
            let want = quantised_product(av, bv);
            let packed = PackedI8::new(bv);
            for threads in [1, 2] {
                let mut got = vec![f32::NAN; m * n];
                gemm_int8(
                    &mut got,
                    n,
                    av,
                    &packed,
                    false,
                    threads,
                    Epilogue::default(),
                );
                for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
                    // The i32 sum is exact; the scaling rounds a few times in f32.
                    assert!(
                        (*g as f64 - w).abs() <= 1e-5 * w.abs().max(1.0),
                        "{m}x{n}x{k}, {threads} threads, element {idx}: {g} vs {w}"
                    );
                }
                // Accumulating adds the same product again.
                gemm_int8(&mut got, n, av, &packed, true, threads, Epilogue::default());
                for (g, w) in got.iter().zip(&want) {
                    assert!((*g as f64 - 2.0 * w).abs() <= 2e-5 * w.abs().max(1.0));
                }
            }
            // A transposed weight view and a strided destination give the same numbers.
            let bt: Vec<f32> = (0..n * k).map(|x| b[(x % k) * n + x / k]).collect();
            let packed_t = PackedI8::new(MatRef::new(&bt, n, k).t());
            let ld = n + 3;
            let mut strided = vec![7.0f32; m * ld];
            gemm_int8(
                &mut strided,
                ld,
                av,
                &packed_t,
                false,
                2,
                Epilogue::default(),
            );
            for i in 0..m {
                for j in 0..n {
                    let w = want[i * n + j];
                    assert!((strided[i * ld + j] as f64 - w).abs() <= 1e-5 * w.abs().max(1.0));
                }
                assert!(strided[i * ld + n..(i + 1) * ld].iter().all(|&x| x == 7.0));
            }
        }
    }

    #[test]
    fn products_stay_close_to_f32_and_take_the_epilogue() {
        if !available() {
            eprintln!("skipped: no AVX512-VNNI on this CPU");
            return;
        }
        let (m, n, k) = (64, 96, 384);
        let a = random(m * k, 3);
        let b: Vec<f32> = random(k * n, 4).iter().map(|x| 0.05 * x).collect();
        let (av, bv) = (MatRef::new(&a, m, k), MatRef::new(&b, k, n));
        let exact: Vec<f64> = (0..m * n)
            .map(|x| {
                let (i, j) = (x / n, x % n);
                (0..k)
                    .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                    .sum()
            })
            .collect();
        let largest = exact.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let packed = PackedI8::new(bv);
        let bias: Vec<f32> = (0..n).map(|j| 0.01 * j as f32 - 0.3).collect();
        let mut got = vec![0.0f32; m * n];
        let epilogue = Epilogue {
            bias: Some(&bias),
            gelu: true,
        };
        gemm_int8(&mut got, n, av, &packed, false, 2, epilogue);
        for (x, g) in got.iter().enumerate() {
            let want = crate::kernels::activations::gelu((exact[x] + bias[x % n] as f64) as f32);
            // Two 8-bit operands: errors of ~1% of the largest value.
            assert!(
                (g - want).abs() as f64 <= 0.02 * largest,
                "element {x}: {g} vs {want} (largest {largest})"
            );
        }
        // Quantisation is not the identity: the result differs from f32's somewhere.
        let mut plain = vec![0.0f32; m * n];
        gemm_int8(&mut plain, n, av, &packed, false, 1, Epilogue::default());
        assert!(plain
            .iter()
            .zip(&exact)
            .any(|(g, w)| (*g as f64 - w).abs() > 1e-4));
    }

    #[test]
    fn zero_rows_and_columns_give_zeros() {
        if !available() {
            return;
        }
        let (m, n, k) = (5, 40, 16);
        let mut a = random(m * k, 5);
        a[2 * k..3 * k].fill(0.0);
        let mut b = random(k * n, 6);
        for p in 0..k {
            b[p * n + 7] = 0.0;
        }
        let packed = PackedI8::new(MatRef::new(&b, k, n));
        let mut got = vec![f32::NAN; m * n];
        gemm_int8(
            &mut got,
            n,
            MatRef::new(&a, m, k),
            &packed,
            false,
            1,
            Epilogue::default(),
        );
        assert!(got[2 * n..3 * n].iter().all(|&x| x == 0.0));
        assert!((0..m).all(|i| got[i * n + 7] == 0.0));
        assert!(got.iter().all(|x| x.is_finite()));
    }
}
