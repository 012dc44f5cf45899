//! The command line of `corefocus experiment`.

use crate::kernels::matmul::Precision;
use crate::train::options::parse_train_precision;
use std::path::{Path, PathBuf};

/// The built-in grids.
pub const GRIDS: [&str; 5] = ["table2", "table4", "table5", "table6", "recipe"];

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
    /// Replace the grid's variants, comma-separated:
    /// `VARIANT[@LAYER][:p=RATIO][:m=TOKENS][:r=RESIDUAL]`, LAYER a number, L or L-k, `:RATIO`
    /// short for `:p=RATIO` as in bench, RESIDUAL token or group (`train
    /// --combine-residual`) (e.g. bert, pf:p=0.8, pf:0.8, pfc@L-1, pfc@4:m=16, c@L-1:r=group).
    #[arg(long, value_delimiter = ',')]
    pub variants: Option<Vec<String>>,
    /// The recipe grid's `--lr auto` candidates, comma-separated [default: train's
    /// --lr-grid]. Trials of a finished or interrupted search of the same cell over
    /// other candidates are taken over for the rates they share.
    #[arg(long, value_delimiter = ',')]
    pub lr_grid: Option<Vec<f64>>,
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
    /// Arithmetic of the linear layers' products in training (`train --precision`): f32,
    /// or bf16 (mixed precision, CPUs with AMX or AVX512-BF16). Cells trained in bf16 are
    /// named `<cell>-bf16` and compared only with each other.
    #[arg(long, default_value = "f32", value_parser = parse_train_precision)]
    pub precision: Precision,
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
            lr_grid: None,
            seeds: 3,
            epochs: 3,
            max_len: None,
            max_train_examples: None,
            max_eval_examples: None,
            precision: Precision::F32,
            dry_run: false,
            report_only: false,
            drop_checkpoints: false,
            save_every: 25,
            stop_after_steps: None,
        }
    }
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
            "--precision",
            "bf16",
            "--dry-run",
        ])
        .unwrap();
        assert_eq!(cli.args.precision, Precision::Bf16);
        assert!(
            Cli::try_parse_from(["x", "recipe", "--model", "m", "--precision", "int8"]).is_err()
        );
        assert_eq!(cli.args.datasets, Some(vec!["a".into(), "b".into()]));
        assert_eq!(
            cli.args.variants,
            Some(vec!["bert".into(), "pfc@L-1:m=16".into()])
        );
        assert!(cli.args.dry_run && cli.args.seeds == 2);
    }
}
