//! Token combining module (method.md, "Token combining module"): replaces transformer
//! layer L_c, assigns every real token to one of m combination tokens with a hard
//! (straight-through) Gumbel-softmax, and updates each combination token with the mean of
//! its tokens' values. Beyond the paper, the soft assignment shares each token among the
//! combination tokens by the softmax itself (weighted means, exact gradient), and several
//! assignment heads each group the tokens on their own share of the columns.
//!
//! The real tokens of all examples are packed into one row block (`R` rows, example by
//! example, ascending positions) so that every linear layer runs as one product over the
//! whole batch; the combination tokens form a `[batch * m, d]` block.

use super::config::{CombineAssignment, CombineResidual};
use super::layout::{CombinerIds, LinearIds, NormIds};
use super::ops::{self, linear_back, norm_back};
use super::params::ParamStore;
use crate::kernels::fastmath::SubnormalsAsZero;
use crate::kernels::{matmul, MatRef, Par};
use crate::rng::hash_uniform;
use rayon::prelude::*;
use std::ops::Range;

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
    /// `c'_i = residual_i + W_o u_i + b_o`: `c_i` (method.md) or the group mean `r_i`.
    pub residual: CombineResidual,
    /// Hard (one-hot HA, straight through) or soft (HA = Sim) assignment.
    pub assignment: CombineAssignment,
    /// Gumbel noise seed (training); `None` = no noise (evaluation).
    pub gumbel_seed: Option<u64>,
    /// Whether the assignment's gradient reaches the real tokens' states (through W_k and
    /// LN_e); without it the layers before the combiner learn only from the values (W_k
    /// and LN_e still learn).
    pub key_grad: bool,
    /// Assignment heads (1 = method.md): with H > 1 each head h assigns the tokens on its
    /// own slice of d/H columns of the queries and keys and averages the same slice of
    /// the values over its own groups, as the replaced layer's attention has heads.
    pub heads: usize,
}

/// The packed real tokens e_j and the combination tokens c_i of a batch.
struct Packed {
    /// Start of each example's rows in the packed real-token block (`batch + 1` entries).
    real_offsets: Vec<usize>,
    /// Embedded position (0..n) of each packed real row.
    real_pos: Vec<usize>,
    /// `[R, d]` real tokens e_j.
    e: Vec<f32>,
    /// `[batch * m, d]` combination tokens c_i.
    c: Vec<f32>,
}

impl Packed {
    /// The packed rows of example `b`.
    fn rows(&self, b: usize) -> Range<usize> {
        self.real_offsets[b]..self.real_offsets[b + 1]
    }
}

/// What the backward pass needs.
pub struct CombinerTape {
    dims: CombinerDims,
    scale: f32,
    residual: CombineResidual,
    assignment: CombineAssignment,
    key_grad: bool,
    heads: usize,
    packed: Packed,
    /// `[R, d]` LN_e(e_j) with its per-row mean and 1/std.
    e_norm: Vec<f32>,
    e_mean: Vec<f32>,
    e_rstd: Vec<f32>,
    /// `[batch * m, d]` LN_c(c_i) with its per-row mean and 1/std.
    c_norm: Vec<f32>,
    c_mean: Vec<f32>,
    c_rstd: Vec<f32>,
    /// `[batch * m, d]` queries, `[R, d]` keys and values, `[batch * m, d]` group means u_i.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    u: Vec<f32>,
    /// `[batch * m, d]` group means r_i of the real tokens themselves
    /// (`CombineResidual::Group`; empty otherwise).
    r: Vec<f32>,
    /// Sim = softmax over i, per example and head `[heads, m, n_b]` stored at
    /// `heads * m * real_offsets[b]` (with `CombineAssignment::Attend`, A = the softmax
    /// over j of the same logits instead).
    sim: Vec<f32>,
    /// `[R, heads]`: the combination token (0..m) each packed real row is assigned to by
    /// each head.
    group: Vec<usize>,
    /// `[batch * m, heads]` Σ_j HA_ij + assign_eps (forward value: count + eps, or Σ_j
    /// Sim_ij + eps with the soft assignment).
    denom: Vec<f32>,
}

impl CombinerTape {
    /// The denominator that divides element `x` of a `[batch * m, d]` group-mean buffer.
    fn denom_of(&self, x: usize) -> f32 {
        self.denom[denom_index(x, self.dims.d, self.heads)]
    }
}

