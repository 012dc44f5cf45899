//! The classifier: BERT embeddings, an encoder whose attention prunes keys/values
//! (method.md), an optional token-combining module, pooling and a linear head.
//!
//! `Model::forward` runs the stages top to bottom, each in its own file with its backward
//! next to it: `embed` (embed.rs), `pruned_layers` (prune.rs; the pruning step between
//! layers is `fuzzy::select_batch`), `combine` (combine.rs; the combiner itself is
//! combiner.rs), `pool` (pool.rs) and `head` (head.rs). `Model::backward` runs them in
//! reverse. The model's definition and construction are in classifier.rs; every tensor
//! name is in names.rs, resolved once to ids (layout.rs).

pub mod checkpoint;
pub mod combiner;
pub mod config;
pub mod encoder;
pub mod fuzzy;
/// The golden-file reader of the integration tests, shared with the unit tests here.
#[cfg(test)]
#[path = "../../tests/common/golden.rs"]
pub(crate) mod golden;
pub mod hub;
pub mod layout;
pub mod names;
pub mod params;

mod batch;
mod classifier;
mod combine;
mod embed;
mod head;
mod init;
mod noise;
mod ops;
mod pool;
mod prune;
mod stats;
mod trace;

pub use batch::{Batch, Mode};
pub use classifier::Model;
pub use config::{
    BertConfig, CombineAssignment, CombineBlock, CombineInit, CombinePooling, CombineResidual,
    CombineTokenInit, LengthRange, MethodConfig, Pooling, Variant,
};
pub use params::{ParamId, ParamStore, Tensor};
pub use stats::CombineStats;
pub use trace::{LayerTrace, Trace};

use combine::CombineTape;
use embed::EmbedTape;
use noise::Noise;
use pool::PoolTape;
use prune::PrunedLayerTape;

pub struct ForwardOutput {
    /// `[batch, num_labels]`.
    pub logits: Vec<f32>,
    /// Pooled representation `[batch, hidden]`.
    pub pooled: Vec<f32>,
    pub trace: Trace,
}

/// Backward record of one forward pass (private fields; see `Model::forward`): each
/// stage's tape.
pub struct Tape {
    noise: Noise,
    embed: EmbedTape,
    pruned: Vec<PrunedLayerTape>,
    /// Combining models only.
    combine: Option<CombineTape>,
    pool: PoolTape,
    /// `[batch, m]` real tokens each combination token received (empty: no combining).
    group_counts: Vec<u32>,
    /// Classifier input (pooled after dropout).
    head_in: Vec<f32>,
}

impl Tape {
    /// Bytes of activations held for the backward pass.
    pub fn bytes(&self) -> usize {
        self.embed.bytes()
            + self.pool.bytes()
            + 4 * self.head_in.len()
            + self.pruned.iter().map(|t| t.bytes()).sum::<usize>()
            + self.combine.as_ref().map_or(0, |t| t.bytes())
    }
}

impl Model {
    /// Forward pass. With `record`, also returns the tape for `backward`.
    pub fn forward(
        &self,
        batch: &Batch,
        mode: Mode,
        record: bool,
    ) -> (ForwardOutput, Option<Tape>) {
        crate::kernels::on_pool(|| self.forward_stages(batch, mode, record))
    }

    /// The stages of [`Self::forward`], on a pool thread.
    fn forward_stages(
        &self,
        batch: &Batch,
        mode: Mode,
        record: bool,
    ) -> (ForwardOutput, Option<Tape>) {
        let noise = Noise::of(mode);
        let mut trace = Trace::default();
        let (x, embed) = self.embed(batch, noise);
        let (x, pruned) = self.pruned_layers(x, batch, noise, record, &mut trace);
        let (hidden, assign, combine, tokens) = if self.method.variant.combines() {
            let (hidden, assign, tape) = self.combine(&x, batch, noise, record);
            trace.assign = Some(assign.chunks(batch.seq).map(<[i64]>::to_vec).collect());
            // (the combiner's input is pooled too with `CountsAndTokens`; else dropped here)
            (
                hidden,
                Some(assign),
                tape,
                Some(x).filter(|_| self.pools_tokens()),
            )
        } else {
            (x, None, None, None)
        };
        let (pooled, pool) =
            self.pool(hidden, &batch.lengths, assign.as_deref(), tokens.as_deref());
        let (logits, head_in) = self.head(&pooled, noise);

        let tape = record.then(|| Tape {
            noise,
            embed,
            pruned,
            combine,
            pool,
            group_counts: trace.assign.as_ref().map_or(Vec::new(), |a| {
                stats::group_counts(a, self.method.combine_tokens)
            }),
            head_in,
        });
        let out = ForwardOutput {
            logits,
            pooled,
            trace,
        };
        (out, tape)
    }

    /// Backward pass from `dlogits` (`[batch, num_labels]`, the gradient of the loss);
    /// accumulates into `grads` (a `zeros_like` of the parameters).
    pub fn backward(&self, tape: &Tape, dlogits: &[f32], grads: &mut ParamStore) {
        crate::kernels::on_pool(|| self.backward_stages(tape, dlogits, grads))
    }

    /// The stages of [`Self::backward`], on a pool thread.
    fn backward_stages(&self, tape: &Tape, dlogits: &[f32], grads: &mut ParamStore) {
        let noise = tape.noise;
        let dpooled = self.head_backward(&tape.head_in, dlogits, noise, grads);
        let (dh, dtokens) = self.pool_backward(&tape.pool, &dpooled, grads);
        let dx = if self.method.variant.combines() {
            let combine = tape.combine.as_ref().expect("combiner tape recorded");
            let mut dx = self.combine_backward(combine, dh, noise, grads);
            if let Some(dt) = dtokens {
                dx.iter_mut().zip(&dt).for_each(|(g, t)| *g += t);
            }
            dx
        } else {
            dh
        };
        let (bsz, t) = (tape.embed.batch, tape.embed.seq + self.combination_tokens());
        let dx = self.pruned_layers_backward(&tape.pruned, dx, bsz, t, noise, grads);
        self.embed_backward(&tape.embed, &dx, noise, grads);
        crate::kernels::workspace::recycle(dx);
    }

    /// What the combining module did in the step `tape` recorded, with the gradients
    /// `grads` of that step (see [`CombineStats`]); `None` without combining.
    pub fn combine_stats(&self, tape: &Tape, grads: &ParamStore) -> Option<CombineStats> {
        let id = self.layout.comb_tokens?;
        Some(CombineStats::measure(
            &tape.group_counts,
            &tape.embed.lengths,
            self.params.data(id),
            grads.data(id),
            self.method.combine_tokens,
        ))
    }
}

#[cfg(test)]
mod tests;
