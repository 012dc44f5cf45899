//! Throughput of the matmul seam on the model's shapes (a profiling aid): the gemm
//! crate's own threading versus splitting rows across the rayon pool, interleaved.
use corefocus::kernels::matmul::{matmul, MatRef, Par};
use rayon::prelude::*;
use std::time::Instant;

fn main() {
    let shapes = [
        (4096, 384, 384),
        (4096, 384, 1536),
        (4096, 1536, 384),
        (2048, 768, 3072),
    ];
    for (rows, i, o) in shapes {
        let x = vec![0.5f32; rows * i];
        let w = vec![0.01f32; o * i];
        let mut y = vec![0.0f32; rows * o];
        let a = MatRef::new(&x, rows, i);
        let b = MatRef::new(&w, o, i).t();
        let mut best = [f64::MAX; 2];
        for _ in 0..5 {
            let t = Instant::now();
            matmul(&mut y, o, a, b, false, Par::Rayon);
            best[0] = best[0].min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let half = rows.div_ceil(2);
            y.par_chunks_mut(half * o).enumerate().for_each(|(c, yc)| {
                let r0 = c * half;
                let n = yc.len() / o;
                let ac = MatRef::new(&x[r0 * i..(r0 + n) * i], n, i);
                matmul(yc, o, ac, b, false, Par::Serial);
            });
            best[1] = best[1].min(t.elapsed().as_secs_f64());
        }
        let gf = |s: f64| 2.0 * (rows * i * o) as f64 / s / 1e9;
        println!(
            "{rows}x{i}x{o}: gemm-threads {:.1} GFLOP/s, row-split {:.1} GFLOP/s",
            gf(best[0]),
            gf(best[1])
        );
    }
}
