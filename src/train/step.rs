//! One optimizer step, the unit both training and `bench` time: forward with a tape, the
//! loss (cross-entropy, optionally mixed with a teacher's soft targets), backward, gradient
//! clipping and the AdamW update. [`Trainable`] is what the step needs from a classifier,
//! so the loop can be tested with a tiny model.

use super::adamw::{clip_scale, global_grad_norm, AdamW};
use crate::kernels::loss::{distillation_loss, softmax_cross_entropy};
use crate::kernels::matmul::Precision;
use crate::model::{Batch, CombineStats, Mode, Model, ParamStore};
use crate::rng::mix64;

/// What the training loop needs from a classifier.
pub trait Trainable {
    /// What `backprop` needs from the forward pass.
    type Tape;
    fn params(&self) -> &ParamStore;
    fn params_mut(&mut self) -> &mut ParamStore;
    fn num_labels(&self) -> usize;
    /// Logits `[batch, num_labels]`, and the tape when `record`.
    fn logits(&self, batch: &Batch, mode: Mode, record: bool) -> (Vec<f32>, Option<Self::Tape>);
    /// Accumulates parameter gradients of the loss whose logit gradient is `dlogits`.
    fn backprop(&self, tape: &Self::Tape, dlogits: &[f32], grads: &mut ParamStore);
    /// Diagnostics of the combining module for a step (its tape and gradients).
    fn combine_stats(&self, _tape: &Self::Tape, _grads: &ParamStore) -> Option<CombineStats> {
        None
    }
}

impl Trainable for Model {
    type Tape = crate::model::Tape;
    fn params(&self) -> &ParamStore {
        &self.params
    }
    fn params_mut(&mut self) -> &mut ParamStore {
        &mut self.params
    }
    fn num_labels(&self) -> usize {
        self.num_labels
    }
    fn logits(&self, batch: &Batch, mode: Mode, record: bool) -> (Vec<f32>, Option<Self::Tape>) {
        let (out, tape) = self.forward(batch, mode, record);
        (out.logits, tape)
    }
    fn backprop(&self, tape: &Self::Tape, dlogits: &[f32], grads: &mut ParamStore) {
        self.backward(tape, dlogits, grads)
    }
    fn combine_stats(&self, tape: &Self::Tape, grads: &ParamStore) -> Option<CombineStats> {
        Model::combine_stats(self, tape, grads)
    }
}

/// The dropout / Gumbel seed of optimizer step `step`.
pub fn step_seed(seed: u64, step: u64) -> u64 {
    mix64(seed ^ mix64(step.wrapping_add(0xD1B5_4A32_D192_ED03)))
}

/// One batch with its gold classes and, when distilling, the teacher's logits
/// (`[rows, classes]`).
pub struct StepBatch<'a> {
    pub batch: &'a Batch,
    pub gold: &'a [usize],
    pub teacher: Option<&'a [f32]>,
}

/// The settings of one step.
#[derive(Clone, Copy, Debug)]
pub struct StepSettings {
    /// Seed of the step's dropout and Gumbel noise ([`step_seed`]).
    pub seed: u64,
    pub lr: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    pub clip: f64,
    /// Distillation weight and temperature (used when the batch has teacher logits).
    pub distill: Option<(f32, f32)>,
    /// Test only: make the logits NaN (exercises the non-finite checks).
    pub poison_logits: bool,
    /// What the linear layers' products (forward, input and weight gradients) multiply
    /// at; attention, LayerNorm, the optimizer and the weights stay f32.
    pub precision: Precision,
}

/// What one step measured.
#[derive(Clone, Debug)]
pub struct StepResult {
    /// The batch's mean loss.
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Combining diagnostics (combining models only).
    pub combine: Option<CombineStats>,
}

/// A step that produced a non-finite loss or gradient norm; the parameters were not updated.
#[derive(Clone, Copy, Debug)]
pub enum NonFinite {
    Loss(f32),
    GradNorm(f64),
}

impl std::fmt::Display for NonFinite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NonFinite::Loss(loss) => write!(f, "non-finite training loss ({loss})"),
            NonFinite::GradNorm(norm) => write!(f, "non-finite gradient norm ({norm})"),
        }
    }
}

/// Runs one optimizer step of `model` on `input`; `grads` is scratch space shaped like the
/// parameters.
pub fn train_step<M: Trainable>(
    model: &mut M,
    opt: &mut AdamW,
    grads: &mut ParamStore,
    input: &StepBatch,
    settings: &StepSettings,
) -> Result<StepResult, NonFinite> {
    let rows = input.gold.len();
    let classes = model.num_labels();
    let mode = Mode::Train {
        seed: settings.seed,
    };
    if settings.precision != Precision::F32 {
        // Rounded from this step's weights; the update below drops them again.
        model
            .params_mut()
            .pack_linear_weights_as(settings.precision);
    }
    let (mut logits, tape) = model.logits(input.batch, mode, true);
    let tape = tape.expect("a forward pass with record=true returns a tape");
    if settings.poison_logits {
        logits[0] = f32::NAN;
    }
    let mut probs = vec![0.0f32; rows * classes];
    let mut dlogits = vec![0.0f32; rows * classes];
    let ce = softmax_cross_entropy(
        &logits,
        rows,
        classes,
        input.gold,
        &mut probs,
        Some(&mut dlogits),
    );
    let loss = match (settings.distill, input.teacher) {
        (Some((weight, temperature)), Some(teacher)) => {
            dlogits.iter_mut().for_each(|g| *g *= 1.0 - weight);
            let kl = distillation_loss(
                &logits,
                teacher,
                rows,
                classes,
                temperature,
                weight,
                &mut dlogits,
            );
            (1.0 - weight) * ce + weight * kl
        }
        _ => ce,
    };
    if !loss.is_finite() {
        return Err(NonFinite::Loss(loss));
    }
    grads.fill_zero();
    model.backprop(&tape, &dlogits, grads);
    let combine = model.combine_stats(&tape, grads);
    drop(tape);
    crate::profile::timed(crate::profile::Kernel::Optimizer, || {
        let grad_norm = global_grad_norm(grads);
        if !grad_norm.is_finite() {
            return Err(NonFinite::GradNorm(grad_norm));
        }
        // Clipping as `clip_grad_norm`, applied inside the update.
        let grad_scale = if settings.clip > 0.0 {
            clip_scale(grad_norm, settings.clip)
        } else {
            1.0
        };
        opt.step_with_grad_scale(model.params_mut(), grads, settings.lr, grad_scale);
        Ok(StepResult {
            loss,
            grad_norm,
            combine,
        })
    })
}
