//! Inverted dropout whose mask is a pure function of (seed, element index), so backward
//! recomputes it instead of storing it.

use super::fastmath::simd_fn;
use crate::rng::hash_uniform;
use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 16 * 1024;

/// Zeroes each element with probability `p` and scales the rest by `1/(1-p)`, in place.
/// Element `i` of the buffer uses mask index `offset + i`.
pub fn dropout_forward(x: &mut [f32], p: f32, seed: u64, offset: u64) {
    debug_assert!((0.0..=1.0).contains(&p), "dropout probability {p}");
    if p <= 0.0 {
        return;
    }
    // With p = 1 every element is dropped (hash_uniform < 1), so the infinite scale is
    // never used.
    let keep_scale = 1.0 / (1.0 - p);
    x.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        let base = offset + (c * CHUNK) as u64;
        apply_mask(chunk, p, keep_scale, seed, base);
    });
}

/// Applies the same mask (and scale) to a gradient, in place.
pub fn dropout_backward(dx: &mut [f32], p: f32, seed: u64, offset: u64) {
    dropout_forward(dx, p, seed, offset)
}

simd_fn! {
    /// `x[i] = 0` where `hash_uniform(seed, base + i) < p`, else `x[i] * keep_scale`.
    /// Shared with the attention kernel (serially, inside its own parallel loop).
    pub(crate) fn apply_mask(x: &mut [f32], p: f32, keep_scale: f32, seed: u64, base: u64) {
        for (i, v) in x.iter_mut().enumerate() {
            let dropped = hash_uniform(seed, base + i as u64) < p;
            *v = if dropped { 0.0 } else { *v * keep_scale };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::{assert_grad_close, dot, numeric_grad, random_vec, to_f64};

    /// f64 reference: the mask straight from the definition.
    fn dropout_ref(x: &[f64], p: f64, seed: u64, offset: u64) -> Vec<f64> {
        x.iter()
            .enumerate()
            .map(|(i, &v)| {
                if (hash_uniform(seed, offset + i as u64) as f64) < p {
                    0.0
                } else {
                    v / (1.0 - p)
                }
            })
            .collect()
    }

    #[test]
    fn forward_matches_definition_across_chunks() {
        // Longer than several chunks so the per-chunk offsets are exercised.
        let n = 3 * CHUNK + 123;
        let x = random_vec(1, n, 1.0);
        let (p, seed, offset) = (0.3f32, 42u64, 1_000_003u64);
        let mut y = x.clone();
        dropout_forward(&mut y, p, seed, offset);
        let want = dropout_ref(&to_f64(&x), p as f64, seed, offset);
        let mut zeros = 0usize;
        for (i, (&g, &w)) in y.iter().zip(&want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= 1e-6 * w.abs(),
                "element {i}: {g} vs {w}"
            );
            if w == 0.0 {
                assert_eq!(g, 0.0);
                zeros += 1;
            }
        }
        let frac = zeros as f64 / n as f64;
        assert!((frac - 0.3).abs() < 0.01, "dropped fraction {frac}");

        // Splitting the buffer and passing the offset of the second half gives the same.
        let mut halves = x.clone();
        let (a, b) = halves.split_at_mut(5000);
        dropout_forward(a, p, seed, offset);
        dropout_forward(b, p, seed, offset + 5000);
        assert_eq!(halves, y);

        // A different seed gives a different mask.
        let mut other = x.clone();
        dropout_forward(&mut other, p, seed + 1, offset);
        assert_ne!(other, y);
    }

    #[test]
    fn zero_probability_is_identity_and_one_drops_all() {
        let x = random_vec(2, 1000, 1.0);
        let mut y = x.clone();
        dropout_forward(&mut y, 0.0, 9, 0);
        assert_eq!(y, x);
        dropout_forward(&mut y, 1.0, 9, 0);
        assert!(y.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn backward_matches_finite_differences() {
        let n = 200;
        let x = random_vec(3, n, 1.0);
        let c = random_vec(4, n, 1.0);
        let (p, seed, offset) = (0.25f32, 7u64, 77u64);
        // Backward of L = Σ c ⊙ dropout(x) is dropout_backward(c).
        let mut dx = c.clone();
        dropout_backward(&mut dx, p, seed, offset);
        let want = numeric_grad(
            |x| dot(&c, &dropout_ref(x, p as f64, seed, offset)),
            &to_f64(&x),
            1e-4,
        );
        assert_grad_close("dropout dx", &dx, &want, 1e-6);
        // Same mask as forward: exactly the dropped elements have zero gradient.
        let mut y = x.clone();
        dropout_forward(&mut y, p, seed, offset);
        for i in 0..n {
            assert_eq!(y[i] == 0.0, dx[i] == 0.0, "mask differs at {i}");
        }
    }
}
