//! Multi-head self-attention whose keys/values are a gathered subset of rows.
//!
//! Layout: `q` is `[B, q_len, H*dh]`; `k`, `v` are `[B, kv_len, H*dh]` where `kv_len` is
//! the largest kept count in the batch and example `b` uses only its first `kv_count[b]`
//! slots (the rest are masked out). Head `h` occupies columns `h*dh .. (h+1)*dh`.
//!
//! Both passes run one rayon task per (example, head) pair; each task uses serial
//! matmuls on strided views of its head's columns and writes its results into a dense
//! per-head buffer, which is scattered into the interleaved `[B, len, H*dh]` layout
//! afterwards (the heads' column blocks interleave in memory, so tasks cannot each own
//! a plain sub-slice of the output).

use super::dropout::apply_mask;
use super::fastmath::{exp_f32, simd_fn};
use super::matmul::{matmul, MatRef, Par};
use rayon::prelude::*;

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
    d.check_inputs(q, k, v, kv_count);
    let AttnDims {
        batch,
        q_len,
        kv_len,
        heads,
        head_dim,
    } = d;
    let width = heads * head_dim;
    let tasks = batch * heads;
    let plane = q_len * kv_len;
    assert_eq!(
        ctx.len(),
        batch * q_len * width,
        "attention_forward: ctx length"
    );
    // The softmax takes the row max of the unscaled scores, valid for scale > 0.
    assert!(
        scale > 0.0,
        "attention_forward: scale {scale} must be positive"
    );
    let dropout = dropout.filter(|dr| dr.p > 0.0);

    // Split the optional per-(b, h) outputs into one slot per task.
    let mut probs_slots: Vec<Option<&mut [f32]>> = match probs {
        Some(p) => {
            assert_eq!(p.len(), tasks * plane, "attention_forward: probs length");
            p.chunks_mut(plane.max(1)).map(Some).collect()
        }
        None => Vec::new(),
    };
    probs_slots.resize_with(tasks, || None);
    let (query_weight, mut importance_slots): (Option<&[f32]>, Vec<Option<&mut [f32]>>) =
        match importance {
            Some(imp) => {
                assert_eq!(
                    imp.query_weight.len(),
                    batch * q_len,
                    "attention_forward: query_weight length"
                );
                assert_eq!(
                    imp.out.len(),
                    tasks * kv_len,
                    "attention_forward: importance length"
                );
                (
                    Some(imp.query_weight),
                    imp.out.chunks_mut(kv_len.max(1)).map(Some).collect(),
                )
            }
            None => (None, Vec::new()),
        };
    importance_slots.resize_with(tasks, || None);
    if tasks == 0 || q_len == 0 || head_dim == 0 {
        return;
    }
    if kv_len == 0 {
        // Nothing to attend to anywhere: ctx is zero, probs and importance are empty.
        ctx.fill(0.0);
        return;
    }

    // ctx per head, dense: [B, H, q_len, dh].
    let mut ctx_heads = vec![0.0f32; tasks * q_len * head_dim];
    ctx_heads
        .par_chunks_mut(q_len * head_dim)
        .zip(probs_slots.into_par_iter())
        .zip(importance_slots.into_par_iter())
        .enumerate()
        .for_each_init(
            Scratch::default,
            |scratch, (bh, ((ctx_h, probs_bh), importance_bh))| {
                let (b, h) = (bh / heads, bh % heads);
                let kvc = kv_count[b];
                let view = HeadViews::new(d, q, k, v, b, h, kvc);
                let drop_mask = dropout.map(|dr| RowDropout::new(dr, bh, d));
                let weights = query_weight.map(|w| &w[b * q_len..(b + 1) * q_len]);

                // P lives in the caller's `probs` when given (needed by backward), else in
                // scratch; dropout then works on a scratch copy or in place respectively.
                let p_drop: &[f32] = match probs_bh {
                    Some(p) => {
                        probabilities(&view, scale, kvc, kv_len, p);
                        if let (Some(out), Some(w)) = (importance_bh, weights) {
                            importance_from(p, w, kvc, kv_len, &mut scratch.acc, out);
                        }
                        match drop_mask {
                            Some(mask) => {
                                let pd = scratch.plane(plane);
                                pd.copy_from_slice(p);
                                mask.apply(pd, kvc, kv_len);
                                pd
                            }
                            None => p,
                        }
                    }
                    None => {
                        let (pbuf, acc) = scratch.plane_and_acc(plane);
                        probabilities(&view, scale, kvc, kv_len, pbuf);
                        if let (Some(out), Some(w)) = (importance_bh, weights) {
                            importance_from(pbuf, w, kvc, kv_len, acc, out);
                        }
                        if let Some(mask) = drop_mask {
                            mask.apply(pbuf, kvc, kv_len);
                        }
                        pbuf
                    }
                };
                // ctx_h = P_drop[:, ..kvc] · V[..kvc]; with kvc = 0 matmul writes zeros.
                matmul(
                    ctx_h,
                    head_dim,
                    MatRef::strided(p_drop, q_len, kvc, kv_len),
                    view.v,
                    false,
                    Par::Serial,
                );
            },
        );
    scatter_heads(&ctx_heads, batch, q_len, heads, head_dim, ctx);
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
    d.check_inputs(q, k, v, kv_count);
    let AttnDims {
        batch,
        q_len,
        kv_len,
        heads,
        head_dim,
    } = d;
    let width = heads * head_dim;
    let tasks = batch * heads;
    let plane = q_len * kv_len;
    assert_eq!(
        probs.len(),
        tasks * plane,
        "attention_backward: probs length"
    );
    assert_eq!(
        dctx.len(),
        batch * q_len * width,
        "attention_backward: dctx length"
    );
    assert_eq!(dq.len(), q.len(), "attention_backward: dq length");
    assert_eq!(dk.len(), k.len(), "attention_backward: dk length");
    assert_eq!(dv.len(), v.len(), "attention_backward: dv length");
    if tasks == 0 || q_len == 0 || kv_len == 0 || head_dim == 0 {
        dq.fill(0.0);
        dk.fill(0.0);
        dv.fill(0.0);
        return;
    }
    let dropout = dropout.filter(|dr| dr.p > 0.0);

    // Per-head gradients, dense: [B, H, len, dh].
    let mut dq_heads = vec![0.0f32; tasks * q_len * head_dim];
    let mut dk_heads = vec![0.0f32; tasks * kv_len * head_dim];
    let mut dv_heads = vec![0.0f32; tasks * kv_len * head_dim];
    dq_heads
        .par_chunks_mut(q_len * head_dim)
        .zip(dk_heads.par_chunks_mut(kv_len * head_dim))
        .zip(dv_heads.par_chunks_mut(kv_len * head_dim))
        .enumerate()
        .for_each_init(Scratch::default, |scratch, (bh, ((dq_h, dk_h), dv_h))| {
            let (b, h) = (bh / heads, bh % heads);
            let kvc = kv_count[b];
            if kvc == 0 {
                // No valid slot: ctx was constant zero, so every gradient is zero
                // (the buffers start zeroed).
                return;
            }
            let view = HeadViews::new(d, q, k, v, b, h, kvc);
            let dctx_h = MatRef::strided(
                &dctx[b * q_len * width + h * head_dim..],
                q_len,
                head_dim,
                width,
            );
            let p = &probs[bh * plane..(bh + 1) * plane];
            let (pd_buf, ds_buf) = scratch.two_planes(plane);

            let (p_drop, keep_scale): (&[f32], f32) = match dropout {
                Some(dr) => {
                    pd_buf.copy_from_slice(p);
                    RowDropout::new(dr, bh, d).apply(pd_buf, kvc, kv_len);
                    (pd_buf, 1.0 / (1.0 - dr.p))
                }
                None => (p, 1.0),
            };
            let p_drop_view = MatRef::strided(p_drop, q_len, kvc, kv_len);

            // dV = P_dropᵀ · dctx   [kvc, dh]; slots past kvc stay zero.
            matmul(dv_h, head_dim, p_drop_view.t(), dctx_h, false, Par::Serial);
            // dP_drop = dctx · Vᵀ   [q_len, kvc] (row stride kv_len)
            matmul(ds_buf, kv_len, dctx_h, view.v.t(), false, Par::Serial);
            // dS = scale · P ⊙ (dP - rowsum(dP ⊙ P)), row by row, in place.
            for i in 0..q_len {
                let row = i * kv_len..i * kv_len + kvc;
                let pd_row = dropout.map(|_| &p_drop[row.clone()]);
                softmax_grad_row(&p[row.clone()], pd_row, &mut ds_buf[row], keep_scale, scale);
            }
            let ds_view = MatRef::strided(ds_buf, q_len, kvc, kv_len);
            // dQ = dS · K   [q_len, dh]
            matmul(dq_h, head_dim, ds_view, view.k, false, Par::Serial);
            // dK = dSᵀ · Q   [kvc, dh]
            matmul(dk_h, head_dim, ds_view.t(), view.q, false, Par::Serial);
        });
    scatter_heads(&dq_heads, batch, q_len, heads, head_dim, dq);
    scatter_heads(&dk_heads, batch, kv_len, heads, head_dim, dk);
    scatter_heads(&dv_heads, batch, kv_len, heads, head_dim, dv);
}

