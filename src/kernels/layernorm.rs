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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::{assert_grad_close, dot, numeric_grad, random_vec, to_f64};

    fn layernorm_ref(
        x: &[f64],
        rows: usize,
        dim: usize,
        gamma: &[f64],
        beta: &[f64],
        eps: f64,
    ) -> Vec<f64> {
        let mut y = vec![0.0; rows * dim];
        for r in 0..rows {
            let xr = &x[r * dim..(r + 1) * dim];
            let mu = xr.iter().sum::<f64>() / dim as f64;
            let var = xr.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / dim as f64;
            let rs = 1.0 / (var + eps).sqrt();
            for i in 0..dim {
                y[r * dim + i] = (xr[i] - mu) * rs * gamma[i] + beta[i];
            }
        }
        y
    }

    #[test]
    fn forward_and_backward_match_reference() {
        // dim > 64 so the parameter-gradient column blocks split.
        let (rows, dim, eps) = (4, 70, 1e-5f32);
        let x: Vec<f32> = random_vec(1, rows * dim, 2.0)
            .iter()
            .map(|v| v + 0.7)
            .collect();
        let gamma: Vec<f32> = random_vec(2, dim, 0.3).iter().map(|v| v + 1.0).collect();
        let beta = random_vec(3, dim, 0.3);
        let c = random_vec(4, rows * dim, 1.0);
        let (x64, g64, b64) = (to_f64(&x), to_f64(&gamma), to_f64(&beta));

        let mut y = vec![0.0; rows * dim];
        let (mut mean, mut rstd) = (vec![0.0; rows], vec![0.0; rows]);
        layernorm_forward(
            &x, rows, dim, &gamma, &beta, eps, &mut y, &mut mean, &mut rstd,
        );
        assert_grad_close(
            "layernorm y",
            &y,
            &layernorm_ref(&x64, rows, dim, &g64, &b64, eps as f64),
            2e-6,
        );

        let mut dx = vec![f32::NAN; rows * dim];
        let mut dgamma = vec![1.0f32; dim];
        let mut dbeta = vec![1.0f32; dim];
        layernorm_backward(
            &x,
            rows,
            dim,
            &gamma,
            &mean,
            &rstd,
            &c,
            &mut dx,
            false,
            &mut dgamma,
            &mut dbeta,
        );
        let e = eps as f64;
        let h = 1e-5;
        let gx = numeric_grad(
            |x| dot(&c, &layernorm_ref(x, rows, dim, &g64, &b64, e)),
            &x64,
            h,
        );
        let gg = numeric_grad(
            |g| dot(&c, &layernorm_ref(&x64, rows, dim, g, &b64, e)),
            &g64,
            h,
        );
        let gb = numeric_grad(
            |b| dot(&c, &layernorm_ref(&x64, rows, dim, &g64, b, e)),
            &b64,
            h,
        );
        assert_grad_close("layernorm dx", &dx, &gx, 1e-5);
        let plus_one = |g: &[f64]| g.iter().map(|v| v + 1.0).collect::<Vec<_>>();
        assert_grad_close("layernorm dgamma", &dgamma, &plus_one(&gg), 1e-5);
        assert_grad_close("layernorm dbeta", &dbeta, &plus_one(&gb), 1e-5);

        // accumulate_dx adds onto the previous dx.
        let mut dx2 = dx.clone();
        let (mut dg2, mut db2) = (vec![0.0; dim], vec![0.0; dim]);
        layernorm_backward(
            &x, rows, dim, &gamma, &mean, &rstd, &c, &mut dx2, true, &mut dg2, &mut db2,
        );
        for (a, b) in dx2.iter().zip(&dx) {
            assert!((a - 2.0 * b).abs() <= 1e-5 * (1.0 + b.abs()));
        }
    }
}
