//! The product that packs the weights per call (`gemm`, training) against the one with
//! weights packed once (`gemm_packed`, inference) at MiniLM's 8 x 512 forward shapes, best
//! of `reps`, interleaved (a development aid: the prepacked panels' cache-line alignment).
//!
//! `cargo run --release --example packed_vs_unpacked [reps] [threads]`
#[path = "common/args.rs"]
mod args;
#[cfg(target_arch = "x86_64")]
fn main() {
    use corefocus::kernels::epilogue::Epilogue;
    use corefocus::kernels::gemm_x86::{gemm_packed, gemm_with_blocking, Isa, PackedB};
    use corefocus::kernels::matmul::MatRef;
    use std::time::Instant;
    let reps: usize = args::arg(1, "reps", 10);
    let threads: usize = args::arg(2, "threads", 2);
    // This example keeps the system allocator (no `CountingAlloc`): where its large blocks
    // start relative to a cache line.
    for len in [147_456usize, 589_824] {
        let v = vec![0.0f32; len];
        println!(
            "a vec![0.0f32; {len}] from the system allocator starts {} bytes past a 64-byte line",
            v.as_ptr() as usize % 64
        );
    }
    for &(m, n, k, gelu) in &[
        (4096usize, 384usize, 384usize, false),
        (4096, 1536, 384, false),
        (4096, 1536, 384, true),
        (4096, 384, 1536, false),
    ] {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 104_729) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let bias: Vec<f32> = (0..n).map(|i| i as f32 * 1e-3).collect();
        let a = MatRef::new(&a, m, k);
        let bt = MatRef::new(&w, n, k).t();
        let packed = PackedB::new(Isa::best(), bt);
        let ep = Epilogue {
            bias: Some(&bias),
            gelu,
        };
        let mut c = vec![0.0f32; m * n];
        let (mut t_un, mut t_pk) = (f64::MAX, f64::MAX);
        for _ in 0..reps {
            let t = Instant::now();
            let isa = Isa::best();
            gemm_with_blocking(isa, isa.blocking(), &mut c, n, a, bt, false, threads, ep);
            t_un = t_un.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            gemm_packed(&mut c, n, a, &packed, false, threads, ep);
            t_pk = t_pk.min(t.elapsed().as_secs_f64());
        }
        let gf = |s: f64| 2.0 * (m * n * k) as f64 / s / 1e9;
        println!(
            "{m}x{n}x{k} gelu={gelu}: per-call packing {:.1}  prepacked {:.1} GFLOP/s",
            gf(t_un),
            gf(t_pk)
        );
    }
}
#[cfg(not(target_arch = "x86_64"))]
fn main() {}
