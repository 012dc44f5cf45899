//! Inference: a fine-tuned checkpoint loaded once ([`Classifier`]), texts classified in
//! length-sorted batches. `predict`, `eval`, `serve` and `explain` all go through here, so
//! they agree to the bit; none of them depends on the training loop.

pub mod evaluate;
pub mod predict;

use crate::data::tokenize::TextTokenizer;
use crate::kernels::matmul::Precision;
use crate::model::Model;
use crate::train::checkpoint::{load_checkpoint, CheckpointMeta};
use crate::train::eval::predict_probs;
use crate::train::Trainable;
use anyhow::{ensure, Result};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use std::path::Path;

pub use crate::train::eval::argmax;
pub use evaluate::{run_eval, EvalOptions};
pub use predict::{run_predict, PredictOptions};

/// Whether `text` is empty or whitespace-only. `predict`, `serve` and `explain` refuse such
/// a text with an error naming it (no label means anything for it, and the model would
/// still give one confidently), as the dataset readers refuse it in training data (D06).
pub fn is_blank(text: &str) -> bool {
    text.trim().is_empty()
}

/// The reason given for a blank text, after what names it.
pub const BLANK_TEXT: &str =
    "empty or whitespace-only text (corefocus does not classify empty input)";

/// A loaded checkpoint, ready to classify.
pub struct Classifier {
    pub model: Model,
    pub tokenizer: TextTokenizer,
    pub meta: CheckpointMeta,
    /// Truncation length used for every text.
    pub max_len: usize,
}

impl Classifier {
    /// Loads a `corefocus train` checkpoint; `max_len` overrides its truncation length.
    pub fn load(checkpoint: &Path, max_len: Option<usize>) -> Result<Classifier> {
        Self::load_with(checkpoint, max_len, Precision::F32)
    }

    /// [`Self::load`] with the linear layers' products at `precision` (`--precision`).
    pub fn load_with(
        checkpoint: &Path,
        max_len: Option<usize>,
        precision: Precision,
    ) -> Result<Classifier> {
        precision.check_available()?;
        let (mut model, tokenizer, meta) = load_checkpoint(checkpoint)?;
        // Inference only from here: linear weights packed once, not on every call.
        model.pack_for_inference(precision);
        let max_len = max_len.unwrap_or(meta.max_len);
        ensure!(
            max_len >= 2,
            "--max-len {max_len} must be at least 2 ([CLS] and [SEP])"
        );
        ensure!(
            max_len <= model.bert.max_position_embeddings,
            "--max-len {max_len} exceeds the model's {} position embeddings",
            model.bert.max_position_embeddings
        );
        Ok(Classifier {
            model,
            tokenizer,
            meta,
            max_len,
        })
    }

    pub fn labels(&self) -> &[String] {
        &self.meta.labels
    }

    /// Class probabilities `[n, classes]` of `texts` (truncated to `max_len` tokens), in
    /// input order.
    pub fn probabilities(&self, texts: &[&str], batch_size: usize) -> Result<Vec<f32>> {
        classify_texts(
            &self.model,
            &self.tokenizer,
            texts,
            self.max_len,
            batch_size,
        )
    }
}

/// Index of the first row of `probs` (`[n, classes]`) holding a NaN or infinity: damaged
/// or overflowing weights; such a row must not be reported as a prediction.
pub fn first_non_finite_row(probs: &[f32], classes: usize) -> Option<usize> {
    probs
        .chunks(classes.max(1))
        .position(|row| row.iter().any(|p| !p.is_finite()))
}

/// Class probabilities `[n, classes]` of raw `texts` (truncated to `max_len` tokens), in
/// input order: the inference path of `predict` and `serve`.
pub fn classify_texts<M: Trainable>(
    model: &M,
    tokenizer: &TextTokenizer,
    texts: &[&str],
    max_len: usize,
    batch_size: usize,
) -> Result<Vec<f32>> {
    let ids = tokenizer.encode_batch(texts, max_len)?;
    Ok(predict_probs(model, &ids, tokenizer.pad_id(), batch_size))
}

/// Serialises as a JSON object `{label: probability, ...}` in the checkpoint's label order
/// (shared by `predict` and `serve` so both print the same shape).
pub struct LabelProbabilities<'a>(pub &'a [String], pub &'a [f32]);

impl Serialize for LabelProbabilities<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (label, p) in self.0.iter().zip(self.1) {
            map.serialize_entry(label, p)?;
        }
        map.end()
    }
}
