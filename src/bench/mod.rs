//! Measurement: FLOPs, peak memory, timing, and the `corefocus bench` command.

pub mod alloc;
pub mod flops;
pub mod run;

use anyhow::{Context, Result};
use std::path::PathBuf;

/// `corefocus bench`: times training steps and forward passes of several variants side
/// by side on random tokens.
#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// Backbone: minilm-l6, bert-base (random weights; timing does not depend on them) or
    /// a checkpoint directory.
    #[arg(long, default_value = "minilm-l6")]
    pub config: String,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 512)]
    pub seq: usize,
    /// Comma-separated variants: bert, p, pf, c, pfc; `@L` sets the combine layer and
    /// `:R` the keep ratio, e.g. `bert,pf,pfc@7,pf:0.7`.
    #[arg(long, value_delimiter = ',', default_value = "bert")]
    pub variant: Vec<String>,
    /// Keep ratio p for the pruning variants without an explicit `:R`.
    #[arg(long, default_value_t = 0.9)]
    pub keep_ratio: f32,
    /// Untimed rounds first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed rounds (each round runs every variant once, round-robin).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Skip the forward-only timings.
    #[arg(long)]
    pub no_forward: bool,
    /// Draw the examples' real lengths from this dataset split file's token counts
    /// (whitespace words + 2, capped at --seq), instead of full-length examples.
    #[arg(long)]
    pub lengths: Option<PathBuf>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Report time per kernel (model-level call sites) of the training steps.
    #[arg(long)]
    pub profile: bool,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also write `<out>.md` and `<out>.json`.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run_bench(args: &BenchArgs) -> Result<run::BenchReport> {
    let lengths = match &args.lengths {
        Some(path) => {
            let ex = crate::data::read_split(path, &crate::data::ReadOptions::default())?;
            Some(
                ex.iter()
                    .map(|e| e.text.split_whitespace().count() + 2)
                    .collect(),
            )
        }
        None => None,
    };
    let opts = run::BenchOptions {
        model: args.config.parse()?,
        batch: args.batch,
        seq: args.seq,
        variants: args.variant.clone(),
        keep_ratio: args.keep_ratio,
        warmup: args.warmup,
        reps: args.reps.max(1),
        lengths,
        seed: args.seed,
        forward: !args.no_forward,
        profile: args.profile,
    };
    let report = run::run(&opts)?;
    let table = run::format_table(&report);
    let json = serde_json::to_string_pretty(&report)?;
    if args.json {
        println!("{json}");
    } else {
        println!("{table}");
    }
    if let Some(out) = &args.out {
        let md = out.with_extension("md");
        let js = out.with_extension("json");
        crate::util::write_atomic(&md, table.as_bytes())
            .with_context(|| format!("writing {}", md.display()))?;
        crate::util::write_atomic(&js, json.as_bytes())
            .with_context(|| format!("writing {}", js.display()))?;
    }
    Ok(report)
}
