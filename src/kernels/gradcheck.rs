//! Test helpers for finite-difference gradient checks: kernels are f32, references are
//! written in f64 inside each test and differentiated with central differences.

use crate::kernels::matmul::MatRef;
use crate::rng::Rng;

/// `n` normal values times `scale`, from a fixed seed.
pub fn random_vec(seed: u64, n: usize, scale: f64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| (rng.normal() * scale) as f32).collect()
}

pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Central difference of a scalar function of one variable.
pub fn central_diff(f: impl Fn(f64) -> f64, x: f64, h: f64) -> f64 {
    (f(x + h) - f(x - h)) / (2.0 * h)
}

/// Gradient of `f` at `x` by central differences in every coordinate.
pub fn numeric_grad(f: impl Fn(&[f64]) -> f64, x: &[f64], h: f64) -> Vec<f64> {
    let mut probe = x.to_vec();
    (0..x.len())
        .map(|i| {
            probe[i] = x[i] + h;
            let up = f(&probe);
            probe[i] = x[i] - h;
            let down = f(&probe);
            probe[i] = x[i];
            (up - down) / (2.0 * h)
        })
        .collect()
}

/// `Σ c_i y_i`: a random linear functional turns a vector output into a scalar loss
/// whose gradient with respect to `y` is `c`.
pub fn dot(c: &[f32], y: &[f64]) -> f64 {
    assert_eq!(c.len(), y.len());
    c.iter().zip(y).map(|(&a, &b)| a as f64 * b).sum()
}

/// Whole-tensor comparison (the golden README's rule): max|got - want| <= tol * max|want|
/// and ||got - want||_2 <= tol * ||want||_2. Also requires a non-trivial reference.
pub fn assert_grad_close(name: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "{name}: reference gradient is all zero");
    let mut max_err = 0.0f64;
    let (mut err2, mut ref2) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        assert!(g.is_finite(), "{name}: non-finite value");
        let e = (g as f64 - w).abs();
        max_err = max_err.max(e);
        err2 += e * e;
        ref2 += w * w;
    }
    assert!(
        max_err <= tol * scale,
        "{name}: max error {max_err:e} > {tol:e} * {scale:e}"
    );
    assert!(
        err2.sqrt() <= tol * ref2.sqrt(),
        "{name}: L2 error {:e} > {tol:e} * {:e}",
        err2.sqrt(),
        ref2.sqrt()
    );
}

/// `a · b` in f64 by definition: the reference the matrix-product kernels are tested against.
pub fn naive_matmul(a: MatRef, b: MatRef) -> Vec<f64> {
    let mut out = vec![0.0; a.rows * b.cols];
    for i in 0..a.rows {
        for j in 0..b.cols {
            out[i * b.cols + j] = (0..a.cols)
                .map(|p| {
                    a.data[i * a.row_stride + p * a.col_stride] as f64
                        * b.data[p * b.row_stride + j * b.col_stride] as f64
                })
                .sum();
        }
    }
    out
}
