//! Fine-tuning: options, data preparation and the training loop (method.md, "Training
//! defaults"). The loop itself is generic over [`Trainable`] so it can be tested with a
//! tiny model; [`run_train`] wires it to the BERT classifier, the datasets and the
//! checkpoints.

use super::adamw::{clip_grad_norm, AdamW, AdamWConfig};
use super::api::{
    distillation_loss, load_dataset, load_hf_checkpoint, softmax_cross_entropy, DatasetSplits,
    Example,
};
use super::api::{label_ids, stratified_split, ReadOptions, TextTokenizer};
use super::checkpoint::{load_checkpoint, save_checkpoint, utc_timestamp, CheckpointMeta};
use super::eval::{eval_logits, evaluate, EvalResult};
use super::resume::{self, EpochProgress, LoopPosition, LossPoint, StoppedForTest};
use super::schedule::LinearSchedule;
use crate::model::{
    Batch, BertConfig, CombineBlock, CombineInit, CombinePooling, CombineStats, CombineTokenInit,
    MethodConfig, Mode, Model, ParamStore, Pooling, Variant,
};
use crate::rng::{mix64, Rng};
use crate::util::write_atomic;
use anyhow::{bail, ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Fraction of the training split held out for validation when a dataset has no dev split.
pub const DEV_FRACTION: f64 = 0.2;

/// What the training loop needs from a classifier.
pub trait Trainable {
    /// What `backprop` needs from the forward pass.
    type Tape;
    fn params(&self) -> &ParamStore;
    fn params_mut(&mut self) -> &mut ParamStore;
    fn num_labels(&self) -> usize;
    /// Logits `[batch, num_labels]`, and the tape when `record`.
    fn logits(&self, batch: &Batch, mode: Mode, record: bool) -> (Vec<f32>, Option<Self::Tape>);
    /// Accumulates parameter gradients of the loss whose logit gradient is `dlogits`.
    fn backprop(&self, tape: &Self::Tape, dlogits: &[f32], grads: &mut ParamStore);
    /// Diagnostics of the combining module for a step (its tape and gradients).
    fn combine_stats(&self, _tape: &Self::Tape, _grads: &ParamStore) -> Option<CombineStats> {
        None
    }
}

impl Trainable for Model {
    type Tape = crate::model::Tape;
    fn params(&self) -> &ParamStore {
        &self.params
    }
    fn params_mut(&mut self) -> &mut ParamStore {
        &mut self.params
    }
    fn num_labels(&self) -> usize {
        self.num_labels
    }
    fn logits(&self, batch: &Batch, mode: Mode, record: bool) -> (Vec<f32>, Option<Self::Tape>) {
        let (out, tape) = self.forward(batch, mode, record);
        (out.logits, tape)
    }
    fn backprop(&self, tape: &Self::Tape, dlogits: &[f32], grads: &mut ParamStore) {
        self.backward(tape, dlogits, grads)
    }
    fn combine_stats(&self, tape: &Self::Tape, grads: &ParamStore) -> Option<CombineStats> {
        Model::combine_stats(self, tape, grads)
    }
}

// ------------------------------------------------------------------------------ options

fn parse_pooling(s: &str) -> Result<Pooling, String> {
    match s.to_ascii_lowercase().as_str() {
        "mean" => Ok(Pooling::Mean),
        "cls" => Ok(Pooling::Cls),
        _ => Err(format!("unknown pooling {s:?} (expected mean or cls)")),
    }
}

fn parse_combine_init(s: &str) -> Result<CombineInit, String> {
    match s.to_ascii_lowercase().as_str() {
        "copy" => Ok(CombineInit::Copy),
        "random" => Ok(CombineInit::Random),
        _ => Err(format!(
            "unknown combine init {s:?} (expected copy or random)"
        )),
    }
}

fn parse_combine_pooling(s: &str) -> Result<CombinePooling, String> {
    match s.to_ascii_lowercase().as_str() {
        "mean" => Ok(CombinePooling::Mean),
        "counts" => Ok(CombinePooling::Counts),
        _ => Err(format!(
            "unknown combine pooling {s:?} (expected mean or counts)"
        )),
    }
}

fn parse_combine_block(s: &str) -> Result<CombineBlock, String> {
    match s.to_ascii_lowercase().as_str() {
        "plain" => Ok(CombineBlock::Plain),
        "layer" => Ok(CombineBlock::Layer),
        _ => Err(format!(
            "unknown combine block {s:?} (expected plain or layer)"
        )),
    }
}

fn parse_combine_token_init(s: &str) -> Result<CombineTokenInit, String> {
    match s.to_ascii_lowercase().as_str() {
        "normal" => Ok(CombineTokenInit::Normal),
        "vocab" => Ok(CombineTokenInit::Vocab),
        _ => Err(format!(
            "unknown combine token init {s:?} (expected normal or vocab)"
        )),
    }
}

fn parse_variant(s: &str) -> Result<Variant, String> {
    s.parse::<Variant>().map_err(|e| e.to_string())
}

/// `--lr`: a fixed peak learning rate, or `auto`: the candidate of `--lr-grid` with the
/// lowest validation loss after a short trial run each ([`search_lr`]). Written as a
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MethodDefaults {
    /// `MethodConfig::recommended`: the combining recipe of docs/combining.md.
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
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize, PartialEq)]
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
    /// Pooling of the m combined tokens: counts (weighted by the tokens each received) or
    /// mean (the paper's plain mean) [default: counts].
    #[arg(long, value_parser = parse_combine_pooling)]
    pub combine_pooling: Option<CombinePooling>,
    /// Scale of the combiner's assignment logits [default: 1/sqrt(hidden size); the
    /// paper's unscaled logits are 1].
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
}

impl Default for MethodArgs {
    fn default() -> Self {
        MethodArgs {
            variant: Variant::Bert,
            defaults: MethodDefaults::Recommended,
            keep_ratio: None,
            combine_layer: None,
            combine_tokens: None,
            combine_init: None,
            combine_token_init: None,
            combine_block: None,
            combine_noise: None,
            combine_pooling: None,
            combine_scale: None,
            assign_eps: None,
            pooling: None,
            classifier_dropout: None,
        }
    }
}

impl MethodArgs {
    /// Flags given for a variant they do not apply to are errors, not silently ignored.
    pub fn check_applicable(&self) -> Result<()> {
        let v = self.variant;
        ensure!(
            self.keep_ratio.is_none() || v.prunes(),
            "--keep-ratio applies only to variants p, pf and pfc, not {}",
            v.name()
        );
        let combine_flags = [
            ("--combine-layer", self.combine_layer.is_some()),
            ("--combine-tokens", self.combine_tokens.is_some()),
            ("--combine-init", self.combine_init.is_some()),
            ("--combine-token-init", self.combine_token_init.is_some()),
            ("--combine-pooling", self.combine_pooling.is_some()),
            ("--combine-block", self.combine_block.is_some()),
            ("--combine-noise", self.combine_noise.is_some()),
            ("--combine-scale", self.combine_scale.is_some()),
            ("--assign-eps", self.assign_eps.is_some()),
        ];
        for (flag, given) in combine_flags {
            ensure!(
                !given || v.combines(),
                "{flag} applies only to variants c and pfc, not {}",
                v.name()
            );
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
        if let Some(p) = self.keep_ratio {
            m.keep_ratio = p;
        }
        if let Some(l) = self.combine_layer {
            m.combine_layer = l;
        }
        if let Some(t) = self.combine_tokens {
            m.combine_tokens = t;
        }
        if let Some(i) = self.combine_init {
            m.combine_init = i;
        }
        if let Some(i) = self.combine_token_init {
            m.combine_token_init = i;
        }
        if let Some(p) = self.combine_pooling {
            m.combine_pooling = p;
        }
        if let Some(b) = self.combine_block {
            m.combine_block = b;
        }
        if let Some(n) = self.combine_noise {
            m.combine_noise = n;
        }
        if let Some(s) = self.combine_scale {
            ensure!(
                s.is_finite() && s > 0.0,
                "--combine-scale {s} must be positive"
            );
            m.combine_scale = s;
        }
        if let Some(e) = self.assign_eps {
            m.assign_eps = e;
        }
        if let Some(p) = self.pooling {
            m.pooling = p;
        }
        if let Some(d) = self.classifier_dropout {
            m.classifier_dropout = d;
        }
        m.validate(bert.num_hidden_layers)?;
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
    /// Tokens per document (truncation), [CLS] and [SEP] included.
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
    /// Test only: save the resume state after optimizer step N, then exit with status 3.
    #[arg(long, hide = true)]
    pub stop_after_steps: Option<u64>,
    /// Test only: make the logits (so the loss) NaN at optimizer step N (1-based).
    #[arg(long, hide = true)]
    pub inject_nan_at_step: Option<u64>,
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
            stop_after_steps: None,
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
            adamw: AdamWConfig {
                weight_decay: self.weight_decay,
                ..AdamWConfig::default()
            },
            clip: self.clip,
            seed: self.seed,
            eval_batch: self.eval_batch,
            progress: true,
        }
    }
}

