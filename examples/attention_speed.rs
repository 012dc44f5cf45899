//! Inference attention at a training batch's and a request's sizes (MiniLM: 12 heads of
//! 32), best of 10 rounds, and at the training batch's size the training pair too (the
//! forward keeping the probabilities, with dropout 0.1, then the backward): a
//! development aid for the attention kernel (issue 17). With `cold`, 512 MB are written
//! before each training call, so that its inputs come from memory as in a model's step.
//! With `keys`, instead: a request's attention (1 x 128) over fewer keys, as pf's pruned
//! layers see them, with and without the importance sums pf's selection needs (min and
//! median of 3,000 calls each).
//!
//! `cargo run --release --example attention_speed [threads] [cold|keys]`
#[path = "common/args.rs"]
mod args;
use corefocus::kernels::attention::{
    attention_backward, attention_forward, AttnDims, AttnDropout, Importance, Qkv,
};
use std::time::Instant;

fn main() {
    let threads: usize = args::arg(1, "threads", 1);
    let mode: String = args::arg(2, "mode", String::new());
    if !["", "cold", "keys"].contains(&mode.as_str()) {
        eprintln!("argument 2 (mode): {mode:?} is neither cold nor keys");
        std::process::exit(2);
    }
    let cold = mode == "cold";
    let mut flush = vec![0.0f32; if cold { 128 << 20 } else { 0 }];
    let mut evict = move || flush.iter_mut().for_each(|x| *x += 1.0);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    if mode == "keys" {
        pool.install(|| fewer_keys(threads));
        return;
    }
    for &(batch, t) in &[(8usize, 512usize), (1, 128)] {
        let (heads, head_dim) = (12, 32);
        let n = batch * t * heads * head_dim;
        // Scores of a few units, as a trained model's: q, k ~ U(-1, 1) over 32 dims.
        let val = |i: usize, s: usize| (((i + s) * 7919) % 1000) as f32 / 500.0 - 1.0;
        let (q, k, v): (Vec<f32>, Vec<f32>, Vec<f32>) = (
            (0..n).map(|i| val(i, 1)).collect(),
            (0..n).map(|i| val(i, 2)).collect(),
            (0..n).map(|i| val(i, 3)).collect(),
        );
        let dims = AttnDims {
            batch,
            q_len: t,
            kv_len: t,
            heads,
            head_dim,
        };
        let counts = vec![t; batch];
        let mut ctx = vec![0.0f32; n];
        let scale = 1.0 / (head_dim as f32).sqrt();
        let reps = if t > 256 { 10 } else { 200 };
        let mut best = f64::MAX;
        pool.install(|| {
            for _ in 0..reps {
                let start = Instant::now();
                attention_forward(
                    dims,
                    Qkv::dense(&q, &k, &v, heads * head_dim),
                    &counts,
                    scale,
                    None,
                    None,
                    &mut ctx,
                    None,
                    None,
                );
                best = best.min(start.elapsed().as_secs_f64());
            }
        });
        let flops = 4.0 * (batch * heads * t * t * head_dim) as f64;
        println!(
            "attention {batch} x {t}, {threads} threads: {:.3} ms, {:.1} GFLOP/s",
            best * 1e3,
            flops / best / 1e9
        );
        if t < 512 {
            continue;
        }
        let dropout = Some(AttnDropout { p: 0.1, seed: 7 });
        let mut probs = vec![0.0f32; batch * heads * t * t];
        let (mut dq, mut dk, mut dv) = (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
        let dctx: Vec<f32> = (0..n).map(|i| val(i, 4)).collect();
        let (mut best_fwd, mut best_bwd) = (f64::MAX, f64::MAX);
        pool.install(|| {
            for _ in 0..5 {
                evict();
                let start = Instant::now();
                let p = Some(probs.as_mut_slice());
                attention_forward(
                    dims,
                    Qkv::dense(&q, &k, &v, heads * head_dim),
                    &counts,
                    scale,
                    dropout,
                    p,
                    &mut ctx,
                    None,
                    None,
                );
                best_fwd = best_fwd.min(start.elapsed().as_secs_f64());
                evict();
                let start = Instant::now();
                attention_backward(
                    dims, &q, &k, &v, &counts, scale, dropout, &probs, &dctx, &mut dq, &mut dk,
                    &mut dv,
                );
                best_bwd = best_bwd.min(start.elapsed().as_secs_f64());
            }
        });
        println!(
            "training attention {batch} x {t}, {threads} threads: forward {:.3} ms ({:.1} GFLOP/s), backward {:.3} ms ({:.1} GFLOP/s)",
            best_fwd * 1e3,
            flops / best_fwd / 1e9,
            best_bwd * 1e3,
            2.0 * flops / best_bwd / 1e9
        );
    }
}

/// The `keys` mode (see the module docs).
fn fewer_keys(threads: usize) {
    let (t, heads, head_dim) = (128usize, 12usize, 32usize);
    let val = |i: usize, s: usize| (((i + s) * 7919) % 1000) as f32 / 500.0 - 1.0;
    let q: Vec<f32> = (0..t * heads * head_dim).map(|i| val(i, 1)).collect();
    let weights = vec![1.0f32; t];
    let mut ctx = vec![0.0f32; q.len()];
    let cases = [
        (128, false),
        (128, true),
        (112, true),
        (100, true),
        (96, true),
        (86, true),
    ];
    for (keys, importance) in cases {
        let k: Vec<f32> = (0..keys * heads * head_dim).map(|i| val(i, 2)).collect();
        let v: Vec<f32> = (0..keys * heads * head_dim).map(|i| val(i, 3)).collect();
        let dims = AttnDims {
            batch: 1,
            q_len: t,
            kv_len: keys,
            heads,
            head_dim,
        };
        let mut out = vec![0.0f32; heads * keys];
        let scale = 1.0 / (head_dim as f32).sqrt();
        let mut call = || {
            let start = Instant::now();
            let imp = importance.then(|| Importance {
                query_weight: &weights,
                out: &mut out,
            });
            attention_forward(
                dims,
                Qkv::dense(&q, &k, &v, heads * head_dim),
                &[keys],
                scale,
                None,
                None,
                &mut ctx,
                imp,
                None,
            );
            start.elapsed().as_secs_f64()
        };
        (0..300).for_each(|_| {
            call();
        });
        let mut times: Vec<f64> = (0..3000).map(|_| call()).collect();
        times.sort_by(f64::total_cmp);
        println!(
            "attention 1 x 128 over {keys} keys, importance sums {importance}, {threads} threads: min {:.1} us, median {:.1} us",
            times[0] * 1e6,
            times[times.len() / 2] * 1e6
        );
    }
}
