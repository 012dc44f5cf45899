//! Evaluation: batched inference over encoded examples (sorted by length so batches pad
//! little), the loss and metrics of a validation or test pass.

use super::prepare::EncodedSet;
use super::step::Trainable;
use crate::kernels::loss::{softmax_cross_entropy, softmax_rows};
use crate::metrics::ClassificationReport;
use crate::model::{Batch, Mode};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

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
    eval_logits_with_progress(model, seqs, pad_id, batch_size, None)
}

/// [`eval_logits`] that shows a progress bar named `what` on stderr once the pass has
/// taken more than a second (a quick pass draws nothing; indicatif hides bars when stderr
/// is not a terminal).
pub fn eval_logits_with_progress<M: Trainable>(
    model: &M,
    seqs: &[Vec<u32>],
    pad_id: u32,
    batch_size: usize,
    what: Option<&str>,
) -> Vec<f32> {
    let classes = model.num_labels();
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(seqs[i].len()));
    let mut out = vec![0.0f32; seqs.len() * classes];
    let bar = ProgressBar::with_draw_target(Some(seqs.len() as u64), ProgressDrawTarget::hidden());
    if let Some(what) = what {
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} examples (eta {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(what.to_string());
    }
    let start = std::time::Instant::now();
    for chunk in order.chunks(batch_size.max(1)) {
        if what.is_some() && bar.is_hidden() && start.elapsed().as_secs_f64() > 1.0 {
            bar.set_draw_target(ProgressDrawTarget::stderr());
        }
        bar.inc(chunk.len() as u64);
        let batch_seqs: Vec<&[u32]> = chunk.iter().map(|&i| seqs[i].as_slice()).collect();
        let batch = Batch::from_sequences(&batch_seqs, pad_id);
        let (logits, _) = model.logits(&batch, Mode::Eval, false);
        for (row, &i) in chunk.iter().enumerate() {
            out[i * classes..(i + 1) * classes]
                .copy_from_slice(&logits[row * classes..(row + 1) * classes]);
        }
    }
    bar.finish_and_clear();
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

/// Loss, predictions and metrics of `model` on `set`; `what` names the pass in a progress
/// bar (shown when it takes more than a second).
pub fn evaluate<M: Trainable>(
    model: &M,
    set: &EncodedSet,
    labels: &[String],
    pad_id: u32,
    batch_size: usize,
    what: Option<&str>,
) -> EvalResult {
    let classes = model.num_labels();
    let n = set.len();
    let logits = eval_logits_with_progress(model, &set.ids, pad_id, batch_size, what);
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
        let r = evaluate(&model, &set, &labels, 0, 2, None);
        assert_eq!(r.predictions, vec![0, 0, 1]);
        assert_eq!(r.report.accuracy, 1.0);
        // Hand-computed mean cross-entropy of the three rows.
        let ce = |l: [f64; 3], y: usize| l.iter().map(|x| x.exp()).sum::<f64>().ln() - l[y];
        let expected = (ce([5., 1., 5.], 0) + ce([10., 4., 1.], 0) + ce([0., 3., 0.], 1)) / 3.0;
        assert!((r.loss - expected).abs() < 1e-5, "{} vs {expected}", r.loss);
    }
}
