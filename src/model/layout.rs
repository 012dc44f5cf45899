//! Parameter ids of each module, resolved once from the names in a `ParamStore` (the
//! names are those of `names.rs`). Modules take their ids from here and read tensors and
//! gradients by id: a gradient store is a `zeros_like` of the parameters, so the same id
//! addresses a tensor's gradient.

use super::config::{BertConfig, CombineBlock, MethodConfig, Pooling};
use super::names::{self, bias, weight};
use super::params::{ParamId, ParamStore};
use anyhow::{anyhow, bail, Result};

#[derive(Clone, Copy, Debug)]
pub struct LinearIds {
    pub w: ParamId,
    pub b: ParamId,
}

#[derive(Clone, Copy, Debug)]
pub struct NormIds {
    pub g: ParamId,
    pub b: ParamId,
}

#[derive(Clone, Copy, Debug)]
pub struct EmbeddingIds {
    pub word: ParamId,
    pub position: ParamId,
    pub token_type: ParamId,
    pub norm: NormIds,
}

#[derive(Clone, Copy, Debug)]
pub struct LayerIds {
    pub query: LinearIds,
    pub key: LinearIds,
    pub value: LinearIds,
    pub attn_out: LinearIds,
    pub attn_norm: NormIds,
    pub ffn_in: LinearIds,
    pub ffn_out: LinearIds,
    pub ffn_norm: NormIds,
}

/// The second half of a transformer layer: the attention LayerNorm over the residual sum
/// `s1`, then the feed-forward block with its residual and output LayerNorm. Every layer
/// ends with it; so does the combining module with `CombineBlock::Layer`.
#[derive(Clone, Copy, Debug)]
pub struct FfnBlockIds {
    pub attn_norm: NormIds,
    pub ffn_in: LinearIds,
    pub ffn_out: LinearIds,
    pub ffn_norm: NormIds,
}

/// The combining module's tensors (`combiner.<part>`, see `names::COMBINER_PARTS`).
#[derive(Clone, Copy, Debug)]
pub struct CombinerIds {
    /// LN_c on the combination tokens, LN_e on the embedded tokens.
    pub norm_c: NormIds,
    pub norm_e: NormIds,
    pub query: LinearIds,
    pub key: LinearIds,
    pub value: LinearIds,
    pub out: LinearIds,
}

impl CombinerIds {
    /// Resolves the combiner's tensors of hidden size `d`, checking shapes.
    pub fn resolve(store: &ParamStore, d: usize) -> Result<CombinerIds> {
        Ok(CombinerIds {
            norm_c: norm(store, names::COMBINER_NORM_C, d)?,
            norm_e: norm(store, names::COMBINER_NORM_E, d)?,
            query: linear(store, names::COMBINER_QUERY, d, d)?,
            key: linear(store, names::COMBINER_KEY, d, d)?,
            value: linear(store, names::COMBINER_VALUE, d, d)?,
            out: linear(store, names::COMBINER_OUT, d, d)?,
        })
    }
}

