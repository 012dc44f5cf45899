//! corefocus: BERT document classifiers with fuzzy token-pruned attention and token
//! combining ("Focus on the Core", EMNLP 2023 Findings) on a CPU engine with explicit
//! forward and backward passes.

pub mod alloc;
pub mod bench;
pub mod data;
pub mod demo;
pub mod experiment;
pub mod explain;
pub mod infer;
pub mod kernels;
pub mod metrics;
pub mod model;
pub mod plot;
pub mod profile;
pub mod rng;
pub mod serve;
pub mod train;
pub mod util;
pub mod variant_spec;
