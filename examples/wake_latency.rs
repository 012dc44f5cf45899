//! How long a sleeping rayon worker takes to pick up a job after an idle gap (a
//! development aid; issue 17's idle-core finding in docs/results.md): 40 rounds of a
//! sleep, then a scope with two jobs, the first spinning 5 ms so that the second must
//! wait for the other worker; prints when the second started.
//!
//! `RAYON_NUM_THREADS=2 cargo run --release --example wake_latency [gap_ms]`
#[path = "common/args.rs"]
mod args;
use std::time::{Duration, Instant};

fn main() {
    let gap_ms: u64 = args::arg(1, "gap in ms", 50);
    let mut started_ms = Vec::new();
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(gap_ms));
        let t0 = Instant::now();
        let started = std::sync::Mutex::new(None);
        rayon::scope(|s| {
            s.spawn(|_| {
                let t = Instant::now();
                while t.elapsed() < Duration::from_millis(5) {}
            });
            s.spawn(|_| *started.lock().unwrap() = Some(t0.elapsed()));
        });
        let started = started.into_inner().unwrap().expect("the job ran");
        started_ms.push(started.as_secs_f64() * 1e3);
    }
    started_ms.sort_by(f64::total_cmp);
    println!(
        "gap {gap_ms} ms: the second job started after min {:.3}, p50 {:.3}, p90 {:.3}, max {:.3} ms",
        started_ms[0], started_ms[20], started_ms[36], started_ms[39]
    );
}
