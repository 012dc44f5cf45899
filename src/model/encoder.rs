//! One transformer layer (post-LN BERT) whose attention reads keys and values from a
//! gathered subset of rows, with explicit forward and backward.
//!
//! Rows are `[batch, t, d]`: the embedded positions and, with combining on, the
//! combination tokens after them. Queries are all rows; keys/values are the rows listed in
//! a `KvIndex`, gathered *before* the key/value projections so their cost falls with the
//! kept count.

use super::layout::{FfnBlockIds, LayerIds, LinearIds, NormIds};
use super::ops;
use super::params::{FusedLinear, ParamStore};
use crate::kernels::activations::{gelu_backward, gelu_forward, gelu_forward_keeping_grad};
use crate::kernels::attention::{
    attention_backward, attention_forward, AttnDims, AttnDropout, HiddenKeys, Importance, Qkv,
};
use crate::kernels::dropout::{dropout_add_forward, dropout_backward_into};
use crate::kernels::workspace;
use crate::profile::{timed, Kernel};
use crate::rng::mix64;
use rayon::prelude::*;

/// Which rows of each example serve as keys/values.
#[derive(Clone, Debug)]
pub struct KvIndex {
    /// Slots per example (the largest kept count in the batch).
    pub kmax: usize,
    /// Valid slots of each example; the rest are masked.
    pub count: Vec<usize>,
    /// `[batch * kmax]` source row (within the example) of each slot; `u32::MAX` = surplus.
    pub rows: Vec<u32>,
    /// Every example uses all of its `t` rows in order: no gather needed.
    pub identity: bool,
}

impl KvIndex {
    /// All `t` rows of every example are keys/values.
    pub fn identity(batch: usize, t: usize) -> Self {
        KvIndex {
            kmax: t,
            count: vec![t; batch],
            rows: (0..batch).flat_map(|_| 0..t as u32).collect(),
            identity: true,
        }
    }

    /// Per-example row lists (ascending or not; the order defines the slots).
    pub fn from_lists(lists: &[Vec<usize>], t: usize) -> Self {
        let batch = lists.len();
        let kmax = lists.iter().map(|l| l.len()).max().unwrap_or(0);
        let mut rows = vec![u32::MAX; batch * kmax];
        for (b, l) in lists.iter().enumerate() {
            for (s, &r) in l.iter().enumerate() {
                debug_assert!(r < t);
                rows[b * kmax + s] = r as u32;
            }
        }
        let identity = kmax == t && lists.iter().all(|l| l.iter().copied().eq(0..t));
        KvIndex {
            kmax,
            count: lists.iter().map(|l| l.len()).collect(),
            rows,
            identity,
        }
    }

    /// Whether slot `s` of every example is its row `s` for all `t` slots (the valid
    /// ones a prefix of the rows, e.g. a padded batch where nothing is pruned): keys and
    /// values can then be read from the rows' own projections, with no gather.
    fn rows_in_place(&self, t: usize) -> bool {
        self.identity
            || (self.kmax == t
                && self.count.iter().enumerate().all(|(b, &c)| {
                    let slots = &self.rows[b * t..b * t + c];
                    slots.iter().enumerate().all(|(s, &r)| r as usize == s)
                }))
    }
}

#[derive(Clone, Copy, Debug)]
pub struct LayerDims {
    pub batch: usize,
    pub t: usize,
    pub d: usize,
    pub heads: usize,
    pub ffn: usize,
    pub ln_eps: f32,
}

/// Dropout settings of one layer in training mode.
#[derive(Clone, Copy, Debug)]
pub struct LayerDropout {
    pub hidden_p: f32,
    pub attn_p: f32,
    pub seed: u64,
}

impl LayerDropout {
    fn attn(&self) -> Option<AttnDropout> {
        (self.attn_p > 0.0).then_some(AttnDropout {
            p: self.attn_p,
            seed: mix64(self.seed ^ 1),
        })
    }
    fn attn_out_seed(&self) -> u64 {
        mix64(self.seed ^ 2)
    }
    fn ffn_out_seed(&self) -> u64 {
        mix64(self.seed ^ 3)
    }
}

