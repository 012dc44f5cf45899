//! Model configuration: the HF `BertConfig` fields we use, and the method settings
//! (variant, keep ratio, combining layer, ...) that `corefocus.json` stores.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

fn default_ln_eps() -> f64 {
    1e-12
}
fn default_type_vocab() -> usize {
    2
}
fn default_dropout() -> f32 {
    0.1
}
fn default_act() -> String {
    "gelu".to_string()
}
fn default_pad() -> usize {
    0
}
fn default_max_pos() -> usize {
    512
}
fn default_init_range() -> f32 {
    0.02
}

/// The subset of HF `BertConfig` corefocus needs; unknown fields are ignored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f32,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f32,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_pad")]
    pub pad_token_id: usize,
    #[serde(default = "default_init_range")]
    pub initializer_range: f32,
    #[serde(default)]
    pub model_type: Option<String>,
}

impl BertConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let cfg: BertConfig = serde_json::from_str(&text).map_err(|e| {
            // serde names missing fields but not mistyped ones; quote the offending line.
            let line = text
                .lines()
                .nth(e.line().saturating_sub(1))
                .map(str::trim)
                .filter(|l| !l.is_empty() && e.line() > 0)
                .map(|l| {
                    format!(
                        " (line {}: {})",
                        e.line(),
                        l.chars().take(80).collect::<String>()
                    )
                })
                .unwrap_or_default();
            anyhow::anyhow!(
                "{}: not a valid BERT config.json: {e}{line}",
                path.display()
            )
        })?;
        cfg.validate()
            .with_context(|| format!("{}: invalid configuration", path.display()))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let fields = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        for (name, v) in fields {
            if v == 0 {
                bail!("field `{name}` must be positive, got 0");
            }
            if v > 1 << 24 {
                bail!("field `{name}` = {v} is absurdly large");
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            bail!(
                "field `hidden_size` = {} is not divisible by `num_attention_heads` = {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if !matches!(self.hidden_act.as_str(), "gelu" | "gelu_python") {
            bail!(
                "field `hidden_act` = {:?} is not supported (only exact \"gelu\")",
                self.hidden_act
            );
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps < 1.0) {
            bail!(
                "field `layer_norm_eps` = {} is out of range",
                self.layer_norm_eps
            );
        }
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                bail!("field `{name}` = {p} must be in [0, 1)");
            }
        }
        if let Some(mt) = &self.model_type {
            if mt != "bert" {
                bail!("field `model_type` = {mt:?}: only \"bert\" checkpoints are supported");
            }
        }
        if !(self.initializer_range.is_finite() && self.initializer_range >= 0.0) {
            bail!(
                "field `initializer_range` = {} must be a non-negative number",
                self.initializer_range
            );
        }
        if self.pad_token_id >= self.vocab_size {
            bail!(
                "field `pad_token_id` = {} is outside the vocabulary",
                self.pad_token_id
            );
        }
        Ok(())
    }

    /// all-MiniLM-L6-v2's shape (6 layers, hidden 384, 12 heads).
    pub fn minilm_l6() -> Self {
        Self::sized(30522, 384, 6, 12, 1536)
    }

    /// bert-base-uncased's shape (12 layers, hidden 768, 12 heads).
    pub fn bert_base() -> Self {
        Self::sized(30522, 768, 12, 12, 3072)
    }

    pub fn sized(vocab: usize, hidden: usize, layers: usize, heads: usize, ffn: usize) -> Self {
        BertConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: ffn,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            hidden_act: "gelu".into(),
            pad_token_id: 0,
            initializer_range: 0.02,
            model_type: Some("bert".into()),
        }
    }
}

/// Which parts of the method are on.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    #[default]
    Bert,
    P,
    Pf,
    C,
    Pfc,
}