/// Index into a `[batch * m, heads]` denominator buffer of element `x` of a
/// `[batch * m, d]` buffer (head h owns columns h*d/heads..(h+1)*d/heads).
fn denom_index(x: usize, d: usize, heads: usize) -> usize {
    (x / d) * heads + (x % d) / (d / heads)
}

/// Clamp of the uniform before the Gumbel transform: `hash_uniform` returns multiples of
/// 2^-24 in [0, 1), so only 0 needs it (-ln(-ln 0) would be -inf).
const GUMBEL_TINY: f64 = 1e-10;

/// Gumbel(0, 1) noise `-ln(-ln u)` for logit element `index` of stream `seed`.
fn gumbel(seed: u64, index: u64) -> f64 {
    let u = (hash_uniform(seed, index) as f64).clamp(GUMBEL_TINY, 1.0 - GUMBEL_TINY);
    -(-u.ln()).ln()
}

/// Splits `buf` into consecutive mutable chunks of the given lengths.
fn split_by_lengths<T>(mut buf: &mut [T], lengths: impl Iterator<Item = usize>) -> Vec<&mut [T]> {
    let mut chunks = Vec::new();
    for len in lengths {
        let (head, tail) = std::mem::take(&mut buf).split_at_mut(len);
        chunks.push(head);
        buf = tail;
    }
    chunks
}

/// Forward. Writes the combined tokens to `out` (`[batch, m, d]`) and returns the
/// assignment of each embedded position (`[batch, n]`, -1 for padding). With `record`,
/// returns the tape for `combiner_backward`.
///
/// Per example (method.md, golden README): e_j = `hidden[b, j]` for the real j < n
/// (`real[b * n + j]`), c_i = `hidden[b, n + i]`;
/// `z_ij = scale * (W_q LN_c(c_i) + b_q) · (W_k LN_e(e_j) + b_k)`, plus Gumbel(0, 1) noise
/// for element `(b * m + i) * n + j` of stream `gumbel_seed` when given;
/// `Sim[:, j]` = softmax over i; HA = one-hot of the argmax over i of Sim (ties: lowest i);
/// `v_j = W_v e_j + b_v` (on e_j itself, not LN_e(e_j));
/// `u_i = Σ_j HA_ij v_j / (Σ_j HA_ij + assign_eps)`; `c'_i = c_i + W_o u_i + b_o`, or with
/// `CombineResidual::Group` `c'_i = r_i + W_o u_i + b_o`, `r_i = Σ_j HA_ij e_j / (Σ_j HA_ij +
/// assign_eps)`. With `CombineAssignment::Soft`, HA = Sim (the returned assignment is still
/// the argmax, for the pooling counts and `explain`). With `CombineAssignment::Attend`,
/// HA = A, the softmax over j of the same logits, and d_i = Σ_j A_ij = 1 (the groups are
/// still the argmax over i of Sim). With `heads` H > 1 all of this runs
/// per head on its slice of d/H columns of q, k, v (and e for r_i), each head with its
/// own assignment and denominators, the slices concatenated before W_o; the returned
/// assignment is head 0's.
/// Padding rows of `hidden` are never read.
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
    let CombinerDims { batch, n, m, d } = dims;
    assert_eq!(
        hidden.len(),
        batch * (n + m) * d,
        "combiner: hidden is not [batch, n + m, d]"
    );
    assert_eq!(real.len(), batch * n, "combiner: real is not [batch, n]");
    assert_eq!(
        out.len(),
        batch * m * d,
        "combiner: out is not [batch, m, d]"
    );
    assert!(m > 0, "combiner: no combination tokens");
    assert!(
        set.heads > 0 && d.is_multiple_of(set.heads),
        "combiner: {} heads do not divide d = {d}",
        set.heads
    );

    let packed = pack(hidden, real, dims);
    let rows = packed.real_pos.len();
    let bm = batch * m;

    // Keys and values of the real tokens, queries of the combination tokens: one product
    // each over the whole batch.
    let [e_norm, e_mean, e_rstd] = norm(p, ids.norm_e, &packed.e, rows, d, set.ln_eps);
    let [c_norm, c_mean, c_rstd] = norm(p, ids.norm_c, &packed.c, bm, d, set.ln_eps);
    let k = linear(p, ids.key, &e_norm, rows, d);
    let q = linear(p, ids.query, &c_norm, bm, d);
    let v = linear(p, ids.value, &packed.e, rows, d);

    let (sim, attend_group) = assignment_probs(&q, &k, &packed, dims, set);
    let heads = set.heads;
    let group = attend_group.unwrap_or_else(|| hard_assignment(&sim, &packed, batch, m, heads));
    let groups = Groups {
        packed: &packed,
        dims,
        heads,
    };
    // d_i = Σ_j HA_ij + assign_eps, once for u_i and r_i.
    // (Attention weights sum to 1 over an example's tokens, so d_i = 1: no eps, which
    // would only shrink every u_i alike.)
    let denom = match set.assignment {
        CombineAssignment::Hard => groups.sizes(&group, set.assign_eps),
        CombineAssignment::Soft => groups.soft_sizes(&sim, set.assign_eps),
        CombineAssignment::Attend => vec![1.0; batch * m * heads],
    };
    let means = |x: &[f32]| match set.assignment {
        CombineAssignment::Hard => groups.means(x, &group, &denom),
        CombineAssignment::Soft | CombineAssignment::Attend => groups.soft_means(x, &sim, &denom),
    };
    let u = means(&v);

    // c'_i = c_i + W_o u_i + b_o (or r_i + ...).
    let r = match set.residual {
        CombineResidual::Token => Vec::new(),
        CombineResidual::Group => means(&packed.e),
    };
    ops::linear(p, ids.out, &u, bm, d, d, out);
    let residual = match set.residual {
        CombineResidual::Token => &packed.c,
        CombineResidual::Group => &r,
    };
    for (o, &x) in out.iter_mut().zip(residual) {
        *o += x;
    }

    let mut assign = vec![-1i64; batch * n];
    for b in 0..batch {
        for row in packed.rows(b) {
            assign[b * n + packed.real_pos[row]] = group[row * heads] as i64;
        }
    }

    // Only moves: without `record` the buffers are simply dropped.
    let tape = record.then_some(CombinerTape {
        dims,
        scale: set.scale,
        residual: set.residual,
        assignment: set.assignment,
        key_grad: set.key_grad,
        heads,
        packed,
        e_norm,
        e_mean,
        e_rstd,
        c_norm,
        c_mean,
        c_rstd,
        q,
        k,
        v,
        u,
        r,
        sim,
        group,
        denom,
    });
    (assign, tape)
}

