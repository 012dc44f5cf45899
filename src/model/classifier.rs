//! The classifier itself: its configuration, its parameters and their layout (resolved
//! once, when the model is built); construction and the checks of a batch.

use super::batch::Batch;
use super::config::{BertConfig, CombineInit, MethodConfig};
use super::encoder::{LayerDims, LayerDropout};
use super::init;
use super::layout::{Layout, LinearIds};
use super::noise::Noise;
use super::params::ParamStore;
use crate::kernels::matmul::Precision;
use anyhow::{bail, Result};

/// A classifier: configuration plus parameters.
#[derive(Clone, Debug)]
pub struct Model {
    pub bert: BertConfig,
    pub method: MethodConfig,
    pub num_labels: usize,
    pub params: ParamStore,
    /// Ids of every tensor in `params`. Only the values of `params` may change after
    /// construction (training does, in place): names, shapes and order stay.
    pub(super) layout: Layout,
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
        method.validate_width(bert.hidden_size)?;
        if num_labels < 2 {
            bail!("a classifier needs at least 2 labels, got {num_labels}");
        }
        let params = init::classifier_tensors(&bert, &bert_params, &method, num_labels, seed)?;
        Model::from_params(bert, method, num_labels, params)
    }

    /// A randomly initialised model (BERT's initialisation: N(0, initializer_range)
    /// weights and embeddings, zero biases, LayerNorm 1/0).
    pub fn random(
        bert: BertConfig,
        method: MethodConfig,
        num_labels: usize,
        seed: u64,
    ) -> Result<Model> {
        let store = init::random_bert(&bert, seed);
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
        method.validate_width(bert.hidden_size)?;
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
            layout,
        })
    }

    /// Prepares the weights for forward passes only (`predict`, `serve`, the forward
    /// benchmarks): the linear weights packed once at `precision`, and each layer's
    /// projections fused into one product: queries, keys and values, or where the
    /// pruning variants gather the rows that stay keys and values (every layer after
    /// the first, which sees all rows), the keys and values. A training step drops all
    /// of it again with the weights it changes.
    pub fn pack_for_inference(&mut self, precision: Precision) {
        self.params.pack_linear_weights_as(precision);
        let part = |l: LinearIds| (l.w, l.b);
        for (i, l) in self.layout.layers.iter().enumerate() {
            let Some(l) = l else { continue };
            if self.method.variant.prunes() && i > 0 {
                self.params.fuse_packed(&[part(l.key), part(l.value)]);
            } else {
                self.params
                    .fuse_packed(&[part(l.query), part(l.key), part(l.value)]);
            }
        }
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

    /// The number m of combination tokens appended to each example (0 without
    /// combining).
    pub(super) fn combination_tokens(&self) -> usize {
        if self.method.variant.combines() {
            self.method.combine_tokens
        } else {
            0
        }
    }

    pub(super) fn layer_dims(&self, batch: usize, t: usize) -> LayerDims {
        LayerDims {
            batch,
            t,
            d: self.bert.hidden_size,
            heads: self.bert.num_attention_heads,
            ffn: self.bert.intermediate_size,
            ln_eps: self.bert.layer_norm_eps as f32,
        }
    }

    /// The dropouts of transformer layer `l` (0-based) in a pass with `noise`: the
    /// checkpoint's, or `combine_dropout` from the combiner's layer block on (that block
    /// uses the replaced layer's, `combine_layer - 1`).
    pub(super) fn layer_dropout(&self, noise: Noise, l: usize) -> Option<LayerDropout> {
        let mut dropout = noise.layer(l, &self.bert)?;
        let m = &self.method;
        if let Some(p) = m.combine_dropout {
            if m.variant.combines() && l + 1 >= m.combine_layer {
                dropout.hidden_p = p;
                dropout.attn_p = p;
            }
        }
        Some(dropout)
    }
}
