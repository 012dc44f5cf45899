//! Data preparation for training and evaluation: the train / validation / test splits
//! (a dev split held out of train when the dataset has none), seeded subsets, token ids,
//! and the checks of the model and data made before any work starts.

use crate::data::tokenize::TextTokenizer;
use crate::data::{label_ids, stratified_split, DatasetSplits, Example};
use crate::model::{Batch, BertConfig};
use crate::rng::Rng;
use anyhow::{ensure, Context, Result};
use std::path::Path;

/// Fraction of the training split held out for validation when a dataset has no dev split.
pub const DEV_FRACTION: f64 = 0.2;

/// Train / validation / test examples as training uses them.
#[derive(Clone, Debug)]
pub struct ResolvedSplits {
    pub train: Vec<Example>,
    pub dev: Vec<Example>,
    pub test: Option<Vec<Example>>,
    pub labels: Vec<String>,
    /// Where the validation examples come from, for logs and reports.
    pub dev_source: String,
    /// Whether `dev` was held out of the training split (the dataset has no dev split).
    pub dev_held_out: bool,
}

/// The dataset's dev split, or (when it has none) a stratified [`DEV_FRACTION`] of its
/// training split chosen by `seed`, the rest staying for training. `eval` uses the same
/// function with the checkpoint's seed, so it sees the same split.
pub fn resolve_splits(ds: DatasetSplits, seed: u64) -> ResolvedSplits {
    let dev_held_out = ds.dev.is_none();
    let (train, dev, dev_source) = match ds.dev {
        Some(dev) => (ds.train, dev, "the dataset's dev split".to_string()),
        None => {
            let (train, held_out) = stratified_split(ds.train, DEV_FRACTION, seed);
            let source = format!(
                "a stratified {:.0}% of the training split (seed {seed})",
                DEV_FRACTION * 100.0
            );
            (train, held_out, source)
        }
    };
    ResolvedSplits {
        train,
        dev,
        test: ds.test,
        labels: ds.labels,
        dev_source,
        dev_held_out,
    }
}

/// Seed of the quick-run subset of split `split` ("train", "dev" or "test"); `train` and
/// `eval` share it so equal sizes select the same examples.
pub fn subset_seed(seed: u64, split: &str) -> u64 {
    match split {
        "dev" => seed ^ 1,
        "test" => seed ^ 2,
        _ => seed,
    }
}

/// At most `max` examples: a random subset chosen by `seed`, kept in their original order.
pub fn subsample<T>(items: Vec<T>, max: Option<usize>, seed: u64) -> Vec<T> {
    let Some(max) = max else { return items };
    if items.len() <= max {
        return items;
    }
    let mut order: Vec<usize> = (0..items.len()).collect();
    Rng::new(seed).shuffle(&mut order);
    let mut keep = vec![false; items.len()];
    order[..max].iter().for_each(|&i| keep[i] = true);
    items
        .into_iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|(x, _)| x)
        .collect()
}

/// Token ids and class indices of a split.
#[derive(Clone, Debug, Default)]
pub struct EncodedSet {
    pub ids: Vec<Vec<u32>>,
    pub labels: Vec<usize>,
    /// `[len, classes]` logits of a teacher model (`--distill-from`); empty: none.
    pub teacher: Vec<f32>,
}

impl EncodedSet {
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The examples at `indices` as one padded batch, with their classes and (when the set
    /// has them) their teacher logits (`[rows, classes]`; empty otherwise).
    pub fn batch(
        &self,
        indices: &[usize],
        classes: usize,
        pad_id: u32,
    ) -> (Batch, Vec<usize>, Vec<f32>) {
        let seqs: Vec<&[u32]> = indices.iter().map(|&i| self.ids[i].as_slice()).collect();
        let gold = indices.iter().map(|&i| self.labels[i]).collect();
        let teacher = if self.teacher.is_empty() {
            Vec::new()
        } else {
            indices
                .iter()
                .flat_map(|&i| self.teacher[i * classes..(i + 1) * classes].to_vec())
                .collect()
        };
        (Batch::from_sequences(&seqs, pad_id), gold, teacher)
    }
}

/// Tokenizes (in parallel, inside the tokenizer) and maps labels to class indices.
pub fn encode_examples(
    tokenizer: &TextTokenizer,
    examples: &[Example],
    labels: &[String],
    max_len: usize,
    what: &str,
) -> Result<EncodedSet> {
    let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
    let ids = tokenizer
        .encode_batch(&texts, max_len)
        .with_context(|| format!("cannot tokenize the {what} examples"))?;
    let labels = label_ids(examples, labels, what)?;
    Ok(EncodedSet {
        ids,
        labels,
        teacher: Vec::new(),
    })
}

pub fn check_max_len(max_len: usize, bert: &BertConfig, config_path: &Path) -> Result<()> {
    ensure!(
        max_len <= bert.max_position_embeddings,
        "--max-len {max_len} exceeds the model's {} position embeddings (max_position_embeddings in {})",
        bert.max_position_embeddings,
        config_path.display()
    );
    Ok(())
}

/// A class without training examples cannot be learned. The dataset loader rejects a
/// labels.txt class missing from the training split; a `--max-train-examples` subset that
/// misses a class was asked for, so it only earns a warning.
pub fn warn_missing_classes(train: &[Example], labels: &[String]) {
    let present: std::collections::HashSet<&str> = train.iter().map(|e| e.label.as_str()).collect();
    let missing: Vec<&str> = labels
        .iter()
        .map(String::as_str)
        .filter(|l| !present.contains(l))
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "warning: no training example of class(es) {} in the training subset; the model \
             cannot learn them",
            missing.join(", ")
        );
    }
}
