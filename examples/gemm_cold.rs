//! Products with prepacked weights at serving sizes, with the weights in cache ("hot":
//! one matrix multiplied again and again), as a forward pass meets them ("cold":
//! 48 MiB of weight matrices taken in turn, so each comes from L3 or memory) and after
//! the main thread swept 256 MiB of other memory before each round ("swept": the weights
//! come from memory, and the pool's threads sat idle meanwhile), best of
//! 20 rounds (a development aid; issue 17's prefetch of the next weight panel), in f32
//! and, where the CPU has AMX or AVX512-BF16, in bf16 (`--precision bf16`), where it has
//! AVX512-VNNI in int8 (`--precision int8`; the time includes quantising the activations).
//!
//! `cargo run --release --example gemm_cold [threads]`
#[path = "common/args.rs"]
mod args;
#[cfg(target_arch = "x86_64")]
fn main() {
    use corefocus::kernels::epilogue::Epilogue;
    use corefocus::kernels::gemm_bf16::{self, gemm_bf16, PackedBf16};
    use corefocus::kernels::gemm_int8::{self, gemm_int8, PackedI8};
    use corefocus::kernels::gemm_x86::{gemm_packed, Isa, PackedB};
    use corefocus::kernels::matmul::MatRef;
    use std::time::Instant;
    let reps = 20;
    let threads: usize = args::arg(1, "threads", 1);
    // (m, n, k): MiniLM-L6's products for one 128-token request, and a training batch's.
    for &(m, n, k) in &[
        (128usize, 384usize, 384usize),
        (128, 1536, 384),
        (128, 384, 1536),
        (4096, 384, 384),
    ] {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let count = (48 << 20) / (4 * k * n);
        type Weights = (PackedB, Option<PackedBf16>, Option<PackedI8>);
        let weights: Vec<Weights> = (0..count)
            .map(|s| {
                let b: Vec<f32> = (0..k * n)
                    .map(|i| (((i + s) * 104_729) % 1000) as f32 / 1000.0 - 0.5)
                    .collect();
                let b = MatRef::new(&b, k, n);
                let bf16 = gemm_bf16::available().then(|| PackedBf16::new(b));
                let int8 = gemm_int8::available().then(|| PackedI8::new(b));
                (PackedB::new(Isa::best(), b), bf16, int8)
            })
            .collect();
        let mut c = vec![0.0f32; m * n];
        let mut other = vec![0u8; 256 << 20];
        let precisions: Vec<&str> = [
            Some("f32"),
            gemm_bf16::available().then_some("bf16"),
            gemm_int8::available().then_some("int8"),
        ]
        .into_iter()
        .flatten()
        .collect();
        for (label, cold, precision) in [("hot", false), ("cold", true), ("swept", true)]
            .into_iter()
            .flat_map(|(l, c)| precisions.iter().map(move |&p| (l, c, p)))
        {
            let mut best = f64::MAX;
            for _ in 0..reps {
                if label == "swept" {
                    sweep(&mut other);
                }
                let t = Instant::now();
                for i in 0..count {
                    let (b, b16, b8) = &weights[if cold { i } else { 0 }];
                    let a = MatRef::new(&a, m, k);
                    match (precision, b16, b8) {
                        ("bf16", Some(b16), _) => {
                            gemm_bf16(&mut c, n, a, b16, false, threads, Epilogue::default())
                        }
                        ("int8", _, Some(b8)) => {
                            gemm_int8(&mut c, n, a, b8, false, threads, Epilogue::default())
                        }
                        _ => gemm_packed(&mut c, n, a, b, false, threads, Epilogue::default()),
                    }
                }
                best = best.min(t.elapsed().as_secs_f64() / count as f64);
            }
            let flops = 2.0 * (m * n * k) as f64;
            println!(
                "{m} x {n} x {k}, {threads} thread(s), {label}, {precision}: {:.1} us ({:.0} GFLOP/s)",
                best * 1e6,
                flops / best / 1e9
            );
        }
    }
}

/// Writes and reads all of `buf`, pushing the weights out of the caches (as other
/// processes' work between two requests does).
#[cfg(target_arch = "x86_64")]
fn sweep(buf: &mut [u8]) {
    buf.iter_mut().for_each(|b| *b = b.wrapping_add(1));
    std::hint::black_box(buf.iter().map(|&b| b as u64).sum::<u64>());
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {}
