//! The small matrix products inside attention, with AVX2/FMA register tiles.
//!
//! Every product in the attention passes has one side that is a head slice (`dh`
//! columns, `dh` = 32 or 64) and the other a block of scores: `[rows, dh] x [dh, kv]`,
//! `[rows, kv] x [kv, dh]` and `[kv, rows] x [rows, dh]`. The general gemm re-packs
//! both operands on every call, which for these thin shapes costs as much as the
//! arithmetic. Here the right operand is read in place (its rows must be contiguous,
//! a multiple of 8 wide), the left operand is broadcast element by element from any
//! strided layout (so transposed score blocks need no copy), and a 6 x 16 tile of the
//! result lives in 12 AVX registers for the whole inner loop (with AVX-512: a 12 x 32
//! tile in 24 zmm registers, the last vector of a row masked). Anything else (no AVX2,
//! or a shape the tiles do not cover) goes to the general `matmul`.

use super::super::matmul::{matmul, MatRef, Par};

/// Rows of the register tile.
const MR: usize = 6;

/// Cache lines of memory that a later step will read, fetched into L2 while products
/// compute (the AVX-512 tiles 32 columns wide issue one every four steps of their inner
/// loop, the other paths none); the products it is passed to take what they have room
/// for and leave the rest for the next.
#[derive(Clone, Copy)]
pub(super) struct LineFetch {
    next: *const f32,
    lines: usize,
}

impl LineFetch {
    pub(super) const NONE: LineFetch = LineFetch {
        next: std::ptr::null(),
        lines: 0,
    };

    /// The lines of `data`.
    pub(super) fn of(data: &[f32]) -> LineFetch {
        LineFetch {
            next: data.as_ptr(),
            lines: data.len().div_ceil(16),
        }
    }
}

/// `dst[i * ldc + j] (+)= Σ_p a[i, p] · b[p, j]` for the `a.rows x b.cols` result.
pub(super) fn matmul_tiles(dst: &mut [f32], ldc: usize, a: MatRef, b: MatRef, accumulate: bool) {
    let mut none = LineFetch::NONE;
    matmul_tiles_fetching(dst, ldc, a, b, accumulate, &mut none);
}

/// [`matmul_tiles`], fetching lines of `fetch` on the way.
pub(super) fn matmul_tiles_fetching(
    dst: &mut [f32],
    ldc: usize,
    a: MatRef,
    b: MatRef,
    accumulate: bool,
    fetch: &mut LineFetch,
) {
    #[cfg(target_arch = "x86_64")]
    let wide = crate::kernels::gemm_x86::Isa::best() == crate::kernels::gemm_x86::Isa::Avx512;
    #[cfg(not(target_arch = "x86_64"))]
    let wide = false;
    matmul_tiles_with(wide, fetch, dst, ldc, a, b, accumulate);
}

/// `matmul_tiles_fetching` with the AVX-512 tiles (`wide`, where the CPU has AVX-512F)
/// or AVX2.
fn matmul_tiles_with(
    wide: bool,
    fetch: &mut LineFetch,
    dst: &mut [f32],
    ldc: usize,
    a: MatRef,
    b: MatRef,
    accumulate: bool,
) {
    assert_eq!(a.cols, b.rows, "attention tiles: inner dimensions differ");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if b.col_stride == 1
        && n.is_multiple_of(8)
        && k > 0
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
    {
        assert!(
            ldc >= n && (m - 1) * ldc + n <= dst.len(),
            "attention tiles: dst"
        );
        let a_last = (m - 1) * a.row_stride + (k - 1) * a.col_stride;
        assert!(a_last < a.data.len(), "attention tiles: lhs out of range");
        assert!(
            (k - 1) * b.row_stride + n <= b.data.len(),
            "attention tiles: rhs out of range"
        );
        // The GEMM's choice of vector width (COREFOCUS_GEMM_ISA=avx2 keeps AVX2 here too).
        if wide && std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: as below, with AVX-512F just detected (prefetches do not fault,
            // and `fetch` steps through its lines with wrapping arithmetic).
            *fetch = unsafe {
                avx512::product(
                    dst.as_mut_ptr(),
                    ldc,
                    a.data.as_ptr(),
                    a.row_stride,
                    a.col_stride,
                    b.data.as_ptr(),
                    b.row_stride,
                    m,
                    n,
                    k,
                    accumulate,
                    *fetch,
                )
            };
            return;
        }
        // SAFETY: AVX2 and FMA were just detected; every element the kernel touches,
        // a[i*rs + p*cs], b[p*ldb + j] and dst[i*ldc + j] for i < m, p < k, j < n,
        // lies inside the slices by the three assertions above.
        unsafe {
            avx2::product(
                dst.as_mut_ptr(),
                ldc,
                a.data.as_ptr(),
                a.row_stride,
                a.col_stride,
                b.data.as_ptr(),
                b.row_stride,
                m,
                n,
                k,
                accumulate,
            );
        }
        return;
    }
    matmul(dst, ldc, a, b, accumulate, Par::Serial);
}

