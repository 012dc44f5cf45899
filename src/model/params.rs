//! Named parameter tensors. Every learnable tensor of a model lives in one
//! `ParamStore` under its HF name (e.g. `encoder.layer.0.attention.self.query.weight`),
//! in PyTorch layout (`nn.Linear` weight `[out, in]`). Modules refer to tensors by index,
//! so the optimizer, gradient clipping, checkpointing and golden comparisons can treat
//! all parameters uniformly.

use crate::kernels::matmul::{MatRef, PackedRhs, Precision};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Index of a tensor inside a `ParamStore`.
pub type ParamId = usize;

#[derive(Clone, Debug, Default)]
pub struct ParamStore {
    pub tensors: Vec<Tensor>,
    index: HashMap<String, ParamId>,
    packed: PackedWeights,
}

/// Linear weights packed for the GEMM ([`ParamStore::pack_linear_weights`]), by id,
/// and groups of them packed as one ([`ParamStore::fuse_packed`]), by their first
/// weight's id.
#[derive(Clone, Default)]
struct PackedWeights {
    single: Vec<Option<Arc<PackedRhs>>>,
    fused: HashMap<ParamId, Arc<FusedLinear>>,
    precision: Option<Precision>,
}

impl std::fmt::Debug for PackedWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.single.iter().filter(|p| p.is_some()).count();
        let fused = self.fused.len();
        write!(f, "PackedWeights({n} packed, {fused} fused)")
    }
}

/// Linear layers that read the same input, packed side by side as one (a layer's
/// query, key and value projections): one product instead of several, which reads the
/// input once and splits once over the threads.
pub struct FusedLinear {
    /// The `(weight, bias)` ids of the parts, in output order.
    pub parts: Vec<(ParamId, ParamId)>,
    /// `Wᵀ` of the parts side by side, `[in, Σ out]`.
    pub weight: PackedRhs,
    /// The parts' biases, concatenated (`[Σ out]`).
    pub bias: Vec<f32>,
}

impl FusedLinear {
    /// `(in, Σ out)`.
    pub fn shape(&self) -> (usize, usize) {
        self.weight.shape()
    }
}

