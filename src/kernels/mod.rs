//! The CPU compute engine: explicit forward and backward functions on flat row-major
//! `f32` buffers. Matrix products go through `matmul` (the backend seam).

pub mod activations;
pub mod affinity;
pub mod attention;
pub mod dropout;
pub mod embedding;
pub mod epilogue;
pub(crate) mod fastmath;
#[cfg(target_arch = "x86_64")]
pub mod gemm_bf16;
#[cfg(target_arch = "x86_64")]
pub mod gemm_int8;
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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
pub mod workspace;

/// Runs `f` on a thread of the rayon pool (directly if already on one). A model pass
/// calls dozens of parallel kernels; from a thread outside the pool each of them is
/// injected into the pool and the caller sleeps until it is done (two cross-thread
/// wake-ups per kernel, ~10% of a 1 x 128 forward pass), while from a pool thread they
/// split by work stealing and the caller works along.
///
/// While `f` runs, the pool's other threads stay awake (`keep_warm`): between two
/// parallel kernels an idle rayon thread goes to sleep within microseconds, and waking it
/// for the next kernel costs more than the kernel's share at small sizes (ONNX Runtime's
/// threads likewise spin for the length of a run). The first pass pins the pool's
/// threads one per CPU where that is safe ([`affinity`]).
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    affinity::pin_pool_threads();
    let done = AtomicBool::new(false);
    let out = rayon::scope(|s| {
        let runner = rayon::current_thread_index();
        for _ in 1..rayon::current_num_threads() {
            let done = &done;
            s.spawn(move |_| keep_warm(done, runner));
        }
        // Set even if `f` panics: the scope waits for the spawned loops before unwinding.
        let _stop = SetOnDrop(&done);
        f()
    });
    linger();
    out
}

/// How long a pool thread stays busy after a pass ([`linger`]):
/// `COREFOCUS_LINGER_MS` (0 turns it off), default [`DEFAULT_LINGER_MS`].
fn linger_time() -> Duration {
    static LINGER: OnceLock<Duration> = OnceLock::new();
    *LINGER.get_or_init(|| {
        let ms = match std::env::var("COREFOCUS_LINGER_MS") {
            Err(_) => DEFAULT_LINGER_MS,
            Ok(v) => v.trim().parse().unwrap_or_else(|_| {
                eprintln!(
                    "corefocus: COREFOCUS_LINGER_MS={v:?} is not a whole number of \
                     milliseconds; using {DEFAULT_LINGER_MS}"
                );
                DEFAULT_LINGER_MS
            }),
        };
        Duration::from_millis(ms)
    })
}

/// See `linger`: 10 ms was enough in the measurement, 1-3 ms was not.
pub const DEFAULT_LINGER_MS: u64 = 20;

/// After a pass, one pool thread keeps polling for work (as [`keep_warm`] does) until
/// [`linger_time`] has passed since the latest pass ended. On this VM a pass that
/// follows an idle spell of more than a few milliseconds ran 35% slower at 1 x 128
/// (median 22-23 ms against 16-17 with 50 ms gaps between passes), not from a slow
/// wake-up (a sleeping worker took a job within 0.07 ms) but from the cores having been
/// idle; with a thread left busy for 10-100 ms after each pass the next one ran at full
/// speed. ONNX Runtime's threads spin after a run likewise. Costs at most that much CPU
/// time per pass when passes are sparse, none when they come back to back (the thread
/// then runs the next pass's jobs).
fn linger() {
    static UNTIL_US: AtomicU64 = AtomicU64::new(0);
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let time = linger_time();
    // With one thread there is no other core to keep busy (and the gap cost ~1 ms).
    if time.is_zero() || rayon::current_num_threads() < 2 {
        return;
    }
    let epoch = *EPOCH.get_or_init(Instant::now);
    let until = (epoch.elapsed() + time).as_micros() as u64;
    UNTIL_US.fetch_max(until, Ordering::AcqRel);
    if LINGERING.swap(true, Ordering::AcqRel) {
        return; // a thread is lingering already and now stays until the new deadline
    }
    rayon::spawn(move || {
        let now_us = || epoch.elapsed().as_micros() as u64;
        loop {
            poll_pool_while(|| now_us() < UNTIL_US.load(Ordering::Acquire));
            LINGERING.store(false, Ordering::Release);
            // A pass that ended just now may have seen the flag still set and left the
            // new deadline to this thread.
            if now_us() >= UNTIL_US.load(Ordering::Acquire)
                || LINGERING.swap(true, Ordering::AcqRel)
            {
                break;
            }
        }
    });
}

/// Whether a pool thread is lingering after a pass now.
static LINGERING: AtomicBool = AtomicBool::new(false);

/// Runs the pool's pending jobs until `done`, spinning while there are none and, when
/// none came for a while, offering the core to other threads (`sched_yield`: a server's
/// I/O threads, a load generator) between polls; returns at once on the thread that runs
/// the pass itself (`runner`), which would otherwise wait here instead of finishing it.
fn keep_warm(done: &AtomicBool, runner: Option<usize>) {
    if rayon::current_thread_index() == runner {
        return;
    }
    poll_pool_while(|| !done.load(Ordering::Acquire));
}

/// While `go_on()`, runs the pool's pending jobs, spinning briefly when there are none
/// and then offering the core to other threads between polls.
fn poll_pool_while(go_on: impl Fn() -> bool) {
    /// Empty polls before yielding the core (a few microseconds of spinning).
    const SPINS: u32 = 64;
    let mut idle = 0u32;
    while go_on() {
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

    #[test]
    fn a_thread_lingers_after_a_pass_and_then_stops() {
        use super::{linger_time, LINGERING};
        use std::sync::atomic::Ordering;
        use std::time::{Duration, Instant};
        if linger_time().is_zero() || rayon::current_num_threads() < 2 {
            return; // turned off by COREFOCUS_LINGER_MS=0, or no other thread to linger
        }
        // Other tests' passes may extend the deadline; wait until the flag drops.
        on_pool(|| (0..100i64).into_par_iter().sum::<i64>());
        // Set before the pass returns (a spinning thread is on its way, or still there).
        assert!(LINGERING.load(Ordering::Acquire));
        let t0 = Instant::now();
        while LINGERING.load(Ordering::Acquire) {
            assert!(
                t0.elapsed() < linger_time() + Duration::from_secs(30),
                "the lingering thread did not stop"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