/// Backward from `dout` (`[batch, m, d]`): overwrites `dhidden` (`[batch, n + m, d]`) and
/// accumulates parameter gradients into `grads` (a `zeros_like` of `p`).
///
/// The straight-through estimator of the golden README ("Notes for a hand-written
/// backward"), with g_i = ∂L/∂c'_i and d_i = Σ_j HA_ij + assign_eps:
/// g_u_i = W_oᵀ g_i; ∂HA_ij = g_u_i · (v_j − u_i) / d_i, passed unchanged to Sim_ij;
/// ∂v_j = g_u_{a(j)} / d_{a(j)} (HA at its one-hot forward value);
/// ∂z_ij = scale · Sim_ij (∂Sim_ij − Σ_i' Sim_i'j ∂Sim_i'j); then the query, key, value and
/// LayerNorm backwards, and ∂c_i also gets g_i from the residual. With the group residual
/// r_i, that term moves to the real tokens: ∂HA_ij += g_i · (e_j − r_i) / d_i and
/// ∂e_j += g_{a(j)} / d_{a(j)}, and c_i gets only its query path. Gumbel noise is a
/// constant. Padding rows of `dhidden` get 0. Without `key_grad` the key path's
/// gradient stops at LN_e's input (its parameters and W_k still get theirs). With the soft
/// assignment (HA = Sim) the same formulas are the exact gradient, with the value terms
/// spread by Sim: ∂v_j = Σ_i Sim_ij g_u_i / d_i (and ∂e_j += Σ_i Sim_ij g_i / d_i); with
/// the attention weights A likewise, the softmax backward then running over j. With
/// several heads, each head's slice of columns follows these formulas with its own Sim,
/// assignment and d_i.
pub fn combiner_backward(
    p: &ParamStore,
    ids: &CombinerIds,
    dims: CombinerDims,
    tape: &CombinerTape,
    dout: &[f32],
    dhidden: &mut [f32],
    grads: &mut ParamStore,
) {
    let CombinerDims { batch, n, m, d } = dims;
    let td = tape.dims;
    assert!(
        (td.batch, td.n, td.m, td.d) == (batch, n, m, d),
        "combiner_backward: dims differ from the forward's"
    );
    let bm = batch * m;
    let packed = &tape.packed;
    let rows = packed.real_pos.len();
    assert_eq!(
        dout.len(),
        bm * d,
        "combiner_backward: dout is not [batch, m, d]"
    );
    assert_eq!(
        dhidden.len(),
        batch * (n + m) * d,
        "combiner_backward: dhidden is not [batch, n + m, d]"
    );

    // Output projection: g_u = g W_o, ∂W_o, ∂b_o.
    let mut g_u = vec![0.0f32; bm * d];
    linear_back(
        p,
        ids.out,
        &tape.u,
        bm,
        d,
        d,
        dout,
        Some(&mut g_u),
        false,
        grads,
    );
    // g_u_i / d_i, shared by the value and the assignment gradients.
    let g_ud: Vec<f32> = g_u
        .iter()
        .enumerate()
        .map(|(x, &g)| g / tape.denom_of(x))
        .collect();

    // Values: ∂v_j = g_u_{a(j)} / d_{a(j)} (soft: Σ_i Sim_ij g_u_i / d_i).
    let mut dv = vec![0.0f32; rows * d];
    spread_to_members(tape, &g_ud, &mut dv, false);

    // The group residual r_i: its g_i / d_i, the same way as u_i's.
    let g_rd: Vec<f32> = match tape.residual {
        CombineResidual::Token => Vec::new(),
        CombineResidual::Group => dout
            .iter()
            .enumerate()
            .map(|(x, &g)| g / tape.denom_of(x))
            .collect(),
    };
    let mut terms = vec![GroupMeanGrad {
        g_d: &g_ud,
        values: &tape.v,
        means: &tape.u,
    }];
    if tape.residual == CombineResidual::Group {
        terms.push(GroupMeanGrad {
            g_d: &g_rd,
            values: &packed.e,
            means: &tape.r,
        });
    }
    let (dq, dk) = assignment_backward(tape, &terms);

    // Real tokens: key path through W_k and LN_e, plus the value path through W_v.
    let mut de = vec![0.0f32; rows * d];
    let mut de_norm = vec![0.0f32; rows * d];
    let (e, e_norm) = (&packed.e, &tape.e_norm);
    linear_back(
        p,
        ids.key,
        e_norm,
        rows,
        d,
        d,
        &dk,
        Some(&mut de_norm),
        false,
        grads,
    );
    let e_stats = [&tape.e_mean[..], &tape.e_rstd[..]];
    // Without `key_grad` LN_e still learns, but its input gradient is not passed on.
    let mut stopped = (!tape.key_grad).then(|| vec![0.0f32; rows * d]);
    let de_key = stopped.as_deref_mut().unwrap_or(&mut de);
    norm_back(
        p, ids.norm_e, e, rows, d, e_stats, &de_norm, de_key, false, grads,
    );
    linear_back(p, ids.value, e, rows, d, d, &dv, Some(&mut de), true, grads);
    if tape.residual == CombineResidual::Group {
        // ∂e_j += g_{a(j)} / d_{a(j)} (soft: Σ_i Sim_ij g_i / d_i).
        spread_to_members(tape, &g_rd, &mut de, true);
    }

    // Combination tokens: the residual g_i (when c_i is the residual) plus the query
    // path through W_q and LN_c.
    let mut dc = match tape.residual {
        CombineResidual::Token => dout.to_vec(),
        CombineResidual::Group => vec![0.0f32; bm * d],
    };
    let mut dc_norm = vec![0.0f32; bm * d];
    let (c, c_norm) = (&packed.c, &tape.c_norm);
    linear_back(
        p,
        ids.query,
        c_norm,
        bm,
        d,
        d,
        &dq,
        Some(&mut dc_norm),
        false,
        grads,
    );
    let c_stats = [&tape.c_mean[..], &tape.c_rstd[..]];
    norm_back(
        p, ids.norm_c, c, bm, d, c_stats, &dc_norm, &mut dc, true, grads,
    );

    unpack_grads(&de, &dc, packed, dims, dhidden);
}

