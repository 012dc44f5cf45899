//! Datasets: readers, tokenisation, splits.

mod readers;
mod split;

pub use readers::*;
pub use split::*;
