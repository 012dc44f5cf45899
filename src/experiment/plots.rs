//! The grid's plots: training curves per dataset and seed, and the swept setting of the
//! ablation grids.

use super::aggregate::AggRow;
use super::grid::Sweep;
use super::result::CellResult;
use crate::model::{MethodConfig, Variant};
use crate::plot::{write_svg, Panel, Series};
use anyhow::Result;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The x value a sweep varies, of settings `m`.
fn sweep_x(sweep: Sweep, m: &MethodConfig) -> Option<f64> {
    match sweep {
        Sweep::None => None,
        Sweep::KeepRatio => Some(m.keep_ratio as f64),
        Sweep::CombineLayer => Some(m.combine_layer as f64),
        Sweep::CombineTokens => Some(m.combine_tokens as f64),
    }
}

/// The variant a sweep grid varies.
fn sweep_variant(sweep: Sweep) -> Option<Variant> {
    match sweep {
        Sweep::None => None,
        Sweep::KeepRatio => Some(Variant::Pf),
        Sweep::CombineLayer | Sweep::CombineTokens => Some(Variant::Pfc),
    }
}

/// Series of `rows` of the swept variant, one per dataset (and schedule, when a dataset has
/// several), `value` against the swept setting; plus, when `with_baseline`, BERT's
/// accuracy as a flat line over the same range.
fn sweep_series(
    rows: &[AggRow],
    sweep: Sweep,
    value: fn(&AggRow) -> f64,
    with_baseline: bool,
) -> Vec<Series> {
    let Some(variant) = sweep_variant(sweep) else {
        return Vec::new();
    };
    // (dataset, schedule) -> (x, value, BERT's accuracy) per row.
    type Points = Vec<(f64, f64, Option<f64>)>;
    let mut groups: BTreeMap<(String, String), Points> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.variant == variant) {
        if let Some(x) = sweep_x(sweep, &r.settings) {
            groups
                .entry((r.dataset.clone(), r.schedule.clone()))
                .or_default()
                .push((x, value(r), r.baseline_accuracy));
        }
    }
    let schedules_of = |d: &str| groups.keys().filter(|(gd, _)| gd == d).count();
    let mut series = Vec::new();
    // One colour per group in every panel of the figure, its baseline dashed alike.
    for (color, ((dataset, schedule), mut pts)) in groups.clone().into_iter().enumerate() {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let label = if schedules_of(&dataset) > 1 {
            format!("{dataset} ({schedule})")
        } else {
            dataset.clone()
        };
        if with_baseline {
            // (the same for every row whose seeds are the same)
            if let Some(base) = pts.iter().find_map(|p| p.2).map(|b| b * 100.0) {
                let (lo, hi) = (pts[0].0, pts[pts.len() - 1].0);
                series.push(
                    Series::new(format!("{label}: bert"), vec![(lo, base), (hi, base)])
                        .with_color(color)
                        .dashed(),
                );
            }
        }
        series.push(
            Series::new(label, pts.iter().map(|&(x, y, _)| (x, y)).collect()).with_color(color),
        );
    }
    series
}

