//! `corefocus train`'s options: the method flags ([`MethodArgs`]), the run's settings
//! ([`TrainOptions`], also recorded in checkpoints and resume states) and the learning-rate
//! choice ([`LrSpec`]).

use super::adamw::AdamWConfig;
use super::train_loop::LoopSettings;
use crate::data::ReadOptions;
use crate::kernels::matmul::Precision;
use crate::model::{
    BertConfig, CombineAssignment, CombineBlock, CombineInit, CombinePooling, CombineResidual,
    CombineTokenInit, MethodConfig, Pooling, Variant,
};
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The value named `s` (case-insensitive) among `choices`, or an error naming `what` and
/// the accepted names: the method flags' parsers.
fn choose<T: Copy>(s: &str, what: &str, choices: &[(&str, T)]) -> Result<T, String> {
    let lower = s.to_ascii_lowercase();
    match choices.iter().find(|(name, _)| *name == lower) {
        Some(&(_, value)) => Ok(value),
        None => {
            let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
            Err(format!(
                "unknown {what} {s:?} (expected {})",
                names.join(" or ")
            ))
        }
    }
}

fn parse_pooling(s: &str) -> Result<Pooling, String> {
    choose(
        s,
        "pooling",
        &[("mean", Pooling::Mean), ("cls", Pooling::Cls)],
    )
}

fn parse_combine_init(s: &str) -> Result<CombineInit, String> {
    let choices = [("copy", CombineInit::Copy), ("random", CombineInit::Random)];
    choose(s, "combine init", &choices)
}

pub(crate) fn parse_combine_pooling(s: &str) -> Result<CombinePooling, String> {
    let choices = [
        ("mean", CombinePooling::Mean),
        ("counts", CombinePooling::Counts),
        ("counts+tokens", CombinePooling::CountsAndTokens),
    ];
    choose(s, "combine pooling", &choices)
}

fn parse_combine_block(s: &str) -> Result<CombineBlock, String> {
    let choices = [
        ("plain", CombineBlock::Plain),
        ("layer", CombineBlock::Layer),
    ];
    choose(s, "combine block", &choices)
}

/// `--combine-residual` and a variant spec's `r=`.
pub(crate) fn parse_combine_residual(s: &str) -> Result<CombineResidual, String> {
    let choices = [
        ("token", CombineResidual::Token),
        ("group", CombineResidual::Group),
    ];
    choose(s, "combine residual", &choices)
}

/// `--combine-assignment` and a variant spec's `assign=`.
pub(crate) fn parse_combine_assignment(s: &str) -> Result<CombineAssignment, String> {
    let choices = [
        ("hard", CombineAssignment::Hard),
        ("soft", CombineAssignment::Soft),
        ("attend", CombineAssignment::Attend),
    ];
    choose(s, "combine assignment", &choices)
}

fn parse_combine_token_init(s: &str) -> Result<CombineTokenInit, String> {
    let choices = [
        ("normal", CombineTokenInit::Normal),
        ("vocab", CombineTokenInit::Vocab),
    ];
    choose(s, "combine token init", &choices)
}

/// `--precision` of `train`: f32 or bf16 (int8 has no training arithmetic).
pub(crate) fn parse_train_precision(s: &str) -> Result<Precision, String> {
    let choices = [("f32", Precision::F32), ("bf16", Precision::Bf16)];
    choose(s, "training precision", &choices)
}

fn parse_variant(s: &str) -> Result<Variant, String> {
    s.parse::<Variant>().map_err(|e| e.to_string())
}

/// `--lr`: a fixed peak learning rate, or `auto`: the candidate of `--lr-grid` with the
/// lowest validation loss after a short trial run each ([`search_lr`](super::lr_search::search_lr)). Written as a
/// number or `"auto"` in `corefocus.json`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LrSpec {
    Auto,
    Fixed(f64),
}

