//! The classifier: BERT embeddings, an encoder whose attention prunes keys/values
//! (method.md), an optional token-combining module, pooling and a linear head.

pub mod checkpoint;
pub mod combiner;
pub mod config;
pub mod fuzzy;
pub mod hub;
pub mod names;
pub mod params;

pub use config::{
    BertConfig, CombineBlock, CombineInit, CombinePooling, CombineTokenInit, MethodConfig, Pooling,
    Variant,
};
pub use params::{ParamId, ParamStore, Tensor};

/// A padded batch of token sequences.
#[derive(Clone, Debug)]
pub struct Batch {
    /// `[batch, seq]` token ids, padded with the pad id.
    pub ids: Vec<u32>,
    /// `[batch, seq]` token type ids (all 0 for single-text classification).
    pub type_ids: Vec<u32>,
    /// Real (non-padding) length of each example, `[CLS]` and `[SEP]` included.
    pub lengths: Vec<usize>,
    pub batch: usize,
    pub seq: usize,
}

impl Batch {
    /// Pads `seqs` to the longest one with `pad_id`.
    pub fn from_sequences(seqs: &[&[u32]], pad_id: u32) -> Batch {
        let batch = seqs.len();
        let seq = seqs.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![pad_id; batch * seq];
        for (b, s) in seqs.iter().enumerate() {
            ids[b * seq..b * seq + s.len()].copy_from_slice(s);
        }
        Batch {
            ids,
            type_ids: vec![0; batch * seq],
            lengths: seqs.iter().map(|s| s.len()).collect(),
            batch,
            seq,
        }
    }
}

/// Training mode turns on dropout and Gumbel noise, all drawn from `seed`.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    Train { seed: u64 },
    Eval,
}

/// What one selection step decided for one example (for `explain` and the golden tests).
#[derive(Clone, Debug)]
pub struct LayerTrace {
    /// Positions used as keys/values in this layer (ascending; embedded tokens only).
    pub kept: Vec<Vec<usize>>,
    /// The selection made from this layer's attention for the next layer, per example
    /// (None for the last pruned layer and for unpruned variants).
    pub selection: Vec<Option<fuzzy::Selection>>,
}

/// Decisions of a forward pass.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    /// One entry per layer that ran on the embedded tokens.
    pub layers: Vec<LayerTrace>,
    /// Combination token of each embedded position, `[batch][seq]` (-1 = padding).
    pub assign: Option<Vec<Vec<i64>>>,
}

/// What the combining module did in one training step (`docs/combining.md`): means over
/// the batch of how many of the m combination tokens received tokens and the largest
/// group's share of the real tokens; the combination tokens' mean row norm, mean pairwise
/// cosine, and the norm of their gradient (before clipping). Sums of several steps while
/// accumulating; [`CombineStats::mean_of`] divides.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CombineStats {
    pub used_slots: f64,
    pub largest_share: f64,
    pub token_norm: f64,
    pub token_cosine: f64,
    pub token_grad_norm: f64,
}

impl CombineStats {
    pub fn add(&mut self, o: &CombineStats) {
        self.used_slots += o.used_slots;
        self.largest_share += o.largest_share;
        self.token_norm += o.token_norm;
        self.token_cosine += o.token_cosine;
        self.token_grad_norm += o.token_grad_norm;
    }

    /// The mean of `steps` accumulated steps.
    pub fn mean_of(&self, steps: u64) -> CombineStats {
        let k = steps.max(1) as f64;
        CombineStats {
            used_slots: self.used_slots / k,
            largest_share: self.largest_share / k,
            token_norm: self.token_norm / k,
            token_cosine: self.token_cosine / k,
            token_grad_norm: self.token_grad_norm / k,
        }
    }
}

pub struct ForwardOutput {
    /// `[batch, num_labels]`.
    pub logits: Vec<f32>,
    /// Pooled representation `[batch, hidden]`.
    pub pooled: Vec<f32>,
    pub trace: Trace,
}

/// A classifier: configuration plus parameters.
#[derive(Clone, Debug)]
pub struct Model {
    pub bert: BertConfig,
    pub method: MethodConfig,
    pub num_labels: usize,
    pub params: ParamStore,
}

pub mod encoder;
pub mod layout;
mod ops;

use crate::kernels::workspace;
use anyhow::{bail, Result};
use combiner::{combiner_backward, combiner_forward, CombinerDims, CombinerSettings, CombinerTape};
use encoder::{
    ffn_block_backward, ffn_block_forward, layer_backward, layer_forward, lin_back, FfnTape,
    KvIndex, LayerDims, LayerDropout, LayerTape,
};
use layout::Layout;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::kernels::dropout::{dropout_backward, dropout_forward};
use crate::kernels::embedding::{embedding_backward, embedding_forward};
use crate::kernels::layernorm::{layernorm_backward, layernorm_forward};
use crate::kernels::linear::linear_forward;
use crate::profile::{timed, Kernel};
use crate::rng::{mix64, Rng};

