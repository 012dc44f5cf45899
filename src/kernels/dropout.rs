//! Inverted dropout whose mask is a pure function of (seed, element index), so backward
//! recomputes it instead of storing it (attention's backward reads it from the sign of
//! the probabilities its forward stores: `Mask::store_signed_and_apply`).
//!
//! The mask of element `n` is `mask_uniform(seed, n) < p`. The uniform comes from a
//! 32-bit hash that vectorises (8 lanes of 32-bit multiplies with AVX2), keyed per
//! block of 2^16 consecutive indices by a 64-bit hash of (seed, block): one scalar
//! `mix64` pair per 65536 elements instead of per element.

use super::fastmath::simd_fn;
use super::linear::add_row;
use crate::rng::mix64;
use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 16 * 1024;

/// log2 of the number of consecutive indices that share one block key.
const KEY_BLOCK_BITS: u32 = 16;
const KEY_BLOCK: u64 = 1 << KEY_BLOCK_BITS;

/// The key of index block `block` (indices `block << 16 ..`) in stream `seed`.
#[inline]
fn block_key(seed: u64, block: u64) -> u32 {
    (mix64(seed ^ mix64(block.wrapping_add(0x632B_E59B_D9B4_E019))) >> 32) as u32
}

/// A 32-bit integer hash with full avalanche (Wellons' "lowbias32"); a bijection, so
/// the 2^16 indices of one block get distinct values.
#[inline(always)]
fn hash32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7FEB_352D);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846C_A68B);
    x ^ (x >> 16)
}

/// 24 random bits of element `low` of a block, as an `f32` integer in [0, 2^24).
#[inline(always)]
fn mask_bits(key: u32, low: u32) -> f32 {
    // < 2^24, so the i32 -> f32 conversion (one vector instruction) is exact.
    (hash32(key ^ low) >> 8) as i32 as f32
}

/// The uniform in [0, 1) (a multiple of 2^-24) that decides whether element `index`
/// of stream `seed` is dropped: it is dropped when this is `< p`. The definition that
/// the vectorised kernels below follow; also the reference for tests.
pub fn mask_uniform(seed: u64, index: u64) -> f32 {
    let key = block_key(seed, index >> KEY_BLOCK_BITS);
    mask_bits(key, (index & (KEY_BLOCK - 1)) as u32) * (1.0 / (1u32 << 24) as f32)
}

/// The dropout mask of one stream: probability `p`, survivors scaled by `1/(1-p)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mask {
    /// `p * 2^24`: element `n` is dropped when its 24 hash bits are below this.
    threshold: f32,
    keep_scale: f32,
    seed: u64,
}

impl Mask {
    pub(crate) fn new(p: f32, seed: u64) -> Self {
        debug_assert!((0.0..=1.0).contains(&p), "dropout probability {p}");
        Mask {
            threshold: p * (1u32 << 24) as f32,
            // With p = 1 every element is dropped, so the infinite scale is never used.
            keep_scale: 1.0 / (1.0 - p),
            seed,
        }
    }

    /// `x[i] = 0` where element `base + i` is dropped, else `x[i] * keep_scale`.
    pub(crate) fn apply(&self, x: &mut [f32], base: u64) {
        self.for_each_block(base, x.len(), |range, key, low| {
            mask_in_place(&mut x[range], key, low, self.threshold, self.keep_scale)
        });
    }

    /// `x[i] = skip[i]` where element `base + i` is dropped, else `x[i] * keep_scale +
    /// skip[i]`: [`Mask::apply`] and a residual sum in one pass.
    pub(crate) fn apply_add(&self, x: &mut [f32], skip: &[f32], base: u64) {
        assert_eq!(x.len(), skip.len(), "dropout: x and skip differ in length");
        self.for_each_block(base, x.len(), |range, key, low| {
            mask_add_in_place(
                &mut x[range.clone()],
                &skip[range],
                key,
                low,
                self.threshold,
                self.keep_scale,
            )
        });
    }

    /// `out[i] = 0` where element `base + i` is dropped, else `x[i] * keep_scale`.
    pub(crate) fn apply_into(&self, x: &[f32], out: &mut [f32], base: u64) {
        assert_eq!(x.len(), out.len(), "dropout: x and out differ in length");
        self.for_each_block(base, x.len(), |range, key, low| {
            mask_into(
                &x[range.clone()],
                &mut out[range],
                key,
                low,
                self.threshold,
                self.keep_scale,
            )
        });
    }

