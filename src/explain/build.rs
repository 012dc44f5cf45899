//! Building the explanation as data: the forward pass's `Trace` of one example turned
//! into an [`Explanation`] (per token: the layers in which it served as key/value, its
//! fuzzy protection, its combination token; per layer: the kept set and the decision made
//! from it).

use serde::Serialize;

use crate::model::{MethodConfig, Pooling, Trace};

/// A token of the document: its text and its position in the example (0 = `[CLS]`).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TokenView {
    pub text: String,
    pub position: usize,
}

/// The variant's settings, as far as they shape the explanation.
#[derive(Clone, Debug, Serialize)]
pub struct SettingsSummary {
    /// `bert`, `p`, `pf`, `c` or `pfc`.
    pub variant: String,
    /// One line for people, e.g. "PF: fuzzy token pruning, keep ratio 0.9, ...".
    pub summary: String,
    pub num_layers: usize,
    /// Layers that ran on the document's tokens (1 ..= this); the rest, with combining,
    /// ran on the combination tokens.
    pub token_layers: usize,
    /// Preservation ratio p (1 without pruning).
    pub keep_ratio: f32,
    /// Fuzzy protection settings (PF, PFC).
    pub fuzzy: Option<FuzzySettings>,
    /// Token combining settings (C, PFC).
    pub combining: Option<CombineSettings>,
    /// `mean` or `cls`.
    pub pooling: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct FuzzySettings {
    pub pct_low: f32,
    pub pct_high: f32,
    pub imp_thresh: f32,
    pub unimp_thresh: f32,
}

#[derive(Clone, Debug, Serialize)]
pub struct CombineSettings {
    /// 1-based layer replaced by the combining module.
    pub layer: usize,
    /// Number of combination tokens m.
    pub tokens: usize,
    /// Assignment heads; with more than one, the groups shown are head 0's.
    pub heads: usize,
}

/// What happened to one token of the document.
#[derive(Clone, Debug, Serialize)]
pub struct TokenExplanation {
    pub text: String,
    pub position: usize,
    /// Last layer (1-based) in which the token was a key/value; 0 if it never was (only
    /// possible for a trace that recorded no layers).
    pub last_kept_layer: usize,
    /// Per token layer (index 0 = layer 1): kept as key/value there.
    pub kept: Vec<bool>,
    /// Per token layer: protected by the fuzzy decision made from that layer; None where
    /// no fuzzy decision was made or the token was no longer a candidate.
    pub protected: Vec<Option<bool>>,
    /// Per token layer: Σ over heads of its mean received attention, as the decision
    /// made from that layer saw it (None where no decision involved it).
    pub head_sum: Vec<Option<f32>>,
    /// Per token layer: fuzzy Importance membership (None where not computed).
    pub importance: Vec<Option<f32>>,
    /// Combination token it was assigned to (with combining).
    pub assignment: Option<usize>,
}

/// The decision made from one layer's attention for the next layer.
#[derive(Clone, Debug, Serialize)]
pub struct LayerDecision {
    /// The layer whose keys/values this decision chose (1-based).
    pub next_layer: usize,
    pub candidates: usize,
    /// How many the ratio asked to keep.
    pub requested: usize,
    /// How many were kept (more than requested when protection saved tokens).
    pub kept: usize,
    /// Fuzzy percentiles a and b (PF, PFC).
    pub a: Option<f32>,
    pub b: Option<f32>,
    /// Tokens protected by the fuzzy rule (empty without fuzzy protection).
    pub protected: Vec<TokenView>,
    /// Tokens removed by this decision.
    pub pruned: Vec<TokenView>,
}

/// One layer that ran on the document's tokens.
#[derive(Clone, Debug, Serialize)]
pub struct LayerExplanation {
    /// 1-based.
    pub layer: usize,
    /// Positions used as keys/values, ascending.
    pub kept: Vec<usize>,
    pub decision: Option<LayerDecision>,
}

/// The tokens merged into one combination token.
#[derive(Clone, Debug, Serialize)]
pub struct CombinationGroup {
    /// 0-based index of the combination token.
    pub index: usize,
    pub tokens: Vec<TokenView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LabelProbability {
    pub label: String,
    pub probability: f32,
}

#[derive(Clone, Debug, Serialize)]
pub struct Prediction {
    /// Index and name of the most probable label (None without probabilities).
    pub index: Option<usize>,
    pub label: Option<String>,
    /// Every label with its probability, in label order.
    pub probabilities: Vec<LabelProbability>,
}

/// The explanation of one example; see the module docs.
#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    pub settings: SettingsSummary,
    pub tokens: Vec<TokenExplanation>,
    pub layers: Vec<LayerExplanation>,
    /// Per combination token, the document tokens assigned to it (with combining).
    pub combination: Option<Vec<CombinationGroup>>,
    pub prediction: Prediction,
}

/// Builds the explanation of ONE example (index `b` of the batch) from a forward trace.
///
/// `tokens` are the token strings of that example, real tokens only (`[CLS]` and `[SEP]`
/// included), so position `j` of the trace is `tokens[j]`. `num_layers` is the model's
/// layer count; `labels` and `probabilities` are in label order.
///
/// Panics if the trace does not belong to `tokens` (a position beyond them, or `b` out of
/// range): that is a caller bug, not a user error.
pub fn explain(
    tokens: &[String],
    trace: &Trace,
    b: usize,
    method: &MethodConfig,
    num_layers: usize,
    labels: &[String],
    probabilities: &[f32],
) -> Explanation {
    let n = tokens.len();
    let num_token_layers = trace.layers.len();
    let view = |position: usize| TokenView {
        text: tokens[position].clone(),
        position,
    };
    let mut per_token: Vec<TokenExplanation> = tokens
        .iter()
        .enumerate()
        .map(|(position, text)| TokenExplanation {
            text: text.clone(),
            position,
            last_kept_layer: 0,
            kept: vec![false; num_token_layers],
            protected: vec![None; num_token_layers],
            head_sum: vec![None; num_token_layers],
            importance: vec![None; num_token_layers],
            assignment: None,
        })
        .collect();

    let mut layers = Vec::with_capacity(num_token_layers);
    for (l, layer) in trace.layers.iter().enumerate() {
        let kept = &layer.kept[b];
        for &pos in kept {
            assert!(
                pos < n,
                "trace layer {} keeps position {pos} but the example has {n} tokens",
                l + 1
            );
            per_token[pos].kept[l] = true;
            per_token[pos].last_kept_layer = l + 1;
        }
        let decision = layer.selection.get(b).and_then(|s| s.as_ref()).map(|sel| {
            // The selection's per-candidate vectors are in the order of this layer's kept set.
            let mut protected = Vec::new();
            let mut pruned = Vec::new();
            for (i, &pos) in kept.iter().enumerate() {
                let token = &mut per_token[pos];
                token.head_sum[l] = sel.head_sum.get(i).copied();
                token.importance[l] = sel.importance.get(i).copied();
                if let Some(&p) = sel.protected.get(i) {
                    token.protected[l] = Some(p);
                    if p {
                        protected.push(view(pos));
                    }
                }
                if sel.pruned.get(i).copied().unwrap_or(false) {
                    pruned.push(view(pos));
                }
            }
            let fuzzy = !sel.protected.is_empty();
            LayerDecision {
                next_layer: l + 2,
                candidates: kept.len(),
                requested: sel.n_requested,
                kept: sel.kept.len(),
                a: fuzzy.then_some(sel.a),
                b: fuzzy.then_some(sel.b),
                protected,
                pruned,
            }
        });
        layers.push(LayerExplanation {
            layer: l + 1,
            kept: kept.clone(),
            decision,
        });
    }

    let combination = trace.assign.as_ref().map(|assign| {
        let row = &assign[b];
        let mut groups: Vec<CombinationGroup> = (0..method.combine_tokens)
            .map(|index| CombinationGroup {
                index,
                tokens: Vec::new(),
            })
            .collect();
        for (pos, token) in per_token.iter_mut().enumerate() {
            // -1 marks padding; real tokens always have a combination token.
            let Some(&c) = row.get(pos) else { continue };
            if c < 0 {
                continue;
            }
            let c = c as usize;
            while groups.len() <= c {
                groups.push(CombinationGroup {
                    index: groups.len(),
                    tokens: Vec::new(),
                });
            }
            token.assignment = Some(c);
            groups[c].tokens.push(view(pos));
        }
        groups
    });

    Explanation {
        settings: summarize_settings(method, num_layers, num_token_layers),
        tokens: per_token,
        layers,
        combination,
        prediction: prediction(labels, probabilities),
    }
}

fn summarize_settings(
    method: &MethodConfig,
    num_layers: usize,
    token_layers: usize,
) -> SettingsSummary {
    let v = method.variant;
    let fuzzy = v.fuzzy().then_some(FuzzySettings {
        pct_low: method.pct_low,
        pct_high: method.pct_high,
        imp_thresh: method.imp_thresh,
        unimp_thresh: method.unimp_thresh,
    });
    let combining = v.combines().then_some(CombineSettings {
        layer: method.combine_layer,
        tokens: method.combine_tokens,
        heads: method.combine_heads,
    });
    let pooling = match method.pooling {
        Pooling::Mean => "mean",
        Pooling::Cls => "cls",
    };
    let mut parts = vec![format!("{} layers", num_layers)];
    if v.prunes() {
        parts.push(format!(
            "{} pruning of keys/values, keep ratio {}{}",
            if v.fuzzy() { "fuzzy" } else { "ratio" },
            method.keep_ratio,
            match method.prune_min_len {
                0 => String::new(),
                n => format!(" (texts of at most {n} tokens are not pruned)"),
            }
        ));
    } else {
        parts.push("no pruning".into());
    }
    if let Some(f) = &fuzzy {
        parts.push(format!(
            "percentiles {}/{}, thresholds {}/{}",
            f.pct_low, f.pct_high, f.imp_thresh, f.unimp_thresh
        ));
    }
    if let Some(c) = &combining {
        parts.push(format!(
            "combining into {} tokens at layer {}",
            c.tokens, c.layer
        ));
    }
    if !v.combines() {
        parts.push(format!("{pooling} pooling"));
    }
    SettingsSummary {
        variant: v.name().into(),
        summary: format!("{}: {}", v.name().to_uppercase(), parts.join(", ")),
        num_layers,
        token_layers,
        keep_ratio: method.keep_ratio,
        fuzzy,
        combining,
        pooling: pooling.into(),
    }
}

fn prediction(labels: &[String], probabilities: &[f32]) -> Prediction {
    let label_name = |i: usize| {
        labels
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("class {i}"))
    };
    let index = probabilities
        .iter()
        .enumerate()
        .max_by(|x, y| x.1.total_cmp(y.1))
        .map(|(i, _)| i);
    Prediction {
        index,
        label: index.map(label_name),
        probabilities: probabilities
            .iter()
            .enumerate()
            .map(|(i, &probability)| LabelProbability {
                label: label_name(i),
                probability,
            })
            .collect(),
    }
}