/// The gradient of group means reaching their members: `out_j (+)= g_d_{a(j)}` for the
/// hard assignment, `Σ_i Sim_ij g_d_i` for the soft one, per head on its columns; `g_d` is
/// `[batch * m, d]`, `out` `[R, d]` over the packed real rows.
fn spread_to_members(tape: &CombinerTape, g_d: &[f32], out: &mut [f32], accumulate: bool) {
    let CombinerDims { batch, m, d, .. } = tape.dims;
    let (heads, packed) = (tape.heads, &tape.packed);
    let hd = d / heads;
    let chunks = split_by_lengths(out, (0..batch).map(|b| d * packed.rows(b).len()));
    chunks.into_par_iter().enumerate().for_each(|(b, out_b)| {
        let r = packed.rows(b);
        if r.is_empty() {
            return;
        }
        let g_b = &g_d[b * m * d..(b + 1) * m * d];
        match tape.assignment {
            CombineAssignment::Hard => {
                for (row, o) in r.zip(out_b.chunks_mut(d)) {
                    for (h, o_h) in o.chunks_mut(hd).enumerate() {
                        let i = tape.group[row * heads + h];
                        let g = &g_b[i * d + h * hd..i * d + (h + 1) * hd];
                        if accumulate {
                            o_h.iter_mut().zip(g).for_each(|(x, y)| *x += y);
                        } else {
                            o_h.copy_from_slice(g);
                        }
                    }
                }
            }
            CombineAssignment::Soft | CombineAssignment::Attend => {
                let sim_b = &tape.sim[heads * m * r.start..heads * m * r.end];
                for (h, sim_bh) in sim_b.chunks(m * r.len()).enumerate() {
                    let sim_bh = MatRef::new(sim_bh, m, r.len());
                    let g_m = head_cols(g_b, 0, m, h, d, hd);
                    matmul(
                        &mut out_b[h * hd..],
                        d,
                        sim_bh.t(),
                        g_m,
                        accumulate,
                        Par::Serial,
                    );
                }
            }
        }
    });
}

