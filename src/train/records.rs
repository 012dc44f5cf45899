//! What a training run records as it goes: one [`EpochRecord`] per epoch (a line of
//! `metrics.jsonl`), the loss curve's points, and the loop position a resume state saves.
//! Plain data, below the loop, the resume state and the curves that read them.

use crate::model::CombineStats;
use serde::{Deserialize, Serialize};

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    /// Optimizer steps taken so far.
    pub step: u64,
    /// Mean training loss over the epoch's examples.
    pub train_loss: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub val_macro_f1: f64,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    /// Wall time of the epoch, validation included.
    pub seconds: f64,
    /// Real (non-padding) training tokens per second of training-step time.
    pub tokens_per_s: f64,
    /// Mean pre-clipping gradient norm over the epoch's steps.
    pub grad_norm: f64,
    /// Whether this epoch has the lowest validation loss so far (its checkpoint is kept).
    pub best: bool,
    /// Mean training loss per example over every `LOSS_WINDOW` optimizer steps of the
    /// epoch (windows end at multiples of it; the epoch's last may be shorter). Absent in
    /// records written before it was.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loss_curve: Vec<LossPoint>,
}

/// Optimizer steps per point of `EpochRecord::loss_curve` (and per log line).
pub const LOSS_WINDOW: u64 = 10;

/// The error `--stop-after-steps` ends training with, after saving the resume state.
#[derive(Debug)]
pub struct StoppedForTest {
    pub step: u64,
}

impl std::fmt::Display for StoppedForTest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stopped after optimizer step {} as asked by --stop-after-steps, with the resume \
             state saved (continue with --resume)",
            self.step
        )
    }
}

impl std::error::Error for StoppedForTest {}

/// The error `--stop-after-trials` ends `--lr auto` with, after saving its trials.
#[derive(Debug)]
pub struct StoppedAfterTrial {
    pub trial: usize,
}

impl std::fmt::Display for StoppedAfterTrial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stopped after learning-rate trial {} as asked by --stop-after-trials, with the \
             finished trials saved (continue with --resume)",
            self.trial
        )
    }
}

impl std::error::Error for StoppedAfterTrial {}

/// Whether `err` (or an error it wraps) is a [`StoppedForTest`] or a [`StoppedAfterTrial`].
pub fn is_stopped_for_test(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|e| e.is::<StoppedForTest>() || e.is::<StoppedAfterTrial>())
}

/// Running sums of the epoch in progress, so that its record comes out as if the run had
/// not been interrupted.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EpochProgress {
    /// Sum over the epoch's examples so far of their batch's mean loss.
    pub loss_sum: f64,
    /// Examples trained on this epoch.
    pub seen: usize,
    /// Real (non-padding) tokens trained on this epoch.
    pub tokens: usize,
    /// Seconds spent in training steps this epoch.
    pub step_seconds: f64,
    /// Sum of the pre-clipping gradient norms of this epoch's steps.
    pub norm_sum: f64,
    /// Learning rate of the last step.
    pub lr: f64,
    /// Wall seconds of the epoch before an interruption (0 when not resumed).
    pub elapsed: f64,
    /// The epoch's training-loss curve so far (see `EpochRecord::loss_curve`), and the
    /// sums of the window in progress. (Default: a state saved before they existed.)
    #[serde(default)]
    pub loss_curve: Vec<LossPoint>,
    #[serde(default)]
    pub window_loss_sum: f64,
    #[serde(default)]
    pub window_seen: usize,
    /// Sums of the combining diagnostics over the window's steps (combining models).
    #[serde(default)]
    pub window_combine: CombineStats,
    #[serde(default)]
    pub window_combine_steps: u64,
}

/// Mean training loss per example over a window of optimizer steps ending at `step`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct LossPoint {
    pub step: u64,
    pub loss: f64,
    /// Mean combining diagnostics over the window (combining models only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub combine: Option<CombineStats>,
}

/// Where the training loop stands between two optimizer steps.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LoopPosition {
    /// Optimizer steps taken.
    pub step: u64,
    /// 0-based epoch in progress; equal to the number of epochs when training is done.
    pub epoch: usize,
    /// Examples of this epoch's shuffled order already trained on.
    pub position: usize,
    pub progress: EpochProgress,
    /// One record per finished epoch.
    pub records: Vec<EpochRecord>,
    /// Index into `records` of the epoch with the lowest validation loss.
    pub best: Option<usize>,
}