    /// `stored[i] = x[i] * factor`, negated where element `base + i` is dropped, and in
    /// place `x[i] = 0` where it is dropped, else `x[i] * keep_scale` (without
    /// `factor`): one pass for attention rows whose normalised copy is kept (its sign
    /// the mask, for the backward) and whose unnormalised values go on.
    pub(crate) fn store_signed_and_apply(
        &self,
        x: &mut [f32],
        factor: f32,
        stored: &mut [f32],
        base: u64,
    ) {
        assert_eq!(
            x.len(),
            stored.len(),
            "dropout: x and stored differ in length"
        );
        self.for_each_block(base, x.len(), |range, key, low| {
            mask_store(
                &mut x[range.clone()],
                factor,
                &mut stored[range],
                key,
                low,
                self.threshold,
                self.keep_scale,
            )
        });
    }

    /// Splits the element range `base .. base + len` at key-block boundaries and calls
    /// `f(local range, block key, index of the range's first element in its block)`.
    fn for_each_block(
        &self,
        base: u64,
        len: usize,
        mut f: impl FnMut(std::ops::Range<usize>, u32, u32),
    ) {
        let mut done = 0usize;
        while done < len {
            let index = base + done as u64;
            let low = index & (KEY_BLOCK - 1);
            let n = ((KEY_BLOCK - low) as usize).min(len - done);
            f(
                done..done + n,
                block_key(self.seed, index >> KEY_BLOCK_BITS),
                low as u32,
            );
            done += n;
        }
    }
}

/// One element through the mask: 0 where dropped, else scaled by `keep_scale` (the rule
/// every kernel below applies, in place or into another buffer).
#[inline(always)]
fn masked(v: f32, dropped: bool, keep_scale: f32) -> f32 {
    if dropped {
        0.0
    } else {
        v * keep_scale
    }
}

simd_fn! {
    fn mask_in_place(x: &mut [f32], key: u32, low: u32, threshold: f32, keep_scale: f32) {
        for (i, v) in x.iter_mut().enumerate() {
            *v = masked(*v, mask_bits(key, low + i as u32) < threshold, keep_scale);
        }
    }
}

simd_fn! {
    fn mask_add_in_place(
        x: &mut [f32],
        skip: &[f32],
        key: u32,
        low: u32,
        threshold: f32,
        keep_scale: f32,
    ) {
        for (i, (v, &s)) in x.iter_mut().zip(skip).enumerate() {
            *v = masked(*v, mask_bits(key, low + i as u32) < threshold, keep_scale) + s;
        }
    }
}

simd_fn! {
    fn mask_into(x: &[f32], out: &mut [f32], key: u32, low: u32, threshold: f32, keep_scale: f32) {
        for (i, (o, &v)) in out.iter_mut().zip(x).enumerate() {
            *o = masked(v, mask_bits(key, low + i as u32) < threshold, keep_scale);
        }
    }
}

simd_fn! {
    #[allow(clippy::too_many_arguments)]
    fn mask_store(
        x: &mut [f32],
        factor: f32,
        stored: &mut [f32],
        key: u32,
        low: u32,
        threshold: f32,
        keep_scale: f32,
    ) {
        for (i, (v, st)) in x.iter_mut().zip(stored.iter_mut()).enumerate() {
            let dropped = mask_bits(key, low + i as u32) < threshold;
            let scaled = *v * factor;
            *st = if dropped { -scaled } else { scaled };
            *v = masked(*v, dropped, keep_scale);
        }
    }
}

/// Zeroes each element with probability `p` and scales the rest by `1/(1-p)`, in place.
/// Element `i` of the buffer uses mask index `offset + i`.
pub fn dropout_forward(x: &mut [f32], p: f32, seed: u64, offset: u64) {
    debug_assert!((0.0..=1.0).contains(&p), "dropout probability {p}");
    if p <= 0.0 {
        return;
    }
    let mask = Mask::new(p, seed);
    x.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        mask.apply(chunk, offset + (c * CHUNK) as u64);
    });
}

/// A residual block's sum `x = dropout(x) + skip`, in one pass: bit for bit
/// [`dropout_forward`] and then the addition (with `p = 0`, the addition alone).
pub fn dropout_add_forward(x: &mut [f32], skip: &[f32], p: f32, seed: u64, offset: u64) {
    assert_eq!(x.len(), skip.len(), "dropout_add_forward: lengths differ");
    debug_assert!((0.0..=1.0).contains(&p), "dropout probability {p}");
    let mask = (p > 0.0).then(|| Mask::new(p, seed));
    x.par_chunks_mut(CHUNK)
        .zip(skip.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(c, (chunk, skip))| match mask {
            Some(mask) => mask.apply_add(chunk, skip, offset + (c * CHUNK) as u64),
            None => add_row(chunk, skip),
        });
}

