//! Throughput of the matmul seam on the model's shapes (a profiling aid).
use corefocus::kernels::linear::linear_forward;
use std::time::Instant;

fn main() {
    for (rows, i, o) in [
        (4096, 384, 384),
        (4096, 384, 1536),
        (4096, 1536, 384),
        (2048, 768, 3072),
    ] {
        let x = vec![0.5f32; rows * i];
        let w = vec![0.01f32; o * i];
        let b = vec![0.0f32; o];
        let mut y = vec![0.0f32; rows * o];
        linear_forward(&x, rows, i, &w, Some(&b), o, &mut y);
        let reps = 5;
        let t = Instant::now();
        for _ in 0..reps {
            linear_forward(&x, rows, i, &w, Some(&b), o, &mut y);
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        let gf = 2.0 * (rows * i * o) as f64 / s / 1e9;
        println!("{rows}x{i}x{o}: {:.2} ms, {gf:.1} GFLOP/s", s * 1e3);
    }
}
