//! `corefocus bench`: training-step and forward timings, peak memory and FLOPs of several
//! variants measured side by side in one process, interleaved round-robin so machine
//! noise hits all of them alike.

use super::flops::{backward_flops, forward_flops};
use crate::alloc;
use crate::kernels::matmul::Precision;
use crate::model::{checkpoint, Batch, BertConfig, MethodConfig, Mode, Model, ParamStore, Variant};
use crate::rng::Rng;
use crate::train::adamw::{AdamW, AdamWConfig};
use crate::train::step::{train_step, StepBatch, StepSettings};
use crate::variant_spec::VariantSpec;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// Which backbone to time.
#[derive(Clone, Debug)]
pub enum BenchModel {
    MiniLmL6,
    BertBase,
    Dir(PathBuf),
}

impl std::str::FromStr for BenchModel {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "minilm-l6" => BenchModel::MiniLmL6,
            "bert-base" => BenchModel::BertBase,
            dir => {
                let p = PathBuf::from(dir);
                if !p.join("config.json").is_file() {
                    bail!("--config {dir:?}: expected minilm-l6, bert-base or a checkpoint directory with config.json");
                }
                BenchModel::Dir(p)
            }
        })
    }
}

/// Number of layers of a bench backbone.
pub fn layers_of(m: &BenchModel) -> Result<usize> {
    Ok(match m {
        BenchModel::MiniLmL6 => 6,
        BenchModel::BertBase => 12,
        BenchModel::Dir(d) => BertConfig::from_file(&d.join("config.json"))?.num_hidden_layers,
    })
}

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub model: BenchModel,
    pub batch: usize,
    pub seq: usize,
    /// Variant specs ([`crate::variant_spec`]): `bert`, `p`, `pf`, `c`, `pfc`, optionally
    /// `@<combine layer>` and `:<keep ratio>` or `:p=<keep ratio>`, e.g. `pfc@7`, `pf:0.8`.
    pub variants: Vec<String>,
    pub keep_ratio: f32,
    pub warmup: usize,
    pub reps: usize,
    /// Real lengths to draw the examples' lengths from (padding is never kept).
    pub lengths: Option<Vec<usize>>,
    pub seed: u64,
    pub forward: bool,
    /// Time training steps (off: forward passes only).
    pub train: bool,
    /// Accumulate per-kernel time of the timed training steps (or forward passes without).
    pub profile: bool,
    /// Of the forward passes' linear layers (forward-only runs; training is f32).
    pub precision: Precision,
}

/// Parses a variant spec (the grammar of [`crate::variant_spec`], e.g. `pfc@7`, `pf:0.8`,
/// `pf:p=0.8`) into a label (the spec as given) and the paper's method settings for an
/// `layers`-layer model; `keep_ratio` is the ratio of pruning variants that give none.
pub fn parse_variant(spec: &str, layers: usize, keep_ratio: f32) -> Result<(String, MethodConfig)> {
    let m = spec
        .parse::<VariantSpec>()?
        .method_config(layers, keep_ratio)
        .with_context(|| format!("variant {spec:?}"))?;
    Ok((spec.to_string(), m))
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub median_s: f64,
    pub min_s: f64,
    pub samples: usize,
}

