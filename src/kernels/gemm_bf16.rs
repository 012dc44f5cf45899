//! bf16 matrix products at reduced precision (`--precision bf16`: inference, and the
//! linear layers of mixed-precision training): on Intel AMX tiles (Sapphire Rapids and
//! newer Xeons) where the CPU has them, else with AVX512-BF16's `vdpbf16ps` (AMD Zen 4 and
//! newer, Intel Cooper Lake). The right operand is rounded to bf16 when packed (weights
//! once for inference, every operand per product in training); each product rounds its
//! left operand (the activations) to bf16 and accumulates in f32. Both engines read the
//! same packed operands and compute the same 32 x 32 blocks; products of two bf16 values
//! are exact in f32 (both instructions flush subnormals to zero), so they differ only in
//! the order of the f32 sums.
//!
//! AMX: one `tdpbf16ps` multiplies a 16 x 32 by a 32 x 16 tile (16,384 flops); a core
//! issues one every 16 cycles, about 16 times its f32 FMA rate, at bf16's 8-bit mantissa
//! (relative rounding error 2^-9 per operand). Tiles live in eight 1 KiB registers
//! (tmm0-7), configured per thread with `ldtilecfg` and released with `tilerelease`. Rust
//! has no stable AMX intrinsics, so the few tile instructions are inline assembly; the
//! kernel keeps a 32 x 32 block of the result in tmm0-3, the two 16-row tiles of the left
//! operand in tmm4-5 and the two 16-column tiles of the right operand in tmm6-7. Linux
//! hands out the tile state only on request (`arch_prctl(ARCH_REQ_XCOMP_PERM)`, once per
//! process): [`engine`] asks.
//!
//! AVX512-BF16: one `vdpbf16ps` adds 16 lanes of pair products (a[i, 2p] b[2p, j] +
//! a[i, 2p+1] b[2p+1, j]), twice the flops of an f32 FMA; the B tiles' rows are exactly
//! such pairs of 16 columns, and an A pair is one broadcast 32-bit word. The block is
//! computed 8 rows at a time, 8 x 32 in 16 zmm accumulators.

use super::epilogue::Epilogue;
use super::fastmath::simd_fn;
use super::gemm_x86::Dst;
use super::matref::MatRef;
use rayon::prelude::*;
use std::arch::asm;
use std::sync::OnceLock;

/// Rows of an A tile and of a C tile; also the pairs of k in a B tile.
const TILE_ROWS: usize = 16;
/// k per tile step (32 bf16 = 64 bytes per tile row).
const TILE_K: usize = 32;
/// Columns of a B / C tile (16 f32 = 64 bytes per C row).
const TILE_COLS: usize = 16;
/// u16 per tile (1 KiB).
const TILE_LEN: usize = TILE_ROWS * TILE_K;
/// The kernel's block of the result: 2 x 2 tiles.
const BLOCK_ROWS: usize = 2 * TILE_ROWS;
const BLOCK_COLS: usize = 2 * TILE_COLS;

/// How this CPU multiplies in bf16.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Engine {
    /// Intel AMX tiles.
    Amx,
    /// AVX512-BF16 vector dot products.
    Avx512,
}

/// The fastest bf16 engine of this CPU, if any (decided once). `COREFOCUS_AMX=off` in the
/// environment leaves AMX out (to compare the engines on one machine), `COREFOCUS_BF16=off`
/// both (to see, and test, what a CPU without bf16 arithmetic does).
pub fn engine() -> Option<Engine> {
    static ENGINE: OnceLock<Option<Engine>> = OnceLock::new();
    *ENGINE.get_or_init(|| {
        let off = |var: &str| std::env::var(var).is_ok_and(|v| v == "off");
        if off("COREFOCUS_BF16") {
            None
        } else if !off("COREFOCUS_AMX") && Engine::Amx.runs() {
            Some(Engine::Amx)
        } else if Engine::Avx512.runs() {
            Some(Engine::Avx512)
        } else {
            None
        }
    })
}