/// Runs the checkpoint on the text and builds its explanation.
pub fn explain_text(
    model: &crate::model::Model,
    tokenizer: &crate::data::tokenize::TextTokenizer,
    labels: &[String],
    max_len: usize,
    text: &str,
) -> anyhow::Result<Explanation> {
    use crate::model::{Batch, Mode};
    let ids = tokenizer.encode(text, max_len)?;
    let batch = Batch::from_sequences(&[ids.as_slice()], tokenizer.pad_id());
    model.check_batch(&batch)?;
    let (out, _) = model.forward(&batch, Mode::Eval, false);
    let mut probs = vec![0.0f32; model.num_labels];
    crate::kernels::loss::softmax_rows(&out.logits, 1, model.num_labels, &mut probs);
    let tokens: Vec<String> = ids.iter().map(|&i| tokenizer.id_to_token(i)).collect();
    Ok(explain(
        &tokens,
        &out.trace,
        0,
        &model.method,
        model.bert.num_hidden_layers,
        labels,
        &probs,
    ))
}

#[cfg(test)]
mod tests {
    use crate::explain::test_support::pf_explanation;

    #[test]
    fn pf_explanation_records_kept_layers_and_protection() {
        let e = pf_explanation();
        let last: Vec<usize> = e.tokens.iter().map(|t| t.last_kept_layer).collect();
        assert_eq!(last, vec![3, 3, 1, 3, 1, 3]);
        assert_eq!(e.tokens[2].kept, vec![true, false, false]);
        assert_eq!(e.tokens[0].kept, vec![true, true, true]);
        assert_eq!(e.tokens[1].protected, vec![Some(true), Some(true), None]);
        assert_eq!(e.tokens[2].protected, vec![Some(false), None, None]);
        assert_eq!(e.tokens[3].head_sum[1], Some(0.4));
        assert_eq!(e.layers.len(), 3);
        let d1 = e.layers[0].decision.as_ref().unwrap();
        assert_eq!(
            (d1.next_layer, d1.candidates, d1.requested, d1.kept),
            (2, 6, 3, 4)
        );
        assert_eq!((d1.a, d1.b), (Some(0.0625), Some(0.25)));
        let pruned: Vec<usize> = d1.pruned.iter().map(|t| t.position).collect();
        assert_eq!(pruned, vec![2, 4]);
        assert_eq!(d1.pruned[0].text, "<script>");
        assert_eq!(d1.protected.len(), 4);
        assert!(e.layers[1].decision.as_ref().unwrap().pruned.is_empty());
        assert!(e.layers[2].decision.is_none());
        assert!(e.combination.is_none());
        assert_eq!(e.prediction.index, Some(1));
        assert_eq!(e.prediction.label.as_deref(), Some("positive"));
    }

    #[test]
    fn settings_say_which_texts_are_not_pruned() {
        let mut method = crate::explain::test_support::pf_method();
        assert!(!super::summarize_settings(&method, 3, 3)
            .summary
            .contains("not pruned"));
        method.prune_min_len = 64;
        let summary = super::summarize_settings(&method, 3, 3).summary;
        assert!(
            summary.ends_with("keep ratio 0.5 (texts of at most 64 tokens are not pruned), percentiles 25/75, thresholds 0.01/0.9, mean pooling"),
            "{summary}"
        );
    }
}
