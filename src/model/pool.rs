//! Pooling (method.md, "Output"): the representation of each example. Mean pooling over
//! the real tokens, the mean (or count-weighted mean) of the m combination tokens, or
//! BERT's pooler on `[CLS]` (`Pooling::Cls`, without combining). Beyond the paper,
//! `CombinePooling::CountsAndTokens` averages the count-weighted mean with the mean of
//! the real tokens' states that entered the combiner.

use super::classifier::Model;
use super::config::{CombinePooling, Pooling};
use super::encoder::lin_back;
use super::ops;
use super::params::ParamStore;
use rayon::prelude::*;

/// What [`Model::pool_backward`] needs.
pub struct PoolTape {
    /// The pooled `[batch, rows, d]` hidden rows.
    hidden: Vec<f32>,
    /// `[batch, rows]` weights of the weighted-sum pooling (empty: cls pooling).
    weights: Vec<f32>,
    /// `[batch, n + m]` weights of the combiner's input rows
    /// (`CombinePooling::CountsAndTokens`; empty otherwise).
    token_weights: Vec<f32>,
    /// The pooled output (cls pooling: after tanh).
    pooled: Vec<f32>,
}

impl PoolTape {
    /// Bytes of activations held (the weights are not counted).
    pub fn bytes(&self) -> usize {
        4 * (self.hidden.len() + self.pooled.len())
    }
}

impl Model {
    /// `[batch, d]` representation of the final `hidden` rows (`[batch, rows, d]`: the
    /// padded positions, or with combining the m combination tokens); `lengths` are the
    /// examples' real lengths and `assign` the `[batch * n]` combination token of each
    /// position (count-weighted pooling); `tokens` is the combiner's `[batch, n + m, d]`
    /// input, which `CombinePooling::CountsAndTokens` also pools (ignored otherwise).
    pub(super) fn pool(
        &self,
        hidden: Vec<f32>,
        lengths: &[usize],
        assign: Option<&[i64]>,
        tokens: Option<&[f32]>,
    ) -> (Vec<f32>, PoolTape) {
        let (bsz, d) = (lengths.len(), self.bert.hidden_size);
        let mut pooled = vec![0.0f32; bsz * d];
        let mut weights = Vec::new();
        let mut token_weights = Vec::new();
        if self.method.variant.combines() || self.method.pooling == Pooling::Mean {
            let rows = hidden.len() / (bsz * d).max(1);
            weights = self.pool_weights(lengths, rows, assign);
            weighted_sum(&hidden, &weights, d, &mut pooled);
            if let Some(tokens) = tokens.filter(|_| self.pools_tokens()) {
                let rows = tokens.len() / (bsz * d).max(1);
                token_weights = vec![0.0f32; bsz * rows];
                for (b, w) in token_weights.chunks_mut(rows).enumerate() {
                    w[..lengths[b]].fill(0.5 / lengths[b] as f32);
                }
                let mut token_mean = vec![0.0f32; bsz * d];
                weighted_sum(tokens, &token_weights, d, &mut token_mean);
                pooled
                    .iter_mut()
                    .zip(&token_mean)
                    .for_each(|(p, t)| *p += t);
            }
        } else {
            let pooler = self.layout.pooler.expect("cls pooling has a pooler");
            let cls = cls_rows(&hidden, bsz, d);
            ops::linear(&self.params, pooler, &cls, bsz, d, d, &mut pooled);
            pooled.iter_mut().for_each(|v| *v = v.tanh());
        }
        let tape = PoolTape {
            hidden,
            weights,
            token_weights,
            pooled: pooled.clone(),
        };
        (pooled, tape)
    }

    /// Whether [`Model::pool`] also pools the combiner's input rows.
    pub(super) fn pools_tokens(&self) -> bool {
        self.method.variant.combines()
            && self.method.combine_pooling == CombinePooling::CountsAndTokens
    }