impl Engine {
    /// Whether this engine runs on this CPU (whatever the environment says).
    fn runs(self) -> bool {
        match self {
            Engine::Amx => amx_granted(),
            Engine::Avx512 => {
                is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
            }
        }
    }
}

/// Whether this CPU multiplies in bf16 at all ([`engine`]).
pub fn available() -> bool {
    engine().is_some()
}

/// Whether this CPU has AMX-BF16 and the kernel granted this process the tile state (the
/// grant holds for every thread of the process).
fn amx_granted() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(ask_for_amx)
}

fn ask_for_amx() -> bool {
    // CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
    // (Leaf 7 reports zeros where a feature is absent.)
    let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
    let cpu = edx & (1 << 22) != 0 && edx & (1 << 24) != 0;
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with this request only changes which extended states the
    // process may use; it reads and writes no memory of ours.
    cpu && unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    } == 0
}

/// f32 to bf16, rounding to nearest even (NaN stays NaN). Branch-free, so that loops
/// over it vectorise.
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    let quiet_nan = (bits >> 16) | 0x40;
    (if bits & 0x7fff_ffff > 0x7f80_0000 {
        quiet_nan
    } else {
        rounded
    }) as u16
}

simd_fn! {
    /// `dst[i] = to_bf16(src[i])`.
    fn round_slice(dst: &mut [u16], src: &[f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = to_bf16(*s);
        }
    }
}

simd_fn! {
    /// One B tile (see [`PackedBf16`]) from `src`'s `ks` rows of `cols` contiguous values,
    /// rows `row_stride` apart: rows 2r and 2r + 1 interleave into tile row r (value c of
    /// each as the pair of column c).
    fn fill_tile_from_rows(tile: &mut [u16], src: &[f32], row_stride: usize, ks: usize, cols: usize) {
        for (r, out) in tile.chunks_exact_mut(2 * TILE_COLS).take(ks.div_ceil(2)).enumerate() {
            let even = &src[2 * r * row_stride..][..cols];
            if 2 * r + 1 < ks {
                let odd = &src[(2 * r + 1) * row_stride..][..cols];
                for ((pair, &x0), &x1) in out.chunks_exact_mut(2).zip(even).zip(odd) {
                    pair[0] = to_bf16(x0);
                    pair[1] = to_bf16(x1);
                }
            } else {
                for (pair, &x0) in out.chunks_exact_mut(2).zip(even) {
                    pair[0] = to_bf16(x0);
                }
            }
        }
    }
}

simd_fn! {
    /// One B tile from `src`'s `cols` columns of `ks` contiguous values (k), columns
    /// `col_stride` apart: a column's values (k = 2r, 2r + 1) are one pair of tile row r.
    fn fill_tile_from_columns(tile: &mut [u16], src: &[f32], col_stride: usize, ks: usize, cols: usize) {
        for c in 0..cols {
            let run = &src[c * col_stride..][..ks];
            for (p, &x) in run.iter().enumerate() {
                tile[(p / 2) * 2 * TILE_COLS + 2 * c + p % 2] = to_bf16(x);
            }
        }
    }
}

simd_fn! {
    /// One A tile (16 rows x 32 k) from `src` whose 16 rows are contiguous at each k, the
    /// k `k_stride` apart (`rows` of them, `ks` k).
    fn fill_tile_transposed(tile: &mut [u16], src: &[f32], k_stride: usize, ks: usize, rows: usize) {
        for p in 0..ks {
            let run = &src[p * k_stride..][..rows];
            for (r, &x) in run.iter().enumerate() {
                tile[r * TILE_K + p] = to_bf16(x);
            }
        }
    }
}

/// A right-hand operand `[k, n]` rounded to bf16 and laid out as the kernel reads it: for
/// each block of 32 columns, for each step of 32 in k, its two B tiles (1 KiB each, row r
/// holding the pairs (k = 2r, 2r + 1) of the tile's 16 columns), so that a block's tiles
/// stream in order. k and n are padded with zeros to whole tiles.
pub struct PackedBf16 {
    k: usize,
    n: usize,
    k_steps: usize,
    col_blocks: usize,
    tiles: Vec<u16>,
}

