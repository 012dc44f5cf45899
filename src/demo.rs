//! The built-in default job's data: a synthetic document-classification corpus in which a
//! few class-bearing words sit among many filler words, the situation pruning is made
//! for (most tokens are noise; a few decide the class).

mod real;

use crate::rng::Rng;

pub const CLASSES: [&str; 4] = ["astronomy", "cooking", "finance", "football"];

const CLASS_WORDS: [[&str; 12]; 4] = [
    [
        "galaxy",
        "nebula",
        "telescope",
        "orbit",
        "comet",
        "planet",
        "asteroid",
        "quasar",
        "eclipse",
        "satellite",
        "cosmos",
        "meteor",
    ],
    [
        "recipe", "oven", "simmer", "saucepan", "garlic", "knead", "roast", "whisk", "flour",
        "skillet", "marinade", "broth",
    ],
    [
        "dividend",
        "equity",
        "bond",
        "inflation",
        "portfolio",
        "interest",
        "ledger",
        "audit",
        "revenue",
        "shares",
        "hedge",
        "credit",
    ],
    [
        "goal", "striker", "referee", "penalty", "midfield", "league", "keeper", "offside",
        "tackle", "stadium", "corner", "derby",
    ],
];

/// One labelled synthetic document.
#[derive(Clone, Debug)]
pub struct SyntheticDoc {
    pub text: String,
    pub label: usize,
}

/// Settings of the generator.
#[derive(Clone, Debug)]
pub struct CorpusSpec {
    pub filler_vocab: usize,
    pub min_words: usize,
    pub max_words: usize,
    /// Class words per document (from its own class).
    pub signal_words: usize,
    /// Words from other classes per document (distractors, fewer than the signal).
    pub distractor_words: usize,
}

impl Default for CorpusSpec {
    fn default() -> Self {
        CorpusSpec {
            filler_vocab: 1500,
            min_words: 120,
            max_words: 300,
            signal_words: 5,
            distractor_words: 2,
        }
    }
}

/// Pronounceable filler words ("bakemo", "tisul", ...), deterministic.
pub fn filler_words(count: usize) -> Vec<String> {
    const CONS: &[u8] = b"bdfgklmnprstvz";
    const VOW: &[u8] = b"aeiou";
    let mut out = Vec::with_capacity(count);
    let mut i = 0usize;
    while out.len() < count {
        let mut w = String::new();
        let mut x = i;
        let syllables = 2 + (i % 2);
        for _ in 0..syllables {
            w.push(CONS[x % CONS.len()] as char);
            x /= CONS.len();
            w.push(VOW[x % VOW.len()] as char);
            x /= VOW.len();
        }
        if !out.contains(&w) {
            out.push(w);
        }
        i += 1;
    }
    out
}

/// The whole vocabulary: filler words then all class words.
pub fn vocabulary(spec: &CorpusSpec) -> Vec<String> {
    let mut v = filler_words(spec.filler_vocab);
    for class in CLASS_WORDS {
        v.extend(class.iter().map(|w| w.to_string()));
    }
    v
}