/// Activations one layer keeps for its backward pass (sized to what is kept).
pub struct LayerTape {
    /// Layer input; the pruned key/value rows are gathered from it again in backward
    /// rather than kept (a copy of `kmax` rows per example would cost memory exactly
    /// where pruning is meant to save it).
    x_in: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    probs: Vec<f32>,
    ctx: Vec<f32>,
    ffn: FfnTape,
}

impl Drop for LayerTape {
    fn drop(&mut self) {
        for v in [
            &mut self.x_in,
            &mut self.q,
            &mut self.k,
            &mut self.v,
            &mut self.probs,
            &mut self.ctx,
        ] {
            workspace::recycle(std::mem::take(v));
        }
    }
}

impl LayerTape {
    /// Bytes held by the tape's buffers.
    pub fn bytes(&self) -> usize {
        4 * [
            &self.x_in,
            &self.q,
            &self.k,
            &self.v,
            &self.probs,
            &self.ctx,
        ]
        .iter()
        .map(|v| v.len())
        .sum::<usize>()
            + self.ffn.bytes()
    }
}

/// What [`ffn_block_backward`] needs.
pub struct FfnTape {
    s1: Vec<f32>,
    ln1_mean: Vec<f32>,
    ln1_rstd: Vec<f32>,
    h1: Vec<f32>,
    /// GELU's derivative at the pre-activation `W_1 h1 + b_1` (the pre-activation itself
    /// is needed for nothing else).
    gelu_grad: Vec<f32>,
    act: Vec<f32>,
    s2: Vec<f32>,
    ln2_mean: Vec<f32>,
    ln2_rstd: Vec<f32>,
}

impl FfnTape {
    fn buffers(&mut self) -> [&mut Vec<f32>; 9] {
        [
            &mut self.s1,
            &mut self.ln1_mean,
            &mut self.ln1_rstd,
            &mut self.h1,
            &mut self.gelu_grad,
            &mut self.act,
            &mut self.s2,
            &mut self.ln2_mean,
            &mut self.ln2_rstd,
        ]
    }

    pub fn bytes(&self) -> usize {
        4 * [
            &self.s1,
            &self.ln1_mean,
            &self.ln1_rstd,
            &self.h1,
            &self.gelu_grad,
            &self.act,
            &self.s2,
            &self.ln2_mean,
            &self.ln2_rstd,
        ]
        .iter()
        .map(|v| v.len())
        .sum::<usize>()
    }
}

impl Drop for FfnTape {
    fn drop(&mut self) {
        for v in self.buffers() {
            workspace::recycle(std::mem::take(v));
        }
    }
}

/// `h1 = LN1(s1)`, `out = LN2(h1 + dropout(W_2 gelu(W_1 h1 + b_1) + b_2))` over `rows`
/// rows of `s1` (the attention branch plus the residual). Returns `out` and the tape
/// (complete only with `record`, which keeps GELU's derivative at the pre-activation;
/// without it, and with packed weights, the GELU is fused into the product).
#[allow(clippy::too_many_arguments)]
pub fn ffn_block_forward(
    p: &ParamStore,
    ids: &FfnBlockIds,
    s1: Vec<f32>,
    rows: usize,
    d: usize,
    ffn: usize,
    ln_eps: f32,
    drop: Option<LayerDropout>,
    record: bool,
) -> (Vec<f32>, FfnTape) {
    let [h1, ln1_mean, ln1_rstd] = norm(p, ids.attn_norm, &s1, rows, d, ln_eps);
    let mut act = workspace::take(rows * ffn);
    let fused = !record
        && timed(Kernel::Linear, || {
            ops::linear_gelu_packed(p, ids.ffn_in, &h1, rows, d, ffn, &mut act)
        });
    let gelu_grad = if fused {
        Vec::new()
    } else {
        let mut inter = lin(p, ids.ffn_in, &h1, rows, d, ffn);
        if record {
            // The pre-activation becomes GELU's derivative there, for the backward.
            timed(Kernel::Gelu, || {
                gelu_forward_keeping_grad(&mut inter, &mut act)
            });
            inter
        } else {
            timed(Kernel::Gelu, || gelu_forward(&inter, &mut act));
            drop_vec(inter);
            Vec::new()
        }
    };
    let mut s2 = lin(p, ids.ffn_out, &act, rows, ffn, d);
    residual_sum(
        &mut s2,
        &h1,
        drop.map(|dr| (dr.hidden_p, dr.ffn_out_seed())),
    );
    let [out, ln2_mean, ln2_rstd] = norm(p, ids.ffn_norm, &s2, rows, d, ln_eps);
    let tape = FfnTape {
        s1,
        ln1_mean,
        ln1_rstd,
        h1,
        gelu_grad,
        act,
        s2,
        ln2_mean,
        ln2_rstd,
    };
    (out, tape)
}

