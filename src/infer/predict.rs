//! `corefocus predict`: one JSON line per input line.

use super::{argmax, is_blank, Classifier, LabelProbabilities, BLANK_TEXT};
use crate::kernels::matmul::Precision;
use anyhow::{bail, ensure, Context, Result};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use std::io::{BufRead, Write};
use std::path::PathBuf;

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
    /// Arithmetic of the linear layers' products: f32; bf16 (operands rounded to bf16,
    /// sums in f32; needs Intel AMX or AVX512-BF16); or int8 (weights per column and
    /// activations per row quantised to int8, exact integer sums; needs AVX512-VNNI):
    /// faster, less exact (docs/results.md measures each).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
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
/// per input line to `out`, in order. An empty or whitespace-only line is an error naming
/// it (the lines of earlier chunks are already written).
pub fn predict_lines(
    classifier: &Classifier,
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
            ensure!(!is_blank(&text), "{source}, line {line_no}: {BLANK_TEXT}");
            texts.push(text);
        }
        if texts.len() >= PREDICT_CHUNK || (n == 0 && !texts.is_empty()) {
            let refs: Vec<&str> = texts.iter().map(|t| t.as_str()).collect();
            let probs = classifier
                .probabilities(&refs, batch_size)
                .with_context(|| format!("cannot tokenize {source}"))?;
            let classes = classifier.labels().len();
            if let Some(row) = super::first_non_finite_row(&probs, classes) {
                let line = line_no + 1 - texts.len() + row;
                bail!(
                    "{source}, line {line}: the model's output is not finite (NaN or \
                     infinity); no prediction is printed for it (is the checkpoint damaged?)"
                );
            }
            for row in probs.chunks(classes) {
                let line = serde_json::to_string(&Prediction {
                    labels: classifier.labels(),
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
    let classifier = Classifier::load_with(&opts.checkpoint, None, opts.precision)?;
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
                &classifier,
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
            count += predict_lines(&classifier, &mut reader, &name, &mut out, opts.eval_batch)?;
        }
    }
    out.flush().context("cannot write the predictions")?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

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