/// Gathers the real tokens of every example (packed) and the combination tokens.
fn pack(hidden: &[f32], real: &[bool], dims: CombinerDims) -> Packed {
    let CombinerDims { batch, n, m, d } = dims;
    let seq = n + m;
    let mut real_offsets = Vec::with_capacity(batch + 1);
    let mut real_pos = Vec::new();
    let mut e = Vec::new();
    let mut c = Vec::with_capacity(batch * m * d);
    for b in 0..batch {
        real_offsets.push(real_pos.len());
        for j in (0..n).filter(|&j| real[b * n + j]) {
            real_pos.push(j);
            e.extend_from_slice(&hidden[(b * seq + j) * d..(b * seq + j + 1) * d]);
        }
        c.extend_from_slice(&hidden[(b * seq + n) * d..(b + 1) * seq * d]);
    }
    real_offsets.push(real_pos.len());
    Packed {
        real_offsets,
        real_pos,
        e,
        c,
    }
}

/// Backward of [`pack`]: scatters the packed gradients back to the hidden layout;
/// padding rows get 0.
fn unpack_grads(de: &[f32], dc: &[f32], packed: &Packed, dims: CombinerDims, dhidden: &mut [f32]) {
    let CombinerDims { batch, n, m, d } = dims;
    let seq = n + m;
    dhidden.fill(0.0);
    for b in 0..batch {
        for row in packed.rows(b) {
            let j = packed.real_pos[row];
            dhidden[(b * seq + j) * d..(b * seq + j + 1) * d]
                .copy_from_slice(&de[row * d..(row + 1) * d]);
        }
        dhidden[(b * seq + n) * d..(b + 1) * seq * d]
            .copy_from_slice(&dc[b * m * d..(b + 1) * m * d]);
    }
}

