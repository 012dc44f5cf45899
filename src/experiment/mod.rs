//! `corefocus experiment`: the paper's accuracy tables as named grids of training runs
//! (datasets x variants x seeds), each cell trained in-process: the paper's grids
//! (table2/4/5/6) with the paper's recipe (lr 2e-5, method.md's reference settings),
//! `recipe` with `train`'s defaults (the combining recipe, lr chosen on validation per
//! cell); all with 10% warm-up, batch 16, the best checkpoint by validation loss, a
//! stratified 20% of the training split for validation where a dataset has no dev split.
//!
//! Layout: `<root>/<grid>/<dataset>/<cell>-seed<k>/` holds the run (checkpoint,
//! metrics.jsonl, training_curves.svg, test_report.json) and `result.json`, written last
//! and atomically; a cell whose `result.json` exists is not run again (resume), and one
//! recorded with a different recipe is an error rather than silently mixed in.
//! `<root>/<grid>/results.md` aggregates every result under the grid directory (mean ±
//! std over seeds, accuracy delta vs BERT of the same dataset and recipe), next to the
//! grid's plots. Several processes may work on the same grids at once: each cell is
//! claimed with a lock (`claim_cell`) and a process skips the cells another one holds.

mod aggregate;
mod args;
mod cell;
mod grid;
mod plots;
mod report;
mod result;
#[cfg(test)]
mod test_support;

pub use crate::variant_spec::{LayerSpec, VariantSpec};
pub use aggregate::{aggregate, mean_std, AggRow, Stat, BASELINE_CELL};
pub use args::{ExperimentArgs, GRIDS};
pub use cell::{cell_status, claim_cell, resumable, reuse_twin, run_cell, CellClaim, CellStatus};
pub use grid::{
    builtin_grid, cell_name, default_max_len, efficient_combine_layer, plan, Cell, GridSpec, Plan,
    Sweep,
};
pub use plots::write_plots;
pub use report::{format_markdown, write_reports};
pub use result::{load_results, read_result, CellResult, Recipe, RESULT_FILE};

use crate::model::BertConfig;
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};

/// What `corefocus experiment` did.
#[derive(Debug)]
pub struct ExperimentOutcome {
    pub grid_dir: PathBuf,
    pub results_md: Option<PathBuf>,
    pub cells: usize,
    pub ran: usize,
    pub skipped: usize,
    /// Cells skipped because another process holds them (`claim_cell`).
    pub busy: Vec<String>,
    pub failed: Vec<String>,
}

/// `corefocus experiment`: runs the grid's unfinished cells one after another (a failed
/// cell is reported and the rest still run; a cell another process holds is left to it),
/// refreshing results.md and the plots after each; fails at the end if any cell failed.
pub fn run_experiment(args: &ExperimentArgs) -> Result<ExperimentOutcome> {
    // Resolved here for the plan (a hub id is fetched once); each cell's `train` resolves
    // the same spec again, from the cache.
    let model_dir = crate::model::hub::resolve_model(&args.model)?;
    let bert = BertConfig::from_file(&model_dir.join("config.json"))
        .with_context(|| format!("--model {}", args.model.display()))?;
    let mut plan = plan(args, &bert)?;
    measure_lengths(&mut plan, &model_dir);
    let statuses: Vec<Result<CellStatus>> = plan.cells.iter().map(cell_status).collect();

    if args.dry_run {
        print_dry_run(&plan, bert.num_hidden_layers, &statuses);
        return Ok(ExperimentOutcome {
            grid_dir: plan.grid_dir.clone(),
            results_md: None,
            cells: plan.cells.len(),
            ran: 0,
            skipped: 0,
            busy: Vec::new(),
            failed: Vec::new(),
        });
    }

    let baselines_dir = args.root.join("table2");
    let pending = statuses
        .iter()
        .filter(|s| matches!(s, Ok(CellStatus::Pending)))
        .count();
    // --report-only stops here: the reports need no data directories.
    if args.report_only {
        return report_only(&plan, &baselines_dir, pending);
    }
    // Before any cell starts, rather than once per cell.
    args.precision.check_available()?;
    for d in &plan.grid.datasets {
        let dir = args.data_root.join(d);
        ensure!(
            dir.is_dir(),
            "dataset {d:?}: no directory {} (see --data-root)",
            dir.display()
        );
    }
    let mut run = GridRun {
        plan: &plan,
        args,
        baselines_dir,
        pending,
        ran: 0,
        skipped: 0,
        failed: Vec::new(),
        busy: Vec::new(),
    };
    for (i, (cell, status)) in plan.cells.iter().zip(statuses).enumerate() {
        run.step(i, cell, status)?;
    }
    run.finish()
}

