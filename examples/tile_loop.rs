//! The AVX-512 register tile (12 x 32, as the GEMM's) as a bare loop on operands that stay
//! in L1, against `bench`'s FMA peak per thread (a profiling aid for issue 17): how fast
//! its arithmetic can go on this CPU when nothing else happens, with A read three ways:
//! from a packed panel (one pointer), through a pointer per row (A in place, as the GEMM
//! reads it), and from three base pointers (rows 0, 5, 10; row r at base + (r % 5) lda).
//! Then other shapes of 24 or more accumulators from packed panels (14 x 32, 8 x 48,
//! 6 x 64), and the same 24 accumulators fed from registers only (no loads: what the FMA
//! units do alone in this loop). One thread, best of 5 timings per round.
//!
//! `cargo run --release --example tile_loop [rounds]`
#[path = "common/args.rs"]
mod args;

#[cfg(target_arch = "x86_64")]
mod tile {
    use std::arch::x86_64::*;

    /// Rows of A: element (r, p) of the packed panel at `a + 12 p + r`.
    pub const PACKED: u8 = 0;
    /// Element (r, p) at `rows[r] + p` (rows `lda` apart).
    pub const ROWS: u8 = 1;
    /// Element (r, p) at `bases[r / 5] + (r % 5) lda + p`.
    pub const BASES: u8 = 2;