    /// Backward of [`Model::pool`]: the gradient of the hidden rows from that of the
    /// pooled output, and that of the combiner's input rows where they were pooled too.
    pub(super) fn pool_backward(
        &self,
        tape: &PoolTape,
        dpooled: &[f32],
        grads: &mut ParamStore,
    ) -> (Vec<f32>, Option<Vec<f32>>) {
        let d = self.bert.hidden_size;
        let bsz = dpooled.len() / d;
        let mut dh = vec![0.0f32; tape.hidden.len()];
        if !tape.weights.is_empty() {
            weighted_sum_backward(dpooled, &tape.weights, d, &mut dh);
        } else {
            let pooler = self.layout.pooler.expect("cls pooling has a pooler");
            let dpre: Vec<f32> = dpooled
                .iter()
                .zip(&tape.pooled)
                .map(|(g, y)| g * (1.0 - y * y))
                .collect();
            let cls = cls_rows(&tape.hidden, bsz, d);
            let mut dcls = vec![0.0f32; bsz * d];
            let p = &self.params;
            lin_back(
                p,
                pooler,
                &cls,
                bsz,
                d,
                d,
                &dpre,
                Some(&mut dcls),
                false,
                grads,
            );
            let t = tape.hidden.len() / (bsz * d);
            for b in 0..bsz {
                dh[b * t * d..b * t * d + d].copy_from_slice(&dcls[b * d..(b + 1) * d]);
            }
        }
        let dtokens = (!tape.token_weights.is_empty()).then(|| {
            let mut dt = vec![0.0f32; tape.token_weights.len() * d];
            weighted_sum_backward(dpooled, &tape.token_weights, d, &mut dt);
            dt
        });
        (dh, dtokens)
    }

    /// `[batch, rows]` weights of [`weighted_sum`]: without combining, 1/n_b on the real
    /// tokens (`rows` = padded length); with combining, 1/m on each combination token (the
    /// paper) or its share of the real tokens (`assign`: `[batch, n]` combination token of
    /// each position, -1 for padding; `CombinePooling::Counts`; with
    /// `CountsAndTokens` the same halved, the other half going to the tokens' mean).
    pub(super) fn pool_weights(
        &self,
        lengths: &[usize],
        rows: usize,
        assign: Option<&[i64]>,
    ) -> Vec<f32> {
        let mut w = vec![0.0f32; lengths.len() * rows];
        for (b, wb) in w.chunks_mut(rows).enumerate() {
            if !self.method.variant.combines() {
                wb[..lengths[b]].fill(1.0 / lengths[b] as f32);
                continue;
            }
            let share = if self.pools_tokens() { 0.5 } else { 1.0 };
            match (self.method.combine_pooling, assign) {
                (CombinePooling::Counts | CombinePooling::CountsAndTokens, Some(assign)) => {
                    let n = assign.len() / lengths.len();
                    let groups = assign[b * n..(b + 1) * n].iter().filter(|&&g| g >= 0);
                    for &g in groups {
                        wb[g as usize] += 1.0;
                    }
                    wb.iter_mut().for_each(|x| *x *= share / lengths[b] as f32);
                }
                _ => wb.fill(1.0 / rows as f32),
            }
        }
        w
    }
}

/// The `[CLS]` row (the first) of each example of `hidden` (`[batch, rows, d]`).
fn cls_rows(hidden: &[f32], bsz: usize, d: usize) -> Vec<f32> {
    let t = hidden.len() / (bsz * d).max(1);
    (0..bsz)
        .flat_map(|b| hidden[b * t * d..b * t * d + d].iter().copied())
        .collect()
}

/// Weighted-sum pooling: `pooled[b] = sum_r weights[b, r] * hidden[b, r]`, `hidden`
/// `[batch, rows, d]`, `weights` `[batch, rows]`. Mean pooling over real tokens, the
/// paper's mean of the m combination tokens and the count-weighted mean are its weights.
fn weighted_sum(hidden: &[f32], weights: &[f32], d: usize, pooled: &mut [f32]) {
    let rows = weights.len() / (pooled.len() / d);
    pooled
        .par_chunks_mut(d)
        .zip(weights.par_chunks(rows))
        .enumerate()
        .for_each(|(b, (out, w))| {
            out.fill(0.0);
            for (r, &wr) in w.iter().enumerate() {
                if wr != 0.0 {
                    let h = &hidden[(b * rows + r) * d..][..d];
                    out.iter_mut().zip(h).for_each(|(o, v)| *o += wr * *v);
                }
            }
        });
}

/// Backward of [`weighted_sum`] (the weights are constants): `dhidden[b, r] =
/// weights[b, r] * dpooled[b]`.
fn weighted_sum_backward(dpooled: &[f32], weights: &[f32], d: usize, dhidden: &mut [f32]) {
    let rows = weights.len() / (dpooled.len() / d);
    dhidden
        .par_chunks_mut(d)
        .zip(weights.par_iter())
        .enumerate()
        .for_each(|(row, (out, &w))| {
            let b = row / rows;
            for (o, g) in out.iter_mut().zip(&dpooled[b * d..(b + 1) * d]) {
                *o = w * *g;
            }
        });
}