impl std::fmt::Display for LrSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LrSpec::Auto => f.write_str("auto"),
            LrSpec::Fixed(x) => write!(f, "{x:e}"),
        }
    }
}

impl std::str::FromStr for LrSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(LrSpec::Auto);
        }
        s.parse::<f64>()
            .map(LrSpec::Fixed)
            .map_err(|_| format!("{s:?} is neither a number nor auto"))
    }
}

impl Serialize for LrSpec {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        match self {
            LrSpec::Auto => ser.serialize_str("auto"),
            LrSpec::Fixed(x) => ser.serialize_f64(*x),
        }
    }
}

impl<'de> Deserialize<'de> for LrSpec {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(de)? {
            Raw::Number(x) => Ok(LrSpec::Fixed(x)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// The candidates of `--lr auto` (`--lr-grid`).
pub const DEFAULT_LR_GRID: [f64; 3] = [2e-5, 5e-5, 1e-4];

/// Learning-rate multiplier of newly created parameters (`--new-lr-scale`).
pub const DEFAULT_NEW_LR_SCALE: f64 = 10.0;

/// Where unset method flags take their values from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MethodDefaults {
    /// `MethodConfig::recommended`: the combining recipe of docs/combining.md.
    #[default]
    Recommended,
    /// `MethodConfig::new`: method.md's reference settings (the paper's unscaled logits,
    /// plain mean pooling, N(0, 0.02) combination tokens); runs recorded before the
    /// recipe existed used these.
    Paper,
}

/// Runs recorded before parameter groups existed trained every tensor at `--lr`.
fn one() -> f64 {
    1.0
}

fn paper_defaults() -> MethodDefaults {
    MethodDefaults::Paper
}

/// The method flags; unset ones take the defaults `defaults` names.
#[derive(clap::Args, Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct MethodArgs {
    /// Method variant: bert (baseline), p (ratio pruning), pf (fuzzy pruning), c (token
    /// combining), pfc (fuzzy pruning + combining).
    #[arg(long, default_value = "bert", value_parser = parse_variant)]
    pub variant: Variant,
    /// Defaults of the method settings below: recommended (the combining recipe,
    /// docs/combining.md) or paper (method.md's reference settings).
    #[arg(long = "method-defaults", value_enum, default_value = "recommended")]
    #[serde(default = "paper_defaults")]
    pub defaults: MethodDefaults,
    /// Preservation ratio p in (0, 1] for p/pf/pfc [default: 0.9].
    #[arg(long)]
    pub keep_ratio: Option<f32>,
    /// Examples of at most this many real tokens are not pruned (p/pf/pfc; 0 prunes every
    /// example, as the paper) [default: 64; pruning shorter texts saves little and costs
    /// accuracy].
    #[arg(long)]
    pub prune_min_len: Option<usize>,
    /// 1-based layer replaced by the combining module (c/pfc) [default: 11 of 12, else L-1, at least 2].
    #[arg(long)]
    pub combine_layer: Option<usize>,
    /// Number of combination tokens m (c/pfc) [default: 8].
    #[arg(long)]
    pub combine_tokens: Option<usize>,
    /// Combiner initialisation: copy (from the replaced layer) or random [default: copy].
    #[arg(long, value_parser = parse_combine_init)]
    pub combine_init: Option<CombineInit>,
    /// Initial combination tokens: vocab (embeddings of random vocabulary tokens, at the
    /// scale of real tokens) or normal (N(0, 0.02), the reference's) [default: vocab].
    #[arg(long, value_parser = parse_combine_token_init)]
    pub combine_token_init: Option<CombineTokenInit>,
    /// After the grouping: layer (the replaced layer's LayerNorm and feed-forward block,
    /// as GroupViT) or plain (method.md: straight into the next layer) [default: layer].
    #[arg(long, value_parser = parse_combine_block)]
    pub combine_block: Option<CombineBlock>,
    /// Gumbel noise on the assignment logits during training (true, method.md) or none.
    #[arg(long)]
    pub combine_noise: Option<bool>,
    /// Whether the assignment's gradient reaches the real tokens' states: true (the
    /// straight-through estimator, method.md) or false (the layers before the combiner
    /// learn from the values alone) [default: true].
    #[arg(long)]
    pub combine_key_grad: Option<bool>,
    /// Whether the embedded tokens attend to the combination tokens in the layers before
    /// the combiner: true (method.md) or false (beyond the paper: the combination tokens
    /// read the document without being read by it) [default: true].
    #[arg(long)]
    pub combine_visible: Option<bool>,
    /// Pooling of the m combined tokens: counts (weighted by the tokens each received),
    /// mean (the paper's plain mean) or counts+tokens (beyond the paper: half counts, half
    /// the mean of the real tokens' states entering the combiner) [default: counts].
    #[arg(long, value_parser = parse_combine_pooling)]
    pub combine_pooling: Option<CombinePooling>,
    /// What the combined tokens add their update to: token (the combination token,
    /// method.md) or group (the mean of the tokens assigned to it) [default: token].
    #[arg(long, value_parser = parse_combine_residual)]
    pub combine_residual: Option<CombineResidual>,
    /// How tokens are assigned to the combination tokens: hard (the argmax, straight-
    /// through gradient, method.md), soft (beyond the paper: shared by the assignment
    /// probabilities, exact gradient) or attend (beyond the paper: each combination token
    /// a softmax-weighted mean over all the tokens, as cross-attention) [default: hard].
    #[arg(long, value_parser = parse_combine_assignment)]
    pub combine_assignment: Option<CombineAssignment>,
    /// Assignment heads: each groups the tokens by its own share of the query and key
    /// columns and averages its share of the values, as the replaced layer's attention
    /// has heads (beyond the paper; 1 is method.md's single assignment) [default: 1].
    #[arg(long)]
    pub combine_heads: Option<usize>,
    /// Scale of the combiner's assignment logits [default: 1/sqrt(hidden size /
    /// combine heads); the paper's unscaled logits are 1].
    #[arg(long)]
    pub combine_scale: Option<f32>,
    /// Denominator epsilon of the combiner's weighted mean [default: 1.0].
    #[arg(long)]
    pub assign_eps: Option<f32>,
    /// Pooling without combining: mean (over real tokens) or cls (BERT pooler) [default: mean].
    #[arg(long, value_parser = parse_pooling)]
    pub pooling: Option<Pooling>,
    /// Dropout before the classifier [default: the checkpoint's hidden dropout].
    #[arg(long)]
    pub classifier_dropout: Option<f32>,
    /// Dropout (hidden and attention) from the combiner's layer block on, where the m
    /// combined tokens stand for the document (c/pfc) [default: the checkpoint's].
    #[arg(long)]
    pub combine_dropout: Option<f32>,
}

/// Which variants a method setting applies to.
#[derive(Clone, Copy)]
enum AppliesTo {
    Pruning,
    Combining,
}

/// A setting's flag, its variant-spec key (empty where the spec grammar has none), and
/// whether it was given.
type SettingGiven = (&'static str, &'static str, bool);

/// How a setting is named in an error: as its `train` flag, or as its key in a variant
/// spec (`crate::variant_spec`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spelling {
    Flag,
    Spec,
}

