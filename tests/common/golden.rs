//! THE reader of the golden files (`../shared/golden`, or `$COREFOCUS_GOLDEN`): the
//! PyTorch reference's safetensors (f32 and int64 tensors) and JSON summaries. Every test
//! that reads a golden file goes through it. It depends on `safetensors`, `serde_json` and
//! std only, so the crate's unit tests include it too: src/model/mod.rs declares it as
//! `model::golden` (test builds only), used by the fuzzy and combiner unit tests.
#![allow(dead_code)]

use safetensors::{Dtype, SafeTensors};
use std::path::PathBuf;

/// `$COREFOCUS_GOLDEN`, else `../shared/golden` next to the crate.
pub fn golden_dir() -> PathBuf {
    std::env::var_os("COREFOCUS_GOLDEN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/golden"))
}

/// The bytes of golden file `file`; panics naming the file when it cannot be read.
fn read(file: &str) -> (PathBuf, Vec<u8>) {
    let path = golden_dir().join(file);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read golden file {} (set COREFOCUS_GOLDEN): {e}",
            path.display()
        )
    });
    (path, bytes)
}

/// Golden JSON file `file` (e.g. `grads_summary.json`).
pub fn golden_json(file: &str) -> serde_json::Value {
    let (path, bytes) = read(file);
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A golden safetensors file.
pub struct Golden {
    bytes: Vec<u8>,
    pub path: PathBuf,
}

impl Golden {
    pub fn open(file: &str) -> Golden {
        let (path, bytes) = read(file);
        Golden { bytes, path }
    }

    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes)
            .unwrap_or_else(|e| panic!("{}: not safetensors: {e}", self.path.display()))
    }

    pub fn names(&self) -> Vec<String> {
        self.st()
            .names()
            .into_iter()
            .map(|s| s.to_string())
            .collect()
    }

    pub fn has(&self, name: &str) -> bool {
        self.st().tensor(name).is_ok()
    }

    pub fn shape(&self, name: &str) -> Vec<usize> {
        self.st()
            .tensor(name)
            .unwrap_or_else(|_| panic!("{}: no tensor {name}", self.path.display()))
            .shape()
            .to_vec()
    }

    /// The raw little-endian bytes of tensor `name`, which must be of type `dtype`.
    fn bytes_of(&self, name: &str, dtype: Dtype) -> Vec<u8> {
        let st = self.st();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("{}: no tensor {name}", self.path.display()));
        assert_eq!(t.dtype(), dtype, "{name} is not {dtype:?}");
        t.data().to_vec()
    }

    pub fn f32(&self, name: &str) -> Vec<f32> {
        self.bytes_of(name, Dtype::F32)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    pub fn i64(&self, name: &str) -> Vec<i64> {
        self.bytes_of(name, Dtype::I64)
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// Shape and values of f32 tensor `name`.
    pub fn f32s(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        (self.shape(name), self.f32(name))
    }

    /// Shape and values of int64 tensor `name`.
    pub fn i64s(&self, name: &str) -> (Vec<usize>, Vec<i64>) {
        (self.shape(name), self.i64(name))
    }

    /// Every f32 tensor as (name, shape, values), sorted by name.
    pub fn f32_tensors(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut names = self.names();
        names.sort();
        names
            .into_iter()
            .filter(|n| self.st().tensor(n).is_ok_and(|t| t.dtype() == Dtype::F32))
            .map(|n| {
                let shape = self.shape(&n);
                let values = self.f32(&n);
                (n, shape, values)
            })
            .collect()
    }
}
