//! The combining stage (method.md, "Token combining module"): the combiner (in place of
//! layer L_c) groups the embedded tokens into the m combination tokens, optionally
//! followed by the rest of the replaced layer (`CombineBlock::Layer`); the remaining
//! layers then run on the m combination tokens alone.

use super::batch::Batch;
use super::classifier::Model;
use super::combiner::{
    combiner_backward, combiner_forward, CombinerDims, CombinerSettings, CombinerTape,
};
use super::encoder::{
    ffn_block_backward, ffn_block_forward, layer_backward, layer_forward, FfnTape, KvIndex,
    LayerTape,
};
use super::noise::Noise;
use super::params::ParamStore;
use crate::kernels::workspace;
use crate::profile::{timed, Kernel};

/// What [`Model::combine_backward`] needs.
pub struct CombineTape {
    dims: CombinerDims,
    combiner: CombinerTape,
    /// The combiner's layer block (`CombineBlock::Layer`).
    block: Option<FfnTape>,
    /// The layers after the combiner: (layer index, tape).
    after: Vec<(usize, LayerTape)>,
}

impl CombineTape {
    /// Bytes held by the tapes of the layers after the combiner (the combiner's own
    /// tape and its block's are not counted).
    pub fn bytes(&self) -> usize {
        self.after.iter().map(|(_, t)| t.bytes()).sum()
    }
}

impl Model {
    /// From the `[batch, n + m, d]` output of the pruned layers: returns the final
    /// `[batch, m, d]` hidden rows, the `[batch * n]` assignment of each embedded position
    /// (-1 for padding) and, with `record`, the tape.
    pub(super) fn combine(
        &self,
        x: &[f32],
        batch: &Batch,
        noise: Noise,
        record: bool,
    ) -> (Vec<f32>, Vec<i64>, Option<CombineTape>) {
        let (bsz, n) = (batch.batch, batch.seq);
        let (m, d) = (self.method.combine_tokens, self.bert.hidden_size);
        let p = &self.params;
        let ids = self
            .layout
            .combiner
            .as_ref()
            .expect("combining model has a combiner");
        let dims = CombinerDims {
            batch: bsz,
            n,
            m,
            d,
        };
        let settings = CombinerSettings {
            scale: self.method.combine_scale,
            assign_eps: self.method.assign_eps,
            ln_eps: self.method.combine_ln_eps,
            residual: self.method.combine_residual,
            assignment: self.method.combine_assignment,
            gumbel_seed: noise.gumbel().filter(|_| self.method.combine_noise),
            key_grad: self.method.combine_key_grad,
            heads: self.method.combine_heads,
        };
        let real: Vec<bool> = (0..bsz)
            .flat_map(|b| (0..n).map(move |j| j < batch.lengths[b]))
            .collect();
        let mut h = vec![0.0f32; bsz * m * d];
        let (assign, combiner_tape) = timed(Kernel::Combiner, || {
            combiner_forward(p, ids, dims, &settings, x, &real, &mut h, record)
        });
        // The rest of the replaced layer (`CombineBlock::Layer`).
        let mut block_tape = None;
        if let Some(block) = &self.layout.combiner_block {
            let (out, tape) = ffn_block_forward(
                p,
                block,
                h,
                bsz * m,
                d,
                self.bert.intermediate_size,
                self.bert.layer_norm_eps as f32,
                self.layer_dropout(noise, self.method.combine_layer - 1),
                record,
            );
            h = out;
            block_tape = record.then_some(tape);
        }
        // The remaining layers: every combination token attends to all m.
        let kv = KvIndex::identity(bsz, m);
        let layer_dims = self.layer_dims(bsz, m);
        let mut after = Vec::new();
        for l in self.method.combine_layer..self.bert.num_hidden_layers {
            let layer = self.layout.layers[l]
                .as_ref()
                .expect("layers after the combiner are present");
            let dropout = self.layer_dropout(noise, l);
            let out = layer_forward(p, layer, layer_dims, h, &kv, dropout, None, None, record);
            h = out.out;
            if let Some(tape) = out.tape {
                after.push((l, tape));
            }
        }
        let tape = combiner_tape.map(|combiner| CombineTape {
            dims,
            combiner,
            block: block_tape,
            after,
        });
        (h, assign, tape)
    }

    /// Backward of [`Model::combine`] from the gradient `dh` of its `[batch, m, d]`
    /// output: returns the gradient of its `[batch, n + m, d]` input.
    pub(super) fn combine_backward(
        &self,
        tape: &CombineTape,
        mut dh: Vec<f32>,
        noise: Noise,
        grads: &mut ParamStore,
    ) -> Vec<f32> {
        let dims = tape.dims;
        let (bsz, n, m, d) = (dims.batch, dims.n, dims.m, dims.d);
        let p = &self.params;
        let kv = KvIndex::identity(bsz, m);
        let layer_dims = self.layer_dims(bsz, m);
        for (l, lt) in tape.after.iter().rev() {
            let layer = self.layout.layers[*l].as_ref().expect("layer present");
            let dropout = self.layer_dropout(noise, *l);
            let dprev = layer_backward(p, layer, layer_dims, &kv, dropout, lt, &dh, grads);
            workspace::recycle(std::mem::replace(&mut dh, dprev));
        }
        if let Some(block) = &self.layout.combiner_block {
            let block_tape = tape.block.as_ref().expect("block tape recorded");
            let ds1 = ffn_block_backward(
                p,
                block,
                block_tape,
                &dh,
                bsz * m,
                d,
                self.bert.intermediate_size,
                self.layer_dropout(noise, self.method.combine_layer - 1),
                grads,
            );
            workspace::recycle(std::mem::replace(&mut dh, ds1));
        }
        let ids = self.layout.combiner.as_ref().expect("combiner present");
        let mut dx = vec![0.0f32; bsz * (n + m) * d];
        timed(Kernel::CombinerBackward, || {
            combiner_backward(p, ids, dims, &tape.combiner, &dh, &mut dx, grads)
        });
        dx
    }
}
