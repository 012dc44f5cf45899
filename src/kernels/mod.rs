//! The CPU compute engine: explicit forward and backward functions on flat row-major
//! `f32` buffers. Matrix products go through `matmul` (the backend seam).

pub mod activations;
pub mod attention;
pub mod dropout;
pub mod embedding;
pub mod epilogue;
pub(crate) mod fastmath;
#[cfg(target_arch = "x86_64")]
pub mod gemm_x86;
#[cfg(test)]
pub(crate) mod gradcheck;
pub mod layernorm;
pub mod linear;
pub mod loss;
pub mod matmul;
pub mod matref;

pub use matmul::{matmul, MatRef, Par};
pub mod workspace;
