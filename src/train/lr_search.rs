//! `--lr auto`: short trial runs over `--lr-grid`, scored on validation loss.

use super::options::TrainOptions;
use super::prepare::{subsample, EncodedSet};
use super::records::StoppedAfterTrial;
use super::resume::{data_fingerprint, differing_options};
use super::train_loop::{new_param_names, train_loop};
use crate::model::Model;
use crate::util::write_atomic;
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

/// What `--lr auto` did (`<out>/lr_search.json`), rewritten after every trial so that an
/// interrupted search continues where it stopped (`--resume`; the experiment runner).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LrSearch {
    /// None while the search is unfinished.
    pub chosen: Option<f64>,
    /// The finished trials, in the order of `grid`.
    pub trials: Vec<LrTrial>,
    pub trial_train_examples: usize,
    pub trial_dev_examples: usize,
    pub trial_steps: u64,
    pub grid: Vec<f64>,
    /// The run's options and [`data_fingerprint`] of its encoded training and validation
    /// data: the trials are reused only by a run with the same (absent in files written
    /// before they were recorded; such a search is reused only with a resume state, which
    /// carries both).
    #[serde(default)]
    pub options: Option<TrainOptions>,
    #[serde(default)]
    pub data_fingerprint: Option<String>,
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

    /// Whether a run with `opts` on data with `fingerprint` may reuse these trials: same
    /// options (control flags and the grid aside) and same data, or, for a file that
    /// recorded neither, the same grid.
    pub fn reusable_by(&self, opts: &TrainOptions, fingerprint: &str) -> bool {
        match (&self.options, &self.data_fingerprint) {
            (Some(options), Some(data)) => {
                data == fingerprint
                    && differing_search_options(options, opts).is_ok_and(|d| d.is_empty())
            }
            _ => self.grid == opts.lr_grid,
        }
    }

    /// Whether this is the finished search over the grid `opts` asks for (a search over
    /// another grid lends its trials, and the rest are trained).
    pub fn is_complete_for(&self, opts: &TrainOptions) -> bool {
        self.chosen.is_some() && self.grid == opts.lr_grid
    }
}

/// The `--flags` that keep a search run with `saved` options from lending its trials to a
/// run with `now`: those that differ (control flags aside) except the grid and `--out`. A
/// trial depends on its own rate and the run's options, not on the other candidates or
/// where the run writes, so a grid extended with more rates (say after every cell chose
/// the largest), also under another root, takes over the trials of those it shares.
pub fn differing_search_options(saved: &TrainOptions, now: &TrainOptions) -> Result<Vec<String>> {
    let saved = TrainOptions {
        lr_grid: now.lr_grid.clone(),
        out: now.out.clone(),
        ..saved.clone()
    };
    differing_options(&saved, now)
}

/// `<out>/lr_search.json` when it is there and readable.
pub fn read_lr_search(out: &Path) -> Option<LrSearch> {
    let text = std::fs::read_to_string(out.join(LR_SEARCH_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_lr_search(out: &Path, search: &LrSearch) -> Result<()> {
    write_atomic(
        &out.join(LR_SEARCH_FILE),
        serde_json::to_string_pretty(search)?.as_bytes(),
    )
}

/// `--lr auto`: for each candidate of `--lr-grid`, a fresh model trains one short run (a
/// seeded subset of the training split worth about 1/8 of the run's steps, at least 40
/// steps, with the run's warm-up and decay compressed into it) and is scored on up to
/// `LR_TRIAL_DEV` validation examples; the lowest validation loss wins (ties: the
/// smaller rate). The test split is never looked at. After each trial the search so far is
/// written to `<out>/lr_search.json`; the trials of `earlier` (an interrupted search of the
/// same run) are taken over instead of being trained again.
pub fn search_lr(
    opts: &TrainOptions,
    earlier: Option<LrSearch>,
    build: &dyn Fn() -> Result<Model>,
    (train, dev): (&EncodedSet, &EncodedSet),
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
    let mut search = LrSearch {
        chosen: None,
        trials: Vec::new(),
        trial_train_examples: trial_train.len(),
        trial_dev_examples: trial_dev.len(),
        trial_steps,
        grid: opts.lr_grid.clone(),
        options: Some(opts.clone()),
        data_fingerprint: Some(data_fingerprint(&[train, dev])),
    };
    let earlier = earlier.map(|e| e.trials).unwrap_or_default();
    for (k, &lr) in opts.lr_grid.iter().enumerate() {
        if let Some(trial) = earlier.iter().find(|t| t.lr == lr).cloned() {
            eprintln!(
                "corefocus train: --lr auto, trial {}/{} at lr {lr:e}: val loss {:.4}, taken from \
                 the earlier search in {}",
                k + 1,
                opts.lr_grid.len(),
                trial.val_loss,
                opts.out.join(LR_SEARCH_FILE).display()
            );
            search.trials.push(trial);
            continue;
        }
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
            Err(e) if super::stop::is_stopped_on_request(&e) => {
                return Err(e.context(format!(
                    "--lr auto stopped in trial {}; the finished trials are saved in {} \
                     (continue with --resume)",
                    k + 1,
                    opts.out.join(LR_SEARCH_FILE).display()
                )))
            }
            Err(e) => {
                eprintln!("corefocus train: --lr auto, lr {lr:e} diverged: {e:#}");
                (f64::INFINITY, 0.0)
            }
        };
        search.trials.push(LrTrial {
            lr,
            val_loss,
            val_accuracy,
            seconds: start.elapsed().as_secs_f64(),
        });
        write_lr_search(&opts.out, &search)?;
        if opts.stop_after_trials == Some(search.trials.len() as u64) {
            return Err(StoppedAfterTrial {
                trial: search.trials.len(),
            }
            .into());
        }
    }
    let best = search
        .trials
        .iter()
        .filter(|t| t.val_loss.is_finite())
        .min_by(|a, b| {
            a.val_loss
                .total_cmp(&b.val_loss)
                .then(a.lr.total_cmp(&b.lr))
        })
        .context("--lr auto: every trial diverged (non-finite loss); pass a smaller --lr-grid")?;
    search.chosen = Some(best.lr);
    write_lr_search(&opts.out, &search)?;
    Ok(search)
}
