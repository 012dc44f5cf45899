//! The training loop: epochs of shuffled batches, each one [`train_step`], validation after
//! every epoch, and the hooks the caller saves checkpoints and resume states with. Generic
//! over [`Trainable`], so it is tested with a tiny model.

use super::adamw::{AdamW, AdamWConfig};
use super::eval::{evaluate, EvalResult};
use super::prepare::EncodedSet;
use super::records::{
    EpochProgress, EpochRecord, LoopPosition, LossPoint, StoppedForTest, LOSS_WINDOW,
};
use super::schedule::LinearSchedule;
use super::step::{step_seed, train_step, StepBatch, StepSettings, Trainable};
use crate::kernels::matmul::Precision;
use crate::model::{Batch, CombineStats, Model};
use crate::rng::Rng;
use anyhow::{anyhow, bail, ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::time::Instant;

/// The loop's settings (a subset of [`TrainOptions`](super::TrainOptions)).
#[derive(Clone, Debug)]
pub struct LoopSettings {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// Learning-rate multiplier of the tensors named in `new_params`.
    pub new_lr_scale: f64,
    /// Newly created tensors (a parameter group of their own).
    pub new_params: Vec<String>,
    /// Distillation weight and temperature, for a training set with teacher logits.
    pub distill: Option<(f32, f32)>,
    pub warmup: f64,
    pub adamw: AdamWConfig,
    /// 0 disables clipping.
    pub clip: f64,
    pub seed: u64,
    pub eval_batch: usize,
    /// Show a progress bar (indicatif hides it anyway when stderr is not a terminal).
    pub progress: bool,
    /// The linear layers' arithmetic in the training steps (evaluation stays f32).
    pub precision: Precision,
}

/// Names of `model`'s newly created tensors (see `names::is_created`).
pub fn new_param_names(model: &Model) -> Vec<String> {
    model
        .params
        .tensors
        .iter()
        .filter(|t| crate::model::names::is_created(&t.name, &model.method))
        .map(|t| t.name.clone())
        .collect()
}

/// What the loop reports at the end.
#[derive(Clone, Debug)]
pub struct LoopSummary {
    pub records: Vec<EpochRecord>,
    /// Index into `records` of the best epoch.
    pub best: usize,
    pub steps: u64,
}

/// Trains `model` on `train`, validating on `dev` after every epoch. `on_epoch` is called
/// with the model and the epoch's record (`best` set when its validation loss is the
/// lowest so far; the caller keeps that checkpoint). Stops with an error on a non-finite
/// loss or gradient norm; the model's parameters are then not updated by that step.
pub fn train_loop<M: Trainable>(
    model: &mut M,
    train: &EncodedSet,
    dev: &EncodedSet,
    labels: &[String],
    pad_id: u32,
    settings: &LoopSettings,
    on_epoch: &mut dyn FnMut(&M, &EpochRecord, &EvalResult) -> Result<()>,
) -> Result<LoopSummary> {
    train_loop_with(
        model,
        train,
        dev,
        labels,
        pad_id,
        settings,
        LoopControl::default(),
        on_epoch,
        &mut |_, _, _| Ok(()),
    )
}

/// Resuming, periodic saving and the test-only failure injections of [`train_loop_with`].
#[derive(Default)]
pub struct LoopControl {
    /// Continue from this position with this optimizer state (the model's parameters
    /// must already be the saved ones).
    pub start: Option<(LoopPosition, AdamW)>,
    /// Call `on_save` every this many optimizer steps too (0: only at epoch ends).
    pub save_every: u64,
    /// After optimizer step N: call `on_save`, then stop with a [`StoppedForTest`] error.
    pub stop_after_steps: Option<u64>,
    /// Test only: make the logits of optimizer step N (1-based) NaN.
    pub inject_nan_at_step: Option<u64>,
}

/// [`train_loop`] that can start from a saved position and calls `on_save` with the model,
/// the loop's position and the optimizer after every epoch (after `on_epoch`) and every
/// `control.save_every` steps, so the caller can save a resume state. A run resumed from a
/// position reaches the same parameters as the uninterrupted run: the batches, dropout
/// seeds and learning rates depend only on the settings, the epoch and the step.
#[allow(clippy::too_many_arguments)]
pub fn train_loop_with<M: Trainable>(
    model: &mut M,
    train: &EncodedSet,
    dev: &EncodedSet,
    labels: &[String],
    pad_id: u32,
    settings: &LoopSettings,
    mut control: LoopControl,
    on_epoch: &mut dyn FnMut(&M, &EpochRecord, &EvalResult) -> Result<()>,
    on_save: &mut dyn FnMut(&M, &LoopPosition, &AdamW) -> Result<()>,
) -> Result<LoopSummary> {
    ensure!(!train.is_empty(), "the training set is empty");
    ensure!(!dev.is_empty(), "the validation set is empty");
    assert_eq!(model.num_labels(), labels.len(), "model classes vs labels");
    let classes = labels.len();
    let steps_per_epoch = train.len().div_ceil(settings.batch_size) as u64;
    let total_steps = steps_per_epoch * settings.epochs as u64;
    let schedule = LinearSchedule::new(settings.lr, total_steps, settings.warmup);
    let mut grads = model.params().zeros_like();
    let (mut at, mut opt) = start_position(model, control.start.take(), train.len(), settings)?;

    let log_lines = settings.progress && !std::io::IsTerminal::is_terminal(&std::io::stderr());
    for epoch in at.epoch..settings.epochs {
        let epoch_start = Instant::now();
        let mut order: Vec<usize> = (0..train.len()).collect();
        Rng::new(settings.seed.wrapping_add(epoch as u64)).shuffle(&mut order);
        // Mid-epoch on resume, `at` skips the batches already trained on and keeps their sums.
        let bar = progress_bar(settings, steps_per_epoch, epoch, at.position);
        for chunk in order[at.position..].chunks(settings.batch_size) {
            let step_start = Instant::now();
            let (batch, gold, teacher) = train.batch(chunk, classes, pad_id);
            let input = StepBatch {
                batch: &batch,
                gold: &gold,
                teacher: (!teacher.is_empty()).then_some(teacher.as_slice()),
            };
            let p = &mut at.progress;
            p.lr = schedule.lr_at(at.step);
            let step_settings = StepSettings {
                seed: step_seed(settings.seed, at.step),
                lr: p.lr,
                clip: settings.clip,
                distill: settings.distill,
                poison_logits: control.inject_nan_at_step == Some(at.step + 1),
                precision: settings.precision,
            };
            let result =
                train_step(model, &mut opt, &mut grads, &input, &step_settings).map_err(|bad| {
                    bar.abandon();
                    anyhow!(
                        "{bad} at epoch {}, optimizer step {} of {total_steps}",
                        epoch + 1,
                        at.step + 1
                    )
                })?;
            at.step += 1;
            at.position += chunk.len();
            p.add_step(
                &result,
                chunk.len(),
                &batch,
                step_start.elapsed().as_secs_f64(),
            );
            if at.step.is_multiple_of(LOSS_WINDOW) {
                close_loss_window(p, at.step);
                // Logs (stderr not a terminal) get a plain line every 10 steps, not a bar.
                if log_lines {
                    let (e, n) = (epoch + 1, settings.epochs);
                    eprintln!(
                        "epoch {e}/{n} step {}/{total_steps}: {}",
                        at.step,
                        p.summary()
                    );
                }
            }
            bar.inc(1);
            bar.set_message(p.summary());

            let (save, stop) = control.after_step(at.step, at.position < train.len());
            if save {
                let mut here = at.clone();
                here.progress.elapsed += epoch_start.elapsed().as_secs_f64();
                on_save(model, &here, &opt)?;
            }
            if let Some(stop) = stop {
                bar.abandon();
                return Err(stop);
            }
        }
        bar.finish_and_clear();
        close_loss_window(&mut at.progress, at.step);

        let shown = settings.progress.then_some("validation");
        let val = evaluate(model, dev, labels, pad_id, settings.eval_batch, shown);
        let is_best = at.best.is_none_or(|b| val.loss < at.records[b].val_loss);
        let mut p = std::mem::take(&mut at.progress);
        let mut record = epoch_record(&val, &mut p, epoch, at.step, steps_per_epoch, epoch_start)?;
        record.best = is_best;
        if settings.progress {
            print_epoch(&record, settings.epochs);
        }
        at.records.push(record);
        if is_best {
            at.best = Some(at.records.len() - 1);
        }
        on_epoch(model, at.records.last().expect("just pushed"), &val)?;
        at.epoch = epoch + 1;
        at.position = 0;
        on_save(model, &at, &opt)?;
    }
    Ok(LoopSummary {
        best: at.best.context("no epoch ran")?,
        records: at.records,
        steps: at.step,
    })
}

impl LoopControl {
    /// After optimizer step `step` (`mid_epoch`: not the epoch's last): whether to save a
    /// resume state now, and the error to stop with (`--stop-after-steps`, or a stop
    /// request from a front end, which saves first too).
    fn after_step(&self, step: u64, mid_epoch: bool) -> (bool, Option<anyhow::Error>) {
        let stop: Option<anyhow::Error> = if self.stop_after_steps == Some(step) {
            Some(StoppedForTest { step }.into())
        } else if super::stop::stop_requested() {
            Some(super::stop::StoppedOnRequest { step }.into())
        } else {
            None
        };
        // The epoch-end save follows the epoch's last step anyway.
        let periodic = self.save_every > 0 && step.is_multiple_of(self.save_every) && mid_epoch;
        (stop.is_some() || periodic, stop)
    }
}

/// Where the loop starts: the beginning with a fresh optimizer, or a saved position
/// (checked against this run's settings) with its optimizer; either way with the learning
/// rate scale of the new tensors.
fn start_position<M: Trainable>(
    model: &M,
    start: Option<(LoopPosition, AdamW)>,
    train_len: usize,
    settings: &LoopSettings,
) -> Result<(LoopPosition, AdamW)> {
    let steps_per_epoch = train_len.div_ceil(settings.batch_size) as u64;
    let Some((position, opt)) = start else {
        let fresh = LoopPosition {
            step: 0,
            epoch: 0,
            position: 0,
            progress: EpochProgress::default(),
            records: Vec::new(),
            best: None,
        };
        let mut opt = AdamW::new(model.params(), settings.adamw);
        set_new_lr_scale(&mut opt, settings);
        return Ok((fresh, opt));
    };
    let done_in_epoch = position.position.div_ceil(settings.batch_size) as u64;
    ensure!(
        position.epoch <= settings.epochs
            && position.position <= train_len
            && (position.position == train_len
                || position.position.is_multiple_of(settings.batch_size))
            && position.step == position.epoch as u64 * steps_per_epoch + done_in_epoch
            && opt.step == position.step
            && position.records.len() == position.epoch,
        "the resume state (epoch {}, step {}, position {}, optimizer step {}) does not fit \
         this run ({} training examples, batch size {}, {} epochs)",
        position.epoch + 1,
        position.step,
        position.position,
        opt.step,
        train_len,
        settings.batch_size,
        settings.epochs
    );
    let mut opt = opt;
    set_new_lr_scale(&mut opt, settings);
    Ok((position, opt))
}

/// The tensors named in `settings.new_params` learn at `new_lr_scale` times the rate.
fn set_new_lr_scale(opt: &mut AdamW, settings: &LoopSettings) {
    opt.set_lr_scales(|name| {
        if settings.new_params.iter().any(|n| n == name) {
            settings.new_lr_scale
        } else {
            1.0
        }
    });
}

/// The epoch's progress bar (hidden without `settings.progress`), at `skip` examples in.
fn progress_bar(settings: &LoopSettings, steps: u64, epoch: usize, skip: usize) -> ProgressBar {
    let bar = if settings.progress {
        let bar = ProgressBar::new(steps);
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} (eta {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    bar.set_prefix(format!("epoch {}/{}", epoch + 1, settings.epochs));
    bar.set_position(skip.div_ceil(settings.batch_size) as u64);
    bar
}

/// The record of a finished epoch (0-based `epoch`) from its sums and validation result
/// (`best` is left false for the caller); the loss curve moves out of `p`.
fn epoch_record(
    val: &EvalResult,
    p: &mut EpochProgress,
    epoch: usize,
    step: u64,
    steps_per_epoch: u64,
    epoch_start: Instant,
) -> Result<EpochRecord> {
    if !val.loss.is_finite() {
        bail!(
            "non-finite validation loss ({}) after epoch {}",
            val.loss,
            epoch + 1
        );
    }
    Ok(EpochRecord {
        epoch: epoch + 1,
        step,
        train_loss: p.loss_sum / p.seen.max(1) as f64,
        val_loss: val.loss,
        val_accuracy: val.report.accuracy,
        val_macro_f1: val.report.macro_f1,
        lr: p.lr,
        seconds: p.elapsed + epoch_start.elapsed().as_secs_f64(),
        tokens_per_s: p.tokens as f64 / p.step_seconds.max(1e-9),
        grad_norm: p.norm_sum / steps_per_epoch.max(1) as f64,
        best: false,
        loss_curve: std::mem::take(&mut p.loss_curve),
    })
}

fn print_epoch(record: &EpochRecord, epochs: usize) {
    eprintln!(
        "epoch {}/{}: train loss {:.4}, val loss {:.4}, val acc {:.4}, val macro-F1 {:.4}{} ({:.1}s, {:.0} tok/s)",
        record.epoch,
        epochs,
        record.train_loss,
        record.val_loss,
        record.val_accuracy,
        record.val_macro_f1,
        if record.best { ", best so far" } else { "" },
        record.seconds,
        record.tokens_per_s
    );
}

impl EpochProgress {
    /// `loss 0.4123 lr 2.00e-5 1234 tok/s`: the epoch so far, for the progress bar.
    fn summary(&self) -> String {
        format!(
            "loss {:.4} lr {:.2e} {:.0} tok/s",
            self.loss_sum / self.seen as f64,
            self.lr,
            self.tokens as f64 / self.step_seconds.max(1e-9)
        )
    }

    /// Adds one finished step of `rows` examples to the epoch's and the window's sums.
    fn add_step(
        &mut self,
        result: &super::step::StepResult,
        rows: usize,
        batch: &Batch,
        secs: f64,
    ) {
        let loss = result.loss as f64 * rows as f64;
        self.loss_sum += loss;
        self.seen += rows;
        self.window_loss_sum += loss;
        self.window_seen += rows;
        if let Some(st) = &result.combine {
            self.window_combine.add(st);
            self.window_combine_steps += 1;
        }
        self.norm_sum += result.grad_norm;
        self.tokens += batch.lengths.iter().sum::<usize>();
        self.step_seconds += secs;
    }
}

/// Ends the loss window in progress at `step` (nothing when it is empty).
fn close_loss_window(p: &mut EpochProgress, step: u64) {
    if p.window_seen > 0 {
        p.loss_curve.push(LossPoint {
            step,
            loss: p.window_loss_sum / p.window_seen as f64,
            combine: (p.window_combine_steps > 0)
                .then(|| p.window_combine.mean_of(p.window_combine_steps)),
        });
        p.window_loss_sum = 0.0;
        p.window_seen = 0;
        p.window_combine = CombineStats::default();
        p.window_combine_steps = 0;
    }
}
