//! LayerNorm over the last dimension with biased variance (as PyTorch).

use rayon::prelude::*;

/// `y = (x - mean) * rstd * gamma + beta` per row; saves `mean` and `rstd` per row for
/// the backward pass. `y` may not alias `x`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(
    x: &[f32],
    rows: usize,
    dim: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    y: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
) {
    y[..rows * dim]
        .par_chunks_mut(dim)
        .zip(mean[..rows].par_iter_mut())
        .zip(rstd[..rows].par_iter_mut())
        .enumerate()
        .for_each(|(r, ((yr, m), s))| {
            let xr = &x[r * dim..(r + 1) * dim];
            let mu = xr.iter().map(|&v| v as f64).sum::<f64>() / dim as f64;
            let var = xr
                .iter()
                .map(|&v| {
                    let d = v as f64 - mu;
                    d * d
                })
                .sum::<f64>()
                / dim as f64;
            let rs = 1.0 / (var + eps as f64).sqrt();
            let (mu, rs) = (mu as f32, rs as f32);
            for i in 0..dim {
                yr[i] = (xr[i] - mu) * rs * gamma[i] + beta[i];
            }
            *m = mu;
            *s = rs;
        });
}

/// Backward of `layernorm_forward`. `dx` is overwritten (or accumulated into with
/// `accumulate_dx`); `dgamma`, `dbeta` accumulate.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    x: &[f32],
    rows: usize,
    dim: usize,
    gamma: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    accumulate_dx: bool,
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    // Input gradient, rows in parallel.
    dx[..rows * dim]
        .par_chunks_mut(dim)
        .enumerate()
        .for_each(|(r, dxr)| {
            let xr = &x[r * dim..(r + 1) * dim];
            let dyr = &dy[r * dim..(r + 1) * dim];
            let (mu, rs) = (mean[r], rstd[r]);
            let mut sum_g = 0.0f32;
            let mut sum_gx = 0.0f32;
            for i in 0..dim {
                let g = dyr[i] * gamma[i];
                sum_g += g;
                sum_gx += g * (xr[i] - mu) * rs;
            }
            let inv = 1.0 / dim as f32;
            for i in 0..dim {
                let xhat = (xr[i] - mu) * rs;
                let v = rs * (dyr[i] * gamma[i] - inv * sum_g - xhat * inv * sum_gx);
                if accumulate_dx {
                    dxr[i] += v;
                } else {
                    dxr[i] = v;
                }
            }
        });
    // Parameter gradients, columns in parallel blocks.
    const BLOCK: usize = 64;
    dgamma[..dim]
        .par_chunks_mut(BLOCK)
        .zip(dbeta[..dim].par_chunks_mut(BLOCK))
        .enumerate()
        .for_each(|(bi, (dg, db))| {
            let c0 = bi * BLOCK;
            for r in 0..rows {
                let (mu, rs) = (mean[r], rstd[r]);
                for c in 0..dg.len() {
                    let i = r * dim + c0 + c;
                    db[c] += dy[i];
                    dg[c] += dy[i] * (x[i] - mu) * rs;
                }
            }
        });
}
