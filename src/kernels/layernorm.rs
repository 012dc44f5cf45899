//! LayerNorm over the last dimension with biased variance (as PyTorch).

use super::fastmath::simd_fn;
use rayon::prelude::*;

/// Rows per parallel task: enough work to amortise scheduling (64 x 384 floats), and
/// the unit of the per-task partial parameter gradients in the backward pass.
const ROWS_PER_TASK: usize = 64;

/// Independent partial sums: they let the compiler vectorise the reductions (a single
/// running sum cannot be reordered).
const LANES: usize = 8;

simd_fn! {
    /// `(mean, 1 / sqrt(var + eps))` of one row, accumulated in f64 (two passes, so the
    /// variance does not suffer from cancellation).
    fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
        let n = x.len() as f64;
        let mut acc = [0.0f64; LANES];
        let mut chunks = x.chunks_exact(LANES);
        for c in &mut chunks {
            for l in 0..LANES {
                acc[l] += c[l] as f64;
            }
        }
        let sum = acc.iter().sum::<f64>() + chunks.remainder().iter().map(|&v| v as f64).sum::<f64>();
        let mu = sum / n;
        let mut acc = [0.0f64; LANES];
        let mut chunks = x.chunks_exact(LANES);
        for c in &mut chunks {
            for l in 0..LANES {
                let d = c[l] as f64 - mu;
                acc[l] += d * d;
            }
        }
        let tail: f64 = chunks.remainder().iter().map(|&v| (v as f64 - mu) * (v as f64 - mu)).sum();
        let var = (acc.iter().sum::<f64>() + tail) / n;
        (mu as f32, (1.0 / (var + eps as f64).sqrt()) as f32)
    }
}

simd_fn! {
    fn normalize_row(x: &[f32], mu: f32, rs: f32, gamma: &[f32], beta: &[f32], y: &mut [f32]) {
        for (((yv, &xv), &g), &b) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
            *yv = (xv - mu) * rs * g + b;
        }
    }
}

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
    assert!(
        x.len() >= rows * dim && y.len() >= rows * dim,
        "layernorm_forward: x/y length"
    );
    assert!(
        gamma.len() >= dim && beta.len() >= dim,
        "layernorm_forward: gamma/beta length"
    );
    if rows == 0 || dim == 0 {
        return;
    }
    let (gamma, beta) = (&gamma[..dim], &beta[..dim]);
    y[..rows * dim]
        .par_chunks_mut(ROWS_PER_TASK * dim)
        .zip(mean[..rows].par_chunks_mut(ROWS_PER_TASK))
        .zip(rstd[..rows].par_chunks_mut(ROWS_PER_TASK))
        .enumerate()
        .for_each(|(t, ((y_rows, m_rows), s_rows))| {
            let r0 = t * ROWS_PER_TASK;
            for (r, (yr, (m, s))) in y_rows
                .chunks_exact_mut(dim)
                .zip(m_rows.iter_mut().zip(s_rows.iter_mut()))
                .enumerate()
            {
                let xr = &x[(r0 + r) * dim..(r0 + r + 1) * dim];
                let (mu, rs) = row_stats(xr, eps);
                normalize_row(xr, mu, rs, gamma, beta, yr);
                *m = mu;
                *s = rs;
            }
        });
}

simd_fn! {
    /// One row of the backward pass: `dx` (overwritten or accumulated into) and the
    /// row's contributions to the parameter gradients, added to `dgamma`, `dbeta`.
    #[allow(clippy::too_many_arguments)]
    fn backward_row(
        x: &[f32],
        dy: &[f32],
        gamma: &[f32],
        mu: f32,
        rs: f32,
        dx: &mut [f32],
        accumulate_dx: bool,
        dgamma: &mut [f32],
        dbeta: &mut [f32],
    ) {
        let dim = x.len();
        // Equal lengths, visibly to the compiler, so that the loops need no bounds checks.
        let (dy, gamma, dx) = (&dy[..dim], &gamma[..dim], &mut dx[..dim]);
        let (dgamma, dbeta) = (&mut dgamma[..dim], &mut dbeta[..dim]);
        // Σ g and Σ g·xhat with g = dy·gamma, xhat = (x - mu)·rs.
        let mut acc_g = [0.0f32; LANES];
        let mut acc_gx = [0.0f32; LANES];
        let full = dim / LANES * LANES;
        for c0 in (0..full).step_by(LANES) {
            for l in 0..LANES {
                let i = c0 + l;
                let g = dy[i] * gamma[i];
                acc_g[l] += g;
                acc_gx[l] += g * ((x[i] - mu) * rs);
            }
        }
        let (mut sum_g, mut sum_gx) = (acc_g.iter().sum::<f32>(), acc_gx.iter().sum::<f32>());
        for i in full..dim {
            let g = dy[i] * gamma[i];
            sum_g += g;
            sum_gx += g * ((x[i] - mu) * rs);
        }
        let inv = 1.0 / dim as f32;
        let (mean_g, mean_gx) = (inv * sum_g, inv * sum_gx);
        for i in 0..dim {
            let xhat = (x[i] - mu) * rs;
            let v = rs * (dy[i] * gamma[i] - mean_g - xhat * mean_gx);
            dx[i] = if accumulate_dx { dx[i] + v } else { v };
            dgamma[i] += dy[i] * xhat;
            dbeta[i] += dy[i];
        }
    }
}

/// Backward of `layernorm_forward`. `dx` is overwritten (or accumulated into with
/// `accumulate_dx`); `dgamma`, `dbeta` accumulate.
///
/// One pass over `x` and `dy`: each task of `ROWS_PER_TASK` rows computes its rows of
/// `dx` and partial parameter gradients, which are then added up in task order (so the
/// result does not depend on thread scheduling).
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
    assert!(
        x.len() >= rows * dim && dy.len() >= rows * dim && dx.len() >= rows * dim,
        "layernorm_backward: x/dy/dx length"
    );
    assert!(
        gamma.len() >= dim && dgamma.len() >= dim && dbeta.len() >= dim,
        "layernorm_backward: parameter length"
    );
    if rows == 0 || dim == 0 {
        return;
    }
    let gamma = &gamma[..dim];
    // Per task: [dgamma partial | dbeta partial].
    let partials: Vec<Vec<f32>> = dx[..rows * dim]
        .par_chunks_mut(ROWS_PER_TASK * dim)
        .enumerate()
        .map(|(t, dx_rows)| {
            let mut part = vec![0.0f32; 2 * dim];
            let (pg, pb) = part.split_at_mut(dim);
            let r0 = t * ROWS_PER_TASK;
            for (r, dxr) in dx_rows.chunks_exact_mut(dim).enumerate() {
                let row = (r0 + r) * dim..(r0 + r + 1) * dim;
                backward_row(
                    &x[row.clone()],
                    &dy[row],
                    gamma,
                    mean[r0 + r],
                    rstd[r0 + r],
                    dxr,
                    accumulate_dx,
                    pg,
                    pb,
                );
            }
            part
        })
        .collect();
    for part in &partials {
        let (pg, pb) = part.split_at(dim);
        for (d, &p) in dgamma[..dim].iter_mut().zip(pg) {
            *d += p;
        }
        for (d, &p) in dbeta[..dim].iter_mut().zip(pb) {
            *d += p;
        }
    }
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
        // dim not a multiple of the 8 lanes (remainders), rows over two tasks.
        let (rows, dim, eps) = (ROWS_PER_TASK + 5, 70, 1e-5f32);
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