impl AttnDims {
    fn check_inputs(&self, q: &[f32], k: &[f32], v: &[f32], kv_count: &[usize]) {
        let width = self.heads * self.head_dim;
        assert_eq!(
            q.len(),
            self.batch * self.q_len * width,
            "attention: q length"
        );
        assert_eq!(
            k.len(),
            self.batch * self.kv_len * width,
            "attention: k length"
        );
        assert_eq!(
            v.len(),
            self.batch * self.kv_len * width,
            "attention: v length"
        );
        assert_eq!(kv_count.len(), self.batch, "attention: kv_count length");
        for (b, &c) in kv_count.iter().enumerate() {
            assert!(
                c <= self.kv_len,
                "attention: kv_count[{b}] = {c} > kv_len {}",
                self.kv_len
            );
        }
    }
}

/// Strided views of one (example, head): `q` is `[q_len, dh]`, `k` and `v` are the
/// first `kvc` slots, `[kvc, dh]`.
struct HeadViews<'a> {
    q: MatRef<'a>,
    k: MatRef<'a>,
    v: MatRef<'a>,
}

impl<'a> HeadViews<'a> {
    fn new(
        d: AttnDims,
        q: &'a [f32],
        k: &'a [f32],
        v: &'a [f32],
        b: usize,
        h: usize,
        kvc: usize,
    ) -> Self {
        let width = d.heads * d.head_dim;
        let col = h * d.head_dim;
        let q_start = b * d.q_len * width + col;
        let kv_start = b * d.kv_len * width + col;
        HeadViews {
            q: MatRef::strided(&q[q_start..], d.q_len, d.head_dim, width),
            k: MatRef::strided(&k[kv_start..], kvc, d.head_dim, width),
            v: MatRef::strided(&v[kv_start..], kvc, d.head_dim, width),
        }
    }
}