impl PackedBf16 {
    /// Rounds and packs `b` (`[k, n]`, any strides). Training packs every weight twice
    /// per step and the activations once per weight gradient, so the two layouts it meets
    /// (rows or columns contiguous) convert whole runs with the vector rounding, on the
    /// rayon pool when `b` is large.
    pub fn new(b: MatRef) -> PackedBf16 {
        b.check("rhs");
        let (k, n) = (b.rows, b.cols);
        let k_steps = k.div_ceil(TILE_K);
        let col_blocks = n.div_ceil(BLOCK_COLS);
        let mut tiles = take_tile_buffer(col_blocks * k_steps * 2 * TILE_LEN);
        // Tile i: column block i / 2 / k_steps, step (i / 2) % k_steps, half i % 2. Its
        // row r holds (k = 2r, 2r + 1) of each of its 16 columns; the padding stays 0.
        let fill = |(i, tile): (usize, &mut [u16])| {
            let (half, step, block) = (i % 2, (i / 2) % k_steps, i / 2 / k_steps);
            let (col0, p0) = (block * BLOCK_COLS + half * TILE_COLS, step * TILE_K);
            let cols = TILE_COLS.min(n.saturating_sub(col0));
            let ks = TILE_K.min(k - p0);
            // The buffer may hold an earlier operand: padding is written as zeros.
            if cols < TILE_COLS || ks < TILE_K {
                tile.fill(0);
            }
            if cols == 0 {
                return; // a half block past the last column: padding only
            }
            let start = p0 * b.row_stride + col0 * b.col_stride;
            if b.row_stride == 1 {
                // A column's k run is contiguous (`Wᵀ` of a row-major W).
                fill_tile_from_columns(tile, &b.data[start..], b.col_stride, ks, cols);
            } else if b.col_stride == 1 {
                // A row's columns are contiguous (row-major).
                fill_tile_from_rows(tile, &b.data[start..], b.row_stride, ks, cols);
            } else {
                for p in 0..ks {
                    for c in 0..cols {
                        let x = to_bf16(b.data[start + p * b.row_stride + c * b.col_stride]);
                        tile[(p / 2) * 2 * TILE_COLS + 2 * c + p % 2] = x;
                    }
                }
            }
        };
        if k * n >= 1 << 16 {
            tiles
                .par_chunks_exact_mut(TILE_LEN)
                .enumerate()
                .for_each(fill);
        } else {
            tiles.chunks_exact_mut(TILE_LEN).enumerate().for_each(fill);
        }
        PackedBf16 {
            k,
            n,
            k_steps,
            col_blocks,
            tiles,
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
        2 * self.tiles.len()
    }
}

impl Drop for PackedBf16 {
    fn drop(&mut self) {
        let tiles = std::mem::take(&mut self.tiles);
        let mut pool = TILE_BUFFERS.lock().unwrap_or_else(|e| e.into_inner());
        let held: usize = pool.iter().map(Vec::capacity).sum();
        if held + tiles.capacity() <= MAX_POOLED_TILE_U16 {
            pool.push(tiles);
        }
    }
}

/// Buffers of dropped [`PackedBf16`]s, for the next ones: a training step packs every
/// weight and one activation per weight gradient, and fresh buffers of several MiB cost
/// their zeroing and page faults every time.
static TILE_BUFFERS: std::sync::Mutex<Vec<Vec<u16>>> = std::sync::Mutex::new(Vec::new());

/// At most 64 MiB pooled: a MiniLM training step's packed weights (21 MiB) and
/// activations; also all a process keeps of a bf16 model it has dropped.
const MAX_POOLED_TILE_U16: usize = 32 << 20;

/// A buffer of `len` u16 with arbitrary contents: the pooled one whose capacity fits best,
/// else a new one.
fn take_tile_buffer(len: usize) -> Vec<u16> {
    let mut pool = TILE_BUFFERS.lock().unwrap_or_else(|e| e.into_inner());
    let best = pool
        .iter()
        .enumerate()
        .filter(|(_, b)| b.capacity() >= len)
        .min_by_key(|(_, b)| b.capacity())
        .map(|(i, _)| i);
    let mut buf = match best {
        Some(i) => pool.swap_remove(i),
        None => Vec::new(),
    };
    drop(pool);
    buf.resize(len, 0);
    buf
}

/// `ldtilecfg`'s 64-byte operand: palette 1, all eight tiles 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

const TILE_CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// The left operand rounded to bf16 in tiles: for each 16 rows, for each step of 32 in
/// k, one contiguous 1 KiB tile (rows padded to whole blocks and k to whole tiles with
/// zeros), so that the kernel's tile loads read whole consecutive cache lines.
struct LhsBf16 {
    data: Vec<u16>,
    k_steps: usize,
}

impl LhsBf16 {
    /// The tile of rows `16 * row_tile ..` and k `32 * step ..`.
    fn tile(&self, row_tile: usize, step: usize) -> *const u16 {
        self.data[(row_tile * self.k_steps + step) * TILE_LEN..].as_ptr()
    }
}

thread_local! {
    /// The calling thread's last left-operand buffer, reused by its next product (a fresh
    /// 3 MiB buffer per 4096-row product costs its page faults every time).
    static LHS_BUFFER: std::cell::Cell<Vec<u16>> = const { std::cell::Cell::new(Vec::new()) };
}

fn round_lhs(a: MatRef, k_steps: usize, threads: usize) -> LhsBf16 {
    let row_tiles = a.rows.next_multiple_of(BLOCK_ROWS) / TILE_ROWS;
    let mut data = LHS_BUFFER.take();
    // Every element is written below (the padding as zeros), so the buffer's old
    // contents need no clearing (zeroing 12 MiB per product was 2% of a forward pass).
    data.resize(row_tiles * k_steps * TILE_LEN, 0);
    // One band of 16 rows (all its tiles) per task.
    let round_band = |(t, band): (usize, &mut [u16])| {
        if a.row_stride == 1 && a.col_stride != 1 {
            // A transposed row-major matrix (`dyᵀ` of a weight gradient): the band's 16
            // rows are contiguous at each k.
            round_band_transposed(a, t, band, k_steps);
            return;
        }
        for r in 0..TILE_ROWS {
            let i = t * TILE_ROWS + r;
            for step in 0..k_steps {
                let row = &mut band[step * TILE_LEN + r * TILE_K..][..TILE_K];
                let p0 = step * TILE_K;
                let p1 = (p0 + TILE_K).min(a.cols);
                let (dst, pad) = row.split_at_mut(if i < a.rows { p1 - p0 } else { 0 });
                pad.fill(0);
                if dst.is_empty() {
                } else if a.col_stride == 1 {
                    let start = i * a.row_stride + p0;
                    round_slice(dst, &a.data[start..start + (p1 - p0)]);
                } else {
                    for (x, p) in dst.iter_mut().zip(p0..p1) {
                        *x = to_bf16(a.data[i * a.row_stride + p * a.col_stride]);
                    }
                }
            }
        }
    };
    let band_len = k_steps * TILE_LEN;
    if threads > 1 && a.rows * a.cols >= 1 << 16 {
        data.par_chunks_mut(band_len)
            .enumerate()
            .for_each(round_band);
    } else {
        data.chunks_mut(band_len).enumerate().for_each(round_band);
    }
    LhsBf16 { data, k_steps }
}

/// `round_lhs`'s band `t` (rows `16 t ..`) of an `a` whose rows are contiguous at each k
/// (`row_stride` 1): at each k, the band's (up to) 16 values rounded together, then
/// spread over their tile rows.
fn round_band_transposed(a: MatRef, t: usize, band: &mut [u16], k_steps: usize) {
    let i0 = t * TILE_ROWS;
    let rows = TILE_ROWS.min(a.rows.saturating_sub(i0));
    for step in 0..k_steps {
        let tile = &mut band[step * TILE_LEN..][..TILE_LEN];
        let p0 = step * TILE_K;
        let ks = TILE_K.min(a.cols.saturating_sub(p0));
        if rows < TILE_ROWS || ks < TILE_K {
            tile.fill(0);
        }
        if rows > 0 && ks > 0 {
            let start = i0 + p0 * a.col_stride;
            fill_tile_transposed(tile, &a.data[start..], a.col_stride, ks, rows);
        }
    }
}

/// `dst[i * ldc + j] (+)= Σ_p a[i, p] · b[p, j]` in bf16 with f32 accumulation, split over
/// up to `threads` rayon tasks, `epilogue` applied to each finished 32 x 32 block. Panics
/// if there is no bf16 [`engine`] or a view is out of range.
pub fn gemm_bf16(
    dst: &mut [f32],
    ldc: usize,
    a: MatRef,
    b: &PackedBf16,
    accumulate: bool,
    threads: usize,
    epilogue: Epilogue,
) {
    let engine = engine().expect("gemm_bf16: this CPU or kernel offers no bf16 arithmetic");
    gemm_with(engine, dst, ldc, a, b, accumulate, threads, epilogue);
}

/// [`gemm_bf16`] on `engine`, which must run on this CPU ([`Engine::runs`]).
#[allow(clippy::too_many_arguments)]
fn gemm_with(
    engine: Engine,
    dst: &mut [f32],
    ldc: usize,
    a: MatRef,
    b: &PackedBf16,
    accumulate: bool,
    threads: usize,
    epilogue: Epilogue,
) {
    assert!(
        engine.runs(),
        "gemm_bf16: {engine:?} does not run on this CPU"
    );
    if super::gemm_x86::start_product(dst, ldc, &a, (b.k, b.n), accumulate, &epilogue) {
        return;
    }
    let (m, n) = (a.rows, b.n);
    let lhs = round_lhs(a, b.k_steps, threads);
    let c = Dst {
        ptr: dst.as_mut_ptr(),
        ld: ldc,
    };
    let row_blocks = m.div_ceil(BLOCK_ROWS);
    // Threads split the column blocks (each streams its share of B once) unless there are
    // more row blocks than column blocks.
    let split_rows = row_blocks > b.col_blocks;
    let units = if split_rows { row_blocks } else { b.col_blocks };
    let parts = threads.min(units).max(1);
    let per_part = units.div_ceil(parts);
    let run = |t: usize| {
        let (u0, u1) = (t * per_part, ((t + 1) * per_part).min(units));
        if u0 >= u1 {
            return;
        }
        let (rows, cols) = if split_rows {
            ((u0, u1), (0, b.col_blocks))
        } else {
            ((0, row_blocks), (u0, u1))
        };
        // SAFETY: `engine` runs here (detected); the destination holds m x n (checked)
        // and part t writes only its own blocks; `lhs` and `b` are padded to whole tiles.
        unsafe { serial_blocks(engine, c, m, n, &lhs, b, rows, cols, accumulate, epilogue) };
    };
    if parts == 1 {
        run(0);
    } else {
        (0..parts).into_par_iter().for_each(run);
    }
    LHS_BUFFER.set(lhs.data);
}

/// The result's row blocks `rows.0 .. rows.1` x column blocks `cols.0 .. cols.1` on the
/// calling thread.
///
/// # Safety
/// `engine` runs on this CPU; `c` holds the `m x n` result; `lhs` has `rows.1` row blocks
/// and `b.k_steps` tiles per row; no other thread writes these blocks.
#[allow(clippy::too_many_arguments)]
unsafe fn serial_blocks(
    engine: Engine,
    c: Dst,
    m: usize,
    n: usize,
    lhs: &LhsBf16,
    b: &PackedBf16,
    rows: (usize, usize),
    cols: (usize, usize),
    accumulate: bool,
    epilogue: Epilogue,
) {
    let mut block = [0f32; BLOCK_ROWS * BLOCK_COLS];
    if engine == Engine::Amx {
        asm!("ldtilecfg [{}]", in(reg) &TILE_CONFIG, options(nostack, readonly));
    }
    let mut one = |rb: usize, cb: usize| {
        match engine {
            Engine::Amx => block_product(lhs, b, rb, cb, &mut block),
            Engine::Avx512 => block_product_avx512(lhs, b, rb, cb, &mut block),
        }
        write_block(c, m, n, rb, cb, &block, accumulate, epilogue);
    };
    // The operand read once stays in the outer loop, so the smaller one is re-read, from
    // cache: B's block of 32 columns when A is larger, A's block of 32 rows otherwise.
    let a_elems = (rows.1 - rows.0) * BLOCK_ROWS;
    let b_elems = (cols.1 - cols.0) * BLOCK_COLS;
    if a_elems > b_elems {
        for rb in rows.0..rows.1 {
            (cols.0..cols.1).for_each(|cb| one(rb, cb));
        }
    } else {
        for cb in cols.0..cols.1 {
            (rows.0..rows.1).for_each(|rb| one(rb, cb));
        }
    }
    if engine == Engine::Amx {
        asm!("tilerelease", options(nostack, nomem));
    }
}

/// Block `(rb, cb)` of the product (32 x 32, padding included) into `out`.
///
/// # Safety
/// The tile configuration is loaded on this thread; `lhs` has row block `rb` and `b`
/// column block `cb`.
unsafe fn block_product(
    lhs: &LhsBf16,
    b: &PackedBf16,
    rb: usize,
    cb: usize,
    out: &mut [f32; BLOCK_ROWS * BLOCK_COLS],
) {
    let b_block = b.tiles.as_ptr().add(cb * b.k_steps * 2 * TILE_LEN);
    asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        options(nostack, nomem)
    );
    for step in 0..b.k_steps {
        let b0 = b_block.add(step * 2 * TILE_LEN);
        asm!(
            "tileloadd tmm4, [{a0} + {s}*1]",
            "tileloadd tmm5, [{a1} + {s}*1]",
            "tileloadd tmm6, [{b0} + {s}*1]",
            "tileloadd tmm7, [{b1} + {s}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) lhs.tile(2 * rb, step),
            a1 = in(reg) lhs.tile(2 * rb + 1, step),
            b0 = in(reg) b0,
            b1 = in(reg) b0.add(TILE_LEN),
            s = in(reg) 64usize,
            options(nostack, readonly)
        );
    }
    let out = out.as_mut_ptr();
    asm!(
        "tilestored [{c0} + {s}*1], tmm0",
        "tilestored [{c1} + {s}*1], tmm1",
        "tilestored [{c2} + {s}*1], tmm2",
        "tilestored [{c3} + {s}*1], tmm3",
        c0 = in(reg) out,
        c1 = in(reg) out.add(TILE_COLS),
        c2 = in(reg) out.add(TILE_ROWS * BLOCK_COLS),
        c3 = in(reg) out.add(TILE_ROWS * BLOCK_COLS + TILE_COLS),
        s = in(reg) BLOCK_COLS * 4,
        options(nostack)
    );
}