fn summarize(v: &[f64]) -> Summary {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let median = if s.is_empty() {
        f64::NAN
    } else if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        0.5 * (s[s.len() / 2 - 1] + s[s.len() / 2])
    };
    Summary {
        median_s: median,
        min_s: s.first().copied().unwrap_or(f64::NAN),
        samples: s.len(),
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct VariantResult {
    pub variant: String,
    pub method: MethodConfig,
    pub train_step: Summary,
    pub forward: Option<Summary>,
    /// Parameters + gradients + AdamW moments of this variant.
    pub persistent_bytes: usize,
    /// Peak of everything else allocated during one training step (activations,
    /// temporaries), above the level before the step.
    pub step_transient_peak_bytes: usize,
    /// persistent + transient: the peak tensor memory of a training step.
    pub peak_tensor_bytes: usize,
    pub forward_flops: u64,
    pub train_flops: u64,
    /// Mean number of key/value tokens per example in the last layer on the embedded tokens.
    pub mean_kept_last_layer: f64,
    pub speedup_train: f64,
    pub speedup_forward: f64,
    /// Ratio to BERT of the step's transient peak (activations and temporaries).
    pub memory_ratio: f64,
    /// Ratio to BERT of persistent + transient.
    pub memory_ratio_total: f64,
    pub flops_ratio: f64,
    /// Training FLOPs over the median step time (NaN without training timings).
    pub train_gflops_per_s: f64,
    /// Forward FLOPs over the median forward time (NaN without forward timings).
    pub forward_gflops_per_s: f64,
    /// Median over the timed rounds of the step's GFLOP/s over the FMA peak measured
    /// just before that round (NaN without training timings or a measured peak).
    pub train_peak_share: f64,
    /// Per-kernel seconds per training step (mean over timed steps), or per forward pass
    /// with `--forward-only`, when profiling.
    pub kernel_seconds: Vec<(String, f64)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub layers: usize,
    pub hidden: usize,
    pub batch: usize,
    pub seq: usize,
    pub lengths: Vec<usize>,
    pub threads: usize,
    /// Whether the pool's threads ran pinned one per CPU ([`crate::kernels::affinity`]).
    pub threads_pinned: bool,
    pub cpu: String,
    pub warmup: usize,
    pub reps: usize,
    pub counting_allocator: bool,
    pub peak_rss_bytes: Option<usize>,
    /// The FMA peak of all threads, measured here ([`super::peak`]).
    pub fma_peak: Option<super::peak::FmaPeak>,
    /// The FMA peak (GFLOP/s) measured before each timed round of training steps.
    pub round_fma_peaks: Vec<f64>,
    /// Of the forward passes' linear layers.
    pub precision: Precision,
    pub results: Vec<VariantResult>,
}

struct Runner {
    label: String,
    model: Model,
    opt: AdamW,
    grads: ParamStore,
    train: Vec<f64>,
    forward: Vec<f64>,
    transient_peak: usize,
    fwd_flops: u64,
    kept_last: f64,
    kernel_seconds: Vec<f64>,
}

impl Runner {
    /// Adds the profiler's per-kernel times of the pass just timed (`seconds` in all);
    /// what no kernel accounts for goes to `other`.
    fn add_kernel_seconds(&mut self, seconds: f64) {
        let snap = crate::profile::snapshot();
        let accounted: f64 = snap.iter().map(|(_, s)| s).sum();
        for (k, (_, secs)) in snap.iter().enumerate() {
            self.kernel_seconds[k] += secs;
        }
        let other = crate::profile::Kernel::Other as usize;
        self.kernel_seconds[other] += (seconds - accounted).max(0.0);
    }
}

fn cpu_features() -> String {
    let mut f = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            f.push("avx512f");
        }
        if is_x86_feature_detected!("avx2") {
            f.push("avx2");
        }
        if is_x86_feature_detected!("fma") {
            f.push("fma");
        }
    }
    f.join("+")
}

