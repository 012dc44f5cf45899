//! Every tensor name of a classifier, in one place: HF `BertModel`'s (without the `bert.`
//! prefix), the pooler and classifier heads, the combination tokens and the combiner.
//! A `{weight, bias}` pair is named by its prefix (see [`weight`] and [`bias`]).

use super::config::{BertConfig, CombineInit, MethodConfig};

pub const WORD_EMBEDDINGS: &str = "embeddings.word_embeddings.weight";
pub const POSITION_EMBEDDINGS: &str = "embeddings.position_embeddings.weight";
pub const TOKEN_TYPE_EMBEDDINGS: &str = "embeddings.token_type_embeddings.weight";
pub const EMBEDDINGS_NORM: &str = "embeddings.LayerNorm";
pub const POOLER: &str = "pooler.dense";
pub const CLASSIFIER: &str = "classifier";
/// The `[m, d]` combination tokens.
pub const COMB_TOKENS: &str = "comb_tokens";

/// The parts of a transformer layer, under [`layer_prefix`]; each a `{weight, bias}` pair.
pub const QUERY: &str = "attention.self.query";
pub const KEY: &str = "attention.self.key";
pub const VALUE: &str = "attention.self.value";
pub const ATTN_OUT: &str = "attention.output.dense";
pub const ATTN_NORM: &str = "attention.output.LayerNorm";
pub const FFN_IN: &str = "intermediate.dense";
pub const FFN_OUT: &str = "output.dense";
pub const FFN_NORM: &str = "output.LayerNorm";

pub fn layer_prefix(l: usize) -> String {
    format!("encoder.layer.{l}")
}

/// Part `part` of transformer layer `l` (0-based), e.g. `encoder.layer.2.output.dense`.
pub fn layer_part(l: usize, part: &str) -> String {
    format!("{}.{part}", layer_prefix(l))
}

/// Part `part` (one of [`COMBINER_PARTS`] or [`COMBINER_BLOCK_PARTS`]) of the combiner.
pub fn combiner_part(part: &str) -> String {
    format!("combiner.{part}")
}

pub fn weight(prefix: &str) -> String {
    format!("{prefix}.weight")
}

pub fn bias(prefix: &str) -> String {
    format!("{prefix}.bias")
}

/// Every tensor of an HF `BertModel` (without the `bert.` prefix) with its shape, in a
/// stable order. The pooler is listed last; checkpoints without it are accepted.
pub fn bert_tensors(cfg: &BertConfig) -> Vec<(String, Vec<usize>)> {
    let (d, f) = (cfg.hidden_size, cfg.intermediate_size);
    let mut v: Vec<(String, Vec<usize>)> = vec![
        (WORD_EMBEDDINGS.into(), vec![cfg.vocab_size, d]),
        (
            POSITION_EMBEDDINGS.into(),
            vec![cfg.max_position_embeddings, d],
        ),
        (TOKEN_TYPE_EMBEDDINGS.into(), vec![cfg.type_vocab_size, d]),
        (weight(EMBEDDINGS_NORM), vec![d]),
        (bias(EMBEDDINGS_NORM), vec![d]),
    ];
    for l in 0..cfg.num_hidden_layers {
        for (part, out, inp) in [
            (QUERY, d, Some(d)),
            (KEY, d, Some(d)),
            (VALUE, d, Some(d)),
            (ATTN_OUT, d, Some(d)),
            (ATTN_NORM, d, None),
            (FFN_IN, f, Some(d)),
            (FFN_OUT, d, Some(f)),
            (FFN_NORM, d, None),
        ] {
            let p = layer_part(l, part);
            let w_shape = inp.map_or(vec![out], |i| vec![out, i]);
            v.push((weight(&p), w_shape));
            v.push((bias(&p), vec![out]));
        }
    }
    v.push((weight(POOLER), vec![d, d]));
    v.push((bias(POOLER), vec![d]));
    v
}

pub fn is_pooler(name: &str) -> bool {
    name.starts_with("pooler.")
}

/// Whether `name` is a LayerNorm gain (initialised to 1).
pub fn is_norm_weight(name: &str) -> bool {
    name.contains("LayerNorm.weight")
}

/// Whether tensor `name` of a classifier with `method` is created for fine-tuning rather
/// than copied from the pretrained checkpoint: the classifier, the combination tokens,
/// the combiner's LayerNorms, and its projections when initialised randomly. Parameter
/// groups (`train --new-lr-scale`) give these their own learning rate.
pub fn is_created(name: &str, method: &MethodConfig) -> bool {
    name.starts_with("classifier.")
        || name == COMB_TOKENS
        || name.starts_with("combiner.norm_")
        || (name.starts_with("combiner.") && method.combine_init == CombineInit::Random)
}

/// The combiner's `{weight, bias}` pairs: LN_c on the combination tokens, LN_e on the
/// embedded ones, and the query/key/value/output projections.
pub const COMBINER_NORM_C: &str = "combiner.norm_c";
pub const COMBINER_NORM_E: &str = "combiner.norm_e";
pub const COMBINER_QUERY: &str = "combiner.w_q";
pub const COMBINER_KEY: &str = "combiner.w_k";
pub const COMBINER_VALUE: &str = "combiner.w_v";
pub const COMBINER_OUT: &str = "combiner.w_o";

/// The combiner's layer block (`CombineBlock::Layer`): the second half of the layer it
/// replaces.
pub const COMBINER_ATTN_NORM: &str = "combiner.attn_norm";
pub const COMBINER_FFN_IN: &str = "combiner.ffn_in";
pub const COMBINER_FFN_OUT: &str = "combiner.ffn_out";
pub const COMBINER_FFN_NORM: &str = "combiner.ffn_norm";

/// The combining module's tensors `combiner.<part>.{weight,bias}`.
pub const COMBINER_PARTS: [&str; 6] = ["norm_c", "norm_e", "w_q", "w_k", "w_v", "w_o"];

/// The combiner's layer block (`CombineBlock::Layer`): `combiner.<part>.{weight,bias}`.
pub const COMBINER_BLOCK_PARTS: [&str; 4] = ["attn_norm", "ffn_in", "ffn_out", "ffn_norm"];

/// The combiner's projections, each with the part of the replaced layer that
/// `CombineInit::Copy` copies it from.
pub const COMBINER_PROJECTIONS: [(&str, &str); 4] = [
    (COMBINER_QUERY, QUERY),
    (COMBINER_KEY, KEY),
    (COMBINER_VALUE, VALUE),
    (COMBINER_OUT, ATTN_OUT),
];

/// The block's tensors, each with the part of the replaced layer it is copied from.
pub const COMBINER_BLOCK_SOURCES: [(&str, &str); 4] = [
    (COMBINER_ATTN_NORM, ATTN_NORM),
    (COMBINER_FFN_IN, FFN_IN),
    (COMBINER_FFN_OUT, FFN_OUT),
    (COMBINER_FFN_NORM, FFN_NORM),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combiner_prefixes_are_its_parts() {
        let prefixes = [
            COMBINER_NORM_C,
            COMBINER_NORM_E,
            COMBINER_QUERY,
            COMBINER_KEY,
            COMBINER_VALUE,
            COMBINER_OUT,
        ];
        for (prefix, part) in prefixes.iter().zip(COMBINER_PARTS) {
            assert_eq!(*prefix, combiner_part(part));
        }
        for ((prefix, _), part) in COMBINER_BLOCK_SOURCES.iter().zip(COMBINER_BLOCK_PARTS) {
            assert_eq!(*prefix, combiner_part(part));
        }
    }
}