impl Variant {
    pub fn prunes(self) -> bool {
        matches!(self, Variant::P | Variant::Pf | Variant::Pfc)
    }
    pub fn fuzzy(self) -> bool {
        matches!(self, Variant::Pf | Variant::Pfc)
    }
    pub fn combines(self) -> bool {
        matches!(self, Variant::C | Variant::Pfc)
    }
    pub fn name(self) -> &'static str {
        match self {
            Variant::Bert => "bert",
            Variant::P => "p",
            Variant::Pf => "pf",
            Variant::C => "c",
            Variant::Pfc => "pfc",
        }
    }
}

impl std::str::FromStr for Variant {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "bert" => Variant::Bert,
            "p" => Variant::P,
            "pf" => Variant::Pf,
            "c" => Variant::C,
            "pfc" => Variant::Pfc,
            _ => bail!("unknown variant {s:?} (expected bert, p, pf, c or pfc)"),
        })
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    Mean,
    Cls,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CombineInit {
    Copy,
    Random,
}

/// How the m outputs of a combining model become one document vector.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CombinePooling {
    /// The paper's plain mean of the m outputs (method.md, "Head").
    #[default]
    Mean,
    /// Each output weighted by the share of the document's real tokens the combiner
    /// assigned to it (the counts are constants of the backward pass): a token weighs the
    /// same whichever group it joined, and an empty group weighs nothing.
    Counts,
    /// Beyond the paper: half the count-weighted mean of the m outputs, half the plain
    /// mean of the real tokens' states that entered the combiner (layer L_c - 1's
    /// output). The head then also sees every token, as BERT's mean pooling does, at the
    /// cost of one mean per document; the combined tokens add what the later layers made
    /// of the groups.
    #[serde(rename = "counts+tokens")]
    CountsAndTokens,
}

/// What follows the grouping in the combining module.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CombineBlock {
    /// method.md: `c_i' = c_i + W_o u_i` goes straight into the next layer.
    #[default]
    Plain,
    /// The rest of the replaced transformer layer follows, as GroupViT's grouping block
    /// has a LayerNorm and MLP after it: `c_i'` is that layer's attention residual sum,
    /// so its attention LayerNorm, feed-forward block and output LayerNorm (copied from
    /// the replaced layer with `--combine-init copy`) give the next layer inputs of the
    /// distribution it was trained on.
    Layer,
}

/// What the combining module adds its update to: `c'_i = residual_i + W_o u_i + b_o`.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CombineResidual {
    /// method.md: the combination token itself, `c_i`.
    #[default]
    Token,
    /// The mean of the real tokens assigned to i, `r_i = Σ_j HA_ij e_j / (Σ_j HA_ij +
    /// assign_eps)` (straight through, as `u_i`): as in the replaced layer, where each
    /// token's own state is the residual, the group keeps its tokens' states and the
    /// combination token only chooses the group. With count pooling the head then starts
    /// near the mean of the tokens' states, what a mean-pooled checkpoint was trained on.
    /// A group that received no token is `b_o` alone: a constant row if `b_o` is (a
    /// `random` combiner starts with zero biases), on which a following LayerNorm is
    /// singular; with `copy` it is the replaced layer's bias.
    Group,
}

/// How the combiner assigns the real tokens to the combination tokens.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CombineAssignment {
    /// method.md: each token goes to the argmax of `Sim[:, j]` (one-hot `HA`, the
    /// straight-through gradient).
    #[default]
    Hard,
    /// Beyond the paper: each token is shared among the combination tokens by
    /// `Sim[:, j]` itself (`HA := Sim`, as slot attention does), so the forward is
    /// differentiable and the gradient exact; evaluation uses the same soft weights.
    Soft,
    /// Beyond the paper: each combination token attends to all the real tokens, u_i =
    /// Σ_j A_ij v_j with A = the softmax over j (the tokens) of the same logits, as a
    /// cross-attention pooling (Perceiver, Set Transformer's PMA) does: a token that matches
    /// a query strongly can dominate its mean, where a group mean weighs its members
    /// alike. Exact gradient; the argmax over i still gives the groups that the pooling
    /// counts and `explain` read.
    Attend,
}