/// Per-task scratch, reused across the tasks a rayon worker runs.
#[derive(Default)]
struct Scratch {
    a: Vec<f32>,
    b: Vec<f32>,
    acc: Vec<f64>,
}

impl Scratch {
    fn plane(&mut self, len: usize) -> &mut [f32] {
        self.a.resize(len, 0.0);
        &mut self.a[..len]
    }

    fn plane_and_acc(&mut self, len: usize) -> (&mut [f32], &mut Vec<f64>) {
        self.a.resize(len, 0.0);
        (&mut self.a[..len], &mut self.acc)
    }

    fn two_planes(&mut self, len: usize) -> (&mut [f32], &mut [f32]) {
        self.a.resize(len, 0.0);
        self.b.resize(len, 0.0);
        (&mut self.a[..len], &mut self.b[..len])
    }
}

/// The attention-dropout mask of one (example, head) plane.
#[derive(Clone, Copy)]
struct RowDropout {
    p: f32,
    keep_scale: f32,
    seed: u64,
    /// Mask index of element (0, 0) of this plane: `(b*H + h) * q_len * kv_len`.
    plane_base: u64,
}

impl RowDropout {
    fn new(dr: AttnDropout, bh: usize, d: AttnDims) -> Self {
        RowDropout {
            p: dr.p,
            keep_scale: 1.0 / (1.0 - dr.p),
            seed: dr.seed,
            plane_base: (bh * d.q_len * d.kv_len) as u64,
        }
    }

