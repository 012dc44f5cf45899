//! Evaluation and prediction: batched inference (sorted by length so batches pad little),
//! the `eval` and `predict` commands.

use super::api::{
    load_dataset, softmax_cross_entropy, softmax_rows, ClassificationReport, ReadOptions,
};
use super::checkpoint::{load_checkpoint, CheckpointMeta};
use super::trainer::{
    encode_examples, report_json, resolve_splits, subsample, subset_seed, EncodedSet, Trainable,
};
use crate::model::{Batch, Mode};
use crate::util::write_atomic;
use anyhow::{bail, ensure, Context, Result};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use std::io::{BufRead, Write};
use std::path::PathBuf;

/// Loss and metrics of one evaluation.
#[derive(Clone, Debug)]
pub struct EvalResult {
    /// Mean cross-entropy.
    pub loss: f64,
    pub report: ClassificationReport,
    /// Predicted class of each example, in input order.
    pub predictions: Vec<usize>,
}

/// Logits `[n, classes]` of `seqs` in input order, in evaluation mode. Batches are formed
/// from the sequences sorted by length (longest first), so little compute goes to padding.
pub fn eval_logits<M: Trainable>(
    model: &M,
    seqs: &[Vec<u32>],
    pad_id: u32,
    batch_size: usize,
) -> Vec<f32> {
    let classes = model.num_labels();
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(seqs[i].len()));
    let mut out = vec![0.0f32; seqs.len() * classes];
    for chunk in order.chunks(batch_size.max(1)) {
        let batch_seqs: Vec<&[u32]> = chunk.iter().map(|&i| seqs[i].as_slice()).collect();
        let batch = Batch::from_sequences(&batch_seqs, pad_id);
        let (logits, _) = model.logits(&batch, Mode::Eval, false);
        for (row, &i) in chunk.iter().enumerate() {
            out[i * classes..(i + 1) * classes]
                .copy_from_slice(&logits[row * classes..(row + 1) * classes]);
        }
    }
    out
}

/// Index of the largest value (the first on ties).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best
}

/// Loss, predictions and metrics of `model` on `set`.
pub fn evaluate<M: Trainable>(
    model: &M,
    set: &EncodedSet,
    labels: &[String],
    pad_id: u32,
    batch_size: usize,
) -> EvalResult {
    let classes = model.num_labels();
    let n = set.len();
    let logits = eval_logits(model, &set.ids, pad_id, batch_size);
    let mut probs = vec![0.0f32; n * classes];
    let loss = if n == 0 {
        0.0
    } else {
        softmax_cross_entropy(&logits, n, classes, &set.labels, &mut probs, None) as f64
    };
    let predictions: Vec<usize> = logits.chunks(classes).map(argmax).collect();
    let report = ClassificationReport::compute(&set.labels, &predictions, labels);
    EvalResult {
        loss,
        report,
        predictions,
    }
}

/// Class probabilities `[n, classes]` of `seqs`, in input order.
pub fn predict_probs<M: Trainable>(
    model: &M,
    seqs: &[Vec<u32>],
    pad_id: u32,
    batch_size: usize,
) -> Vec<f32> {
    let classes = model.num_labels();
    let logits = eval_logits(model, seqs, pad_id, batch_size);
    let mut probs = vec![0.0f32; logits.len()];
    softmax_rows(&logits, seqs.len(), classes, &mut probs);
    probs
}

/// Class probabilities `[n, classes]` of raw `texts` (truncated to `max_len` tokens), in
/// input order: the inference path of `predict` and `serve`.
pub fn classify_texts<M: Trainable>(
    model: &M,
    tokenizer: &super::api::TextTokenizer,
    texts: &[&str],
    max_len: usize,
    batch_size: usize,
) -> Result<Vec<f32>> {
    let ids = tokenizer.encode_batch(texts, max_len)?;
    Ok(predict_probs(model, &ids, tokenizer.pad_id(), batch_size))
}

// ------------------------------------------------------------------------------ eval

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
}

