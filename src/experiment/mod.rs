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

use crate::model::{BertConfig, MethodConfig, Variant};
use crate::plot::{write_svg, Panel, Series};
use crate::train::checkpoint::{utc_timestamp, MODEL_FILE};
use crate::train::trainer::{
    run_train, EpochRecord, LrSpec, MethodArgs, MethodDefaults, TrainOptions, DEFAULT_NEW_LR_SCALE,
};
use crate::util::write_atomic;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The built-in grids.
pub const GRIDS: [&str; 5] = ["table2", "table4", "table5", "table6", "recipe"];

/// Name of each cell's result file.
pub const RESULT_FILE: &str = "result.json";

/// Token budget of the paper's datasets (the paper truncates at 512; shorter where the
/// documents are short, to save time).
pub fn default_max_len(dataset: &str) -> usize {
    match dataset {
        "sst2" => 64,
        "20newsgroups" => 256,
        _ => 512,
    }
}

/// `corefocus experiment` options.
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct ExperimentArgs {
    /// The grid: table2 (variants x datasets), table4 (keep ratio p of PF on BBC News),
    /// table5 (combining layer of PFC on BBC News), table6 (combination tokens m of PFC on
    /// SST-2 and BBC News), all at the paper's recipe; recipe (Table 2's bert, pf, c and
    /// pfc at layer L-1 with train's defaults: the combining recipe, --lr auto).
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(GRIDS))]
    pub grid: String,
    /// HF model directory to warm-start from, or a Hugging Face hub id (see `train --model`).
    #[arg(long)]
    pub model: PathBuf,
    /// Directory holding one folder per dataset.
    #[arg(long, default_value = "../shared/data")]
    pub data_root: PathBuf,
    /// Where the grids' runs and tables go (`<root>/<grid>/...`).
    #[arg(long, default_value = "runs/experiments")]
    pub root: PathBuf,
    /// Replace the grid's datasets (folder names under --data-root), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub datasets: Option<Vec<String>>,
    /// Replace the grid's variants, comma-separated: VARIANT[@LAYER][:p=RATIO][:m=TOKENS],
    /// LAYER a number, L or L-k (e.g. bert, pf:p=0.8, pfc@L-1, pfc@4:m=16).
    #[arg(long, value_delimiter = ',')]
    pub variants: Option<Vec<String>>,
    /// Number of seeds per cell (seeds 1..=N).
    #[arg(long, default_value_t = 3)]
    pub seeds: usize,
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Tokens per document for every dataset [default: sst2 64, 20newsgroups 256, else 512].
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Train on a seeded subset of this many examples (quick runs).
    #[arg(long)]
    pub max_train_examples: Option<usize>,
    /// Validate and test on seeded subsets of this many examples (quick runs).
    #[arg(long)]
    pub max_eval_examples: Option<usize>,
    /// Print the cells and whether each is done, then stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Rewrite the grid's results.md and plots from its finished cells, then stop
    /// (trains nothing; e.g. after copying cells in, or to redraw with a newer binary).
    #[arg(long, conflicts_with = "dry_run")]
    pub report_only: bool,
    /// Delete each cell's model weights once its result is recorded (saves disk; the
    /// metrics, plots and reports stay).
    #[arg(long)]
    pub drop_checkpoints: bool,
    /// Save each cell's resume state every this many optimizer steps (besides epoch ends),
    /// so an interrupted cell continues from there on the next run instead of restarting.
    #[arg(long, default_value_t = 25)]
    pub save_every: u64,
    /// Test only: stop each trained cell after optimizer step N (its resume state saved).
    #[arg(long, hide = true)]
    pub stop_after_steps: Option<u64>,
}

impl ExperimentArgs {
    /// Defaults for `grid` with everything else left as the command line's defaults.
    pub fn new(grid: &str, model: &Path) -> Self {
        ExperimentArgs {
            grid: grid.to_string(),
            model: model.to_path_buf(),
            data_root: PathBuf::from("../shared/data"),
            root: PathBuf::from("runs/experiments"),
            datasets: None,
            variants: None,
            seeds: 3,
            epochs: 3,
            max_len: None,
            max_train_examples: None,
            max_eval_examples: None,
            dry_run: false,
            report_only: false,
            drop_checkpoints: false,
            save_every: 25,
            stop_after_steps: None,
        }
    }
}

// ------------------------------------------------------------------------------ grids

/// Which setting a grid sweeps (decides its extra plot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sweep {
    None,
    KeepRatio,
    CombineLayer,
    CombineTokens,
}

