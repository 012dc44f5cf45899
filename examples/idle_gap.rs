//! Forward-pass latency of one 1 x 128 request after an idle gap of 0, 2, 10, 20, 50 and
//! 200 ms (as a server sees requests that come apart), and right after the process has
//! swept 256 MiB of other memory (as other engines' calls between ours in
//! `scripts/bench-peers.sh`); 40 calls each, interleaved (a development aid: issue 17's
//! 1 x 128 spread).
//!
//! `cargo run --release --example idle_gap [model_dir] [variant]`
#[path = "common/args.rs"]
mod args;
use corefocus::alloc::CountingAlloc;
use corefocus::bench::timed::TimedModel;
use corefocus::kernels::matmul::Precision;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn main() -> anyhow::Result<()> {
    let dir: String = args::arg(
        1,
        "model directory",
        "target/models/all-MiniLM-L6-v2".into(),
    );
    let variant: String = args::arg(2, "variant", "bert".into());
    let model = TimedModel::load(dir.as_ref(), &variant, 2, Precision::F32)?;
    let ids: Vec<Vec<u32>> = vec![(0..128u32).map(|i| 1000 + (i * 7919) % 20000).collect()];
    let gaps_ms = [0u64, 2, 10, 20, 50, 200];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); gaps_ms.len() + 1];
    // Another process's working set, as the peers' calls between ours: 256 MiB written
    // and read between two calls, no idle time.
    let mut other = vec![0u8; 256 << 20];
    for _ in 0..5 {
        model.forward(&ids)?;
    }
    for _ in 0..40 {
        for (g, &gap) in gaps_ms.iter().enumerate() {
            std::thread::sleep(Duration::from_millis(gap));
            let t0 = Instant::now();
            std::hint::black_box(model.forward(&ids)?);
            times[g].push(t0.elapsed().as_secs_f64() * 1e3);
        }
        other.iter_mut().for_each(|b| *b = b.wrapping_add(1));
        std::hint::black_box(other.iter().map(|&b| b as u64).sum::<u64>());
        let t0 = Instant::now();
        std::hint::black_box(model.forward(&ids)?);
        times[gaps_ms.len()].push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let labels = gaps_ms
        .iter()
        .map(|g| format!("gap {g:>3} ms"))
        .chain(["after 256 MiB of other work".to_string()]);
    for (label, t) in labels.zip(&mut times) {
        t.sort_by(f64::total_cmp);
        println!(
            "{label}: min {:.2}  p25 {:.2}  p50 {:.2}  p75 {:.2}  p90 {:.2}  max {:.2} ms",
            t[0],
            t[t.len() / 4],
            t[t.len() / 2],
            t[3 * t.len() / 4],
            t[9 * t.len() / 10],
            t[t.len() - 1]
        );
    }
    Ok(())
}
