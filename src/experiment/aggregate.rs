//! Pooling the results of a grid over seeds: one [`AggRow`] per dataset, cell and
//! schedule, with the accuracy delta against BERT.

use super::result::CellResult;
use crate::model::{MethodConfig, Variant};
use crate::train::LrSpec;
use std::collections::BTreeMap;

/// Mean and sample standard deviation (n - 1; 0 for a single value).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

pub fn mean_std(xs: &[f64]) -> Stat {
    let n = xs.len();
    if n == 0 {
        return Stat {
            mean: f64::NAN,
            std: f64::NAN,
            n,
        };
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    let std = if n > 1 {
        (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    } else {
        0.0
    };
    Stat { mean, std, n }
}

/// One line of the results table: a cell pooled over its seeds.
#[derive(Clone, Debug)]
pub struct AggRow {
    pub dataset: String,
    pub cell: String,
    pub variant: Variant,
    pub settings: MethodConfig,
    pub schedule: String,
    pub epochs: usize,
    pub max_len: usize,
    pub max_train_examples: Option<usize>,
    pub seeds: Vec<u64>,
    pub accuracy: Stat,
    pub macro_f1: Stat,
    pub micro_f1: Stat,
    /// Mean over the seeds BERT also ran of the accuracy minus BERT's of the same seed,
    /// dataset and schedule (fractions; the table shows points).
    pub delta_accuracy: Option<f64>,
    /// BERT's mean accuracy over those same seeds (the sweep plots' dashed line).
    pub baseline_accuracy: Option<f64>,
    pub train_seconds: Stat,
    pub tokens_per_s: Stat,
    /// Mean over the seeds that recorded it.
    pub peak_heap_bytes: Option<f64>,
    /// The learning rate `lr: auto` chose, per seed (empty for a fixed rate).
    pub lrs_chosen: Vec<f64>,
    /// The candidates it chose from (empty for a fixed rate).
    pub lr_grid: Vec<f64>,
}

/// The baseline cell's name.
pub const BASELINE_CELL: &str = "bert";

fn order_key(order: &[String], x: &str) -> (usize, String) {
    (
        order.iter().position(|o| o == x).unwrap_or(usize::MAX),
        x.to_string(),
    )
}

/// Pools `results` by dataset, cell and schedule; deltas against the `bert` cell of the
/// same dataset, schedule and seed in `results`, else in `extra_baselines` (e.g. table2's
/// BERT for the ablation grids). Rows are ordered by `dataset_order` then `cell_order`
/// (unlisted names after, alphabetically).
pub fn aggregate(
    results: &[CellResult],
    extra_baselines: &[CellResult],
    dataset_order: &[String],
    cell_order: &[String],
) -> Vec<AggRow> {
    type Key = (String, String, String);
    let mut groups: BTreeMap<Key, Vec<&CellResult>> = BTreeMap::new();
    for r in results {
        let key = (r.dataset.clone(), r.cell.clone(), r.recipe.schedule_key());
        groups.entry(key).or_default().push(r);
    }
    // BERT's accuracy per seed on a dataset and schedule: this grid's own, else the extra
    // baselines' (a sweep's seed-1 cells meet table2's seed-1 BERT, not its 3-seed mean).
    let baseline = |dataset: &str, schedule: &str| -> BTreeMap<u64, f64> {
        let pick = |rs: &[CellResult]| -> BTreeMap<u64, f64> {
            rs.iter()
                .filter(|r| {
                    r.cell == BASELINE_CELL
                        && r.dataset == dataset
                        && r.recipe.schedule_key() == schedule
                })
                .map(|r| (r.seed, r.test_accuracy))
                .collect()
        };
        let own = pick(results);
        if own.is_empty() {
            pick(extra_baselines)
        } else {
            own
        }
    };
    // Over the seeds BERT also has: the mean of the cell's accuracy minus BERT's of that
    // seed, and BERT's mean accuracy.
    let paired = |rs: &[&CellResult], bert: &BTreeMap<u64, f64>| -> Option<(f64, f64)> {
        let (deltas, bases): (Vec<f64>, Vec<f64>) = rs
            .iter()
            .filter_map(|r| bert.get(&r.seed).map(|&b| (r.test_accuracy - b, b)))
            .unzip();
        (!deltas.is_empty()).then(|| (mean_std(&deltas).mean, mean_std(&bases).mean))
    };
    let mut rows: Vec<AggRow> = groups
        .into_iter()
        .map(|((dataset, cell, schedule), mut rs)| {
            rs.sort_by_key(|r| r.seed);
            let stat =
                |f: fn(&CellResult) -> f64| mean_std(&rs.iter().map(|r| f(r)).collect::<Vec<_>>());
            let heaps: Vec<f64> = rs
                .iter()
                .filter_map(|r| r.peak_heap_bytes.map(|b| b as f64))
                .collect();
            let accuracy = stat(|r| r.test_accuracy);
            let first = rs[0];
            let vs_bert = paired(&rs, &baseline(&dataset, &schedule));
            AggRow {
                delta_accuracy: vs_bert.map(|(d, _)| d),
                baseline_accuracy: vs_bert.map(|(_, b)| b),
                dataset,
                cell,
                variant: first.variant,
                settings: first.settings.clone(),
                schedule,
                epochs: first.epochs,
                max_len: first.max_len,
                max_train_examples: first.recipe.max_train_examples,
                seeds: rs.iter().map(|r| r.seed).collect(),
                accuracy,
                macro_f1: stat(|r| r.test_macro_f1),
                micro_f1: stat(|r| r.test_micro_f1),
                train_seconds: stat(|r| r.train_seconds),
                tokens_per_s: stat(|r| r.tokens_per_s),
                peak_heap_bytes: (!heaps.is_empty()).then(|| mean_std(&heaps).mean),
                lrs_chosen: rs
                    .iter()
                    .filter(|r| r.recipe.lr == LrSpec::Auto)
                    .filter_map(|r| r.lr_chosen)
                    .collect(),
                lr_grid: first.recipe.lr_grid.clone(),
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        (
            order_key(dataset_order, &a.dataset),
            order_key(cell_order, &a.cell),
            &a.schedule,
        )
            .cmp(&(
                order_key(dataset_order, &b.dataset),
                order_key(cell_order, &b.cell),
                &b.schedule,
            ))
    });
    rows
}
