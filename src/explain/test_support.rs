//! Traces of the explain unit tests.

use super::build::{explain, Explanation};
use crate::model::fuzzy::Selection;
use crate::model::{LayerTrace, MethodConfig, Trace, Variant};

pub(crate) fn strings(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|s| s.to_string()).collect()
}

/// Six tokens with everything HTML must escape and a WordPiece continuation.
pub(crate) fn six_tokens() -> Vec<String> {
    strings(&["[CLS]", "the", "<script>", "&", "##s", "[SEP]"])
}

pub(crate) fn labels() -> Vec<String> {
    strings(&["negative", "positive"])
}

/// A selection over `kept` that removes `pruned` and protects `protected`.
pub(crate) fn selection(
    kept: &[usize],
    pruned: &[usize],
    protected: Option<&[usize]>,
    requested: usize,
) -> Selection {
    let fuzzy = protected.is_some();
    Selection {
        kept: kept
            .iter()
            .copied()
            .filter(|p| !pruned.contains(p))
            .collect(),
        n_requested: requested,
        head_sum: kept.iter().map(|&p| 0.1 * (p as f32 + 1.0)).collect(),
        pruned: kept.iter().map(|p| pruned.contains(p)).collect(),
        a: if fuzzy { 0.0625 } else { 0.0 },
        b: if fuzzy { 0.25 } else { 0.0 },
        importance: if fuzzy {
            kept.iter().map(|&p| p as f32 / 5.0).collect()
        } else {
            Vec::new()
        },
        protected: match protected {
            Some(pr) => kept.iter().map(|p| pr.contains(p)).collect(),
            None => Vec::new(),
        },
    }
}

/// PF, 3 layers, p = 0.5: layer 1's decision removes `<script>` and `##s` (the other
/// four are protected), layer 2's protects all four so nothing goes; layer 3 decides
/// nothing. Example 1 of a batch of 2 (example 0 is a decoy with other decisions).
pub(crate) fn pf_trace() -> Trace {
    let all: Vec<usize> = (0..6).collect();
    let after: Vec<usize> = vec![0, 1, 3, 5];
    let decoy: Vec<usize> = vec![0, 1];
    Trace {
        layers: vec![
            LayerTrace {
                kept: vec![vec![0, 1, 2], all.clone()],
                selection: vec![
                    Some(selection(&[0, 1, 2], &[2], Some(&[]), 1)),
                    Some(selection(&all, &[2, 4], Some(&[0, 1, 3, 5]), 3)),
                ],
            },
            LayerTrace {
                kept: vec![decoy.clone(), after.clone()],
                selection: vec![
                    Some(selection(&decoy, &[], Some(&[0, 1]), 1)),
                    Some(selection(&after, &[], Some(&[0, 1, 3, 5]), 2)),
                ],
            },
            LayerTrace {
                kept: vec![decoy, after],
                selection: vec![None, None],
            },
        ],
        assign: None,
    }
}

pub(crate) fn pf_method() -> MethodConfig {
    let mut m = MethodConfig::new(Variant::Pf, 3);
    m.keep_ratio = 0.5;
    m
}

/// The explanation of [`pf_trace`]'s example 1 with [`six_tokens`], labels [`labels`] at
/// 25% and 75%.
pub(crate) fn pf_explanation() -> Explanation {
    explain(
        &six_tokens(),
        &pf_trace(),
        1,
        &pf_method(),
        3,
        &labels(),
        &[0.25, 0.75],
    )
}

/// PFC, 4 layers, combining at layer 3 into 3 tokens: layers 1-2 on the document,
/// layer 1 prunes `the`; combination token 2 receives nothing. Padded to 8 positions.
pub(crate) fn pfc_case() -> (Trace, MethodConfig) {
    let all: Vec<usize> = (0..6).collect();
    let after: Vec<usize> = vec![0, 2, 3, 4, 5];
    let trace = Trace {
        layers: vec![
            LayerTrace {
                kept: vec![all.clone()],
                selection: vec![Some(selection(&all, &[1], Some(&[0, 2, 5]), 5))],
            },
            LayerTrace {
                kept: vec![after],
                selection: vec![None],
            },
        ],
        assign: Some(vec![vec![0, 1, 1, 0, 0, 1, -1, -1]]),
    };
    let mut method = MethodConfig::new(Variant::Pfc, 4);
    method.combine_layer = 3;
    method.combine_tokens = 3;
    (trace, method)
}
