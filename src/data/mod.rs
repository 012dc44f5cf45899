//! Datasets: readers, tokenisation, splits.
pub mod tokenize;
