//! `corefocus eval`: a checkpoint's loss and metrics on a dataset split.

use super::Classifier;
use crate::data::{load_dataset, ReadOptions};
use crate::kernels::matmul::Precision;
use crate::train::eval::{evaluate, EvalResult};
use crate::train::outputs::report_json;
use crate::train::prepare::{encode_examples, resolve_splits, subsample, subset_seed};
use crate::util::write_atomic;
use anyhow::{bail, ensure, Context, Result};
use std::path::PathBuf;

/// `corefocus eval` options.
#[derive(clap::Args, Clone, Debug)]
pub struct EvalOptions {
    /// A checkpoint written by `corefocus train`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Dataset directory.
    #[arg(long)]
    pub data: PathBuf,
    /// Which split: test, dev or train. Without a dev split, dev and train are the
    /// held-out and remaining parts of the training split, as training made them.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value = "text")]
    pub text_column: String,
    #[arg(long, default_value = "label")]
    pub label_column: String,
    #[arg(long, default_value_t = 64)]
    pub eval_batch: usize,
    /// Evaluate only this many examples (a seeded random subset).
    #[arg(long)]
    pub max_examples: Option<usize>,
    /// Arithmetic of the linear layers' products: f32; bf16 (operands rounded to bf16,
    /// sums in f32; needs Intel AMX or AVX512-BF16); or int8 (weights per column and
    /// activations per row quantised to int8, exact integer sums; needs AVX512-VNNI):
    /// faster, less exact (docs/results.md measures each).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
}

/// `corefocus eval`: evaluates a checkpoint on a split, prints the table, optionally writes
/// the JSON report. Returns the result.
pub fn run_eval(opts: &EvalOptions) -> Result<EvalResult> {
    ensure!(opts.eval_batch >= 1, "--eval-batch must be at least 1");
    let classifier = Classifier::load_with(&opts.checkpoint, None, opts.precision)?;
    let (model, tokenizer, meta) = (&classifier.model, &classifier.tokenizer, &classifier.meta);
    let read = ReadOptions {
        text_column: Some(opts.text_column.clone()),
        label_column: Some(opts.label_column.clone()),
    };
    let ds = load_dataset(&opts.data, &read)
        .with_context(|| format!("cannot load the dataset {}", opts.data.display()))?;
    let seed = meta.train.as_ref().map_or(42, |t| t.seed);
    let splits = resolve_splits(ds, seed);
    let held_out = splits.dev_held_out;
    let (examples, what) = match opts.split.as_str() {
        "test" => (
            splits
                .test
                .with_context(|| format!("{} has no test split", opts.data.display()))?,
            "test",
        ),
        "dev" if held_out => (splits.dev, "dev (held out of the training split)"),
        "dev" => (splits.dev, "dev"),
        "train" if held_out => (splits.train, "train (less the held-out dev part)"),
        "train" => (splits.train, "train"),
        other => bail!("--split {other:?}: expected test, dev or train"),
    };
    if held_out && opts.split != "test" {
        eprintln!(
            "eval: {} has no dev split; as in training, dev is {} and train the rest",
            opts.data.display(),
            splits.dev_source
        );
    }
    // The same subset `train --max-*-examples` used, for equal sizes.
    let examples = subsample(examples, opts.max_examples, subset_seed(seed, &opts.split));
    ensure!(
        !examples.is_empty(),
        "the {} split of {} is empty",
        opts.split,
        opts.data.display()
    );
    let set = encode_examples(tokenizer, &examples, &meta.labels, meta.max_len, what)?;
    let result = evaluate(
        model,
        &set,
        &meta.labels,
        tokenizer.pad_id(),
        opts.eval_batch,
        Some(what),
    );
    println!(
        "{what} split of {} ({} examples), checkpoint {}: loss {:.4}",
        opts.data.display(),
        set.len(),
        opts.checkpoint.display(),
        result.loss
    );
    println!("{}", result.report.to_table());
    if let Some(out) = &opts.out {
        let json = report_json(
            &opts.split,
            &opts.checkpoint,
            &opts.data,
            &result,
            &meta.labels,
        )?;
        write_atomic(out, serde_json::to_string_pretty(&json)?.as_bytes())?;
    }
    Ok(result)
}