/// Backward of [`ffn_block_forward`]: returns the gradient of `s1` and accumulates the
/// block's parameter gradients.
#[allow(clippy::too_many_arguments)]
pub fn ffn_block_backward(
    p: &ParamStore,
    ids: &FfnBlockIds,
    tape: &FfnTape,
    dout: &[f32],
    rows: usize,
    d: usize,
    ffn: usize,
    drop: Option<LayerDropout>,
    grads: &mut ParamStore,
) -> Vec<f32> {
    // Output LayerNorm: its input gradient is the residual sum's (FFN branch + h1); it
    // goes on to h1 as it is, and through the dropout into the FFN branch.
    let mut dh1 = norm_back(
        p,
        ids.ffn_norm,
        &tape.s2,
        &tape.ln2_mean,
        &tape.ln2_rstd,
        dout,
        rows,
        d,
        grads,
    );
    let dropped = branch_gradient(&dh1, drop.map(|dr| (dr.hidden_p, dr.ffn_out_seed())));
    let mut dact = workspace::take(rows * ffn);
    lin_back(
        p,
        ids.ffn_out,
        &tape.act,
        rows,
        ffn,
        d,
        dropped.as_deref().unwrap_or(&dh1),
        Some(&mut dact),
        false,
        grads,
    );
    // dact becomes the gradient of the pre-activation, in place.
    timed(Kernel::GeluBackward, || {
        gelu_backward(&tape.gelu_grad, &mut dact)
    });
    dropped.into_iter().for_each(drop_vec);
    lin_back(
        p,
        ids.ffn_in,
        &tape.h1,
        rows,
        d,
        ffn,
        &dact,
        Some(&mut dh1),
        true,
        grads,
    );
    drop_vec(dact);
    // Attention LayerNorm.
    let ds1 = norm_back(
        p,
        ids.attn_norm,
        &tape.s1,
        &tape.ln1_mean,
        &tape.ln1_rstd,
        &dh1,
        rows,
        d,
        grads,
    );
    drop_vec(dh1);
    ds1
}

/// `xk[b, s] = x[b, rows[b, s]]`, zero rows for surplus slots.
fn gather_rows(x: &[f32], kv: &KvIndex, t: usize, d: usize) -> Vec<f32> {
    let mut xk = workspace::take(kv.rows.len() * d);
    xk.par_chunks_mut(d).enumerate().for_each(|(slot, dst)| {
        let r = kv.rows[slot];
        if r != u32::MAX {
            let b = slot / kv.kmax;
            let src = (b * t + r as usize) * d;
            dst.copy_from_slice(&x[src..src + d]);
        } else {
            dst.fill(0.0);
        }
    });
    xk
}