/// Sim, per example and head `[heads, m, n_b]`: the assignment logits `scale * q_i · k_j`
/// (over the head's columns) plus the Gumbel noise, softmax over the combination tokens i
/// (in f64). With `CombineAssignment::Attend` it returns the softmax over the tokens j of
/// the same logits instead, with the groups `[R, heads]` that Sim gives
/// ([`hard_assignment`]'s rule).
fn assignment_probs(
    q: &[f32],
    k: &[f32],
    packed: &Packed,
    dims: CombinerDims,
    set: &CombinerSettings,
) -> (Vec<f32>, Option<Vec<usize>>) {
    let CombinerDims { batch, n, m, d } = dims;
    let heads = set.heads;
    let hd = d / heads;
    let attend = set.assignment == CombineAssignment::Attend;
    let rows = packed.real_pos.len();
    let mut sim = vec![0.0f32; heads * m * rows];
    let mut group = vec![0usize; if attend { rows * heads } else { 0 }];
    let lengths = (0..batch).map(|b| heads * m * packed.rows(b).len());
    let sim_chunks = split_by_lengths(&mut sim, lengths);
    let group_lengths = (0..batch).map(|b| {
        if attend {
            heads * packed.rows(b).len()
        } else {
            0
        }
    });
    let group_chunks = split_by_lengths(&mut group, group_lengths);
    sim_chunks
        .into_par_iter()
        .zip(group_chunks)
        .enumerate()
        .for_each(|(b, (sim_b, group_b))| {
            // Sim values below 2^-126 are stored as 0, as the backward reads them (see
            // `assignment_backward`).
            let _flush = SubnormalsAsZero::new();
            let r = packed.rows(b);
            let nb = r.len();
            if nb == 0 {
                return;
            }
            let mut z = vec![0.0f64; m];
            // The logits of every (i, j), kept for the softmax over j.
            let mut logits = vec![0.0f64; if attend { m * nb } else { 0 }];
            for (h, sim_bh) in sim_b.chunks_mut(m * nb).enumerate() {
                let q_bh = head_cols(q, b * m * d, m, h, d, hd);
                let k_bh = head_cols(k, r.start * d, nb, h, d, hd);
                matmul(sim_bh, nb, q_bh, k_bh.t(), false, Par::Serial);
                for jj in 0..nb {
                    let j = packed.real_pos[r.start + jj];
                    for (i, zi) in z.iter_mut().enumerate() {
                        *zi = set.scale as f64 * sim_bh[i * nb + jj] as f64;
                        if let Some(seed) = set.gumbel_seed {
                            // Head 0's stream is method.md's (one head).
                            *zi += gumbel(seed, (((h * batch + b) * m + i) * n + j) as u64);
                        }
                    }
                    let zmax = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let total: f64 = z.iter().map(|&x| (x - zmax).exp()).sum();
                    for (i, &zi) in z.iter().enumerate() {
                        sim_bh[i * nb + jj] = ((zi - zmax).exp() / total) as f32;
                        if attend {
                            logits[i * nb + jj] = zi;
                        }
                    }
                }
                if attend {
                    for jj in 0..nb {
                        group_b[jj * heads + h] = column_argmax(sim_bh, m, nb, jj);
                    }
                    for (a_i, z_i) in sim_bh.chunks_mut(nb).zip(logits.chunks(nb)) {
                        let zmax = z_i.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        let total: f64 = z_i.iter().map(|&x| (x - zmax).exp()).sum();
                        for (a, &zij) in a_i.iter_mut().zip(z_i) {
                            *a = ((zij - zmax).exp() / total) as f32;
                        }
                    }
                }
            }
        });
    (sim, attend.then_some(group))
}

/// One group mean `means_i = Σ_j HA_ij values_j / d_i` the loss reaches, with its
/// gradient divided by the denominators, `g_d` = ∂L/∂means / d.
struct GroupMeanGrad<'a> {
    g_d: &'a [f32],
    values: &'a [f32],
    means: &'a [f32],
}

/// Backward of [`assignment_probs`] from the group means' gradients, per example and head
/// (on the head's columns): ∂HA = Σ over the means of (g/d) valuesᵀ − ((g/d) · means) 1ᵀ
/// (the values u and, with the group residual, r), straight through to Sim, softmax
/// backward over i (over j for the attention weights A), times the scale; then ∂q = ∂z k,
/// ∂k = ∂zᵀ q. Returns (∂q, ∂k).
fn assignment_backward(tape: &CombinerTape, terms: &[GroupMeanGrad]) -> (Vec<f32>, Vec<f32>) {
    let CombinerDims { batch, m, d, .. } = tape.dims;
    let (heads, packed) = (tape.heads, &tape.packed);
    let hd = d / heads;
    let mut dq = vec![0.0f32; batch * m * d];
    let mut dk = vec![0.0f32; packed.real_pos.len() * d];
    let dk_chunks = split_by_lengths(&mut dk, (0..batch).map(|b| d * packed.rows(b).len()));
    dq.par_chunks_mut(m * d)
        .zip(dk_chunks)
        .enumerate()
        .for_each(|(b, (dq_b, dk_b))| {
            // Subnormals as zero: saturated assignments have Sim values and score
            // gradients below 2^-126, and every product meeting one took a microcode
            // assist, here and in the key projection's backward that reads dk (most of
            // the combiner's backward time in an 8 x 512 pfc step, docs/results.md).
            // Flushed, they are 0.
            let _flush = SubnormalsAsZero::new();
            let r = packed.rows(b);
            let nb = r.len();
            if nb == 0 {
                dq_b.fill(0.0);
                return;
            }
            let sim_b = &tape.sim[heads * m * r.start..heads * m * r.end];
            let mut dz = vec![0.0f32; m * nb];
            let mut g_dot_u = vec![0.0f32; m];
            for (h, sim_bh) in sim_b.chunks(m * nb).enumerate() {
                let cols = |x, start, rows| head_cols(x, start, rows, h, d, hd);
                g_dot_u.fill(0.0);
                for (t, term) in terms.iter().enumerate() {
                    let g_bh = cols(term.g_d, b * m * d, m);
                    let v_bh = cols(term.values, r.start * d, nb);
                    matmul(&mut dz, nb, g_bh, v_bh.t(), t > 0, Par::Serial);
                    for (i, acc) in g_dot_u.iter_mut().enumerate() {
                        let at = (b * m + i) * d + h * hd;
                        *acc += term.g_d[at..at + hd]
                            .iter()
                            .zip(&term.means[at..at + hd])
                            .map(|(a, b)| a * b)
                            .sum::<f32>();
                    }
                }
                if tape.assignment == CombineAssignment::Attend {
                    // The softmax over j, row by row.
                    for i in 0..m {
                        let (dz_i, a_i) = (&mut dz[i * nb..(i + 1) * nb], &sim_bh[i * nb..]);
                        let mut weighted = 0.0f32;
                        for (g, &a) in dz_i.iter_mut().zip(a_i) {
                            *g -= g_dot_u[i];
                            weighted += a * *g;
                        }
                        for (g, &a) in dz_i.iter_mut().zip(a_i) {
                            *g = tape.scale * a * (*g - weighted);
                        }
                    }
                } else {
                    for jj in 0..nb {
                        let mut weighted = 0.0f32;
                        for i in 0..m {
                            dz[i * nb + jj] -= g_dot_u[i];
                            weighted += sim_bh[i * nb + jj] * dz[i * nb + jj];
                        }
                        for i in 0..m {
                            let x = i * nb + jj;
                            dz[x] = tape.scale * sim_bh[x] * (dz[x] - weighted);
                        }
                    }
                }
                let dz_m = MatRef::new(&dz, m, nb);
                let q_bh = cols(&tape.q, b * m * d, m);
                let k_bh = cols(&tape.k, r.start * d, nb);
                matmul(&mut dq_b[h * hd..], d, dz_m, k_bh, false, Par::Serial);
                matmul(&mut dk_b[h * hd..], d, dz_m.t(), q_bh, false, Par::Serial);
            }
        });
    (dq, dk)
}