impl MethodArgs {
    /// The settings that apply to some variants only, by the variants they apply to.
    #[rustfmt::skip]
    fn restricted_settings(&self) -> [(AppliesTo, Vec<SettingGiven>); 2] {
        [
            (AppliesTo::Pruning, vec![
                ("--keep-ratio", "p=", self.keep_ratio.is_some()),
                ("--prune-min-len", "", self.prune_min_len.is_some()),
            ]),
            (AppliesTo::Combining, vec![
                ("--combine-layer", "@LAYER", self.combine_layer.is_some()),
                ("--combine-tokens", "m=", self.combine_tokens.is_some()),
                ("--combine-init", "", self.combine_init.is_some()),
                ("--combine-token-init", "", self.combine_token_init.is_some()),
                ("--combine-pooling", "pool=", self.combine_pooling.is_some()),
                ("--combine-residual", "r=", self.combine_residual.is_some()),
                ("--combine-assignment", "assign=", self.combine_assignment.is_some()),
                ("--combine-heads", "heads=", self.combine_heads.is_some()),
                ("--combine-block", "", self.combine_block.is_some()),
                ("--combine-noise", "noise=", self.combine_noise.is_some()),
                ("--combine-key-grad", "kgrad=", self.combine_key_grad.is_some()),
                ("--combine-visible", "visible=", self.combine_visible.is_some()),
                ("--combine-scale", "", self.combine_scale.is_some()),
                ("--assign-eps", "", self.assign_eps.is_some()),
                ("--combine-dropout", "drop=", self.combine_dropout.is_some()),
            ]),
        ]
    }

