//! The grids: the built-in definitions ([`GridSpec`]), and their expansion with the
//! command line's overrides into the cells of a [`Plan`].

use super::args::{ExperimentArgs, GRIDS};
use crate::kernels::matmul::Precision;
use crate::model::{
    BertConfig, CombineAssignment, CombinePooling, CombineResidual, LengthRange, MethodConfig,
};
use crate::train::options::{DEFAULT_LR_GRID, DEFAULT_NEW_LR_SCALE};
use crate::train::TrainOptions;
use crate::train::{LrSpec, MethodArgs, MethodDefaults};
use crate::variant_spec::VariantSpec;
use anyhow::{bail, ensure, Context, Result};
use std::path::PathBuf;

/// Token budget of the paper's datasets (the paper truncates at 512; shorter where the
/// documents are short, to save time).
pub fn default_max_len(dataset: &str) -> usize {
    match dataset {
        "sst2" => 64,
        "20newsgroups" => 256,
        _ => 512,
    }
}

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

/// The cell name of resolved method flags: the variant, then `-l<layer>`, `-p<ratio>`,
/// `-m<tokens>`, `-r<residual>`, `-soft`/`-hard`, `-pool<pooling>`, `-nonoise`, `-nokgrad`, `-h<heads>` for
/// the settings given explicitly (e.g. `pfc-l5`, `pf-p0.8`, `pfc-m16`, `c-l5-rgroup`,
/// `c-l5-soft`, `c-l5-pooltokens`).
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
    match m.combine_residual {
        Some(CombineResidual::Group) => name.push_str("-rgroup"),
        Some(CombineResidual::Token) => name.push_str("-rtoken"),
        None => {}
    }
    match m.combine_assignment {
        Some(CombineAssignment::Soft) => name.push_str("-soft"),
        Some(CombineAssignment::Hard) => name.push_str("-hard"),
        Some(CombineAssignment::Attend) => name.push_str("-attend"),
        None => {}
    }
    match m.combine_pooling {
        Some(CombinePooling::Mean) => name.push_str("-poolmean"),
        Some(CombinePooling::Counts) => name.push_str("-poolcounts"),
        Some(CombinePooling::CountsAndTokens) => name.push_str("-pooltokens"),
        None => {}
    }
    match m.combine_noise {
        Some(false) => name.push_str("-nonoise"),
        Some(true) => name.push_str("-noise"),
        None => {}
    }
    match m.combine_key_grad {
        Some(false) => name.push_str("-nokgrad"),
        Some(true) => name.push_str("-kgrad"),
        None => {}
    }
    match m.combine_visible {
        Some(false) => name.push_str("-hidden"),
        Some(true) => name.push_str("-visible"),
        None => {}
    }
    if let Some(h) = m.combine_heads {
        name.push_str(&format!("-h{h}"));
    }
    if let Some(p) = m.combine_dropout {
        name.push_str(&format!("-drop{p}"));
    }
    name
}

/// A cell's name at a training precision: bf16 cells are `<name>-bf16`, so that they
/// never take over (or resume) the f32 cell's run.
fn precision_cell_name(name: String, precision: Precision) -> String {
    match precision {
        Precision::F32 => name,
        p => format!("{name}-{}", p.name()),
    }
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
    /// Token counts of the dataset's examples: up to max len until
    /// [`crate::experiment::measure_lengths`] has read the data.
    pub lengths: LengthRange,
}

impl Cell {
    /// `<dataset>/<cell>-seed<k>`, for messages.
    pub fn label(&self) -> String {
        format!("{}/{}-seed{}", self.dataset, self.name, self.seed)
    }

    /// The settings the run computes with on its data ([`MethodConfig::effective`]).
    pub fn effective_settings(&self) -> MethodConfig {
        self.settings.effective(self.lengths)
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
    ensure!(
        args.lr_grid.is_none() || grid.recommended,
        "--lr-grid: the {} grid trains at the paper's fixed rate 2e-5; only the recipe grid \
         searches learning rates",
        grid.name
    );
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
        let mut method_args = spec
            .method_args(layers)
            .with_context(|| format!("variant {v:?}"))?;
        if !grid.recommended {
            method_args.defaults = MethodDefaults::Paper;
        }
        let config = method_args
            .to_config(bert)
            .with_context(|| format!("variant {v:?}"))?;
        let name = precision_cell_name(cell_name(&method_args), args.precision);
        if !methods.iter().any(|(n, _, _)| *n == name) {
            methods.push((name, method_args, config));
        }
    }

