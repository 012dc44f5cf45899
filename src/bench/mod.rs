//! Measurement: FLOPs, peak memory, timing, and the `corefocus bench` command.

pub mod flops;
pub mod peak;
pub mod run;
pub mod timed;

use crate::kernels::matmul::Precision;
use anyhow::{Context, Result};
use std::path::PathBuf;

/// `corefocus bench`: times training steps and forward passes of several variants side
/// by side on random tokens.
#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// Backbone: minilm-l6, bert-base (random weights; timing does not depend on them) or
    /// a checkpoint directory.
    #[arg(long, default_value = "bert-base")]
    pub config: String,
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    #[arg(long, default_value_t = 512)]
    pub seq: usize,
    /// Comma-separated variants: bert, p, pf, c, pfc; `@L` sets the combine layer (a
    /// number, L or L-k), `:R` (or `:p=R`) the keep ratio and `:m=M` the combination tokens
    /// (`:r=group` the group residual), e.g. `bert,pf,pfc@7,pf:0.7`, as `experiment --variants`. Default: the paper's Table 3 set,
    /// bert, p, pf, c@(L-1), pfc@(L-1), pfc@(7L/12) (c@11, pfc@11, pfc@7 for 12 layers).
    #[arg(long, value_delimiter = ',')]
    pub variant: Vec<String>,
    /// Instead of --variant: bert plus pf at keep ratios 0.95..0.6 (`keep-ratio`, Table 4)
    /// or pfc at every combine layer 2..L (`combine-layer`, Table 5).
    #[arg(long, value_parser = ["keep-ratio", "combine-layer"])]
    pub sweep: Option<String>,
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
    #[arg(long, conflicts_with = "forward_only")]
    pub no_forward: bool,
    /// Time only forward passes (inference latency), no training steps.
    #[arg(long)]
    pub forward_only: bool,
    /// Draw the examples' real lengths from this dataset split file's token counts
    /// (whitespace words + 2, capped at --seq), instead of full-length examples.
    #[arg(long)]
    pub lengths: Option<PathBuf>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Report time per kernel (model-level call sites) of the training steps (with
    /// `--forward-only`: of the forward passes).
    #[arg(long)]
    pub profile: bool,
    /// Arithmetic of the linear layers' products: f32, bf16 (needs Intel AMX or
    /// AVX512-BF16; training steps as `train --precision bf16`) or int8 (needs AVX512-VNNI;
    /// with --forward-only), as `predict --precision`.
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
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
    let model: run::BenchModel = args.config.parse()?;
    let layers = run::layers_of(&model)?;
    let variants = match (args.sweep.as_deref(), args.variant.is_empty()) {
        (Some(_), false) => anyhow::bail!("give either --variant or --sweep, not both"),
        (Some("keep-ratio"), _) => ["bert", "pf:0.95", "pf:0.9", "pf:0.8", "pf:0.7", "pf:0.6"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        (Some(_), _) => std::iter::once("bert".to_string())
            .chain((2..=layers).map(|l| format!("pfc@{l}")))
            .collect(),
        (None, true) => table3_variants(layers),
        (None, false) => args.variant.clone(),
    };
    let opts = run::BenchOptions {
        model,
        batch: args.batch,
        seq: args.seq,
        variants,
        keep_ratio: args.keep_ratio,
        warmup: args.warmup,
        reps: args.reps.max(1),
        lengths,
        seed: args.seed,
        forward: !args.no_forward,
        train: !args.forward_only,
        profile: args.profile,
        precision: args.precision,
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

/// The paper's Table 3 set for an `layers`-layer model: bert, p, pf, c@(L-1), pfc@(L-1),
/// pfc@round(7L/12) (layer 7 of 12: the efficiency-oriented combining layer).
pub fn table3_variants(layers: usize) -> Vec<String> {
    let late = layers.saturating_sub(1).max(2);
    let early = ((7 * layers + 6) / 12).clamp(2, layers);
    let mut v: Vec<String> = ["bert", "p", "pf"].iter().map(|s| s.to_string()).collect();
    v.push(format!("c@{late}"));
    v.push(format!("pfc@{late}"));
    if early != late {
        v.push(format!("pfc@{early}"));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table3_set_matches_the_paper_for_bert_base() {
        assert_eq!(
            table3_variants(12),
            ["bert", "p", "pf", "c@11", "pfc@11", "pfc@7"]
        );
        assert_eq!(
            table3_variants(6),
            ["bert", "p", "pf", "c@5", "pfc@5", "pfc@4"]
        );
    }
}
