//! One cell's run: whether it is done ([`cell_status`]), continuing an interrupted
//! attempt ([`resumable`]), claiming it against other processes ([`claim_cell`]),
//! training it ([`run_cell`]) or copying an identical finished cell ([`reuse_twin`]).

use super::grid::Cell;
use super::result::{differences, load_results, read_result, CellResult, Recipe, RESULT_FILE};
use crate::train::checkpoint::MODEL_FILE;
use crate::train::{run_train, TrainOptions};
use crate::util::utc_timestamp;
use crate::util::write_atomic;
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Whether a cell has to run.
#[derive(Clone, Debug)]
pub enum CellStatus {
    Pending,
    Done(Box<CellResult>),
}

/// A cell is done when its `result.json` exists and was recorded with the same recipe;
/// one recorded with another recipe is an error (delete it or use another --root).
pub fn cell_status(cell: &Cell) -> Result<CellStatus> {
    let path = cell.dir.join(RESULT_FILE);
    if !path.exists() {
        return Ok(CellStatus::Pending);
    }
    let result = read_result(&path)?;
    let wanted = Recipe::of(&cell.options);
    if result.recipe != wanted {
        bail!(
            "{} was recorded with another recipe than requested ({}); delete that cell \
             directory or use another --root",
            path.display(),
            differences(&result.recipe, &wanted)
        );
    }
    // The recipe records the flags; a changed default changes what they resolve to.
    let (recorded, now) = (
        result.settings.effective(cell.lengths),
        cell.effective_settings(),
    );
    if recorded != now {
        bail!(
            "{} was recorded with other method settings than its flags resolve to now ({}; \
             a default changed?); move that cell directory away to train it again, or use \
             another --root",
            path.display(),
            differences(&recorded, &now)
        );
    }
    Ok(CellStatus::Done(Box::new(result)))
}

/// The options that continue an interrupted attempt of `cell` (from its resume state, or
/// its unfinished `--lr auto` search) when it ran with the same options; None (train from
/// the start) otherwise.
pub fn resumable(cell: &Cell) -> Option<TrainOptions> {
    let options = TrainOptions {
        resume: true,
        overwrite: false,
        ..cell.options.clone()
    };
    crate::train::has_resumable_run(&options).then_some(options)
}

/// A cell held by this process: an exclusive advisory lock (`flock`) on
/// `<grid>/<dataset>/.<cell>-seed<k>.claim`, released when dropped or when the process
/// ends, however it ends. It lets several `experiment` processes work through the same
/// grids (on 2 cores, two single-threaded processes train 10-15% more cells per hour than
/// one on both): each trains the cells no other process holds. The lock file lies beside
/// the cell directory, not in it, because a fresh run empties that directory; it is left
/// in place afterwards (removing it could race with a process about to lock it).
#[derive(Debug)]
pub struct CellClaim {
    _file: std::fs::File,
}

/// Claims the cell whose run directory is `cell_dir`; None when another process holds it.
pub fn claim_cell(cell_dir: &Path) -> Result<Option<CellClaim>> {
    let (Some(parent), Some(name)) = (cell_dir.parent(), cell_dir.file_name()) else {
        bail!("{}: not a cell directory", cell_dir.display());
    };
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let path = parent.join(format!(".{}.claim", name.to_string_lossy()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(CellClaim { _file: file })),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// Trains one cell and records its `result.json`.
pub fn run_cell(grid: &str, cell: &Cell, drop_checkpoint: bool) -> Result<CellResult> {
    let counting = crate::alloc::is_counting();
    crate::alloc::reset_peak();
    let start = Instant::now();
    let outcome = run_train(&cell.options)?;
    let train_seconds = start.elapsed().as_secs_f64();
    let peak_heap_bytes = counting.then(|| crate::alloc::peak_bytes() as u64);

    let report_path = cell.dir.join("test_report.json");
    ensure!(
        outcome.test.is_some() && report_path.is_file(),
        "dataset {} has no test split: the experiment tables report test accuracy",
        cell.options.data.display()
    );
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&report_path)
            .with_context(|| format!("cannot read {}", report_path.display()))?,
    )
    .with_context(|| format!("{}: not JSON", report_path.display()))?;
    let field = |name: &str| -> Result<f64> {
        report[name]
            .as_f64()
            .with_context(|| format!("{}: field `{name}` missing", report_path.display()))
    };
    let records = &outcome.records;
    let result = CellResult {
        grid: grid.to_string(),
        dataset: cell.dataset.clone(),
        cell: cell.name.clone(),
        variant: cell.settings.variant,
        settings: cell.settings.clone(),
        seed: cell.seed,
        epochs: cell.options.epochs,
        max_len: cell.options.max_len,
        recipe: Recipe::of(&cell.options),
        test_examples: field("examples")? as usize,
        test_loss: field("loss")?,
        test_accuracy: field("accuracy")?,
        test_macro_f1: field("macro_f1")?,
        test_micro_f1: field("micro_f1")?,
        best_epoch: outcome.best_epoch,
        best_val_loss: outcome.best_val_loss,
        train_seconds,
        tokens_per_s: records.iter().map(|r| r.tokens_per_s).sum::<f64>()
            / records.len().max(1) as f64,
        peak_heap_bytes,
        curve: records.clone(),
        created: utc_timestamp(),
        reused_from: None,
        resumed: cell.options.resume,
        lr_chosen: Some(outcome.lr),
        threads: Some(rayon::current_num_threads()),
    };
    write_atomic(
        &cell.dir.join(RESULT_FILE),
        serde_json::to_string_pretty(&result)?.as_bytes(),
    )?;
    if drop_checkpoint {
        let weights = cell.dir.join(MODEL_FILE);
        std::fs::remove_file(&weights)
            .with_context(|| format!("cannot remove {}", weights.display()))?;
    }
    Ok(result)
}

