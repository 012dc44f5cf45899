//! HF `BertModel` tensor names and the shapes a config implies.

use super::config::BertConfig;

pub fn layer_prefix(l: usize) -> String {
    format!("encoder.layer.{l}")
}

/// Every tensor of an HF `BertModel` (without the `bert.` prefix) with its shape, in a
/// stable order. The pooler is listed last; checkpoints without it are accepted.
pub fn bert_tensors(cfg: &BertConfig) -> Vec<(String, Vec<usize>)> {
    let (d, f) = (cfg.hidden_size, cfg.intermediate_size);
    let mut v: Vec<(String, Vec<usize>)> = vec![
        (
            "embeddings.word_embeddings.weight".into(),
            vec![cfg.vocab_size, d],
        ),
        (
            "embeddings.position_embeddings.weight".into(),
            vec![cfg.max_position_embeddings, d],
        ),
        (
            "embeddings.token_type_embeddings.weight".into(),
            vec![cfg.type_vocab_size, d],
        ),
        ("embeddings.LayerNorm.weight".into(), vec![d]),
        ("embeddings.LayerNorm.bias".into(), vec![d]),
    ];
    for l in 0..cfg.num_hidden_layers {
        let p = layer_prefix(l);
        for (name, shape) in [
            ("attention.self.query.weight", vec![d, d]),
            ("attention.self.query.bias", vec![d]),
            ("attention.self.key.weight", vec![d, d]),
            ("attention.self.key.bias", vec![d]),
            ("attention.self.value.weight", vec![d, d]),
            ("attention.self.value.bias", vec![d]),
            ("attention.output.dense.weight", vec![d, d]),
            ("attention.output.dense.bias", vec![d]),
            ("attention.output.LayerNorm.weight", vec![d]),
            ("attention.output.LayerNorm.bias", vec![d]),
            ("intermediate.dense.weight", vec![f, d]),
            ("intermediate.dense.bias", vec![f]),
            ("output.dense.weight", vec![d, f]),
            ("output.dense.bias", vec![d]),
            ("output.LayerNorm.weight", vec![d]),
            ("output.LayerNorm.bias", vec![d]),
        ] {
            v.push((format!("{p}.{name}"), shape));
        }
    }
    v.push(("pooler.dense.weight".into(), vec![d, d]));
    v.push(("pooler.dense.bias".into(), vec![d]));
    v
}

pub fn is_pooler(name: &str) -> bool {
    name.starts_with("pooler.")
}

/// Whether tensor `name` of a classifier with `method` is created for fine-tuning rather
/// than copied from the pretrained checkpoint: the classifier, the combination tokens,
/// the combiner's LayerNorms, and its projections when initialised randomly. Parameter
/// groups (`train --new-lr-scale`) give these their own learning rate.
pub fn is_created(name: &str, method: &super::config::MethodConfig) -> bool {
    name.starts_with("classifier.")
        || name == "comb_tokens"
        || name.starts_with("combiner.norm_")
        || (name.starts_with("combiner.")
            && method.combine_init == super::config::CombineInit::Random)
}

/// The combining module's tensors `combiner.<part>.{weight,bias}`.
pub const COMBINER_PARTS: [&str; 6] = ["norm_c", "norm_e", "w_q", "w_k", "w_v", "w_o"];

/// The combiner's layer block (`CombineBlock::Layer`): `combiner.<part>.{weight,bias}`.
pub const COMBINER_BLOCK_PARTS: [&str; 4] = ["attn_norm", "ffn_in", "ffn_out", "ffn_norm"];
