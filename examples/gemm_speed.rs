//! Throughput of the matmul seam on the model's shapes (a profiling aid): the default
//! backend (our AVX2/FMA kernel where available) against the `gemm` crate, on one
//! thread and on the rayon pool. The two backends run interleaved and the best time of
//! several runs counts, since the machine is shared.
//!
//! `cargo run --release --example gemm_speed [reps] [shape name filter]`
#[path = "common/args.rs"]
mod args;
use corefocus::kernels::matmul::{matmul_with, Backend, MatRef, Par};
use std::time::Instant;

/// How an operand is stored: row-major, or as the transpose of a row-major buffer.
#[derive(Clone, Copy)]
enum Layout {
    RowMajor,
    Transposed,
}

fn view(data: &[f32], rows: usize, cols: usize, layout: Layout) -> MatRef<'_> {
    match layout {
        Layout::RowMajor => MatRef::new(data, rows, cols),
        Layout::Transposed => MatRef::new(data, cols, rows).t(),
    }
}

fn main() {
    use Layout::{RowMajor as R, Transposed as T};
    let reps: usize = args::arg(1, "reps", 5);
    // An optional second argument keeps only the shapes whose name contains it.
    let filter: String = args::arg(2, "shape filter", String::new());
    // (what, m, n, k, layout of a, layout of b)
    let shapes = [
        ("L6 fwd x.Wt qkv/o", 4096, 384, 384, R, T),
        ("L6 fwd x.Wt ffn1", 4096, 1536, 384, R, T),
        ("L6 fwd x.Wt ffn2", 4096, 384, 1536, R, T),
        ("L6 dX=dY.W ffn1", 4096, 384, 1536, R, R),
        ("L6 dX=dY.W ffn2", 4096, 1536, 384, R, R),
        ("L6 dW=dYt.X qkv", 384, 384, 4096, T, R),
        ("L6 dW=dYt.X ffn1", 1536, 384, 4096, T, R),
        ("L6 dW=dYt.X ffn2", 384, 1536, 4096, T, R),
        ("base fwd ffn1", 2048, 3072, 768, R, T),
        ("base dW ffn2", 768, 3072, 2048, T, R),
        ("head q.kT", 512, 512, 32, R, T),
        ("head p.v", 512, 32, 512, R, R),
        ("head pT.dO", 512, 32, 512, T, R),
        ("comb q.kT", 64, 512, 384, R, T),
        ("comb dz.k", 64, 384, 512, R, R),
        ("comb dzT.q", 512, 384, 64, T, R),
        ("in-cache 144x128x256", 144, 128, 256, R, R),
        ("small 64x64x64", 64, 64, 64, R, T),
        ("small 37x45x70", 37, 45, 70, R, T),
    ];
    println!(
        "{:<20} {:>16} | {:>9} {:>9} | {:>9} {:>9} | {:>9} {:>9}   (GFLOP/s, best of {reps})",
        "shape", "m x n x k", "crate 1t", "ours 1t", "crate 2t", "ours 2t", "crate cpu", "ours cpu"
    );
    for (what, m, n, k, la, lb) in shapes {
        if !what.contains(&filter) {
            continue;
        }
        let a_buf: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
            .collect();
        let b_buf: Vec<f32> = (0..k * n)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.1)
            .collect();
        let a = view(&a_buf, m, k, la);
        let b = view(&b_buf, k, n, lb);
        let mut c = vec![0.0f32; m * n];
        let runs = [
            (Backend::GemmCrate, Par::Serial),
            (Backend::Auto, Par::Serial),
            (Backend::GemmCrate, Par::Rayon),
            (Backend::Auto, Par::Rayon),
        ];
        // Tiny products are timed in batches so the clock's resolution does not matter.
        let inner = (2e8 / (2.0 * (m * n * k) as f64)).ceil().max(1.0) as usize;
        let mut best = [f64::MAX; 4];
        // One-thread runs are timed by the thread's own time on the CPU (CLOCK_THREAD_CPUTIME_ID), which other processes cannot stretch.
        let mut best_cpu = [f64::MAX; 2];
        for _ in 0..reps {
            for (slot, &(backend, par)) in runs.iter().enumerate() {
                let (t, cpu) = (Instant::now(), thread_cpu_seconds());
                for _ in 0..inner {
                    matmul_with(backend, &mut c, n, a, b, false, par, Default::default());
                }
                best[slot] = best[slot].min(t.elapsed().as_secs_f64() / inner as f64);
                if let (Some(cpu0), Some(cpu1), Par::Serial) = (cpu, thread_cpu_seconds(), par) {
                    best_cpu[slot] = best_cpu[slot].min((cpu1 - cpu0) / inner as f64);
                }
            }
        }
        let gf = |s: f64| 2.0 * (m * n * k) as f64 / s / 1e9;
        println!(
            "{what:<20} {:>16} | {:>9.1} {:>9.1} | {:>9.1} {:>9.1} | {:>9.1} {:>9.1}",
            format!("{m}x{n}x{k}"),
            gf(best[0]),
            gf(best[1]),
            gf(best[2]),
            gf(best[3]),
            gf(best_cpu[0]),
            gf(best_cpu[1]),
        );
    }
}

/// Time this thread has run on a CPU, in seconds.
fn thread_cpu_seconds() -> Option<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then_some(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9)
}