/// Writes the grid's plots into `grid_dir`; returns the files written.
///  - `curves-<dataset>-seed<k>.svg`: validation accuracy per epoch and the training
///    loss every `LOSS_WINDOW` steps, one line per cell;
///  - table4: `accuracy_vs_keep_ratio.svg`; table5: `combine_layer.svg` (accuracy and
///    training speed); table6: `accuracy_vs_combine_tokens.svg`.
pub fn write_plots(
    grid_dir: &Path,
    sweep: Sweep,
    results: &[CellResult],
    rows: &[AggRow],
) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let mut overlays: BTreeMap<(String, u64), Vec<&CellResult>> = BTreeMap::new();
    for r in results {
        overlays
            .entry((r.dataset.clone(), r.seed))
            .or_default()
            .push(r);
    }
    let cell_order: Vec<&str> = rows.iter().map(|r| r.cell.as_str()).collect();
    for ((dataset, seed), mut cells) in overlays {
        cells.sort_by_key(|r| cell_order.iter().position(|c| *c == r.cell));
        let series = cells
            .iter()
            .map(|r| {
                Series::new(
                    r.cell.clone(),
                    r.curve
                        .iter()
                        .map(|e| (e.epoch as f64, e.val_accuracy * 100.0))
                        .collect(),
                )
            })
            .collect();
        let mut panels = vec![Panel {
            title: "validation accuracy".into(),
            x_label: "epoch".into(),
            y_label: "accuracy %".into(),
            series,
            integer_x: true,
        }];
        // Cells recorded before the step curve existed have none: left out of this panel.
        let losses: Vec<Series> = cells
            .iter()
            .enumerate()
            .map(|(i, r)| {
                Series::new(
                    r.cell.clone(),
                    crate::train::curves::step_loss_curve(&r.curve),
                )
                .with_color(i)
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        if !losses.is_empty() {
            panels.push(Panel {
                title: format!(
                    "training loss, mean over {} steps",
                    crate::train::LOSS_WINDOW
                ),
                x_label: "optimizer step".into(),
                y_label: "cross-entropy".into(),
                series: losses,
                integer_x: true,
            });
        }
        let path = grid_dir.join(format!("curves-{dataset}-seed{seed}.svg"));
        write_svg(
            &path,
            &format!("{dataset}, seed {seed}: training curves"),
            &panels,
        )?;
        written.push(path);
    }

    let accuracy = |r: &AggRow| r.accuracy.mean * 100.0;
    let (file, title, x_label, integer_x) = match sweep {
        Sweep::None => return Ok(written),
        Sweep::KeepRatio => (
            "accuracy_vs_keep_ratio.svg",
            "PF: test accuracy vs preservation ratio p",
            "preservation ratio p",
            false,
        ),
        Sweep::CombineLayer => (
            "combine_layer.svg",
            "PFC: combining layer",
            "combining layer",
            true,
        ),
        Sweep::CombineTokens => (
            "accuracy_vs_combine_tokens.svg",
            "PFC: test accuracy vs combination tokens m",
            "combination tokens m",
            true,
        ),
    };
    let mut panels = vec![Panel {
        title: "test accuracy (mean over seeds)".into(),
        x_label: x_label.into(),
        y_label: "accuracy %".into(),
        series: sweep_series(rows, sweep, accuracy, true),
        integer_x,
    }];
    if sweep == Sweep::CombineLayer {
        panels.push(Panel {
            title: "training speed (mean over seeds)".into(),
            x_label: x_label.into(),
            y_label: "training tokens/s".into(),
            series: sweep_series(rows, sweep, |r| r.tokens_per_s.mean, false),
            integer_x,
        });
    }
    let path = grid_dir.join(file);
    write_svg(&path, title, &panels)?;
    written.push(path);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::aggregate::aggregate;
    use crate::experiment::args::ExperimentArgs;
    use crate::experiment::grid::plan;
    use crate::experiment::test_support::{args, fake_result, scratch};
    use crate::model::BertConfig;

    #[test]
    fn sweep_plots_show_the_swept_setting() {
        let bert = BertConfig::minilm_l6();
        let dir = scratch("sweeps");
        for (grid, file, expect) in [
            (
                "table4",
                "accuracy_vs_keep_ratio.svg",
                vec!["preservation ratio p", "bbc-news"],
            ),
            (
                "table5",
                "combine_layer.svg",
                vec![
                    "combining layer",
                    "training speed (mean over seeds)",
                    "training tokens/s",
                ],
            ),
            (
                "table6",
                "accuracy_vs_combine_tokens.svg",
                vec!["combination tokens m", "sst2", "bbc-news"],
            ),
        ] {
            let p = plan(
                &ExperimentArgs {
                    seeds: 2,
                    ..args(grid, &dir)
                },
                &bert,
            )
            .unwrap();
            let results: Vec<CellResult> = p
                .cells
                .iter()
                .enumerate()
                .map(|(i, c)| fake_result(c, grid, 0.9 + 0.001 * i as f64))
                .collect();
            // BERT of table2, same dataset and schedule: drawn as a flat line.
            let base_plan = plan(
                &ExperimentArgs {
                    seeds: 1,
                    ..args("table2", &dir)
                },
                &bert,
            )
            .unwrap();
            let base: Vec<CellResult> = base_plan
                .cells
                .iter()
                .filter(|c| c.name == "bert")
                .map(|c| fake_result(c, "table2", 0.85))
                .collect();
            let order: Vec<String> = p.cells.iter().map(|c| c.name.clone()).collect();
            let rows = aggregate(&results, &base, &p.grid.datasets, &order);
            let written = write_plots(&p.grid_dir, p.grid.sweep, &results, &rows).unwrap();
            assert!(written.contains(&p.grid_dir.join(file)), "{written:?}");
            assert_eq!(written.len(), p.grid.datasets.len() * 2 + 1);
            let svg = std::fs::read_to_string(p.grid_dir.join(file)).unwrap();
            crate::plot::check_svg_structure(&svg).unwrap();
            let texts = crate::plot::svg_texts(&svg);
            for e in expect {
                assert!(
                    texts.iter().any(|t| t == e),
                    "{grid}: {e:?} missing in {texts:?}"
                );
            }
            assert!(
                texts.iter().any(|t| t == "bbc-news: bert"),
                "{grid}: baseline line"
            );
            // One polyline per dataset's sweep (plus baselines, legend samples, mesh).
            assert!(
                svg.matches("<circle").count() >= p.cells.len() / 2,
                "{grid}: markers"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