/// Head `h`'s columns (`hd` of each `d`-wide row) of the `rows` rows of `x` that start at
/// element `start`.
fn head_cols(x: &[f32], start: usize, rows: usize, h: usize, d: usize, hd: usize) -> MatRef<'_> {
    MatRef::strided(&x[start + h * hd..start + rows * d], rows, hd, d)
}

/// Hard assignment `[R, heads]` of each packed real row by each head: argmax over i of
/// Sim, the lowest i on ties.
fn hard_assignment(
    sim: &[f32],
    packed: &Packed,
    batch: usize,
    m: usize,
    heads: usize,
) -> Vec<usize> {
    let mut group = vec![0usize; packed.real_pos.len() * heads];
    for b in 0..batch {
        let r = packed.rows(b);
        let nb = r.len();
        if nb == 0 {
            continue;
        }
        let sim_b = &sim[heads * m * r.start..heads * m * r.end];
        for (h, sim_bh) in sim_b.chunks(m * nb).enumerate() {
            for jj in 0..nb {
                group[(r.start + jj) * heads + h] = column_argmax(sim_bh, m, nb, jj);
            }
        }
    }
    group
}

/// The i (0..m) of the largest `sim[i * nb + jj]`, the lowest i on ties.
fn column_argmax(sim: &[f32], m: usize, nb: usize, jj: usize) -> usize {
    let mut best = 0;
    for i in 1..m {
        if sim[i * nb + jj] > sim[best * nb + jj] {
            best = i;
        }
    }
    best
}

/// The real tokens' grouping into the m combination tokens, per example and head: what the
/// group sizes and means below read.
#[derive(Clone, Copy)]
struct Groups<'a> {
    packed: &'a Packed,
    dims: CombinerDims,
    heads: usize,
}