/// A named grid before expansion: variant specs are strings (see [`VariantSpec`]).
#[derive(Clone, Debug, PartialEq)]
pub struct GridSpec {
    pub name: String,
    pub datasets: Vec<String>,
    pub variants: Vec<String>,
    pub sweep: Sweep,
    /// The training recipe: `false` for the paper's grids (lr 2e-5, method.md's reference
    /// settings, one learning rate for every tensor), as recorded before the combining
    /// recipe existed; `true` for `recipe` (lr chosen on validation, `train`'s defaults).
    pub recommended: bool,
}

/// The paper's efficient combining layer (7 of 12) scaled to a model of `layers` layers:
/// 4 for a 6-layer model.
pub fn efficient_combine_layer(layers: usize) -> usize {
    ((7.0 * layers as f64 / 12.0).round() as usize).clamp(2, layers.max(2))
}

/// The built-in grid `name` for a model of `layers` layers.
pub fn builtin_grid(name: &str, layers: usize) -> Result<GridSpec> {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    Ok(match name {
        "table2" => {
            let e = efficient_combine_layer(layers);
            GridSpec {
                name: name.into(),
                datasets: strings(&["sst2", "bbc-news", "20newsgroups"]),
                variants: vec![
                    "bert".into(),
                    "p".into(),
                    "pf".into(),
                    "c@L-1".into(),
                    "pfc@L-1".into(),
                    format!("c@{e}"),
                    format!("pfc@{e}"),
                ],
                sweep: Sweep::None,
                recommended: false,
            }
        }
        "recipe" => GridSpec {
            name: name.into(),
            datasets: strings(&["sst2", "bbc-news", "20newsgroups"]),
            variants: strings(&["bert", "pf", "c@L-1", "pfc@L-1"]),
            sweep: Sweep::None,
            recommended: true,
        },
        "table4" => GridSpec {
            name: name.into(),
            datasets: strings(&["bbc-news"]),
            variants: [0.95, 0.9, 0.8, 0.7, 0.6]
                .iter()
                .map(|p| format!("pf:p={p}"))
                .collect(),
            sweep: Sweep::KeepRatio,
            recommended: false,
        },
        "table5" => GridSpec {
            name: name.into(),
            datasets: strings(&["bbc-news"]),
            variants: (2..=layers).map(|l| format!("pfc@{l}")).collect(),
            sweep: Sweep::CombineLayer,
            recommended: false,
        },
        "table6" => GridSpec {
            name: name.into(),
            datasets: strings(&["sst2", "bbc-news"]),
            variants: [4, 8, 16, 32]
                .iter()
                .map(|m| format!("pfc:m={m}"))
                .collect(),
            sweep: Sweep::CombineTokens,
            recommended: false,
        },
        _ => bail!(
            "unknown grid {name:?} (expected one of {})",
            GRIDS.join(", ")
        ),
    })
}

/// A combining layer relative to the model depth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerSpec {
    /// 1-based layer number.
    Layer(usize),
    /// `L - k`.
    FromTop(usize),
}

/// A parsed variant spec `VARIANT[@LAYER][:p=RATIO][:m=TOKENS]`.
#[derive(Clone, Debug, PartialEq)]
pub struct VariantSpec {
    pub variant: Variant,
    pub combine_layer: Option<LayerSpec>,
    pub keep_ratio: Option<f32>,
    pub combine_tokens: Option<usize>,
}

impl std::str::FromStr for VariantSpec {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let mut parts = s.trim().split(':');
        let head = parts.next().unwrap_or("");
        let (name, layer) = match head.split_once('@') {
            Some((n, l)) => (n, Some(l)),
            None => (head, None),
        };
        let variant: Variant = name
            .parse()
            .with_context(|| format!("variant spec {s:?}"))?;
        let combine_layer = match layer {
            None => None,
            Some(l) => {
                let l = l.trim();
                let parsed = if l.eq_ignore_ascii_case("l") {
                    Some(LayerSpec::FromTop(0))
                } else if let Some(k) = l.strip_prefix("L-").or_else(|| l.strip_prefix("l-")) {
                    k.parse().ok().map(LayerSpec::FromTop)
                } else {
                    l.parse().ok().map(LayerSpec::Layer)
                };
                Some(parsed.with_context(|| {
                    format!("variant spec {s:?}: layer {l:?} is not a number, L or L-k")
                })?)
            }
        };
        let mut spec = VariantSpec {
            variant,
            combine_layer,
            keep_ratio: None,
            combine_tokens: None,
        };
        for part in parts {
            let (key, value) = part
                .split_once('=')
                .with_context(|| format!("variant spec {s:?}: {part:?} is not key=value"))?;
            match key.trim() {
                "p" => {
                    spec.keep_ratio = Some(value.trim().parse().with_context(|| {
                        format!("variant spec {s:?}: keep ratio {value:?} is not a number")
                    })?)
                }
                "m" => {
                    spec.combine_tokens = Some(value.trim().parse().with_context(|| {
                        format!("variant spec {s:?}: token count {value:?} is not a whole number")
                    })?)
                }
                other => bail!("variant spec {s:?}: unknown setting {other:?} (expected p or m)"),
            }
        }
        Ok(spec)
    }
}