// --------------------------------------------------------------------------- data prep

/// Train / validation / test examples as training uses them.
#[derive(Clone, Debug)]
pub struct ResolvedSplits {
    pub train: Vec<Example>,
    pub dev: Vec<Example>,
    pub test: Option<Vec<Example>>,
    pub labels: Vec<String>,
    /// Where the validation examples come from, for logs and reports.
    pub dev_source: String,
}

/// The dataset's dev split, or (when it has none) a stratified [`DEV_FRACTION`] of its
/// training split chosen by `seed`, the rest staying for training. `eval` uses the same
/// function with the checkpoint's seed, so it sees the same split.
pub fn resolve_splits(ds: DatasetSplits, seed: u64) -> ResolvedSplits {
    let (train, dev, dev_source) = match ds.dev {
        Some(dev) => (ds.train, dev, "the dataset's dev split".to_string()),
        None => {
            let (train, held_out) = stratified_split(ds.train, DEV_FRACTION, seed);
            let source = format!(
                "a stratified {:.0}% of the training split (seed {seed})",
                DEV_FRACTION * 100.0
            );
            (train, held_out, source)
        }
    };
    ResolvedSplits {
        train,
        dev,
        test: ds.test,
        labels: ds.labels,
        dev_source,
    }
}

/// Seed of the quick-run subset of split `split` ("train", "dev" or "test"); `train` and
/// `eval` share it so equal sizes select the same examples.
pub fn subset_seed(seed: u64, split: &str) -> u64 {
    match split {
        "dev" => seed ^ 1,
        "test" => seed ^ 2,
        _ => seed,
    }
}

/// At most `max` examples: a random subset chosen by `seed`, kept in their original order.
pub fn subsample<T>(items: Vec<T>, max: Option<usize>, seed: u64) -> Vec<T> {
    let Some(max) = max else { return items };
    if items.len() <= max {
        return items;
    }
    let mut order: Vec<usize> = (0..items.len()).collect();
    Rng::new(seed).shuffle(&mut order);
    let mut keep = vec![false; items.len()];
    order[..max].iter().for_each(|&i| keep[i] = true);
    items
        .into_iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|(x, _)| x)
        .collect()
}

/// Token ids and class indices of a split.
#[derive(Clone, Debug, Default)]
pub struct EncodedSet {
    pub ids: Vec<Vec<u32>>,
    pub labels: Vec<usize>,
    /// `[len, classes]` logits of a teacher model (`--distill-from`); empty: none.
    pub teacher: Vec<f32>,
}

