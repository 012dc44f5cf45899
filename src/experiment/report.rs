//! The grid's `results.md` (and, through [`write_plots`], its plots).

use super::aggregate::{aggregate, AggRow, Stat, BASELINE_CELL};
use super::grid::Plan;
use super::plots::write_plots;
use super::result::load_results;
use crate::util::write_atomic;
use anyhow::Result;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn pct(s: &Stat) -> String {
    if s.n > 1 {
        format!("{:.2} ± {:.2}", s.mean * 100.0, s.std * 100.0)
    } else {
        format!("{:.2}", s.mean * 100.0)
    }
}

/// `Learning-rate candidates ...: 2e-5, 5e-5, 1e-4.` for a dataset's `--lr auto` rows (a
/// line per grid where they differ); empty for fixed rates.
fn lr_candidates(rows: &[AggRow], dataset: &str) -> String {
    let mut grids: Vec<&Vec<f64>> = Vec::new();
    for r in rows
        .iter()
        .filter(|r| r.dataset == dataset && !r.lr_grid.is_empty())
    {
        if !grids.contains(&&r.lr_grid) {
            grids.push(&r.lr_grid);
        }
    }
    grids
        .iter()
        .map(|g| {
            let g: Vec<String> = g.iter().map(|x| format!("{x:e}")).collect();
            format!(
                "Learning-rate candidates of `--lr auto`: {}.\n\n",
                g.join(", ")
            )
        })
        .collect()
}

/// The Markdown table of `rows`, one section per dataset.
/// `pending` counts the unfinished cells of the request that wrote it, which `request`
/// describes (a request may cover part of the grid; the rows are every finished cell).
pub fn format_markdown(
    grid: &str,
    rows: &[AggRow],
    pending: usize,
    request: &str,
    failed: &[String],
) -> String {
    let mut s = format!("# Experiment `{grid}`\n\n");
    let auto = rows.iter().any(|r| !r.lrs_chosen.is_empty());
    let recipe = if auto {
        "Recipe: train's defaults (the combining recipe of docs/combining.md; peak lr chosen per \
         cell by validation loss of short trials, `--lr auto`, column lr; new tensors at 10x), \
         10% linear warm-up then linear decay"
    } else {
        "Recipe: lr 2e-5, 10% linear warm-up then linear decay"
    };
    s.push_str(&format!(
        "Test-split scores of the checkpoint with the lowest validation loss, in percent: mean ± \
         sample standard deviation over seeds (no ± for one seed). {recipe}, batch 16, validation \
         on the dev split or a stratified 20% of the training split. Δ acc = accuracy minus BERT's on the same dataset, schedule and \
         seed, in points, averaged over the seeds BERT also ran (grids without a bert cell take \
         it from the table2 grid next to them). Speed and memory: mean wall seconds of the \
         whole run, mean training tokens/s, mean peak heap.\n\n"
    ));
    if pending > 0 {
        s.push_str(&format!(
            "**{pending} cells of the last run's request ({request}) are not finished yet.**\n\n"
        ));
    }
    if !failed.is_empty() {
        s.push_str(&format!("**{} cells failed:**\n\n", failed.len()));
        for f in failed {
            s.push_str(&format!("- {}\n", f.replace('\n', " ")));
        }
        s.push('\n');
    }
    if rows.is_empty() {
        s.push_str("No finished cells yet.\n");
    }
    let mut current: Option<&str> = None;
    for r in rows {
        if current != Some(r.dataset.as_str()) {
            if current.is_some() {
                s.push('\n'); // ends the previous dataset's table
            }
            current = Some(r.dataset.as_str());
            let (lr_head, lr_rule) = if auto { (" lr |", "---|") } else { ("", "") };
            s.push_str(&format!(
                "## {}\n\n{}| cell | p | layer | m | seeds |{lr_head} accuracy | macro-F1 | micro-F1 | Δ acc vs BERT | run s | train tokens/s | peak heap MiB | epochs | max len | train examples |\n\
                 |---|---:|---:|---:|---|{lr_rule}---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
                r.dataset,
                lr_candidates(rows, &r.dataset)
            ));
        }
        let m = &r.settings;
        let combines = r.variant.combines();
        let delta = match r.delta_accuracy {
            _ if r.cell == BASELINE_CELL => "baseline".to_string(),
            Some(d) => format!("{:+.2}", d * 100.0),
            None => "n/a".to_string(),
        };
        // Several schedules of one cell (e.g. a quick run and a full one) are told apart
        // by the parts of the schedule that differ between them.
        let others: Vec<&str> = rows
            .iter()
            .filter(|o| o.dataset == r.dataset && o.cell == r.cell && o.schedule != r.schedule)
            .map(|o| o.schedule.as_str())
            .collect();
        let cell = if others.is_empty() {
            r.cell.clone()
        } else {
            let own: Vec<&str> = r
                .schedule
                .split(", ")
                .filter(|part| others.iter().any(|o| !o.split(", ").any(|p| p == *part)))
                .collect();
            format!("{} [{}]", r.cell, own.join(", "))
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} |{} {} | {} | {} | {} | {:.0} | {:.0} | {} | {} | {} | {} |\n",
            cell,
            if r.variant.prunes() {
                format!("{}", m.keep_ratio)
            } else {
                "-".into()
            },
            if combines {
                m.combine_layer.to_string()
            } else {
                "-".into()
            },
            if combines {
                m.combine_tokens.to_string()
            } else {
                "-".into()
            },
            r.seeds
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(","),
            if auto {
                let lrs: Vec<String> = r.lrs_chosen.iter().map(|x| format!("{x:e}")).collect();
                format!(" {} |", lrs.join(","))
            } else {
                String::new()
            },
            pct(&r.accuracy),
            pct(&r.macro_f1),
            pct(&r.micro_f1),
            delta,
            r.train_seconds.mean,
            r.tokens_per_s.mean,
            r.peak_heap_bytes
                .map_or("n/a".to_string(), |b| format!("{:.0}", b / 1048576.0)),
            r.epochs,
            r.max_len,
            r.max_train_examples
                .map_or("all".to_string(), |n| n.to_string()),
        ));
    }
    s
}