/// Applies the same mask (and scale) to a gradient, in place.
pub fn dropout_backward(dx: &mut [f32], p: f32, seed: u64, offset: u64) {
    dropout_forward(dx, p, seed, offset)
}

/// [`dropout_backward`] of `dy` into `dx` (overwritten), `dy` left as it is: for a
/// residual block's output gradient, which goes on unmasked along the skip connection
/// (a copy and then the mask in place took one more pass over both).
pub fn dropout_backward_into(dy: &[f32], dx: &mut [f32], p: f32, seed: u64, offset: u64) {
    assert_eq!(dy.len(), dx.len(), "dropout_backward_into: lengths differ");
    debug_assert!((0.0..=1.0).contains(&p), "dropout probability {p}");
    if p <= 0.0 {
        dx.copy_from_slice(dy);
        return;
    }
    let mask = Mask::new(p, seed);
    dx.par_chunks_mut(CHUNK)
        .zip(dy.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(c, (out, chunk))| mask.apply_into(chunk, out, offset + (c * CHUNK) as u64));
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
                if (mask_uniform(seed, offset + i as u64) as f64) < p {
                    0.0
                } else {
                    v / (1.0 - p)
                }
            })
            .collect()
    }

    #[test]
    fn forward_matches_definition_across_chunks_and_key_blocks() {
        // Longer than several chunks and crossing key blocks, so the per-chunk offsets
        // and the block splitting are exercised.
        let n = 5 * CHUNK + 123;
        let x = random_vec(1, n, 1.0);
        let (p, seed, offset) = (0.3f32, 42u64, 3 * KEY_BLOCK - 1000);
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

        // Out of place, the same bit for bit, also with p = 0 (a plain copy).
        let mut into = vec![f32::NAN; n];
        dropout_backward_into(&x, &mut into, p, seed, offset);
        assert_eq!(into, y);
        dropout_backward_into(&x, &mut into, 0.0, seed, offset);
        assert_eq!(into, x);

        // `store_signed_and_apply` agrees with the in-place form, also at an unaligned
        // base, and stores the scaled input negated exactly where it drops.
        let mask = Mask::new(p, seed);
        let mut masked = x[7..].to_vec();
        let mut stored = vec![f32::NAN; n - 7];
        mask.store_signed_and_apply(&mut masked, 0.5, &mut stored, offset + 7);
        assert_eq!(masked, y[7..]);
        for ((s, &v), &kept) in stored.iter().zip(&x[7..]).zip(&y[7..]) {
            let want = if kept == 0.0 { -(v * 0.5) } else { v * 0.5 };
            assert_eq!(s.to_bits(), want.to_bits());
        }

        // The residual form equals the mask and then the sum, bit for bit, with and
        // without dropout.
        let skip = random_vec(9, n, 1.0);
        let mut summed = x.clone();
        dropout_add_forward(&mut summed, &skip, p, seed, offset);
        let want: Vec<f32> = y.iter().zip(&skip).map(|(&a, &b)| a + b).collect();
        assert_eq!(summed, want);
        let mut summed = x.clone();
        dropout_add_forward(&mut summed, &skip, 0.0, seed, offset);
        let want: Vec<f32> = x.iter().zip(&skip).map(|(&a, &b)| a + b).collect();
        assert_eq!(summed, want);

        // A different seed gives a different mask.
        let mut other = x.clone();
        dropout_forward(&mut other, p, seed + 1, offset);
        assert_ne!(other, y);
    }

    #[test]
    fn mask_is_unbiased_and_uncorrelated() {
        // Mean 1/2 and no correlation between neighbours, within and across key
        // blocks, and between two streams.
        let n = 4 * KEY_BLOCK;
        let u: Vec<f64> = (0..n).map(|i| mask_uniform(9, i) as f64 - 0.5).collect();
        let w: Vec<f64> = (0..n).map(|i| mask_uniform(10, i) as f64 - 0.5).collect();
        let nf = n as f64;
        let mean = u.iter().sum::<f64>() / nf;
        assert!(mean.abs() < 0.003, "mean {mean}");
        let var = 1.0 / 12.0;
        for lag in [1usize, 2, 8, 512] {
            let c = u.iter().zip(&u[lag..]).map(|(a, b)| a * b).sum::<f64>() / nf / var;
            assert!(c.abs() < 0.01, "lag {lag}: correlation {c}");
        }
        let c = u.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>() / nf / var;
        assert!(c.abs() < 0.01, "streams: correlation {c}");
        let block = KEY_BLOCK as usize;
        let c = u.iter().zip(&u[block..]).map(|(a, b)| a * b).sum::<f64>() / nf / var;
        assert!(c.abs() < 0.01, "blocks: correlation {c}");
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
