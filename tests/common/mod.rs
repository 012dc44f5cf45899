//! Shared helpers of the integration tests: where the golden tensors and the test
//! checkpoint live, and raw safetensors access (the golden files hold int64 tensors too).
#![allow(dead_code)]

use corefocus::model::ParamStore;
use safetensors::{Dtype, SafeTensors};
use std::path::PathBuf;

pub fn crate_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `$COREFOCUS_GOLDEN`, else `../shared/golden` next to the crate.
pub fn golden_dir() -> PathBuf {
    std::env::var_os("COREFOCUS_GOLDEN")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_root().join("../shared/golden"))
}

/// `$COREFOCUS_DATA`, else `../shared/data` next to the crate.
pub fn data_dir() -> PathBuf {
    std::env::var_os("COREFOCUS_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_root().join("../shared/data"))
}

/// The all-MiniLM-L6-v2 test checkpoint; fails loudly (never skips) when absent.
pub fn test_model_dir() -> PathBuf {
    let dir = std::env::var_os("COREFOCUS_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_root().join("target/models/all-MiniLM-L6-v2"));
    assert!(
        dir.join("model.safetensors").is_file(),
        "test checkpoint missing at {}: run scripts/fetch-test-model.sh (or set COREFOCUS_TEST_MODEL)",
        dir.display()
    );
    dir
}

pub struct Golden {
    bytes: Vec<u8>,
    pub path: PathBuf,
}

impl Golden {
    pub fn open(file: &str) -> Golden {
        let path = golden_dir().join(file);
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("cannot read golden file {}: {e}", path.display()));
        Golden { bytes, path }
    }

    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("golden file parses")
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
        self.st().tensor(name).expect("tensor").shape().to_vec()
    }

    pub fn f32(&self, name: &str) -> Vec<f32> {
        let st = self.st();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("{}: no tensor {name}", self.path.display()));
        assert_eq!(t.dtype(), Dtype::F32, "{name} is not f32");
        t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    pub fn i64(&self, name: &str) -> Vec<i64> {
        let st = self.st();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("{}: no tensor {name}", self.path.display()));
        assert_eq!(t.dtype(), Dtype::I64, "{name} is not i64");
        t.data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// All f32 tensors as a parameter store.
    pub fn params(&self) -> ParamStore {
        let st = self.st();
        let mut store = ParamStore::new();
        let mut names: Vec<_> = st.names().into_iter().map(|s| s.to_string()).collect();
        names.sort();
        for n in names {
            let t = st.tensor(&n).unwrap();
            if t.dtype() == Dtype::F32 {
                let shape = t.shape().to_vec();
                store.add(&n, &shape, self.f32(&n));
            }
        }
        store
    }
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
