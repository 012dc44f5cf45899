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
use std::sync::atomic::{AtomicBool, Ordering};
pub mod workspace;

/// Runs `f` on a thread of the rayon pool (directly if already on one). A model pass
/// calls dozens of parallel kernels; from a thread outside the pool each of them is
/// injected into the pool and the caller sleeps until it is done (two cross-thread
/// wake-ups per kernel, ~10% of a 1 x 128 forward pass), while from a pool thread they
/// split by work stealing and the caller works along.
///
/// While `f` runs, the pool's other threads stay awake ([`keep_warm`]): between two
/// parallel kernels an idle rayon thread goes to sleep within microseconds, and waking it
/// for the next kernel costs more than the kernel's share at small sizes (ONNX Runtime's
/// threads likewise spin for the length of a run).
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    let done = AtomicBool::new(false);
    rayon::scope(|s| {
        let runner = rayon::current_thread_index();
        for _ in 1..rayon::current_num_threads() {
            let done = &done;
            s.spawn(move |_| keep_warm(done, runner));
        }
        // Set even if `f` panics: the scope waits for the spawned loops before unwinding.
        let _stop = SetOnDrop(&done);
        f()
    })
}

/// Runs the pool's pending jobs until `done`, spinning while there are none and, when
/// none came for a while, offering the core to other threads (`sched_yield`: a server's
/// I/O threads, a load generator) between polls; returns at once on the thread that runs
/// the pass itself (`runner`), which would otherwise wait here instead of finishing it.
fn keep_warm(done: &AtomicBool, runner: Option<usize>) {
    /// Empty polls before yielding the core (a few microseconds of spinning).
    const SPINS: u32 = 64;
    if rayon::current_thread_index() == runner {
        return;
    }
    let mut idle = 0u32;
    while !done.load(Ordering::Acquire) {
        if rayon::yield_now() == Some(rayon::Yield::Executed) {
            idle = 0;
        } else if idle < SPINS {
            idle += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::on_pool;
    use rayon::prelude::*;

    #[test]
    fn on_pool_runs_parallel_work_and_ends_even_when_the_pass_panics() {
        let sum = on_pool(|| (0..1000i64).into_par_iter().map(|x| 2 * x).sum::<i64>());
        assert_eq!(sum, 999_000);
        // The other threads' keep-warm loops stop on a panic too, so the scope can unwind.
        let panicked = std::panic::catch_unwind(|| on_pool(|| -> i32 { panic!("in the pass") }));
        assert!(panicked.is_err());
        // Nested and repeated passes, from several outside threads at once.
        let handles: Vec<_> = (0..4)
            .map(|t| std::thread::spawn(move || on_pool(|| on_pool(|| t + 1))))
            .collect();
        let got: Vec<i32> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(got, vec![1, 2, 3, 4]);
    }
}