    /// Drops and rescales the valid slots of every row of `plane` (`[q_len, kv_len]`).
    fn apply(&self, plane: &mut [f32], kvc: usize, kv_len: usize) {
        for (i, row) in plane.chunks_mut(kv_len).enumerate() {
            let base = self.plane_base + (i * kv_len) as u64;
            apply_mask(&mut row[..kvc], self.p, self.keep_scale, self.seed, base);
        }
    }
}

/// `p` (`[q_len, kv_len]`) = row softmax of `scale · q kᵀ` over the first `kvc` slots;
/// the other slots are exactly 0 (and every slot is 0 when `kvc == 0`).
fn probabilities(view: &HeadViews, scale: f32, kvc: usize, kv_len: usize, p: &mut [f32]) {
    if kvc > 0 {
        matmul(p, kv_len, view.q, view.k.t(), false, Par::Serial);
    }
    for row in p.chunks_mut(kv_len) {
        let (valid, masked) = row.split_at_mut(kvc);
        softmax_row(valid, scale);
        masked.fill(0.0);
    }
}

/// `out[j] = Σ_i w[i] P[i, j] / Σ_i w[i]` over the valid slots, 0 elsewhere, and all 0
/// when the weights sum to 0 (an example without real queries). Sums in f64 because
/// the scores are ranked to make discrete pruning decisions.
fn importance_from(
    p: &[f32],
    w: &[f32],
    kvc: usize,
    kv_len: usize,
    acc: &mut Vec<f64>,
    out: &mut [f32],
) {
    acc.clear();
    acc.resize(kvc, 0.0);
    let mut total = 0.0f64;
    for (row, &wi) in p.chunks(kv_len).zip(w) {
        if wi == 0.0 {
            continue;
        }
        total += wi as f64;
        for (a, &pv) in acc.iter_mut().zip(&row[..kvc]) {
            *a += wi as f64 * pv as f64;
        }
    }
    let inv = if total == 0.0 { 0.0 } else { 1.0 / total };
    for (o, &a) in out[..kvc].iter_mut().zip(acc.iter()) {
        *o = (a * inv) as f32;
    }
    out[kvc..].fill(0.0);
}

/// Copies per-head rows `[B, H, len, dh]` into the interleaved `[B, len, H*dh]`.
fn scatter_heads(
    heads_buf: &[f32],
    batch: usize,
    len: usize,
    heads: usize,
    head_dim: usize,
    out: &mut [f32],
) {
    let width = heads * head_dim;
    if width == 0 {
        return;
    }
    debug_assert_eq!(out.len(), batch * len * width);
    out.par_chunks_mut(width)
        .enumerate()
        .for_each(|(r, out_row)| {
            let (b, i) = (r / len, r % len);
            for (h, dst) in out_row.chunks_mut(head_dim).enumerate() {
                let src = ((b * heads + h) * len + i) * head_dim;
                dst.copy_from_slice(&heads_buf[src..src + head_dim]);
            }
        });
}

/// Lanes of the manual reductions below: eight independent partial results let the
/// compiler vectorise them (a single running float sum cannot be reordered).
const LANES: usize = 8;

#[inline(always)]
fn lane_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    let mut max = f32::NEG_INFINITY;
    for &v in acc.iter().chain(chunks.remainder()) {
        max = if v > max { v } else { max };
    }
    max
}

#[inline(always)]
fn lane_sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

