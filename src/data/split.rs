//! Stratified hold-out splits (e.g. carving a dev set out of train when a dataset has none).

use super::readers::Example;
use crate::rng::{mix64, Rng};
use std::collections::BTreeMap;

/// Stratified split: per class, a `fraction` of examples (rounded, at least 1 when the
/// class has >= 2, and at most all but one so the class stays in the first vector) go to
/// the second vector, chosen by `seed`; deterministic; both outputs keep the input order.
///
/// `fraction == 0` moves nothing. Each class draws from its own stream derived from
/// `seed` and the label, so adding or removing a class does not change the others' picks.
///
/// Panics if `fraction` is not in `[0, 1]` (callers validate user-given fractions).
pub fn stratified_split(
    examples: Vec<Example>,
    fraction: f64,
    seed: u64,
) -> (Vec<Example>, Vec<Example>) {
    assert!(
        (0.0..=1.0).contains(&fraction),
        "stratified_split: fraction {fraction} is not in [0, 1]"
    );
    let mut by_class: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, example) in examples.iter().enumerate() {
        by_class.entry(example.label.as_str()).or_default().push(i);
    }

    let mut held_out = vec![false; examples.len()];
    for (label, mut indices) in by_class {
        let n = indices.len();
        let mut take = (fraction * n as f64).round() as usize;
        if fraction > 0.0 && n >= 2 {
            take = take.clamp(1, n - 1);
        } else {
            take = take.min(n.saturating_sub(1));
        }
        let mut rng = Rng::new(mix64(seed ^ fnv1a(label.as_bytes())));
        rng.shuffle(&mut indices);
        for &i in &indices[..take] {
            held_out[i] = true;
        }
    }

    let mut kept = Vec::with_capacity(examples.len());
    let mut moved = Vec::new();
    for (example, out) in examples.into_iter().zip(held_out) {
        if out {
            moved.push(example);
        } else {
            kept.push(example);
        }
    }
    (kept, moved)
}

/// FNV-1a: a hash of the label that is stable across Rust versions (unlike `DefaultHasher`).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
