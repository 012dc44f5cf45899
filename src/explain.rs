//! `corefocus explain`: what the pruning and combining decided for one document.
//!
//! `explain` turns the forward pass's `Trace` of one example into an `Explanation`
//! (per token: the layers in which it served as key/value, its fuzzy protection, its
//! combination token; per layer: the kept set and the decision made from it), which
//! renders as plain text, as a self-contained HTML page, or as JSON.

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
    });
    let pooling = match method.pooling {
        Pooling::Mean => "mean",
        Pooling::Cls => "cls",
    };
    let mut parts = vec![format!("{} layers", num_layers)];
    if v.prunes() {
        parts.push(format!(
            "{} pruning of keys/values, keep ratio {}",
            if v.fuzzy() { "fuzzy" } else { "ratio" },
            method.keep_ratio
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

/// Lists longer than this are abbreviated in the text report.
const TEXT_LIST_MAX: usize = 24;

/// `items` joined by spaces; a long list keeps its first two thirds and last third of
/// `TEXT_LIST_MAX` around a count of the omitted ones.
fn abbreviate(items: &[String]) -> String {
    if items.len() <= TEXT_LIST_MAX {
        return items.join(" ");
    }
    let head = TEXT_LIST_MAX * 2 / 3;
    let tail = TEXT_LIST_MAX - head;
    format!(
        "{} … ({} more) … {}",
        items[..head].join(" "),
        items.len() - head - tail,
        items[items.len() - tail..].join(" ")
    )
}

fn with_positions(views: &[TokenView]) -> String {
    let items: Vec<String> = views
        .iter()
        .map(|t| format!("{}@{}", t.text, t.position))
        .collect();
    abbreviate(&items)
}

/// A score for people: 4 significant digits, scientific only when very small or large.
fn fmt_score(x: f32) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let magnitude = x.abs().log10().floor() as i32;
    if (-3..4).contains(&magnitude) {
        format!("{:.*}", (3 - magnitude).max(0) as usize, x)
    } else {
        format!("{x:.3e}")
    }
}

fn tokens_count(n: usize) -> String {
    format!("{n} token{}", if n == 1 { "" } else { "s" })
}

fn percent(p: f32) -> String {
    format!("{:.1}%", p * 100.0)
}

impl Explanation {
    /// Plain-text report: per layer the keys/values kept, the decision made from it (fuzzy
    /// a and b, protected and pruned tokens); with combining, the tokens of each
    /// combination token; then the prediction.
    pub fn to_text(&self) -> String {
        let s = &self.settings;
        let mut out = String::new();
        let mut line = |text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        line(format!("Settings: {}", s.summary));
        line(format!("Document: {} tokens", self.tokens.len()));
        if self.layers.is_empty() {
            line("No layer decisions were recorded.".into());
        }
        for layer in &self.layers {
            let texts: Vec<String> = layer
                .kept
                .iter()
                .map(|&p| self.tokens[p].text.clone())
                .collect();
            let count = if layer.kept.len() == self.tokens.len() {
                format!("all {}", layer.kept.len())
            } else {
                format!("{} of {}", layer.kept.len(), self.tokens.len())
            };
            line(String::new());
            line(format!(
                "Layer {}: {count} tokens as keys/values",
                layer.layer
            ));
            line(format!("  kept: {}", abbreviate(&texts)));
            if let Some(d) = &layer.decision {
                line(format!(
                    "  decision for layer {}: ratio asks {} of {}, kept {}, pruned {}",
                    d.next_layer,
                    d.requested,
                    d.candidates,
                    d.kept,
                    d.pruned.len()
                ));
                if let (Some(a), Some(b)) = (d.a, d.b) {
                    line(format!(
                        "  fuzzy breakpoints: a = {}, b = {}",
                        fmt_score(a),
                        fmt_score(b)
                    ));
                    line(format!(
                        "  protected ({}): {}",
                        d.protected.len(),
                        with_positions(&d.protected)
                    ));
                }
                if !d.pruned.is_empty() {
                    line(format!(
                        "  pruned ({}): {}",
                        d.pruned.len(),
                        with_positions(&d.pruned)
                    ));
                }
            }
        }
        if let (Some(groups), Some(c)) = (&self.combination, &s.combining) {
            line(String::new());
            line(format!(
                "Layer {}: token combining into {} combination tokens",
                c.layer,
                groups.len()
            ));
            for g in groups {
                let texts: Vec<String> = g.tokens.iter().map(|t| t.text.clone()).collect();
                line(format!(
                    "  combination token {} ({} tokens): {}",
                    g.index,
                    g.tokens.len(),
                    if texts.is_empty() {
                        "(none)".to_string()
                    } else {
                        abbreviate(&texts)
                    }
                ));
            }
            let after = match s.num_layers - c.layer.min(s.num_layers) {
                0 => None,
                1 => Some(format!("Layer {}", s.num_layers)),
                _ => Some(format!("Layers {}..{}", c.layer + 1, s.num_layers)),
            };
            if let Some(after) = after {
                line(format!(
                    "{after}: self-attention over the combination tokens only"
                ));
            }
        }
        line(String::new());
        let p = &self.prediction;
        match (&p.label, p.index) {
            (Some(label), Some(i)) => line(format!(
                "Prediction: {label} ({})",
                percent(p.probabilities[i].probability)
            )),
            _ => line("Prediction: none (no probabilities)".into()),
        }
        for lp in &p.probabilities {
            line(format!("  {}: {}", lp.label, percent(lp.probability)));
        }
        out
    }

    /// A self-contained HTML page (inline CSS, no scripts, no external resources): the
    /// tokens coloured by the last layer in which they were kept, and with combining a
    /// second view coloured by combination token; a header with the settings and the
    /// prediction.
    pub fn to_html(&self) -> String {
        let s = &self.settings;
        let num_classes = s.token_layers;
        let mut css = String::from(
            "body{font:15px/1.5 system-ui,sans-serif;margin:1.5em auto;max-width:60em;padding:0 1em;color:#222}\n\
             h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.4em 0 .4em}\n\
             .settings{color:#555;margin:.2em 0}.pred b{font-size:1.1em}\n\
             table{border-collapse:collapse;margin:.4em 0}td,th{padding:.1em .6em;border-bottom:1px solid #ddd;text-align:left}\n\
             .doc{line-height:2;padding:.6em;border:1px solid #ddd;border-radius:4px}\n\
             .tok{padding:.1em .15em;border-radius:3px}.sp{font-size:.8em;font-style:italic}\n\
             .wp{padding-left:0;border-top-left-radius:0;border-bottom-left-radius:0}\n\
             .note{color:#555;font-size:.9em;margin:.2em 0}\n\
             .legend{display:flex;flex-wrap:wrap;gap:.3em;align-items:center;font-size:.9em}\n\
             .key{padding:.05em .5em;border-radius:3px}\n\
             .l0{background:#eee;color:#222}\n",
        );
        for k in 1..=num_classes {
            let (bg, fg) = sequential_colour(k, num_classes);
            css.push_str(&format!(".l{k}{{background:{bg};color:{fg}}}\n"));
        }
        let num_groups = self.combination.as_ref().map_or(0, |g| g.len());
        for g in 0..num_groups {
            css.push_str(&format!(".g{g}{{background:{}}}\n", categorical_colour(g)));
        }

        let mut h = String::new();
        h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
        h.push_str(&format!(
            "<title>corefocus explain: {}</title>\n<style>\n{css}</style>\n</head>\n<body>\n",
            escape(&s.variant.to_uppercase())
        ));

        // Header: settings and prediction.
        h.push_str("<header>\n<h1>corefocus explain</h1>\n");
        h.push_str(&format!(
            "<p class=\"settings\">{}</p>\n",
            escape(&s.summary)
        ));
        let p = &self.prediction;
        if let (Some(label), Some(i)) = (&p.label, p.index) {
            h.push_str(&format!(
                "<p class=\"pred\">Prediction: <b>{}</b> ({})</p>\n",
                escape(label),
                percent(p.probabilities[i].probability)
            ));
        }
        if !p.probabilities.is_empty() {
            h.push_str("<table class=\"probs\">\n<tr><th>label</th><th>probability</th></tr>\n");
            for lp in &p.probabilities {
                h.push_str(&format!(
                    "<tr><td>{}</td><td>{}</td></tr>\n",
                    escape(&lp.label),
                    percent(lp.probability)
                ));
            }
            h.push_str("</table>\n");
        }
        h.push_str("</header>\n");

        // View 1: last layer kept.
        h.push_str(
            "<section id=\"layers\">\n<h2>Last layer in which each token was a key/value</h2>\n",
        );
        h.push_str("<div class=\"legend\"><span>layer:</span>");
        let mut per_layer = vec![0usize; num_classes + 1];
        for t in &self.tokens {
            per_layer[t.last_kept_layer.min(num_classes)] += 1;
        }
        for (k, &count) in per_layer.iter().enumerate().skip(1) {
            h.push_str(&format!(
                "<span class=\"key l{k}\" title=\"{}\">{k}</span>",
                tokens_count(count)
            ));
        }
        h.push_str(&format!(
            "</div>\n<p class=\"note\">Lighter tokens were pruned from the keys/values \
             earlier; the darkest were kept through layer {num_classes}, the last on the \
             document's tokens.</p>\n<p class=\"doc\" id=\"doc-layers\">"
        ));
        self.push_tokens(&mut h, |t| {
            let class = format!("l{}", t.last_kept_layer.min(num_classes));
            let title = match t.last_kept_layer {
                0 => "never a key/value".to_string(),
                k => format!("kept through layer {k}"),
            };
            (class, title)
        });
        h.push_str("</p>\n");
        if !self.layers.is_empty() {
            h.push_str(
                "<table class=\"steps\">\n<tr><th>layer</th><th>keys/values</th><th>a</th><th>b</th>\
                 <th>protected</th><th>pruned</th></tr>\n",
            );
            for layer in &self.layers {
                let d = layer.decision.as_ref();
                let opt = |x: Option<f32>| x.map_or("–".into(), fmt_score);
                h.push_str(&format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                    layer.layer,
                    layer.kept.len(),
                    opt(d.and_then(|d| d.a)),
                    opt(d.and_then(|d| d.b)),
                    d.filter(|d| d.a.is_some())
                        .map_or("–".into(), |d| d.protected.len().to_string()),
                    d.map_or("–".into(), |d| d.pruned.len().to_string()),
                ));
            }
            h.push_str("</table>\n");
        }
        h.push_str("</section>\n");

        // View 2: combination tokens.
        if let Some(groups) = &self.combination {
            let layer = s.combining.as_ref().map_or(0, |c| c.layer);
            h.push_str(&format!(
                "<section id=\"combining\">\n<h2>Combination token of each token (layer {layer})</h2>\n"
            ));
            h.push_str("<div class=\"legend\"><span>combination token:</span>");
            for g in groups {
                h.push_str(&format!(
                    "<span class=\"key g{}\" title=\"{}\">{} ({})</span>",
                    g.index,
                    tokens_count(g.tokens.len()),
                    g.index,
                    g.tokens.len()
                ));
            }
            h.push_str("</div>\n<p class=\"doc\" id=\"doc-combining\">");
            self.push_tokens(&mut h, |t| match t.assignment {
                Some(c) => (format!("g{c}"), format!("combination token {c}")),
                None => ("l0".into(), "no combination token".into()),
            });
            h.push_str("</p>\n</section>\n");
        }
        h.push_str("</body>\n</html>\n");
        h
    }

    /// Appends one `<span class="tok CLASS">` per token; WordPiece continuations (`##x`)
    /// follow their previous token without a space and without the `##`.
    fn push_tokens(&self, h: &mut String, style: impl Fn(&TokenExplanation) -> (String, String)) {
        for (i, t) in self.tokens.iter().enumerate() {
            let continuation = i > 0 && t.text.len() > 2 && t.text.starts_with("##");
            let shown = if continuation { &t.text[2..] } else { &t.text };
            if i > 0 && !continuation {
                h.push(' ');
            }
            let (class, title) = style(t);
            let special = t.text.starts_with('[') && t.text.ends_with(']') && t.text.len() > 2;
            h.push_str(&format!(
                "<span class=\"tok {class}{}{}\" title=\"{} @{}: {}\">{}</span>",
                if special { " sp" } else { "" },
                if continuation { " wp" } else { "" },
                escape(&t.text),
                t.position,
                escape(&title),
                escape(shown)
            ));
        }
    }

    /// The explanation as JSON (for `--json`).
    pub fn to_json(&self) -> serde_json::Value {
        // Only strings, numbers, bools, options and vectors: serialization cannot fail
        // (non-finite floats become null).
        serde_json::to_value(self).expect("Explanation serializes to JSON")
    }
}

/// HTML-escapes text for element content and quoted attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Background and text colour of layer `k` of `count` on a light-to-dark blue scale:
/// tokens kept longer are darker.
fn sequential_colour(k: usize, count: usize) -> (String, &'static str) {
    const STOPS: [(f32, f32, f32); 5] = [
        (222.0, 235.0, 247.0),
        (158.0, 202.0, 225.0),
        (66.0, 146.0, 198.0),
        (8.0, 81.0, 156.0),
        (8.0, 48.0, 107.0),
    ];
    let t = if count <= 1 {
        1.0
    } else {
        (k - 1) as f32 / (count - 1) as f32
    };
    let x = t * (STOPS.len() - 1) as f32;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f32;
    let mix = |a: f32, b: f32| (a + (b - a) * f).round() as u8;
    let (r, g, b) = (
        mix(STOPS[i].0, STOPS[i + 1].0),
        mix(STOPS[i].1, STOPS[i + 1].1),
        mix(STOPS[i].2, STOPS[i + 1].2),
    );
    let luminance = 0.299 * r as f32 + 0.587 * g as f32 + 0.114 * b as f32;
    let text = if luminance < 140.0 { "#fff" } else { "#111" };
    (format!("#{r:02x}{g:02x}{b:02x}"), text)
}

/// Light categorical colours (ColorBrewer Set3), then golden-angle hues.
fn categorical_colour(i: usize) -> String {
    const SET3: [&str; 12] = [
        "#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5",
        "#d9d9d9", "#bc80bd", "#ccebc5", "#ffed6f",
    ];
    match SET3.get(i) {
        Some(c) => (*c).to_string(),
        None => format!("hsl({},70%,80%)", (i * 137) % 360),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fuzzy::Selection;
    use crate::model::{LayerTrace, Variant};

    fn strings(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    /// Six tokens with everything HTML must escape and a WordPiece continuation.
    fn six_tokens() -> Vec<String> {
        strings(&["[CLS]", "the", "<script>", "&", "##s", "[SEP]"])
    }

    fn labels() -> Vec<String> {
        strings(&["negative", "positive"])
    }

    /// A selection over `kept` that removes `pruned` and protects `protected`.
    fn selection(
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
    fn pf_trace() -> Trace {
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

    fn pf_method() -> MethodConfig {
        let mut m = MethodConfig::new(Variant::Pf, 3);
        m.keep_ratio = 0.5;
        m
    }

    // ---- a tiny HTML checker for the elements `to_html` emits ----

    const ALLOWED: [&str; 19] = [
        "html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "p", "b", "table",
        "tr", "th", "td", "section", "div", "span", "!doctype",
    ];
    const VOID: [&str; 2] = ["meta", "!doctype"];
    const ENTITIES: [&str; 5] = ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"];

    /// Asserts the page starts with a doctype, uses only the expected elements, nests
    /// them properly, has no raw `<` outside tags and only known entities after `&`.
    fn check_well_formed(html: &str) {
        assert!(html.starts_with("<!DOCTYPE html>"), "no doctype");
        let mut stack: Vec<String> = Vec::new();
        let mut rest = html;
        while let Some(lt) = rest.find('<') {
            check_text(&rest[..lt]);
            let gt = rest[lt..].find('>').expect("unterminated tag") + lt;
            let tag = &rest[lt + 1..gt];
            assert!(!tag.contains('<'), "`<` inside tag {tag:?}");
            let closing = tag.starts_with('/');
            let name: String = tag
                .trim_start_matches('/')
                .chars()
                .take_while(|c| !c.is_whitespace())
                .collect::<String>()
                .to_ascii_lowercase();
            assert!(
                ALLOWED.contains(&name.as_str()),
                "unexpected element <{name}>"
            );
            if !closing {
                // Attribute values are escaped too: no raw `&` other than entities.
                check_text(tag);
            }
            if closing {
                assert_eq!(
                    stack.pop().as_deref(),
                    Some(name.as_str()),
                    "misnested </{name}>"
                );
            } else if !VOID.contains(&name.as_str()) {
                stack.push(name.clone());
            }
            rest = &rest[gt + 1..];
            if name == "style" && !closing {
                // CSS is raw text; it contains `>` only inside our own rules, never `<`.
                let end = rest.find("</style>").expect("style closed");
                assert!(!rest[..end].contains('<'), "`<` in CSS");
                rest = &rest[end..];
            }
        }
        check_text(rest);
        assert!(stack.is_empty(), "unclosed elements {stack:?}");
    }

    fn check_text(text: &str) {
        for (i, _) in text.match_indices('&') {
            assert!(
                ENTITIES.iter().any(|e| text[i..].starts_with(e)),
                "raw `&` in {text:?}"
            );
        }
    }

    /// The (classes, shown text) of each token span inside the element with `id`.
    fn token_spans(html: &str, id: &str) -> Vec<(String, String)> {
        let start = html.find(&format!("id=\"{id}\"")).expect("view present");
        let end = html[start..].find("</p>").expect("view closed") + start;
        html[start..end]
            .split("<span class=\"tok ")
            .skip(1)
            .map(|s| {
                let class = s[..s.find('"').unwrap()].to_string();
                let text_start = s.find('>').unwrap() + 1;
                let text_end = s.find("</span>").unwrap();
                (class, s[text_start..text_end].to_string())
            })
            .collect()
    }

    #[test]
    fn pf_explanation_records_kept_layers_and_protection() {
        let tokens = six_tokens();
        let e = explain(
            &tokens,
            &pf_trace(),
            1,
            &pf_method(),
            3,
            &labels(),
            &[0.25, 0.75],
        );
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
    fn pf_text_report() {
        let e = explain(
            &six_tokens(),
            &pf_trace(),
            1,
            &pf_method(),
            3,
            &labels(),
            &[0.25, 0.75],
        );
        let text = e.to_text();
        assert!(
            text.contains("Settings: PF: 3 layers, fuzzy pruning of keys/values, keep ratio 0.5"),
            "{text}"
        );
        assert!(text.contains("Document: 6 tokens"), "{text}");
        assert!(
            text.contains("Layer 1: all 6 tokens as keys/values"),
            "{text}"
        );
        assert!(
            text.contains("  kept: [CLS] the <script> & ##s [SEP]\n"),
            "{text}"
        );
        assert!(
            text.contains("decision for layer 2: ratio asks 3 of 6, kept 4, pruned 2"),
            "{text}"
        );
        assert!(
            text.contains("fuzzy breakpoints: a = 0.06250, b = 0.2500"),
            "{text}"
        );
        assert!(
            text.contains("protected (4): [CLS]@0 the@1 &@3 [SEP]@5"),
            "{text}"
        );
        assert!(text.contains("pruned (2): <script>@2 ##s@4"), "{text}");
        assert!(
            text.contains("Layer 2: 4 of 6 tokens as keys/values\n  kept: [CLS] the & [SEP]\n"),
            "{text}"
        );
        assert!(
            text.contains("Layer 3: 4 of 6 tokens as keys/values"),
            "{text}"
        );
        // Layer 3 decides nothing, layer 2 prunes nothing.
        assert_eq!(text.matches("decision for layer").count(), 2, "{text}");
        assert_eq!(text.matches("pruned (").count(), 1, "{text}");
        assert!(!text.contains("combination token"), "{text}");
        assert!(
            text.contains("Prediction: positive (75.0%)\n  negative: 25.0%\n  positive: 75.0%\n"),
            "{text}"
        );
    }

    #[test]
    fn pf_html_page() {
        let tokens = six_tokens();
        let e = explain(
            &tokens,
            &pf_trace(),
            1,
            &pf_method(),
            3,
            &labels(),
            &[0.25, 0.75],
        );
        let html = e.to_html();
        check_well_formed(&html);
        assert!(!html.contains("<script"), "token not escaped");
        assert!(html.contains("&lt;script&gt;"));
        assert!(
            !html.contains("src=") && !html.contains("href="),
            "external resource"
        );
        // Legend: one key per layer, with its colour class.
        for k in 1..=3 {
            assert!(
                html.contains(&format!("<span class=\"key l{k}\"")),
                "legend key {k}"
            );
            assert!(
                html.contains(&format!(".l{k}{{background:#")),
                "colour of layer {k}"
            );
        }
        assert!(html.contains("<span class=\"key l1\" title=\"2 tokens\">1</span>"));
        assert!(html.contains("<span class=\"key l3\" title=\"4 tokens\">3</span>"));
        let spans = token_spans(&html, "doc-layers");
        let expected = vec![
            ("l3 sp", "[CLS]"),
            ("l3", "the"),
            ("l1", "&lt;script&gt;"),
            ("l3", "&amp;"),
            ("l1 wp", "s"),
            ("l3 sp", "[SEP]"),
        ];
        let got: Vec<(&str, &str)> = spans
            .iter()
            .map(|(c, t)| (c.as_str(), t.as_str()))
            .collect();
        assert_eq!(got, expected);
        // The continuation is glued to the previous token, the others are spaced.
        assert!(html.contains("&amp;</span><span class=\"tok l1 wp\" title=\"##s @4"));
        assert!(html.contains("the</span> <span class=\"tok l1\""));
        assert!(html.contains("Prediction: <b>positive</b> (75.0%)"));
        assert!(html.contains("PF: 3 layers"));
        assert!(!html.contains("doc-combining"));
        assert!(html.len() < 8000, "page is {} bytes", html.len());
    }

    /// PFC, 4 layers, combining at layer 3 into 3 tokens: layers 1-2 on the document,
    /// layer 1 prunes `the`; combination token 2 receives nothing. Padded to 8 positions.
    fn pfc_case() -> (Trace, MethodConfig) {
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

    #[test]
    fn pfc_explanation_text_and_html() {
        let (trace, method) = pfc_case();
        let labels = strings(&["a", "b", "c"]);
        let e = explain(
            &six_tokens(),
            &trace,
            0,
            &method,
            4,
            &labels,
            &[0.2, 0.1, 0.7],
        );
        let assigned: Vec<Option<usize>> = e.tokens.iter().map(|t| t.assignment).collect();
        assert_eq!(
            assigned,
            vec![Some(0), Some(1), Some(1), Some(0), Some(0), Some(1)]
        );
        let groups = e.combination.as_ref().unwrap();
        assert_eq!(groups.len(), 3);
        let members: Vec<Vec<usize>> = groups
            .iter()
            .map(|g| g.tokens.iter().map(|t| t.position).collect())
            .collect();
        assert_eq!(members, vec![vec![0, 3, 4], vec![1, 2, 5], vec![]]);
        assert_eq!(e.settings.token_layers, 2);
        assert_eq!(e.tokens[1].last_kept_layer, 1);
        assert_eq!(e.tokens[0].last_kept_layer, 2);

        let text = e.to_text();
        assert!(
            text.contains("combining into 3 tokens at layer 3"),
            "{text}"
        );
        assert!(text.contains("pruned (1): the@1"), "{text}");
        assert!(
            text.contains("Layer 3: token combining into 3 combination tokens\n"),
            "{text}"
        );
        assert!(
            text.contains("  combination token 0 (3 tokens): [CLS] & ##s\n"),
            "{text}"
        );
        assert!(
            text.contains("  combination token 1 (3 tokens): the <script> [SEP]\n"),
            "{text}"
        );
        assert!(
            text.contains("  combination token 2 (0 tokens): (none)\n"),
            "{text}"
        );
        assert!(
            text.contains("Layer 4: self-attention over the combination tokens only"),
            "{text}"
        );
        assert!(text.contains("Prediction: c (70.0%)"), "{text}");

        let html = e.to_html();
        check_well_formed(&html);
        let layer_classes: Vec<String> = token_spans(&html, "doc-layers")
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        assert_eq!(
            layer_classes,
            vec!["l2 sp", "l1", "l2", "l2", "l2 wp", "l2 sp"]
        );
        let group_spans = token_spans(&html, "doc-combining");
        let group_classes: Vec<&str> = group_spans.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(
            group_classes,
            vec!["g0 sp", "g1", "g1", "g0", "g0 wp", "g1 sp"]
        );
        assert_eq!(group_spans[2].1, "&lt;script&gt;");
        for g in 0..3 {
            assert!(
                html.contains(&format!("<span class=\"key g{g}\"")),
                "legend of group {g}"
            );
            assert!(
                html.contains(&format!(".g{g}{{background:#")),
                "colour of group {g}"
            );
        }
        assert!(html.contains("<span class=\"key g2\" title=\"0 tokens\">2 (0)</span>"));
        // Only the two document layers are on the layer scale.
        assert!(!html.contains("key l3"));

        let json = e.to_json();
        assert_eq!(json["settings"]["variant"], "pfc");
        assert_eq!(json["settings"]["combining"]["tokens"], 3);
        assert_eq!(json["tokens"][2]["text"], "<script>");
        assert_eq!(json["tokens"][2]["assignment"], 1);
        assert_eq!(json["combination"][1]["tokens"][0]["position"], 1);
        assert_eq!(json["layers"][0]["decision"]["pruned"][0]["text"], "the");
        assert_eq!(json["prediction"]["label"], "c");
    }

    #[test]
    fn bert_keeps_every_token_in_every_layer() {
        let tokens = six_tokens();
        let all: Vec<usize> = (0..6).collect();
        let trace = Trace {
            layers: (0..4)
                .map(|_| LayerTrace {
                    kept: vec![all.clone()],
                    selection: vec![None],
                })
                .collect(),
            assign: None,
        };
        let method = MethodConfig::new(Variant::Bert, 4);
        let e = explain(&tokens, &trace, 0, &method, 4, &labels(), &[0.9, 0.1]);
        assert!(e
            .tokens
            .iter()
            .all(|t| t.last_kept_layer == 4 && t.kept == vec![true; 4]));
        assert!(e
            .tokens
            .iter()
            .all(|t| t.protected.iter().all(Option::is_none)));
        assert!(e.layers.iter().all(|l| l.decision.is_none()));

        let text = e.to_text();
        assert!(
            text.contains("Settings: BERT: 4 layers, no pruning, mean pooling"),
            "{text}"
        );
        for k in 1..=4 {
            assert!(
                text.contains(&format!("Layer {k}: all 6 tokens as keys/values")),
                "{text}"
            );
        }
        assert!(
            !text.contains("decision") && !text.contains("pruned"),
            "{text}"
        );
        assert!(text.contains("Prediction: negative (90.0%)"), "{text}");

        let html = e.to_html();
        check_well_formed(&html);
        let spans = token_spans(&html, "doc-layers");
        assert_eq!(spans.len(), 6);
        assert!(spans.iter().all(|(c, _)| c.starts_with("l4")));
        assert!(html.contains("<span class=\"key l4\" title=\"6 tokens\">4</span>"));
    }

    #[test]
    fn real_selection_and_long_lists_are_abbreviated() {
        use crate::model::fuzzy::{select, SelectConfig};
        // 60 tokens, one head whose scores rise with the position: P keeps the top 30.
        let n = 60;
        let tokens: Vec<String> = (0..n).map(|i| format!("w{i}")).collect();
        let all: Vec<usize> = (0..n).collect();
        let scores: Vec<f32> = (0..n).map(|i| (i + 1) as f32).collect();
        let cfg = SelectConfig {
            keep_ratio: 0.5,
            fuzzy: false,
            pct_low: 25.0,
            pct_high: 75.0,
            imp_thresh: 0.01,
            unimp_thresh: 0.9,
        };
        let sel = select(&all, &scores, 1, &cfg);
        let kept = sel.kept.clone();
        assert_eq!(kept, (30..60).collect::<Vec<_>>());
        let trace = Trace {
            layers: vec![
                LayerTrace {
                    kept: vec![all],
                    selection: vec![Some(sel)],
                },
                LayerTrace {
                    kept: vec![kept],
                    selection: vec![None],
                },
            ],
            assign: None,
        };
        let mut method = MethodConfig::new(Variant::P, 2);
        method.keep_ratio = 0.5;
        let e = explain(&tokens, &trace, 0, &method, 2, &[], &[0.4, 0.6]);
        assert!(e.layers[0].decision.as_ref().unwrap().a.is_none());
        assert!(e
            .tokens
            .iter()
            .all(|t| t.importance.iter().all(Option::is_none)));
        let text = e.to_text();
        assert!(
            text.contains(
                "  kept: w0 w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 w13 w14 w15 … (36 more) … w52 "
            ),
            "{text}"
        );
        assert!(text.contains("pruned (30): w0@0 w1@1"), "{text}");
        assert!(text.contains("… (6 more) … w22@22"), "{text}");
        assert!(
            text.contains("Layer 2: 30 of 60 tokens as keys/values"),
            "{text}"
        );
        assert!(!text.contains("protected"), "{text}");
        // Without label names the classes are numbered.
        assert!(text.contains("Prediction: class 1 (60.0%)"), "{text}");
        check_well_formed(&e.to_html());
    }
}

// ------------------------------------------------------------------ the `explain` command

/// `corefocus explain`: which tokens a checkpoint keeps, layer by layer, for one text.
#[derive(clap::Args, Clone, Debug)]
pub struct ExplainArgs {
    /// A checkpoint directory written by `corefocus train`.
    #[arg(long)]
    pub checkpoint: std::path::PathBuf,
    /// The text to explain.
    #[arg(long, conflicts_with = "file")]
    pub text: Option<String>,
    /// A file whose whole content is the text to explain.
    #[arg(required_unless_present = "text")]
    pub file: Option<std::path::PathBuf>,
    /// Also write a self-contained HTML page with the token heatmaps.
    #[arg(long)]
    pub html: Option<std::path::PathBuf>,
    /// Print JSON instead of the text report.
    #[arg(long)]
    pub json: bool,
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

pub fn run_explain(args: &ExplainArgs) -> anyhow::Result<Explanation> {
    use anyhow::Context;
    let (model, tokenizer, meta) = crate::train::load_checkpoint(&args.checkpoint)?;
    let text = match (&args.text, &args.file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("cannot read {} as UTF-8 text", f.display()))?,
        (None, None) => anyhow::bail!("give --text or a FILE"),
    };
    if text.trim().is_empty() {
        anyhow::bail!("the text to explain: {}", crate::infer::BLANK_TEXT);
    }
    let e = explain_text(&model, &tokenizer, &meta.labels, meta.max_len, &text)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&e.to_json())?);
    } else {
        println!("{}", e.to_text());
    }
    if let Some(path) = &args.html {
        crate::util::write_atomic(path, e.to_html().as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(e)
}