/// `dx[b, rows[b, s]] += dxk[b, s]`. Parallel over examples (slots of one example
/// point to distinct rows, but different examples never share rows either).
fn scatter_add_rows(dxk: &[f32], kv: &KvIndex, t: usize, d: usize, dx: &mut [f32]) {
    dx.par_chunks_mut(t * d).enumerate().for_each(|(b, dxb)| {
        for s in 0..kv.kmax {
            let r = kv.rows[b * kv.kmax + s];
            if r == u32::MAX {
                continue;
            }
            let src = &dxk[(b * kv.kmax + s) * d..(b * kv.kmax + s + 1) * d];
            let dst = &mut dxb[r as usize * d..(r as usize + 1) * d];
            for (a, g) in dst.iter_mut().zip(src) {
                *a += *g;
            }
        }
    });
}

fn lin(p: &ParamStore, ids: LinearIds, x: &[f32], rows: usize, i: usize, o: usize) -> Vec<f32> {
    timed(Kernel::Linear, || {
        let mut y = workspace::take(rows * o);
        ops::linear(p, ids, x, rows, i, o, &mut y);
        y
    })
}

/// [`lin`] for fused layers: `[rows, Σ out]`.
fn lin_fused(f: &FusedLinear, x: &[f32], rows: usize) -> Vec<f32> {
    timed(Kernel::Linear, || {
        let mut y = workspace::take(rows * f.shape().1);
        ops::linear_fused(f, x, rows, &mut y);
        y
    })
}

/// Backward of `lin`: parameter gradients accumulate into `grads`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn lin_back(
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
    timed(Kernel::LinearBackward, || {
        ops::linear_back(p, ids, x, rows, i, o, dy, dx, accumulate_dx, grads)
    });
}

/// `y = LN(x)`, returning (y, mean, rstd).
fn norm(p: &ParamStore, ids: NormIds, x: &[f32], rows: usize, d: usize, eps: f32) -> [Vec<f32>; 3] {
    let mut y = workspace::take(rows * d);
    let mut mean = workspace::take(rows);
    let mut rstd = workspace::take(rows);
    timed(Kernel::LayerNorm, || {
        ops::norm(p, ids, x, rows, d, eps, [&mut y, &mut mean, &mut rstd])
    });
    [y, mean, rstd]
}

/// Backward of `norm`: returns dx; gamma/beta gradients accumulate into `grads`.
#[allow(clippy::too_many_arguments)]
fn norm_back(
    p: &ParamStore,
    ids: NormIds,
    x: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dy: &[f32],
    rows: usize,
    d: usize,
    grads: &mut ParamStore,
) -> Vec<f32> {
    let mut dx = workspace::take(rows * d);
    timed(Kernel::LayerNormBackward, || {
        ops::norm_back(p, ids, x, rows, d, [mean, rstd], dy, &mut dx, false, grads)
    });
    dx
}

/// A residual block's sum `branch = dropout(branch) + skip` (`dropout`: probability and
/// seed, training only), in one pass (timed as dropout when there is one: the sum rides
/// along).
fn residual_sum(branch: &mut [f32], skip: &[f32], dropout: Option<(f32, u64)>) {
    let (p, seed) = dropout.unwrap_or((0.0, 0));
    let kernel = if p > 0.0 {
        Kernel::Dropout
    } else {
        Kernel::Residual
    };
    timed(kernel, || dropout_add_forward(branch, skip, p, seed, 0));
}

pub struct LayerOutput {
    pub out: Vec<f32>,
    /// `[batch, heads, kmax]` importance S_h of each key slot, when requested.
    pub importance: Option<Vec<f32>>,
    pub tape: Option<LayerTape>,
}