/// Grids overlap: Table 4's p = 0.9 cell, Table 5's layer-5 cell and Table 6's m = 8
/// cells are Table 2 cells under another name, and a pruning cell whose examples all fit
/// within `--prune-min-len` is its unpruned twin (pf: bert, pfc: c) of the same grid. When
/// a grid under `root` holds a trained (not itself reused) cell with the same dataset,
/// seed and schedule whose method settings compute the same on this data
/// ([`MethodConfig::effective`](crate::model::MethodConfig::effective)), the same run would be repeated: instead its result,
/// curve and test report are copied into `cell.dir`, the result naming its source in
/// `reused_from`.
pub fn reuse_twin(root: &Path, grid: &str, cell: &Cell) -> Result<Option<CellResult>> {
    let wanted = Recipe::of(&cell.options);
    let effective = cell.effective_settings();
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(None);
    };
    let mut grid_dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    grid_dirs.sort();
    for grid_dir in grid_dirs {
        let twin = load_results(&grid_dir)?.into_iter().find(|r| {
            r.reused_from.is_none()
                && !(r.grid == grid && r.cell == cell.name)
                && r.dataset == cell.dataset
                && r.seed == cell.seed
                && r.recipe.schedule_key() == wanted.schedule_key()
                && r.settings.effective(cell.lengths) == effective
        });
        let Some(twin) = twin else { continue };
        let source = format!(
            "{}/{}/{}-seed{}",
            twin.grid, twin.dataset, twin.cell, twin.seed
        );
        let twin_dir = grid_dir
            .join(&twin.dataset)
            .join(format!("{}-seed{}", twin.cell, twin.seed));
        std::fs::create_dir_all(&cell.dir)
            .with_context(|| format!("cannot create {}", cell.dir.display()))?;
        for name in ["metrics.jsonl", "test_report.json"] {
            let from = twin_dir.join(name);
            if from.is_file() {
                let bytes = std::fs::read(&from)
                    .with_context(|| format!("cannot read {}", from.display()))?;
                write_atomic(&cell.dir.join(name), &bytes)?;
            }
        }
        let result = CellResult {
            grid: grid.to_string(),
            cell: cell.name.clone(),
            recipe: wanted,
            created: utc_timestamp(),
            reused_from: Some(source),
            ..twin
        };
        write_atomic(
            &cell.dir.join(RESULT_FILE),
            serde_json::to_string_pretty(&result)?.as_bytes(),
        )?;
        return Ok(Some(result));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::args::ExperimentArgs;
    use crate::experiment::grid::plan;
    use crate::experiment::report::write_reports;
    use crate::experiment::test_support::{args, fake_result, scratch, write_result};
    use crate::model::BertConfig;

    #[test]
    fn sweep_cells_identical_to_finished_table2_cells_copy_their_results() {
        let root = scratch("twins");
        let bert = BertConfig::minilm_l6();
        let grid_args = |grid: &str, epochs: usize| ExperimentArgs {
            datasets: Some(vec!["toy".into()]),
            seeds: 1,
            epochs,
            ..args(grid, &root)
        };
        let t2 = plan(
            &ExperimentArgs {
                variants: Some(vec!["pfc@L-1".into(), "pf".into()]),
                ..grid_args("table2", 1)
            },
            &bert,
        )
        .unwrap();
        for c in &t2.cells {
            write_result(&fake_result(c, "table2", 0.8), &c.dir);
            std::fs::write(c.dir.join("metrics.jsonl"), format!("{}\n", c.name)).unwrap();
        }

        let copied = |grid: &str, epochs: usize, cell: &str| {
            let p = plan(&grid_args(grid, epochs), &bert).unwrap();
            let c = p.cells.iter().find(|c| c.name == cell).expect(cell);
            reuse_twin(&root, grid, c).unwrap().map(|r| {
                assert_eq!((r.grid.as_str(), r.cell.as_str()), (grid, cell));
                assert!(matches!(cell_status(c), Ok(CellStatus::Done(_))));
                let curve = std::fs::read_to_string(c.dir.join("metrics.jsonl")).unwrap();
                (r.reused_from.unwrap(), curve)
            })
        };
        let from_pfc = Some((
            "table2/toy/pfc-l5-seed1".to_string(),
            "pfc-l5\n".to_string(),
        ));
        assert_eq!(copied("table5", 1, "pfc-l5"), from_pfc);
        assert_eq!(copied("table6", 1, "pfc-m8"), from_pfc);
        let from_pf = Some(("table2/toy/pf-seed1".to_string(), "pf\n".to_string()));
        assert_eq!(copied("table4", 1, "pf-p0.9"), from_pf);
        // Other settings, or the same settings on another schedule, are trained.
        assert_eq!(copied("table5", 1, "pfc-l3"), None);
        assert_eq!(copied("table4", 1, "pf-p0.8"), None);
        assert_eq!(copied("table5", 2, "pfc-l5"), None);

        // The grid's table says which cells are copies.
        let p5 = plan(&grid_args("table5", 1), &bert).unwrap();
        let md = std::fs::read_to_string(write_reports(&p5, None, 4, &[]).unwrap()).unwrap();
        assert!(
            md.contains("- toy/pfc-l5-seed1 = table2/toy/pfc-l5-seed1"),
            "{md}"
        );

        // An unreadable baseline result is an error naming its file.
        let bad = t2.cells[0].dir.join(RESULT_FILE);
        std::fs::write(&bad, "{").unwrap();
        let err = write_reports(&p5, Some(&root.join("table2")), 4, &[]).unwrap_err();
        assert!(
            format!("{err:#}").contains(&bad.display().to_string()),
            "{err:#}"
        );
    }

    #[test]
    fn pruning_cells_within_prune_min_len_copy_their_unpruned_twin_and_stale_cells_are_errors() {
        use crate::model::LengthRange;
        let root = scratch("min-len");
        let bert = BertConfig::minilm_l6();
        let request = ExperimentArgs {
            datasets: Some(vec!["toy".into()]),
            seeds: 1,
            variants: Some(vec![
                "bert".into(),
                "pf".into(),
                "c@L-1".into(),
                "pfc@L-1".into(),
            ]),
            ..args("recipe", &root)
        };
        let with_lengths = |lengths: LengthRange| {
            let mut p = plan(&request, &bert).unwrap();
            for c in &mut p.cells {
                c.lengths = lengths;
            }
            p
        };
        assert_eq!(
            with_lengths(LengthRange::up_to(64)).cells[1]
                .settings
                .prune_min_len,
            64
        );

        // Every example within 64 tokens: pf is bert's run, pfc is c's.
        let short = with_lengths(LengthRange { min: 3, max: 60 });
        for c in [&short.cells[0], &short.cells[2]] {
            write_result(&fake_result(c, "recipe", 0.8), &c.dir);
        }
        let copied = |c: &Cell| {
            reuse_twin(&root, "recipe", c)
                .unwrap()
                .and_then(|r| r.reused_from)
        };
        assert_eq!(
            copied(&short.cells[1]).as_deref(),
            Some("recipe/toy/bert-seed1")
        );
        assert_eq!(
            copied(&short.cells[3]).as_deref(),
            Some("recipe/toy/c-l5-seed1")
        );
        assert!(matches!(
            cell_status(&short.cells[1]),
            Ok(CellStatus::Done(_))
        ));
        // A longer example would be pruned: trained.
        let mixed = with_lengths(LengthRange { min: 3, max: 65 });
        std::fs::remove_dir_all(&mixed.cells[3].dir).unwrap();
        assert_eq!(copied(&mixed.cells[3]), None);

        // A result recorded when the default was to prune everything (0): the same run where
        // every example is longer than 64, a stale one where some are not.
        let pf = &mixed.cells[1];
        std::fs::remove_dir_all(&pf.dir).unwrap();
        let mut old = fake_result(pf, "recipe", 0.7);
        old.settings.prune_min_len = 0;
        write_result(&old, &pf.dir);
        let err = format!("{:#}", cell_status(pf).unwrap_err());
        assert!(err.contains("other method settings"), "{err}");
        assert!(
            err.contains("prune_min_len: 0 recorded, 64 requested"),
            "names the field: {err}"
        );
        let long = Cell {
            lengths: LengthRange { min: 65, max: 512 },
            ..pf.clone()
        };
        assert!(matches!(cell_status(&long), Ok(CellStatus::Done(_))));

        // A result of another recipe: the error names the fields that differ, only them.
        let mut other = fake_result(pf, "recipe", 0.7);
        other.recipe.lr_grid = vec![2e-5, 1e-4];
        other.recipe.method.keep_ratio = Some(0.7);
        write_result(&other, &pf.dir);
        let err = format!("{:#}", cell_status(pf).unwrap_err());
        assert!(err.contains("another recipe"), "{err}");
        assert!(
            err.contains(
                "lr_grid: [0.00002, 0.0001] recorded, [0.00002, 0.00005, 0.0001] requested"
            ),
            "{err}"
        );
        assert!(
            err.contains("method.keep_ratio: 0.7 recorded, unset requested"),
            "{err}"
        );
        assert!(
            !err.contains("batch_size") && !err.contains("MethodArgs"),
            "{err}"
        );
    }
}