/// Initial value of the m combination tokens.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CombineTokenInit {
    /// N(0, 0.02), the reference's (norm ~0.4 against ~9 for an embedded token).
    #[default]
    Normal,
    /// The embedding (word + token type 0, then the embedding LayerNorm) of m random
    /// vocabulary tokens: distinct vectors at the scale of real embedded tokens.
    Vocab,
}

fn one() -> usize {
    1
}

fn yes() -> bool {
    true
}

/// Upper bound of `--combine-tokens`: far above any useful m (the paper uses 8 to 64), and
/// small enough that a typo cannot ask for an impossible allocation.
pub const MAX_COMBINE_TOKENS: usize = 4096;

/// Examples of at most this many tokens are not pruned by default: pruning them saves
/// little (at 64 tokens pf's forward needs 0.964 of bert's FLOPs, `corefocus bench --seq
/// 64`) and cost 1.2 accuracy points on SST-2 (docs/combining.md).
pub const RECOMMENDED_PRUNE_MIN_LEN: usize = 64;

/// The shortest and the longest example of a dataset, in tokens after truncation
/// (`[CLS]` and `[SEP]` included).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LengthRange {
    pub min: usize,
    pub max: usize,
}

impl LengthRange {
    /// What is known without reading the data: at least one token, at most `max_len`.
    pub fn up_to(max_len: usize) -> LengthRange {
        LengthRange {
            min: 1,
            max: max_len,
        }
    }
}

/// The method's settings (method.md). Stored in `corefocus.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MethodConfig {
    pub variant: Variant,
    /// Preservation ratio p in (0, 1].
    pub keep_ratio: f32,
    /// Examples of at most this many real tokens are not pruned (p/pf/pfc; 0 = every
    /// example is, as method.md; absent in checkpoints written before it: 0).
    #[serde(default)]
    pub prune_min_len: usize,
    /// 1-based layer replaced by the combining module (C/PFC only).
    pub combine_layer: usize,
    /// Number of combination tokens m.
    pub combine_tokens: usize,
    pub combine_init: CombineInit,
    /// Initial combination tokens (absent in checkpoints written before it: `normal`).
    #[serde(default)]
    pub combine_token_init: CombineTokenInit,
    /// Gumbel noise on the assignment logits during training (method.md; absent in
    /// checkpoints written before it: on).
    #[serde(default = "yes")]
    pub combine_noise: bool,
    /// Whether the assignment's gradient reaches the real tokens' states (the straight-
    /// through estimator's key path, method.md; absent in checkpoints written before it:
    /// on). Off, the layers before the combiner learn from the values alone.
    #[serde(default = "yes")]
    pub combine_key_grad: bool,
    /// Whether the embedded tokens attend to the combination tokens in the layers before
    /// the combiner (method.md: they are keys and values for every query; absent in
    /// checkpoints written before it: yes). Off, the combination tokens read the document
    /// there without being read by it, so those layers compute for the embedded tokens
    /// exactly what the pretrained model's layers would.
    #[serde(default = "yes")]
    pub combine_visible: bool,
    /// What follows the grouping (absent in checkpoints written before it: `plain`).
    #[serde(default)]
    pub combine_block: CombineBlock,
    /// Pooling of the m outputs (absent in checkpoints written before it: `mean`).
    #[serde(default)]
    pub combine_pooling: CombinePooling,
    /// The residual of the combined tokens (absent in checkpoints written before it:
    /// `token`).
    #[serde(default)]
    pub combine_residual: CombineResidual,
    /// Hard (method.md) or soft assignment (absent in checkpoints written before it:
    /// `hard`).
    #[serde(default)]
    pub combine_assignment: CombineAssignment,
    /// Assignment heads H of the combiner (1 = method.md; absent in checkpoints written
    /// before it: 1): each head groups the tokens by its own d/H columns of the queries and
    /// keys and averages its columns of the values over its own groups.
    #[serde(default = "one")]
    pub combine_heads: usize,
    /// Scale of the combiner's assignment logits (1 = unscaled, as the paper's eq. 9).
    pub combine_scale: f32,
    /// Denominator epsilon of the combiner's weighted mean.
    pub assign_eps: f32,
    /// LayerNorm eps of the combiner's LN_c and LN_e.
    pub combine_ln_eps: f32,
    pub pooling: Pooling,
    /// Fuzzy percentiles and thresholds (method.md).
    pub pct_low: f32,
    pub pct_high: f32,
    pub imp_thresh: f32,
    pub unimp_thresh: f32,
    /// Dropout before the classifier (the checkpoint's hidden dropout by default).
    pub classifier_dropout: f32,
    /// Dropout (hidden and attention) of the combiner's layer block and of the layers
    /// after the combiner (C/PFC), where m combined tokens stand for the whole document;
    /// `None` (also in checkpoints written before it): the checkpoint's, as in every other
    /// layer.
    #[serde(default)]
    pub combine_dropout: Option<f32>,
}