/// Backward record of one forward pass (private fields; see `Model::forward`).
pub struct Tape {
    batch: usize,
    seq: usize,
    lengths: Vec<usize>,
    ids: Vec<u32>,
    type_ids: Vec<u32>,
    seed: Option<u64>,
    emb_sum: Vec<f32>,
    emb_mean: Vec<f32>,
    emb_rstd: Vec<f32>,
    /// Layers on the embedded tokens: (index into layout.layers, kv index, tape).
    full: Vec<(usize, KvIndex, LayerTape)>,
    combiner: Option<CombinerTape>,
    /// The combiner's layer block (`CombineBlock::Layer`).
    combiner_block: Option<FfnTape>,
    /// Layers after the combiner, on the m combination tokens.
    after: Vec<(usize, LayerTape)>,
    /// Input of the pooler / mean pooling: the final hidden rows.
    final_hidden: Vec<f32>,
    /// `[batch, rows]` weights of the weighted-sum pooling (empty: cls pooling).
    pool_weights: Vec<f32>,
    /// `[batch, m]` real tokens each combination token received (empty: no combining).
    group_counts: Vec<u32>,
    /// Pooler output before dropout (cls pooling: after tanh).
    pooled: Vec<f32>,
    /// Classifier input (pooled after dropout).
    head_in: Vec<f32>,
}

impl Tape {
    /// Bytes of activations held for the backward pass.
    pub fn bytes(&self) -> usize {
        let v = 4
            * (self.emb_sum.len()
                + self.emb_mean.len()
                + self.emb_rstd.len()
                + self.final_hidden.len()
                + self.pooled.len()
                + self.head_in.len());
        v + self.full.iter().map(|(_, _, t)| t.bytes()).sum::<usize>()
            + self.after.iter().map(|(_, t)| t.bytes()).sum::<usize>()
    }
}

fn seed_for(seed: Option<u64>, site: u64) -> Option<u64> {
    seed.map(|s| mix64(s ^ mix64(site)))
}

const SITE_EMB: u64 = 0x100;
const SITE_LAYER: u64 = 0x200;
const SITE_HEAD: u64 = 0x300;
const SITE_GUMBEL: u64 = 0x400;

fn normal_vec(rng: &mut Rng, n: usize, std: f32) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32 * std).collect()
}