/// `corefocus eval`: evaluates a checkpoint on a split, prints the table, optionally writes
/// the JSON report. Returns the result.
pub fn run_eval(opts: &EvalOptions) -> Result<EvalResult> {
    ensure!(opts.eval_batch >= 1, "--eval-batch must be at least 1");
    let (model, tokenizer, meta) = load_checkpoint(&opts.checkpoint)?;
    let read = ReadOptions {
        text_column: Some(opts.text_column.clone()),
        label_column: Some(opts.label_column.clone()),
    };
    let ds = load_dataset(&opts.data, &read)
        .with_context(|| format!("cannot load the dataset {}", opts.data.display()))?;
    let seed = meta.train.as_ref().map_or(42, |t| t.seed);
    let splits = resolve_splits(ds, seed);
    let examples = match opts.split.as_str() {
        "test" => splits
            .test
            .with_context(|| format!("{} has no test split", opts.data.display()))?,
        "dev" => splits.dev,
        "train" => splits.train,
        other => bail!("--split {other:?}: expected test, dev or train"),
    };
    // The same subset `train --max-*-examples` used, for equal sizes.
    let examples = subsample(examples, opts.max_examples, subset_seed(seed, &opts.split));
    ensure!(
        !examples.is_empty(),
        "the {} split of {} is empty",
        opts.split,
        opts.data.display()
    );
    let set = encode_examples(
        &tokenizer,
        &examples,
        &meta.labels,
        meta.max_len,
        &opts.split,
    )?;
    let result = evaluate(
        &model,
        &set,
        &meta.labels,
        tokenizer.pad_id(),
        opts.eval_batch,
    );
    println!(
        "{} split of {} ({} examples), checkpoint {}: loss {:.4}",
        opts.split,
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

// --------------------------------------------------------------------------- predict

/// `corefocus predict` options.
#[derive(clap::Args, Clone, Debug)]
pub struct PredictOptions {
    /// A checkpoint written by `corefocus train`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Input files, one text per line; `-` or none reads standard input.
    pub inputs: Vec<PathBuf>,
    #[arg(long, default_value_t = 64)]
    pub eval_batch: usize,
}

/// Serialises as a JSON object `{label: probability, ...}` in the checkpoint's label order
/// (shared by `predict` and `serve` so both print the same shape).
pub(crate) struct LabelProbabilities<'a>(pub &'a [String], pub &'a [f32]);

impl Serialize for LabelProbabilities<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (label, p) in self.0.iter().zip(self.1) {
            map.serialize_entry(label, p)?;
        }
        map.end()
    }
}

/// One output line of `predict`: the label and every label's probability, in the
/// checkpoint's label order.
struct Prediction<'a> {
    labels: &'a [String],
    probs: &'a [f32],
}

impl Serialize for Prediction<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry("label", &self.labels[argmax(self.probs)])?;
        map.serialize_entry(
            "probabilities",
            &LabelProbabilities(self.labels, self.probs),
        )?;
        map.end()
    }
}

/// Lines of texts read per inference round (bounded memory on large inputs).
const PREDICT_CHUNK: usize = 1024;

/// Classifies every line of `input` (named `source` in errors) and writes one JSON line
/// per input line to `out`, in order.
pub fn predict_lines<M: Trainable>(
    model: &M,
    tokenizer: &super::api::TextTokenizer,
    meta: &CheckpointMeta,
    input: &mut dyn BufRead,
    source: &str,
    out: &mut dyn Write,
    batch_size: usize,
) -> Result<usize> {
    let mut count = 0usize;
    let mut line_no = 0usize;
    let mut texts: Vec<String> = Vec::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = input
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("cannot read {source}"))?;
        if n > 0 {
            line_no += 1;
            while matches!(buf.last(), Some(b'\n' | b'\r')) {
                buf.pop();
            }
            let text = String::from_utf8(std::mem::take(&mut buf))
                .map_err(|_| anyhow::anyhow!("{source}, line {line_no}: not valid UTF-8"))?;
            texts.push(text);
        }
        if texts.len() >= PREDICT_CHUNK || (n == 0 && !texts.is_empty()) {
            let refs: Vec<&str> = texts.iter().map(|t| t.as_str()).collect();
            let probs = classify_texts(model, tokenizer, &refs, meta.max_len, batch_size)
                .with_context(|| format!("cannot tokenize {source}"))?;
            for row in probs.chunks(meta.labels.len()) {
                let line = serde_json::to_string(&Prediction {
                    labels: &meta.labels,
                    probs: row,
                })?;
                writeln!(out, "{line}").context("cannot write the predictions")?;
            }
            count += texts.len();
            texts.clear();
        }
        if n == 0 {
            break;
        }
    }
    Ok(count)
}

