//! Block-size tuning for the gemm (its best micro-kernel; COREFOCUS_GEMM_ISA=avx2 for the AVX2 one) (a development aid): several `Blocking`s run
//! interleaved on the model's shapes, one thread and the pool: the products that pack
//! both operands (training), then those with weights packed once under each blocking
//! (inference: a request's 128 rows and an 8 x 512 batch's 4096). Each cell is the best
//! and (in brackets) the median GFLOP/s of N interleaved rounds.
//!
//! `cargo run --release --example gemm_tune [reps] kc,mc,nc kc,mc,nc ...`
#[path = "common/args.rs"]
mod args;
#[cfg(target_arch = "x86_64")]
fn main() {
    use corefocus::kernels::gemm_x86::{gemm_packed, gemm_with_blocking, Blocking, Isa, PackedB};
    use corefocus::kernels::matmul::MatRef;
    use std::time::Instant;
    let reps: usize = args::arg(1, "reps", 10);
    // Each blocking `kc,mc,nc`, all three positive; one that is not stops the program
    // with its position (it used to be dropped without a word).
    let blockings: Vec<Blocking> = std::env::args()
        .enumerate()
        .skip(2)
        .map(|(i, text)| {
            let v: Vec<usize> = text.split(',').filter_map(|x| x.parse().ok()).collect();
            if v.len() != 3 || v.contains(&0) {
                eprintln!("argument {i} (blocking): {text:?} is not kc,mc,nc with each above 0");
                std::process::exit(2);
            }
            Blocking {
                kc: v[0],
                mc: v[1],
                nc: v[2],
            }
        })
        .collect();
    if reps == 0 || blockings.is_empty() {
        eprintln!("usage: gemm_tune [reps >= 1] kc,mc,nc [kc,mc,nc ...]");
        std::process::exit(2);
    }
    println!("{blockings:?}");
    // (m, n, k, a transposed, b transposed)
    let shapes = [
        (4096, 384, 384, false, true),
        (4096, 1536, 384, false, true),
        (4096, 384, 1536, false, true),
        (4096, 384, 1536, false, false),
        (4096, 1536, 384, false, false),
        (384, 384, 4096, true, false),
        (1536, 384, 4096, true, false),
        (384, 1536, 4096, true, false),
        (2048, 3072, 768, false, true),
        (2048, 768, 3072, false, true),
        (768, 3072, 2048, true, false),
    ];
    for threads in [1, 2] {
        for &(m, n, k, ta, tb) in &shapes {
            let a_buf: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1).collect();
            let b_buf: Vec<f32> = (0..k * n).map(|i| (i % 11) as f32 * 0.1).collect();
            let a = if ta {
                MatRef::new(&a_buf, k, m).t()
            } else {
                MatRef::new(&a_buf, m, k)
            };
            let b = if tb {
                MatRef::new(&b_buf, n, k).t()
            } else {
                MatRef::new(&b_buf, k, n)
            };
            let mut c = vec![0.0f32; m * n];
            let mut times = vec![Vec::new(); blockings.len()];
            for _ in 0..reps {
                for (slot, &bl) in blockings.iter().enumerate() {
                    let t = Instant::now();
                    gemm_with_blocking(
                        Isa::best(),
                        bl,
                        &mut c,
                        n,
                        a,
                        b,
                        false,
                        threads,
                        Default::default(),
                    );
                    times[slot].push(t.elapsed().as_secs_f64());
                }
            }
            println!("{threads}t {m}x{n}x{k}: {}", rates(m * n * k, times));
        }
    }
    // Weights `[n, k]` packed once per blocking, as the model stores and packs them.
    let packed_shapes = [128, 4096].into_iter().flat_map(|m| {
        [
            (m, 1152, 384),
            (m, 384, 384),
            (m, 1536, 384),
            (m, 384, 1536),
        ]
    });
    for threads in [1, 2] {
        for (m, n, k) in packed_shapes.clone() {
            let a_buf: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1).collect();
            let w_buf: Vec<f32> = (0..k * n).map(|i| (i % 11) as f32 * 0.1).collect();
            let packed: Vec<PackedB> = blockings
                .iter()
                .map(|&bl| PackedB::with_blocking(Isa::best(), bl, MatRef::new(&w_buf, n, k).t()))
                .collect();
            let mut c = vec![0.0f32; m * n];
            let mut times = vec![Vec::new(); blockings.len()];
            // Rounds of a request's size take well under a millisecond: many more of them.
            for _ in 0..if m < 1024 { 40 * reps } else { reps } {
                for (slot, b) in packed.iter().enumerate() {
                    let t = Instant::now();
                    let a = MatRef::new(&a_buf, m, k);
                    gemm_packed(&mut c, n, a, b, false, threads, Default::default());
                    times[slot].push(t.elapsed().as_secs_f64());
                }
            }
            println!("{threads}t packed {m}x{n}x{k}: {}", rates(m * n * k, times));
        }
    }
}

/// Each blocking's best and median GFLOP/s over its rounds' times.
#[cfg(target_arch = "x86_64")]
fn rates(mnk: usize, times: Vec<Vec<f64>>) -> String {
    let gflops = |s: f64| 2.0 * mnk as f64 / s / 1e9;
    let cells: Vec<String> = times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            format!("{:6.1} ({:5.1})", gflops(t[0]), gflops(t[t.len() / 2]))
        })
        .collect();
    cells.join(" ")
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {}
