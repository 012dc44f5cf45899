//! Rendering an [`Explanation`]: a plain-text report, a self-contained HTML page, JSON.

use super::build::{Explanation, TokenExplanation, TokenView};

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
                "Layer {}: token combining into {} combination tokens{}",
                c.layer,
                groups.len(),
                if c.heads > 1 {
                    format!(" (the groups of head 0 of {})", c.heads)
                } else {
                    String::new()
                }
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
        let mut h = String::new();
        h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
        h.push_str(&format!(
            "<title>corefocus explain: {}</title>\n<style>\n{}</style>\n</head>\n<body>\n",
            escape(&self.settings.variant.to_uppercase()),
            self.html_css()
        ));
        self.push_html_header(&mut h);
        self.push_html_layers(&mut h);
        self.push_html_combining(&mut h);
        h.push_str("</body>\n</html>\n");
        h
    }

    /// The page's style sheet: the layout, then one colour class per layer (`l<k>`) and
    /// per combination token (`g<i>`).
    fn html_css(&self) -> String {
        let num_classes = self.settings.token_layers;
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
        css
    }

    /// Header: settings and prediction.
    fn push_html_header(&self, h: &mut String) {
        h.push_str("<header>\n<h1>corefocus explain</h1>\n");
        h.push_str(&format!(
            "<p class=\"settings\">{}</p>\n",
            escape(&self.settings.summary)
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
    }

    /// View 1: the tokens coloured by the last layer kept, and the decisions per layer.
    fn push_html_layers(&self, h: &mut String) {
        let num_classes = self.settings.token_layers;
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
        self.push_tokens(h, |t| {
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
    }

    /// View 2 (with combining): the tokens coloured by combination token.
    fn push_html_combining(&self, h: &mut String) {
        let Some(groups) = &self.combination else {
            return;
        };
        let layer = self.settings.combining.as_ref().map_or(0, |c| c.layer);
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
        self.push_tokens(h, |t| match t.assignment {
            Some(c) => (format!("g{c}"), format!("combination token {c}")),
            None => ("l0".into(), "no combination token".into()),
        });
        h.push_str("</p>\n</section>\n");
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
    use crate::explain::build::explain;
    use crate::explain::test_support::{labels, pf_explanation, pfc_case, six_tokens, strings};
    use crate::model::{LayerTrace, MethodConfig, Trace, Variant};

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
    fn pf_text_report() {
        let e = pf_explanation();
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
        let e = pf_explanation();
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