impl VariantSpec {
    /// The train flags of this spec for a model of `layers` layers.
    pub fn method_args(&self, layers: usize) -> Result<MethodArgs> {
        let combine_layer = match self.combine_layer {
            None => None,
            Some(LayerSpec::Layer(l)) => Some(l),
            Some(LayerSpec::FromTop(k)) => {
                ensure!(
                    k < layers,
                    "layer L-{k} does not exist in a {layers}-layer model"
                );
                Some(layers - k)
            }
        };
        Ok(MethodArgs {
            variant: self.variant,
            keep_ratio: self.keep_ratio,
            combine_layer,
            combine_tokens: self.combine_tokens,
            ..MethodArgs::default()
        })
    }
}

/// The cell name of resolved method flags: the variant, then `-l<layer>`, `-p<ratio>`,
/// `-m<tokens>` for the settings given explicitly (e.g. `pfc-l5`, `pf-p0.8`, `pfc-m16`).
pub fn cell_name(m: &MethodArgs) -> String {
    let mut name = m.variant.name().to_string();
    if let Some(l) = m.combine_layer {
        name.push_str(&format!("-l{l}"));
    }
    if let Some(p) = m.keep_ratio {
        name.push_str(&format!("-p{p}"));
    }
    if let Some(t) = m.combine_tokens {
        name.push_str(&format!("-m{t}"));
    }
    name
}

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
}

impl Recipe {
    fn of(opts: &TrainOptions) -> Recipe {
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
        )
    }
}

fn one() -> f64 {
    1.0
}

/// One training run of a grid.
#[derive(Clone, Debug)]
pub struct Cell {
    pub dataset: String,
    pub name: String,
    pub seed: u64,
    pub dir: PathBuf,
    pub options: TrainOptions,
    /// The method settings the run resolves to.
    pub settings: MethodConfig,
}

impl Cell {
    /// `<dataset>/<cell>-seed<k>`, for messages.
    pub fn label(&self) -> String {
        format!("{}/{}-seed{}", self.dataset, self.name, self.seed)
    }
}

/// A grid with the command line's overrides applied, and its cells (datasets, then
/// seeds, then variants: a half-finished grid has whole tables for its first seeds).
#[derive(Clone, Debug)]
pub struct Plan {
    pub grid: GridSpec,
    pub grid_dir: PathBuf,
    pub cells: Vec<Cell>,
    /// Row order of the grid's reports: the built-in grid's datasets and cell names, then
    /// any the request adds. Several requests (e.g. one dataset at a time) write the same
    /// results.md, so its order must not depend on which one wrote it last.
    pub report_datasets: Vec<String>,
    pub report_cells: Vec<String>,
}

