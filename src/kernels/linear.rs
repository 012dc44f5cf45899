//! Fully connected layer in PyTorch layout: `y = x Wᵀ + b`, `W` is `[out, in]`.

use super::fastmath::simd_fn;
use super::matmul::{
    matmul, matmul_packed, matmul_with, Backend, Epilogue, MatRef, PackedRhs, Par, Precision,
};
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
    // The bias is added to each finished tile of the product (in registers with the
    // AVX-512 kernel), not by a pass that first fills `y` with it and a product that
    // re-reads `y` to accumulate onto it.
    matmul_with(
        Backend::Auto,
        &mut y[..rows * out_dim],
        out_dim,
        MatRef::new(x, rows, in_dim),
        MatRef::new(w, out_dim, in_dim).t(),
        false,
        Par::Rayon,
        Epilogue {
            bias: b,
            gelu: false,
        },
    );
}

/// [`linear_forward`] with `Wᵀ` packed beforehand ([`PackedRhs`] of `[in, out]`), the
/// bias (and, with `gelu`, the activation) applied to each tile of the product as it is
/// finished (inference: no pre-activation is kept).
#[allow(clippy::too_many_arguments)]
pub fn linear_forward_packed(
    x: &[f32],
    rows: usize,
    in_dim: usize,
    wt: &PackedRhs,
    b: Option<&[f32]>,
    out_dim: usize,
    gelu: bool,
    y: &mut [f32],
) {
    debug_assert_eq!(x.len(), rows * in_dim);
    assert_eq!(wt.shape(), (in_dim, out_dim), "linear: packed weight shape");
    let y = &mut y[..rows * out_dim];
    let x = MatRef::new(x, rows, in_dim);
    matmul_packed(
        y,
        out_dim,
        x,
        wt,
        false,
        Par::Rayon,
        Epilogue { bias: b, gelu },
    );
}

/// Backward of `linear_forward`. Parameter gradients `dw` (`[out, in]`) and `db`
/// accumulate (+=); `dx`, when wanted, is overwritten, or accumulated into when
/// `accumulate_dx` is set (for residual branches). At `precision` bf16 both products
/// multiply in bf16 with f32 sums, as the bf16 forward pass did (mixed-precision
/// training); the bias gradient is an f32 sum either way.
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
    precision: Precision,
) {
    debug_assert_eq!(dy.len(), rows * out_dim);
    assert!(
        precision != Precision::Int8,
        "linear_backward: int8 products are for inference only"
    );
    let product = |dst: &mut [f32], ldc: usize, a: MatRef, b: MatRef, accumulate: bool| {
        if precision == Precision::F32 {
            matmul(dst, ldc, a, b, accumulate, Par::Rayon);
        } else {
            let b = PackedRhs::with_precision(b, precision);
            matmul_packed(dst, ldc, a, &b, accumulate, Par::Rayon, Epilogue::default());
        }
    };
    let dy_view = MatRef::new(dy, rows, out_dim);
    if let Some(dx) = dx {
        // dx[rows, in] (+)= dy[rows, out] · W[out, in]
        let w = MatRef::new(w, out_dim, in_dim);
        product(&mut dx[..rows * in_dim], in_dim, dy_view, w, accumulate_dx);
    }
    // dW[out, in] += dyᵀ[out, rows] · x[rows, in]
    let x = MatRef::new(x, rows, in_dim);
    product(dw, in_dim, dy_view.t(), x, true);
    if let Some(db) = db {
        column_sums_into(dy, rows, out_dim, db);
    }
}

/// `acc[c] += Σ_r m[r, c]`: each rayon task sums a range of whole rows into its own
/// partial row (contiguous, vectorised adds, `m` read once in order), and the partials
/// are added into `acc` in task order, so the result does not depend on the threads.
/// (Column blocks, the earlier form, read 256 bytes per row at the row stride.)
pub fn column_sums_into(m: &[f32], rows: usize, cols: usize, acc: &mut [f32]) {
    if rows == 0 || cols == 0 {
        return;
    }
    // Rows per task: enough to outweigh a partial row's allocation and final add.
    let rows_per_task = (rows / 8).clamp(64, 1024);
    let partials: Vec<Vec<f32>> = m[..rows * cols]
        .par_chunks(rows_per_task * cols)
        .map(|block| {
            let mut part = vec![0.0f32; cols];
            for row in block.chunks_exact(cols) {
                add_row(&mut part, row);
            }
            part
        })
        .collect();
    for part in &partials {
        add_row(&mut acc[..cols], part);
    }
}