impl MethodConfig {
    /// The reference settings of method.md (what `../golden/` was made with) for an
    /// `layers`-layer model. The command line's defaults are [`MethodConfig::recommended`].
    pub fn new(variant: Variant, layers: usize) -> Self {
        MethodConfig {
            variant,
            keep_ratio: if variant.prunes() { 0.9 } else { 1.0 },
            prune_min_len: 0,
            combine_layer: if layers == 12 {
                11
            } else {
                // The last layer but one, and never layer 1 (it has no earlier layer to feed the
                // combiner): a 2-layer model combines at layer 2.
                layers.saturating_sub(1).max(2)
            },
            combine_tokens: 8,
            combine_init: CombineInit::Copy,
            combine_token_init: CombineTokenInit::Normal,
            combine_pooling: CombinePooling::Mean,
            combine_block: CombineBlock::Plain,
            combine_residual: CombineResidual::Token,
            combine_assignment: CombineAssignment::Hard,
            combine_heads: 1,
            combine_noise: true,
            combine_key_grad: true,
            combine_visible: true,
            combine_scale: 1.0,
            assign_eps: 1.0,
            combine_ln_eps: 1e-5,
            pooling: Pooling::Mean,
            pct_low: 25.0,
            pct_high: 75.0,
            imp_thresh: 0.01,
            unimp_thresh: 0.9,
            classifier_dropout: 0.1,
            combine_dropout: None,
        }
    }

    /// The recipe `train` uses by default (docs/combining.md): combination tokens at the
    /// scale of real tokens, assignment logits scaled by `1/sqrt(d)`, the replaced layer's
    /// block after the grouping and count-weighted pooling; pruning only for examples
    /// longer than [`RECOMMENDED_PRUNE_MIN_LEN`] tokens. For bert it equals
    /// [`MethodConfig::new`].
    pub fn recommended(variant: Variant, bert: &BertConfig) -> Self {
        let mut m = Self::new(variant, bert.num_hidden_layers);
        if variant.prunes() {
            m.prune_min_len = RECOMMENDED_PRUNE_MIN_LEN;
        }
        if variant.combines() {
            m.combine_token_init = CombineTokenInit::Vocab;
            m.combine_pooling = CombinePooling::Counts;
            m.combine_block = CombineBlock::Layer;
            m.combine_scale = Self::recipe_scale(bert.hidden_size, m.combine_heads);
        }
        m
    }

    /// The recipe's assignment-logit scale for `heads` assignment heads over width `hidden`:
    /// `1/sqrt(hidden / heads)`, as attention scales its logits per head.
    pub fn recipe_scale(hidden: usize, heads: usize) -> f32 {
        1.0 / (hidden as f32 / heads as f32).sqrt()
    }