    /// Flags given for a variant they do not apply to are errors, not silently ignored.
    pub fn check_applicable(&self) -> Result<()> {
        self.check_applicable_as(Spelling::Flag)
    }

    /// [`check_applicable`](Self::check_applicable), naming the settings as `spelling`.
    pub fn check_applicable_as(&self, spelling: Spelling) -> Result<()> {
        let v = self.variant;
        for (applies_to, settings) in self.restricted_settings() {
            let (applies, variants) = match applies_to {
                AppliesTo::Pruning => (v.prunes(), "p, pf and pfc"),
                AppliesTo::Combining => (v.combines(), "c and pfc"),
            };
            for (flag, key, given) in settings {
                let name = match spelling {
                    Spelling::Spec if !key.is_empty() => format!("the setting {key}"),
                    _ => flag.to_string(),
                };
                ensure!(
                    !given || applies,
                    "{name} applies only to variants {variants}, not {}",
                    v.name()
                );
            }
        }
        Ok(())
    }

    /// Sets every given setting on `m` (whether they apply is [`check_applicable`]'s
    /// question; the defaults' own adjustments are [`to_config`]'s).
    ///
    /// [`check_applicable`]: Self::check_applicable
    /// [`to_config`]: Self::to_config
    pub fn apply(&self, m: &mut MethodConfig) -> Result<()> {
        fn set<T: Copy>(given: Option<T>, field: &mut T) {
            if let Some(x) = given {
                *field = x;
            }
        }
        set(self.keep_ratio, &mut m.keep_ratio);
        set(self.prune_min_len, &mut m.prune_min_len);
        set(self.combine_layer, &mut m.combine_layer);
        set(self.combine_tokens, &mut m.combine_tokens);
        set(self.combine_init, &mut m.combine_init);
        set(self.combine_token_init, &mut m.combine_token_init);
        set(self.combine_pooling, &mut m.combine_pooling);
        set(self.combine_block, &mut m.combine_block);
        set(self.combine_residual, &mut m.combine_residual);
        set(self.combine_assignment, &mut m.combine_assignment);
        set(self.combine_heads, &mut m.combine_heads);
        set(self.combine_noise, &mut m.combine_noise);
        set(self.combine_key_grad, &mut m.combine_key_grad);
        set(self.combine_visible, &mut m.combine_visible);
        if let Some(s) = self.combine_scale {
            ensure!(
                s.is_finite() && s > 0.0,
                "--combine-scale {s} must be positive"
            );
            m.combine_scale = s;
        }
        set(self.assign_eps, &mut m.assign_eps);
        set(self.pooling, &mut m.pooling);
        set(self.classifier_dropout, &mut m.classifier_dropout);
        if self.combine_dropout.is_some() {
            m.combine_dropout = self.combine_dropout;
        }
        Ok(())
    }