/// Runs the benchmark; prints nothing (see `format_table`).
pub fn run(opts: &BenchOptions) -> Result<BenchReport> {
    opts.precision.check_available()?;
    anyhow::ensure!(
        opts.precision != Precision::Int8 || !opts.train,
        "--precision int8 times forward passes only (training is f32 or bf16): add --forward-only",
    );
    let (bert, base, name): (BertConfig, Option<ParamStore>, String) = match &opts.model {
        BenchModel::MiniLmL6 => (BertConfig::minilm_l6(), None, "minilm-l6".into()),
        BenchModel::BertBase => (BertConfig::bert_base(), None, "bert-base".into()),
        BenchModel::Dir(d) => {
            let (c, p) = checkpoint::load_hf_checkpoint(d)?;
            (c, Some(p), d.display().to_string())
        }
    };
    if opts.seq < 2 || opts.seq > bert.max_position_embeddings {
        bail!(
            "--seq {} must be in 2..={}",
            opts.seq,
            bert.max_position_embeddings
        );
    }
    if opts.batch == 0 {
        bail!("--batch must be positive");
    }
    let layers = bert.num_hidden_layers;
    let specs: Vec<(String, MethodConfig)> = opts
        .variants
        .iter()
        .map(|s| parse_variant(s, layers, opts.keep_ratio))
        .collect::<Result<_>>()?;
    let num_labels = 5;

    let (batch, lengths) = random_batch(&bert, opts);
    let labels: Vec<usize> = (0..opts.batch).map(|i| i % num_labels).collect();

    let base_params = match base {
        Some(p) => p,
        None => {
            let m = Model::random(
                bert.clone(),
                MethodConfig::new(Variant::Bert, layers),
                num_labels,
                opts.seed,
            )?;
            m.params
        }
    };
    let mut runners = Vec::new();
    for (label, method) in specs {
        let model = Model::from_bert_params(
            bert.clone(),
            base_params.clone(),
            method,
            num_labels,
            opts.seed,
        )?;
        let opt = AdamW::new(&model.params, AdamWConfig::default());
        let grads = model.params.zeros_like();
        runners.push(Runner {
            label,
            model,
            opt,
            grads,
            train: Vec::new(),
            forward: Vec::new(),
            transient_peak: 0,
            fwd_flops: 0,
            kept_last: 0.0,
            kernel_seconds: vec![0.0; crate::profile::KERNELS.len()],
        });
    }
    drop(base_params);
    if !opts.train {
        // Forward passes only: the weights never change, so they are packed once, as
        // `predict` and `serve` do (`Classifier::load`).
        for r in &mut runners {
            r.model.pack_for_inference(opts.precision);
        }
    }

    let round_fma_peaks = time_rounds(&mut runners, &batch, &labels, opts);
    for r in &mut runners {
        // FLOPs and kept tokens from one untimed evaluation-mode pass (the pruning of a
        // training pass differs only by its dropout noise).
        let (out, _) = r.model.forward(&batch, Mode::Eval, false);
        r.fwd_flops = forward_flops(&r.model, batch.seq, &batch.lengths, &out.trace);
        if let Some(last) = out.trace.layers.last() {
            r.kept_last =
                last.kept.iter().map(|k| k.len()).sum::<usize>() as f64 / opts.batch as f64;
        }
    }

    let mut results: Vec<VariantResult> = runners
        .iter()
        .map(|r| variant_result(r, opts, &round_fma_peaks))
        .collect();
    if let Some(base) = results
        .iter()
        .position(|r| r.method.variant == Variant::Bert)
    {
        let b = results[base].clone();
        for r in &mut results {
            r.speedup_train = b.train_step.median_s / r.train_step.median_s;
            if let (Some(bf), Some(rf)) = (&b.forward, &r.forward) {
                r.speedup_forward = bf.median_s / rf.median_s;
            }
            r.memory_ratio =
                r.step_transient_peak_bytes as f64 / b.step_transient_peak_bytes as f64;
            r.memory_ratio_total = r.peak_tensor_bytes as f64 / b.peak_tensor_bytes as f64;
            r.flops_ratio = r.train_flops as f64 / b.train_flops as f64;
        }
    }
    Ok(BenchReport {
        model: name,
        layers,
        hidden: bert.hidden_size,
        batch: opts.batch,
        seq: batch.seq,
        lengths,
        threads: rayon::current_num_threads(),
        threads_pinned: crate::kernels::affinity::pool_threads_pinned(),
        cpu: cpu_features(),
        warmup: opts.warmup,
        reps: opts.reps,
        counting_allocator: alloc::is_counting(),
        peak_rss_bytes: alloc::peak_rss_bytes(),
        fma_peak: super::peak::fma_peak(),
        round_fma_peaks,
        precision: opts.precision,
        results,
    })
}

/// A batch of random tokens (`[CLS] ... [SEP]`); lengths drawn from `opts.lengths`
/// (capped at `opts.seq`), all `opts.seq` without it.
fn random_batch(bert: &BertConfig, opts: &BenchOptions) -> (Batch, Vec<usize>) {
    // Random tokens; lengths drawn from the given distribution (capped at seq).
    let mut rng = Rng::new(opts.seed);
    let lengths: Vec<usize> = (0..opts.batch)
        .map(|_| match &opts.lengths {
            Some(ls) if !ls.is_empty() => ls[rng.below(ls.len())].clamp(2, opts.seq),
            _ => opts.seq,
        })
        .collect();
    let seqs: Vec<Vec<u32>> = lengths
        .iter()
        .map(|&len| {
            // `% vocab`: a small custom --config vocabulary must not index out of range.
            let vocab = bert.vocab_size as u32;
            (0..len)
                .map(|i| match i {
                    0 => 101 % vocab,
                    _ if i + 1 == len => 102 % vocab,
                    _ => {
                        (1000 + rng.below(bert.vocab_size.saturating_sub(1000).max(1)) as u32)
                            % vocab
                    }
                })
                .collect()
        })
        .collect();
    let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
    (Batch::from_sequences(&refs, 0), lengths)
}