/// Forward of one layer. `x` is `[batch, t, d]`; `importance_weights` (`[batch, t]`, 1
/// for real embedded queries) asks for the importance scores of the key slots; `hidden`
/// hides the last key slots of each example from its first query rows.
#[allow(clippy::too_many_arguments)]
pub fn layer_forward(
    p: &ParamStore,
    ids: &LayerIds,
    dims: LayerDims,
    x: Vec<f32>,
    kv: &KvIndex,
    drop: Option<LayerDropout>,
    importance_weights: Option<&[f32]>,
    hidden: Option<HiddenKeys>,
    record: bool,
) -> LayerOutput {
    let LayerDims {
        batch,
        t,
        d,
        heads,
        ffn,
        ln_eps,
    } = dims;
    let rows = batch * t;
    let projected = projections(p, ids, &x, kv, batch, t, d);

    let adims = AttnDims {
        batch,
        q_len: t,
        kv_len: kv.kmax,
        heads,
        head_dim: d / heads,
    };
    let scale = 1.0 / ((d / heads) as f32).sqrt();
    let mut probs = if record {
        workspace::take(batch * heads * t * kv.kmax)
    } else {
        Vec::new()
    };
    let mut ctx = workspace::take(rows * d);
    let mut importance = importance_weights.map(|_| vec![0.0f32; batch * heads * kv.kmax]);
    timed(Kernel::Attention, || {
        attention_forward(
            adims,
            projected.qkv(d),
            &kv.count,
            scale,
            drop.and_then(|dr| dr.attn()),
            record.then_some(probs.as_mut_slice()),
            &mut ctx,
            importance_weights
                .zip(importance.as_mut())
                .map(|(w, out)| Importance {
                    query_weight: w,
                    out: out.as_mut_slice(),
                }),
            hidden,
        )
    });

    let mut s1 = lin(p, ids.attn_out, &ctx, rows, d, d);
    residual_sum(
        &mut s1,
        &x,
        drop.map(|dr| (dr.hidden_p, dr.attn_out_seed())),
    );
    let (out, ffn_tape) =
        ffn_block_forward(p, &ids.ffn_block(), s1, rows, d, ffn, ln_eps, drop, record);

    // Built either way: without `record` its drop hands the buffers back to the pool.
    let [q, k, v] = if record {
        projected.separate(d)
    } else {
        [projected.q, projected.k, projected.v]
    };
    let tape = LayerTape {
        x_in: x,
        q,
        k,
        v,
        probs,
        ctx,
        ffn: ffn_tape,
    };
    LayerOutput {
        out,
        importance,
        tape: record.then_some(tape),
    }
}

/// Backward of one layer: returns `dx` (`[batch, t, d]`) and accumulates parameter
/// gradients into `grads`.
#[allow(clippy::too_many_arguments)]
pub fn layer_backward(
    p: &ParamStore,
    ids: &LayerIds,
    dims: LayerDims,
    kv: &KvIndex,
    drop: Option<LayerDropout>,
    tape: &LayerTape,
    dout: &[f32],
    grads: &mut ParamStore,
) -> Vec<f32> {
    let LayerDims {
        batch,
        t,
        d,
        heads,
        ffn,
        ..
    } = dims;
    let rows = batch * t;
    let krows = batch * kv.kmax;

    // The attention block's output gradient: on to the layer's input as it is, and
    // through the dropout into the attention branch.
    let mut dx = ffn_block_backward(
        p,
        &ids.ffn_block(),
        &tape.ffn,
        dout,
        rows,
        d,
        ffn,
        drop,
        grads,
    );
    let dropped = branch_gradient(&dx, drop.map(|dr| (dr.hidden_p, dr.attn_out_seed())));
    let mut dctx = workspace::take(rows * d);
    lin_back(
        p,
        ids.attn_out,
        &tape.ctx,
        rows,
        d,
        d,
        dropped.as_deref().unwrap_or(&dx),
        Some(&mut dctx),
        false,
        grads,
    );
    dropped.into_iter().for_each(drop_vec);

    let adims = AttnDims {
        batch,
        q_len: t,
        kv_len: kv.kmax,
        heads,
        head_dim: d / heads,
    };
    let scale = 1.0 / ((d / heads) as f32).sqrt();
    let mut dq = workspace::take(rows * d);
    let mut dk = workspace::take(krows * d);
    let mut dv = workspace::take(krows * d);
    timed(Kernel::AttentionBackward, || {
        attention_backward(
            adims,
            &tape.q,
            &tape.k,
            &tape.v,
            &kv.count,
            scale,
            drop.and_then(|dr| dr.attn()),
            &tape.probs,
            &dctx,
            &mut dq,
            &mut dk,
            &mut dv,
        )
    });
    drop_vec(dctx);
    projections_backward(p, ids, tape, kv, batch, t, d, [dq, dk, dv], &mut dx, grads);
    dx
}