    /// The method settings for a model of configuration `bert`, validated; flags that do
    /// not apply to the chosen variant are errors rather than silently ignored.
    pub fn to_config(&self, bert: &BertConfig) -> Result<MethodConfig> {
        self.check_applicable()?;
        let mut m = match self.defaults {
            MethodDefaults::Recommended => MethodConfig::recommended(self.variant, bert),
            MethodDefaults::Paper => MethodConfig::new(self.variant, bert.num_hidden_layers),
        };
        m.classifier_dropout = bert.hidden_dropout_prob;
        self.apply(&mut m)?;
        // The recipe scales the logits by the width of one assignment head, unless a
        // scale was given.
        if let (MethodDefaults::Recommended, Some(h), None) =
            (self.defaults, self.combine_heads, self.combine_scale)
        {
            if h > 0 {
                m.combine_scale = MethodConfig::recipe_scale(bert.hidden_size, h);
            }
        }
        m.validate(bert.num_hidden_layers)?;
        m.validate_width(bert.hidden_size)?;
        Ok(m)
    }
}

/// `corefocus train` options; also stored in `corefocus.json` as the run's settings.
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TrainOptions {
    /// HF model directory (config.json, model.safetensors, tokenizer files), or a Hugging
    /// Face hub id (`bert-base-uncased`, `org/name[@revision]`): used from the HF cache,
    /// downloaded into it when missing.
    #[arg(long)]
    pub model: PathBuf,
    /// Dataset directory (train/dev/test .jsonl.gz and labels.txt).
    #[arg(long)]
    pub data: PathBuf,
    /// Output directory: the best checkpoint, metrics.jsonl, test_report.json.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub method: MethodArgs,
    /// Peak learning rate, or auto: the candidate of --lr-grid with the lowest validation
    /// loss after a short trial each (about 1/8 of the run's steps per candidate).
    #[arg(long, default_value = "auto")]
    pub lr: LrSpec,
    /// Candidate peak learning rates of --lr auto.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_LR_GRID)]
    pub lr_grid: Vec<f64>,
    /// Learning rate of newly created parameters (classifier, combination tokens, the
    /// combiner's LayerNorms, a randomly initialised combiner) as a multiple of --lr.
    #[arg(long, default_value_t = DEFAULT_NEW_LR_SCALE)]
    #[serde(default = "one")]
    pub new_lr_scale: f64,
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Training batch size.
    #[arg(long, visible_alias = "batch", default_value_t = 16)]
    pub batch_size: usize,
    /// Tokens per document (truncation), `[CLS]` and `[SEP]` included.
    #[arg(long, default_value_t = 512)]
    pub max_len: usize,
    /// Fraction of all steps used for linear warm-up.
    #[arg(long, default_value_t = 0.1)]
    pub warmup: f64,
    /// Decoupled AdamW weight decay (not applied to biases and LayerNorm weights).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Global gradient-norm clipping threshold (0 disables clipping).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, default_value = "text")]
    pub text_column: String,
    #[arg(long, default_value = "label")]
    pub label_column: String,
    /// Knowledge distillation: a fine-tuned corefocus checkpoint (same labels) whose
    /// logits on the training examples become soft targets (beyond the paper; e.g. a BERT
    /// teacher for a PFC student).
    #[arg(long)]
    pub distill_from: Option<PathBuf>,
    /// Weight of the distillation term: loss = (1 - w) * cross-entropy + w * T^2 * KL.
    #[arg(long, default_value_t = 0.5)]
    pub distill_weight: f64,
    /// Temperature T of the distillation term.
    #[arg(long, default_value_t = 2.0)]
    pub distill_temperature: f64,
    /// Use only this many training examples (a seeded random subset), for quick runs.
    #[arg(long)]
    pub max_train_examples: Option<usize>,
    /// Use only this many dev and test examples (seeded random subsets), for quick runs.
    #[arg(long)]
    pub max_eval_examples: Option<usize>,
    /// Evaluation batch size.
    #[arg(long, default_value_t = 64)]
    pub eval_batch: usize,
    /// Replace an existing output directory (only one that holds corefocus output).
    #[arg(long)]
    pub overwrite: bool,
    /// Continue the interrupted run in --out from its last saved state (`<out>/resume/`);
    /// the other options must be those of the interrupted run.
    #[arg(long)]
    pub resume: bool,
    /// Also save the resume state every N optimizer steps (0: only at epoch ends).
    #[arg(long, default_value_t = 0)]
    pub save_every: u64,
    /// Arithmetic of the linear layers' products in training: f32, or bf16 (mixed
    /// precision: operands rounded to bf16, sums in f32, the weights, optimizer, attention,
    /// LayerNorm and evaluation f32; needs Intel AMX or AVX512-BF16). Faster, less exact:
    /// docs/results.md measures both.
    #[arg(long, default_value = "f32", value_parser = parse_train_precision)]
    pub precision: Precision,
    /// Test only: save the resume state after optimizer step N, then exit with status 3.
    #[arg(long, hide = true)]
    pub stop_after_steps: Option<u64>,
    /// Test only: with `--lr auto`, exit with status 3 once the N-th trial is saved.
    #[arg(long, hide = true)]
    pub stop_after_trials: Option<u64>,
    /// Test only: make the logits (so the loss) NaN at optimizer step N (1-based).
    #[arg(long, hide = true)]
    pub inject_nan_at_step: Option<u64>,
}

