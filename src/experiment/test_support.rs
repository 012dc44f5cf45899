//! Helpers of the experiment unit tests.

use super::args::ExperimentArgs;
use super::grid::{Cell, Plan};
use super::result::{CellResult, Recipe, RESULT_FILE};
use crate::train::EpochRecord;
use std::path::{Path, PathBuf};

pub(crate) fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("corefocus-expt-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub(crate) fn args(grid: &str, root: &Path) -> ExperimentArgs {
    ExperimentArgs {
        root: root.to_path_buf(),
        ..ExperimentArgs::new(grid, Path::new("models/all-MiniLM-L6-v2"))
    }
}

pub(crate) fn names(plan: &Plan, dataset: &str, seed: u64) -> Vec<String> {
    plan.cells
        .iter()
        .filter(|c| c.dataset == dataset && c.seed == seed)
        .map(|c| c.name.clone())
        .collect()
}

/// A finished cell as `run_cell` would record it.
pub(crate) fn fake_result(cell: &Cell, grid: &str, accuracy: f64) -> CellResult {
    let curve = (1..=cell.options.epochs)
        .map(|e| EpochRecord {
            epoch: e,
            step: e as u64 * 4,
            train_loss: 1.0 / e as f64,
            val_loss: 1.1 / e as f64,
            val_accuracy: accuracy - 0.1 / e as f64,
            val_macro_f1: accuracy - 0.2 / e as f64,
            lr: 1e-5,
            seconds: 2.0,
            tokens_per_s: 1000.0 * cell.settings.combine_layer as f64,
            grad_norm: 1.0,
            best: true,
            loss_curve: vec![crate::train::LossPoint {
                step: e as u64 * 4,
                loss: 1.0 / e as f64,
                combine: None,
            }],
        })
        .collect();
    CellResult {
        grid: grid.into(),
        dataset: cell.dataset.clone(),
        cell: cell.name.clone(),
        variant: cell.settings.variant,
        settings: cell.settings.clone(),
        seed: cell.seed,
        epochs: cell.options.epochs,
        max_len: cell.options.max_len,
        recipe: Recipe::of(&cell.options),
        test_examples: 100,
        test_loss: 0.5,
        test_accuracy: accuracy,
        test_macro_f1: accuracy - 0.05,
        test_micro_f1: accuracy,
        best_epoch: cell.options.epochs,
        best_val_loss: 0.4,
        train_seconds: 10.0 * cell.seed as f64,
        tokens_per_s: 1000.0 * cell.settings.combine_layer as f64,
        peak_heap_bytes: Some(1 << 20),
        curve,
        created: "2024-01-01T00:00:00Z".into(),
        reused_from: None,
        resumed: false,
        lr_chosen: None,
        threads: None,
    }
}

pub(crate) fn write_result(r: &CellResult, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join(RESULT_FILE),
        serde_json::to_string_pretty(r).unwrap(),
    )
    .unwrap();
}
