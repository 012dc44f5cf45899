//! The AVX-512 register tile (12 x 32, as the GEMM's) as a bare loop on operands that stay
//! in L1, against `bench`'s FMA peak per thread (a profiling aid for issue 17): how fast
//! its arithmetic can go on this CPU when nothing else happens, with A read three ways:
//! from a packed panel (one pointer), through a pointer per row (A in place, as the GEMM
//! reads it), and from three base pointers (rows 0, 5, 10; row r at base + (r % 5) lda).
//! One thread, best of 5 timings per round.
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
}

#[cfg(target_arch = "x86_64")]
fn main() {
    use std::time::Instant;
    use tile::{product, BASES, PACKED, ROWS};
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
    let b: Vec<f32> = (0..32 * kc).map(|i| (i % 5) as f32 * 0.01).collect();
    let mut out = vec![0.0f32; 12 * 32];
    let calls = 40_000;
    let flops = (calls * kc * 12 * 32 * 2) as f64;
    let time = |f: &mut dyn FnMut()| {
        (0..5)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..calls {
                    f();
                }
                flops / start.elapsed().as_secs_f64() / 1e9
            })
            .fold(0.0f64, f64::max)
    };
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
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("x86-64 only");
}
