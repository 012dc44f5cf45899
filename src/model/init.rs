//! The tensors of a new classifier: a pretrained BERT's, plus those fine-tuning creates
//! (the classifier, and with combining the combination tokens and the combiner); or a
//! whole BERT at random. The draws from the seeded generator happen in a fixed order
//! (the tensors' order in the store), so a seed gives the same model every time.

use super::config::{
    BertConfig, CombineBlock, CombineInit, CombineTokenInit, MethodConfig, Pooling,
};
use super::names::{self, bias, weight};
use super::params::ParamStore;
use crate::kernels::layernorm::layernorm_forward;
use crate::rng::Rng;
use anyhow::{anyhow, bail, Result};

fn normal_vec(rng: &mut Rng, n: usize, std: f32) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32 * std).collect()
}

/// BERT's initialisation: N(0, initializer_range) weights and embeddings, zero biases,
/// LayerNorm 1/0.
pub fn random_bert(bert: &BertConfig, seed: u64) -> ParamStore {
    let mut rng = Rng::new(seed);
    let mut store = ParamStore::new();
    for (name, shape) in names::bert_tensors(bert) {
        let n: usize = shape.iter().product();
        let data = if names::is_norm_weight(&name) {
            vec![1.0; n]
        } else if shape.len() == 2 {
            normal_vec(&mut rng, n, bert.initializer_range)
        } else {
            vec![0.0; n]
        };
        store.add(&name, &shape, data);
    }
    store
}

/// Every tensor of a classifier on the pretrained `bert_params` (see
/// `Model::from_bert_params`); the settings are already validated.
pub fn classifier_tensors(
    bert: &BertConfig,
    bert_params: &ParamStore,
    method: &MethodConfig,
    num_labels: usize,
    seed: u64,
) -> Result<ParamStore> {
    let d = bert.hidden_size;
    let mut rng = Rng::new(seed ^ 0xC1A5_51F1);
    let mut store = copy_bert(bert, bert_params, method, &mut rng)?;
    if method.variant.combines() {
        add_combiner(&mut store, bert, bert_params, method, &mut rng)?;
        if method.combine_block == CombineBlock::Layer {
            add_combiner_block(&mut store, bert, bert_params, method, &mut rng)?;
        }
    }
    let classifier_w = normal_vec(&mut rng, num_labels * d, bert.initializer_range);
    store.add(&weight(names::CLASSIFIER), &[num_labels, d], classifier_w);
    store.add(
        &bias(names::CLASSIFIER),
        &[num_labels],
        vec![0.0; num_labels],
    );
    Ok(store)
}

/// The pretrained tensors the classifier keeps: all but the layer the combiner replaces
/// and an unused pooler. A pooler the checkpoint lacks is created (N(0,
/// initializer_range), zero bias).
fn copy_bert(
    bert: &BertConfig,
    bert_params: &ParamStore,
    method: &MethodConfig,
    rng: &mut Rng,
) -> Result<ParamStore> {
    let replaced = method
        .variant
        .combines()
        .then(|| names::layer_prefix(method.combine_layer - 1) + ".");
    let mut store = ParamStore::new();
    for (name, shape) in names::bert_tensors(bert) {
        if replaced.as_deref().is_some_and(|r| name.starts_with(r)) {
            continue;
        }
        if names::is_pooler(&name) && method.pooling != Pooling::Cls {
            continue;
        }
        match bert_params.get(&name) {
            Some(t) if t.shape == shape => {
                store.add(&name, &shape, t.data.clone());
            }
            Some(t) => bail!(
                "tensor `{name}` has shape {:?}, expected {shape:?}",
                t.shape
            ),
            None if names::is_pooler(&name) => {
                let n: usize = shape.iter().product();
                let data = if shape.len() == 2 {
                    normal_vec(rng, n, bert.initializer_range)
                } else {
                    vec![0.0; n]
                };
                store.add(&name, &shape, data);
            }
            None => bail!("missing tensor `{name}` (expected shape {shape:?})"),
        }
    }
    Ok(store)
}

/// The data of tensor `name` of the pretrained checkpoint.
fn pretrained(bert_params: &ParamStore, name: &str) -> Result<Vec<f32>> {
    bert_params
        .get(name)
        .map(|t| t.data.clone())
        .ok_or_else(|| anyhow!("missing tensor `{name}`"))
}