impl EncodedSet {
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Tokenizes (in parallel, inside the tokenizer) and maps labels to class indices.
pub fn encode_examples(
    tokenizer: &TextTokenizer,
    examples: &[Example],
    labels: &[String],
    max_len: usize,
    what: &str,
) -> Result<EncodedSet> {
    let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
    let ids = tokenizer
        .encode_batch(&texts, max_len)
        .with_context(|| format!("cannot tokenize the {what} examples"))?;
    let labels = label_ids(examples, labels, what)?;
    Ok(EncodedSet {
        ids,
        labels,
        teacher: Vec::new(),
    })
}

// ------------------------------------------------------------------------------- loop

/// The loop's settings (a subset of [`TrainOptions`]).
#[derive(Clone, Debug)]
pub struct LoopSettings {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// Learning-rate multiplier of the tensors named in `new_params`.
    pub new_lr_scale: f64,
    /// Newly created tensors (a parameter group of their own).
    pub new_params: Vec<String>,
    /// Distillation weight and temperature, for a training set with teacher logits.
    pub distill: Option<(f32, f32)>,
    pub warmup: f64,
    pub adamw: AdamWConfig,
    /// 0 disables clipping.
    pub clip: f64,
    pub seed: u64,
    pub eval_batch: usize,
    /// Show a progress bar (indicatif hides it anyway when stderr is not a terminal).
    pub progress: bool,
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    /// Optimizer steps taken so far.
    pub step: u64,
    /// Mean training loss over the epoch's examples.
    pub train_loss: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub val_macro_f1: f64,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    /// Wall time of the epoch, validation included.
    pub seconds: f64,
    /// Real (non-padding) training tokens per second of training-step time.
    pub tokens_per_s: f64,
    /// Mean pre-clipping gradient norm over the epoch's steps.
    pub grad_norm: f64,
    /// Whether this epoch has the lowest validation loss so far (its checkpoint is kept).
    pub best: bool,
    /// Mean training loss per example over every `LOSS_WINDOW` optimizer steps of the
    /// epoch (windows end at multiples of it; the epoch's last may be shorter). Absent in
    /// records written before it was.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loss_curve: Vec<LossPoint>,
}

/// Optimizer steps per point of `EpochRecord::loss_curve` (and per log line).
pub const LOSS_WINDOW: u64 = 10;

/// What the loop reports at the end.
#[derive(Clone, Debug)]
pub struct LoopSummary {
    pub records: Vec<EpochRecord>,
    /// Index into `records` of the best epoch.
    pub best: usize,
    pub steps: u64,
}

/// The dropout / Gumbel seed of optimizer step `step`.
pub fn step_seed(seed: u64, step: u64) -> u64 {
    mix64(seed ^ mix64(step.wrapping_add(0xD1B5_4A32_D192_ED03)))
}

/// Trains `model` on `train`, validating on `dev` after every epoch. `on_epoch` is called
/// with the model and the epoch's record (`best` set when its validation loss is the
/// lowest so far; the caller keeps that checkpoint). Stops with an error on a non-finite
/// loss or gradient norm; the model's parameters are then not updated by that step.
pub fn train_loop<M: Trainable>(
    model: &mut M,
    train: &EncodedSet,
    dev: &EncodedSet,
    labels: &[String],
    pad_id: u32,
    settings: &LoopSettings,
    on_epoch: &mut dyn FnMut(&M, &EpochRecord, &EvalResult) -> Result<()>,
) -> Result<LoopSummary> {
    train_loop_with(
        model,
        train,
        dev,
        labels,
        pad_id,
        settings,
        LoopControl::default(),
        on_epoch,
        &mut |_, _, _| Ok(()),
    )
}

/// Resuming, periodic saving and the test-only failure injections of [`train_loop_with`].
#[derive(Default)]
pub struct LoopControl {
    /// Continue from this position with this optimizer state (the model's parameters
    /// must already be the saved ones).
    pub start: Option<(LoopPosition, AdamW)>,
    /// Call `on_save` every this many optimizer steps too (0: only at epoch ends).
    pub save_every: u64,
    /// After optimizer step N: call `on_save`, then stop with a [`StoppedForTest`] error.
    pub stop_after_steps: Option<u64>,
    /// Test only: make the logits of optimizer step N (1-based) NaN.
    pub inject_nan_at_step: Option<u64>,
}

/// [`train_loop`] that can start from a saved position and calls `on_save` with the model,
/// the loop's position and the optimizer after every epoch (after `on_epoch`) and every
/// `control.save_every` steps, so the caller can save a resume state. A run resumed from a
/// position reaches the same parameters as the uninterrupted run: the batches, dropout
/// seeds and learning rates depend only on the settings, the epoch and the step.
#[allow(clippy::too_many_arguments)]
pub fn train_loop_with<M: Trainable>(
    model: &mut M,
    train: &EncodedSet,
    dev: &EncodedSet,
    labels: &[String],
    pad_id: u32,
    settings: &LoopSettings,
    control: LoopControl,
    on_epoch: &mut dyn FnMut(&M, &EpochRecord, &EvalResult) -> Result<()>,
    on_save: &mut dyn FnMut(&M, &LoopPosition, &AdamW) -> Result<()>,
) -> Result<LoopSummary> {
    ensure!(!train.is_empty(), "the training set is empty");
    ensure!(!dev.is_empty(), "the validation set is empty");
    assert_eq!(model.num_labels(), labels.len(), "model classes vs labels");
    let classes = labels.len();
    let steps_per_epoch = train.len().div_ceil(settings.batch_size) as u64;
    let total_steps = steps_per_epoch * settings.epochs as u64;
    let schedule = LinearSchedule::new(settings.lr, total_steps, settings.warmup);
    let mut grads = model.params().zeros_like();
    let (start, mut opt) = match control.start {
        Some((position, opt)) => {
            let done_in_epoch = position.position.div_ceil(settings.batch_size) as u64;
            ensure!(
                position.epoch <= settings.epochs
                    && position.position <= train.len()
                    && (position.position == train.len()
                        || position.position.is_multiple_of(settings.batch_size))
                    && position.step == position.epoch as u64 * steps_per_epoch + done_in_epoch
                    && opt.step == position.step
                    && position.records.len() == position.epoch,
                "the resume state (epoch {}, step {}, position {}, optimizer step {}) does not fit \
                 this run ({} training examples, batch size {}, {} epochs)",
                position.epoch + 1,
                position.step,
                position.position,
                opt.step,
                train.len(),
                settings.batch_size,
                settings.epochs
            );
            (position, opt)
        }
        None => (
            LoopPosition {
                step: 0,
                epoch: 0,
                position: 0,
                progress: EpochProgress::default(),
                records: Vec::new(),
                best: None,
            },
            AdamW::new(model.params(), settings.adamw),
        ),
    };
    opt.set_lr_scales(|name| {
        if settings.new_params.iter().any(|n| n == name) {
            settings.new_lr_scale
        } else {
            1.0
        }
    });
    let first_epoch = start.epoch;
    let mut step = start.step;
    let mut records = start.records;
    let mut best = start.best;
    let mut resume_at = Some((start.position, start.progress));

    let log_lines = !std::io::IsTerminal::is_terminal(&std::io::stderr());
    for epoch in first_epoch..settings.epochs {
        let epoch_start = Instant::now();
        let mut order: Vec<usize> = (0..train.len()).collect();
        Rng::new(settings.seed.wrapping_add(epoch as u64)).shuffle(&mut order);
        // Mid-epoch on resume: skip the batches already trained on, keep their sums.
        let (skip, mut p) = resume_at.take().unwrap_or_default();

        let bar = if settings.progress {
            let bar = ProgressBar::new(steps_per_epoch);
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} (eta {eta})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        } else {
            ProgressBar::hidden()
        };
        bar.set_prefix(format!("epoch {}/{}", epoch + 1, settings.epochs));
        bar.set_position(skip.div_ceil(settings.batch_size) as u64);

        let mut position = skip;
        for chunk in order[skip..].chunks(settings.batch_size) {
            let step_start = Instant::now();
            let seqs: Vec<&[u32]> = chunk.iter().map(|&i| train.ids[i].as_slice()).collect();
            let gold: Vec<usize> = chunk.iter().map(|&i| train.labels[i]).collect();
            let batch = Batch::from_sequences(&seqs, pad_id);
            let rows = chunk.len();

            let mode = Mode::Train {
                seed: step_seed(settings.seed, step),
            };
            let (mut logits, tape) = model.logits(&batch, mode, true);
            let tape = tape.expect("a forward pass with record=true returns a tape");
            if control.inject_nan_at_step == Some(step + 1) {
                logits[0] = f32::NAN;
            }
            let mut probs = vec![0.0f32; rows * classes];
            let mut dlogits = vec![0.0f32; rows * classes];
            let loss = softmax_cross_entropy(
                &logits,
                rows,
                classes,
                &gold,
                &mut probs,
                Some(&mut dlogits),
            );
            let loss = match settings.distill.filter(|_| !train.teacher.is_empty()) {
                Some((weight, temperature)) => {
                    dlogits.iter_mut().for_each(|g| *g *= 1.0 - weight);
                    let teacher: Vec<f32> = chunk
                        .iter()
                        .flat_map(|&i| train.teacher[i * classes..(i + 1) * classes].to_vec())
                        .collect();
                    let kl = distillation_loss(
                        &logits,
                        &teacher,
                        rows,
                        classes,
                        temperature,
                        weight,
                        &mut dlogits,
                    );
                    (1.0 - weight) * loss + weight * kl
                }
                None => loss,
            };
            if !loss.is_finite() {
                bar.abandon();
                bail!(
                    "non-finite training loss ({loss}) at epoch {}, optimizer step {} of {total_steps}",
                    epoch + 1,
                    step + 1
                );
            }
            grads.fill_zero();
            model.backprop(&tape, &dlogits, &mut grads);
            if let Some(st) = model.combine_stats(&tape, &grads) {
                p.window_combine.add(&st);
                p.window_combine_steps += 1;
            }
            drop(tape);
            let norm = if settings.clip > 0.0 {
                clip_grad_norm(&mut grads, settings.clip)
            } else {
                super::adamw::global_grad_norm(&grads)
            };
            if !norm.is_finite() {
                bar.abandon();
                bail!(
                    "non-finite gradient norm ({norm}) at epoch {}, optimizer step {} of {total_steps}",
                    epoch + 1,
                    step + 1
                );
            }
            p.lr = schedule.lr_at(step);
            opt.step(model.params_mut(), &grads, p.lr);
            step += 1;
            position += rows;

            p.loss_sum += loss as f64 * rows as f64;
            p.seen += rows;
            p.window_loss_sum += loss as f64 * rows as f64;
            p.window_seen += rows;
            if step.is_multiple_of(LOSS_WINDOW) {
                close_loss_window(&mut p, step);
            }
            p.norm_sum += norm;
            p.tokens += batch.lengths.iter().sum::<usize>();
            p.step_seconds += step_start.elapsed().as_secs_f64();
            bar.inc(1);
            let msg = format!(
                "loss {:.4} lr {:.2e} {:.0} tok/s",
                p.loss_sum / p.seen as f64,
                p.lr,
                p.tokens as f64 / p.step_seconds.max(1e-9)
            );
            // Logs (stderr not a terminal) get a plain line every 10 steps instead of a bar.
            if settings.progress && log_lines && step.is_multiple_of(LOSS_WINDOW) {
                eprintln!(
                    "epoch {}/{} step {step}/{total_steps}: {msg}",
                    epoch + 1,
                    settings.epochs
                );
            }
            bar.set_message(msg);

            let stop = control.stop_after_steps == Some(step);
            // The epoch-end save follows the epoch's last step anyway.
            let periodic = control.save_every > 0
                && step.is_multiple_of(control.save_every)
                && position < train.len();
            if stop || periodic {
                let mut progress = p.clone();
                progress.elapsed += epoch_start.elapsed().as_secs_f64();
                let here = LoopPosition {
                    step,
                    epoch,
                    position,
                    progress,
                    records: records.clone(),
                    best,
                };
                on_save(model, &here, &opt)?;
            }
            if stop {
                bar.abandon();
                return Err(StoppedForTest { step }.into());
            }
        }
        bar.finish_and_clear();
        close_loss_window(&mut p, step);

        let val = evaluate(model, dev, labels, pad_id, settings.eval_batch);
        if !val.loss.is_finite() {
            bail!(
                "non-finite validation loss ({}) after epoch {}",
                val.loss,
                epoch + 1
            );
        }
        let is_best = best.is_none_or(|b| val.loss < records[b].val_loss);
        let record = EpochRecord {
            epoch: epoch + 1,
            step,
            train_loss: p.loss_sum / p.seen.max(1) as f64,
            val_loss: val.loss,
            val_accuracy: val.report.accuracy,
            val_macro_f1: val.report.macro_f1,
            lr: p.lr,
            seconds: p.elapsed + epoch_start.elapsed().as_secs_f64(),
            tokens_per_s: p.tokens as f64 / p.step_seconds.max(1e-9),
            grad_norm: p.norm_sum / steps_per_epoch.max(1) as f64,
            best: is_best,
            loss_curve: std::mem::take(&mut p.loss_curve),
        };
        if settings.progress {
            eprintln!(
                "epoch {}/{}: train loss {:.4}, val loss {:.4}, val acc {:.4}, val macro-F1 {:.4}{} ({:.1}s, {:.0} tok/s)",
                record.epoch,
                settings.epochs,
                record.train_loss,
                record.val_loss,
                record.val_accuracy,
                record.val_macro_f1,
                if is_best { ", best so far" } else { "" },
                record.seconds,
                record.tokens_per_s
            );
        }
        records.push(record);
        if is_best {
            best = Some(records.len() - 1);
        }
        on_epoch(model, records.last().expect("just pushed"), &val)?;
        let here = LoopPosition {
            step,
            epoch: epoch + 1,
            position: 0,
            progress: EpochProgress::default(),
            records: records.clone(),
            best,
        };
        on_save(model, &here, &opt)?;
    }
    Ok(LoopSummary {
        best: best.context("no epoch ran")?,
        records,
        steps: step,
    })
}

