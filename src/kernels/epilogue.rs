//! What a matrix product does to its result while a finished tile is still in cache:
//! add a bias row, then optionally GELU. Fused this way, a linear layer's bias and a
//! feed-forward block's activation cost no extra pass over memory (inference only: a
//! training forward keeps the pre-activation for the backward pass).

use super::activations::{gelu, gelu_in_place};
use super::fastmath::simd_fn;

#[derive(Clone, Copy, Default, Debug)]
pub struct Epilogue<'a> {
    /// Added to every row (`[n]`, the product's columns).
    pub bias: Option<&'a [f32]>,
    /// GELU (exact, erf) after the bias.
    pub gelu: bool,
}

impl<'a> Epilogue<'a> {
    /// Nothing to do.
    pub fn is_none(&self) -> bool {
        self.bias.is_none() && !self.gelu
    }

    /// The epilogue of the columns from `col0` on (of a product split by columns).
    pub fn from_column(&self, col0: usize) -> Epilogue<'a> {
        Epilogue {
            bias: self.bias.map(|b| &b[col0..]),
            gelu: self.gelu,
        }
    }

    /// Applies to `row`, the result's columns `col0 .. col0 + row.len()` of one row.
    pub fn apply(&self, row: &mut [f32], col0: usize) {
        self.apply_rows(&mut [row], col0);
    }

    /// Applies to `rows`, each the result's columns `col0 .. col0 + len` of one row (all
    /// of one length): one call per finished tile rather than per row (the per-call CPU
    /// dispatch was 1.3% of a forward pass at 32 floats a row).
    pub fn apply_rows(&self, rows: &mut [&mut [f32]], col0: usize) {
        let Some(n) = rows.first().map(|r| r.len()) else {
            return;
        };
        assert!(
            rows.iter().all(|r| r.len() == n),
            "epilogue: rows differ in length"
        );
        match (self.bias, self.gelu) {
            (Some(b), true) => bias_gelu_rows(rows, &b[col0..col0 + n]),
            (Some(b), false) => add_bias_rows(rows, &b[col0..col0 + n]),
            (None, true) => rows.iter_mut().for_each(|r| gelu_in_place(r)),
            (None, false) => {}
        }
    }

    /// Applies to every row of a dense `[rows, n]` result with row stride `ldc`.
    pub fn apply_all(&self, dst: &mut [f32], ldc: usize, rows: usize, n: usize) {
        if self.is_none() {
            return;
        }
        for r in 0..rows {
            self.apply(&mut dst[r * ldc..r * ldc + n], 0);
        }
    }
}

simd_fn! {
    /// `row += bias` for each row (compiled for the widest vectors the CPU has: the
    /// default target's SSE2 loop was 2% of a forward pass).
    fn add_bias_rows(rows: &mut [&mut [f32]], bias: &[f32]) {
        for row in rows.iter_mut() {
            for (x, b) in row.iter_mut().zip(bias) {
                *x += *b;
            }
        }
    }
}

simd_fn! {
    /// `x = gelu(x + bias)` for each row.
    fn bias_gelu_rows(rows: &mut [&mut [f32]], bias: &[f32]) {
        for row in rows.iter_mut() {
            for (x, b) in row.iter_mut().zip(bias) {
                *x = gelu(*x + *b);
            }
        }
    }
}