#[inline(always)]
fn lane_dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut xc = x.chunks_exact(LANES);
    let mut yc = y.chunks_exact(LANES);
    for (a, b) in (&mut xc).zip(&mut yc) {
        for l in 0..LANES {
            acc[l] += a[l] * b[l];
        }
    }
    let tail: f32 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    acc.iter().sum::<f32>() + tail
}

simd_fn! {
    /// In place: `row = softmax(scale · row)`, numerically stable (max subtracted).
    /// Each step is its own simple loop so that each one vectorises.
    fn softmax_row(row: &mut [f32], scale: f32) {
        if row.is_empty() {
            return;
        }
        // scale > 0, so the max of the raw scores gives the max of the scaled ones.
        let max = lane_max(row);
        for x in row.iter_mut() {
            *x = exp_f32((*x - max) * scale);
        }
        let inv = 1.0 / lane_sum(row);
        for x in row.iter_mut() {
            *x *= inv;
        }
    }
}

simd_fn! {
    /// In place: `ds = scale · p ⊙ (dp - Σ_j dp_j p_j)` where `dp` holds the gradient
    /// with respect to the *dropped-out* probabilities on entry. With dropout
    /// (`p_drop` given), `dp = dp_drop ⊙ mask / (1-p)`; the mask is read off `p_drop`:
    /// a nonzero entry was kept, and a zero entry was either dropped (gradient 0) or
    /// has `p = 0`, where the gradient is multiplied by 0 anyway.
    fn softmax_grad_row(p: &[f32], p_drop: Option<&[f32]>, ds: &mut [f32], keep_scale: f32, scale: f32) {
        if let Some(pd) = p_drop {
            for (g, &kept) in ds.iter_mut().zip(pd) {
                *g = if kept != 0.0 { *g * keep_scale } else { 0.0 };
            }
        }
        let dot = lane_dot(ds, p);
        for (g, &pv) in ds.iter_mut().zip(p) {
            *g = scale * pv * (*g - dot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::{assert_grad_close, dot, numeric_grad, random_vec, to_f64};
    use crate::rng::hash_uniform;

    /// Outputs of the f64 reference.
    struct RefOut {
        ctx: Vec<f64>,
        probs: Vec<f64>,
        importance: Vec<f64>,
    }

    /// Straight from the definitions, one (b, h, i) at a time, in f64.
    #[allow(clippy::too_many_arguments)]
    fn attention_ref(
        d: AttnDims,
        q: &[f64],
        k: &[f64],
        v: &[f64],
        kv_count: &[usize],
        scale: f64,
        dropout: Option<AttnDropout>,
        query_weight: &[f32],
    ) -> RefOut {
        let AttnDims {
            batch,
            q_len,
            kv_len,
            heads,
            head_dim,
        } = d;
        let width = heads * head_dim;
        let mut ctx = vec![0.0; batch * q_len * width];
        let mut probs = vec![0.0; batch * heads * q_len * kv_len];
        let mut importance = vec![0.0; batch * heads * kv_len];
        for b in 0..batch {
            let kvc = kv_count[b];
            for h in 0..heads {
                let bh = b * heads + h;
                let mut wsum = 0.0;
                for i in 0..q_len {
                    let qi = &q[(b * q_len + i) * width + h * head_dim..][..head_dim];
                    let scores: Vec<f64> = (0..kvc)
                        .map(|j| {
                            let kj = &k[(b * kv_len + j) * width + h * head_dim..][..head_dim];
                            scale * qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                    let w = query_weight[b * q_len + i] as f64;
                    wsum += w;
                    for j in 0..kvc {
                        let pij = (scores[j] - max).exp() / z;
                        let index = (bh * q_len + i) * kv_len + j;
                        probs[index] = pij;
                        importance[bh * kv_len + j] += w * pij;
                        let pd = match dropout {
                            Some(dr) if hash_uniform(dr.seed, index as u64) < dr.p => 0.0,
                            Some(dr) => pij / (1.0 - dr.p as f64),
                            None => pij,
                        };
                        let vj = &v[(b * kv_len + j) * width + h * head_dim..][..head_dim];
                        for c in 0..head_dim {
                            ctx[(b * q_len + i) * width + h * head_dim + c] += pd * vj[c];
                        }
                    }
                }
                for j in 0..kv_len {
                    let o = &mut importance[bh * kv_len + j];
                    *o = if wsum == 0.0 { 0.0 } else { *o / wsum };
                }
            }
        }
        RefOut {
            ctx,
            probs,
            importance,
        }
    }

    struct Case {
        d: AttnDims,
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
        kv_count: Vec<usize>,
        query_weight: Vec<f32>,
        scale: f32,
    }

    fn case(d: AttnDims, kv_count: &[usize], seed: u64) -> Case {
        let width = d.heads * d.head_dim;
        // Query weights: a mix of 1 and 0, and example 1 (if any) with no real query.
        let query_weight = (0..d.batch * d.q_len)
            .map(|r| {
                let (b, i) = (r / d.q_len, r % d.q_len);
                if b == 1 || i % 3 == 2 {
                    0.0
                } else {
                    1.0
                }
            })
            .collect();
        Case {
            d,
            q: random_vec(seed, d.batch * d.q_len * width, 1.0),
            k: random_vec(seed + 1, d.batch * d.kv_len * width, 1.0),
            v: random_vec(seed + 2, d.batch * d.kv_len * width, 1.0),
            kv_count: kv_count.to_vec(),
            query_weight,
            scale: 1.0 / (d.head_dim as f32).sqrt(),
        }
    }

    struct FwdOut {
        ctx: Vec<f32>,
        probs: Vec<f32>,
        importance: Vec<f32>,
    }

    fn run_forward(c: &Case, dropout: Option<AttnDropout>, store_probs: bool) -> FwdOut {
        let d = c.d;
        let width = d.heads * d.head_dim;
        let mut ctx = vec![f32::NAN; d.batch * d.q_len * width];
        let mut probs = vec![f32::NAN; d.batch * d.heads * d.q_len * d.kv_len];
        let mut importance = vec![f32::NAN; d.batch * d.heads * d.kv_len];
        attention_forward(
            d,
            &c.q,
            &c.k,
            &c.v,
            &c.kv_count,
            c.scale,
            dropout,
            if store_probs { Some(&mut probs) } else { None },
            &mut ctx,
            Some(Importance {
                query_weight: &c.query_weight,
                out: &mut importance,
            }),
        );
        FwdOut {
            ctx,
            probs,
            importance,
        }
    }

    fn close(name: &str, got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "{name}: length");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= tol * (1.0 + w.abs()),
                "{name}[{i}]: {g} vs {w}"
            );
        }
    }

    /// Forward against the reference, then backward against central differences of it.
    fn check(c: &Case, dropout: Option<AttnDropout>) {
        let d = c.d;
        let (q64, k64, v64) = (to_f64(&c.q), to_f64(&c.k), to_f64(&c.v));
        let scale = c.scale as f64;
        let want = attention_ref(
            d,
            &q64,
            &k64,
            &v64,
            &c.kv_count,
            scale,
            dropout,
            &c.query_weight,
        );
        let got = run_forward(c, dropout, true);
        close("ctx", &got.ctx, &want.ctx, 2e-6);
        close("probs", &got.probs, &want.probs, 1e-6);
        close("importance", &got.importance, &want.importance, 1e-6);

        // Masked slots: exactly zero probability and importance.
        for b in 0..d.batch {
            for h in 0..d.heads {
                let bh = b * d.heads + h;
                for j in c.kv_count[b]..d.kv_len {
                    assert_eq!(got.importance[bh * d.kv_len + j], 0.0);
                    for i in 0..d.q_len {
                        assert_eq!(got.probs[(bh * d.q_len + i) * d.kv_len + j], 0.0);
                    }
                }
            }
        }

        // The inference path (no stored probs) gives bit-identical ctx and importance.
        let inference = run_forward(c, dropout, false);
        assert_eq!(inference.ctx, got.ctx);
        assert_eq!(inference.importance, got.importance);

        // Backward of L = Σ dctx ⊙ ctx.
        let dctx = random_vec(99, got.ctx.len(), 1.0);
        let mut dq = vec![f32::NAN; c.q.len()];
        let mut dk = vec![f32::NAN; c.k.len()];
        let mut dv = vec![f32::NAN; c.v.len()];
        attention_backward(
            d,
            &c.q,
            &c.k,
            &c.v,
            &c.kv_count,
            c.scale,
            dropout,
            &got.probs,
            &dctx,
            &mut dq,
            &mut dk,
            &mut dv,
        );
        let loss = |q: &[f64], k: &[f64], v: &[f64]| {
            dot(
                &dctx,
                &attention_ref(d, q, k, v, &c.kv_count, scale, dropout, &c.query_weight).ctx,
            )
        };
        let h = 1e-5;
        let gq = numeric_grad(|x| loss(x, &k64, &v64), &q64, h);
        let gk = numeric_grad(|x| loss(&q64, x, &v64), &k64, h);
        let gv = numeric_grad(|x| loss(&q64, &k64, x), &v64, h);
        for (name, got, want) in [("dq", &dq, &gq), ("dk", &dk, &gk), ("dv", &dv, &gv)] {
            if want.iter().all(|w| w.abs() < 1e-9) {
                // E.g. one valid slot: P = 1 whatever q and k are.
                assert!(
                    got.iter().all(|g| g.abs() < 1e-6),
                    "attention {name}: expected zero"
                );
            } else {
                assert_grad_close(&format!("attention {name}"), got, want, 2e-5);
            }
        }

        // Masked key/value slots get exactly zero gradient.
        let width = d.heads * d.head_dim;
        for b in 0..d.batch {
            for j in c.kv_count[b]..d.kv_len {
                let row = (b * d.kv_len + j) * width..(b * d.kv_len + j + 1) * width;
                assert!(dk[row.clone()].iter().all(|&x| x == 0.0));
                assert!(dv[row].iter().all(|&x| x == 0.0));
            }
        }
    }

    fn dims(batch: usize, q_len: usize, kv_len: usize, heads: usize, head_dim: usize) -> AttnDims {
        AttnDims {
            batch,
            q_len,
            kv_len,
            heads,
            head_dim,
        }
    }

    #[test]
    fn matches_reference_with_masking() {
        // Example 0 uses every slot, 1 and 2 fewer; q_len != kv_len (gathered keys).
        let c = case(dims(3, 6, 5, 2, 3), &[5, 3, 1], 10);
        check(&c, None);
    }

    #[test]
    fn matches_reference_with_dropout() {
        let c = case(dims(3, 6, 5, 2, 3), &[5, 4, 2], 20);
        let dropout = AttnDropout { p: 0.3, seed: 1234 };
        check(&c, Some(dropout));
        // The mask really dropped something and depends on the seed.
        let a = run_forward(&c, Some(dropout), true);
        let b = run_forward(&c, Some(AttnDropout { p: 0.3, seed: 1235 }), true);
        let none = run_forward(&c, None, true);
        assert_ne!(a.ctx, none.ctx);
        assert_ne!(a.ctx, b.ctx);
        // Probabilities and importance are taken before dropout.
        assert_eq!(a.probs, none.probs);
        assert_eq!(a.importance, none.importance);
    }

    #[test]
    fn matches_reference_on_wider_shapes() {
        // Rows longer than the 8-lane chunks (remainders included), several heads.
        let c = case(dims(2, 13, 19, 3, 8), &[19, 11], 30);
        check(&c, Some(AttnDropout { p: 0.1, seed: 5 }));
    }

    #[test]
    fn zero_valid_slots_is_finite_and_zero() {
        let c = case(dims(2, 4, 3, 2, 4), &[3, 0], 40);
        let out = run_forward(&c, Some(AttnDropout { p: 0.2, seed: 3 }), true);
        assert!(out
            .ctx
            .iter()
            .chain(&out.probs)
            .chain(&out.importance)
            .all(|x| x.is_finite()));
        let width = 2 * 4;
        // Example 1: ctx rows, probabilities and importance all exactly 0.
        assert!(out.ctx[4 * width..].iter().all(|&x| x == 0.0));
        assert!(out.probs[2 * 4 * 3..].iter().all(|&x| x == 0.0));
        assert!(out.importance[2 * 3..].iter().all(|&x| x == 0.0));
        // Gradients: finite, and zero for the empty example; example 0 still checked.
        check(&c, Some(AttnDropout { p: 0.2, seed: 3 }));
        let mut dq = vec![f32::NAN; c.q.len()];
        let mut dk = vec![f32::NAN; c.k.len()];
        let mut dv = vec![f32::NAN; c.v.len()];
        let dctx = random_vec(7, out.ctx.len(), 1.0);
        attention_backward(
            c.d,
            &c.q,
            &c.k,
            &c.v,
            &c.kv_count,
            c.scale,
            None,
            &out.probs,
            &dctx,
            &mut dq,
            &mut dk,
            &mut dv,
        );
        assert!(dq[4 * width..].iter().all(|&x| x == 0.0));
        assert!(dk[3 * width..]
            .iter()
            .chain(&dv[3 * width..])
            .all(|&x| x == 0.0));
        assert!(dq.iter().chain(&dk).chain(&dv).all(|x| x.is_finite()));
    }

    #[test]
    fn single_valid_slot_copies_its_value() {
        // With one slot the probability is 1, ctx equals that slot's value row, and q, k
        // get zero gradient (checked inside `check`).
        let c = case(dims(1, 3, 4, 2, 2), &[1], 50);
        let out = run_forward(&c, None, true);
        let width = 4;
        for i in 0..3 {
            assert_eq!(&out.ctx[i * width..(i + 1) * width], &c.v[..width]);
        }
        check(&c, None);
    }

    #[test]
    fn large_scores_stay_stable() {
        let mut c = case(dims(1, 4, 6, 1, 4), &[6], 60);
        for x in c.q.iter_mut() {
            *x *= 300.0; // scores in the thousands: exp would overflow without the max shift
        }
        let out = run_forward(&c, None, true);
        assert!(out.ctx.iter().chain(&out.probs).all(|x| x.is_finite()));
        for row in out.probs.chunks(6) {
            let s: f32 = row.iter().sum();
            assert!((s - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    #[ignore = "timing printout, run by hand"]
    fn attention_timing_minilm_shape() {
        // MiniLM (H=12, dh=32), B=8, 512 queries and keys.
        let c = case(
            dims(8, 512, 512, 12, 32),
            &[512, 512, 400, 512, 300, 512, 512, 100],
            70,
        );
        let n_probs = 8 * 12 * 512 * 512;
        let mut probs = vec![0.0f32; n_probs];
        let mut ctx = vec![0.0f32; c.q.len()];
        for _ in 0..3 {
            let t = std::time::Instant::now();
            attention_forward(
                c.d,
                &c.q,
                &c.k,
                &c.v,
                &c.kv_count,
                c.scale,
                None,
                None,
                &mut ctx,
                None,
            );
            let inference = t.elapsed();
            let t = std::time::Instant::now();
            let dropout = Some(AttnDropout { p: 0.1, seed: 1 });
            attention_forward(
                c.d,
                &c.q,
                &c.k,
                &c.v,
                &c.kv_count,
                c.scale,
                dropout,
                Some(&mut probs),
                &mut ctx,
                None,
            );
            let train = t.elapsed();
            let (mut dq, mut dk, mut dv) = (
                vec![0.0; c.q.len()],
                vec![0.0; c.k.len()],
                vec![0.0; c.v.len()],
            );
            let t = std::time::Instant::now();
            attention_backward(
                c.d,
                &c.q,
                &c.k,
                &c.v,
                &c.kv_count,
                c.scale,
                dropout,
                &probs,
                &ctx,
                &mut dq,
                &mut dk,
                &mut dv,
            );
            println!(
                "attention B=8 L=512 H=12 dh=32 ({} threads): forward inference {inference:?}, forward train (dropout, probs) {train:?}, backward {:?}",
                rayon::current_num_threads(),
                t.elapsed()
            );
        }
    }
}
