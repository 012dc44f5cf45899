//! What a finished cell records: `result.json` ([`CellResult`]) with the [`Recipe`] it
//! was trained with, and reading the results of a grid.

use crate::kernels::matmul::Precision;
use crate::model::{MethodConfig, Variant};
use crate::train::TrainOptions;
use crate::train::{EpochRecord, LrSpec, MethodArgs};
use crate::util::field_differences;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Name of each cell's result file.
pub const RESULT_FILE: &str = "result.json";

/// Everything that must match for a finished cell to count as the requested one.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Recipe {
    /// The model directory's name (e.g. all-MiniLM-L6-v2).
    pub model: String,
    pub lr: LrSpec,
    /// Candidates of `lr: auto` (empty for a fixed rate, and in results recorded before it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lr_grid: Vec<f64>,
    /// Learning-rate multiplier of newly created tensors (1 in results recorded before it).
    #[serde(default = "one")]
    pub new_lr_scale: f64,
    pub warmup: f64,
    pub batch_size: usize,
    pub epochs: usize,
    pub max_len: usize,
    pub max_train_examples: Option<usize>,
    pub max_eval_examples: Option<usize>,
    pub seed: u64,
    pub method: MethodArgs,
    /// The linear layers' training arithmetic (f32 in results recorded before it).
    #[serde(default)]
    pub precision: Precision,
}

impl Recipe {
    pub(crate) fn of(opts: &TrainOptions) -> Recipe {
        Recipe {
            model: opts
                .model
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| opts.model.display().to_string()),
            lr: opts.lr,
            lr_grid: match opts.lr {
                LrSpec::Auto => opts.lr_grid.clone(),
                LrSpec::Fixed(_) => Vec::new(),
            },
            new_lr_scale: opts.new_lr_scale,
            warmup: opts.warmup,
            batch_size: opts.batch_size,
            epochs: opts.epochs,
            max_len: opts.max_len,
            max_train_examples: opts.max_train_examples,
            max_eval_examples: opts.max_eval_examples,
            seed: opts.seed,
            method: opts.method.clone(),
            precision: opts.precision,
        }
    }

    /// The recipe without seed and method: results are only compared (seeds pooled, BERT
    /// deltas taken) within one schedule key.
    pub fn schedule_key(&self) -> String {
        let opt = |n: Option<usize>| n.map_or("all".to_string(), |n| n.to_string());
        format!(
            "model {}, lr {}{}, warm-up {}, batch {}, epochs {}, max len {}, train {}, eval {}",
            self.model,
            self.lr,
            match self.lr {
                LrSpec::Auto => format!(
                    " of {}, new tensors x{}",
                    self.lr_grid
                        .iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join("/"),
                    self.new_lr_scale
                ),
                LrSpec::Fixed(_) if self.new_lr_scale != 1.0 => {
                    format!(", new tensors x{}", self.new_lr_scale)
                }
                LrSpec::Fixed(_) => String::new(),
            },
            self.warmup,
            self.batch_size,
            self.epochs,
            self.max_len,
            opt(self.max_train_examples),
            opt(self.max_eval_examples)
        ) + &match self.precision {
            Precision::F32 => String::new(),
            p => format!(", {} training", p.name()),
        }
    }
}

fn one() -> f64 {
    1.0
}

/// `result.json` of one cell.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CellResult {
    pub grid: String,
    pub dataset: String,
    pub cell: String,
    pub variant: Variant,
    /// The resolved method settings.
    pub settings: MethodConfig,
    pub seed: u64,
    pub epochs: usize,
    pub max_len: usize,
    pub recipe: Recipe,
    pub test_examples: usize,
    pub test_loss: f64,
    pub test_accuracy: f64,
    pub test_macro_f1: f64,
    pub test_micro_f1: f64,
    /// Epoch of the kept (lowest validation loss) checkpoint.
    pub best_epoch: usize,
    pub best_val_loss: f64,
    /// Wall time of the whole run (loading, training, validation, test).
    pub train_seconds: f64,
    /// Mean over epochs of real training tokens per second of training-step time.
    pub tokens_per_s: f64,
    /// Peak heap bytes during the run; absent where the counting allocator is not
    /// installed (library use outside the binary).
    pub peak_heap_bytes: Option<u64>,
    /// metrics.jsonl of the run.
    pub curve: Vec<EpochRecord>,
    pub created: String,
    /// `<grid>/<dataset>/<cell>-seed<k>` of the identical finished cell (same dataset,
    /// seed, schedule and resolved method settings) whose run this result copies, when
    /// the cell was not trained itself (see `reuse_twin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_from: Option<String>,
    /// The run continued an interrupted attempt from its saved state: `train_seconds`
    /// counts the last attempt only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resumed: bool,
    /// Peak learning rate trained with (what `lr: auto` chose); absent in results
    /// recorded before it was (their recipe's fixed rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_chosen: Option<f64>,
    /// Worker threads the run used (`RAYON_NUM_THREADS`); absent in results recorded
    /// before it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
}

/// The fields in which `recorded` and `requested` differ, as `name: X recorded, Y
/// requested` joined by "; " (nested fields by dotted names, unset ones as "unset"): what
/// a user needs from a mismatch, where printing both in full buries it.
pub fn differences(recorded: &impl Serialize, requested: &impl Serialize) -> String {
    let shown = |v: Option<String>| v.unwrap_or_else(|| "unset".to_string());
    match field_differences(recorded, requested, &[]) {
        Ok(diffs) if !diffs.is_empty() => diffs
            .into_iter()
            .map(|d| {
                format!(
                    "{}: {} recorded, {} requested",
                    d.path,
                    shown(d.left),
                    shown(d.right)
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        _ => "no field differs".to_string(),
    }
}

/// Reads a `result.json`.
pub fn read_result(path: &Path) -> Result<CellResult> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: not a corefocus experiment result", path.display()))
}

/// Every `result.json` under `grid_dir` (`<dataset>/<cell>-seed<k>/result.json`), sorted
/// by path; hidden directories (temporaries of checkpoint saves) are skipped.
pub fn load_results(grid_dir: &Path) -> Result<Vec<CellResult>> {
    let mut paths = Vec::new();
    let visible_dirs = |dir: &Path| -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(out);
        };
        for e in entries {
            let e = e.with_context(|| format!("cannot read {}", dir.display()))?;
            let hidden = e.file_name().to_string_lossy().starts_with('.');
            if !hidden && e.path().is_dir() {
                out.push(e.path());
            }
        }
        Ok(out)
    };
    for dataset in visible_dirs(grid_dir)? {
        for cell in visible_dirs(&dataset)? {
            let p = cell.join(RESULT_FILE);
            if p.is_file() {
                paths.push(p);
            }
        }
    }
    paths.sort();
    paths.iter().map(|p| read_result(p)).collect()
}
