//! Shared helpers of the integration tests: where the datasets and the test checkpoint
//! live; the golden files' reader (`golden`);
//! scratch directories; running the `corefocus` binary; and a tiny synthetic model with a
//! toy dataset in its vocabulary. `doc_errors` reads the table of docs/errors.md.
#![allow(dead_code)]

pub mod doc_errors;
pub mod golden;

#[allow(unused_imports)]
pub use golden::{golden_json, Golden};

use corefocus::data::tokenize::TextTokenizer;
use corefocus::model::checkpoint::write_safetensors;
use corefocus::model::{names, BertConfig, ParamStore};
use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

// ------------------------------------------------------------------------------ locations

pub fn crate_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `$COREFOCUS_DATA`, else `../shared/data` next to the crate.
pub fn data_dir() -> PathBuf {
    std::env::var_os("COREFOCUS_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_root().join("../shared/data"))
}

/// The all-MiniLM-L6-v2 test checkpoint (`$COREFOCUS_TEST_MODEL`, else
/// `target/models/all-MiniLM-L6-v2`); fails loudly (never skips) when a file the tests
/// read is absent.
pub fn test_model_dir() -> PathBuf {
    let dir = std::env::var_os("COREFOCUS_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_root().join("target/models/all-MiniLM-L6-v2"));
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    ] {
        assert!(
            dir.join(file).is_file(),
            "test checkpoint incomplete at {} (no {file}): run scripts/fetch-test-model.sh \
             (or set COREFOCUS_TEST_MODEL)",
            dir.display()
        );
    }
    dir
}

// ------------------------------------------------------------------------- golden tensors

/// Golden file `file`'s f32 tensors as a parameter store.
pub fn golden_params(file: &str) -> ParamStore {
    let mut store = ParamStore::new();
    for (name, shape, values) in Golden::open(file).f32_tensors() {
        store.add(&name, &shape, values);
    }
    store
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

// ---------------------------------------------------------------------------------- files

/// A fresh, empty directory under the system temp dir, unique per test binary, process and
/// call (tests run in parallel threads). Removed when dropped, except while a test panics:
/// a failed test leaves its files to inspect.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "corefocus-{}-{tag}-{}-{}",
            env!("CARGO_CRATE_NAME"),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        // A leftover of an earlier process with the same id.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        Scratch(dir)
    }

    pub fn dir(&self) -> &Path {
        &self.0
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// `path(name)` as a string, for command lines.
    pub fn arg(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_string()
    }

    /// Writes `bytes` to `name` (creating parent folders) and returns the full path.
    pub fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Writes `bytes` gzip-compressed to `name`.
    pub fn write_gz(&self, name: &str, bytes: &[u8]) -> PathBuf {
        self.write(name, gzip(bytes))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept the failed test's files in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

// ------------------------------------------------------------------------------ the binary

/// The `corefocus` binary of this build.
pub fn corefocus_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_corefocus"))
}

/// Runs `corefocus args` with no standard input and collects its output.
pub fn corefocus<S: AsRef<OsStr>>(args: &[S]) -> Output {
    corefocus_command()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Runs `corefocus args` with `input` on its standard input.
pub fn corefocus_with_input<S: AsRef<OsStr>>(args: &[S], input: &[u8]) -> Output {
    let mut child = corefocus_command()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Written off-thread: a child that does not read its input must not block the test.
    let input = input.to_vec();
    let mut pipe = child.stdin.take().unwrap();
    std::thread::spawn(move || pipe.write_all(&input));
    child.wait_with_output().unwrap()
}

/// `train --model <model> --data <data> --out <out>`, then `options` and `extra`.
pub fn train_args(
    model: &Path,
    data: &Path,
    out: &Path,
    options: &[&str],
    extra: &[&str],
) -> Vec<String> {
    let mut args = strings(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    args.extend(strings(options));
    args.extend(strings(extra));
    args
}

/// Asserts that the command `what` succeeded; its standard output.
pub fn succeeded(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

// ------------------------------------------------------------------ synthetic models, data

/// The vocabulary of [`tiny_model`]: every word of [`toy_rows`].
pub const TINY_WORDS: &[&str] = &[
    "the", "film", "plot", "was", "good", "great", "fine", "nice", "bad", "awful", "poor", "dull",
];

/// The configuration of [`tiny_model`]: 2 layers, hidden 8, 32 positions.
pub fn tiny_model_config() -> BertConfig {
    let mut cfg = BertConfig::sized(32, 8, 2, 2, 16);
    cfg.max_position_embeddings = 32;
    cfg
}

/// Writes a tiny HF-format BERT directory (word-level tokenizer over [`TINY_WORDS`],
/// deterministic weights) that trains in well under a second; returns `dir`.
pub fn tiny_model(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    TextTokenizer::word_level(&strings(TINY_WORDS), true)
        .unwrap()
        .save(dir)
        .unwrap();
    let cfg = tiny_model_config();
    write_config(dir, &cfg);
    let mut store = ParamStore::new();
    for (i, (name, shape)) in names::bert_tensors(&cfg).into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let data = (0..n)
            .map(|j| ((i * 31 + j * 7) % 17) as f32 / 40.0 - 0.2)
            .collect();
        store.add(&name, &shape, data);
    }
    write_safetensors(&dir.join("model.safetensors"), &store, None).unwrap();
    dir.to_path_buf()
}

/// Writes `cfg` as the `config.json` of an HF model directory.
pub fn write_config(dir: &Path, cfg: &BertConfig) {
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(cfg).unwrap(),
    )
    .unwrap();
}

/// 20 JSON Lines rows of a two-class toy task, "pos" and "neg" alternating; row i of a
/// class reads `the film was <w[i % 4]><joiner><w[(i + 1) % 4]>` with its four words.
pub fn toy_rows_with(pos: [&str; 4], neg: [&str; 4], joiner: &str) -> Vec<String> {
    let mut rows = Vec::new();
    for i in 0..10 {
        for (words, label) in [(&pos, "pos"), (&neg, "neg")] {
            let text = format!(
                "the film was {}{joiner}{}",
                words[i % 4],
                words[(i + 1) % 4]
            );
            rows.push(serde_json::json!({"text": text, "label": label}).to_string());
        }
    }
    rows
}

/// The toy task in the words of [`tiny_model`].
pub fn toy_rows() -> Vec<String> {
    toy_rows_with(
        ["good", "great", "fine", "nice"],
        ["bad", "awful", "poor", "dull"],
        " ",
    )
}

/// Writes 20 toy rows to `dir` (created) as 12 train, 4 dev and 4 test examples.
pub fn write_toy_splits(dir: &Path, rows: &[String]) {
    assert_eq!(rows.len(), 20);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("train.jsonl"), rows[..12].join("\n")).unwrap();
    std::fs::write(dir.join("dev.jsonl"), rows[12..16].join("\n")).unwrap();
    std::fs::write(dir.join("test.jsonl"), rows[16..].join("\n")).unwrap();
}

/// The [`toy_rows`] dataset with its labels.txt in `dir`; returns `dir`.
pub fn toy_data(dir: &Path) -> PathBuf {
    write_toy_splits(dir, &toy_rows());
    std::fs::write(dir.join("labels.txt"), "neg\npos\n").unwrap();
    dir.to_path_buf()
}

/// Writes `<split>.jsonl.gz` in `dir`: one `{"text", "label"}` object per row.
pub fn write_jsonl_gz<T: AsRef<str>>(dir: &Path, split: &str, rows: &[(T, &str)]) {
    let file = std::fs::File::create(dir.join(format!("{split}.jsonl.gz"))).unwrap();
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    for (text, label) in rows {
        let line = serde_json::json!({"text": text.as_ref(), "label": label});
        writeln!(gz, "{line}").unwrap();
    }
    gz.finish().unwrap();
}
