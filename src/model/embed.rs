//! The input stage (method.md, "Input"): BERT embeddings of the n padded positions, then
//! the m combination tokens appended after them.

use super::batch::Batch;
use super::classifier::Model;
use super::noise::Noise;
use super::params::ParamStore;
use crate::kernels::dropout::{dropout_backward, dropout_forward};
use crate::kernels::embedding::{embedding_backward, embedding_forward};
use crate::kernels::layernorm::{layernorm_backward, layernorm_forward};
use crate::kernels::workspace;
use rayon::prelude::*;

/// What [`Model::embed_backward`] needs.
pub struct EmbedTape {
    /// The batch's shape and real lengths.
    pub(super) batch: usize,
    pub(super) seq: usize,
    pub(super) lengths: Vec<usize>,
    ids: Vec<u32>,
    type_ids: Vec<u32>,
    /// `[batch * seq, d]` word + position + token type, before the LayerNorm, with the
    /// LayerNorm's per-row mean and 1/std.
    sum: Vec<f32>,
    mean: Vec<f32>,
    rstd: Vec<f32>,
}

impl Drop for EmbedTape {
    fn drop(&mut self) {
        workspace::recycle(std::mem::take(&mut self.sum));
    }
}

impl EmbedTape {
    /// Bytes of activations held.
    pub fn bytes(&self) -> usize {
        4 * (self.sum.len() + self.mean.len() + self.rstd.len())
    }
}

impl Model {
    /// Embeddings: word + position + token type, LayerNorm, dropout; then the
    /// combination tokens (no position, no LayerNorm) after the n embedded rows. Returns
    /// the `[batch, n + m, d]` rows the encoder reads.
    pub(super) fn embed(&self, batch: &Batch, noise: Noise) -> (Vec<f32>, EmbedTape) {
        let (p, ids) = (&self.params, &self.layout.embeddings);
        let (bsz, n, d) = (batch.batch, batch.seq, self.bert.hidden_size);
        let rows_n = bsz * n;
        let mut sum = workspace::take(rows_n * d);
        embedding_forward(&batch.ids, p.data(ids.word), d, &mut sum);
        {
            let mut typ = workspace::take(rows_n * d);
            embedding_forward(&batch.type_ids, p.data(ids.token_type), d, &mut typ);
            let pos = p.data(ids.position);
            sum.par_chunks_mut(d)
                .zip(typ.par_chunks(d))
                .enumerate()
                .for_each(|(r, (e, ty))| {
                    let pr = &pos[(r % n) * d..(r % n + 1) * d];
                    for i in 0..d {
                        e[i] += ty[i] + pr[i];
                    }
                });
            workspace::recycle(typ);
        }
        let mut emb = workspace::take(rows_n * d);
        let mut mean = vec![0.0f32; rows_n];
        let mut rstd = vec![0.0f32; rows_n];
        layernorm_forward(
            &sum,
            rows_n,
            d,
            p.data(ids.norm.g),
            p.data(ids.norm.b),
            self.bert.layer_norm_eps as f32,
            &mut emb,
            &mut mean,
            &mut rstd,
        );
        if let Some(s) = noise.embeddings() {
            dropout_forward(&mut emb, self.bert.hidden_dropout_prob, s, 0);
        }
        let tape = EmbedTape {
            batch: bsz,
            seq: n,
            ids: batch.ids.clone(),
            type_ids: batch.type_ids.clone(),
            lengths: batch.lengths.clone(),
            sum,
            mean,
            rstd,
        };
        (self.append_comb_tokens(emb, bsz, n), tape)
    }

    /// `[batch, n + m, d]`: each example's n embedded rows, then the m combination
    /// tokens (without combining, `emb` itself).
    fn append_comb_tokens(&self, emb: Vec<f32>, bsz: usize, n: usize) -> Vec<f32> {
        let Some(ct) = self.layout.comb_tokens else {
            return emb;
        };
        let (m, d) = (self.combination_tokens(), self.bert.hidden_size);
        let t = n + m;
        let ct = self.params.data(ct);
        let mut x = workspace::take(bsz * t * d);
        x.par_chunks_mut(t * d).enumerate().for_each(|(b, xb)| {
            xb[..n * d].copy_from_slice(&emb[b * n * d..(b + 1) * n * d]);
            xb[n * d..].copy_from_slice(ct);
        });
        workspace::recycle(emb);
        x
    }

    /// Backward of [`Model::embed`] from `dx` (`[batch, n + m, d]`): accumulates the
    /// gradients of the combination tokens (summed over the batch) and of the three
    /// embedding tables (real positions only) and the embedding LayerNorm.
    pub(super) fn embed_backward(
        &self,
        tape: &EmbedTape,
        dx: &[f32],
        noise: Noise,
        grads: &mut ParamStore,
    ) {
        let (p, ids) = (&self.params, &self.layout.embeddings);
        let (bsz, n, d) = (tape.batch, tape.seq, self.bert.hidden_size);
        let t = n + self.combination_tokens();
        let rows_n = bsz * n;
        let mut demb = workspace::take(rows_n * d);
        for b in 0..bsz {
            demb[b * n * d..(b + 1) * n * d].copy_from_slice(&dx[b * t * d..b * t * d + n * d]);
        }
        if let Some(ct) = self.layout.comb_tokens {
            let g = grads.data_mut(ct);
            for b in 0..bsz {
                for (a, v) in g.iter_mut().zip(&dx[(b * t + n) * d..(b + 1) * t * d]) {
                    *a += *v;
                }
            }
        }
        if let Some(s) = noise.embeddings() {
            dropout_backward(&mut demb, self.bert.hidden_dropout_prob, s, 0);
        }
        let mut dsum = workspace::take(rows_n * d);
        {
            let (dg, db) = grads.pair_mut(ids.norm.g, ids.norm.b);
            layernorm_backward(
                &tape.sum,
                rows_n,
                d,
                p.data(ids.norm.g),
                &tape.mean,
                &tape.rstd,
                &demb,
                &mut dsum,
                false,
                dg,
                db,
            );
        }
        let real: Vec<bool> = (0..rows_n).map(|r| r % n < tape.lengths[r / n]).collect();
        let positions: Vec<u32> = (0..rows_n).map(|r| (r % n) as u32).collect();
        for (table_ids, table) in [
            (&tape.ids, ids.word),
            (&tape.type_ids, ids.token_type),
            (&positions, ids.position),
        ] {
            embedding_backward(table_ids, &real, &dsum, d, grads.data_mut(table));
        }
        workspace::recycle(demb);
        workspace::recycle(dsum);
    }
}