/// `out` = `m`ᵀ (`[m.cols, stride]`, row-major) for `m` = `[kvc, dh]`, with the columns
/// past `kvc` zero: the right operand of `[rows, dh] x [dh, kvc]` products. With AVX2
/// and contiguous rows, 8 x 8 blocks go through registers; otherwise element by element.
pub(super) fn pack_transposed(m: MatRef, stride: usize, out: &mut Vec<f32>) {
    let (kvc, dh) = (m.rows, m.cols);
    assert!(stride >= kvc, "attention: packed stride {stride} < {kvc}");
    // Every element is written below, so only growth needs initialising.
    out.resize(dh * stride, 0.0);
    for dst in out.chunks_exact_mut(stride) {
        dst[kvc..].fill(0.0);
    }
    if kvc == 0 || dh == 0 {
        return;
    }
    assert!(
        (kvc - 1) * m.row_stride + (dh - 1) * m.col_stride < m.data.len(),
        "attention: packed source out of range"
    );
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if m.col_stride == 1 && dh.is_multiple_of(8) && std::arch::is_x86_feature_detected!("avx2") {
        let blocks = kvc / 8;
        for jb in 0..blocks {
            for cb in 0..dh / 8 {
                // SAFETY: AVX2 was detected; the block reads rows 8jb .. 8jb+8 < kvc,
                // columns 8cb .. 8cb+8 <= dh of `m` (in range by the assertion above)
                // and writes rows 8cb .. 8cb+8 < dh, columns 8jb .. 8jb+8 <= kvc <=
                // stride of `out` (length dh * stride).
                unsafe {
                    avx2::transpose_8x8(
                        m.data.as_ptr().add(8 * jb * m.row_stride + 8 * cb),
                        m.row_stride,
                        out.as_mut_ptr().add(8 * cb * stride + 8 * jb),
                        stride,
                    );
                }
            }
        }
        done = blocks * 8;
    }
    for j in done..kvc {
        let row = &m.data[j * m.row_stride..];
        for (c, dst) in out.chunks_exact_mut(stride).enumerate() {
            dst[j] = row[c * m.col_stride];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::MR;
    use std::arch::x86_64::*;

    /// See `matmul_tiles`; `n` is a multiple of 8 and all indices are in bounds.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn product(
        c: *mut f32,
        ldc: usize,
        a: *const f32,
        a_rs: usize,
        a_cs: usize,
        b: *const f32,
        ldb: usize,
        m: usize,
        n: usize,
        k: usize,
        accumulate: bool,
    ) {
        let t = Tile {
            c,
            ldc,
            a,
            a_rs,
            a_cs,
            b,
            ldb,
            k,
            accumulate,
        };
        let mut i = 0;
        while i + MR <= m {
            t.row_panel::<MR>(i, n);
            i += MR;
        }
        match m - i {
            0 => {}
            1 => t.row_panel::<1>(i, n),
            2 => t.row_panel::<2>(i, n),
            3 => t.row_panel::<3>(i, n),
            4 => t.row_panel::<4>(i, n),
            _ => t.row_panel::<5>(i, n),
        }
    }

    /// The 8 x 8 block at `src` (row stride `src_stride`) transposed into `dst` (row
    /// stride `dst_stride`). Both blocks must be in bounds.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn transpose_8x8(
        src: *const f32,
        src_stride: usize,
        dst: *mut f32,
        dst_stride: usize,
    ) {
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * src_stride)));
        let out = crate::kernels::gemm_x86::transpose_8x8(r);
        for (i, &o) in out.iter().enumerate() {
            _mm256_storeu_ps(dst.add(i * dst_stride), o);
        }
    }

    struct Tile {
        c: *mut f32,
        ldc: usize,
        a: *const f32,
        a_rs: usize,
        a_cs: usize,
        b: *const f32,
        ldb: usize,
        k: usize,
        accumulate: bool,
    }

    impl Tile {
        #[target_feature(enable = "avx2,fma")]
        #[inline]
        unsafe fn row_panel<const R: usize>(&self, i: usize, n: usize) {
            let mut j = 0;
            while j + 16 <= n {
                self.tile::<R, 2>(i, j);
                j += 16;
            }
            if j < n {
                self.tile::<R, 1>(i, j);
            }
        }

        /// Rows `i .. i+R`, columns `j .. j+8V` of the result.
        #[target_feature(enable = "avx2,fma")]
        #[inline]
        unsafe fn tile<const R: usize, const V: usize>(&self, i: usize, j: usize) {
            let mut acc = [[_mm256_setzero_ps(); V]; R];
            // One base pointer per row and one shared offset: the broadcast addresses
            // are then independent (base + offset) instead of a chain of additions
            // through the rows, which would be the loop's critical path.
            let mut a_rows = [self.a; R];
            for (r, row) in a_rows.iter_mut().enumerate() {
                *row = self.a.add((i + r) * self.a_rs);
            }
            let mut a_off = 0usize;
            let mut b_p = self.b.add(j);
            for _ in 0..self.k {
                let mut bv = [_mm256_setzero_ps(); V];
                for (v, b) in bv.iter_mut().enumerate() {
                    *b = _mm256_loadu_ps(b_p.add(8 * v));
                }
                for (acc_r, row) in acc.iter_mut().zip(&a_rows) {
                    let av = _mm256_broadcast_ss(&*row.add(a_off));
                    for (x, &b) in acc_r.iter_mut().zip(&bv) {
                        *x = _mm256_fmadd_ps(av, b, *x);
                    }
                }
                a_off += self.a_cs;
                b_p = b_p.add(self.ldb);
            }
            for (r, acc_r) in acc.iter().enumerate() {
                let c_row = self.c.add((i + r) * self.ldc + j);
                for (v, &x) in acc_r.iter().enumerate() {
                    let out = c_row.add(8 * v);
                    let x = if self.accumulate {
                        _mm256_add_ps(_mm256_loadu_ps(out), x)
                    } else {
                        x
                    };
                    _mm256_storeu_ps(out, x);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::LineFetch;
    use std::arch::x86_64::*;
    use std::cell::Cell;

    /// Rows of the register tile.
    const MR: usize = 12;

    /// See `matmul_tiles`; `n` is a multiple of 8 and all indices are in bounds.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn product(
        c: *mut f32,
        ldc: usize,
        a: *const f32,
        a_rs: usize,
        a_cs: usize,
        b: *const f32,
        ldb: usize,
        m: usize,
        n: usize,
        k: usize,
        accumulate: bool,
        fetch: LineFetch,
    ) -> LineFetch {
        let t = Tile {
            c,
            ldc,
            a,
            a_rs,
            a_cs,
            b,
            ldb,
            k,
            accumulate,
            fetch: Cell::new(fetch),
        };
        // The layout of A picks the tile's addressing (see `tile`).
        if a_cs == 1 {
            t.panels::<ROWS_CONTIGUOUS>(m, n);
        } else if a_rs == 1 {
            t.panels::<COLUMNS_CONTIGUOUS>(m, n);
        } else {
            t.panels::<STRIDED>(m, n);
        }
        t.fetch.get()
    }

    /// How a tile addresses A's elements: along contiguous rows (`a_cs == 1`: a block of
    /// queries, scores or output gradients), down contiguous columns (`a_rs == 1`: a
    /// transposed score block, whose R elements at each step are adjacent), or with
    /// both strides.
    const ROWS_CONTIGUOUS: u8 = 0;
    const COLUMNS_CONTIGUOUS: u8 = 1;
    const STRIDED: u8 = 2;

    /// `p`, through an empty `asm!` block: the compiler can no longer tell that the
    /// tile's row pointers are a fixed stride apart, which it otherwise uses to derive
    /// each from the one before by an addition in every step of the loop (a chain
    /// through all the rows, on the ports the FMAs need).
    /// (The block reads no memory through `p`, so `nomem` holds.)
    #[inline(always)]
    #[allow(clippy::pointers_in_nomem_asm_block)]
    fn opaque(mut p: *const f32) -> *const f32 {
        // SAFETY: the block is empty; it only hands `p` back in the same register.
        unsafe {
            std::arch::asm!("/* {0} */", inout(reg) p, options(pure, nomem, nostack, preserves_flags))
        };
        p
    }

    struct Tile {
        c: *mut f32,
        ldc: usize,
        a: *const f32,
        a_rs: usize,
        a_cs: usize,
        b: *const f32,
        ldb: usize,
        k: usize,
        accumulate: bool,
        /// The lines still to fetch, taken by the tiles in turn.
        fetch: Cell<LineFetch>,
    }

    impl Tile {
        /// Every row panel of the `m x n` result.
        #[target_feature(enable = "avx512f")]
        unsafe fn panels<const A: u8>(&self, m: usize, n: usize) {
            let mut i = 0;
            // 4 rows left over from panels of 12 (a 64-row block) run as 8 + 8 instead of
            // a last panel of 4: its 8 FMAs per step are two vector loads and four
            // broadcasts, where 8 rows issue 16.
            let split_last = m % MR == 4 && m >= MR + 4;
            let twelves_end = if split_last { m - MR - 4 } else { m - m % MR };
            while i < twelves_end {
                self.row_panel::<MR, A>(i, n);
                i += MR;
            }
            if split_last {
                self.row_panel::<8, A>(i, n);
                self.row_panel::<8, A>(i + 8, n);
                return;
            }
            // The remaining rows in panels of 8, 4, 2 and 1.
            if m - i >= 8 {
                self.row_panel::<8, A>(i, n);
                i += 8;
            }
            if m - i >= 4 {
                self.row_panel::<4, A>(i, n);
                i += 4;
            }
            if m - i >= 2 {
                self.row_panel::<2, A>(i, n);
                i += 2;
            }
            if m - i == 1 {
                self.row_panel::<1, A>(i, n);
            }
        }

        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn row_panel<const R: usize, const A: u8>(&self, i: usize, n: usize) {
            let mut j = 0;
            while j + 32 <= n {
                if self.fetch.get().lines > 0 {
                    self.tile::<R, 2, true, A>(i, j, u16::MAX);
                } else {
                    self.tile::<R, 2, false, A>(i, j, u16::MAX);
                }
                j += 32;
            }
            while j < n {
                let cols = (n - j).min(16);
                self.tile::<R, 1, false, A>(i, j, ((1u32 << cols) - 1) as u16);
                j += cols;
            }
        }

        /// Rows `i .. i+R`, columns `j .. j+16V` of the result, the last vector's lanes
        /// limited to `last`. The inner loop runs four steps of k per pass with the
        /// steps' offsets as constants, as the GEMM's kernel does: taken one step at a
        /// time, the compiler rebuilt the rows' addresses every step as a chain of
        /// additions (the 12 row pointers do not fit in registers), extra integer work
        /// on the FMA ports. With contiguous rows, four group pointers and the row
        /// stride address all 12 rows (a pointer per row left 6-8 of them to reload from
        /// the stack at every step); with contiguous columns (`COLUMNS_CONTIGUOUS`) a
        /// step's R elements are adjacent and one pointer serves them all.
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn tile<const R: usize, const V: usize, const FETCH: bool, const A: u8>(
            &self,
            i: usize,
            j: usize,
            last: u16,
        ) {
            let mask = |v: usize| if v + 1 == V { last } else { u16::MAX };
            let mut acc = [[_mm512_setzero_ps(); V]; R];
            // Without contiguous rows, step p's element of row r is a_rows[r] + a_off +
            // p * a_cs (a_rows[0] + a_off + p * a_cs, plus r, for contiguous columns).
            let a_rows: [*const f32; R] =
                std::array::from_fn(|r| opaque(self.a.add((i + r) * self.a_rs)));
            let a_cs = self.a_cs;
            let ldb = self.ldb;
            let mut a_off = 0usize;
            // With contiguous rows: the rows in groups of three, each group's base (its
            // first row, moved along k) and a row's place in its group (0, 1 or 2 row
            // strides on), so that each broadcast address is base + stride · scale +
            // constant, one addressing mode, from four pointers and the stride. The
            // bases stay `opaque` as they move, or the compiler turns every row's
            // address back into a pointer of its own. A group's base moves at most to
            // one past its row's last element (k steps).
            let rs = self.a_rs;
            let mut groups: [*const f32; 4] = [self.a; 4];
            if A == ROWS_CONTIGUOUS {
                groups = std::array::from_fn(|g| opaque(self.a.add((i + (3 * g).min(R - 1)) * rs)));
            }
            let mut b_p = self.b.add(j);
            let mut fetch = self.fetch.get();
            macro_rules! step {
                ($p:expr) => {
                    let mut bv = [_mm512_setzero_ps(); V];
                    for (v, b) in bv.iter_mut().enumerate() {
                        *b = _mm512_maskz_loadu_ps(mask(v), b_p.add($p * ldb + 16 * v));
                    }
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        let at = a_off + $p * a_cs;
                        let av = if A == COLUMNS_CONTIGUOUS {
                            _mm512_set1_ps(*a_rows[0].add(at + r))
                        } else if A == ROWS_CONTIGUOUS {
                            _mm512_set1_ps(*groups[r / 3].add((r % 3) * rs + $p))
                        } else {
                            _mm512_set1_ps(*a_rows[r].add(at))
                        };
                        for (x, &b) in acc_r.iter_mut().zip(&bv) {
                            *x = _mm512_fmadd_ps(av, b, *x);
                        }
                    }
                };
            }
            for _ in 0..self.k / 4 {
                if FETCH && fetch.lines > 0 {
                    _mm_prefetch::<_MM_HINT_T1>(fetch.next as *const i8);
                    fetch.next = fetch.next.wrapping_add(16);
                    fetch.lines -= 1;
                }
                step!(0);
                step!(1);
                step!(2);
                step!(3);
                a_off += 4 * a_cs;
                if A == ROWS_CONTIGUOUS {
                    groups = groups.map(|g| opaque(g.add(4)));
                }
                b_p = b_p.add(4 * ldb);
            }
            for _ in 0..self.k % 4 {
                step!(0);
                a_off += a_cs;
                if A == ROWS_CONTIGUOUS {
                    groups = groups.map(|g| opaque(g.add(1)));
                }
                b_p = b_p.add(ldb);
            }
            if FETCH {
                self.fetch.set(fetch);
            }
            for (r, acc_r) in acc.iter().enumerate() {
                let c_row = self.c.add((i + r) * self.ldc + j);
                for (v, &x) in acc_r.iter().enumerate() {
                    let out = c_row.add(16 * v);
                    let x = if self.accumulate {
                        _mm512_add_ps(_mm512_maskz_loadu_ps(mask(v), out), x)
                    } else {
                        x
                    };
                    _mm512_mask_storeu_ps(out, mask(v), x);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::{naive_matmul as naive, random_vec};

    #[test]
    fn pack_transposed_matches_definition() {
        // kvc with and without a remainder of the 8-row blocks, dh = 16 (register
        // blocks) and dh = 12 (element path), a reused buffer with stale contents.
        let mut out = vec![f32::NAN; 3];
        for (kvc, dh, stride) in [(21, 16, 32), (16, 16, 16), (5, 12, 16), (0, 8, 16)] {
            let width = dh + 4;
            let src = random_vec((kvc * dh) as u64 + 1, kvc.max(1) * width, 1.0);
            let m = MatRef::strided(&src, kvc, dh, width);
            out.iter_mut().for_each(|x| *x = f32::NAN);
            pack_transposed(m, stride, &mut out);
            assert_eq!(out.len(), dh * stride);
            for c in 0..dh {
                for j in 0..stride {
                    let want = if j < kvc { src[j * width + c] } else { 0.0 };
                    assert_eq!(out[c * stride + j], want, "kvc {kvc} dh {dh} ({c}, {j})");
                }
            }
        }
    }

    #[test]
    fn fetching_lines_changes_no_result() {
        // A [64, 512] x [512, 32] product (P·V's shape) takes the lines of a 2,000-float
        // buffer as it goes (AVX-512: one per four steps; 6 tiles of 512 steps have room
        // for all 125) and gives the same bits as without.
        let (m, n, k) = (64, 32, 512);
        let a_buf = random_vec(3, m * k, 1.0);
        let b_buf = random_vec(4, k * n, 1.0);
        let (a, b) = (MatRef::new(&a_buf, m, k), MatRef::new(&b_buf, k, n));
        let later = vec![0.5f32; 2000];
        for wide in [false, true] {
            let mut plain = vec![f32::NAN; m * n];
            let mut none = LineFetch::NONE;
            matmul_tiles_with(wide, &mut none, &mut plain, n, a, b, false);
            let mut fetched = vec![f32::NAN; m * n];
            let mut fetch = LineFetch::of(&later);
            assert_eq!(fetch.lines, 125);
            matmul_tiles_with(wide, &mut fetch, &mut fetched, n, a, b, false);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&plain), bits(&fetched), "wide {wide}");
            #[cfg(target_arch = "x86_64")]
            if wide && std::arch::is_x86_feature_detected!("avx512f") {
                assert_eq!(fetch.lines, 0);
                assert_eq!(fetch.next, later.as_ptr().wrapping_add(16 * 125));
            }
        }
    }

    #[test]
    fn matches_naive_for_tile_remainders_strides_and_accumulation() {
        // m over 1..=13 covers every remainder of the 6-row tile; n = 8, 16, 24, 40
        // the 8- and 16-wide column tiles; k every remainder of the AVX-512 tile's
        // four steps; a transposed, strided left operand; a right
        // operand whose rows are strided; and a fallback shape (n = 12).
        // With AVX-512: m = 23 and 27 every row panel (12, 8, 4, 2, 1), n = 56 and 72
        // the 32-wide tiles and the masked 8-lane remainder; m = 16, 28 and 64 (4 rows
        // over a multiple of 12) the last panels as 8 + 8.
        let shapes = [
            (1, 8, 1),
            (7, 16, 5),
            (13, 24, 32),
            (12, 40, 3),
            (5, 12, 7),
            (23, 56, 9),
            (27, 72, 4),
            (16, 40, 5),
            (28, 56, 6),
            (64, 32, 7),
        ];
        for ((m, n, k), wide) in shapes.into_iter().flat_map(|s| [(s, false), (s, true)]) {
            // The left operand's rows contiguous, its columns contiguous (transposed),
            // or neither (every other element of each row).
            for (row_stride, col_stride) in [(k + 3, 1), (1, m + 2), (2 * k + 3, 2)] {
                let a_buf = random_vec((m * 100 + n) as u64, (m + k) * (2 * k + m + 3), 1.0);
                let a = MatRef {
                    data: &a_buf,
                    rows: m,
                    cols: k,
                    row_stride,
                    col_stride,
                };
                let ldb = n + 5;
                let b_buf = random_vec((k * 10 + n) as u64, k * ldb, 1.0);
                let b = MatRef::strided(&b_buf, k, n, ldb);
                let want = naive(a, b);
                let ldc = n + 1;
                let mut dst = vec![f32::NAN; (m - 1) * ldc + n];
                let mut none = LineFetch::NONE;
                matmul_tiles_with(wide, &mut none, &mut dst, ldc, a, b, false);
                for i in 0..m {
                    for j in 0..n {
                        let (g, w) = (dst[i * ldc + j] as f64, want[i * n + j]);
                        assert!(
                            (g - w).abs() < 1e-5 * (1.0 + w.abs()),
                            "{m}x{n}x{k} ({i},{j})"
                        );
                    }
                }
                matmul_tiles_with(wide, &mut none, &mut dst, ldc, a, b, true);
                for i in 0..m {
                    for j in 0..n {
                        let (g, w) = (dst[i * ldc + j] as f64, 2.0 * want[i * n + j]);
                        assert!((g - w).abs() < 2e-5 * (1.0 + w.abs()), "acc {m}x{n}x{k}");
                    }
                }
            }
        }
    }
}
