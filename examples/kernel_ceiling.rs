//! How close the f32 GEMM's register tile comes to `bench`'s FMA peak when nothing but
//! the tile runs (a profiling aid for issue 17's "share of the FMA peak"): products with
//! weights packed once (`gemm_packed`), repeated on operands that stay in L1, in L2, and
//! at the model's 4096 x 384 x 384 shape, on one thread, against the peak per thread.
//! The tile's rate bounds what any training step can reach, since every FLOP `bench`
//! counts is a product.
//!
//! `cargo run --release --example kernel_ceiling [rounds]`
#[path = "common/args.rs"]
mod args;
#[cfg(target_arch = "x86_64")]
fn main() {
    use corefocus::kernels::gemm_x86::{gemm_packed, Isa, PackedB};
    use corefocus::kernels::matmul::MatRef;
    use std::time::Instant;
    let rounds: usize = args::arg(1, "rounds", 5);
    let Some(peak) = corefocus::bench::peak::fma_peak() else {
        println!("no AVX2/FMA: nothing to measure");
        return;
    };
    let per_thread = peak.gflops / rayon::current_num_threads() as f64;
    println!(
        "FMA peak ({}, bench's yardstick): {:.1} GFLOP/s on {} threads, {per_thread:.1} per thread; GEMM tile {:?}",
        peak.isa,
        peak.gflops,
        rayon::current_num_threads(),
        Isa::best()
    );
    // (m, n, k, repetitions per timing, where the operands live)
    let shapes = [
        (12, 32, 256, 40_000, "one tile, L1"),
        (48, 128, 384, 4_000, "L2"),
        (192, 512, 384, 250, "L2"),
        (4096, 384, 384, 8, "the model's q/k/v/o product"),
    ];
    for (m, n, k, reps, place) in shapes {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 11) as f32 * 0.1).collect();
        // Weights as the model stores them ([out, in]), used transposed.
        let packed = PackedB::new(Isa::best(), MatRef::new(&b, n, k).t());
        let mut c = vec![0.0f32; m * n];
        let mut best = f64::MAX;
        for _ in 0..rounds {
            let t = Instant::now();
            for _ in 0..reps {
                let a = MatRef::new(&a, m, k);
                gemm_packed(&mut c, n, a, &packed, false, 1, Default::default());
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        let gflops = 2.0 * (m * n * k * reps) as f64 / best / 1e9;
        println!(
            "{m} x {n} x {k} ({place}), 1 thread: {gflops:.1} GFLOP/s, {:.0}% of the peak per thread",
            100.0 * gflops / per_thread
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("the GEMM kernels are x86-64 only");
}