impl Groups<'_> {
    /// The hard groups' denominators `[batch * m, heads]`: d_i = the number of real tokens
    /// assigned to i (per head) + `assign_eps`.
    fn sizes(&self, group: &[usize], assign_eps: f32) -> Vec<f32> {
        let (packed, heads) = (self.packed, self.heads);
        let CombinerDims { batch, m, .. } = self.dims;
        let mut counts = vec![0usize; batch * m * heads];
        for b in 0..batch {
            for row in packed.rows(b) {
                for h in 0..heads {
                    counts[(b * m + group[row * heads + h]) * heads + h] += 1;
                }
            }
        }
        counts.iter().map(|&cnt| cnt as f32 + assign_eps).collect()
    }

    /// u_i = Σ_j HA_ij x_j / d_i: the mean of the rows of `x` assigned to i, per head on its
    /// columns (summed in f64), `denom` from [`Groups::sizes`]. Returns u `[batch * m, d]`.
    fn means(&self, x: &[f32], group: &[usize], denom: &[f32]) -> Vec<f32> {
        let (packed, heads) = (self.packed, self.heads);
        let CombinerDims { batch, m, d, .. } = self.dims;
        let hd = d / heads;
        let mut sums = vec![0.0f64; batch * m * d];
        for b in 0..batch {
            for row in packed.rows(b) {
                for h in 0..heads {
                    let gi = b * m + group[row * heads + h];
                    let cols = h * hd..(h + 1) * hd;
                    for (s, &x) in sums[gi * d..(gi + 1) * d][cols.clone()]
                        .iter_mut()
                        .zip(&x[row * d..(row + 1) * d][cols])
                    {
                        *s += x as f64;
                    }
                }
            }
        }
        sums.iter()
            .enumerate()
            .map(|(i, &s)| (s / denom[denom_index(i, d, heads)] as f64) as f32)
            .collect()
    }

    /// The soft groups' denominators `[batch * m, heads]`: d_i = Σ_j Sim_ij (summed in f64) +
    /// `assign_eps`, per example and head.
    fn soft_sizes(&self, sim: &[f32], assign_eps: f32) -> Vec<f32> {
        let (packed, heads) = (self.packed, self.heads);
        let CombinerDims { batch, m, .. } = self.dims;
        let mut denom = vec![0.0f32; batch * m * heads];
        denom
            .par_chunks_mut(m * heads)
            .enumerate()
            .for_each(|(b, denom_b)| {
                let r = packed.rows(b);
                let nb = r.len();
                let sim_b = &sim[heads * m * r.start..heads * m * r.end];
                for h in 0..heads {
                    let sim_bh = &sim_b[h * m * nb..(h + 1) * m * nb];
                    for i in 0..m {
                        let mass: f64 =
                            sim_bh[i * nb..(i + 1) * nb].iter().map(|&s| s as f64).sum();
                        denom_b[i * heads + h] = mass as f32 + assign_eps;
                    }
                }
            });
        denom
    }

    /// The soft counterpart of [`Groups::means`]: u_i = Σ_j Sim_ij x_j / d_i per example and
    /// head, `denom` from [`Groups::soft_sizes`]. Returns u `[batch * m, d]`.
    fn soft_means(&self, x: &[f32], sim: &[f32], denom: &[f32]) -> Vec<f32> {
        let (packed, heads) = (self.packed, self.heads);
        let CombinerDims { batch, m, d, .. } = self.dims;
        let hd = d / heads;
        let mut u = vec![0.0f32; batch * m * d];
        u.par_chunks_mut(m * d)
            .zip(denom.par_chunks(m * heads))
            .enumerate()
            .for_each(|(b, (u_b, denom_b))| {
                let r = packed.rows(b);
                let nb = r.len();
                if nb == 0 {
                    return;
                }
                let sim_b = &sim[heads * m * r.start..heads * m * r.end];
                for h in 0..heads {
                    let x_bh = head_cols(x, r.start * d, nb, h, d, hd);
                    let sim_m = MatRef::new(&sim_b[h * m * nb..(h + 1) * m * nb], m, nb);
                    matmul(&mut u_b[h * hd..], d, sim_m, x_bh, false, Par::Serial);
                }
                for (i, v) in u_b.iter_mut().enumerate() {
                    *v /= denom_b[denom_index(i, d, heads)];
                }
            });
        u
    }
}

/// `y = x Wᵀ + b` over `rows` rows of width `d` (every combiner projection is d x d).
fn linear(p: &ParamStore, ids: LinearIds, x: &[f32], rows: usize, d: usize) -> Vec<f32> {
    let mut y = vec![0.0; rows * d];
    ops::linear(p, ids, x, rows, d, d, &mut y);
    y
}

/// `LN(x)` over rows of width `d`, returning (y, mean, rstd).
fn norm(p: &ParamStore, ids: NormIds, x: &[f32], rows: usize, d: usize, eps: f32) -> [Vec<f32>; 3] {
    let (mut y, mut mean, mut rstd) = (vec![0.0; rows * d], vec![0.0; rows], vec![0.0; rows]);
    ops::norm(p, ids, x, rows, d, eps, [&mut y, &mut mean, &mut rstd]);
    [y, mean, rstd]
}

#[cfg(test)]
mod tests;
