//! `--lr auto`: short trial runs over `--lr-grid`, scored on validation loss.

use super::options::TrainOptions;
use super::prepare::{subsample, EncodedSet};
use super::train_loop::{new_param_names, train_loop};
use crate::model::Model;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// `<out>/lr_search.json`: the trials of `--lr auto` and the rate chosen.
pub const LR_SEARCH_FILE: &str = "lr_search.json";

/// Validation examples a trial of `--lr auto` is scored on (a seeded subset).
const LR_TRIAL_DEV: usize = 1000;

/// One trial of `--lr auto`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LrTrial {
    pub lr: f64,
    /// Infinite when the trial diverged (a non-finite loss).
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub seconds: f64,
}

/// What `--lr auto` did (`<out>/lr_search.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LrSearch {
    pub chosen: f64,
    pub trials: Vec<LrTrial>,
    pub trial_train_examples: usize,
    pub trial_dev_examples: usize,
    pub trial_steps: u64,
    /// The options the search ran with (a resumed run reuses it only when they match).
    pub grid: Vec<f64>,
}

impl LrSearch {
    /// `lr 2e-5: val loss 0.41, lr 5e-5: ...`.
    pub fn summary(&self) -> String {
        self.trials
            .iter()
            .map(|t| format!("lr {:e}: val loss {:.4}", t.lr, t.val_loss))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub fn read_lr_search(out: &Path, opts: &TrainOptions) -> Option<LrSearch> {
    let text = std::fs::read_to_string(out.join(LR_SEARCH_FILE)).ok()?;
    let search: LrSearch = serde_json::from_str(&text).ok()?;
    (search.grid == opts.lr_grid).then_some(search)
}

/// `--lr auto`: for each candidate of `--lr-grid`, a fresh model trains one short run (a
/// seeded subset of the training split worth about 1/8 of the run's steps, at least 40
/// steps, with the run's warm-up and decay compressed into it) and is scored on up to
/// [`LR_TRIAL_DEV`] validation examples; the lowest validation loss wins (ties: the
/// smaller rate). The test split is never looked at.
pub fn search_lr(
    opts: &TrainOptions,
    build: &dyn Fn() -> Result<Model>,
    train: &EncodedSet,
    dev: &EncodedSet,
    labels: &[String],
    pad_id: u32,
) -> Result<LrSearch> {
    let budget = (train.len() * opts.epochs).div_ceil(8);
    let n_train = budget.max(40 * opts.batch_size).min(train.len());
    let pick = |set: &EncodedSet, n: usize, seed: u64| -> EncodedSet {
        let idx = subsample((0..set.len()).collect(), Some(n), seed);
        let classes = set.teacher.len() / set.len().max(1);
        EncodedSet {
            ids: idx.iter().map(|&i| set.ids[i].clone()).collect(),
            labels: idx.iter().map(|&i| set.labels[i]).collect(),
            teacher: idx
                .iter()
                .flat_map(|&i| set.teacher[i * classes..(i + 1) * classes].iter().copied())
                .collect(),
        }
    };
    let trial_train = pick(train, n_train, opts.seed ^ 0x17A1);
    let trial_dev = pick(dev, LR_TRIAL_DEV, opts.seed ^ 0x17A2);
    let trial_steps = trial_train.len().div_ceil(opts.batch_size) as u64;
    let mut trials = Vec::new();
    for (k, &lr) in opts.lr_grid.iter().enumerate() {
        eprintln!(
            "corefocus train: --lr auto, trial {}/{} at lr {lr:e} ({} training examples, {trial_steps} steps, {} validation examples)",
            k + 1,
            opts.lr_grid.len(),
            trial_train.len(),
            trial_dev.len()
        );
        let start = Instant::now();
        let mut model = build()?;
        let mut settings = opts.loop_settings(lr);
        settings.epochs = 1;
        settings.new_params = new_param_names(&model);
        let outcome = train_loop(
            &mut model,
            &trial_train,
            &trial_dev,
            labels,
            pad_id,
            &settings,
            &mut |_, _, _| Ok(()),
        );
        let (val_loss, val_accuracy) = match outcome {
            Ok(summary) => {
                let r = &summary.records[summary.best];
                (r.val_loss, r.val_accuracy)
            }
            Err(e) if super::stop::is_stopped_on_request(&e) => return Err(e),
            Err(e) => {
                eprintln!("corefocus train: --lr auto, lr {lr:e} diverged: {e:#}");
                (f64::INFINITY, 0.0)
            }
        };
        trials.push(LrTrial {
            lr,
            val_loss,
            val_accuracy,
            seconds: start.elapsed().as_secs_f64(),
        });
    }
    let best = trials
        .iter()
        .filter(|t| t.val_loss.is_finite())
        .min_by(|a, b| {
            a.val_loss
                .total_cmp(&b.val_loss)
                .then(a.lr.total_cmp(&b.lr))
        })
        .context("--lr auto: every trial diverged (non-finite loss); pass a smaller --lr-grid")?;
    Ok(LrSearch {
        chosen: best.lr,
        trials: trials.clone(),
        trial_train_examples: trial_train.len(),
        trial_dev_examples: trial_dev.len(),
        trial_steps,
        grid: opts.lr_grid.clone(),
    })
}
