//! Per-kernel wall-clock accounting for `corefocus bench --profile`: each model-level call
//! site adds its elapsed time to one of a fixed set of counters. Off by default (one
//! relaxed atomic load per call when off).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Linear,
    LinearBackward,
    Attention,
    AttentionBackward,
    LayerNorm,
    LayerNormBackward,
    Gelu,
    GeluBackward,
    Dropout,
    Residual,
    GatherScatter,
    Embedding,
    Combiner,
    CombinerBackward,
    Selection,
    Optimizer,
    Other,
}

pub const KERNELS: [Kernel; 17] = [
    Kernel::Linear,
    Kernel::LinearBackward,
    Kernel::Attention,
    Kernel::AttentionBackward,
    Kernel::LayerNorm,
    Kernel::LayerNormBackward,
    Kernel::Gelu,
    Kernel::GeluBackward,
    Kernel::Dropout,
    Kernel::Residual,
    Kernel::GatherScatter,
    Kernel::Embedding,
    Kernel::Combiner,
    Kernel::CombinerBackward,
    Kernel::Selection,
    Kernel::Optimizer,
    Kernel::Other,
];

impl Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Linear => "linear (gemm)",
            Kernel::LinearBackward => "linear backward (gemm)",
            Kernel::Attention => "attention",
            Kernel::AttentionBackward => "attention backward",
            Kernel::LayerNorm => "layernorm",
            Kernel::LayerNormBackward => "layernorm backward",
            Kernel::Gelu => "gelu",
            Kernel::GeluBackward => "gelu backward",
            // A residual block's dropout carries its sum (one pass); without dropout the
            // sum is "residual add".
            Kernel::Dropout => "dropout (+ residual add)",
            Kernel::Residual => "residual add",
            Kernel::GatherScatter => "kv gather/scatter",
            Kernel::Embedding => "embeddings",
            Kernel::Combiner => "combiner",
            Kernel::CombinerBackward => "combiner backward",
            Kernel::Selection => "token selection",
            Kernel::Optimizer => "adamw + clipping",
            Kernel::Other => "other",
        }
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; 17] = [const { AtomicU64::new(0) }; 17];

pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

pub fn reset() {
    for n in &NANOS {
        n.store(0, Ordering::Relaxed);
    }
}

/// Seconds accumulated per kernel since the last reset.
pub fn snapshot() -> Vec<(&'static str, f64)> {
    KERNELS
        .iter()
        .map(|&k| {
            (
                k.name(),
                NANOS[k as usize].load(Ordering::Relaxed) as f64 * 1e-9,
            )
        })
        .collect()
}

/// Runs `f`, charging its wall time to `k` when profiling is on.
#[inline]
pub fn timed<R>(k: Kernel, f: impl FnOnce() -> R) -> R {
    if !ENABLED.load(Ordering::Relaxed) {
        return f();
    }
    let t = Instant::now();
    let r = f();
    NANOS[k as usize].fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    r
}
