//! The `corefocus` command line. Each subcommand's options and logic live in the library;
//! this file only parses and dispatches. To add a subcommand, add a variant to `Command`
//! and an arm to `run`.

use clap::{Parser, Subcommand};
use corefocus::alloc::CountingAlloc;
use corefocus::bench::{run_bench, BenchArgs};
use corefocus::demo::{run_demo, DemoArgs};
use corefocus::experiment::{run_experiment, ExperimentArgs};
use corefocus::explain::{run_explain, ExplainArgs};
use corefocus::infer::{run_eval, run_predict, EvalOptions, PredictOptions};
use corefocus::serve::loadgen::{run_loadgen, LoadgenArgs};
use corefocus::serve::{run_serve, ServeArgs};
use corefocus::train::{run_train, TrainOptions};
use std::process::ExitCode;

/// Counts heap bytes so `bench` can report peak tensor memory.
#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[derive(Parser)]
#[command(
    name = "corefocus",
    version,
    about = "BERT document classifiers with fuzzy token pruning and token combining"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fine-tune a classifier; keeps the checkpoint with the lowest validation loss.
    Train(Box<TrainOptions>),
    /// Evaluate a checkpoint on a dataset split; prints the report table.
    Eval(EvalOptions),
    /// Classify texts, one per input line; writes JSON Lines to standard output.
    Predict(PredictOptions),
    /// Time training steps and forward passes of variants side by side (interleaved).
    Bench(BenchArgs),
    /// The built-in default job: fine-tunes all-MiniLM-L6-v2 (fetched once) as BERT and
    /// the method's variants on the shipped SST-2 sample and prints a side-by-side table
    /// (a few minutes); `--offline` uses a synthetic corpus and fetches nothing.
    Demo(DemoArgs),
    /// Show which tokens a checkpoint keeps as keys/values per layer, the fuzzy
    /// breakpoints and the combination-token assignment; `--html` writes a heatmap page.
    Explain(ExplainArgs),
    /// Run a named grid of the paper's tables (datasets x variants x seeds), resumable;
    /// writes one result.json per cell, results.md (mean ± std, delta vs BERT) and plots.
    Experiment(ExperimentArgs),
    /// Serve a checkpoint over HTTP: POST /v1/classify (JSON), GET /v1/model, GET /healthz;
    /// batches concurrent requests; SIGINT/SIGTERM finish the queued work and exit.
    Serve(ServeArgs),
    /// Load generator for `serve`: concurrent classify requests, then requests/s and
    /// latency percentiles.
    Loadgen(LoadgenArgs),
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Train(opts) => run_train(&opts).map(|_| ()),
        Command::Eval(opts) => run_eval(&opts).map(|_| ()),
        Command::Predict(opts) => run_predict(&opts).map(|_| ()),
        Command::Bench(args) => run_bench(&args).map(|_| ()),
        Command::Demo(args) => run_demo(&args).map(|_| ()),
        Command::Explain(args) => run_explain(&args).map(|_| ()),
        Command::Experiment(args) => run_experiment(&args).map(|_| ()),
        Command::Serve(args) => run_serve(&args),
        Command::Loadgen(args) => run_loadgen(&args).map(|_| ()),
    }
}

fn main() -> ExitCode {
    corefocus::util::retain_freed_memory();
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        // The test-only `train --stop-after-steps` has its own status.
        Err(e) if corefocus::train::records::is_stopped_for_test(&e) => {
            eprintln!("{e:#}");
            ExitCode::from(corefocus::train::resume::STOPPED_EXIT_CODE)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
