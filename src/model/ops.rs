//! Linear layers and LayerNorms on parameters given by their ids (layout.rs), forward
//! and backward. A gradient store is a `zeros_like` of the parameters, so a weight and
//! its bias are found there under the same ids and borrowed together (`pair_mut`).

use super::layout::{LinearIds, NormIds};
use super::params::{FusedLinear, ParamStore};
use crate::kernels::layernorm::{layernorm_backward, layernorm_forward};
use crate::kernels::linear::{linear_backward, linear_forward, linear_forward_packed};
use crate::kernels::matmul::Precision;

/// `y = x Wᵀ + b`: `x` `[rows, i]`, `y` `[rows, o]` (with `W` packed beforehand where
/// the store has it packed: inference).
#[allow(clippy::too_many_arguments)]
pub fn linear(
    p: &ParamStore,
    ids: LinearIds,
    x: &[f32],
    rows: usize,
    i: usize,
    o: usize,
    y: &mut [f32],
) {
    match p.packed_weight(ids.w) {
        Some(w) => linear_forward_packed(x, rows, i, w, Some(p.data(ids.b)), o, false, y),
        None => linear_forward(x, rows, i, p.data(ids.w), Some(p.data(ids.b)), o, y),
    }
}

/// `y = x Wᵀ + b` for the fused layers `f`: `y` `[rows, Σ out]`, each row the parts'
/// outputs side by side.
pub fn linear_fused(f: &FusedLinear, x: &[f32], rows: usize, y: &mut [f32]) {
    let (i, o) = f.shape();
    linear_forward_packed(x, rows, i, &f.weight, Some(&f.bias), o, false, y);
}

/// `y = gelu(x Wᵀ + b)` in one pass over `y`, where the store has `W` packed (inference);
/// returns false, leaving `y` alone, where it does not.
#[allow(clippy::too_many_arguments)]
pub fn linear_gelu_packed(
    p: &ParamStore,
    ids: LinearIds,
    x: &[f32],
    rows: usize,
    i: usize,
    o: usize,
    y: &mut [f32],
) -> bool {
    let Some(w) = p.packed_weight(ids.w) else {
        return false;
    };
    linear_forward_packed(x, rows, i, w, Some(p.data(ids.b)), o, true, y);
    true
}

/// Backward of [`linear`]: writes `dx` (adds to it with `accumulate_dx`) when given;
/// the weight and bias gradients accumulate into `grads`.
#[allow(clippy::too_many_arguments)]
pub fn linear_back(
    p: &ParamStore,
    ids: LinearIds,
    x: &[f32],
    rows: usize,
    i: usize,
    o: usize,
    dy: &[f32],
    dx: Option<&mut [f32]>,
    accumulate_dx: bool,
    grads: &mut ParamStore,
) {
    let (dw, db) = grads.pair_mut(ids.w, ids.b);
    let w = p.data(ids.w);
    // Both gradient products at the precision the forward pass multiplied at (bf16 when
    // a training step packed the weights so: `train --precision bf16`).
    let precision = p
        .packed_weight(ids.w)
        .map_or(Precision::F32, |w| w.precision());
    linear_backward(
        x,
        rows,
        i,
        w,
        o,
        dy,
        dx,
        accumulate_dx,
        dw,
        Some(db),
        precision,
    );
}

/// `y = LN(x)` over `rows` rows of width `d`, also writing each row's mean and 1/std.
#[allow(clippy::too_many_arguments)]
pub fn norm(
    p: &ParamStore,
    ids: NormIds,
    x: &[f32],
    rows: usize,
    d: usize,
    eps: f32,
    [y, mean, rstd]: [&mut [f32]; 3],
) {
    let (g, b) = (p.data(ids.g), p.data(ids.b));
    layernorm_forward(x, rows, d, g, b, eps, y, mean, rstd);
}

/// Backward of [`norm`] from its `[mean, rstd]`: writes `dx` (adds to it with
/// `accumulate_dx`); the gain and bias gradients accumulate into `grads`.
#[allow(clippy::too_many_arguments)]
pub fn norm_back(
    p: &ParamStore,
    ids: NormIds,
    x: &[f32],
    rows: usize,
    d: usize,
    [mean, rstd]: [&[f32]; 2],
    dy: &[f32],
    dx: &mut [f32],
    accumulate_dx: bool,
    grads: &mut ParamStore,
) {
    let (dg, db) = grads.pair_mut(ids.g, ids.b);
    let g = p.data(ids.g);
    layernorm_backward(x, rows, d, g, mean, rstd, dy, dx, accumulate_dx, dg, db);
}