impl ParamStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tensor; panics on a duplicate name (a programming error, not user input).
    pub fn add(&mut self, name: &str, shape: &[usize], data: Vec<f32>) -> ParamId {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "tensor {name}: data length does not match shape {shape:?}"
        );
        assert!(!self.index.contains_key(name), "duplicate tensor {name}");
        let id = self.tensors.len();
        self.tensors.push(Tensor {
            name: name.to_string(),
            shape: shape.to_vec(),
            data,
        });
        self.index.insert(name.to_string(), id);
        id
    }

    pub fn id(&self, name: &str) -> Option<ParamId> {
        self.index.get(name).copied()
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.id(name).map(|i| &self.tensors[i])
    }

    pub fn data(&self, id: ParamId) -> &[f32] {
        &self.tensors[id].data
    }

    pub fn data_mut(&mut self, id: ParamId) -> &mut [f32] {
        self.drop_packed();
        &mut self.tensors[id].data
    }

    /// Packs every linear layer's weight (`*.weight`, `[out, in]` with out > 32, not an
    /// embedding table) once in the GEMM's layout, for a model that only infers from now
    /// on: `ops::linear` then multiplies with the packed copy instead of packing
    /// the weight on every call. Costs one more copy of those weights in memory. The
    /// copies go stale if the weights change: every mutating method here, and
    /// `AdamW::step`, drops them ([`Self::drop_packed`]); code writing `tensors` directly
    /// must do the same.
    pub fn pack_linear_weights(&mut self) {
        self.pack_linear_weights_as(Precision::F32);
    }

    /// [`Self::pack_linear_weights`] at `precision` (bf16: the caller checked
    /// [`Precision::check_available`]); the products with these weights then run at it.
    pub fn pack_linear_weights_as(&mut self, precision: Precision) {
        let packed = self
            .tensors
            .iter()
            .map(|t| {
                let linear = t.shape.len() == 2
                    && t.name.ends_with(".weight")
                    && !t.name.contains("embeddings")
                    && t.shape[0] > 32;
                linear.then(|| {
                    let w = MatRef::new(&t.data, t.shape[0], t.shape[1]);
                    Arc::new(PackedRhs::with_precision(w.t(), precision))
                })
            })
            .collect();
        self.packed = PackedWeights {
            single: packed,
            fused: HashMap::new(),
            precision: Some(precision),
        };
    }

    /// The packed `Wᵀ` of linear weight `id`, if packed.
    pub fn packed_weight(&self, id: ParamId) -> Option<&PackedRhs> {
        self.packed.single.get(id).and_then(|p| p.as_deref())
    }

    /// Packs the linear layers `parts` (`(weight, bias)` ids, weights `[out_i, in]` with
    /// the same `in`) as one [`FusedLinear`] at the precision of the packed weights, in
    /// place of their own packed copies (so memory stays as it was). Does nothing unless
    /// the weights are packed ([`Self::pack_linear_weights_as`]); the fused copy goes
    /// stale, and is dropped, with them.
    pub fn fuse_packed(&mut self, parts: &[(ParamId, ParamId)]) {
        let Some(precision) = self.packed.precision else {
            return;
        };
        let Some(&(first, _)) = parts.first() else {
            return;
        };
        let inputs = self.tensors[first].shape[1];
        let mut weights = Vec::new();
        let mut bias = Vec::new();
        for &(w, b) in parts {
            let shape = &self.tensors[w].shape;
            assert!(
                shape.len() == 2 && shape[1] == inputs,
                "fuse_packed: {} has shape {shape:?}, expected [_, {inputs}]",
                self.tensors[w].name
            );
            assert_eq!(self.tensors[b].shape, [shape[0]], "fuse_packed: bias shape");
            weights.extend_from_slice(&self.tensors[w].data);
            bias.extend_from_slice(&self.tensors[b].data);
        }
        let outputs = bias.len();
        let w = MatRef::new(&weights, outputs, inputs);
        let fused = FusedLinear {
            parts: parts.to_vec(),
            weight: PackedRhs::with_precision(w.t(), precision),
            bias,
        };
        for &(w, _) in parts {
            if let Some(single) = self.packed.single.get_mut(w) {
                *single = None;
            }
        }
        self.packed.fused.insert(first, Arc::new(fused));
    }

    /// The [`FusedLinear`] of exactly `parts`, if [`Self::fuse_packed`] made one.
    pub fn fused(&self, parts: &[(ParamId, ParamId)]) -> Option<&FusedLinear> {
        let fused = self.packed.fused.get(&parts.first()?.0)?;
        (fused.parts == parts).then_some(fused.as_ref())
    }

    /// Forgets the packed weights (before the weights change).
    pub fn drop_packed(&mut self) {
        self.packed = PackedWeights::default();
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn numel(&self) -> usize {
        self.tensors.iter().map(|t| t.numel()).sum()
    }

    /// A store with the same names and shapes, all zeros (used for gradients and
    /// optimizer moments).
    pub fn zeros_like(&self) -> Self {
        let mut out = ParamStore::new();
        for t in &self.tensors {
            out.add(&t.name, &t.shape, vec![0.0; t.numel()]);
        }
        out
    }

    pub fn fill_zero(&mut self) {
        use rayon::prelude::*;
        self.drop_packed();
        // Split over the pool: a training step zeroes every gradient (90 MB at MiniLM,
        // half of it the word embeddings), which one thread zeroed while the others waited.
        self.tensors
            .par_iter_mut()
            .flat_map(|t| t.data.par_chunks_mut(1 << 16))
            .for_each(|c| c.fill(0.0));
    }

    /// Global L2 norm over all tensors (computed in f64).
    pub fn l2_norm(&self) -> f64 {
        self.tensors
            .iter()
            .flat_map(|t| t.data.iter())
            .map(|&x| (x as f64) * (x as f64))
            .sum::<f64>()
            .sqrt()
    }

    pub fn scale(&mut self, s: f32) {
        self.drop_packed();
        for t in &mut self.tensors {
            t.data.iter_mut().for_each(|x| *x *= s);
        }
    }
}

impl ParamStore {
    /// Two distinct tensors borrowed mutably at once (a weight and its bias).
    pub fn pair_mut(&mut self, a: ParamId, b: ParamId) -> (&mut [f32], &mut [f32]) {
        assert_ne!(a, b, "pair_mut needs two distinct tensors");
        self.drop_packed();
        if a < b {
            let (lo, hi) = self.tensors.split_at_mut(b);
            (&mut lo[a].data, &mut hi[0].data)
        } else {
            let (lo, hi) = self.tensors.split_at_mut(a);
            (&mut hi[0].data, &mut lo[b].data)
        }
    }
}
