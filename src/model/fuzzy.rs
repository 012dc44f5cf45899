//! Token selection between pruned layers (method.md): plain ratio pruning (P) and fuzzy
//! protection (PF). Pure functions: scores in, kept positions out.

/// Settings of one selection step.
#[derive(Clone, Copy, Debug)]
pub struct SelectConfig {
    pub keep_ratio: f32,
    pub fuzzy: bool,
    pub pct_low: f32,
    pub pct_high: f32,
    pub imp_thresh: f32,
    pub unimp_thresh: f32,
}

/// The outcome of one selection step for one example.
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    /// Positions kept for the next layer, ascending (a subset of the candidates).
    pub kept: Vec<usize>,
    /// `floor(t * p)` clamped to at least 1: how many the ratio asked to keep.
    pub n_requested: usize,
    /// Per candidate (same order as the input): Σ_h S_h(j).
    pub head_sum: Vec<f32>,
    /// Per candidate: removed in this step.
    pub pruned: Vec<bool>,
    /// Fuzzy only (else empty / 0): percentiles a, b, per-candidate Importance and
    /// protection.
    pub a: f32,
    pub b: f32,
    pub importance: Vec<f32>,
    pub protected: Vec<bool>,
}

/// Selects which of `candidates` (token positions, ascending, `t` of them) stay as keys
/// and values in the next layer, from `head_scores` `[heads, t]` = S_h(j).
pub fn select(
    candidates: &[usize],
    head_scores: &[f32],
    heads: usize,
    cfg: &SelectConfig,
) -> Selection {
    let _ = (candidates, head_scores, heads, cfg);
    todo!("fuzzy helper")
}