/// Sets each cell's [`Cell::lengths`] from its dataset (train, dev and test, tokenized at
/// the cell's max len) where the data can be read: whether pruning settings change a
/// run depends on them ([`crate::model::MethodConfig::effective`]). Cells whose data
/// cannot be read keep the range known without it (their training reports why).
pub fn measure_lengths(plan: &mut Plan, model_dir: &Path) {
    use crate::data::load_dataset;
    use crate::data::tokenize::TextTokenizer;
    use crate::model::LengthRange;
    use std::collections::HashMap;
    let Ok(tokenizer) = TextTokenizer::from_dir(model_dir) else {
        return;
    };
    let mut known: HashMap<(PathBuf, usize), Option<LengthRange>> = HashMap::new();
    for cell in &mut plan.cells {
        let opts = &cell.options;
        let range = known
            .entry((opts.data.clone(), opts.max_len))
            .or_insert_with(|| {
                let ds = load_dataset(&opts.data, &opts.read_options()).ok()?;
                let examples = ds.train.iter().chain(ds.dev.iter().flatten());
                let lengths: Vec<usize> = examples
                    .chain(ds.test.iter().flatten())
                    .map(|e| tokenizer.encode(&e.text, opts.max_len).map(|ids| ids.len()))
                    .collect::<Result<_>>()
                    .ok()?;
                let range = LengthRange {
                    min: *lengths.iter().min()?,
                    max: *lengths.iter().max()?,
                };
                eprintln!(
                    "{}: examples of {} to {} tokens at max len {}",
                    opts.data.display(),
                    range.min,
                    range.max,
                    opts.max_len
                );
                Some(range)
            });
        if let Some(range) = range {
            cell.lengths = *range;
        }
    }
}

/// `--dry-run`: the cells and whether each is done, on stdout.
fn print_dry_run(plan: &Plan, layers: usize, statuses: &[Result<CellStatus>]) {
    println!(
        "grid {} ({}-layer model): {} cells under {}",
        plan.grid.name,
        layers,
        plan.cells.len(),
        plan.grid_dir.display()
    );
    for (cell, status) in plan.cells.iter().zip(statuses) {
        let state = match status {
            Ok(CellStatus::Done(_)) => "done".to_string(),
            Ok(CellStatus::Pending) if !cell.options.data.is_dir() => {
                format!("pending (no dataset at {})", cell.options.data.display())
            }
            Ok(CellStatus::Pending) => "pending".to_string(),
            Err(e) => format!("conflict: {e:#}"),
        };
        println!(
            "{:<44} max len {:>3}, epochs {}: {state}",
            cell.label(),
            cell.options.max_len,
            cell.options.epochs
        );
    }
}

/// `--report-only`: rewrites the grid's reports from its finished cells.
fn report_only(plan: &Plan, baselines_dir: &Path, pending: usize) -> Result<ExperimentOutcome> {
    // (a mistyped --root must not leave an empty report behind)
    ensure!(
        plan.grid_dir.is_dir(),
        "--report-only: no grid directory {} (see --root)",
        plan.grid_dir.display()
    );
    let results_md = write_reports(plan, Some(baselines_dir), pending, &[])?;
    eprintln!(
        "experiment {}: {} of {} cells finished; rewrote {} and the plots",
        plan.grid.name,
        plan.cells.len() - pending,
        plan.cells.len(),
        results_md.display()
    );
    Ok(ExperimentOutcome {
        grid_dir: plan.grid_dir.clone(),
        results_md: Some(results_md),
        cells: plan.cells.len(),
        ran: 0,
        skipped: plan.cells.len() - pending,
        busy: Vec::new(),
        failed: Vec::new(),
    })
}

/// The state of a run through a grid's cells.
struct GridRun<'a> {
    plan: &'a Plan,
    args: &'a ExperimentArgs,
    baselines_dir: PathBuf,
    /// Unfinished cells of the request (for the reports).
    pending: usize,
    ran: usize,
    skipped: usize,
    failed: Vec<String>,
    busy: Vec<String>,
}