/// Rewrites `results.md` and the plots of a grid from every result under `grid_dir`.
/// `extra_baselines_dir` (table2's directory) supplies BERT for grids without it.
pub fn write_reports(
    plan: &Plan,
    extra_baselines_dir: Option<&Path>,
    pending: usize,
    failed: &[String],
) -> Result<PathBuf> {
    let results = load_results(&plan.grid_dir)?;
    let extra = match extra_baselines_dir {
        // (a missing grid has no results; an unreadable result is an error, not a silently
        // missing baseline)
        Some(dir) if dir != plan.grid_dir => load_results(dir)?,
        _ => Vec::new(),
    };
    let rows = aggregate(&results, &extra, &plan.report_datasets, &plan.report_cells);
    let mut md = format_markdown(
        &plan.grid.name,
        &rows,
        pending,
        &plan.request_summary(),
        failed,
    );
    let reused: Vec<String> = results
        .iter()
        .filter_map(|r| {
            let from = r.reused_from.as_ref()?;
            Some(format!("{}/{}-seed{} = {from}", r.dataset, r.cell, r.seed))
        })
        .collect();
    let resumed: Vec<String> = results
        .iter()
        .filter(|r| r.resumed && r.reused_from.is_none())
        .map(|r| format!("{}/{}-seed{}", r.dataset, r.cell, r.seed))
        .collect();
    if !resumed.is_empty() {
        md.push_str(&format!(
            "\nResumed after an interruption (run s counts the last attempt only): {}.\n",
            resumed.join(", ")
        ));
    }
    let mut by_threads: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for r in results.iter().filter(|r| r.reused_from.is_none()) {
        if let Some(t) = r.threads {
            let label = format!("{}/{}-seed{}", r.dataset, r.cell, r.seed);
            by_threads.entry(t).or_default().push(label);
        }
    }
    if !by_threads.is_empty() {
        let groups: Vec<String> = by_threads
            .iter()
            .map(|(t, cells)| format!("{t}: {}", cells.join(", ")))
            .collect();
        md.push_str(&format!(
            "\nWorker threads per run (compare run times only at equal counts): {}.\n",
            groups.join("; ")
        ));
    }
    if !reused.is_empty() {
        md.push_str(
            "\nCells that are the same run as a finished cell (same dataset, seed and schedule, \
             and method settings that compute the same on this data: equal, or a pruning \
             variant whose --prune-min-len covers every example, which then prunes nothing) \
             were not trained again; they copy its result:\n\n",
        );
        for line in reused {
            md.push_str(&format!("- {line}\n"));
        }
    }
    let path = plan.grid_dir.join("results.md");
    write_atomic(&path, md.as_bytes())?;
    if let Err(e) = write_plots(&plan.grid_dir, plan.grid.sweep, &results, &rows) {
        eprintln!("warning: experiment plots not written: {e:#}");
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::args::ExperimentArgs;
    use crate::experiment::grid::plan;
    use crate::experiment::test_support::{args, fake_result};
    use crate::model::BertConfig;

    #[test]
    fn aggregation_pools_seeds_and_takes_deltas_within_a_schedule() {
        let bert = BertConfig::minilm_l6();
        let a = ExperimentArgs {
            datasets: Some(vec!["d".into(), "e".into()]),
            variants: Some(vec!["bert".into(), "pf".into()]),
            seeds: 3,
            ..args("table2", Path::new("r"))
        };
        let p = plan(&a, &bert).unwrap();
        let cell = |d: &str, n: &str, s: u64| {
            p.cells
                .iter()
                .find(|c| c.dataset == d && c.name == n && c.seed == s)
                .unwrap()
        };
        let mut results = vec![
            fake_result(cell("d", "bert", 1), "table2", 0.80),
            fake_result(cell("d", "bert", 2), "table2", 0.82),
            fake_result(cell("d", "bert", 3), "table2", 0.84),
            fake_result(cell("d", "pf", 1), "table2", 0.85),
            fake_result(cell("d", "pf", 2), "table2", 0.87),
            fake_result(cell("e", "pf", 1), "table2", 0.70),
        ];
        // Dataset e has no BERT in this grid: it comes from the extra baselines, and a
        // baseline with another schedule is ignored.
        let mut extra_same = fake_result(cell("e", "bert", 1), "table2", 0.60);
        extra_same.grid = "other".into();
        let mut extra_other = fake_result(cell("e", "bert", 1), "table2", 0.10);
        extra_other.recipe.max_len = 128;
        results[5].peak_heap_bytes = None;

        let dataset_order = vec!["d".to_string(), "e".to_string()];
        let cell_order = vec!["bert".to_string(), "pf".to_string()];
        let rows = aggregate(
            &results,
            &[extra_other.clone(), extra_same],
            &dataset_order,
            &cell_order,
        );
        assert_eq!(rows.len(), 3);
        let (b, pf, e) = (&rows[0], &rows[1], &rows[2]);
        assert_eq!((b.dataset.as_str(), b.cell.as_str()), ("d", "bert"));
        assert_eq!(b.seeds, [1, 2, 3]);
        assert!((b.accuracy.mean - 0.82).abs() < 1e-12);
        assert!((b.accuracy.std - 0.02).abs() < 1e-12);
        assert!((b.delta_accuracy.unwrap()).abs() < 1e-12);
        assert!((pf.accuracy.mean - 0.86).abs() < 1e-12);
        assert!((pf.accuracy.std - 0.02f64.sqrt() / 10.0).abs() < 1e-12);
        // Paired by seed: (0.85 - 0.80 + 0.87 - 0.82) / 2, not 0.86 - BERT's 3-seed 0.82.
        assert!((pf.delta_accuracy.unwrap() - 0.05).abs() < 1e-12);
        assert!((pf.baseline_accuracy.unwrap() - 0.81).abs() < 1e-12);
        assert!((pf.train_seconds.mean - 15.0).abs() < 1e-12);
        assert_eq!(pf.peak_heap_bytes, Some(1048576.0));
        assert!((e.delta_accuracy.unwrap() - 0.10).abs() < 1e-12);
        assert!((e.baseline_accuracy.unwrap() - 0.60).abs() < 1e-12);
        assert_eq!(e.peak_heap_bytes, None);
        assert_eq!(e.accuracy.n, 1);

        // Without any matching baseline there is no delta.
        let rows = aggregate(&results[5..], &[extra_other], &dataset_order, &cell_order);
        assert_eq!(rows[0].delta_accuracy, None);
        assert_eq!(rows[0].baseline_accuracy, None);
        // A seed BERT did not run does not enter the delta: with BERT's seed 2 alone, pf's
        // seed 1 has no partner (0.87 - 0.82, not the 0.86 mean - 0.82).
        let rows = aggregate(
            &[results[1].clone(), results[3].clone(), results[4].clone()],
            &[],
            &dataset_order,
            &cell_order,
        );
        assert!((rows[1].delta_accuracy.unwrap() - 0.05).abs() < 1e-12);
        assert!((rows[1].baseline_accuracy.unwrap() - 0.82).abs() < 1e-12);

        let rows = aggregate(&results, &[], &dataset_order, &cell_order);
        let md = format_markdown(
            "table2",
            &rows,
            2,
            "datasets d, e; cells bert, pf; seeds 1-3",
            &["d/pf-seed3: boom".into()],
        );
        assert!(md.contains("## d\n") && md.contains("|\n\n## e\n"));
        assert!(md.contains("| bert | - | - | - | 1,2,3 | 82.00 ± 2.00 | 77.00 ± 2.00 | 82.00 ± 2.00 | baseline |"), "{md}");
        assert!(
            md.contains("| pf | 0.9 | - | - | 1,2 | 86.00 ± 1.41 |"),
            "{md}"
        );
        assert!(md.contains("| +5.00 |"), "{md}");
        assert!(
            md.contains("| pf | 0.9 | - | - | 1 | 70.00 | 65.00 | 70.00 | n/a |"),
            "{md}"
        );
        assert!(
            md.contains("2 cells of the last run's request (datasets d, e; cells bert, pf; seeds 1-3) are not finished"),
            "{md}"
        );
        assert!(md.contains("d/pf-seed3: boom"));

        // Two schedules of one cell stay apart and are labelled.
        let mut quick = results[3].clone();
        quick.recipe.max_train_examples = Some(10);
        quick.test_accuracy = 0.5;
        let mut with_quick = results.clone();
        with_quick.push(quick);
        let rows = aggregate(&with_quick, &[], &dataset_order, &cell_order);
        assert_eq!(rows.len(), 4);
        let md = format_markdown("table2", &rows, 0, "", &[]);
        assert!(md.contains("| pf [train 10] |"), "{md}");
        assert!(md.contains("| pf [train all] |"), "{md}");
        assert!(!md.contains("candidates"), "fixed rate: {md}");
    }

    #[test]
    fn recipe_tables_name_each_datasets_learning_rate_candidates() {
        let bert = BertConfig::minilm_l6();
        let plan_with = |grid: Option<Vec<f64>>| {
            let a = ExperimentArgs {
                datasets: Some(vec!["d".into(), "e".into()]),
                variants: Some(vec!["bert".into()]),
                seeds: 1,
                lr_grid: grid,
                ..args("recipe", Path::new("r"))
            };
            plan(&a, &bert).unwrap()
        };
        let usual = plan_with(None);
        let wider = plan_with(Some(vec![2e-5, 2e-4]));
        let mut d = fake_result(&usual.cells[0], "recipe", 0.8);
        d.lr_chosen = Some(1e-4);
        let mut e = fake_result(&wider.cells[1], "recipe", 0.7);
        e.lr_chosen = Some(2e-4);
        let order = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let rows = aggregate(&[d, e], &[], &order(&["d", "e"]), &order(&["bert"]));
        let md = format_markdown("recipe", &rows, 0, "", &[]);
        assert!(
            md.contains(
                "## d\n\nLearning-rate candidates of `--lr auto`: 2e-5, 5e-5, 1e-4.\n\n| cell"
            ),
            "{md}"
        );
        assert!(
            md.contains("## e\n\nLearning-rate candidates of `--lr auto`: 2e-5, 2e-4.\n\n| cell"),
            "{md}"
        );
        assert!(md.contains("| 1 | 2e-4 | 70.00 |"), "{md}");
    }
}