/// `corefocus predict`: JSON Lines on standard output.
pub fn run_predict(opts: &PredictOptions) -> Result<usize> {
    ensure!(opts.eval_batch >= 1, "--eval-batch must be at least 1");
    let (model, tokenizer, meta) = load_checkpoint(&opts.checkpoint)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut count = 0;
    let stdin_only = [PathBuf::from("-")];
    let inputs: &[PathBuf] = if opts.inputs.is_empty() {
        &stdin_only
    } else {
        &opts.inputs
    };
    for path in inputs {
        if path.as_os_str() == "-" {
            let stdin = std::io::stdin();
            let mut lock = stdin.lock();
            count += predict_lines(
                &model,
                &tokenizer,
                &meta,
                &mut lock,
                "standard input",
                &mut out,
                opts.eval_batch,
            )?;
        } else {
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            let mut reader = std::io::BufReader::new(file);
            let name = path.display().to_string();
            count += predict_lines(
                &model,
                &tokenizer,
                &meta,
                &mut reader,
                &name,
                &mut out,
                opts.eval_batch,
            )?;
        }
    }
    out.flush().context("cannot write the predictions")?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ParamStore;

    /// logits[b] = (sum of token ids, number of tokens, first token), independent of the
    /// rest of the batch and of padding.
    struct SumModel {
        params: ParamStore,
    }

    impl Trainable for SumModel {
        type Tape = ();
        fn params(&self) -> &ParamStore {
            &self.params
        }
        fn params_mut(&mut self) -> &mut ParamStore {
            &mut self.params
        }
        fn num_labels(&self) -> usize {
            3
        }
        fn logits(&self, batch: &Batch, mode: Mode, record: bool) -> (Vec<f32>, Option<()>) {
            assert!(matches!(mode, Mode::Eval) && !record);
            let mut out = Vec::new();
            for b in 0..batch.batch {
                let row = &batch.ids[b * batch.seq..b * batch.seq + batch.lengths[b]];
                out.push(row.iter().sum::<u32>() as f32);
                out.push(row.len() as f32);
                out.push(row[0] as f32);
            }
            (out, None)
        }
        fn backprop(&self, _: &(), _: &[f32], _: &mut ParamStore) {
            unreachable!()
        }
    }

    #[test]
    fn length_sorted_batches_come_back_in_input_order() {
        let model = SumModel {
            params: ParamStore::new(),
        };
        let seqs: Vec<Vec<u32>> = vec![
            vec![5],
            vec![1, 2, 3, 4],
            vec![7, 7],
            vec![9, 1, 1],
            vec![2],
        ];
        let expected: Vec<f32> = seqs
            .iter()
            .flat_map(|s| [s.iter().sum::<u32>() as f32, s.len() as f32, s[0] as f32])
            .collect();
        for batch in [1, 2, 3, 10] {
            assert_eq!(
                eval_logits(&model, &seqs, 0, batch),
                expected,
                "batch {batch}"
            );
        }
        let probs = predict_probs(&model, &seqs, 0, 2);
        for row in probs.chunks(3) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn evaluate_reports_loss_and_predictions() {
        let model = SumModel {
            params: ParamStore::new(),
        };
        let set = EncodedSet {
            ids: vec![vec![5], vec![1, 2, 3, 4], vec![0, 0, 0]],
            labels: vec![0, 0, 1],
            ..EncodedSet::default()
        };
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let r = evaluate(&model, &set, &labels, 0, 2);
        assert_eq!(r.predictions, vec![0, 0, 1]);
        assert_eq!(r.report.accuracy, 1.0);
        // Hand-computed mean cross-entropy of the three rows.
        let ce = |l: [f64; 3], y: usize| l.iter().map(|x| x.exp()).sum::<f64>().ln() - l[y];
        let expected = (ce([5., 1., 5.], 0) + ce([10., 4., 1.], 0) + ce([0., 3., 0.], 1)) / 3.0;
        assert!((r.loss - expected).abs() < 1e-5, "{} vs {expected}", r.loss);
    }

    #[test]
    fn prediction_json_keeps_label_order() {
        let labels: Vec<String> = ["pos", "neg"].iter().map(|s| s.to_string()).collect();
        let line = serde_json::to_string(&Prediction {
            labels: &labels,
            probs: &[0.25, 0.75],
        })
        .unwrap();
        assert_eq!(
            line,
            r#"{"label":"neg","probabilities":{"pos":0.25,"neg":0.75}}"#
        );
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
    }
}
