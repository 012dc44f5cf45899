//! Multi-head self-attention whose keys/values are a gathered subset of rows.
//!
//! Layout: `q` is `[B, q_len, H*dh]`; `k`, `v` are `[B, kv_len, H*dh]` where `kv_len` is
//! the largest kept count in the batch and example `b` uses only its first `kv_count[b]`
//! slots (the rest are masked out). Head `h` occupies columns `h*dh .. (h+1)*dh`.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    pub batch: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub heads: usize,
    pub head_dim: usize,
}

/// Dropout on the attention probabilities (training only). The mask of probability
/// element `((b*H + h)*q_len + i)*kv_len + j` is `hash_uniform(seed, that index) < p`.
#[derive(Clone, Copy, Debug)]
pub struct AttnDropout {
    pub p: f32,
    pub seed: u64,
}

/// Importance scores requested from the forward pass (method.md): for each example b,
/// head h and key slot j, `out[(b*H + h)*kv_len + j]` = Σ_i w[b,i] P[b,h,i,j] / Σ_i w[b,i],
/// with `query_weight` `[B, q_len]` = 1 for real embedded tokens and 0 for padding and
/// combination tokens, and P the probabilities before dropout.
pub struct Importance<'a> {
    pub query_weight: &'a [f32],
    pub out: &'a mut [f32],
}

/// Forward. `ctx` (`[B, q_len, H*dh]`) is overwritten with dropout(P)·V where
/// P = softmax(scale · q kᵀ) over the valid slots. When `probs` is given
/// (`[B, H, q_len, kv_len]`), P (before dropout, masked slots 0) is stored there for the
/// backward pass; without it the kernel keeps only per-thread scratch (inference).
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(
    d: AttnDims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    kv_count: &[usize],
    scale: f32,
    dropout: Option<AttnDropout>,
    probs: Option<&mut [f32]>,
    ctx: &mut [f32],
    importance: Option<Importance>,
) {
    let _ = (d, q, k, v, kv_count, scale, dropout, probs, ctx, importance);
    todo!("kernels helper")
}

/// Backward. `dq` (`[B, q_len, H*dh]`), `dk`, `dv` (`[B, kv_len, H*dh]`) are
/// overwritten; masked slots get zero gradient.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    d: AttnDims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    kv_count: &[usize],
    scale: f32,
    dropout: Option<AttnDropout>,
    probs: &[f32],
    dctx: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let _ = (
        d, q, k, v, kv_count, scale, dropout, probs, dctx, dq, dk, dv,
    );
    todo!("kernels helper")
}