/// Generates `count` documents with balanced classes from `seed`.
pub fn generate(spec: &CorpusSpec, count: usize, seed: u64) -> Vec<SyntheticDoc> {
    let filler = filler_words(spec.filler_vocab);
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|i| {
            let label = i % CLASSES.len();
            let len = spec.min_words + rng.below(spec.max_words - spec.min_words + 1);
            // Zipf-like filler: low indices are frequent, as in real text.
            let mut words: Vec<&str> = (0..len)
                .map(|_| {
                    let u = rng.uniform();
                    let idx = ((filler.len() as f64).powf(u) - 1.0) as usize;
                    filler[idx.min(filler.len() - 1)].as_str()
                })
                .collect();
            let mut place = |w: &'static str, rng: &mut Rng| {
                let pos = rng.below(words.len());
                words[pos] = w;
            };
            for _ in 0..spec.signal_words {
                let w = CLASS_WORDS[label][rng.below(12)];
                place(w, &mut rng);
            }
            for _ in 0..spec.distractor_words {
                let other = (label + 1 + rng.below(CLASSES.len() - 1)) % CLASSES.len();
                let w = CLASS_WORDS[other][rng.below(12)];
                place(w, &mut rng);
            }
            SyntheticDoc {
                text: words.join(" "),
                label,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_is_deterministic_balanced_and_carries_signal() {
        let spec = CorpusSpec::default();
        let a = generate(&spec, 40, 9);
        let b = generate(&spec, 40, 9);
        assert_eq!(
            a.iter().map(|d| &d.text).collect::<Vec<_>>(),
            b.iter().map(|d| &d.text).collect::<Vec<_>>()
        );
        for c in 0..CLASSES.len() {
            assert_eq!(a.iter().filter(|d| d.label == c).count(), 10);
        }
        let vocab = vocabulary(&spec);
        for d in &a {
            let n = d.text.split(' ').count();
            assert!((spec.min_words..=spec.max_words).contains(&n));
            assert!(d.text.split(' ').all(|w| vocab.iter().any(|v| v == w)));
            // The document's own class words outnumber any other class's.
            let count = |c: usize| {
                d.text
                    .split(' ')
                    .filter(|w| CLASS_WORDS[c].contains(w))
                    .count()
            };
            let own = count(d.label);
            assert!(own >= 1);
            for c in 0..CLASSES.len() {
                if c != d.label {
                    assert!(count(c) <= spec.distractor_words);
                }
            }
        }
    }
}

// ------------------------------------------------------------------ the `demo` command

use crate::data::tokenize::TextTokenizer;
use crate::model::{checkpoint, names, BertConfig, MethodConfig, Model, ParamStore, Variant};
use crate::train::{run_train, LrSpec, MethodArgs, TrainOptions};
use crate::util::write_atomic;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `corefocus demo`: fine-tunes a small pretrained checkpoint (all-MiniLM-L6-v2, fetched
/// once into `--model-cache`) as bert, pf and pfc on a real dataset shipped in the binary
/// (an SST-2 sample) and compares them side by side. Without network (or with
/// `--offline`): the synthetic demo, a random model on a generated corpus.
#[derive(clap::Args, Clone, Debug)]
pub struct DemoArgs {
    /// Working directory for the data, checkpoints and reports.
    #[arg(long, default_value = "target/demo")]
    pub out: PathBuf,
    /// Variants to train side by side.
    #[arg(long, value_delimiter = ',', default_value = "bert,pf,pfc")]
    pub variants: Vec<String>,
    /// Run the synthetic offline demo, without fetching anything.
    #[arg(long)]
    pub offline: bool,
    /// Where the pretrained checkpoint is cached (`$COREFOCUS_TEST_MODEL` wins when set).
    #[arg(long, default_value = "target/models")]
    pub model_cache: PathBuf,
    /// Training sentences of the SST-2 sample used (of 2,000).
    #[arg(long, default_value_t = 1000)]
    pub max_train_examples: usize,
    /// Validation and test sentences used (each; of 872 and 1,821).
    #[arg(long, default_value_t = 500)]
    pub max_eval_examples: usize,
    /// Training documents of the offline demo's synthetic corpus.
    #[arg(long, default_value_t = 640)]
    pub train_docs: usize,
    /// Epochs (default: 2; the offline demo 3).
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// One variant's outcome.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DemoRow {
    pub variant: String,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub train_seconds: f64,
    /// Peak bytes live tensors held (the counting allocator; idle pooled buffers excluded).
    pub peak_heap_bytes: usize,
    /// Peak resident set size of the process so far, at the end of this variant's run
    /// (VmHWM, where the OS reports it): everything the process held, the allocator's and
    /// the activation pool's reserves included. Not reset between variants (that would
    /// falsify what `/usr/bin/time` reports), so it never decreases down the table.
    pub peak_rss_bytes: Option<usize>,
}

fn write_split(dir: &Path, name: &str, docs: &[SyntheticDoc]) -> Result<()> {
    let mut s = String::new();
    for d in docs {
        let line = serde_json::json!({"text": d.text, "label": CLASSES[d.label]});
        s.push_str(&line.to_string());
        s.push('\n');
    }
    write_atomic(&dir.join(format!("{name}.jsonl")), s.as_bytes())
}

/// The small randomly initialised BERT the demo trains: 4 layers, hidden 128.
pub fn demo_config(vocab_size: usize) -> BertConfig {
    BertConfig::sized(vocab_size, 128, 4, 4, 512)
}

/// Writes the corpus (`<out>/data`) and a random BERT checkpoint with a word-level
/// tokenizer (`<out>/model`); returns both directories.
pub fn prepare(out: &Path, train_docs: usize, seed: u64) -> Result<(PathBuf, PathBuf)> {
    let spec = CorpusSpec::default();
    let data = out.join("data");
    let eval_docs = (train_docs / 4).max(CLASSES.len() * 2);
    write_split(&data, "train", &generate(&spec, train_docs, seed))?;
    write_split(&data, "dev", &generate(&spec, eval_docs, seed + 1))?;
    write_split(&data, "test", &generate(&spec, eval_docs, seed + 2))?;
    write_atomic(
        &data.join("labels.txt"),
        (CLASSES.join("\n") + "\n").as_bytes(),
    )?;

    let model_dir = out.join("model");
    let tok = TextTokenizer::word_level(&vocabulary(&spec), false)?;
    tok.save(&model_dir)?;
    let cfg = demo_config(tok.vocab_size());
    let random = Model::random(
        cfg.clone(),
        MethodConfig::new(Variant::Bert, cfg.num_hidden_layers),
        2,
        seed,
    )?;
    let mut bert_only = ParamStore::new();
    for (name, _) in names::bert_tensors(&cfg) {
        if let Some(t) = random.params.get(&name) {
            bert_only.add(&t.name, &t.shape, t.data.clone());
        }
    }
    checkpoint::write_safetensors(&model_dir.join("model.safetensors"), &bert_only, None)?;
    write_atomic(
        &model_dir.join("config.json"),
        serde_json::to_string_pretty(&cfg)?.as_bytes(),
    )?;
    Ok((data, model_dir))
}

/// Generates the corpus, trains each variant, prints a side-by-side table.
/// `corefocus demo`: the real demo, or the offline one when `--offline` or when the
/// checkpoint cannot be fetched (said in one line).
pub fn run_demo(args: &DemoArgs) -> Result<Vec<DemoRow>> {
    if !args.offline {
        match real::fetch_checkpoint(&args.model_cache) {
            Ok(model) => {
                let demo = real::RealDemo {
                    out: &args.out,
                    variants: &args.variants,
                    epochs: args.epochs.unwrap_or(2),
                    max_train_examples: args.max_train_examples,
                    max_eval_examples: args.max_eval_examples,
                    seed: args.seed,
                };
                return real::run(&demo, &model);
            }
            Err(e) => eprintln!(
                "demo: cannot fetch the pretrained checkpoint ({e:#}); running the offline demo \
                 (a random model on a synthetic corpus) instead"
            ),
        }
    }
    run_offline_demo(args)
}

/// Trains one variant with `opts` and measures it (time, counted heap, peak RSS), starting
/// from an emptied activation pool.
fn train_row(variant: &str, opts: &TrainOptions) -> Result<DemoRow> {
    // Each variant starts from what the previous one left: nothing retained.
    crate::util::release_freed_memory();
    crate::alloc::reset_peak();
    let start = Instant::now();
    let outcome = run_train(opts)?;
    let secs = start.elapsed().as_secs_f64();
    let (_, acc, f1) = outcome.test.context("the demo data has a test split")?;
    Ok(DemoRow {
        variant: variant.to_string(),
        accuracy: acc,
        macro_f1: f1,
        train_seconds: secs,
        peak_heap_bytes: crate::alloc::peak_bytes(),
        peak_rss_bytes: crate::alloc::peak_rss_bytes(),
    })
}

/// The synthetic demo: a random 4-layer model trained from scratch on a generated corpus.
pub fn run_offline_demo(args: &DemoArgs) -> Result<Vec<DemoRow>> {
    let t0 = Instant::now();
    let (data, model_dir) = prepare(&args.out, args.train_docs, args.seed)
        .with_context(|| format!("preparing the demo in {}", args.out.display()))?;
    eprintln!(
        "demo: synthetic corpus of {} training documents ({} classes, 120-300 words, a few class words among filler) in {}",
        args.train_docs,
        CLASSES.len(),
        data.display()
    );
    let mut rows = Vec::new();
    for v in &args.variants {
        let variant: Variant = v.parse()?;
        let opts = TrainOptions {
            model: model_dir.clone(),
            data: data.clone(),
            out: args.out.join(format!("run-{v}")),
            method: MethodArgs {
                variant,
                ..MethodArgs::default()
            },
            // A randomly initialised model: one rate for every tensor, no search.
            lr: LrSpec::Fixed(1e-3),
            new_lr_scale: 1.0,
            epochs: args.epochs.unwrap_or(3),
            batch_size: 16,
            max_len: 320,
            seed: args.seed,
            overwrite: true,
            ..TrainOptions::default()
        };
        eprintln!("demo: training variant {v}");
        rows.push(train_row(v, &opts)?);
    }
    println!("{}", format_rows(&rows));
    // Which tokens did the last (most efficient) variant keep for one test document?
    if let Some(last) = args.variants.last() {
        let ckpt = args.out.join(format!("run-{last}"));
        let c = crate::infer::Classifier::load(&ckpt, None)?;
        let doc = generate(&CorpusSpec::default(), 1, args.seed + 2).remove(0);
        let e =
            crate::explain::explain_text(&c.model, &c.tokenizer, c.labels(), c.max_len, &doc.text)?;
        let html = args.out.join("explain.html");
        write_atomic(&html, e.to_html().as_bytes())?;
        println!(
            "explain: {} (variant {last}, one test document of class {:?}: which tokens stayed keys/values, layer by layer)",
            html.display(),
            CLASSES[doc.label]
        );
    }
    let peak_rss = crate::alloc::peak_rss_bytes()
        .map(|b| format!("; peak RSS {:.0} MiB", b as f64 / 1048576.0))
        .unwrap_or_default();
    println!(
        "total time {:.0} s{peak_rss}; checkpoints and reports under {}",
        t0.elapsed().as_secs_f64(),
        args.out.display()
    );
    let json = serde_json::to_string_pretty(&rows)?;
    write_atomic(&args.out.join("demo_report.json"), json.as_bytes())?;
    Ok(rows)
}

/// The side-by-side table; speedup and memory ratios relative to the first row (bert by
/// default).
pub fn format_rows(rows: &[DemoRow]) -> String {
    let mut s = String::from(
        "| variant | test accuracy | macro-F1 | training time s | speedup | peak heap MiB | heap ratio | process peak RSS so far MiB |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let base = rows.first().map(|r| r.train_seconds).unwrap_or(f64::NAN);
    let base_heap = rows.first().map_or(f64::NAN, |r| r.peak_heap_bytes as f64);
    for r in rows {
        s.push_str(&format!(
            "| {} | {:.4} | {:.4} | {:.1} | {:.2}x | {:.0} | {:.2} | {} |\n",
            r.variant,
            r.accuracy,
            r.macro_f1,
            r.train_seconds,
            base / r.train_seconds,
            r.peak_heap_bytes as f64 / 1048576.0,
            r.peak_heap_bytes as f64 / base_heap,
            r.peak_rss_bytes
                .map(|b| format!("{:.0}", b as f64 / 1048576.0))
                .unwrap_or_else(|| "n/a".into())
        ));
    }
    s
}