    /// `out` (12 x 32) = A (12 x kc) · B (kc x 32, packed by steps).
    ///
    /// # Safety
    /// AVX-512F is available; A holds 12 rows of `kc` (packed: `12 kc` floats), B `32 kc`,
    /// `out` 384.
    #[target_feature(enable = "avx512f")]
    #[inline(never)]
    pub unsafe fn product<const HOW: u8>(
        kc: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        out: *mut f32,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; 12];
        let rows: [*const f32; 12] = std::array::from_fn(|r| a.add(r * lda));
        let mut bases = [a, a.add(5 * lda), a.add(10 * lda)];
        let (mut packed, mut off, mut bp) = (a, 0usize, b);
        for _ in 0..kc / 4 {
            for s in 0..4 {
                let b0 = _mm512_loadu_ps(bp.add(32 * s));
                let b1 = _mm512_loadu_ps(bp.add(32 * s + 16));
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(match HOW {
                        PACKED => *packed.add(12 * s + r),
                        ROWS => *rows[r].add(off + s),
                        _ => *bases[r / 5].add((r % 5) * lda + s),
                    });
                    acc_r[0] = _mm512_fmadd_ps(av, b0, acc_r[0]);
                    acc_r[1] = _mm512_fmadd_ps(av, b1, acc_r[1]);
                }
            }
            packed = packed.add(48);
            off += 4;
            for base in bases.iter_mut() {
                *base = base.add(4);
            }
            bp = bp.add(128);
        }
        for (r, acc_r) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.add(32 * r), acc_r[0]);
            _mm512_storeu_ps(out.add(32 * r + 16), acc_r[1]);
        }
    }

    /// `out` (R x 16 NV) = A (R x kc, packed: element (r, p) at `a + R p + r`) · B (kc x
    /// 16 NV, packed by steps).
    ///
    /// # Safety
    /// AVX-512F is available; `a` holds `R kc` floats, `b` `16 NV kc`, `out` `16 NV R`.
    #[target_feature(enable = "avx512f")]
    #[inline(never)]
    pub unsafe fn shaped<const R: usize, const NV: usize>(
        kc: usize,
        a: *const f32,
        b: *const f32,
        out: *mut f32,
    ) {
        let mut acc = [[_mm512_setzero_ps(); NV]; R];
        let (mut ap, mut bp) = (a, b);
        for _ in 0..kc / 4 {
            for s in 0..4 {
                let bv: [__m512; NV] =
                    std::array::from_fn(|v| _mm512_loadu_ps(bp.add(16 * (NV * s + v))));
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*ap.add(R * s + r));
                    for (x, &bv) in acc_r.iter_mut().zip(&bv) {
                        *x = _mm512_fmadd_ps(av, bv, *x);
                    }
                }
            }
            ap = ap.add(4 * R);
            bp = bp.add(64 * NV);
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (v, &x) in acc_r.iter().enumerate() {
                _mm512_storeu_ps(out.add(16 * (NV * r + v)), x);
            }
        }
    }

    /// The 12 x 32 tile's 24 FMAs per step of k with both factors already in registers
    /// (`a`, `b` are read once, before the loop; rows four apart share a broadcast so
    /// that all of it fits the 32 registers): the FMA rate without the tile's loads.
    ///
    /// # Safety
    /// AVX-512F is available; `a` holds 4 floats, `b` 32, `out` 384.
    #[target_feature(enable = "avx512f")]
    #[inline(never)]
    pub unsafe fn registers_only(kc: usize, a: *const f32, b: *const f32, out: *mut f32) {
        let mut acc = [[_mm512_setzero_ps(); 2]; 12];
        let bv = [_mm512_loadu_ps(b), _mm512_loadu_ps(b.add(16))];
        let av: [__m512; 4] = std::array::from_fn(|r| _mm512_set1_ps(*a.add(r)));
        for _ in 0..kc {
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let av = av[r % 4];
                for (x, &bv) in acc_r.iter_mut().zip(&bv) {
                    *x = _mm512_fmadd_ps(av, bv, *x);
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.add(32 * r), acc_r[0]);
            _mm512_storeu_ps(out.add(32 * r + 16), acc_r[1]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn main() {
    use std::time::Instant;
    use tile::{product, registers_only, shaped, BASES, PACKED, ROWS};
    let rounds: usize = args::arg(1, "rounds", 3);
    if !is_x86_feature_detected!("avx512f") {
        println!("no AVX-512F: nothing to measure");
        return;
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("thread pool");
    let peak = pool
        .install(corefocus::bench::peak::fma_peak)
        .map_or(f64::NAN, |p| p.gflops);
    let (kc, lda) = (256usize, 384usize);
    let a: Vec<f32> = (0..12 * lda).map(|i| (i % 7) as f32 * 0.01).collect();
    // Room for the widest shape's B (6 x 64: 64 kc) and A (14 x 32: 14 kc).
    let b: Vec<f32> = (0..64 * kc).map(|i| (i % 5) as f32 * 0.01).collect();
    let mut out = vec![0.0f32; 14 * 32];
    let calls = 40_000;
    let flops = (calls * kc * 12 * 32 * 2) as f64;
    // `flops_per_call` / 1e9 per second, best of 5 timings of `calls` calls.
    let time_of = |flops_per_call: f64, f: &mut dyn FnMut()| {
        (0..5)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..calls {
                    f();
                }
                flops_per_call * calls as f64 / start.elapsed().as_secs_f64() / 1e9
            })
            .fold(0.0f64, f64::max)
    };
    let time = |f: &mut dyn FnMut()| time_of(flops / calls as f64, f);
    println!("FMA peak of one thread (bench's yardstick): {peak:.1} GFLOP/s");
    for round in 1..=rounds {
        let (a, b, o) = (a.as_ptr(), b.as_ptr(), out.as_mut_ptr());
        // SAFETY: AVX-512F was detected; `a` holds 12 rows of lda >= kc floats (and the
        // packed panel's 12 kc fit in it), `b` 32 kc floats, `out` 384.
        let packed = time(&mut || unsafe { product::<PACKED>(kc, a, lda, b, o) });
        let rows = time(&mut || unsafe { product::<ROWS>(kc, a, lda, b, o) });
        let bases = time(&mut || unsafe { product::<BASES>(kc, a, lda, b, o) });
        println!(
            "round {round}: packed panel {packed:.1} ({:.0}%), a pointer per row {rows:.1} \
             ({:.0}%), three bases {bases:.1} ({:.0}%) GFLOP/s",
            100.0 * packed / peak,
            100.0 * rows / peak,
            100.0 * bases / peak
        );
        // Each shape's own FLOPs per call: two per FMA, rows x columns x kc FMAs.
        let shape = |rows: usize, cols: usize, f: &mut dyn FnMut()| {
            let g = time_of((2 * rows * cols * kc) as f64, f);
            format!("{rows} x {cols} {g:.1} ({:.0}%)", 100.0 * g / peak)
        };
        // SAFETY: as above; `a` holds 12 lda >= 14 kc floats and `b` 64 kc, so every
        // shape's packed panels fit, and `out` 14 x 32 = 7 x 64 floats.
        let (s14, s8, s6, regs) = unsafe {
            (
                shape(14, 32, &mut || shaped::<14, 2>(kc, a, b, o)),
                shape(8, 48, &mut || shaped::<8, 3>(kc, a, b, o)),
                shape(6, 64, &mut || shaped::<6, 4>(kc, a, b, o)),
                time(&mut || registers_only(kc, a, b, o)),
            )
        };
        println!(
            "round {round}: other tiles from packed panels {s14}, {s8}, {s6} GFLOP/s; \
             12 x 32 from registers only (no loads) {regs:.1} ({:.0}%)",
            100.0 * regs / peak
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("x86-64 only");
}
