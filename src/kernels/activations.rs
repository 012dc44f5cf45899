//! Exact (erf) GELU, as HF's `"gelu"`.

use super::fastmath::{gauss_and_lower_tail, simd_fn};
use rayon::prelude::*;

/// Elements per parallel task: large enough to amortise scheduling, small enough to
/// spread `[tokens x 1536]` activations over the pool.
const CHUNK: usize = 16 * 1024;

/// 1/√(2π): the normal density is φ(x) = e^(-x²/2) / √(2π).
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// Φ(x) from the lower tail Φ(-|x|): for x > 0, 1 - Φ(-x) (at least 0.5, so the
/// subtraction loses nothing in relative terms).
#[inline(always)]
fn normal_cdf(x: f32, lower_tail: f32) -> f32 {
    if x > 0.0 {
        1.0 - lower_tail
    } else {
        lower_tail
    }
}

/// GELU of one value, x Φ(x), in f32 (relative error below 5e-7, see
/// `gauss_and_lower_tail`).
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    let (_, lower_tail) = gauss_and_lower_tail(x);
    x * normal_cdf(x, lower_tail)
}

/// d gelu / dx = Φ(x) + x φ(x), on its own (the reference the tests hold
/// [`gelu_forward_keeping_grad`]'s derivative to).
#[cfg(test)]
fn gelu_grad(x: f32) -> f32 {
    let (gauss, lower_tail) = gauss_and_lower_tail(x);
    normal_cdf(x, lower_tail) + x * (gauss * INV_SQRT_2PI)
}

simd_fn! {
    fn gelu_chunk(x: &[f32], y: &mut [f32]) {
        for (yv, &xv) in y.iter_mut().zip(x) {
            *yv = gelu(xv);
        }
    }
}

simd_fn! {
    /// GELU in place, on the calling thread (a product's epilogue, one tile row at a time).
    pub fn gelu_in_place(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = gelu(*v);
        }
    }
}

simd_fn! {
    /// `y = gelu(x)` and `x = gelu'(x)`, from one evaluation of the normal density and
    /// tail per value (the same values as [`gelu`] and [`gelu_grad`]).
    fn gelu_and_grad_chunk(x: &mut [f32], y: &mut [f32]) {
        for (yv, xv) in y.iter_mut().zip(x.iter_mut()) {
            let x0 = *xv;
            let (gauss, lower_tail) = gauss_and_lower_tail(x0);
            let cdf = normal_cdf(x0, lower_tail);
            *yv = x0 * cdf;
            *xv = cdf + x0 * (gauss * INV_SQRT_2PI);
        }
    }
}

simd_fn! {
    fn scale_chunk(dy: &mut [f32], grad: &[f32]) {
        for (d, &g) in dy.iter_mut().zip(grad) {
            *d *= g;
        }
    }
}

/// `y = x * 0.5 * (1 + erf(x / sqrt 2))`, elementwise; `y` overwritten.
pub fn gelu_forward(x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "gelu_forward: x and y differ in length");
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(yc, xc)| gelu_chunk(xc, yc));
}

/// The training forward: `y = gelu(x)`, and `x` overwritten by `gelu'(x)`, all the
/// backward needs of the pre-activation ([`gelu_backward`]): the derivative shares the
/// forward's exponential and tail, where computing it in the backward from `x` cost
/// as much as the forward again.
pub fn gelu_forward_keeping_grad(x: &mut [f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "gelu_forward: x and y differ in length");
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks_mut(CHUNK))
        .for_each(|(yc, xc)| gelu_and_grad_chunk(xc, yc));
}

/// `dy *= gelu'(x)`, in place, with `grad` = gelu'(x) as [`gelu_forward_keeping_grad`]
/// left it.
pub fn gelu_backward(grad: &[f32], dy: &mut [f32]) {
    assert_eq!(
        grad.len(),
        dy.len(),
        "gelu_backward: grad and dy differ in length"
    );
    dy.par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .for_each(|(dyc, gc)| scale_chunk(dyc, gc));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::{assert_grad_close, central_diff, random_vec};

    /// Exact GELU in f64 through libm's erf.
    fn gelu_ref(x: f64) -> f64 {
        0.5 * x * libm::erfc(-x / std::f64::consts::SQRT_2)
    }

    #[test]
    fn forward_matches_exact_erf_gelu() {
        // A dense grid over the range that matters plus the far tails.
        let xs: Vec<f32> = (-20_000..=20_000).map(|i| i as f32 * 6e-4).collect();
        let mut ys = vec![0.0; xs.len()];
        gelu_forward(&xs, &mut ys);
        let mut worst = 0.0f64;
        for (&x, &y) in xs.iter().zip(&ys) {
            let want = gelu_ref(x as f64);
            if want == 0.0 {
                assert_eq!(y, 0.0);
                continue;
            }
            // Compare against the f32-rounded exact value: relative error in f64 terms.
            let rel = ((y as f64 - want) / want).abs();
            worst = worst.max(rel);
        }
        // 4.1e-7 measured: the f32 evaluation of the tail (was 2.5e-7 in f64, 2x slower).
        assert!(worst < 5e-7, "worst relative error {worst:e}");
        // Spot values (PyTorch: gelu(1) = 0.8413447, gelu(-1) = -0.1586553).
        let mut y = [0.0f32; 3];
        gelu_forward(&[1.0, -1.0, 0.0], &mut y);
        assert!((y[0] - 0.841_344_7).abs() < 1e-7);
        assert!((y[1] + 0.158_655_3).abs() < 1e-7);
        assert_eq!(y[2], 0.0);
        // Far tails: identity above, tiny negative (or zero) below; never NaN.
        let big = [30.0f32, -30.0, 1e4, -1e4];
        let mut yb = [0.0f32; 4];
        gelu_forward(&big, &mut yb);
        assert_eq!(yb[0], 30.0);
        assert_eq!(yb[2], 1e4);
        assert!(yb[1] <= 0.0 && yb[1] > -1e-30);
        assert!(yb[3] <= 0.0 && yb[3].is_finite());
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut x = random_vec(5, 3000, 3.0);
        x.extend([0.0, 1.0, -1.0, 0.999, 1.001, -7.0, 6.0]);
        let dy = random_vec(6, x.len(), 1.0);
        let mut grad = x.clone();
        let mut y = vec![f32::NAN; x.len()];
        gelu_forward_keeping_grad(&mut grad, &mut y);
        // The forward it keeps the derivative from is the plain forward, bit for bit.
        let mut plain = vec![f32::NAN; x.len()];
        gelu_forward(&x, &mut plain);
        assert_eq!(
            y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            plain.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        let mut dx = dy.clone();
        gelu_backward(&grad, &mut dx);
        for i in 0..x.len() {
            assert_eq!(grad[i].to_bits(), gelu_grad(x[i]).to_bits(), "x = {}", x[i]);
        }
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let want: Vec<f64> = x64
            .iter()
            .zip(&dy)
            .map(|(&xv, &g)| g as f64 * central_diff(gelu_ref, xv, 1e-5))
            .collect();
        assert_grad_close("gelu dx", &dx, &want, 2e-6);
        // Each entry, relative (the derivative is smooth and O(1)).
        for i in 0..x.len() {
            assert!(
                (dx[i] as f64 - want[i]).abs() <= 1e-6 * (1.0 + want[i].abs()),
                "x={} dx={} want={}",
                x[i],
                dx[i],
                want[i]
            );
        }
    }
}