/// `corefocus train`'s flags on their own, without the binary name and subcommand: the one
/// parser (same flags, defaults and value checks) for front ends other than the CLI, e.g.
/// the Python package, which passes its keyword arguments as `--key value`.
#[derive(clap::Parser, Clone, Debug)]
#[command(name = "corefocus train", no_binary_name = true)]
pub struct TrainCommand {
    #[command(flatten)]
    pub options: TrainOptions,
}

impl TrainCommand {
    /// Parses `args` (`["--model", "m", "--data", "d", "--out", "o", "--epochs", "2"]`) as
    /// `corefocus train` would.
    pub fn parse_flags<I, T>(args: I) -> Result<TrainOptions, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        <Self as clap::Parser>::try_parse_from(args).map(|c| c.options)
    }
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            model: PathBuf::new(),
            data: PathBuf::new(),
            out: PathBuf::new(),
            method: MethodArgs::default(),
            lr: LrSpec::Auto,
            lr_grid: DEFAULT_LR_GRID.to_vec(),
            new_lr_scale: DEFAULT_NEW_LR_SCALE,
            epochs: 3,
            batch_size: 16,
            max_len: 512,
            warmup: 0.1,
            weight_decay: 0.0,
            clip: 1.0,
            seed: 42,
            text_column: "text".into(),
            label_column: "label".into(),
            distill_from: None,
            distill_weight: 0.5,
            distill_temperature: 2.0,
            max_train_examples: None,
            max_eval_examples: None,
            eval_batch: 64,
            overwrite: false,
            resume: false,
            save_every: 0,
            precision: Precision::F32,
            stop_after_steps: None,
            stop_after_trials: None,
            inject_nan_at_step: None,
        }
    }
}

