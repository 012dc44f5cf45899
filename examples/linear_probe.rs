use corefocus::kernels::linear::linear_forward;
use std::time::Instant;
fn main() {
    for (rows, i, o) in [(4096, 384, 1536), (4096, 1536, 384), (4096, 384, 384)] {
        let x: Vec<f32> = (0..rows * i).map(|v| (v % 7) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..o * i).map(|v| (v % 5) as f32 * 0.1).collect();
        let b = vec![0.5f32; o];
        let mut reused = vec![0.0f32; rows * o];
        let (mut best_fresh, mut best_reused) = (f64::MAX, f64::MAX);
        for _ in 0..15 {
            let t = Instant::now();
            let mut y = vec![0.0f32; rows * o];
            linear_forward(&x, rows, i, &w, Some(&b), o, &mut y);
            best_fresh = best_fresh.min(t.elapsed().as_secs_f64());
            drop(y);
            let t = Instant::now();
            linear_forward(&x, rows, i, &w, Some(&b), o, &mut reused);
            best_reused = best_reused.min(t.elapsed().as_secs_f64());
        }
        let gf = |s: f64| 2.0 * (rows * i * o) as f64 / s / 1e9;
        println!(
            "{rows}x{i}->{o}: fresh y {:.1} GFLOP/s, reused y {:.1}",
            gf(best_fresh),
            gf(best_reused)
        );
    }
}