/// Expands `args` for a model of configuration `bert`, validating every cell's settings.
pub fn plan(args: &ExperimentArgs, bert: &BertConfig) -> Result<Plan> {
    let layers = bert.num_hidden_layers;
    let mut grid = builtin_grid(&args.grid, layers)?;
    let builtin = grid.clone();
    if let Some(d) = &args.datasets {
        grid.datasets = d.iter().map(|s| s.trim().to_string()).collect();
    }
    if let Some(v) = &args.variants {
        grid.variants = v.iter().map(|s| s.trim().to_string()).collect();
    }
    grid.datasets.retain(|d| !d.is_empty());
    grid.variants.retain(|v| !v.is_empty());
    ensure!(!grid.datasets.is_empty(), "--datasets: no dataset given");
    ensure!(!grid.variants.is_empty(), "--variants: no variant given");
    ensure!(args.seeds >= 1, "--seeds must be at least 1");
    for d in &grid.datasets {
        ensure!(
            !d.contains(['/', '\\']) && d != "." && d != "..",
            "--datasets: {d:?} must be a folder name under --data-root, not a path"
        );
    }

    // Resolve the variant specs once; duplicates (e.g. c@L-1 = c@4 in a 5-layer model)
    // collapse into one cell.
    let mut methods: Vec<(String, MethodArgs, MethodConfig)> = Vec::new();
    for v in &grid.variants {
        let spec: VariantSpec = v.parse()?;
        let mut args = spec
            .method_args(layers)
            .with_context(|| format!("variant {v:?}"))?;
        if !grid.recommended {
            args.defaults = MethodDefaults::Paper;
        }
        let config = args
            .to_config(bert)
            .with_context(|| format!("variant {v:?}"))?;
        let name = cell_name(&args);
        if !methods.iter().any(|(n, _, _)| *n == name) {
            methods.push((name, args, config));
        }
    }

    let mut report_datasets = builtin.datasets.clone();
    append_missing(&mut report_datasets, &grid.datasets);
    let mut report_cells = Vec::new();
    for v in &builtin.variants {
        // (a built-in variant the model cannot run, e.g. a layer past its depth, simply
        // has no row)
        if let Ok(args) = v.parse::<VariantSpec>().and_then(|s| s.method_args(layers)) {
            append_missing(&mut report_cells, &[cell_name(&args)]);
        }
    }
    let requested: Vec<String> = methods.iter().map(|(n, _, _)| n.clone()).collect();
    append_missing(&mut report_cells, &requested);

    let grid_dir = args.root.join(&grid.name);
    let mut cells = Vec::new();
    for dataset in &grid.datasets {
        let max_len = args.max_len.unwrap_or_else(|| default_max_len(dataset));
        for seed in 1..=args.seeds as u64 {
            for (name, method, settings) in &methods {
                let dir = grid_dir.join(dataset).join(format!("{name}-seed{seed}"));
                let options = TrainOptions {
                    model: args.model.clone(),
                    data: args.data_root.join(dataset),
                    out: dir.clone(),
                    method: method.clone(),
                    lr: if grid.recommended {
                        LrSpec::Auto
                    } else {
                        LrSpec::Fixed(2e-5)
                    },
                    new_lr_scale: if grid.recommended {
                        DEFAULT_NEW_LR_SCALE
                    } else {
                        1.0
                    },
                    warmup: 0.1,
                    batch_size: 16,
                    epochs: args.epochs,
                    max_len,
                    seed,
                    max_train_examples: args.max_train_examples,
                    max_eval_examples: args.max_eval_examples,
                    // Only a crashed attempt of this very cell (no result.json) is replaced
                    // (or continued: see `resumable`).
                    overwrite: true,
                    save_every: args.save_every,
                    stop_after_steps: args.stop_after_steps,
                    ..TrainOptions::default()
                };
                options
                    .validate()
                    .with_context(|| format!("cell {dataset}/{name}-seed{seed}"))?;
                cells.push(Cell {
                    dataset: dataset.clone(),
                    name: name.clone(),
                    seed,
                    dir,
                    options,
                    settings: settings.clone(),
                });
            }
        }
    }
    Ok(Plan {
        grid,
        grid_dir,
        cells,
        report_datasets,
        report_cells,
    })
}

impl Plan {
    /// `datasets a, b; cells x, y; seeds 1-3` (or `seed 1`), for the reports.
    pub fn request_summary(&self) -> String {
        let mut cells: Vec<String> = Vec::new();
        append_missing(
            &mut cells,
            &self
                .cells
                .iter()
                .map(|c| c.name.clone())
                .collect::<Vec<_>>(),
        );
        let seeds = match self.cells.iter().map(|c| c.seed).max().unwrap_or(0) {
            1 => "seed 1".to_string(),
            n => format!("seeds 1-{n}"),
        };
        format!(
            "datasets {}; cells {}; {seeds}",
            self.grid.datasets.join(", "),
            cells.join(", ")
        )
    }
}

/// Appends the items of `more` that `to` lacks, in order.
fn append_missing(to: &mut Vec<String>, more: &[String]) {
    for m in more {
        if !to.contains(m) {
            to.push(m.clone());
        }
    }
}

// ----------------------------------------------------------------------------- results

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

/// Reads a `result.json`.
pub fn read_result(path: &Path) -> Result<CellResult> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: not a corefocus experiment result", path.display()))
}

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
            "{} was recorded with another recipe ({}; method {:?}) than requested ({}; method {:?}); \
             delete that cell directory or use another --root",
            path.display(),
            result.recipe.schedule_key(),
            result.recipe.method,
            wanted.schedule_key(),
            wanted.method
        );
    }
    Ok(CellStatus::Done(Box::new(result)))
}

