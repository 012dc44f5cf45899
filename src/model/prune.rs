//! The encoder stage on the embedded tokens (method.md, "Fuzzy token-pruned
//! self-attention"): layers 1 .. L_c-1 (all L without combining). Every token queries;
//! the keys/values of a layer are the embedded tokens the previous layer's pruning step
//! ([`fuzzy::select_batch`]) kept, plus all combination tokens. Layer 1 keeps every real
//! token.

use super::batch::Batch;
use super::classifier::Model;
use super::encoder::{layer_backward, layer_forward, KvIndex, LayerTape};
use super::fuzzy::{self, SelectConfig};
use super::noise::Noise;
use super::params::ParamStore;
use super::trace::{LayerTrace, Trace};
use crate::kernels::attention::HiddenKeys;
use crate::kernels::workspace;

/// One pruned layer's record for the backward pass.
pub struct PrunedLayerTape {
    /// Index of the layer (0-based).
    layer: usize,
    /// Its keys/values.
    kv: KvIndex,
    tape: LayerTape,
}

impl PrunedLayerTape {
    /// Bytes of activations held.
    pub fn bytes(&self) -> usize {
        self.tape.bytes()
    }
}

impl Model {
    fn select_config(&self) -> SelectConfig {
        let method = &self.method;
        SelectConfig {
            keep_ratio: method.keep_ratio,
            fuzzy: method.variant.fuzzy(),
            pct_low: method.pct_low,
            pct_high: method.pct_high,
            imp_thresh: method.imp_thresh,
            unimp_thresh: method.unimp_thresh,
        }
    }

    /// The layers on the embedded tokens: `x` is `[batch, n + m, d]` (the n padded
    /// positions of `batch`, then m combination tokens). Appends each layer's decisions
    /// to `trace`; returns the output rows and, with `record`, the tapes.
    pub(super) fn pruned_layers(
        &self,
        mut x: Vec<f32>,
        batch: &Batch,
        noise: Noise,
        record: bool,
        trace: &mut Trace,
    ) -> (Vec<f32>, Vec<PrunedLayerTape>) {
        let (bsz, n, lengths) = (batch.batch, batch.seq, &batch.lengths);
        let m = self.combination_tokens();
        let t = n + m;
        let heads = self.bert.num_attention_heads;
        let full_layers = self.method.full_layers(self.bert.num_hidden_layers);
        let select_cfg = self.select_config();
        // Importance is the mean over the real embedded queries only.
        let query_weights: Vec<f32> = (0..bsz)
            .flat_map(|b| (0..t).map(move |i| (i < lengths[b]) as u8 as f32))
            .collect();
        let mut kept: Vec<Vec<usize>> = lengths.iter().map(|&len| (0..len).collect()).collect();
        let mut tapes = Vec::new();
        let dims = self.layer_dims(bsz, t);
        // The combination tokens (key slots after each example's kept tokens) read the
        // document; unless they are visible, the document does not read them.
        let hidden = (m > 0 && !self.method.combine_visible).then_some(HiddenKeys {
            query_rows: n,
            hidden_slots: m,
        });
        for l in 0..full_layers {
            let ids = self.layout.layers[l]
                .as_ref()
                .expect("full layers are present");
            // The combination tokens take each example's last m slots: `hidden` names
            // them by that position.
            let lists: Vec<Vec<usize>> = kept
                .iter()
                .map(|k| k.iter().copied().chain(n..n + m).collect())
                .collect();
            debug_assert!(lists
                .iter()
                .all(|l| l[l.len() - m..].iter().copied().eq(n..n + m)));
            let kv = KvIndex::from_lists(&lists, t);
            // The last layer here decides nothing: no later layer reads its selection.
            // Examples of at most `prune_min_len` tokens are never pruned; a batch of
            // only such examples skips the importance scores too.
            let decide = self.method.variant.prunes()
                && l + 1 < full_layers
                && lengths.iter().any(|&len| len > self.method.prune_min_len);
            let out = layer_forward(
                &self.params,
                ids,
                dims,
                x,
                &kv,
                self.layer_dropout(noise, l),
                decide.then_some(query_weights.as_slice()),
                hidden,
                record,
            );
            let selections: Vec<Option<fuzzy::Selection>> = match &out.importance {
                Some(imp) => fuzzy::select_batch(imp, kv.kmax, &kept, heads, &select_cfg)
                    .into_iter()
                    .zip(lengths)
                    .map(|(s, &len)| (len > self.method.prune_min_len).then_some(s))
                    .collect(),
                None => vec![None; bsz],
            };
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
            if let Some(tape) = out.tape {
                tapes.push(PrunedLayerTape { layer: l, kv, tape });
            }
        }
        (x, tapes)
    }

    /// Backward of [`Model::pruned_layers`]: from the gradient of its output `dx`
    /// (`[batch, t, d]`), returns the gradient of its input.
    pub(super) fn pruned_layers_backward(
        &self,
        tapes: &[PrunedLayerTape],
        mut dx: Vec<f32>,
        batch: usize,
        t: usize,
        noise: Noise,
        grads: &mut ParamStore,
    ) -> Vec<f32> {
        let dims = self.layer_dims(batch, t);
        for lt in tapes.iter().rev() {
            let ids = self.layout.layers[lt.layer]
                .as_ref()
                .expect("layer present");
            let dprev = layer_backward(
                &self.params,
                ids,
                dims,
                &lt.kv,
                self.layer_dropout(noise, lt.layer),
                &lt.tape,
                &dx,
                grads,
            );
            workspace::recycle(std::mem::replace(&mut dx, dprev));
        }
        dx
    }
}