impl LayerIds {
    pub fn ffn_block(&self) -> FfnBlockIds {
        FfnBlockIds {
            attn_norm: self.attn_norm,
            ffn_in: self.ffn_in,
            ffn_out: self.ffn_out,
            ffn_norm: self.ffn_norm,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Layout {
    pub embeddings: EmbeddingIds,
    /// One entry per transformer layer; `None` for the layer the combiner replaces.
    pub layers: Vec<Option<LayerIds>>,
    pub pooler: Option<LinearIds>,
    pub comb_tokens: Option<ParamId>,
    pub combiner: Option<CombinerIds>,
    /// The combiner's layer block (`CombineBlock::Layer`).
    pub combiner_block: Option<FfnBlockIds>,
    pub classifier: LinearIds,
}

fn need(store: &ParamStore, name: &str, shape: &[usize]) -> Result<ParamId> {
    let id = store
        .id(name)
        .ok_or_else(|| anyhow!("missing tensor `{name}` (expected shape {shape:?})"))?;
    let got = &store.tensors[id].shape;
    if got.as_slice() != shape {
        bail!("tensor `{name}` has shape {got:?}, expected {shape:?}");
    }
    Ok(id)
}

fn linear(store: &ParamStore, prefix: &str, out: usize, inp: usize) -> Result<LinearIds> {
    Ok(LinearIds {
        w: need(store, &weight(prefix), &[out, inp])?,
        b: need(store, &bias(prefix), &[out])?,
    })
}

fn norm(store: &ParamStore, prefix: &str, d: usize) -> Result<NormIds> {
    Ok(NormIds {
        g: need(store, &weight(prefix), &[d])?,
        b: need(store, &bias(prefix), &[d])?,
    })
}

impl Layout {
    /// Resolves every tensor the configuration needs, checking shapes.
    pub fn resolve(
        store: &ParamStore,
        bert: &BertConfig,
        method: &MethodConfig,
        num_labels: usize,
    ) -> Result<Layout> {
        let (d, f) = (bert.hidden_size, bert.intermediate_size);
        let embeddings = EmbeddingIds {
            word: need(store, names::WORD_EMBEDDINGS, &[bert.vocab_size, d])?,
            position: need(
                store,
                names::POSITION_EMBEDDINGS,
                &[bert.max_position_embeddings, d],
            )?,
            token_type: need(
                store,
                names::TOKEN_TYPE_EMBEDDINGS,
                &[bert.type_vocab_size, d],
            )?,
            norm: norm(store, names::EMBEDDINGS_NORM, d)?,
        };
        let replaced = method.variant.combines().then(|| method.combine_layer - 1);
        let mut layers = Vec::with_capacity(bert.num_hidden_layers);
        for l in 0..bert.num_hidden_layers {
            if Some(l) == replaced {
                layers.push(None);
                continue;
            }
            let part = |name: &str| names::layer_part(l, name);
            layers.push(Some(LayerIds {
                query: linear(store, &part(names::QUERY), d, d)?,
                key: linear(store, &part(names::KEY), d, d)?,
                value: linear(store, &part(names::VALUE), d, d)?,
                attn_out: linear(store, &part(names::ATTN_OUT), d, d)?,
                attn_norm: norm(store, &part(names::ATTN_NORM), d)?,
                ffn_in: linear(store, &part(names::FFN_IN), f, d)?,
                ffn_out: linear(store, &part(names::FFN_OUT), d, f)?,
                ffn_norm: norm(store, &part(names::FFN_NORM), d)?,
            }));
        }
        let pooler = if method.pooling == Pooling::Cls {
            Some(linear(store, names::POOLER, d, d)?)
        } else {
            None
        };
        let (comb_tokens, combiner) = if method.variant.combines() {
            let ct = need(store, names::COMB_TOKENS, &[method.combine_tokens, d])?;
            (Some(ct), Some(CombinerIds::resolve(store, d)?))
        } else {
            (None, None)
        };
        let combiner_block = (method.variant.combines()
            && method.combine_block == CombineBlock::Layer)
            .then(|| -> Result<FfnBlockIds> {
                Ok(FfnBlockIds {
                    attn_norm: norm(store, names::COMBINER_ATTN_NORM, d)?,
                    ffn_in: linear(store, names::COMBINER_FFN_IN, f, d)?,
                    ffn_out: linear(store, names::COMBINER_FFN_OUT, d, f)?,
                    ffn_norm: norm(store, names::COMBINER_FFN_NORM, d)?,
                })
            })
            .transpose()?;
        let classifier = linear(store, names::CLASSIFIER, num_labels, d)?;
        Ok(Layout {
            embeddings,
            layers,
            pooler,
            comb_tokens,
            combiner,
            combiner_block,
            classifier,
        })
    }
}

impl Layout {
    /// Every tensor id the layout refers to.
    pub fn ids(&self) -> Vec<ParamId> {
        let mut v = Vec::new();
        let e = &self.embeddings;
        v.extend([e.word, e.position, e.token_type, e.norm.g, e.norm.b]);
        for l in self.layers.iter().flatten() {
            for lin in [l.query, l.key, l.value, l.attn_out, l.ffn_in, l.ffn_out] {
                v.extend([lin.w, lin.b]);
            }
            for n in [l.attn_norm, l.ffn_norm] {
                v.extend([n.g, n.b]);
            }
        }
        if let Some(p) = self.pooler {
            v.extend([p.w, p.b]);
        }
        v.extend(self.comb_tokens);
        if let Some(c) = &self.combiner {
            for n in [c.norm_c, c.norm_e] {
                v.extend([n.g, n.b]);
            }
            for lin in [c.query, c.key, c.value, c.out] {
                v.extend([lin.w, lin.b]);
            }
        }
        if let Some(c) = &self.combiner_block {
            v.extend([c.ffn_in.w, c.ffn_in.b, c.ffn_out.w, c.ffn_out.b]);
            v.extend([c.attn_norm.g, c.attn_norm.b, c.ffn_norm.g, c.ffn_norm.b]);
        }
        v.extend([self.classifier.w, self.classifier.b]);
        v
    }
}