impl TrainOptions {
    pub fn validate(&self) -> Result<()> {
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if let LrSpec::Fixed(lr) = self.lr {
            ensure!(positive(lr), "--lr {lr} must be positive");
        }
        ensure!(
            !self.lr_grid.is_empty(),
            "--lr-grid: no learning rate given"
        );
        for &lr in &self.lr_grid {
            ensure!(positive(lr), "--lr-grid: {lr} must be positive");
        }
        ensure!(
            positive(self.new_lr_scale),
            "--new-lr-scale {} must be positive",
            self.new_lr_scale
        );
        ensure!(self.epochs >= 1, "--epochs must be at least 1");
        ensure!(self.batch_size >= 1, "--batch-size must be at least 1");
        ensure!(self.eval_batch >= 1, "--eval-batch must be at least 1");
        ensure!(
            self.max_len >= 2,
            "--max-len {} must be at least 2 ([CLS] and [SEP])",
            self.max_len
        );
        ensure!(
            (0.0..=1.0).contains(&self.warmup),
            "--warmup {} must be in [0, 1]",
            self.warmup
        );
        ensure!(
            self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            "--weight-decay {} must be non-negative",
            self.weight_decay
        );
        ensure!(
            self.clip.is_finite() && self.clip >= 0.0,
            "--clip {} must be non-negative",
            self.clip
        );
        ensure!(
            (0.0..=1.0).contains(&self.distill_weight),
            "--distill-weight {} must be in [0, 1]",
            self.distill_weight
        );
        ensure!(
            positive(self.distill_temperature),
            "--distill-temperature {} must be positive",
            self.distill_temperature
        );
        if let Some(n) = self.max_train_examples {
            ensure!(n >= 1, "--max-train-examples must be at least 1");
        }
        if let Some(n) = self.max_eval_examples {
            ensure!(n >= 1, "--max-eval-examples must be at least 1");
        }
        ensure!(
            !(self.resume && self.overwrite),
            "--resume and --overwrite contradict each other: --resume continues the run in --out, \
             --overwrite replaces it"
        );
        for (flag, n) in [
            ("--stop-after-steps", self.stop_after_steps),
            ("--stop-after-trials", self.stop_after_trials),
            ("--inject-nan-at-step", self.inject_nan_at_step),
        ] {
            ensure!(n != Some(0), "{flag} must be at least 1");
        }
        self.method.check_applicable()
    }

    pub fn read_options(&self) -> ReadOptions {
        ReadOptions {
            text_column: Some(self.text_column.clone()),
            label_column: Some(self.label_column.clone()),
        }
    }

    /// The optimizer's settings (the learning rate comes from the schedule).
    pub fn adamw_config(&self) -> AdamWConfig {
        AdamWConfig {
            weight_decay: self.weight_decay,
            ..AdamWConfig::default()
        }
    }

    /// The loop's settings at peak learning rate `lr` (`--lr`, or the one `auto` chose).
    pub fn loop_settings(&self, lr: f64) -> LoopSettings {
        LoopSettings {
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr,
            new_lr_scale: self.new_lr_scale,
            new_params: Vec::new(),
            distill: self
                .distill_from
                .is_some()
                .then_some((self.distill_weight as f32, self.distill_temperature as f32)),
            warmup: self.warmup,
            adamw: self.adamw_config(),
            clip: self.clip,
            seed: self.seed,
            eval_batch: self.eval_batch,
            progress: true,
            precision: self.precision,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_flags_gives_the_cli_defaults_and_errors() {
        let opts =
            TrainCommand::parse_flags(["--model", "m", "--data", "d", "--out", "o"]).unwrap();
        let expected = TrainOptions {
            model: "m".into(),
            data: "d".into(),
            out: "o".into(),
            ..TrainOptions::default()
        };
        assert_eq!(opts, expected);
        let opts = TrainCommand::parse_flags([
            "--model",
            "m",
            "--data",
            "d",
            "--out",
            "o",
            "--variant",
            "pfc",
            "--lr",
            "1e-4",
            "--lr-grid",
            "1e-5,2e-5",
            "--overwrite",
        ])
        .unwrap();
        assert_eq!(opts.method.variant, Variant::Pfc);
        assert_eq!(opts.lr, LrSpec::Fixed(1e-4));
        assert_eq!(opts.lr_grid, vec![1e-5, 2e-5]);
        assert!(opts.overwrite);
        let err = TrainCommand::parse_flags([
            "--model", "m", "--data", "d", "--out", "o", "--epochs", "x",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("--epochs"), "{err}");
        assert!(TrainCommand::parse_flags(["--model", "m"]).is_err());
    }
}