/// Ends the loss window in progress at `step` (nothing when it is empty).
fn close_loss_window(p: &mut EpochProgress, step: u64) {
    if p.window_seen > 0 {
        p.loss_curve.push(LossPoint {
            step,
            loss: p.window_loss_sum / p.window_seen as f64,
            combine: (p.window_combine_steps > 0)
                .then(|| p.window_combine.mean_of(p.window_combine_steps)),
        });
        p.window_loss_sum = 0.0;
        p.window_seen = 0;
        p.window_combine = CombineStats::default();
        p.window_combine_steps = 0;
    }
}

// ------------------------------------------------------------------------ output files

/// `metrics.jsonl`, rewritten whole (atomically) on every append so it is never torn.
pub struct MetricsLog {
    path: PathBuf,
    lines: Vec<String>,
}

impl MetricsLog {
    pub fn new(path: PathBuf) -> Self {
        MetricsLog {
            path,
            lines: Vec::new(),
        }
    }

    /// Adds a line without writing the file (a resumed run's earlier epochs).
    pub fn push<T: Serialize>(&mut self, record: &T) -> Result<()> {
        self.lines.push(serde_json::to_string(record)?);
        Ok(())
    }

    pub fn append<T: Serialize>(&mut self, record: &T) -> Result<()> {
        self.push(record)?;
        let mut text = self.lines.join("\n");
        text.push('\n');
        write_atomic(&self.path, text.as_bytes())
    }
}

/// Checks, without changing anything, that `out` can receive a new run: missing or empty
/// is fine; a non-empty directory needs `overwrite` and must look like corefocus output
/// (so a typo cannot delete a home directory). Returns whether it must be emptied first.
pub fn check_out_dir(out: &Path, overwrite: bool) -> Result<bool> {
    if !out.exists() {
        return Ok(false);
    }
    ensure!(
        out.is_dir(),
        "--out {} exists and is not a directory",
        out.display()
    );
    let mut entries =
        std::fs::read_dir(out).with_context(|| format!("cannot read {}", out.display()))?;
    if entries.next().is_none() {
        return Ok(false);
    }
    ensure!(
        overwrite,
        "output directory {} is not empty; pass --overwrite to replace it",
        out.display()
    );
    // (`resume/state.json` alone: a run interrupted before its first epoch ended.)
    let ours = ["corefocus.json", "metrics.jsonl", "resume/state.json"]
        .iter()
        .any(|f| out.join(f).exists());
    ensure!(
        ours,
        "output directory {} holds no corefocus.json, metrics.jsonl or resume state, so it does not look like \
         corefocus output; refusing to delete it even with --overwrite",
        out.display()
    );
    Ok(true)
}

