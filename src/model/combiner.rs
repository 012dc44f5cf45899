//! Token combining module (method.md, "Token combining module"): replaces transformer
//! layer L_c, assigns every real token to one of m combination tokens with a hard
//! (straight-through) Gumbel-softmax, and updates each combination token with the mean of
//! its tokens' values.

use super::params::{ParamId, ParamStore};

/// Parameter ids, by the names of `extra_weights.safetensors`
/// (`combiner.norm_c.weight`, ..., `combiner.w_o.bias`).
#[derive(Clone, Copy, Debug)]
pub struct CombinerIds {
    pub norm_c_w: ParamId,
    pub norm_c_b: ParamId,
    pub norm_e_w: ParamId,
    pub norm_e_b: ParamId,
    pub w_q: ParamId,
    pub b_q: ParamId,
    pub w_k: ParamId,
    pub b_k: ParamId,
    pub w_v: ParamId,
    pub b_v: ParamId,
    pub w_o: ParamId,
    pub b_o: ParamId,
}

impl CombinerIds {
    /// Looks the combiner's tensors up by name; `None` if any is missing.
    pub fn lookup(store: &ParamStore) -> Option<Self> {
        let g = |n: &str| store.id(&format!("combiner.{n}"));
        Some(CombinerIds {
            norm_c_w: g("norm_c.weight")?,
            norm_c_b: g("norm_c.bias")?,
            norm_e_w: g("norm_e.weight")?,
            norm_e_b: g("norm_e.bias")?,
            w_q: g("w_q.weight")?,
            b_q: g("w_q.bias")?,
            w_k: g("w_k.weight")?,
            b_k: g("w_k.bias")?,
            w_v: g("w_v.weight")?,
            b_v: g("w_v.bias")?,
            w_o: g("w_o.weight")?,
            b_o: g("w_o.bias")?,
        })
    }
}

/// Shapes: `hidden` is `[batch, n + m, d]` with the n embedded positions first and the m
/// combination tokens after them.
#[derive(Clone, Copy, Debug)]
pub struct CombinerDims {
    pub batch: usize,
    pub n: usize,
    pub m: usize,
    pub d: usize,
}

#[derive(Clone, Copy, Debug)]
pub struct CombinerSettings {
    /// Multiplies the assignment logits (1 = the paper's unscaled eq. 9).
    pub scale: f32,
    pub assign_eps: f32,
    pub ln_eps: f32,
    /// Gumbel noise seed (training); `None` = no noise (evaluation).
    pub gumbel_seed: Option<u64>,
}

/// What the backward pass needs.
pub struct CombinerTape {}

/// Forward. Writes the combined tokens to `out` (`[batch, m, d]`) and returns the
/// assignment of each embedded position (`[batch, n]`, -1 for padding). With `record`,
/// returns the tape for `combiner_backward`.
#[allow(clippy::too_many_arguments)]
pub fn combiner_forward(
    p: &ParamStore,
    ids: &CombinerIds,
    dims: CombinerDims,
    set: &CombinerSettings,
    hidden: &[f32],
    real: &[bool],
    out: &mut [f32],
    record: bool,
) -> (Vec<i64>, Option<CombinerTape>) {
    let _ = (p, ids, dims, set, hidden, real, out, record);
    todo!("combiner helper")
}

/// Backward from `dout` (`[batch, m, d]`): overwrites `dhidden` (`[batch, n + m, d]`) and
/// accumulates parameter gradients into `grads` (same names as the parameters).
pub fn combiner_backward(
    p: &ParamStore,
    ids: &CombinerIds,
    dims: CombinerDims,
    tape: &CombinerTape,
    dout: &[f32],
    dhidden: &mut [f32],
    grads: &mut ParamStore,
) {
    let _ = (p, ids, dims, tape, dout, dhidden, grads);
    todo!("combiner helper")
}
