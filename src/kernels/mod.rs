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

/// Runs `f` on a thread of the rayon pool (directly if already on one). A model pass
/// calls dozens of parallel kernels; from a thread outside the pool each of them is
/// injected into the pool and the caller sleeps until it is done (two cross-thread
/// wake-ups per kernel, ~10% of a 1 x 128 forward pass), while from a pool thread they
/// split by work stealing and the caller works along.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}
