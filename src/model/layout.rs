//! Parameter ids of each module, resolved once from the names in a `ParamStore`.

use super::combiner::CombinerIds;
use super::config::{BertConfig, CombineBlock, MethodConfig};
use super::names::layer_prefix;
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
        w: need(store, &format!("{prefix}.weight"), &[out, inp])?,
        b: need(store, &format!("{prefix}.bias"), &[out])?,
    })
}

fn norm(store: &ParamStore, prefix: &str, d: usize) -> Result<NormIds> {
    Ok(NormIds {
        g: need(store, &format!("{prefix}.weight"), &[d])?,
        b: need(store, &format!("{prefix}.bias"), &[d])?,
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
            word: need(
                store,
                "embeddings.word_embeddings.weight",
                &[bert.vocab_size, d],
            )?,
            position: need(
                store,
                "embeddings.position_embeddings.weight",
                &[bert.max_position_embeddings, d],
            )?,
            token_type: need(
                store,
                "embeddings.token_type_embeddings.weight",
                &[bert.type_vocab_size, d],
            )?,
            norm: norm(store, "embeddings.LayerNorm", d)?,
        };
        let replaced = method.variant.combines().then(|| method.combine_layer - 1);
        let mut layers = Vec::with_capacity(bert.num_hidden_layers);
        for l in 0..bert.num_hidden_layers {
            if Some(l) == replaced {
                layers.push(None);
                continue;
            }
            let p = layer_prefix(l);
            layers.push(Some(LayerIds {
                query: linear(store, &format!("{p}.attention.self.query"), d, d)?,
                key: linear(store, &format!("{p}.attention.self.key"), d, d)?,
                value: linear(store, &format!("{p}.attention.self.value"), d, d)?,
                attn_out: linear(store, &format!("{p}.attention.output.dense"), d, d)?,
                attn_norm: norm(store, &format!("{p}.attention.output.LayerNorm"), d)?,
                ffn_in: linear(store, &format!("{p}.intermediate.dense"), f, d)?,
                ffn_out: linear(store, &format!("{p}.output.dense"), d, f)?,
                ffn_norm: norm(store, &format!("{p}.output.LayerNorm"), d)?,
            }));
        }
        let pooler = if method.pooling == super::config::Pooling::Cls {
            Some(linear(store, "pooler.dense", d, d)?)
        } else {
            None
        };
        let (comb_tokens, combiner) = if method.variant.combines() {
            let ct = need(store, "comb_tokens", &[method.combine_tokens, d])?;
            for (n, s) in [
                ("norm_c.weight", vec![d]),
                ("norm_c.bias", vec![d]),
                ("norm_e.weight", vec![d]),
                ("norm_e.bias", vec![d]),
            ] {
                need(store, &format!("combiner.{n}"), &s)?;
            }
            for w in ["w_q", "w_k", "w_v", "w_o"] {
                linear(store, &format!("combiner.{w}"), d, d)?;
            }
            let ids =
                CombinerIds::lookup(store).ok_or_else(|| anyhow!("combiner tensors incomplete"))?;
            (Some(ct), Some(ids))
        } else {
            (None, None)
        };
        let combiner_block = (method.variant.combines()
            && method.combine_block == CombineBlock::Layer)
            .then(|| -> Result<FfnBlockIds> {
                Ok(FfnBlockIds {
                    attn_norm: norm(store, "combiner.attn_norm", d)?,
                    ffn_in: linear(store, "combiner.ffn_in", f, d)?,
                    ffn_out: linear(store, "combiner.ffn_out", d, f)?,
                    ffn_norm: norm(store, "combiner.ffn_norm", d)?,
                })
            })
            .transpose()?;
        let classifier = linear(store, "classifier", num_labels, d)?;
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
            v.extend([
                c.norm_c_w, c.norm_c_b, c.norm_e_w, c.norm_e_b, c.w_q, c.b_q, c.w_k, c.b_k, c.w_v,
                c.b_v, c.w_o, c.b_o,
            ]);
        }
        if let Some(c) = &self.combiner_block {
            v.extend([c.ffn_in.w, c.ffn_in.b, c.ffn_out.w, c.ffn_out.b]);
            v.extend([c.attn_norm.g, c.attn_norm.b, c.ffn_norm.g, c.ffn_norm.b]);
        }
        v.extend([self.classifier.w, self.classifier.b]);
        v
    }
}