    /// The settings a run computes with on examples of `lengths` tokens: a pruning variant
    /// whose `prune_min_len` covers every example never prunes, so it is its unpruned
    /// twin (p, pf: bert; pfc: c) with that twin's pruning settings, the same computation
    /// step for step (tested in train); one whose examples are all longer than
    /// `prune_min_len` prunes every one as with 0. Otherwise `self`.
    pub fn effective(&self, lengths: LengthRange) -> MethodConfig {
        if !self.variant.prunes() {
            self.clone()
        } else if lengths.max <= self.prune_min_len {
            MethodConfig {
                variant: if self.variant.combines() {
                    Variant::C
                } else {
                    Variant::Bert
                },
                keep_ratio: 1.0,
                prune_min_len: 0,
                ..self.clone()
            }
        } else if lengths.min > self.prune_min_len {
            MethodConfig {
                prune_min_len: 0,
                ..self.clone()
            }
        } else {
            self.clone()
        }
    }

    /// Checks the settings against a model of `layers` layers.
    pub fn validate(&self, layers: usize) -> Result<()> {
        if !(self.keep_ratio > 0.0 && self.keep_ratio <= 1.0) {
            bail!("--keep-ratio {} must be in (0, 1]", self.keep_ratio);
        }
        if self.variant.combines() {
            if self.combine_layer < 2 || self.combine_layer > layers {
                bail!(
                    "--combine-layer {} is invalid for a {layers}-layer model: it must be in 2..={layers} \
                     (layer 1 has no earlier layer to feed the combiner)",
                    self.combine_layer
                );
            }
            if self.combine_tokens == 0 {
                bail!("--combine-tokens must be at least 1");
            }
            if self.combine_tokens > MAX_COMBINE_TOKENS {
                bail!(
                    "--combine-tokens {} is too large (at most {MAX_COMBINE_TOKENS})",
                    self.combine_tokens
                );
            }
            if self.pooling == Pooling::Cls {
                bail!("--pooling cls is not available with combining (variants c, pfc): the representation is the mean of the combination tokens");
            }
            if !(self.assign_eps.is_finite() && self.assign_eps > 0.0) {
                bail!("--assign-eps {} must be positive", self.assign_eps);
            }
            if self.combine_heads == 0 {
                bail!("--combine-heads must be at least 1");
            }
        }
        if !(0.0..1.0).contains(&self.classifier_dropout) {
            bail!(
                "classifier dropout {} must be in [0, 1)",
                self.classifier_dropout
            );
        }
        if let Some(p) = self.combine_dropout {
            if !(0.0..1.0).contains(&p) {
                bail!("--combine-dropout {p} must be in [0, 1)");
            }
            if !self.variant.combines() {
                bail!(
                    "--combine-dropout applies only to variants c and pfc, not {}",
                    self.variant.name()
                );
            }
        }
        if !(self.pct_low <= self.pct_high && self.pct_low >= 0.0 && self.pct_high <= 100.0) {
            bail!("fuzzy percentiles must satisfy 0 <= low <= high <= 100");
        }
        // Settings only corefocus.json can change; a hand-edited file must not turn the
        // forward pass into NaNs.
        if !(self.combine_scale.is_finite() && self.combine_scale > 0.0) {
            bail!("combine_scale {} must be positive", self.combine_scale);
        }
        if !(self.combine_ln_eps.is_finite() && self.combine_ln_eps > 0.0) {
            bail!("combine_ln_eps {} must be positive", self.combine_ln_eps);
        }
        if !(self.imp_thresh.is_finite() && self.unimp_thresh.is_finite()) {
            bail!("the fuzzy thresholds must be finite numbers");
        }
        Ok(())
    }

    /// Checks the settings that depend on the hidden size `d` (with combining: the
    /// assignment heads must divide it).
    pub fn validate_width(&self, d: usize) -> Result<()> {
        if self.variant.combines() && !d.is_multiple_of(self.combine_heads.max(1)) {
            bail!(
                "--combine-heads {} does not divide the hidden size {d}",
                self.combine_heads
            );
        }
        Ok(())
    }

    /// Number of transformer layers that run on the full (pruned) sequence.
    pub fn full_layers(&self, layers: usize) -> usize {
        if self.variant.combines() {
            self.combine_layer - 1
        } else {
            layers
        }
    }
}