/// One variant's figures from its runner (ratios to bert are filled in later).
fn variant_result(r: &Runner, opts: &BenchOptions, round_peaks: &[f64]) -> VariantResult {
    let persistent = 4 * 4 * r.model.params.numel();
    let train_step = summarize(&r.train);
    let forward = opts.forward.then(|| summarize(&r.forward));
    // --profile times the training steps, or the forward passes where there are none.
    let profiled_passes = if opts.train {
        r.train.len()
    } else {
        r.forward.len()
    }
    .max(1);
    let train_flops = r.fwd_flops + backward_flops(r.fwd_flops);
    let shares: Vec<f64> = r
        .train
        .iter()
        .zip(round_peaks)
        .map(|(dt, peak)| train_flops as f64 / dt / 1e9 / peak)
        .collect();
    let train_peak_share = if shares.is_empty() {
        f64::NAN
    } else {
        summarize(&shares).median_s
    };
    VariantResult {
        train_peak_share,
        variant: r.label.clone(),
        method: r.model.method.clone(),
        train_gflops_per_s: train_flops as f64 / train_step.median_s / 1e9,
        forward_gflops_per_s: forward
            .as_ref()
            .map_or(f64::NAN, |f| r.fwd_flops as f64 / f.median_s / 1e9),
        train_step,
        forward,
        persistent_bytes: persistent,
        step_transient_peak_bytes: r.transient_peak,
        peak_tensor_bytes: persistent + r.transient_peak,
        forward_flops: r.fwd_flops,
        train_flops,
        mean_kept_last_layer: r.kept_last,
        speedup_train: f64::NAN,
        speedup_forward: f64::NAN,
        memory_ratio: f64::NAN,
        memory_ratio_total: f64::NAN,
        flops_ratio: f64::NAN,
        kernel_seconds: if opts.profile {
            crate::profile::KERNELS
                .iter()
                .zip(&r.kernel_seconds)
                .map(|(k, s)| (k.name().to_string(), s / profiled_passes as f64))
                .collect()
        } else {
            Vec::new()
        },
    }
}

/// The interleaved rounds: each round times one training step ([`train_step`], the step
/// `train` runs) of every variant, then, with `opts.forward`, one forward pass of each.
/// Returns the FMA peak measured before each timed round's training steps.
fn time_rounds(
    runners: &mut [Runner],
    batch: &Batch,
    labels: &[usize],
    opts: &BenchOptions,
) -> Vec<f64> {
    let mut round_peaks = Vec::new();
    for rep in 0..opts.warmup + opts.reps {
        let timed = rep >= opts.warmup;
        if timed && opts.train {
            // Each step's share of the FMA peak is taken against the peak of its own
            // moment (all ten ~8 ms trials: the first ones after a step run slow).
            if let Some(p) = super::peak::fma_peak() {
                round_peaks.push(p.gflops);
            }
        }
        for (i, r) in runners.iter_mut().enumerate() {
            if !opts.train {
                break;
            }
            crate::profile::enable(opts.profile && timed);
            crate::profile::reset();
            // Memory is measured on each variant's first step, from an empty activation
            // pool: later steps may reuse another variant's (up to 2x larger) buffers,
            // which would blur its peak; their timings do profit from the warm pool, as
            // training does.
            let measure_memory = rep == 0;
            if measure_memory {
                crate::kernels::workspace::clear();
            }
            alloc::reset_peak();
            let before = alloc::current_bytes();
            let t0 = Instant::now();
            let input = StepBatch {
                batch,
                gold: labels,
                teacher: None,
            };
            let settings = StepSettings {
                seed: opts.seed ^ ((rep * 1000 + i) as u64),
                lr: 1e-5,
                clip: 1.0,
                distill: None,
                poison_logits: false,
                precision: opts.precision,
            };
            // Random weights and labels stay finite for the few steps timed.
            let _ = train_step(&mut r.model, &mut r.opt, &mut r.grads, &input, &settings);
            let dt = t0.elapsed().as_secs_f64();
            crate::profile::enable(false);
            if timed {
                if opts.profile {
                    r.add_kernel_seconds(dt);
                }
                r.train.push(dt);
            }
            if measure_memory {
                r.transient_peak = alloc::peak_bytes().saturating_sub(before);
            }
        }
        if opts.forward {
            // Without training steps, --profile times the forward passes' kernels.
            let profile_forward = opts.profile && !opts.train && timed;
            for r in runners.iter_mut() {
                crate::profile::enable(profile_forward);
                crate::profile::reset();
                let t0 = Instant::now();
                let (out, _) = r.model.forward(batch, Mode::Eval, false);
                std::hint::black_box(&out.logits);
                let dt = t0.elapsed().as_secs_f64();
                crate::profile::enable(false);
                if profile_forward {
                    r.add_kernel_seconds(dt);
                }
                if timed {
                    r.forward.push(dt);
                }
            }
        }
    }
    round_peaks
}

