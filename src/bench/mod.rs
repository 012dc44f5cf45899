//! Measurement: FLOPs, peak memory, timing.

pub mod alloc;
pub mod flops;