/// Weighted-sum pooling: `pooled[b] = sum_r weights[b, r] * hidden[b, r]`, `hidden`
/// `[batch, rows, d]`, `weights` `[batch, rows]`. Mean pooling over real tokens, the
/// paper's mean of the m combination tokens and the count-weighted mean are its weights.
fn pool(hidden: &[f32], weights: &[f32], d: usize, pooled: &mut [f32]) {
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

/// Backward of [`pool`] (the weights are constants): `dhidden[b, r] = weights[b, r] *
/// dpooled[b]`.
fn pool_backward(dpooled: &[f32], weights: &[f32], d: usize, dhidden: &mut [f32]) {
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

/// `m` rows at the scale of real embedded tokens (`CombineTokenInit::Vocab`): the
/// embedding of `m` random vocabulary tokens (word + token type 0, no position, as the
/// combination tokens have none), through the embedding LayerNorm. Distinct from each
/// other, with norms like real tokens' (11.4 against 0.40 for N(0, 0.02) rows on MiniLM-L6).
fn vocab_token_states(
    bert: &BertConfig,
    params: &ParamStore,
    m: usize,
    rng: &mut Rng,
) -> Result<Vec<f32>> {
    let d = bert.hidden_size;
    let get = |name: &str| {
        params
            .get(name)
            .map(|t| t.data.as_slice())
            .ok_or_else(|| anyhow::anyhow!("missing tensor `{name}`"))
    };
    let word = get("embeddings.word_embeddings.weight")?;
    let token_type = &get("embeddings.token_type_embeddings.weight")?[..d];
    let (g, b) = (
        get("embeddings.LayerNorm.weight")?,
        get("embeddings.LayerNorm.bias")?,
    );
    let mut sum = vec![0.0f32; m * d];
    for row in sum.chunks_mut(d) {
        let id = rng.below(bert.vocab_size);
        for ((s, w), t) in row
            .iter_mut()
            .zip(&word[id * d..(id + 1) * d])
            .zip(token_type)
        {
            *s = w + t;
        }
    }
    let mut out = vec![0.0f32; m * d];
    let (mut mean, mut rstd) = (vec![0.0f32; m], vec![0.0f32; m]);
    let eps = bert.layer_norm_eps as f32;
    layernorm_forward(&sum, m, d, g, b, eps, &mut out, &mut mean, &mut rstd);
    Ok(out)
}

impl Model {
    /// Builds a classifier on a pretrained BERT: copies its tensors, and adds the
    /// classifier (N(0, initializer_range), zero bias), and with combining the
    /// combination tokens (N(0, 0.02)) and the combiner (`copy`: from the replaced layer's
    /// query/key/value/attention-output weights, or `random`). The replaced layer and an
    /// unused pooler are dropped.
    pub fn from_bert_params(
        bert: BertConfig,
        bert_params: ParamStore,
        method: MethodConfig,
        num_labels: usize,
        seed: u64,
    ) -> Result<Model> {
        bert.validate()?;
        method.validate(bert.num_hidden_layers)?;
        if num_labels < 2 {
            bail!("a classifier needs at least 2 labels, got {num_labels}");
        }
        let d = bert.hidden_size;
        let mut rng = Rng::new(seed ^ 0xC1A5_51F1);
        let replaced = method
            .variant
            .combines()
            .then(|| names::layer_prefix(method.combine_layer - 1) + ".");
        let mut store = ParamStore::new();
        for (name, shape) in names::bert_tensors(&bert) {
            if replaced.as_deref().is_some_and(|r| name.starts_with(r)) {
                continue;
            }
            if names::is_pooler(&name) && method.pooling != Pooling::Cls {
                continue;
            }
            match bert_params.get(&name) {
                Some(t) if t.shape == shape => {
                    store.add(&name, &shape, t.data.clone());
                }
                Some(t) => bail!(
                    "tensor `{name}` has shape {:?}, expected {shape:?}",
                    t.shape
                ),
                None if names::is_pooler(&name) => {
                    let n: usize = shape.iter().product();
                    let data = if shape.len() == 2 {
                        normal_vec(&mut rng, n, bert.initializer_range)
                    } else {
                        vec![0.0; n]
                    };
                    store.add(&name, &shape, data);
                }
                None => bail!("missing tensor `{name}` (expected shape {shape:?})"),
            }
        }
        if method.variant.combines() {
            let m = method.combine_tokens;
            let tokens = match method.combine_token_init {
                CombineTokenInit::Normal => normal_vec(&mut rng, m * d, 0.02),
                CombineTokenInit::Vocab => vocab_token_states(&bert, &bert_params, m, &mut rng)?,
            };
            store.add("comb_tokens", &[m, d], tokens);
            for n in ["norm_c", "norm_e"] {
                store.add(&format!("combiner.{n}.weight"), &[d], vec![1.0; d]);
                store.add(&format!("combiner.{n}.bias"), &[d], vec![0.0; d]);
            }
            let src = names::layer_prefix(method.combine_layer - 1);
            for (w, hf) in [
                ("w_q", "attention.self.query"),
                ("w_k", "attention.self.key"),
                ("w_v", "attention.self.value"),
                ("w_o", "attention.output.dense"),
            ] {
                let (wd, bd) = match method.combine_init {
                    CombineInit::Copy => {
                        let get = |suffix: &str| {
                            bert_params
                                .get(&format!("{src}.{hf}.{suffix}"))
                                .map(|t| t.data.clone())
                                .ok_or_else(|| {
                                    anyhow::anyhow!("missing tensor `{src}.{hf}.{suffix}`")
                                })
                        };
                        (get("weight")?, get("bias")?)
                    }
                    CombineInit::Random => (normal_vec(&mut rng, d * d, 0.02), vec![0.0; d]),
                };
                store.add(&format!("combiner.{w}.weight"), &[d, d], wd);
                store.add(&format!("combiner.{w}.bias"), &[d], bd);
            }
        }
        if method.variant.combines() && method.combine_block == CombineBlock::Layer {
            let src = names::layer_prefix(method.combine_layer - 1);
            let f = bert.intermediate_size;
            for (ours, hf, shape) in [
                ("attn_norm", "attention.output.LayerNorm", [d, 0]),
                ("ffn_in", "intermediate.dense", [f, d]),
                ("ffn_out", "output.dense", [d, f]),
                ("ffn_norm", "output.LayerNorm", [d, 0]),
            ] {
                let is_norm = shape[1] == 0;
                for (suffix, dims) in [
                    ("weight", &shape[..if is_norm { 1 } else { 2 }]),
                    ("bias", &shape[..1]),
                ] {
                    let n: usize = dims.iter().product();
                    let data = match method.combine_init {
                        CombineInit::Copy => bert_params
                            .get(&format!("{src}.{hf}.{suffix}"))
                            .map(|t| t.data.clone())
                            .ok_or_else(|| {
                                anyhow::anyhow!("missing tensor `{src}.{hf}.{suffix}`")
                            })?,
                        CombineInit::Random if is_norm && suffix == "weight" => vec![1.0; n],
                        CombineInit::Random if suffix == "weight" => normal_vec(&mut rng, n, 0.02),
                        CombineInit::Random => vec![0.0; n],
                    };
                    store.add(&format!("combiner.{ours}.{suffix}"), dims, data);
                }
            }
        }
        store.add(
            "classifier.weight",
            &[num_labels, d],
            normal_vec(&mut rng, num_labels * d, bert.initializer_range),
        );
        store.add("classifier.bias", &[num_labels], vec![0.0; num_labels]);
        Model::from_params(bert, method, num_labels, store)
    }

    /// A randomly initialised model (BERT's initialisation: N(0, initializer_range)
    /// weights and embeddings, zero biases, LayerNorm 1/0).
    pub fn random(
        bert: BertConfig,
        method: MethodConfig,
        num_labels: usize,
        seed: u64,
    ) -> Result<Model> {
        let mut rng = Rng::new(seed);
        let mut store = ParamStore::new();
        for (name, shape) in names::bert_tensors(&bert) {
            let n: usize = shape.iter().product();
            let data = if name.contains("LayerNorm.weight") {
                vec![1.0; n]
            } else if shape.len() == 2 {
                normal_vec(&mut rng, n, bert.initializer_range)
            } else {
                vec![0.0; n]
            };
            store.add(&name, &shape, data);
        }
        let mut method = method;
        if method.combine_init == CombineInit::Copy && !method.variant.combines() {
            method.combine_init = CombineInit::Random;
        }
        Model::from_bert_params(bert, store, method, num_labels, seed.wrapping_add(1))
    }

    /// A model from a complete parameter set (our own checkpoints); checks every tensor
    /// the configuration needs and rejects unknown ones.
    pub fn from_params(
        bert: BertConfig,
        method: MethodConfig,
        num_labels: usize,
        params: ParamStore,
    ) -> Result<Model> {
        bert.validate()?;
        method.validate(bert.num_hidden_layers)?;
        let layout = Layout::resolve(&params, &bert, &method, num_labels)?;
        let mut used = vec![false; params.len()];
        for id in layout.ids() {
            used[id] = true;
        }
        if let Some(extra) = params.tensors.iter().zip(&used).find(|(_, u)| !**u) {
            bail!(
                "unexpected tensor `{}` for a {} model with these settings",
                extra.0.name,
                method.variant.name()
            );
        }
        Ok(Model {
            bert,
            method,
            num_labels,
            params,
        })
    }

    /// `[batch, rows]` weights of [`pool`]: without combining, 1/n_b on the real tokens
    /// (`rows` = padded length); with combining, 1/m on each combination token (the
    /// paper) or its share of the real tokens (`assign`: `[batch, n]` combination token of
    /// each position, -1 for padding; `CombinePooling::Counts`).
    fn pool_weights(&self, lengths: &[usize], rows: usize, assign: Option<&[i64]>) -> Vec<f32> {
        let mut w = vec![0.0f32; lengths.len() * rows];
        for (b, wb) in w.chunks_mut(rows).enumerate() {
            if !self.method.variant.combines() {
                wb[..lengths[b]].fill(1.0 / lengths[b] as f32);
                continue;
            }
            match (self.method.combine_pooling, assign) {
                (CombinePooling::Counts, Some(assign)) => {
                    let n = assign.len() / lengths.len();
                    let groups = assign[b * n..(b + 1) * n].iter().filter(|&&g| g >= 0);
                    for &g in groups {
                        wb[g as usize] += 1.0;
                    }
                    wb.iter_mut().for_each(|x| *x /= lengths[b] as f32);
                }
                _ => wb.fill(1.0 / rows as f32),
            }
        }
        w
    }

    /// What the combining module did in the step `tape` recorded, with the gradients
    /// `grads` of that step (see [`CombineStats`]); `None` without combining.
    pub fn combine_stats(&self, tape: &Tape, grads: &ParamStore) -> Option<CombineStats> {
        let id = self.layout().comb_tokens?;
        let (m, d) = (self.method.combine_tokens, self.bert.hidden_size);
        let bsz = tape.lengths.len();
        let mut st = CombineStats::default();
        for (b, counts) in tape.group_counts.chunks(m).enumerate() {
            st.used_slots += counts.iter().filter(|&&c| c > 0).count() as f64 / bsz as f64;
            let largest = counts.iter().copied().max().unwrap_or(0) as f64;
            st.largest_share += largest / tape.lengths[b].max(1) as f64 / bsz as f64;
        }
        let rows: Vec<&[f32]> = self.params.data(id).chunks(d).collect();
        let norm = |r: &[f32]| r.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        st.token_norm = rows.iter().map(|r| norm(r)).sum::<f64>() / m as f64;
        let mut pairs = 0usize;
        for i in 0..m {
            for j in i + 1..m {
                let dot: f64 = rows[i]
                    .iter()
                    .zip(rows[j])
                    .map(|(a, b)| (a * b) as f64)
                    .sum();
                st.token_cosine += dot / (norm(rows[i]) * norm(rows[j])).max(1e-30);
                pairs += 1;
            }
        }
        st.token_cosine /= pairs.max(1) as f64;
        st.token_grad_norm = norm(grads.data(id));
        Some(st)
    }

    fn layout(&self) -> Layout {
        Layout::resolve(&self.params, &self.bert, &self.method, self.num_labels)
            .expect("model parameters were validated at construction")
    }

    fn layer_dims(&self, batch: usize, t: usize) -> LayerDims {
        LayerDims {
            batch,
            t,
            d: self.bert.hidden_size,
            heads: self.bert.num_attention_heads,
            ffn: self.bert.intermediate_size,
            ln_eps: self.bert.layer_norm_eps as f32,
        }
    }

    fn layer_dropout(&self, seed: Option<u64>, l: usize) -> Option<LayerDropout> {
        seed_for(seed, SITE_LAYER + l as u64).map(|s| LayerDropout {
            hidden_p: self.bert.hidden_dropout_prob,
            attn_p: self.bert.attention_probs_dropout_prob,
            seed: s,
        })
    }

    /// Checks a batch against the model's limits.
    pub fn check_batch(&self, batch: &Batch) -> Result<()> {
        if batch.seq > self.bert.max_position_embeddings {
            bail!(
                "sequence length {} exceeds the model's {} position embeddings",
                batch.seq,
                self.bert.max_position_embeddings
            );
        }
        if let Some(&bad) = batch
            .ids
            .iter()
            .find(|&&i| i as usize >= self.bert.vocab_size)
        {
            bail!(
                "token id {bad} is outside the vocabulary of {}",
                self.bert.vocab_size
            );
        }
        if let Some(&bad) = batch
            .type_ids
            .iter()
            .find(|&&i| i as usize >= self.bert.type_vocab_size)
        {
            bail!(
                "token type id {bad} is outside the {} token types",
                self.bert.type_vocab_size
            );
        }
        if let Some(b) = batch.lengths.iter().position(|&n| n == 0 || n > batch.seq) {
            bail!("example {b} of the batch has length {}", batch.lengths[b]);
        }
        Ok(())
    }

    /// Forward pass. With `record`, also returns the tape for `backward`.
    pub fn forward(
        &self,
        batch: &Batch,
        mode: Mode,
        record: bool,
    ) -> (ForwardOutput, Option<Tape>) {
        let lay = self.layout();
        let p = &self.params;
        let (bsz, n) = (batch.batch, batch.seq);
        let d = self.bert.hidden_size;
        let heads = self.bert.num_attention_heads;
        let seed = match mode {
            Mode::Train { seed } => Some(seed),
            Mode::Eval => None,
        };
        let combines = self.method.variant.combines();
        let m = if combines {
            self.method.combine_tokens
        } else {
            0
        };
        let t = n + m;

        // Embeddings: word + position + token type, LayerNorm, dropout; then the
        // combination tokens (no position, no LayerNorm) after the n embedded rows.
        let rows_n = bsz * n;
        let mut emb_sum = vec![0.0f32; rows_n * d];
        embedding_forward(&batch.ids, p.data(lay.embeddings.word), d, &mut emb_sum);
        {
            let mut typ = vec![0.0f32; rows_n * d];
            embedding_forward(
                &batch.type_ids,
                p.data(lay.embeddings.token_type),
                d,
                &mut typ,
            );
            let pos = p.data(lay.embeddings.position);
            emb_sum
                .par_chunks_mut(d)
                .zip(typ.par_chunks(d))
                .enumerate()
                .for_each(|(r, (e, ty))| {
                    let pr = &pos[(r % n) * d..(r % n + 1) * d];
                    for i in 0..d {
                        e[i] += ty[i] + pr[i];
                    }
                });
        }
        let mut emb = vec![0.0f32; rows_n * d];
        let mut emb_mean = vec![0.0f32; rows_n];
        let mut emb_rstd = vec![0.0f32; rows_n];
        layernorm_forward(
            &emb_sum,
            rows_n,
            d,
            p.data(lay.embeddings.norm.g),
            p.data(lay.embeddings.norm.b),
            self.bert.layer_norm_eps as f32,
            &mut emb,
            &mut emb_mean,
            &mut emb_rstd,
        );
        if let Some(s) = seed_for(seed, SITE_EMB) {
            dropout_forward(&mut emb, self.bert.hidden_dropout_prob, s, 0);
        }
        let mut x = if m == 0 {
            emb
        } else {
            let ct = p.data(lay.comb_tokens.expect("combining model has comb_tokens"));
            let mut x = vec![0.0f32; bsz * t * d];
            x.par_chunks_mut(t * d).enumerate().for_each(|(b, xb)| {
                xb[..n * d].copy_from_slice(&emb[b * n * d..(b + 1) * n * d]);
                xb[n * d..].copy_from_slice(ct);
            });
            x
        };

        // Layers on the embedded tokens, pruning keys/values between them.
        let full_layers = self.method.full_layers(self.bert.num_hidden_layers);
        let prunes = self.method.variant.prunes();
        let select_cfg = fuzzy::SelectConfig {
            keep_ratio: self.method.keep_ratio,
            fuzzy: self.method.variant.fuzzy(),
            pct_low: self.method.pct_low,
            pct_high: self.method.pct_high,
            imp_thresh: self.method.imp_thresh,
            unimp_thresh: self.method.unimp_thresh,
        };
        let query_weights: Vec<f32> = (0..bsz)
            .flat_map(|b| (0..t).map(move |i| (i < batch.lengths[b]) as u8 as f32))
            .collect();
        let mut kept: Vec<Vec<usize>> = batch
            .lengths
            .iter()
            .map(|&len| (0..len).collect())
            .collect();
        let mut trace = Trace::default();
        let mut full_tapes = Vec::new();
        let dims = self.layer_dims(bsz, t);
        for l in 0..full_layers {
            let ids = lay.layers[l].as_ref().expect("full layers are present");
            let lists: Vec<Vec<usize>> = kept
                .iter()
                .map(|k| k.iter().copied().chain(n..n + m).collect())
                .collect();
            let kv = KvIndex::from_lists(&lists, t);
            let decide = prunes && l + 1 < full_layers;
            let out = layer_forward(
                p,
                ids,
                dims,
                x,
                &kv,
                self.layer_dropout(seed, l),
                decide.then_some(query_weights.as_slice()),
                record,
            );
            let mut selections = vec![None; bsz];
            if let Some(imp) = &out.importance {
                for b in 0..bsz {
                    let cands = &kept[b];
                    let tk = cands.len();
                    let mut scores = vec![0.0f32; heads * tk];
                    for h in 0..heads {
                        let src = &imp[(b * heads + h) * kv.kmax..][..tk];
                        scores[h * tk..(h + 1) * tk].copy_from_slice(src);
                    }
                    let sel = timed(Kernel::Selection, || {
                        fuzzy::select(cands, &scores, heads, &select_cfg)
                    });
                    selections[b] = Some(sel);
                }
            }
            trace.layers.push(LayerTrace {
                kept: kept.clone(),
                selection: selections.clone(),
            });
            for (b, s) in selections.into_iter().enumerate() {
                if let Some(s) = s {
                    kept[b] = s.kept;
                }
            }
            x = out.out;
            if let Some(tp) = out.tape {
                full_tapes.push((l, kv, tp));
            }
        }

        // Token combining, then the remaining layers on the m combined tokens.
        let mut comb_tape = None;
        let mut block_tape = None;
        let mut after_tapes = Vec::new();
        let final_hidden;
        if combines {
            let cids = lay
                .combiner
                .as_ref()
                .expect("combining model has a combiner");
            let cdims = CombinerDims {
                batch: bsz,
                n,
                m,
                d,
            };
            let settings = CombinerSettings {
                scale: self.method.combine_scale,
                assign_eps: self.method.assign_eps,
                ln_eps: self.method.combine_ln_eps,
                gumbel_seed: seed_for(seed, SITE_GUMBEL).filter(|_| self.method.combine_noise),
            };
            let real: Vec<bool> = (0..bsz)
                .flat_map(|b| (0..n).map(move |j| j < batch.lengths[b]))
                .collect();
            let mut comb = vec![0.0f32; bsz * m * d];
            let (assign, tape) =
                combiner_forward(p, cids, cdims, &settings, &x, &real, &mut comb, record);
            trace.assign = Some(assign.chunks(n).map(|c| c.to_vec()).collect());
            comb_tape = tape;
            // The rest of the replaced layer (`CombineBlock::Layer`).
            if let Some(ids) = &lay.combiner_block {
                let (out, ftape) = ffn_block_forward(
                    p,
                    ids,
                    comb,
                    bsz * m,
                    d,
                    self.bert.intermediate_size,
                    self.bert.layer_norm_eps as f32,
                    self.layer_dropout(seed, self.method.combine_layer - 1),
                );
                comb = out;
                block_tape = record.then_some(ftape);
            }
            let mut h = comb;
            let kv = KvIndex::identity(bsz, m);
            let adims = self.layer_dims(bsz, m);
            for l in self.method.combine_layer..self.bert.num_hidden_layers {
                let ids = lay.layers[l]
                    .as_ref()
                    .expect("layers after the combiner are present");
                let out = layer_forward(
                    p,
                    ids,
                    adims,
                    h,
                    &kv,
                    self.layer_dropout(seed, l),
                    None,
                    record,
                );
                h = out.out;
                if let Some(tp) = out.tape {
                    after_tapes.push((l, tp));
                }
            }
            final_hidden = h;
        } else {
            final_hidden = x;
        }

        // Pooling and head.
        let rows = if combines { m } else { t };
        let mut group_counts = vec![0u32; if combines { bsz * m } else { 0 }];
        if let Some(assign) = &trace.assign {
            for (b, row) in assign.iter().enumerate() {
                for &g in row.iter().filter(|&&g| g >= 0) {
                    group_counts[b * m + g as usize] += 1;
                }
            }
        }
        let mut pool_weights = Vec::new();
        let mut pooled = vec![0.0f32; bsz * d];
        if combines || self.method.pooling == Pooling::Mean {
            let assign = trace.assign.as_ref().map(|a| a.concat());
            pool_weights = self.pool_weights(&batch.lengths, rows, assign.as_deref());
            pool(&final_hidden, &pool_weights, d, &mut pooled);
        } else {
            let pl = lay.pooler.expect("cls pooling has a pooler");
            let cls: Vec<f32> = (0..bsz)
                .flat_map(|b| final_hidden[b * t * d..b * t * d + d].iter().copied())
                .collect();
            linear_forward(
                &cls,
                bsz,
                d,
                p.data(pl.w),
                Some(p.data(pl.b)),
                d,
                &mut pooled,
            );
            pooled.iter_mut().for_each(|v| *v = v.tanh());
        }
        let mut head_in = pooled.clone();
        if let Some(s) = seed_for(seed, SITE_HEAD) {
            dropout_forward(&mut head_in, self.method.classifier_dropout, s, 0);
        }
        let mut logits = vec![0.0f32; bsz * self.num_labels];
        let c = lay.classifier;
        linear_forward(
            &head_in,
            bsz,
            d,
            p.data(c.w),
            Some(p.data(c.b)),
            self.num_labels,
            &mut logits,
        );

        let tape = record.then(|| Tape {
            batch: bsz,
            seq: n,
            lengths: batch.lengths.clone(),
            ids: batch.ids.clone(),
            type_ids: batch.type_ids.clone(),
            seed,
            emb_sum,
            emb_mean,
            emb_rstd,
            full: full_tapes,
            combiner: comb_tape,
            combiner_block: block_tape,
            after: after_tapes,
            final_hidden,
            pool_weights,
            group_counts,
            pooled: pooled.clone(),
            head_in,
        });
        (
            ForwardOutput {
                logits,
                pooled,
                trace,
            },
            tape,
        )
    }

    /// Backward pass from `dlogits` (`[batch, num_labels]`, the gradient of the loss);
    /// accumulates into `grads` (a `zeros_like` of the parameters).
    pub fn backward(&self, tape: &Tape, dlogits: &[f32], grads: &mut ParamStore) {
        let lay = self.layout();
        let p = &self.params;
        let (bsz, n) = (tape.batch, tape.seq);
        let d = self.bert.hidden_size;
        let combines = self.method.variant.combines();
        let m = if combines {
            self.method.combine_tokens
        } else {
            0
        };
        let t = n + m;
        let seed = tape.seed;

        // Head.
        let mut dpooled = vec![0.0f32; bsz * d];
        lin_back(
            p,
            lay.classifier,
            &tape.head_in,
            bsz,
            d,
            self.num_labels,
            dlogits,
            Some(&mut dpooled),
            false,
            grads,
        );
        if let Some(s) = seed_for(seed, SITE_HEAD) {
            dropout_backward(&mut dpooled, self.method.classifier_dropout, s, 0);
        }

        // Pooling.
        let final_rows = if combines { bsz * m } else { bsz * t };
        let mut dh = vec![0.0f32; final_rows * d];
        if !tape.pool_weights.is_empty() {
            pool_backward(&dpooled, &tape.pool_weights, d, &mut dh);
        } else {
            let pl = lay.pooler.expect("cls pooling has a pooler");
            let dpre: Vec<f32> = dpooled
                .iter()
                .zip(&tape.pooled)
                .map(|(g, y)| g * (1.0 - y * y))
                .collect();
            let cls: Vec<f32> = (0..bsz)
                .flat_map(|b| tape.final_hidden[b * t * d..b * t * d + d].iter().copied())
                .collect();
            let mut dcls = vec![0.0f32; bsz * d];
            lin_back(p, pl, &cls, bsz, d, d, &dpre, Some(&mut dcls), false, grads);
            for b in 0..bsz {
                dh[b * t * d..b * t * d + d].copy_from_slice(&dcls[b * d..(b + 1) * d]);
            }
        }

        // Layers after the combiner, then the combiner.
        let mut dx = if combines {
            let adims = self.layer_dims(bsz, m);
            let kv = KvIndex::identity(bsz, m);
            for (l, lt) in tape.after.iter().rev() {
                let ids = lay.layers[*l].as_ref().expect("layer present");
                let dprev = layer_backward(
                    p,
                    ids,
                    adims,
                    &kv,
                    self.layer_dropout(seed, *l),
                    lt,
                    &dh,
                    grads,
                );
                workspace::recycle(std::mem::replace(&mut dh, dprev));
            }
            if let Some(ids) = &lay.combiner_block {
                let ftape = tape.combiner_block.as_ref().expect("block tape recorded");
                let ds1 = ffn_block_backward(
                    p,
                    ids,
                    ftape,
                    &dh,
                    bsz * m,
                    d,
                    self.bert.intermediate_size,
                    self.layer_dropout(seed, self.method.combine_layer - 1),
                    grads,
                );
                workspace::recycle(std::mem::replace(&mut dh, ds1));
            }
            let cids = lay.combiner.as_ref().expect("combiner present");
            let mut dx = vec![0.0f32; bsz * t * d];
            timed(Kernel::CombinerBackward, || {
                combiner_backward(
                    p,
                    cids,
                    CombinerDims {
                        batch: bsz,
                        n,
                        m,
                        d,
                    },
                    tape.combiner.as_ref().expect("combiner tape recorded"),
                    &dh,
                    &mut dx,
                    grads,
                )
            });
            dx
        } else {
            dh
        };

        // Layers on the embedded tokens.
        let dims = self.layer_dims(bsz, t);
        for (l, kv, lt) in tape.full.iter().rev() {
            let ids = lay.layers[*l].as_ref().expect("layer present");
            let dprev = layer_backward(
                p,
                ids,
                dims,
                kv,
                self.layer_dropout(seed, *l),
                lt,
                &dx,
                grads,
            );
            workspace::recycle(std::mem::replace(&mut dx, dprev));
        }

        // Embeddings and combination tokens.
        let rows_n = bsz * n;
        let mut demb = vec![0.0f32; rows_n * d];
        for b in 0..bsz {
            demb[b * n * d..(b + 1) * n * d].copy_from_slice(&dx[b * t * d..b * t * d + n * d]);
        }
        if let Some(ct) = lay.comb_tokens {
            let g = grads.data_mut(ct);
            for b in 0..bsz {
                for (a, v) in g.iter_mut().zip(&dx[(b * t + n) * d..(b + 1) * t * d]) {
                    *a += *v;
                }
            }
        }
        if let Some(s) = seed_for(seed, SITE_EMB) {
            dropout_backward(&mut demb, self.bert.hidden_dropout_prob, s, 0);
        }
        let mut dsum = vec![0.0f32; rows_n * d];
        {
            let nid = lay.embeddings.norm;
            let (dg, db) = grads.pair_mut(nid.g, nid.b);
            layernorm_backward(
                &tape.emb_sum,
                rows_n,
                d,
                p.data(nid.g),
                &tape.emb_mean,
                &tape.emb_rstd,
                &demb,
                &mut dsum,
                false,
                dg,
                db,
            );
        }
        let real: Vec<bool> = (0..rows_n).map(|r| r % n < tape.lengths[r / n]).collect();
        embedding_backward(
            &tape.ids,
            &real,
            &dsum,
            d,
            grads.data_mut(lay.embeddings.word),
        );
        embedding_backward(
            &tape.type_ids,
            &real,
            &dsum,
            d,
            grads.data_mut(lay.embeddings.token_type),
        );
        let positions: Vec<u32> = (0..rows_n).map(|r| (r % n) as u32).collect();
        embedding_backward(
            &positions,
            &real,
            &dsum,
            d,
            grads.data_mut(lay.embeddings.position),
        );
    }
}

#[cfg(test)]
mod tests;