    let mut report_datasets = builtin.datasets.clone();
    append_missing(&mut report_datasets, &grid.datasets);
    let mut report_cells = Vec::new();
    for v in &builtin.variants {
        // (a built-in variant the model cannot run, e.g. a layer past its depth, simply
        // has no row)
        if let Ok(method_args) = v.parse::<VariantSpec>().and_then(|s| s.method_args(layers)) {
            append_missing(
                &mut report_cells,
                &[precision_cell_name(cell_name(&method_args), args.precision)],
            );
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
                    lr_grid: args
                        .lr_grid
                        .clone()
                        .unwrap_or_else(|| DEFAULT_LR_GRID.to_vec()),
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
                    precision: args.precision,
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
                    lengths: LengthRange::up_to(options.max_len),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::test_support::{args, names};
    use crate::model::Variant;
    use std::path::Path;

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
        // The residual and pooling settings name their cells too.
        let settings = plan(
            &ExperimentArgs {
                variants: Some(vec![
                    "c@L-1:r=group:assign=soft:pool=counts+tokens:noise=false".into(),
                ]),
                ..a.clone()
            },
            &bert,
        )
        .unwrap();
        assert_eq!(
            names(&settings, "toy", 1),
            ["c-l5-rgroup-soft-pooltokens-nonoise"]
        );
        let c = &settings.cells[0].settings;
        assert_eq!(
            (
                c.combine_residual,
                c.combine_assignment,
                c.combine_pooling,
                c.combine_noise
            ),
            (
                CombineResidual::Group,
                CombineAssignment::Soft,
                CombinePooling::CountsAndTokens,
                false
            )
        );
        let of_one = |spec: &str| {
            let args = ExperimentArgs {
                variants: Some(vec![spec.into()]),
                ..a.clone()
            };
            plan(&args, &bert).unwrap()
        };
        // So does the dropout after the combiner.
        let dropout = of_one("pfc@L-1:drop=0");
        assert_eq!(names(&dropout, "toy", 1), ["pfc-l5-drop0"]);
        assert_eq!(dropout.cells[0].settings.combine_dropout, Some(0.0));
        // And whether the embedded tokens see the combination tokens.
        let hidden = of_one("c@L-1:visible=false");
        assert_eq!(names(&hidden, "toy", 1), ["c-l5-hidden"]);
        assert!(!hidden.cells[0].settings.combine_visible);
        // Cells trained in bf16 are cells of their own, in the report's rows too.
        let bf16 = plan(
            &ExperimentArgs {
                precision: Precision::Bf16,
                ..a.clone()
            },
            &bert,
        )
        .unwrap();
        assert_eq!(
            names(&bf16, "toy", 1),
            ["pfc-l5-m16-bf16", "c-l5-bf16", "pf-p0.5-bf16"]
        );
        assert!(bf16
            .cells
            .iter()
            .all(|c| c.options.precision == Precision::Bf16));
        assert_eq!(
            bf16.cells[0].dir,
            root.join("table2/toy/pfc-l5-m16-bf16-seed1")
        );
        assert_eq!(bf16.report_cells[0], "bert-bf16");
        assert!(p
            .cells
            .iter()
            .all(|c| c.options.precision == Precision::F32));
        // ... and never pooled with, or compared against, f32 results.
        let key = |c: &Cell| crate::experiment::result::Recipe::of(&c.options).schedule_key();
        assert!(key(&bf16.cells[0]).ends_with(", bf16 training"));
        assert!(!key(&p.cells[0]).contains("bf16"));
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

    #[test]
    fn lr_grid_applies_to_the_recipe_grid_only() {
        let bert = BertConfig::minilm_l6();
        let root = Path::new("r");
        let p = plan(&args("recipe", root), &bert).unwrap();
        assert!(p
            .cells
            .iter()
            .all(|c| c.options.lr == LrSpec::Auto && c.options.lr_grid == DEFAULT_LR_GRID));
        let wider = ExperimentArgs {
            lr_grid: Some(vec![2e-5, 5e-5, 1e-4, 2e-4]),
            ..args("recipe", root)
        };
        let p = plan(&wider, &bert).unwrap();
        assert!(p
            .cells
            .iter()
            .all(|c| c.options.lr_grid == [2e-5, 5e-5, 1e-4, 2e-4]));
        let paper = ExperimentArgs {
            grid: "table2".into(),
            ..wider
        };
        let err = format!("{:#}", plan(&paper, &bert).unwrap_err());
        assert!(err.contains("--lr-grid") && err.contains("table2"), "{err}");
    }
}
