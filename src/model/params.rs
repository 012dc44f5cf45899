//! Named parameter tensors. Every learnable tensor of a model lives in one
//! `ParamStore` under its HF name (e.g. `encoder.layer.0.attention.self.query.weight`),
//! in PyTorch layout (`nn.Linear` weight `[out, in]`). Modules refer to tensors by index,
//! so the optimizer, gradient clipping, checkpointing and golden comparisons can treat
//! all parameters uniformly.

use std::collections::HashMap;

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
        &mut self.tensors[id].data
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
        for t in &mut self.tensors {
            t.data.iter_mut().for_each(|x| *x = 0.0);
        }
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
        for t in &mut self.tensors {
            t.data.iter_mut().for_each(|x| *x *= s);
        }
    }
}

impl ParamStore {
    /// Two distinct tensors borrowed mutably at once (a weight and its bias).
    pub fn pair_mut(&mut self, a: ParamId, b: ParamId) -> (&mut [f32], &mut [f32]) {
        assert_ne!(a, b, "pair_mut needs two distinct tensors");
        if a < b {
            let (lo, hi) = self.tensors.split_at_mut(b);
            (&mut lo[a].data, &mut hi[0].data)
        } else {
            let (lo, hi) = self.tensors.split_at_mut(a);
            (&mut hi[0].data, &mut lo[b].data)
        }
    }
}