/// [`block_product`] with AVX512-BF16 instead of tiles: the same operands, 8 rows of the
/// block at a time in 16 accumulators (two 16-column vectors per row).
///
/// # Safety
/// The CPU has AVX512-F and AVX512-BF16; `lhs` has row block `rb` and `b` column block `cb`.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn block_product_avx512(
    lhs: &LhsBf16,
    b: &PackedBf16,
    rb: usize,
    cb: usize,
    out: &mut [f32; BLOCK_ROWS * BLOCK_COLS],
) {
    use std::arch::x86_64::*;
    /// 32 bf16 values from a vector of their bits.
    #[inline(always)]
    fn as_bh(bits: __m512i) -> __m512bh {
        // SAFETY: both are 64 bytes of plain data; every bit pattern is a valid value.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(bits) }
    }
    const ROWS: usize = 8;
    let b_block = b.tiles.as_ptr().add(cb * b.k_steps * 2 * TILE_LEN);
    for sub in 0..BLOCK_ROWS / ROWS {
        let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
        // Rows `sub * 8 ..` of the block: in A tile `2 rb + sub / 2`, from its row
        // `(sub % 2) * 8`.
        let (a_tile, a_row0) = (2 * rb + sub / 2, (sub % 2) * ROWS);
        for step in 0..b.k_steps {
            let b0 = b_block.add(step * 2 * TILE_LEN);
            let a = lhs.tile(a_tile, step).add(a_row0 * TILE_K);
            // Pair p of a B tile row: 16 columns x (k = 2p, 2p + 1), 64 bytes.
            for p in 0..TILE_K / 2 {
                let bv = [
                    as_bh(_mm512_loadu_si512(b0.add(p * 2 * TILE_COLS).cast())),
                    as_bh(_mm512_loadu_si512(
                        b0.add(TILE_LEN + p * 2 * TILE_COLS).cast(),
                    )),
                ];
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let pair = (a.add(r * TILE_K + 2 * p) as *const i32).read_unaligned();
                    let av = as_bh(_mm512_set1_epi32(pair));
                    acc_r[0] = _mm512_dpbf16_ps(acc_r[0], av, bv[0]);
                    acc_r[1] = _mm512_dpbf16_ps(acc_r[1], av, bv[1]);
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            let row = out.as_mut_ptr().add((sub * ROWS + r) * BLOCK_COLS);
            _mm512_storeu_ps(row, acc_r[0]);
            _mm512_storeu_ps(row.add(TILE_COLS), acc_r[1]);
        }
    }
}

/// Writes (or adds) the finished block `(rb, cb)` into `c`, the rows and columns inside
/// the `m x n` result only, then applies `epilogue` to them.
///
/// # Safety
/// `c` holds the `m x n` result; no other thread writes this block.
#[allow(clippy::too_many_arguments)]
unsafe fn write_block(
    c: Dst,
    m: usize,
    n: usize,
    rb: usize,
    cb: usize,
    block: &[f32; BLOCK_ROWS * BLOCK_COLS],
    accumulate: bool,
    epilogue: Epilogue,
) {
    let (row0, col0) = (rb * BLOCK_ROWS, cb * BLOCK_COLS);
    let (h, w) = (BLOCK_ROWS.min(m - row0), BLOCK_COLS.min(n - col0));
    let mut rows: [&mut [f32]; BLOCK_ROWS] = Default::default();
    for (r, slot) in rows.iter_mut().enumerate().take(h) {
        let dst = std::slice::from_raw_parts_mut(c.ptr.add((row0 + r) * c.ld + col0), w);
        let src = &block[r * BLOCK_COLS..r * BLOCK_COLS + w];
        if accumulate {
            dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
        } else if let (Ok(d), Ok(s)) = (
            <&mut [f32; BLOCK_COLS]>::try_from(&mut *dst),
            <&[f32; BLOCK_COLS]>::try_from(src),
        ) {
            // A whole row of the block: a fixed-size copy, two vector moves (a
            // `copy_from_slice` here was a `memmove` call per row, 4% of a forward pass).
            *d = *s;
        } else {
            dst.copy_from_slice(src);
        }
        *slot = dst;
    }
    epilogue.apply_rows(&mut rows[..h], col0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_bf16(x: u16) -> f32 {
        half::bf16::from_bits(x).to_f32()
    }

    /// The product of the bf16-rounded operands in f64: what the kernel computes, up to
    /// f32 accumulation.
    fn rounded_product(a: MatRef, b: MatRef) -> Vec<f64> {
        let r = |x: f32| from_bf16(to_bf16(x)) as f64;
        let mut out = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                out[i * b.cols + j] = (0..a.cols)
                    .map(|p| {
                        r(a.data[i * a.row_stride + p * a.col_stride])
                            * r(b.data[p * b.row_stride + j * b.col_stride])
                    })
                    .sum();
            }
        }
        out
    }

    #[test]
    fn rounding_to_bf16_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: to the even one (1).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: to the even one.
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0 + 1e-6), 0x3f81);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::MAX)), f32::INFINITY);
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
        // The same as the `half` crate's rounding over a spread of values.
        let mut rng = crate::rng::Rng::new(7);
        for _ in 0..100_000 {
            let x = f32::from_bits(rng.next_u64() as u32);
            let ours = to_bf16(x);
            let theirs = half::bf16::from_f32(x);
            if x.is_nan() {
                assert!(half::bf16::from_bits(ours).is_nan());
            } else {
                assert_eq!(ours, theirs.to_bits(), "{x:e}");
            }
        }
    }

    #[test]
    fn products_match_the_rounded_operands_in_every_shape() {
        let engines: Vec<Engine> = [Engine::Amx, Engine::Avx512]
            .into_iter()
            .filter(|e| e.runs())
            .collect();
        if engines.is_empty() {
            eprintln!("skipped: no bf16 arithmetic on this CPU");
            return;
        }
        for engine in engines {
            products_match_on(engine);
        }
    }

    fn products_match_on(engine: Engine) {
        let mut rng = crate::rng::Rng::new(5);
        for &(m, k, n) in &[
            (1, 1, 1),
            (37, 70, 45),
            (128, 384, 384),
            (33, 64, 100),
            (5, 31, 17),
            (64, 1536, 33),
            (40, 300, 250),
        ] {
            for layout in 0..3 {
                products_match_in_layout(engine, &mut rng, (m, k, n), layout);
            }
        }
    }

    /// Layout 0: A row-major, B = Wᵀ of a row-major weight (a linear layer's forward);
    /// 1: A transposed (rows contiguous at each k), B row-major (a weight gradient
    /// `dyᵀ x`); 2: A row-major, B with neither stride 1.
    fn products_match_in_layout(
        engine: Engine,
        rng: &mut crate::rng::Rng,
        (m, k, n): (usize, usize, usize),
        layout: usize,
    ) {
        let a: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
        let w: Vec<f32> = (0..2 * n * k).map(|_| rng.normal() as f32).collect();
        let bias: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        let (av, bv) = match layout {
            0 => (MatRef::new(&a, m, k), MatRef::new(&w, n, k).t()),
            1 => (MatRef::new(&a, k, m).t(), MatRef::new(&w, k, n)),
            _ => (
                MatRef::new(&a, m, k),
                MatRef {
                    data: &w,
                    rows: k,
                    cols: n,
                    row_stride: 2,
                    col_stride: 2 * k,
                },
            ),
        };
        let packed = PackedBf16::new(bv);
        let want = rounded_product(av, bv);
        for threads in [1, 2, 3] {
            for accumulate in [false, true] {
                let ldc = n + 3;
                let mut dst = vec![1.0f32; (m - 1) * ldc + n];
                let epilogue = Epilogue {
                    bias: Some(&bias),
                    gelu: false,
                };
                gemm_with(
                    engine, &mut dst, ldc, av, &packed, accumulate, threads, epilogue,
                );
                for i in 0..m {
                    for j in 0..n {
                        let expect =
                            want[i * n + j] + bias[j] as f64 + if accumulate { 1.0 } else { 0.0 };
                        let got = dst[i * ldc + j] as f64;
                        // f32 accumulation of k products of size ~1.
                        assert!(
                            (got - expect).abs() <= 1e-5 * (k as f64).sqrt() * 4.0 + 1e-5,
                            "{engine:?} {m}x{k}x{n} layout {layout} threads {threads} acc {accumulate} [{i},{j}]: {got} vs {expect}"
                        );
                    }
                    // The padding between rows is never written.
                    if i + 1 < m {
                        assert!(dst[i * ldc + n..(i + 1) * ldc].iter().all(|&x| x == 1.0));
                    }
                }
            }
        }
    }
}
