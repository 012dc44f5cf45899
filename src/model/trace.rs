//! The decisions of a forward pass (for `explain` and the golden tests).

use super::fuzzy::Selection;

/// What one selection step decided for one example.
#[derive(Clone, Debug)]
pub struct LayerTrace {
    /// Positions used as keys/values in this layer (ascending; embedded tokens only).
    pub kept: Vec<Vec<usize>>,
    /// The selection made from this layer's attention for the next layer, per example
    /// (None for the last pruned layer and for unpruned variants).
    pub selection: Vec<Option<Selection>>,
}

/// Decisions of a forward pass.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    /// One entry per layer that ran on the embedded tokens.
    pub layers: Vec<LayerTrace>,
    /// Combination token of each embedded position, `[batch][seq]` (-1 = padding).
    pub assign: Option<Vec<Vec<i64>>>,
}
