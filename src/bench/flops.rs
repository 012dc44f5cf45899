//! Analytic FLOP counts of the matrix products (2 FLOPs per multiply-add), at the
//! key/value counts a forward pass actually kept.

use crate::model::{Model, Trace};

/// FLOPs of one forward pass's matrix products, from its trace.
/// Per example b and layer on the embedded tokens, with T query rows (padded length plus
/// m combination tokens) and K_b key/value rows (kept tokens plus m):
/// Q and output projections 2·T·d² each, K and V projections 2·K_b·d² each, scores and
/// context 2·T·K_b·d each, FFN 2·2·T·d·F. The combiner: 2·(2N + 2m)·d² for its four
/// projections plus 2·2·m·n_b·d for logits and the weighted sum. Layers after the
/// combiner: the same layer formula with T = K = m. Classifier: 2·d·C.
pub fn forward_flops(model: &Model, seq: usize, lengths: &[usize], trace: &Trace) -> u64 {
    let d = model.bert.hidden_size as u64;
    let f = model.bert.intermediate_size as u64;
    let combines = model.method.variant.combines();
    let m = if combines {
        model.method.combine_tokens as u64
    } else {
        0
    };
    let t = seq as u64 + m;
    let layer = |t: u64, k: u64| {
        2 * t * d * d * 2 + 2 * k * d * d * 2 + 2 * 2 * t * k * d + 2 * 2 * t * d * f
    };
    let mut total = 0u64;
    for lt in &trace.layers {
        for kept in &lt.kept {
            total += layer(t, kept.len() as u64 + m);
        }
    }
    if combines {
        let n = seq as u64;
        for &len in lengths {
            total += 2 * (2 * n + 2 * m) * d * d + 2 * 2 * m * len as u64 * d;
            let after = (model.bert.num_hidden_layers - model.method.combine_layer) as u64;
            total += after * layer(m, m);
        }
    }
    total + lengths.len() as u64 * 2 * d * model.num_labels as u64
}

/// FLOPs of the backward pass's matrix products: each forward product is differentiated
/// into two products of the same size (input gradient and weight gradient), so twice the
/// forward count. (The first layer's input gradient is needed for the embeddings.)
pub fn backward_flops(forward: u64) -> u64 {
    2 * forward
}
