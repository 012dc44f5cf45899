//! A backbone checkpoint with a variant and a fresh head, for timing corefocus against
//! other engines from one process (the Python bindings' `TimedModel`, which
//! `scripts/bench-peers.py` runs interleaved with PyTorch and ONNX Runtime): the same
//! `Model::forward` and [`train_step`] that `corefocus bench` times.

use crate::kernels::matmul::Precision;
use crate::model::{checkpoint, Batch, Mode, Model, ParamStore};
use crate::train::adamw::{AdamW, AdamWConfig};
use crate::train::step::{train_step, StepBatch, StepSettings};
use anyhow::{ensure, Result};
use std::path::Path;

pub struct TimedModel {
    model: Model,
    opt: AdamW,
    grads: ParamStore,
    steps: u64,
    precision: Precision,
}

impl TimedModel {
    /// The HF-format BERT checkpoint in `dir` as `variant` (`bench --variant`'s grammar,
    /// e.g. `bert`, `pfc@5`) with a `num_labels`-class head; its forward passes multiply
    /// at `precision` (so do training steps, f32 or bf16; the first drops the packed
    /// weights, and later forward passes run unpacked in f32).
    pub fn load(
        dir: &Path,
        variant: &str,
        num_labels: usize,
        precision: Precision,
    ) -> Result<TimedModel> {
        ensure!(num_labels >= 2, "num_labels must be at least 2");
        precision.check_available()?;
        let (bert, params) = checkpoint::load_hf_checkpoint(dir)?;
        let (_, method) = super::run::parse_variant(variant, bert.num_hidden_layers, 0.9)?;
        let mut model = Model::from_bert_params(bert, params, method, num_labels, 42)?;
        // As `Classifier::load`: forward passes use packed weights until a training
        // step changes them (AdamW drops the packed copies).
        model.pack_for_inference(precision);
        let opt = AdamW::new(&model.params, AdamWConfig::default());
        let grads = model.params.zeros_like();
        Ok(TimedModel {
            model,
            opt,
            grads,
            steps: 0,
            precision,
        })
    }

    fn batch(&self, seqs: &[Vec<u32>]) -> Result<Batch> {
        ensure!(!seqs.is_empty(), "an empty batch");
        let max = self.model.bert.max_position_embeddings;
        let vocab = self.model.bert.vocab_size as u32;
        for (i, s) in seqs.iter().enumerate() {
            ensure!(
                (1..=max).contains(&s.len()),
                "sequence {i}: {} tokens (1..={max} allowed)",
                s.len()
            );
            if let Some(t) = s.iter().find(|&&t| t >= vocab) {
                anyhow::bail!("sequence {i}: token id {t} outside the vocabulary ({vocab})");
            }
        }
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        Ok(Batch::from_sequences(&refs, 0))
    }

    /// Evaluation-mode logits `[batch, num_labels]` of token-id sequences (padded with
    /// id 0 to the longest).
    pub fn forward(&self, seqs: &[Vec<u32>]) -> Result<Vec<f32>> {
        let batch = self.batch(seqs)?;
        Ok(self.model.forward(&batch, Mode::Eval, false).0.logits)
    }

    /// One AdamW training step (forward, backward, clipping, update; lr 1e-5, as
    /// `bench`) on `seqs` with classes `labels`, its linear layers at the model's precision
    /// (f32 or bf16, as `train --precision`); returns the loss.
    pub fn train_step(&mut self, seqs: &[Vec<u32>], labels: &[usize]) -> Result<f32> {
        ensure!(
            self.precision != Precision::Int8,
            "int8 times forward passes only (training is f32 or bf16)"
        );
        ensure!(
            labels.len() == seqs.len(),
            "{} labels for {} sequences",
            labels.len(),
            seqs.len()
        );
        let classes = self.model.num_labels;
        ensure!(
            labels.iter().all(|&l| l < classes),
            "a label outside 0..{classes}"
        );
        let batch = self.batch(seqs)?;
        self.steps += 1;
        let input = StepBatch {
            batch: &batch,
            gold: labels,
            teacher: None,
        };
        let settings = StepSettings {
            seed: self.steps,
            lr: 1e-5,
            clip: 1.0,
            distill: None,
            poison_logits: false,
            precision: self.precision,
        };
        let r = train_step(
            &mut self.model,
            &mut self.opt,
            &mut self.grads,
            &input,
            &settings,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(r.loss)
    }
}
