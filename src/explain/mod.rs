//! `corefocus explain`: what the pruning and combining decided for one document.
//!
//! `explain` turns the forward pass's `Trace` of one example into an `Explanation`
//! (per token: the layers in which it served as key/value, its fuzzy protection, its
//! combination token; per layer: the kept set and the decision made from it), which
//! renders as plain text, as a self-contained HTML page, or as JSON. `build` computes the
//! explanation as data, `render` writes it out; this file holds the command.

mod build;
mod render;
#[cfg(test)]
mod test_support;

pub use build::{
    explain, explain_text, CombinationGroup, CombineSettings, Explanation, FuzzySettings,
    LabelProbability, LayerDecision, LayerExplanation, Prediction, SettingsSummary,
    TokenExplanation, TokenView,
};

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

pub fn run_explain(args: &ExplainArgs) -> anyhow::Result<Explanation> {
    use anyhow::Context;
    let classifier = crate::infer::Classifier::load(&args.checkpoint, None)?;
    let text = match (&args.text, &args.file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("cannot read {} as UTF-8 text", f.display()))?,
        (None, None) => anyhow::bail!("give --text or a FILE"),
    };
    if text.trim().is_empty() {
        anyhow::bail!("the text to explain: {}", crate::infer::BLANK_TEXT);
    }
    let c = &classifier;
    let e = explain_text(&c.model, &c.tokenizer, c.labels(), c.max_len, &text)?;
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