impl GridRun<'_> {
    /// "experiment <grid>: [i/total] <dataset>/<cell>-seed<k> <what>" on stderr.
    fn say(&self, i: usize, cell: &Cell, what: &str) {
        eprintln!(
            "experiment {}: [{}/{}] {} {what}",
            self.plan.grid.name,
            i + 1,
            self.plan.cells.len(),
            cell.label()
        )
    }

    /// Reports cell `i` as failed (`<what>: <error>`) and records it for the reports.
    fn fail(&mut self, i: usize, cell: &Cell, what: &str, e: &anyhow::Error) {
        self.say(i, cell, &format!("{what}: {e:#}"));
        self.failed.push(format!("{}: {e:#}", cell.label()));
    }

    fn write_reports(&self) -> Result<PathBuf> {
        write_reports(
            self.plan,
            Some(&self.baselines_dir),
            self.pending,
            &self.failed,
        )
    }

    /// Cell `i`: skipped when done, failed, held by another process or a copy of an
    /// identical finished cell; else trained (continuing an interrupted attempt).
    fn step(&mut self, i: usize, cell: &Cell, status: Result<CellStatus>) -> Result<()> {
        match status {
            Ok(CellStatus::Done(_)) => {
                self.skipped += 1;
                self.say(i, cell, "done, skipping");
                return Ok(());
            }
            Err(e) => {
                self.fail(i, cell, "cannot run", &e);
                return Ok(());
            }
            Ok(CellStatus::Pending) => {}
        }
        // Held until this step ends: the cell is ours while it trains.
        let _claim = match claim_cell(&cell.dir) {
            Ok(Some(claim)) => claim,
            Ok(None) => {
                self.busy.push(cell.label());
                self.say(i, cell, "is being trained by another process, skipping");
                return Ok(());
            }
            Err(e) => {
                self.fail(i, cell, "cannot be claimed", &e);
                return Ok(());
            }
        };
        // Another process may have finished it since the status above was read.
        if let Ok(CellStatus::Done(_)) = cell_status(cell) {
            self.skipped += 1;
            self.pending -= 1;
            self.say(i, cell, "was finished by another process, skipping");
            return Ok(());
        }
        match reuse_twin(&self.args.root, &self.plan.grid.name, cell) {
            Ok(Some(r)) => {
                self.skipped += 1;
                self.pending -= 1;
                let source = r.reused_from.as_deref().unwrap_or("?");
                self.say(
                    i,
                    cell,
                    &format!("is the same run as {source}: result copied"),
                );
                self.write_reports()?;
                return Ok(());
            }
            Ok(None) => {}
            Err(e) => self.say(
                i,
                cell,
                &format!("looking for an identical finished cell failed ({e:#}); training it"),
            ),
        }
        self.train(i, cell);
        self.pending -= 1;
        self.write_reports()?;
        Ok(())
    }

    /// Trains cell `i` (continuing an interrupted attempt of it when there is one); a
    /// failure is recorded, not returned.
    fn train(&mut self, i: usize, cell: &Cell) {
        let grid = &self.plan.grid.name;
        let resumed = resumable(cell);
        let action = if resumed.is_some() {
            "resuming the interrupted"
        } else {
            "training"
        };
        eprintln!(
            "experiment {grid}: [{}/{}] {action} {} (max len {}, {} epochs) in {}",
            i + 1,
            self.plan.cells.len(),
            cell.label(),
            cell.options.max_len,
            cell.options.epochs,
            cell.dir.display()
        );
        let cell = &Cell {
            options: resumed.unwrap_or_else(|| cell.options.clone()),
            ..cell.clone()
        };
        match run_cell(grid, cell, self.args.drop_checkpoints) {
            Ok(r) => {
                self.ran += 1;
                eprintln!(
                    "experiment {grid}: {} test accuracy {:.4}, macro-F1 {:.4} ({:.0} s)",
                    cell.label(),
                    r.test_accuracy,
                    r.test_macro_f1,
                    r.train_seconds
                );
            }
            Err(e) => {
                eprintln!("experiment {grid}: {} failed: {e:#}", cell.label());
                self.failed.push(format!("{}: {e:#}", cell.label()));
            }
        }
    }

    /// The final reports and summary; an error when any cell failed.
    fn finish(self) -> Result<ExperimentOutcome> {
        let total = self.plan.cells.len();
        let results_md = self.write_reports()?;
        println!(
            "{}",
            std::fs::read_to_string(&results_md).unwrap_or_default()
        );
        println!(
            "{} cells: {} trained, {} already done, {} being trained by another process, {} failed; table in {}",
            total,
            self.ran,
            self.skipped,
            self.busy.len(),
            self.failed.len(),
            results_md.display()
        );
        if !self.failed.is_empty() {
            bail!(
                "{} of {total} cells failed:\n  {}",
                self.failed.len(),
                self.failed.join("\n  ")
            );
        }
        Ok(ExperimentOutcome {
            grid_dir: self.plan.grid_dir.clone(),
            results_md: Some(results_md),
            cells: total,
            ran: self.ran,
            skipped: self.skipped,
            busy: self.busy,
            failed: self.failed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::test_support::{fake_result, scratch, write_result};

    #[test]
    fn finished_cells_are_skipped_and_mismatched_ones_refused() {
        let root = scratch("resume");
        // A model directory with only config.json: nothing may be trained in this test.
        let model = root.join("all-MiniLM-L6-v2");
        std::fs::create_dir_all(&model).unwrap();
        let bert = BertConfig::minilm_l6();
        std::fs::write(
            model.join("config.json"),
            serde_json::to_string(&bert).unwrap(),
        )
        .unwrap();
        let data = root.join("data");
        std::fs::create_dir_all(data.join("toy")).unwrap();
        let a = ExperimentArgs {
            model: model.clone(),
            data_root: data,
            root: root.join("runs"),
            datasets: Some(vec!["toy".into()]),
            variants: Some(vec!["bert".into(), "pf".into()]),
            seeds: 2,
            epochs: 1,
            ..ExperimentArgs::new("table2", &model)
        };
        let p = plan(&a, &bert).unwrap();
        assert_eq!(p.cells.len(), 4);
        for c in &p.cells[..3] {
            write_result(&fake_result(c, "table2", 0.8), &c.dir);
        }
        let status: Vec<_> = p.cells.iter().map(cell_status).collect();
        assert!(matches!(status[0], Ok(CellStatus::Done(_))));
        assert!(matches!(status[2], Ok(CellStatus::Done(_))));
        assert!(matches!(status[3], Ok(CellStatus::Pending)));

        // The same cell recorded with another schedule is refused, not counted.
        let mut other = fake_result(&p.cells[3], "table2", 0.8);
        other.recipe.epochs = 5;
        write_result(&other, &p.cells[3].dir);
        let err = format!("{:#}", cell_status(&p.cells[3]).unwrap_err());
        assert!(
            err.contains("another recipe") && err.contains("pf-seed2"),
            "{err}"
        );
        std::fs::remove_dir_all(&p.cells[3].dir).unwrap();
        write_result(&fake_result(&p.cells[3], "table2", 0.9), &p.cells[3].dir);

        // Every cell finished: the command trains nothing (there is no model to train
        // with) and writes the table and the plots.
        let out = run_experiment(&a).unwrap();
        assert_eq!((out.cells, out.ran, out.skipped), (4, 0, 4));
        let md = std::fs::read_to_string(out.results_md.unwrap()).unwrap();
        assert!(
            md.contains("| pf | 0.9 | - | - | 1,2 | 85.00 ± 7.07 |"),
            "{md}"
        );
        assert!(md.contains("+5.00"), "{md}");
        for seed in [1, 2] {
            let svg =
                std::fs::read_to_string(out.grid_dir.join(format!("curves-toy-seed{seed}.svg")))
                    .unwrap();
            crate::plot::check_svg_structure(&svg).unwrap();
            let texts = crate::plot::svg_texts(&svg);
            assert!(
                texts.iter().any(|t| t == "bert") && texts.iter().any(|t| t == "pf"),
                "{texts:?}"
            );
            assert!(
                texts
                    .iter()
                    .any(|t| t == "training loss, mean over 10 steps"),
                "{texts:?}"
            );
        }
        // The dry run reports without touching anything.
        let dry = run_experiment(&ExperimentArgs {
            dry_run: true,
            ..a.clone()
        })
        .unwrap();
        assert_eq!((dry.cells, dry.ran), (4, 0));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
