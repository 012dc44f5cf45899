//! Datasets: readers, tokenisation, splits.