/// A layer's queries, keys and values: three buffers, or after fused projections
/// (inference, [`ParamStore::fuse_packed`]) fewer, each row holding several side by side.
struct Projected {
    q: Vec<f32>,
    /// Empty where the keys are in `q`'s rows.
    k: Vec<f32>,
    /// Empty where the values are in `q`'s or `k`'s rows.
    v: Vec<f32>,
    fused: Fused,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fused {
    /// Three buffers.
    None,
    /// Each row of `k`: the key, then the value.
    KeyValue,
    /// Each row of `q`: the query, the key, the value.
    All,
    /// `q` as with `All`; `k` holds its rows gathered in slot order, of which
    /// attention reads the keys and values.
    AllGathered,
}

impl Projected {
    /// The views attention reads (`d` = the model width).
    fn qkv(&self, d: usize) -> Qkv<'_> {
        match self.fused {
            Fused::None => Qkv::dense(&self.q, &self.k, &self.v, d),
            Fused::KeyValue => Qkv {
                q: &self.q,
                k: &self.k,
                v: columns_from(&self.k, d),
                q_stride: d,
                kv_stride: 2 * d,
            },
            Fused::All | Fused::AllGathered => {
                let kv = if self.fused == Fused::All {
                    &self.q
                } else {
                    &self.k
                };
                Qkv {
                    q: &self.q,
                    k: columns_from(kv, d),
                    v: columns_from(kv, 2 * d),
                    q_stride: 3 * d,
                    kv_stride: 3 * d,
                }
            }
        }
    }

    /// Three `[rows, d]` buffers (as the tape keeps them), copied out of fused rows.
    fn separate(self, d: usize) -> [Vec<f32>; 3] {
        let columns = |buf: &[f32], parts: usize, part: usize| -> Vec<f32> {
            let mut out = workspace::take(buf.len() / parts);
            for (o, row) in out.chunks_exact_mut(d).zip(buf.chunks_exact(parts * d)) {
                o.copy_from_slice(&row[part * d..(part + 1) * d]);
            }
            out
        };
        match self.fused {
            Fused::None => [self.q, self.k, self.v],
            Fused::KeyValue => {
                let kv = [columns(&self.k, 2, 0), columns(&self.k, 2, 1)];
                drop_vec(self.k);
                let [k, v] = kv;
                [self.q, k, v]
            }
            Fused::All => {
                let qkv = [0, 1, 2].map(|part| columns(&self.q, 3, part));
                drop_vec(self.q);
                qkv
            }
            Fused::AllGathered => {
                let qkv = [
                    columns(&self.q, 3, 0),
                    columns(&self.k, 3, 1),
                    columns(&self.k, 3, 2),
                ];
                drop_vec(self.q);
                drop_vec(self.k);
                qkv
            }
        }
    }
}

/// `buf` from column `col` of its first row on (empty for an empty buffer).
fn columns_from(buf: &[f32], col: usize) -> &[f32] {
    buf.get(col..).unwrap_or(&[])
}