/// Makes `out` an empty directory for a new run (see [`check_out_dir`]; with `overwrite`
/// an old run there is deleted) and removes stale temporaries of crashed checkpoint saves.
pub fn prepare_out_dir(out: &Path, overwrite: bool) -> Result<()> {
    if check_out_dir(out, overwrite)? {
        std::fs::remove_dir_all(out).with_context(|| format!("cannot remove {}", out.display()))?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    super::checkpoint::remove_stale_temporaries(out)
}

/// Writes `<out>/test_report.json` style reports.
pub fn report_json(
    split: &str,
    checkpoint: &Path,
    data: &Path,
    result: &EvalResult,
    labels: &[String],
) -> Result<serde_json::Value> {
    Ok(serde_json::json!({
        "split": split,
        "checkpoint": checkpoint.display().to_string(),
        "data": data.display().to_string(),
        "examples": result.predictions.len(),
        "loss": result.loss,
        "accuracy": result.report.accuracy,
        "macro_f1": result.report.macro_f1,
        "micro_f1": result.report.micro_f1,
        "labels": labels,
        "report": serde_json::to_value(&result.report).context("cannot serialise the report")?,
        "created": utc_timestamp(),
    }))
}

// -------------------------------------------------------------------------- the command

/// What `corefocus train` produced.
#[derive(Debug)]
pub struct TrainOutcome {
    /// The peak learning rate trained with (`--lr`, or what `auto` chose).
    pub lr: f64,
    pub records: Vec<EpochRecord>,
    pub best_epoch: usize,
    pub best_val_loss: f64,
    /// Test-set evaluation of the best checkpoint, when the dataset has a test split.
    pub test: Option<(f64, f64, f64)>,
}

/// `corefocus train`: fine-tunes, keeps the best checkpoint in `--out`, evaluates it on
/// the test split if there is one.
pub fn run_train(opts: &TrainOptions) -> Result<TrainOutcome> {
    opts.validate()?;
    let resume_state = if opts.resume {
        let state = resume::read_resume_state(&opts.out)?;
        let differing = resume::differing_options(&state.options, opts)?;
        ensure!(
            differing.is_empty(),
            "--resume: options differ from those of the interrupted run in {}: {}; pass the same options",
            opts.out.display(),
            differing.join("; ")
        );
        Some(state)
    } else {
        // Fail early on an occupied --out, but delete nothing before the inputs have loaded.
        check_out_dir(&opts.out, opts.overwrite)?;
        None
    };
    // `--model` may name a hub model: resolved once to a local directory (the options
    // keep what the user wrote, so `--resume` compares like with like).
    let model_dir = crate::model::hub::resolve_model(&opts.model)?;
    check_model_fits(opts, &model_dir)?;

    let ds = load_dataset(&opts.data, &opts.read_options())
        .with_context(|| format!("cannot load the dataset {}", opts.data.display()))?;
    let mut splits = resolve_splits(ds, opts.seed);
    splits.train = subsample(
        splits.train,
        opts.max_train_examples,
        subset_seed(opts.seed, "train"),
    );
    splits.dev = subsample(
        splits.dev,
        opts.max_eval_examples,
        subset_seed(opts.seed, "dev"),
    );
    let test_seed = subset_seed(opts.seed, "test");
    splits.test = splits
        .test
        .map(|t| subsample(t, opts.max_eval_examples, test_seed));
    let labels = splits.labels.clone();
    ensure!(
        labels.len() >= 2,
        "{}: need at least 2 labels, found {}",
        opts.data.display(),
        labels.len()
    );
    ensure!(
        !splits.dev.is_empty(),
        "{}: the validation set is empty: there is no dev split, and no class of the training \
         split has the 2 examples needed to hold one out",
        opts.data.display()
    );
    warn_missing_classes(&splits.train, &labels);

    let tokenizer = TextTokenizer::from_dir(&model_dir)?;
    let (bert, bert_params) = load_hf_checkpoint(&model_dir)?;
    check_max_len(opts.max_len, &bert, &model_dir.join("config.json"))?;
    ensure!(
        tokenizer.vocab_size() <= bert.vocab_size,
        "{}: the tokenizer has {} tokens but the model only {} embeddings",
        model_dir.display(),
        tokenizer.vocab_size(),
        bert.vocab_size
    );
    let method = opts.method.to_config(&bert)?;
    let build = || {
        Model::from_bert_params(
            bert.clone(),
            bert_params.clone(),
            method.clone(),
            labels.len(),
            opts.seed,
        )
        .with_context(|| format!("cannot build the classifier from {}", model_dir.display()))
    };
    let mut model = build()?;

    let train = encode_examples(&tokenizer, &splits.train, &labels, opts.max_len, "train")?;
    let dev = encode_examples(&tokenizer, &splits.dev, &labels, opts.max_len, "validation")?;
    let mut train = train;
    if let Some(dir) = &opts.distill_from {
        train.teacher = teacher_logits(dir, &splits.train, &labels, opts.eval_batch)?;
    }
    let steps = train.len().div_ceil(opts.batch_size) * opts.epochs;
    eprintln!(
        "corefocus train: variant {}, {} train / {} validation ({}) / {} test examples, {} labels; \
         {} steps, warm-up {}",
        model.method.variant.name(),
        train.len(),
        dev.len(),
        splits.dev_source,
        splits.test.as_ref().map_or(0, |t| t.len()),
        labels.len(),
        steps,
        LinearSchedule::new(1.0, steps as u64, opts.warmup).warmup_steps
    );

    let fingerprint = resume::data_fingerprint(&[&train, &dev]);
    let mut metrics = MetricsLog::new(opts.out.join("metrics.jsonl"));
    let mut kept: Option<(usize, f64)> = None;
    let mut control = LoopControl {
        start: None,
        save_every: opts.save_every,
        stop_after_steps: opts.stop_after_steps,
        inject_nan_at_step: opts.inject_nan_at_step,
    };
    if let Some(state) = resume_state {
        ensure!(
            state.data_fingerprint == fingerprint,
            "--resume: the encoded training or validation data differ from those of the \
             interrupted run in {} (dataset, tokenizer or --max-len changed?)",
            opts.out.display()
        );
        let adamw = opts.loop_settings(0.0).adamw;
        let optimizer = resume::load_resume_tensors(&opts.out, &mut model.params, adamw)?;
        let position = state.loop_position;
        eprintln!(
            "corefocus train: resuming at epoch {}, optimizer step {} of {steps}",
            (position.epoch + 1).min(opts.epochs),
            position.step
        );
        for record in &position.records {
            metrics.push(record)?;
        }
        kept = position
            .best
            .map(|b| (position.records[b].epoch, position.records[b].val_loss));
        control.start = Some((position, optimizer));
        super::checkpoint::remove_stale_temporaries(&opts.out)?;
    } else {
        prepare_out_dir(&opts.out, opts.overwrite)?;
    }
    let pad_id = tokenizer.pad_id();
    let lr = match opts.lr {
        LrSpec::Fixed(lr) => lr,
        LrSpec::Auto => {
            let search = match read_lr_search(&opts.out, opts).filter(|_| opts.resume) {
                Some(search) => search,
                None => {
                    let search = search_lr(opts, &build, &train, &dev, &labels, pad_id)?;
                    write_atomic(
                        &opts.out.join(LR_SEARCH_FILE),
                        serde_json::to_string_pretty(&search)?.as_bytes(),
                    )?;
                    search
                }
            };
            eprintln!(
                "corefocus train: --lr auto chose {:e} ({})",
                search.chosen,
                search.summary()
            );
            search.chosen
        }
    };
    let mut settings = opts.loop_settings(lr);
    settings.new_params = new_param_names(&model);
    let result = train_loop_with(
        &mut model,
        &train,
        &dev,
        &labels,
        pad_id,
        &settings,
        control,
        &mut |m, rec, _| {
            if rec.best {
                let meta = CheckpointMeta::new(
                    labels.clone(),
                    m.method.clone(),
                    opts.max_len,
                    Some(opts.clone()),
                    Some(rec.epoch),
                    Some(rec.val_loss),
                );
                save_checkpoint(&opts.out, m, &tokenizer, &meta)?;
                kept = Some((rec.epoch, rec.val_loss));
            }
            metrics.append(rec)?;
            // The curves are a convenience: a plotting failure must not stop training.
            let (log, curves) = (
                opts.out.join("metrics.jsonl"),
                opts.out.join("training_curves.svg"),
            );
            if let Err(e) = crate::plot::plot_training_curves(&log, &curves) {
                eprintln!("warning: {e:#}");
            }
            Ok(())
        },
        &mut |m, position, optimizer| {
            let state = resume::new_state(position.clone(), opts, &fingerprint);
            resume::save_resume_state(&opts.out, &m.params, optimizer, &state)
        },
    );
    let summary = result.map_err(|e| match kept {
        _ if resume::is_stopped_for_test(&e) => e,
        Some((epoch, loss)) => e.context(format!(
            "training stopped; the last good checkpoint (epoch {epoch}, val loss {loss:.4}) is kept in {}",
            opts.out.display()
        )),
        None => e.context("training stopped before any checkpoint was saved"),
    })?;
    drop(model);

    let best = &summary.records[summary.best];
    let mut outcome = TrainOutcome {
        lr,
        records: summary.records.clone(),
        best_epoch: best.epoch,
        best_val_loss: best.val_loss,
        test: None,
    };
    if let Some(test_examples) = &splits.test {
        // Evaluate what was saved, not what is in memory: the best epoch may be earlier.
        let (best_model, best_tok, meta) = load_checkpoint(&opts.out)?;
        let test = encode_examples(&best_tok, test_examples, &meta.labels, meta.max_len, "test")?;
        let result = evaluate(
            &best_model,
            &test,
            &meta.labels,
            best_tok.pad_id(),
            opts.eval_batch,
        );
        println!("test (best checkpoint, epoch {}):", best.epoch);
        println!("{}", result.report.to_table());
        let json = report_json("test", &opts.out, &opts.data, &result, &meta.labels)?;
        write_atomic(
            &opts.out.join("test_report.json"),
            serde_json::to_string_pretty(&json)?.as_bytes(),
        )?;
        outcome.test = Some((result.loss, result.report.accuracy, result.report.macro_f1));
    }
    // Finished: nothing left to resume.
    resume::remove_resume_state(&opts.out)?;
    Ok(outcome)
}

/// `--distill-from`: the teacher checkpoint's logits on `examples` (`[n, classes]`),
/// tokenized as the teacher was trained.
fn teacher_logits(
    dir: &Path,
    examples: &[Example],
    labels: &[String],
    eval_batch: usize,
) -> Result<Vec<f32>> {
    let (teacher, tok, meta) =
        load_checkpoint(dir).with_context(|| format!("--distill-from {}", dir.display()))?;
    ensure!(
        meta.labels == labels,
        "--distill-from {}: the teacher's labels ({}) are not this dataset's ({})",
        dir.display(),
        meta.labels.join(", "),
        labels.join(", ")
    );
    let set = encode_examples(&tok, examples, labels, meta.max_len, "train")?;
    eprintln!(
        "corefocus train: teacher {} ({}) labels the {} training examples",
        dir.display(),
        teacher.method.variant.name(),
        set.len()
    );
    Ok(eval_logits(&teacher, &set.ids, tok.pad_id(), eval_batch))
}

/// Names of `model`'s newly created tensors (see `names::is_created`).
fn new_param_names(model: &Model) -> Vec<String> {
    model
        .params
        .tensors
        .iter()
        .filter(|t| crate::model::names::is_created(&t.name, &model.method))
        .map(|t| t.name.clone())
        .collect()
}

/// `<out>/lr_search.json`: the trials of `--lr auto` and the rate chosen.
pub const LR_SEARCH_FILE: &str = "lr_search.json";

/// Validation examples a trial of `--lr auto` is scored on (a seeded subset).
const LR_TRIAL_DEV: usize = 1000;

/// One trial of `--lr auto`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LrTrial {
    pub lr: f64,
    /// Infinite when the trial diverged (a non-finite loss).
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub seconds: f64,
}