simd_fn! {
    /// `acc += row`, element by element.
    pub(crate) fn add_row(acc: &mut [f32], row: &[f32]) {
        for (a, &r) in acc.iter_mut().zip(row) {
            *a += r;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::{assert_grad_close, dot, numeric_grad, random_vec, to_f64};

    fn linear_ref(
        x: &[f64],
        rows: usize,
        in_dim: usize,
        w: &[f64],
        b: &[f64],
        out_dim: usize,
    ) -> Vec<f64> {
        let mut y = vec![0.0; rows * out_dim];
        for r in 0..rows {
            for o in 0..out_dim {
                let mut s = b[o];
                for i in 0..in_dim {
                    s += x[r * in_dim + i] * w[o * in_dim + i];
                }
                y[r * out_dim + o] = s;
            }
        }
        y
    }

    #[test]
    fn column_sums_over_many_row_blocks_match_f64_and_add_to_acc() {
        // 1000 rows: several rayon tasks (of 125 rows), each with its partial row.
        for (rows, cols) in [(1000, 37), (3, 5), (0, 4), (4, 0)] {
            let m = random_vec((rows * 31 + cols) as u64, rows * cols, 1.0);
            let mut acc = vec![0.5f32; cols];
            column_sums_into(&m, rows, cols, &mut acc);
            for (c, &got) in acc.iter().enumerate() {
                let want = 0.5 + (0..rows).map(|r| m[r * cols + c] as f64).sum::<f64>();
                assert!(
                    (got as f64 - want).abs() < 1e-4,
                    "{rows}x{cols} col {c}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn forward_and_backward_match_reference() {
        let (rows, in_dim, out_dim) = (5, 7, 4);
        let x = random_vec(1, rows * in_dim, 1.0);
        let w = random_vec(2, out_dim * in_dim, 0.5);
        let b = random_vec(3, out_dim, 0.5);
        let c = random_vec(4, rows * out_dim, 1.0);
        let (x64, w64, b64) = (to_f64(&x), to_f64(&w), to_f64(&b));

        let mut y = vec![f32::NAN; rows * out_dim];
        linear_forward(&x, rows, in_dim, &w, Some(&b), out_dim, &mut y);
        let want_y = linear_ref(&x64, rows, in_dim, &w64, &b64, out_dim);
        assert_grad_close("linear y", &y, &want_y, 1e-6);

        // Parameter gradients accumulate onto 1.0; dx is overwritten (NaN start).
        let mut dx = vec![f32::NAN; rows * in_dim];
        let mut dw = vec![1.0f32; out_dim * in_dim];
        let mut db = vec![1.0f32; out_dim];
        linear_backward(
            &x,
            rows,
            in_dim,
            &w,
            out_dim,
            &c,
            Some(&mut dx),
            false,
            &mut dw,
            Some(&mut db),
            Precision::F32,
        );
        let h = 1e-5;
        let gx = numeric_grad(
            |x| dot(&c, &linear_ref(x, rows, in_dim, &w64, &b64, out_dim)),
            &x64,
            h,
        );
        let gw = numeric_grad(
            |w| dot(&c, &linear_ref(&x64, rows, in_dim, w, &b64, out_dim)),
            &w64,
            h,
        );
        let gb = numeric_grad(
            |b| dot(&c, &linear_ref(&x64, rows, in_dim, &w64, b, out_dim)),
            &b64,
            h,
        );
        assert_grad_close("linear dx", &dx, &gx, 1e-5);
        let plus_one = |g: &[f64]| g.iter().map(|v| v + 1.0).collect::<Vec<_>>();
        assert_grad_close("linear dw", &dw, &plus_one(&gw), 1e-5);
        assert_grad_close("linear db", &db, &plus_one(&gb), 1e-5);

        // accumulate_dx adds onto the previous dx.
        let mut dx2 = dx.clone();
        let mut dw2 = vec![0.0f32; out_dim * in_dim];
        linear_backward(
            &x,
            rows,
            in_dim,
            &w,
            out_dim,
            &c,
            Some(&mut dx2),
            true,
            &mut dw2,
            None,
            Precision::F32,
        );
        for (a, b) in dx2.iter().zip(&dx) {
            assert!((a - 2.0 * b).abs() <= 1e-6 * (1.0 + b.abs()));
        }

        // Without bias the output is x Wᵀ.
        linear_forward(&x, rows, in_dim, &w, None, out_dim, &mut y);
        let want_nob = linear_ref(&x64, rows, in_dim, &w64, &vec![0.0; out_dim], out_dim);
        assert_grad_close("linear y (no bias)", &y, &want_nob, 1e-6);
    }
}
