//! The classification head: dropout on the pooled representation, then a linear layer
//! to the label logits.

use super::classifier::Model;
use super::encoder::lin_back;
use super::noise::Noise;
use super::ops;
use super::params::ParamStore;
use crate::kernels::dropout::{dropout_backward, dropout_forward};

impl Model {
    /// `[batch, num_labels]` logits of the `[batch, d]` pooled rows; also returns the
    /// classifier's input (the pooled rows after dropout) for the backward pass.
    pub(super) fn head(&self, pooled: &[f32], noise: Noise) -> (Vec<f32>, Vec<f32>) {
        let d = self.bert.hidden_size;
        let bsz = pooled.len() / d;
        let mut head_in = pooled.to_vec();
        if let Some(s) = noise.head() {
            dropout_forward(&mut head_in, self.method.classifier_dropout, s, 0);
        }
        let mut logits = vec![0.0f32; bsz * self.num_labels];
        let (p, c, labels) = (&self.params, self.layout.classifier, self.num_labels);
        ops::linear(p, c, &head_in, bsz, d, labels, &mut logits);
        (logits, head_in)
    }

    /// Backward of [`Model::head`]: the gradient of the pooled rows from that of the
    /// logits; accumulates the classifier's gradients.
    pub(super) fn head_backward(
        &self,
        head_in: &[f32],
        dlogits: &[f32],
        noise: Noise,
        grads: &mut ParamStore,
    ) -> Vec<f32> {
        let d = self.bert.hidden_size;
        let bsz = head_in.len() / d;
        let mut dpooled = vec![0.0f32; bsz * d];
        let (p, c, labels) = (&self.params, self.layout.classifier, self.num_labels);
        let dpooled_out = Some(dpooled.as_mut_slice());
        lin_back(
            p,
            c,
            head_in,
            bsz,
            d,
            labels,
            dlogits,
            dpooled_out,
            false,
            grads,
        );
        if let Some(s) = noise.head() {
            dropout_backward(&mut dpooled, self.method.classifier_dropout, s, 0);
        }
        dpooled
    }
}