/// What `--lr auto` did (`<out>/lr_search.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LrSearch {
    pub chosen: f64,
    pub trials: Vec<LrTrial>,
    pub trial_train_examples: usize,
    pub trial_dev_examples: usize,
    pub trial_steps: u64,
    /// The options the search ran with (a resumed run reuses it only when they match).
    pub grid: Vec<f64>,
}

impl LrSearch {
    /// `lr 2e-5: val loss 0.41, lr 5e-5: ...`.
    pub fn summary(&self) -> String {
        self.trials
            .iter()
            .map(|t| format!("lr {:e}: val loss {:.4}", t.lr, t.val_loss))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn read_lr_search(out: &Path, opts: &TrainOptions) -> Option<LrSearch> {
    let text = std::fs::read_to_string(out.join(LR_SEARCH_FILE)).ok()?;
    let search: LrSearch = serde_json::from_str(&text).ok()?;
    (search.grid == opts.lr_grid).then_some(search)
}

/// `--lr auto`: for each candidate of `--lr-grid`, a fresh model trains one short run (a
/// seeded subset of the training split worth about 1/8 of the run's steps, at least 40
/// steps, with the run's warm-up and decay compressed into it) and is scored on up to
/// [`LR_TRIAL_DEV`] validation examples; the lowest validation loss wins (ties: the
/// smaller rate). The test split is never looked at.
pub fn search_lr(
    opts: &TrainOptions,
    build: &dyn Fn() -> Result<Model>,
    train: &EncodedSet,
    dev: &EncodedSet,
    labels: &[String],
    pad_id: u32,
) -> Result<LrSearch> {
    let budget = (train.len() * opts.epochs).div_ceil(8);
    let n_train = budget.max(40 * opts.batch_size).min(train.len());
    let pick = |set: &EncodedSet, n: usize, seed: u64| -> EncodedSet {
        let idx = subsample((0..set.len()).collect(), Some(n), seed);
        let classes = set.teacher.len() / set.len().max(1);
        EncodedSet {
            ids: idx.iter().map(|&i| set.ids[i].clone()).collect(),
            labels: idx.iter().map(|&i| set.labels[i]).collect(),
            teacher: idx
                .iter()
                .flat_map(|&i| set.teacher[i * classes..(i + 1) * classes].iter().copied())
                .collect(),
        }
    };
    let trial_train = pick(train, n_train, opts.seed ^ 0x17A1);
    let trial_dev = pick(dev, LR_TRIAL_DEV, opts.seed ^ 0x17A2);
    let trial_steps = trial_train.len().div_ceil(opts.batch_size) as u64;
    let mut trials = Vec::new();
    for (k, &lr) in opts.lr_grid.iter().enumerate() {
        eprintln!(
            "corefocus train: --lr auto, trial {}/{} at lr {lr:e} ({} training examples, {trial_steps} steps, {} validation examples)",
            k + 1,
            opts.lr_grid.len(),
            trial_train.len(),
            trial_dev.len()
        );
        let start = Instant::now();
        let mut model = build()?;
        let mut settings = opts.loop_settings(lr);
        settings.epochs = 1;
        settings.new_params = new_param_names(&model);
        let outcome = train_loop(
            &mut model,
            &trial_train,
            &trial_dev,
            labels,
            pad_id,
            &settings,
            &mut |_, _, _| Ok(()),
        );
        let (val_loss, val_accuracy) = match outcome {
            Ok(summary) => {
                let r = &summary.records[summary.best];
                (r.val_loss, r.val_accuracy)
            }
            Err(e) => {
                eprintln!("corefocus train: --lr auto, lr {lr:e} diverged: {e:#}");
                (f64::INFINITY, 0.0)
            }
        };
        trials.push(LrTrial {
            lr,
            val_loss,
            val_accuracy,
            seconds: start.elapsed().as_secs_f64(),
        });
    }
    let best = trials
        .iter()
        .filter(|t| t.val_loss.is_finite())
        .min_by(|a, b| {
            a.val_loss
                .total_cmp(&b.val_loss)
                .then(a.lr.total_cmp(&b.lr))
        })
        .context("--lr auto: every trial diverged (non-finite loss); pass a smaller --lr-grid")?;
    Ok(LrSearch {
        chosen: best.lr,
        trials: trials.clone(),
        trial_train_examples: trial_train.len(),
        trial_dev_examples: trial_dev.len(),
        trial_steps,
        grid: opts.lr_grid.clone(),
    })
}

/// Checks `--max-len` and the method flags against the config.json of the (resolved)
/// model directory before the dataset is read (a missing or broken config.json is
/// reported later, when it loads).
fn check_model_fits(opts: &TrainOptions, model_dir: &Path) -> Result<()> {
    ensure!(
        model_dir.is_dir(),
        "checkpoint directory {} does not exist or is not a directory",
        model_dir.display()
    );
    let config_path = model_dir.join("config.json");
    if !config_path.is_file() {
        return Ok(());
    }
    let bert = BertConfig::from_file(&config_path)?;
    check_max_len(opts.max_len, &bert, &config_path)?;
    opts.method.to_config(&bert).map(|_| ())
}

fn check_max_len(max_len: usize, bert: &BertConfig, config_path: &Path) -> Result<()> {
    ensure!(
        max_len <= bert.max_position_embeddings,
        "--max-len {max_len} exceeds the model's {} position embeddings (max_position_embeddings in {})",
        bert.max_position_embeddings,
        config_path.display()
    );
    Ok(())
}

/// A class without training examples cannot be learned. The dataset loader rejects a
/// labels.txt class missing from the training split; a `--max-train-examples` subset that
/// misses a class was asked for, so it only earns a warning.
fn warn_missing_classes(train: &[Example], labels: &[String]) {
    let present: std::collections::HashSet<&str> = train.iter().map(|e| e.label.as_str()).collect();
    let missing: Vec<&str> = labels
        .iter()
        .map(String::as_str)
        .filter(|l| !present.contains(l))
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "warning: no training example of class(es) {} in the training subset; the model \
             cannot learn them",
            missing.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        opts: TrainOptions,
    }

    #[test]
    fn cli_defaults_match_default_impl_and_method_md() {
        let cli = Cli::try_parse_from(["t", "--model", "m", "--data", "d", "--out", "o"]).unwrap();
        let expected = TrainOptions {
            model: "m".into(),
            data: "d".into(),
            out: "o".into(),
            ..TrainOptions::default()
        };
        assert_eq!(cli.opts, expected);
        assert_eq!(expected.lr, LrSpec::Auto);
        assert_eq!(expected.lr_grid, DEFAULT_LR_GRID);
        assert_eq!(expected.method.defaults, MethodDefaults::Recommended);
        assert_eq!(expected.batch_size, 16);
        assert_eq!(expected.warmup, 0.1);
        assert_eq!(expected.clip, 1.0);
        assert_eq!(expected.seed, 42);

        let cli = Cli::try_parse_from([
            "t",
            "--model",
            "m",
            "--data",
            "d",
            "--out",
            "o",
            "--variant",
            "PFC",
            "--keep-ratio",
            "0.7",
            "--combine-layer",
            "4",
            "--combine-init",
            "random",
            "--batch",
            "8",
        ])
        .unwrap();
        assert_eq!(cli.opts.method.variant, Variant::Pfc);
        assert_eq!(cli.opts.method.keep_ratio, Some(0.7));
        assert_eq!(cli.opts.method.combine_init, Some(CombineInit::Random));
        assert_eq!(cli.opts.batch_size, 8);
        assert!(Cli::try_parse_from([
            "t",
            "--model",
            "m",
            "--data",
            "d",
            "--out",
            "o",
            "--variant",
            "x"
        ])
        .is_err());
    }

    #[test]
    fn method_flags_map_onto_config_and_misplaced_flags_are_errors() {
        let bert = BertConfig::minilm_l6();
        let args = MethodArgs {
            variant: Variant::Pfc,
            keep_ratio: Some(0.5),
            combine_layer: Some(4),
            combine_tokens: Some(16),
            ..MethodArgs::default()
        };
        let m = args.to_config(&bert).unwrap();
        assert_eq!(
            (m.keep_ratio, m.combine_layer, m.combine_tokens),
            (0.5, 4, 16)
        );
        assert_eq!(m.classifier_dropout, bert.hidden_dropout_prob);

        let defaults = MethodArgs::default().to_config(&bert).unwrap();
        assert_eq!(defaults, {
            let mut d = MethodConfig::new(Variant::Bert, 6);
            d.classifier_dropout = bert.hidden_dropout_prob;
            d
        });

        let err = MethodArgs {
            variant: Variant::P,
            combine_layer: Some(3),
            ..MethodArgs::default()
        }
        .to_config(&bert)
        .unwrap_err();
        assert!(err.to_string().contains("--combine-layer"), "{err}");
        let err = MethodArgs {
            keep_ratio: Some(0.5),
            ..MethodArgs::default()
        }
        .to_config(&bert)
        .unwrap_err();
        assert!(err.to_string().contains("--keep-ratio"), "{err}");
        // MethodConfig::validate still runs: layer 7 of a 6-layer model.
        let err = MethodArgs {
            variant: Variant::C,
            combine_layer: Some(7),
            ..MethodArgs::default()
        }
        .to_config(&bert)
        .unwrap_err();
        assert!(err.to_string().contains("--combine-layer 7"), "{err}");

        // Combining: the recommended recipe unless the paper's defaults are asked for.
        let pfc = MethodArgs {
            variant: Variant::Pfc,
            ..MethodArgs::default()
        };
        let m = pfc.to_config(&bert).unwrap();
        assert_eq!(
            m,
            MethodConfig {
                classifier_dropout: bert.hidden_dropout_prob,
                ..MethodConfig::recommended(Variant::Pfc, &bert)
            }
        );
        let paper = MethodArgs {
            defaults: MethodDefaults::Paper,
            ..pfc.clone()
        };
        assert_eq!(
            paper.to_config(&bert).unwrap(),
            MethodConfig {
                classifier_dropout: bert.hidden_dropout_prob,
                ..MethodConfig::new(Variant::Pfc, 6)
            }
        );
        let flags = MethodArgs {
            combine_pooling: Some(CombinePooling::Mean),
            combine_noise: Some(false),
            ..paper
        };
        let m = flags.to_config(&bert).unwrap();
        assert_eq!(
            (m.combine_pooling, m.combine_noise),
            (CombinePooling::Mean, false)
        );
        let err = MethodArgs {
            combine_pooling: Some(CombinePooling::Counts),
            ..MethodArgs::default()
        }
        .to_config(&bert)
        .unwrap_err();
        assert!(err.to_string().contains("--combine-pooling"), "{err}");
    }

    #[test]
    fn subsample_is_seeded_and_keeps_order() {
        let items: Vec<usize> = (0..100).collect();
        let a = subsample(items.clone(), Some(10), 7);
        let b = subsample(items.clone(), Some(10), 7);
        assert_eq!(a, b);
        assert_eq!(a.len(), 10);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert_ne!(a, subsample(items.clone(), Some(10), 8));
        assert_eq!(subsample(items.clone(), None, 7), items);
        assert_eq!(subsample(items.clone(), Some(1000), 7), items);
    }

    #[test]
    fn out_dir_preparation_refuses_foreign_directories() {
        let root =
            std::env::temp_dir().join(format!("corefocus-train-prep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let out = root.join("run");
        prepare_out_dir(&out, false).unwrap();
        assert!(out.is_dir());
        prepare_out_dir(&out, false).unwrap(); // empty is fine

        std::fs::write(out.join("notes.txt"), "mine").unwrap();
        let err = prepare_out_dir(&out, false).unwrap_err().to_string();
        assert!(err.contains("--overwrite"), "{err}");
        let err = prepare_out_dir(&out, true).unwrap_err().to_string();
        assert!(err.contains("refusing"), "{err}");
        assert!(out.join("notes.txt").exists());

        std::fs::write(out.join("metrics.jsonl"), "{}\n").unwrap();
        prepare_out_dir(&out, true).unwrap();
        assert!(out.is_dir() && !out.join("notes.txt").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A bag-of-words linear classifier: logits = mean over the tokens of `emb[token]` +
    /// bias. Its backward is exact, so the loop can be checked end to end.
    struct BagOfWords {
        params: ParamStore,
        classes: usize,
        /// Make the loss non-finite from this optimizer step on (forward count).
        poison_after: Option<usize>,
        forwards: std::cell::Cell<usize>,
    }

    impl BagOfWords {
        fn new(vocab: usize, classes: usize) -> Self {
            let mut params = ParamStore::new();
            params.add("emb.weight", &[vocab, classes], vec![0.0; vocab * classes]);
            params.add("classifier.bias", &[classes], vec![0.0; classes]);
            BagOfWords {
                params,
                classes,
                poison_after: None,
                forwards: std::cell::Cell::new(0),
            }
        }
    }

    impl Trainable for BagOfWords {
        type Tape = Batch;
        fn params(&self) -> &ParamStore {
            &self.params
        }
        fn params_mut(&mut self) -> &mut ParamStore {
            &mut self.params
        }
        fn num_labels(&self) -> usize {
            self.classes
        }
        fn logits(&self, batch: &Batch, mode: Mode, record: bool) -> (Vec<f32>, Option<Batch>) {
            let c = self.classes;
            let emb = self.params.data(0);
            let bias = self.params.data(1);
            let mut out = vec![0.0; batch.batch * c];
            for b in 0..batch.batch {
                let len = batch.lengths[b];
                for &tok in &batch.ids[b * batch.seq..b * batch.seq + len] {
                    for k in 0..c {
                        out[b * c + k] += emb[tok as usize * c + k] / len as f32;
                    }
                }
                for k in 0..c {
                    out[b * c + k] += bias[k];
                }
            }
            if matches!(mode, Mode::Train { .. }) {
                let n = self.forwards.get() + 1;
                self.forwards.set(n);
                if self.poison_after.is_some_and(|p| n > p) {
                    out[0] = f32::NAN;
                }
            }
            (out, record.then(|| batch.clone()))
        }
        fn backprop(&self, batch: &Batch, dlogits: &[f32], grads: &mut ParamStore) {
            let c = self.classes;
            for b in 0..batch.batch {
                let len = batch.lengths[b];
                for &tok in &batch.ids[b * batch.seq..b * batch.seq + len] {
                    for k in 0..c {
                        grads.data_mut(0)[tok as usize * c + k] += dlogits[b * c + k] / len as f32;
                    }
                }
                for k in 0..c {
                    grads.data_mut(1)[k] += dlogits[b * c + k];
                }
            }
        }
    }

    /// Documents of random filler tokens 3..20 plus one signal token: 1 for class 0, 2 for
    /// class 1 (ids shaped like tokenizer output: 101-like start and end markers omitted).
    fn toy_set(n: usize, seed: u64) -> EncodedSet {
        let mut rng = Rng::new(seed);
        let mut set = EncodedSet::default();
        for _ in 0..n {
            let label = rng.below(2);
            let len = 3 + rng.below(6);
            let mut ids: Vec<u32> = (0..len).map(|_| 3 + rng.below(17) as u32).collect();
            ids[rng.below(len)] = 1 + label as u32;
            set.ids.push(ids);
            set.labels.push(label);
        }
        set
    }

    fn toy_settings() -> LoopSettings {
        LoopSettings {
            epochs: 4,
            batch_size: 8,
            lr: 0.5,
            new_lr_scale: 1.0,
            new_params: Vec::new(),
            distill: None,
            warmup: 0.1,
            adamw: AdamWConfig::default(),
            clip: 1.0,
            seed: 3,
            eval_batch: 5,
            progress: false,
        }
    }

    #[test]
    fn loop_learns_toy_task_deterministically_and_reports_each_epoch() {
        let labels = vec!["neg".to_string(), "pos".to_string()];
        let (train, dev) = (toy_set(200, 1), toy_set(60, 2));
        let settings = toy_settings();
        let run = || {
            let mut model = BagOfWords::new(20, 2);
            let mut seen = Vec::new();
            let summary = train_loop(
                &mut model,
                &train,
                &dev,
                &labels,
                0,
                &settings,
                &mut |_, rec, val| {
                    assert_eq!(val.predictions.len(), 60);
                    seen.push(rec.clone());
                    Ok(())
                },
            )
            .unwrap();
            (model.params.tensors[0].data.clone(), summary, seen)
        };
        let (params_a, summary, seen) = run();
        let (params_b, _, _) = run();
        assert_eq!(params_a, params_b, "same seed, same parameters");

        assert_eq!(summary.steps, 4 * 25);
        assert_eq!(seen, summary.records);
        assert_eq!(seen.len(), 4);
        assert_eq!(
            seen.iter().map(|r| r.epoch).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert!(seen[0].best);
        let last = &seen[3];
        assert!(
            last.val_accuracy > 0.95,
            "val accuracy {}",
            last.val_accuracy
        );
        assert!(last.train_loss < seen[0].train_loss);
        assert!(
            last.lr > 0.0 && last.lr < 0.5 / 80.0 + 1e-12,
            "final lr {}",
            last.lr
        );
        // `best` marks exactly the running minima of the validation loss.
        let mut min = f64::INFINITY;
        for r in &seen {
            assert_eq!(r.best, r.val_loss < min, "epoch {}", r.epoch);
            min = min.min(r.val_loss);
        }
        assert_eq!(seen[summary.best].val_loss, min);
    }

    #[test]
    fn loop_stops_on_non_finite_loss_without_touching_parameters() {
        let labels = vec!["neg".to_string(), "pos".to_string()];
        let (train, dev) = (toy_set(40, 1), toy_set(10, 2));
        let mut model = BagOfWords::new(20, 2);
        model.poison_after = Some(7); // 5 steps per epoch: fails in epoch 2, step 8
        let mut epochs_reported = 0;
        let mut snapshot = None;
        let err = train_loop(
            &mut model,
            &train,
            &dev,
            &labels,
            0,
            &toy_settings(),
            &mut |m, _, _| {
                epochs_reported += 1;
                snapshot = Some(m.params.tensors[0].data.clone());
                Ok(())
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("non-finite training loss")
                && err.contains("epoch 2")
                && err.contains("step 8"),
            "{err}"
        );
        assert_eq!(epochs_reported, 1);
        // Steps 6 and 7 ran after the epoch-1 snapshot; step 8 updated nothing (no NaNs).
        assert_ne!(snapshot.unwrap(), model.params.tensors[0].data);
        assert!(model.params.tensors[0].data.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn resuming_from_any_step_reaches_the_same_parameters() {
        let labels = vec!["neg".to_string(), "pos".to_string()];
        // 23 examples, batch 8: the last batch of each epoch is short.
        let (train, dev) = (toy_set(23, 1), toy_set(10, 2));
        let settings = toy_settings();
        let (mut records_full, mut full) = (Vec::new(), BagOfWords::new(20, 2));
        train_loop(
            &mut full,
            &train,
            &dev,
            &labels,
            0,
            &settings,
            &mut |_, r, _| {
                records_full.push(r.clone());
                Ok(())
            },
        )
        .unwrap();
        // 3 steps an epoch, loss windows of 10 steps: each epoch closes its window; the
        // fourth also has one ending at step 10.
        let windows: Vec<Vec<u64>> = records_full
            .iter()
            .map(|r| r.loss_curve.iter().map(|p| p.step).collect())
            .collect();
        assert_eq!(windows, [vec![3], vec![6], vec![9], vec![10, 12]]);
        for r in &records_full[..3] {
            assert_eq!(r.loss_curve[0].loss, r.train_loss, "one window = the epoch");
        }
        // Epoch 4: windows of 8 (step 10) and 8 + 7 examples; their weighted mean is the
        // epoch's loss.
        let (a, b) = (records_full[3].loss_curve[0], records_full[3].loss_curve[1]);
        assert!(((a.loss * 8.0 + b.loss * 15.0) / 23.0 - records_full[3].train_loss).abs() < 1e-12);
        let total = 4 * 3;
        for stop in 1..=total {
            // Run until `stop`, keeping what `on_save` is handed there.
            let mut first = BagOfWords::new(20, 2);
            let mut saved = None;
            let control = LoopControl {
                stop_after_steps: Some(stop),
                save_every: 2,
                ..LoopControl::default()
            };
            let err = train_loop_with(
                &mut first,
                &train,
                &dev,
                &labels,
                0,
                &settings,
                control,
                &mut |_, _, _| Ok(()),
                &mut |m, pos, opt| {
                    saved = Some((m.params.clone(), pos.clone(), opt.clone()));
                    Ok(())
                },
            )
            .unwrap_err();
            assert!(resume::is_stopped_for_test(&err), "{err}");
            let (params, position, opt) = saved.unwrap();
            assert_eq!(position.step, stop);
            // Continue in a fresh model from the saved state.
            let mut second = BagOfWords::new(20, 2);
            second.params = params;
            let mut records = position.records.clone();
            let control = LoopControl {
                start: Some((position, opt)),
                ..LoopControl::default()
            };
            let summary = train_loop_with(
                &mut second,
                &train,
                &dev,
                &labels,
                0,
                &settings,
                control,
                &mut |_, r, _| {
                    records.push(r.clone());
                    Ok(())
                },
                &mut |_, _, _| Ok(()),
            )
            .unwrap();
            assert_eq!(summary.steps, total);
            for (a, b) in full.params.tensors.iter().zip(&second.params.tensors) {
                assert!(a.data == b.data, "stop {stop}: {} differs", a.name);
            }
            let strip = |r: &EpochRecord| {
                (
                    r.epoch,
                    r.step,
                    r.train_loss,
                    r.val_loss,
                    r.grad_norm,
                    r.lr,
                    r.best,
                    r.loss_curve.clone(),
                )
            };
            assert_eq!(
                records.iter().map(strip).collect::<Vec<_>>(),
                records_full.iter().map(strip).collect::<Vec<_>>(),
                "stop {stop}"
            );
        }
    }

    #[test]
    fn metrics_log_rewrites_whole_file() {
        let dir = std::env::temp_dir().join(format!("corefocus-metrics-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut log = MetricsLog::new(dir.join("metrics.jsonl"));
        log.append(&serde_json::json!({"epoch": 1})).unwrap();
        log.append(&serde_json::json!({"epoch": 2})).unwrap();
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        assert_eq!(text, "{\"epoch\":1}\n{\"epoch\":2}\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