/// The query, key and value projections: queries of all rows; keys and values of the
/// rows `kv` lists, gathered first so that their cost falls with the kept count. Where
/// the weights are fused (inference), one product makes all three (then the keys and
/// values are gathered from its rows, where they are not in place) or the keys and
/// values of the gathered rows (the pruning variants).
fn projections(
    p: &ParamStore,
    ids: &LayerIds,
    x: &[f32],
    kv: &KvIndex,
    batch: usize,
    t: usize,
    d: usize,
) -> Projected {
    let (rows, krows) = (batch * t, batch * kv.kmax);
    let part = |l: LinearIds| (l.w, l.b);
    let (query, key, value) = (part(ids.query), part(ids.key), part(ids.value));
    if let Some(f) = p.fused(&[query, key, value]) {
        let q = lin_fused(f, x, rows);
        if kv.rows_in_place(t) {
            return Projected {
                q,
                k: Vec::new(),
                v: Vec::new(),
                fused: Fused::All,
            };
        }
        let k = timed(Kernel::GatherScatter, || gather_rows(&q, kv, t, 3 * d));
        return Projected {
            q,
            k,
            v: Vec::new(),
            fused: Fused::AllGathered,
        };
    }
    let xk = if kv.identity {
        Vec::new()
    } else {
        timed(Kernel::GatherScatter, || gather_rows(x, kv, t, d))
    };
    let kv_in: &[f32] = if kv.identity { x } else { &xk };
    let q = lin(p, ids.query, x, rows, d, d);
    let projected = match p.fused(&[key, value]) {
        Some(f) => Projected {
            q,
            k: lin_fused(f, kv_in, krows),
            v: Vec::new(),
            fused: Fused::KeyValue,
        },
        None => Projected {
            q,
            k: lin(p, ids.key, kv_in, krows, d, d),
            v: lin(p, ids.value, kv_in, krows, d, d),
            fused: Fused::None,
        },
    };
    drop_vec(xk);
    projected
}

/// Backward of [`projections`]: adds the input gradient of all three to `dx` (the key and
/// value rows scattered back to their positions) and consumes `[dq, dk, dv]`.
#[allow(clippy::too_many_arguments)]
fn projections_backward(
    p: &ParamStore,
    ids: &LayerIds,
    tape: &LayerTape,
    kv: &KvIndex,
    batch: usize,
    t: usize,
    d: usize,
    [dq, dk, dv]: [Vec<f32>; 3],
    dx: &mut [f32],
    grads: &mut ParamStore,
) {
    let (rows, krows) = (batch * t, batch * kv.kmax);
    lin_back(
        p,
        ids.query,
        &tape.x_in,
        rows,
        d,
        d,
        &dq,
        Some(&mut *dx),
        true,
        grads,
    );
    drop_vec(dq);
    if kv.identity {
        lin_back(
            p,
            ids.key,
            &tape.x_in,
            rows,
            d,
            d,
            &dk,
            Some(&mut *dx),
            true,
            grads,
        );
        lin_back(
            p,
            ids.value,
            &tape.x_in,
            rows,
            d,
            d,
            &dv,
            Some(&mut *dx),
            true,
            grads,
        );
    } else {
        let xk = timed(Kernel::GatherScatter, || gather_rows(&tape.x_in, kv, t, d));
        let mut dxk = workspace::take(krows * d);
        lin_back(
            p,
            ids.key,
            &xk,
            krows,
            d,
            d,
            &dk,
            Some(&mut dxk),
            false,
            grads,
        );
        lin_back(
            p,
            ids.value,
            &xk,
            krows,
            d,
            d,
            &dv,
            Some(&mut dxk),
            true,
            grads,
        );
        drop_vec(xk);
        timed(Kernel::GatherScatter, || {
            scatter_add_rows(&dxk, kv, t, d, dx)
        });
        drop_vec(dxk);
    }
    drop_vec(dk);
    drop_vec(dv);
}

/// The gradient of a residual block's branch from that of its output `g`: through the
/// branch's dropout (`(p, seed)`) into a new buffer, `g` left for the skip connection;
/// `None` without dropout, where the branch reads `g` itself.
fn branch_gradient(g: &[f32], dropout: Option<(f32, u64)>) -> Option<Vec<f32>> {
    let (p, seed) = dropout?;
    let mut out = workspace::take(g.len());
    timed(Kernel::Dropout, || {
        dropout_backward_into(g, &mut out, p, seed, 0)
    });
    Some(out)
}

/// Returns a large buffer to the activation pool as soon as it is dead (keeps peak
/// memory down in backward; the next step reuses it without a zero-fill).
fn drop_vec(v: Vec<f32>) {
    workspace::recycle(v)
}
