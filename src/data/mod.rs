//! Datasets: readers, tokenisation, splits.

mod readers;
mod split;
pub mod tokenize;

pub use readers::*;
pub use split::*;