/// The options that continue an interrupted attempt of `cell` from its saved resume state,
/// when there is one recorded with the same options; None (train from the start) otherwise.
pub fn resumable(cell: &Cell) -> Option<TrainOptions> {
    // No (readable) state: nothing to continue.
    let state = crate::train::resume::read_resume_state(&cell.dir).ok()?;
    let options = TrainOptions {
        resume: true,
        overwrite: false,
        ..cell.options.clone()
    };
    let differing = crate::train::resume::differing_options(&state.options, &options).ok()?;
    differing.is_empty().then_some(options)
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
    let counting = crate::bench::alloc::is_counting();
    crate::bench::alloc::reset_peak();
    let start = Instant::now();
    let outcome = run_train(&cell.options)?;
    let train_seconds = start.elapsed().as_secs_f64();
    let peak_heap_bytes = counting.then(|| crate::bench::alloc::peak_bytes() as u64);

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
/// cells are Table 2 cells under another name. When another grid under `root` holds a
/// trained (not itself reused) cell with the same dataset, seed, schedule and resolved
/// method settings, the same run would be repeated: instead its result, curve and test
/// report are copied into `cell.dir`, the result naming its source in `reused_from`.
pub fn reuse_twin(root: &Path, grid: &str, cell: &Cell) -> Result<Option<CellResult>> {
    let wanted = Recipe::of(&cell.options);
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(None);
    };
    let mut grid_dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != grid && !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    grid_dirs.sort();
    for grid_dir in grid_dirs {
        let twin = load_results(&grid_dir)?.into_iter().find(|r| {
            r.reused_from.is_none()
                && r.dataset == cell.dataset
                && r.seed == cell.seed
                && r.settings == cell.settings
                && r.recipe.schedule_key() == wanted.schedule_key()
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

// ------------------------------------------------------------------------- aggregation

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

fn pct(s: &Stat) -> String {
    if s.n > 1 {
        format!("{:.2} ± {:.2}", s.mean * 100.0, s.std * 100.0)
    } else {
        format!("{:.2}", s.mean * 100.0)
    }
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
                "## {}\n\n| cell | p | layer | m | seeds |{lr_head} accuracy | macro-F1 | micro-F1 | Δ acc vs BERT | run s | train tokens/s | peak heap MiB | epochs | max len | train examples |\n\
                 |---|---:|---:|---:|---|{lr_rule}---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
                r.dataset
            ));
        }
        let m = &r.settings;
        let combines = r.variant.combines();
        let delta = match r.delta_accuracy {
            _ if r.cell == BASELINE_CELL => "baseline".to_string(),
            Some(d) => format!("{:+.2}", d * 100.0),
            None => "n/a".to_string(),
        };
        // Several schedules of one cell (e.g. a quick run and a full one) are told apart.
        let cell = if rows
            .iter()
            .any(|o| o.dataset == r.dataset && o.cell == r.cell && o.schedule != r.schedule)
        {
            format!("{} [{}]", r.cell, r.schedule)
        } else {
            r.cell.clone()
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

// ------------------------------------------------------------------------------- plots

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
                Series::new(r.cell.clone(), crate::plot::step_loss_curve(&r.curve)).with_color(i)
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        if !losses.is_empty() {
            panels.push(Panel {
                title: format!(
                    "training loss, mean over {} steps",
                    crate::train::trainer::LOSS_WINDOW
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
            "\nCells that are the same run as a finished cell of another grid (same dataset, \
             seed, schedule and method settings) were not trained again; they copy its result:\n\n",
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

// ------------------------------------------------------------------------- the command

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
    let plan = plan(args, &bert)?;
    let statuses: Vec<Result<CellStatus>> = plan.cells.iter().map(cell_status).collect();

    if args.dry_run {
        println!(
            "grid {} ({}-layer model): {} cells under {}",
            plan.grid.name,
            bert.num_hidden_layers,
            plan.cells.len(),
            plan.grid_dir.display()
        );
        for (cell, status) in plan.cells.iter().zip(&statuses) {
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
    let mut pending = statuses
        .iter()
        .filter(|s| matches!(s, Ok(CellStatus::Pending)))
        .count();
    // --report-only stops here: the reports need no data directories.
    if args.report_only {
        // (a mistyped --root must not leave an empty report behind)
        ensure!(
            plan.grid_dir.is_dir(),
            "--report-only: no grid directory {} (see --root)",
            plan.grid_dir.display()
        );
        let results_md = write_reports(&plan, Some(&baselines_dir), pending, &[])?;
        eprintln!(
            "experiment {}: {} of {} cells finished; rewrote {} and the plots",
            plan.grid.name,
            plan.cells.len() - pending,
            plan.cells.len(),
            results_md.display()
        );
        return Ok(ExperimentOutcome {
            grid_dir: plan.grid_dir.clone(),
            results_md: Some(results_md),
            cells: plan.cells.len(),
            ran: 0,
            skipped: plan.cells.len() - pending,
            busy: Vec::new(),
            failed: Vec::new(),
        });
    }
    for d in &plan.grid.datasets {
        let dir = args.data_root.join(d);
        ensure!(
            dir.is_dir(),
            "dataset {d:?}: no directory {} (see --data-root)",
            dir.display()
        );
    }
    let (mut ran, mut skipped, mut failed, mut busy) = (0, 0, Vec::new(), Vec::new());
    let total = plan.cells.len();
    // "experiment <grid>: [i/total] <dataset>/<cell>-seed<k> <what>" on stderr.
    let say = |i: usize, cell: &Cell, what: &str| {
        eprintln!(
            "experiment {}: [{}/{total}] {} {what}",
            plan.grid.name,
            i + 1,
            cell.label()
        )
    };
    for (i, (cell, status)) in plan.cells.iter().zip(statuses).enumerate() {
        match status {
            Ok(CellStatus::Done(_)) => {
                skipped += 1;
                say(i, cell, "done, skipping");
                continue;
            }
            Err(e) => {
                say(i, cell, &format!("cannot run: {e:#}"));
                failed.push(format!("{}: {e:#}", cell.label()));
                continue;
            }
            Ok(CellStatus::Pending) => {}
        }
        // Held until this iteration ends: the cell is ours while it trains.
        let _claim = match claim_cell(&cell.dir) {
            Ok(Some(claim)) => claim,
            Ok(None) => {
                busy.push(cell.label());
                say(i, cell, "is being trained by another process, skipping");
                continue;
            }
            Err(e) => {
                say(i, cell, &format!("cannot be claimed: {e:#}"));
                failed.push(format!("{}: {e:#}", cell.label()));
                continue;
            }
        };
        // Another process may have finished it since the status above was read.
        if let Ok(CellStatus::Done(_)) = cell_status(cell) {
            skipped += 1;
            pending -= 1;
            say(i, cell, "was finished by another process, skipping");
            continue;
        }
        match reuse_twin(&args.root, &plan.grid.name, cell) {
            Ok(Some(r)) => {
                skipped += 1;
                pending -= 1;
                let source = r.reused_from.as_deref().unwrap_or("?");
                say(
                    i,
                    cell,
                    &format!("is the same run as {source}: result copied"),
                );
                write_reports(&plan, Some(&baselines_dir), pending, &failed)?;
                continue;
            }
            Ok(None) => {}
            Err(e) => say(
                i,
                cell,
                &format!("looking for an identical finished cell failed ({e:#}); training it"),
            ),
        }
        let resumed = resumable(cell);
        let action = if resumed.is_some() {
            "resuming the interrupted"
        } else {
            "training"
        };
        eprintln!(
            "experiment {}: [{}/{total}] {action} {} (max len {}, {} epochs) in {}",
            plan.grid.name,
            i + 1,
            cell.label(),
            cell.options.max_len,
            cell.options.epochs,
            cell.dir.display()
        );
        let cell = &Cell {
            options: resumed.unwrap_or_else(|| cell.options.clone()),
            ..cell.clone()
        };
        match run_cell(&plan.grid.name, cell, args.drop_checkpoints) {
            Ok(r) => {
                ran += 1;
                eprintln!(
                    "experiment {}: {} test accuracy {:.4}, macro-F1 {:.4} ({:.0} s)",
                    plan.grid.name,
                    cell.label(),
                    r.test_accuracy,
                    r.test_macro_f1,
                    r.train_seconds
                );
            }
            Err(e) => {
                eprintln!(
                    "experiment {}: {} failed: {e:#}",
                    plan.grid.name,
                    cell.label()
                );
                failed.push(format!("{}: {e:#}", cell.label()));
            }
        }
        pending -= 1;
        write_reports(&plan, Some(&baselines_dir), pending, &failed)?;
    }
    let results_md = write_reports(&plan, Some(&baselines_dir), pending, &failed)?;
    println!(
        "{}",
        std::fs::read_to_string(&results_md).unwrap_or_default()
    );
    println!(
        "{} cells: {ran} trained, {skipped} already done, {} being trained by another process, {} failed; table in {}",
        total,
        busy.len(),
        failed.len(),
        results_md.display()
    );
    if !failed.is_empty() {
        bail!(
            "{} of {total} cells failed:\n  {}",
            failed.len(),
            failed.join("\n  ")
        );
    }
    Ok(ExperimentOutcome {
        grid_dir: plan.grid_dir.clone(),
        results_md: Some(results_md),
        cells: total,
        ran,
        skipped,
        busy,
        failed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ExperimentArgs,
    }

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("corefocus-expt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn args(grid: &str, root: &Path) -> ExperimentArgs {
        ExperimentArgs {
            root: root.to_path_buf(),
            ..ExperimentArgs::new(grid, Path::new("models/all-MiniLM-L6-v2"))
        }
    }

    fn names(plan: &Plan, dataset: &str, seed: u64) -> Vec<String> {
        plan.cells
            .iter()
            .filter(|c| c.dataset == dataset && c.seed == seed)
            .map(|c| c.name.clone())
            .collect()
    }

    #[test]
    fn cli_defaults_match_new() {
        let cli = Cli::try_parse_from(["x", "table4", "--model", "m"]).unwrap();
        assert_eq!(cli.args, ExperimentArgs::new("table4", Path::new("m")));
        assert!(Cli::try_parse_from(["x", "table3", "--model", "m"]).is_err());
        let cli = Cli::try_parse_from([
            "x",
            "table2",
            "--model",
            "m",
            "--datasets",
            "a,b",
            "--variants",
            "bert,pfc@L-1:m=16",
            "--seeds",
            "2",
            "--dry-run",
        ])
        .unwrap();
        assert_eq!(cli.args.datasets, Some(vec!["a".into(), "b".into()]));
        assert_eq!(
            cli.args.variants,
            Some(vec!["bert".into(), "pfc@L-1:m=16".into()])
        );
        assert!(cli.args.dry_run && cli.args.seeds == 2);
    }

    #[test]
    fn builtin_grids_expand_to_the_papers_cells() {
        let bert = BertConfig::minilm_l6();
        let root = Path::new("/nonexistent/root");

        let p = plan(&args("table2", root), &bert).unwrap();
        assert_eq!(p.cells.len(), 3 * 7 * 3);
        assert_eq!(
            names(&p, "bbc-news", 2),
            ["bert", "p", "pf", "c-l5", "pfc-l5", "c-l4", "pfc-l4"]
        );
        let c = p
            .cells
            .iter()
            .find(|c| c.dataset == "sst2" && c.name == "pfc-l4" && c.seed == 3)
            .unwrap();
        assert_eq!(c.dir, root.join("table2/sst2/pfc-l4-seed3"));
        assert_eq!(c.options.out, c.dir);
        assert_eq!(c.options.data, Path::new("../shared/data/sst2"));
        assert_eq!(
            (c.options.max_len, c.options.seed, c.options.epochs),
            (64, 3, 3)
        );
        assert_eq!(
            (c.options.lr, c.options.warmup, c.options.batch_size),
            (LrSpec::Fixed(2e-5), 0.1, 16)
        );
        assert_eq!(c.options.new_lr_scale, 1.0, "the paper's grids: one rate");
        assert_eq!(c.options.method.defaults, MethodDefaults::Paper);
        assert_eq!(
            (
                c.settings.variant,
                c.settings.keep_ratio,
                c.settings.combine_layer,
                c.settings.combine_tokens
            ),
            (Variant::Pfc, 0.9, 4, 8)
        );
        let max_len = |d: &str| {
            p.cells
                .iter()
                .find(|c| c.dataset == d)
                .unwrap()
                .options
                .max_len
        };
        assert_eq!((max_len("bbc-news"), max_len("20newsgroups")), (512, 256));
        // Datasets, then seeds, then variants.
        assert_eq!(p.cells[7].label(), "sst2/bert-seed2");

        let p = plan(&args("table4", root), &bert).unwrap();
        assert_eq!(p.grid.sweep, Sweep::KeepRatio);
        assert_eq!(p.cells.len(), 5 * 3);
        assert_eq!(
            names(&p, "bbc-news", 1),
            ["pf-p0.95", "pf-p0.9", "pf-p0.8", "pf-p0.7", "pf-p0.6"]
        );
        assert_eq!(p.cells[4].settings.keep_ratio, 0.6);

        let p = plan(&args("table5", root), &bert).unwrap();
        assert_eq!(
            names(&p, "bbc-news", 1),
            ["pfc-l2", "pfc-l3", "pfc-l4", "pfc-l5", "pfc-l6"]
        );
        assert_eq!(p.cells.len(), 5 * 3);

        let p = plan(&args("table6", root), &bert).unwrap();
        assert_eq!(p.cells.len(), 2 * 4 * 3);
        assert_eq!(
            names(&p, "sst2", 1),
            ["pfc-m4", "pfc-m8", "pfc-m16", "pfc-m32"]
        );
        assert_eq!(p.cells[3].settings.combine_tokens, 32);

        // A 12-layer model gets the paper's layers 11 and 7.
        let p = plan(&args("table2", root), &BertConfig::bert_base()).unwrap();
        assert_eq!(
            names(&p, "sst2", 1),
            ["bert", "p", "pf", "c-l11", "pfc-l11", "c-l7", "pfc-l7"]
        );
    }

    #[test]
    fn overrides_and_bad_specs() {
        let bert = BertConfig::minilm_l6();
        let root = Path::new("r");
        let a = ExperimentArgs {
            datasets: Some(vec!["toy".into()]),
            variants: Some(vec![
                "pfc@L-1:m=16".into(),
                "c@L-1".into(),
                "c@5".into(),
                "PF:p=0.5".into(),
            ]),
            seeds: 2,
            epochs: 1,
            max_len: Some(32),
            max_train_examples: Some(10),
            ..args("table2", root)
        };
        let p = plan(&a, &bert).unwrap();
        // c@L-1 and c@5 are the same cell in a 6-layer model.
        assert_eq!(names(&p, "toy", 1), ["pfc-l5-m16", "c-l5", "pf-p0.5"]);
        assert_eq!(p.cells.len(), 3 * 2);
        let c = &p.cells[0];
        assert_eq!(
            (
                c.options.max_len,
                c.options.epochs,
                c.options.max_train_examples
            ),
            (32, 1, Some(10))
        );
        assert_eq!(
            (c.settings.combine_layer, c.settings.combine_tokens),
            (5, 16)
        );
        assert_eq!(c.dir, root.join("table2/toy/pfc-l5-m16-seed1"));
        // Reports list the built-in grid's rows first, whatever this request covers, so
        // requests for parts of a grid write the same order.
        assert_eq!(
            p.report_datasets,
            ["sst2", "bbc-news", "20newsgroups", "toy"]
        );
        assert_eq!(
            p.report_cells,
            [
                "bert",
                "p",
                "pf",
                "c-l5",
                "pfc-l5",
                "c-l4",
                "pfc-l4",
                "pfc-l5-m16",
                "pf-p0.5"
            ]
        );
        assert_eq!(
            p.request_summary(),
            "datasets toy; cells pfc-l5-m16, c-l5, pf-p0.5; seeds 1-2"
        );
        let one_seed = plan(
            &ExperimentArgs {
                seeds: 1,
                ..a.clone()
            },
            &bert,
        )
        .unwrap();
        assert!(one_seed.request_summary().ends_with("; seed 1"));

        let err = |variants: &[&str]| {
            let a = ExperimentArgs {
                variants: Some(variants.iter().map(|s| s.to_string()).collect()),
                ..args("table2", root)
            };
            format!("{:#}", plan(&a, &bert).unwrap_err())
        };
        assert!(err(&["pfc@7"]).contains("--combine-layer 7"));
        assert!(err(&["bert:p=0.5"]).contains("--keep-ratio"));
        assert!(err(&["pf@3"]).contains("--combine-layer"));
        assert!(err(&["xyz"]).contains("unknown variant"));
        assert!(err(&["pf:q=1"]).contains("unknown setting"));
        assert!(err(&["pfc@L-9"]).contains("L-9"));
        assert!(err(&["pfc@x"]).contains("not a number"));
        let a = ExperimentArgs {
            datasets: Some(vec!["../etc".into()]),
            ..args("table2", root)
        };
        assert!(plan(&a, &bert).is_err());
    }

    /// A finished cell as `run_cell` would record it.
    fn fake_result(cell: &Cell, grid: &str, accuracy: f64) -> CellResult {
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
                loss_curve: vec![crate::train::resume::LossPoint {
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

    fn write_result(r: &CellResult, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join(RESULT_FILE),
            serde_json::to_string_pretty(r).unwrap(),
        )
        .unwrap();
    }

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
        assert!(md.contains("pf [model all-MiniLM-L6-v2"), "{md}");
        assert!(md.contains("train 10"), "{md}");
    }

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
