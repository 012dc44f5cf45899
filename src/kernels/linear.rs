//! Fully connected layer in PyTorch layout: `y = x Wᵀ + b`, `W` is `[out, in]`.

use super::matmul::{matmul, MatRef, Par};
use rayon::prelude::*;

/// `y[rows, out] = x[rows, in] · wᵀ + b`. `y` is overwritten.
pub fn linear_forward(
    x: &[f32],
    rows: usize,
    in_dim: usize,
    w: &[f32],
    b: Option<&[f32]>,
    out_dim: usize,
    y: &mut [f32],
) {
    debug_assert_eq!(x.len(), rows * in_dim);
    debug_assert_eq!(w.len(), out_dim * in_dim);
    let y = &mut y[..rows * out_dim];
    match b {
        Some(b) => {
            y.par_chunks_mut(out_dim).for_each(|r| r.copy_from_slice(b));
        }
        None => y.fill(0.0),
    }
    matmul(
        y,
        out_dim,
        MatRef::new(x, rows, in_dim),
        MatRef::new(w, out_dim, in_dim).t(),
        true,
        Par::Rayon,
    );
}

/// Backward of `linear_forward`. Parameter gradients `dw` (`[out, in]`) and `db`
/// accumulate (+=); `dx`, when wanted, is overwritten, or accumulated into when
/// `accumulate_dx` is set (for residual branches).
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    x: &[f32],
    rows: usize,
    in_dim: usize,
    w: &[f32],
    out_dim: usize,
    dy: &[f32],
    dx: Option<&mut [f32]>,
    accumulate_dx: bool,
    dw: &mut [f32],
    db: Option<&mut [f32]>,
) {
    debug_assert_eq!(dy.len(), rows * out_dim);
    if let Some(dx) = dx {
        matmul(
            &mut dx[..rows * in_dim],
            in_dim,
            MatRef::new(dy, rows, out_dim),
            MatRef::new(w, out_dim, in_dim),
            accumulate_dx,
            Par::Rayon,
        );
    }
    // dW[out, in] += dyᵀ[out, rows] · x[rows, in]
    matmul(
        dw,
        in_dim,
        MatRef::new(dy, rows, out_dim).t(),
        MatRef::new(x, rows, in_dim),
        true,
        Par::Rayon,
    );
    if let Some(db) = db {
        column_sums_into(dy, rows, out_dim, db);
    }
}

/// `acc[c] += Σ_r m[r, c]`, parallel over column blocks.
pub fn column_sums_into(m: &[f32], rows: usize, cols: usize, acc: &mut [f32]) {
    const BLOCK: usize = 64;
    acc[..cols]
        .par_chunks_mut(BLOCK)
        .enumerate()
        .for_each(|(bi, a)| {
            let c0 = bi * BLOCK;
            for r in 0..rows {
                let row = &m[r * cols + c0..r * cols + c0 + a.len()];
                for (x, y) in a.iter_mut().zip(row) {
                    *x += *y;
                }
            }
        });
}
