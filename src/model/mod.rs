//! The classifier: BERT embeddings, an encoder whose attention prunes keys/values
//! (method.md), an optional token-combining module, pooling and a linear head.

pub mod checkpoint;
pub mod combiner;
pub mod config;
pub mod fuzzy;
pub mod names;
pub mod params;

pub use config::{BertConfig, CombineInit, MethodConfig, Pooling, Variant};
pub use params::{ParamId, ParamStore, Tensor};

/// A padded batch of token sequences.
#[derive(Clone, Debug)]
pub struct Batch {
    /// `[batch, seq]` token ids, padded with the pad id.
    pub ids: Vec<u32>,
    /// `[batch, seq]` token type ids (all 0 for single-text classification).
    pub type_ids: Vec<u32>,
    /// Real (non-padding) length of each example, `[CLS]` and `[SEP]` included.
    pub lengths: Vec<usize>,
    pub batch: usize,
    pub seq: usize,
}

impl Batch {
    /// Pads `seqs` to the longest one with `pad_id`.
    pub fn from_sequences(seqs: &[&[u32]], pad_id: u32) -> Batch {
        let batch = seqs.len();
        let seq = seqs.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![pad_id; batch * seq];
        for (b, s) in seqs.iter().enumerate() {
            ids[b * seq..b * seq + s.len()].copy_from_slice(s);
        }
        Batch {
            ids,
            type_ids: vec![0; batch * seq],
            lengths: seqs.iter().map(|s| s.len()).collect(),
            batch,
            seq,
        }
    }
}

/// Training mode turns on dropout and Gumbel noise, all drawn from `seed`.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    Train { seed: u64 },
    Eval,
}

/// What one selection step decided for one example (for `explain` and the golden tests).
#[derive(Clone, Debug)]
pub struct LayerTrace {
    /// Positions used as keys/values in this layer (ascending; embedded tokens only).
    pub kept: Vec<Vec<usize>>,
    /// The selection made from this layer's attention for the next layer, per example
    /// (None for the last pruned layer and for unpruned variants).
    pub selection: Vec<Option<fuzzy::Selection>>,
}

/// Decisions of a forward pass.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    /// One entry per layer that ran on the embedded tokens.
    pub layers: Vec<LayerTrace>,
    /// Combination token of each embedded position, `[batch][seq]` (-1 = padding).
    pub assign: Option<Vec<Vec<i64>>>,
}

/// Everything the backward pass needs; produced by `Model::forward`.
pub struct Tape {
    pub(crate) _private: (),
}

pub struct ForwardOutput {
    /// `[batch, num_labels]`.
    pub logits: Vec<f32>,
    /// Pooled representation `[batch, hidden]`.
    pub pooled: Vec<f32>,
    pub trace: Trace,
}

/// A classifier: configuration plus parameters.
#[derive(Clone, Debug)]
pub struct Model {
    pub bert: BertConfig,
    pub method: MethodConfig,
    pub num_labels: usize,
    pub params: ParamStore,
}
