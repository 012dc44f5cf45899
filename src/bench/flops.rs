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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Batch, BertConfig, MethodConfig, Mode, Variant};

    fn tiny() -> BertConfig {
        // d = 8, F = 16, 2 heads, vocab 50.
        BertConfig::sized(50, 8, 2, 2, 16)
    }

    fn batch4() -> Batch {
        Batch::from_sequences(&[&[2, 10, 11, 3]], 0)
    }

    #[test]
    fn bert_flops_match_a_hand_count() {
        let model = Model::random(tiny(), MethodConfig::new(Variant::Bert, 2), 2, 1).unwrap();
        let (out, _) = model.forward(&batch4(), Mode::Eval, false);
        // Per layer, T = K = 4, d = 8, F = 16:
        //   Q and output projections 2*4*8*8 each = 512 + 512
        //   K and V projections      2*4*8*8 each = 1024
        //   scores and context       2*4*4*8 each = 512
        //   FFN                      2*2*4*8*16   = 2048      -> 4608 per layer
        // 2 layers = 9216, classifier 2*8*2 = 32.
        assert_eq!(forward_flops(&model, 4, &[4], &out.trace), 9248);
        assert_eq!(backward_flops(9248), 18496);
    }

    #[test]
    fn combining_flops_match_a_hand_count() {
        let mut cfg = tiny();
        cfg.num_hidden_layers = 3;
        let mut method = MethodConfig::new(Variant::C, 3);
        method.combine_layer = 2;
        method.combine_tokens = 2;
        method.combine_init = crate::model::CombineInit::Random;
        let model = Model::random(cfg, method, 2, 1).unwrap();
        let (out, _) = model.forward(&batch4(), Mode::Eval, false);
        // Layer 1 on T = K = 4 + 2 = 6 rows: 768 + 768 + 1536 + 1152 + 3072 = 7296.
        // Combiner: W_k, W_v on 4 rows and W_q, W_o on 2 rows: 2*(8+4)*64 = 1536;
        //           logits and weighted sum 2*2*2*4*8 = 256                -> 1792.
        // Layer 3 on the 2 combined tokens: 256 + 256 + 512 + 128 + 1024 = 2176.
        // Classifier 32. Total 11296.
        assert_eq!(forward_flops(&model, 4, &[4], &out.trace), 11296);
    }
}