/// The combination tokens (`combine_token_init`) and the combiner: LayerNorms 1/0, and
/// the projections copied from the replaced layer's query/key/value/attention-output
/// (`CombineInit::Copy`) or N(0, 0.02) with zero bias (`Random`).
fn add_combiner(
    store: &mut ParamStore,
    bert: &BertConfig,
    bert_params: &ParamStore,
    method: &MethodConfig,
    rng: &mut Rng,
) -> Result<()> {
    let (d, m) = (bert.hidden_size, method.combine_tokens);
    let tokens = match method.combine_token_init {
        CombineTokenInit::Normal => normal_vec(rng, m * d, 0.02),
        CombineTokenInit::Vocab => vocab_token_states(bert, bert_params, m, rng)?,
    };
    store.add(names::COMB_TOKENS, &[m, d], tokens);
    for norm in [names::COMBINER_NORM_C, names::COMBINER_NORM_E] {
        store.add(&weight(norm), &[d], vec![1.0; d]);
        store.add(&bias(norm), &[d], vec![0.0; d]);
    }
    let replaced = method.combine_layer - 1;
    for (ours, part) in names::COMBINER_PROJECTIONS {
        let (w, b) = match method.combine_init {
            CombineInit::Copy => {
                let src = names::layer_part(replaced, part);
                (
                    pretrained(bert_params, &weight(&src))?,
                    pretrained(bert_params, &bias(&src))?,
                )
            }
            CombineInit::Random => (normal_vec(rng, d * d, 0.02), vec![0.0; d]),
        };
        store.add(&weight(ours), &[d, d], w);
        store.add(&bias(ours), &[d], b);
    }
    Ok(())
}

/// The combiner's layer block (`CombineBlock::Layer`): the second half of the replaced
/// layer, copied from it (`CombineInit::Copy`) or initialised as BERT's with std 0.02.
fn add_combiner_block(
    store: &mut ParamStore,
    bert: &BertConfig,
    bert_params: &ParamStore,
    method: &MethodConfig,
    rng: &mut Rng,
) -> Result<()> {
    let (d, f) = (bert.hidden_size, bert.intermediate_size);
    let replaced = method.combine_layer - 1;
    // (weight shape, bias length) of attn_norm, ffn_in, ffn_out, ffn_norm.
    let shapes = [(vec![d], d), (vec![f, d], f), (vec![d, f], d), (vec![d], d)];
    for ((ours, part), (w_shape, out)) in names::COMBINER_BLOCK_SOURCES.into_iter().zip(shapes) {
        let src = names::layer_part(replaced, part);
        let n: usize = w_shape.iter().product();
        let w = match method.combine_init {
            CombineInit::Copy => pretrained(bert_params, &weight(&src))?,
            CombineInit::Random if w_shape.len() == 1 => vec![1.0; n],
            CombineInit::Random => normal_vec(rng, n, 0.02),
        };
        store.add(&weight(ours), &w_shape, w);
        let b = match method.combine_init {
            CombineInit::Copy => pretrained(bert_params, &bias(&src))?,
            CombineInit::Random => vec![0.0; out],
        };
        store.add(&bias(ours), &[out], b);
    }
    Ok(())
}

/// `m` rows at the scale of real embedded tokens (`CombineTokenInit::Vocab`): the
/// embedding of `m` random vocabulary tokens (word + token type 0, no position, as the
/// combination tokens have none), through the embedding LayerNorm. Distinct from each
/// other, with norms like real tokens' (11.4 against 0.40 for N(0, 0.02) rows on MiniLM-L6).
fn vocab_token_states(
    bert: &BertConfig,
    params: &ParamStore,
    m: usize,
    rng: &mut Rng,
) -> Result<Vec<f32>> {
    let d = bert.hidden_size;
    let get = |name: &str| {
        params
            .get(name)
            .map(|t| t.data.as_slice())
            .ok_or_else(|| anyhow!("missing tensor `{name}`"))
    };
    let word = get(names::WORD_EMBEDDINGS)?;
    let token_type = &get(names::TOKEN_TYPE_EMBEDDINGS)?[..d];
    let (g, b) = (
        get(&weight(names::EMBEDDINGS_NORM))?,
        get(&bias(names::EMBEDDINGS_NORM))?,
    );
    let mut sum = vec![0.0f32; m * d];
    for row in sum.chunks_mut(d) {
        let id = rng.below(bert.vocab_size);
        for ((s, w), t) in row
            .iter_mut()
            .zip(&word[id * d..(id + 1) * d])
            .zip(token_type)
        {
            *s = w + t;
        }
    }
    let mut out = vec![0.0f32; m * d];
    let (mut mean, mut rstd) = (vec![0.0f32; m], vec![0.0f32; m]);
    let eps = bert.layer_norm_eps as f32;
    layernorm_forward(&sum, m, d, g, b, eps, &mut out, &mut mean, &mut rstd);
    Ok(out)
}