/// `x` with `prec` decimals, `-` where there is no figure (NaN: not timed).
fn num(x: f64, prec: usize) -> String {
    if x.is_finite() {
        format!("{x:.prec$}")
    } else {
        "-".into()
    }
}

/// Seconds to four significant digits and at least three decimals: `1.009`, `0.2893`,
/// `0.008275` (a 1 x 128 forward printed as `0.008` hid every difference between
/// variants), `-` when not measured.
fn secs(x: f64) -> String {
    if x > 0.0 && x.is_finite() {
        let decimals = (3 - x.log10().floor() as i32).clamp(3, 9) as usize;
        num(x, decimals)
    } else {
        num(x, 3)
    }
}

fn ratio(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}x")
    } else {
        "-".into()
    }
}

fn mib(b: usize) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// A Markdown table of the report.
pub fn format_table(r: &BenchReport) -> String {
    let mut s = format!(
        "model {} ({} layers, hidden {}), batch {} x {} tokens, {} threads{}, cpu {}, {} warm-up + {} timed rounds (interleaved), {} linear-layer products\n\n",
        r.model,
        r.layers,
        r.hidden,
        r.batch,
        r.seq,
        r.threads,
        if r.threads_pinned { " (pinned, one per CPU)" } else { "" },
        r.cpu,
        r.warmup,
        r.reps,
        r.precision
    );
    s.push_str("| variant | train step median s | min s | forward median s | min s | activation peak MiB | + params/grads/AdamW MiB | train GFLOP | train GFLOP/s | fwd GFLOP/s | kept (last layer) | speedup train | speedup fwd | activation memory ratio | total memory ratio | FLOPs ratio |\n");
    s.push_str(
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for v in &r.results {
        let (fm, fmin) = v
            .forward
            .as_ref()
            .map_or((f64::NAN, f64::NAN), |f| (f.median_s, f.min_s));
        let trained = v.train_step.samples > 0;
        let mem = |b: usize| if trained { num(mib(b), 0) } else { "-".into() };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} | {} | {} | {:.1} | {} | {} | {} | {} | {:.3} |\n",
            v.variant,
            secs(v.train_step.median_s),
            secs(v.train_step.min_s),
            secs(fm),
            secs(fmin),
            mem(v.step_transient_peak_bytes),
            mem(v.peak_tensor_bytes),
            v.train_flops as f64 / 1e9,
            num(v.train_gflops_per_s, 1),
            num(v.forward_gflops_per_s, 1),
            v.mean_kept_last_layer,
            ratio(v.speedup_train),
            ratio(v.speedup_forward),
            num(v.memory_ratio, 2),
            num(v.memory_ratio_total, 2),
            v.flops_ratio
        ));
    }
    if let Some(super::peak::FmaPeak {
        gflops: end_peak,
        isa,
    }) = r.fma_peak
    {
        // With training rounds, shares are taken against the peak measured just before
        // each round: this host's speed drifts by a fifth within minutes, and the single
        // measurement after the rounds read 162 GFLOP/s in a run whose rounds read
        // 185-188.
        let rounds = &r.round_fma_peaks;
        let peak = if rounds.is_empty() {
            s.push_str(&format!(
                "\nFMA peak measured on {} threads ({isa}): {end_peak:.1} GFLOP/s",
                r.threads
            ));
            end_peak
        } else {
            let (lo, hi) = rounds.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &p| {
                (lo.min(p), hi.max(p))
            });
            let median = summarize(rounds).median_s;
            s.push_str(&format!(
                "\nFMA peak measured on {} threads ({isa}) before each timed round: median \
                 {median:.1} GFLOP/s ({lo:.1}-{hi:.1}; {end_peak:.1} after the rounds)",
                r.threads
            ));
            median
        };
        let best = |f: fn(&VariantResult) -> f64| {
            r.results
                .iter()
                .map(f)
                .filter(|x| x.is_finite())
                .fold(f64::NAN, f64::max)
        };
        let share = best(|v| v.train_peak_share);
        if share.is_finite() {
            s.push_str(&format!(
                "; best training step {:.0}% of it (the median over rounds of each step \
                 against its round's peak)",
                100.0 * share
            ));
        } else {
            let g = best(|v| v.train_gflops_per_s);
            if g.is_finite() {
                s.push_str(&format!(
                    "; best training step {:.0}% of it",
                    100.0 * g / peak
                ));
            }
        }
        let g = best(|v| v.forward_gflops_per_s);
        if g.is_finite() {
            s.push_str(&format!("; best forward {:.0}% of it", 100.0 * g / peak));
        }
        s.push_str(" (FLOPs: the matrix products, method.md)");
        if r.precision != Precision::F32 {
            // bf16 products run on AMX / AVX512-BF16, int8 on VNNI: not FMA-bound.
            s.push_str(&format!(
                "; the {} products do not run on f32 FMAs, so this share is no efficiency",
                r.precision
            ));
        }
        s.push_str(".\n");
    }
    if r.results.iter().any(|v| !v.kernel_seconds.is_empty()) {
        let per = if r.results.iter().any(|v| v.train_step.samples > 0) {
            "training step"
        } else {
            "forward pass"
        };
        s.push_str(&format!(
            "\nPer-kernel seconds per {per} (mean over timed passes):\n\n| kernel |"
        ));
        for v in &r.results {
            s.push_str(&format!(" {} |", v.variant));
        }
        s.push_str("\n|---|");
        for _ in &r.results {
            s.push_str("---:|");
        }
        s.push('\n');
        for (k, kernel) in crate::profile::KERNELS.iter().enumerate() {
            s.push_str(&format!("| {} |", kernel.name()));
            for v in &r.results {
                let seconds = v.kernel_seconds.get(k).map_or(0.0, |x| x.1);
                s.push_str(&format!(" {} |", secs(seconds)));
            }
            s.push('\n');
        }
    }
    s.push_str("\nactivation peak: the most bytes allocated during one training step (forward, backward, optimizer) above the level before it; + params/grads/AdamW adds the 16 bytes per parameter held throughout.\n");
    if let Some(rss) = r.peak_rss_bytes {
        s.push_str(&format!(
            "peak RSS of the process (all variants together): {:.0} MiB\n",
            mib(rss)
        ));
    }
    if !r.counting_allocator {
        s.push_str("\n(counting allocator not installed: transient memory is 0)\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_keep_four_significant_digits() {
        assert_eq!(secs(1.00912), "1.009");
        assert_eq!(secs(12.3456), "12.346");
        assert_eq!(secs(0.289312), "0.2893");
        assert_eq!(secs(0.0082754), "0.008275");
        assert_eq!(secs(0.000127306), "0.0001273");
        assert_eq!(secs(0.0), "0.000");
        assert_eq!(secs(f64::NAN), "-");
    }

    #[test]
    fn profile_without_training_times_the_forward_passes() {
        let opts = BenchOptions {
            model: BenchModel::MiniLmL6,
            batch: 1,
            seq: 16,
            variants: vec!["bert".into()],
            keep_ratio: 0.9,
            warmup: 0,
            reps: 2,
            lengths: None,
            seed: 1,
            forward: true,
            train: false,
            profile: true,
            precision: Precision::F32,
        };
        let report = run(&opts).unwrap();
        let kernels = &report.results[0].kernel_seconds;
        let linear = kernels.iter().find(|(k, _)| k == "linear (gemm)").unwrap();
        assert!(linear.1 > 0.0, "{kernels:?}");
        let table = format_table(&report);
        assert!(
            table.contains("Per-kernel seconds per forward pass"),
            "{table}"
        );
    }
}
