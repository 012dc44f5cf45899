//! Property tests (proptest) of the code that reads user input: the dataset readers, the
//! tokenizer input path and the checkpoint loaders. None may panic on any input; valid
//! input must come back exactly. Case counts are modest here so the suite stays fast;
//! `scripts/fuzz.sh` runs the same properties with a large `PROPTEST_CASES`.

mod common;

use common::{gzip, write_config, Scratch};
use corefocus::data::tokenize::TextTokenizer;
use corefocus::data::{load_dataset, read_split, read_split_with_labels, ReadOptions};
use corefocus::model::checkpoint::{load_hf_checkpoint, read_safetensors, write_safetensors};
use corefocus::model::{names, BertConfig, MethodConfig, Model, ParamStore, Variant};
use corefocus::train::eval::predict_probs;
use corefocus::train::{load_checkpoint, save_checkpoint, CheckpointMeta};
use proptest::prelude::*;
use proptest::test_runner::Config;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// `cases` cases, unless `PROPTEST_CASES` asks for another number; no regression files
/// are written (findings become named regression tests in this file instead).
fn config(cases: u32) -> Config {
    let mut c = if std::env::var_os("PROPTEST_CASES").is_some() {
        Config::default()
    } else {
        Config::with_cases(cases)
    };
    c.failure_persistence = None;
    c
}

fn opts() -> ReadOptions {
    ReadOptions::default()
}

// ------------------------------------------------------------------------ dataset readers

/// Bytes that are mostly pieces of JSON / CSV syntax, so the fuzzer reaches the field
/// checks rather than failing on the first byte.
fn syntax_soup() -> impl Strategy<Value = Vec<u8>> {
    let pieces: Vec<&'static [u8]> = vec![
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"",
        b":",
        b",",
        b"\n",
        b"\r\n",
        b"\t",
        b" ",
        b"\\",
        b"\"text\"",
        b"\"label\"",
        b"text",
        b"label",
        b"\"a\"",
        b"\"b c\"",
        b"0",
        b"1",
        b"-3",
        b"1e400",
        b"99999999999999999999",
        b"null",
        b"true",
        b"1.5",
        b"\"\"",
        b"\xef\xbb\xbf",
        b"\xff",
        b"\xc3",
        b"\xc3\xa9",
        b"\"\\u00e9\"",
        b"\"\\ud800\"",
        b"x",
        b"  ",
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::collection::vec(proptest::sample::select(pieces), 0..80).prop_map(|p| p.concat()),
    ]
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        (-1e30f64..1e30).prop_map(serde_json::Value::from),
        unicode_string(0..12).prop_map(serde_json::Value::from),
        (0i64..4).prop_map(serde_json::Value::from),
        prop_oneof![Just("pos"), Just("neg"), Just(" pos "), Just(""), Just(" ")]
            .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("text".to_string()),
                    Just("label".to_string()),
                    unicode_string(0..5)
                ],
                inner,
                0..4
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Strings of arbitrary Unicode scalar values (control characters, combining marks, CJK,
/// emoji, private use and unassigned code points included).
fn unicode_string(len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), len).prop_map(|c| c.into_iter().collect())
}

/// A text with at least one non-whitespace character.
fn text() -> impl Strategy<Value = String> {
    unicode_string(1..40).prop_filter("needs a non-whitespace character", |t| !t.trim().is_empty())
}

/// A label as the readers return it: non-empty, no surrounding whitespace.
fn label() -> impl Strategy<Value = String> {
    unicode_string(1..8)
        .prop_map(|l| l.trim().to_string())
        .prop_filter("non-empty label", |l| !l.is_empty())
}

/// Reads `bytes` as each supported format; results may be errors, never panics. A
/// successful read must yield only valid examples.
fn read_all_formats(dir: &Path, bytes: &[u8]) {
    for name in [
        "train.jsonl",
        "train.csv",
        "train.tsv",
        "train.jsonl.gz",
        "train.csv.gz",
    ] {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        check_examples(read_split(&path, &opts()));
        if name.ends_with(".gz") {
            std::fs::write(&path, gzip(bytes)).unwrap();
            check_examples(read_split(&path, &opts()));
            let gz = gzip(bytes);
            std::fs::write(&path, &gz[..gz.len() * 2 / 3]).unwrap();
            check_examples(read_split(&path, &opts()));
        }
        std::fs::remove_file(&path).unwrap();
    }
}

fn check_examples(result: anyhow::Result<Vec<corefocus::data::Example>>) {
    if let Ok(examples) = result {
        assert!(!examples.is_empty());
        for e in examples {
            assert!(!e.text.trim().is_empty(), "blank text accepted: {e:?}");
            assert!(
                !e.label.is_empty() && e.label.trim() == e.label,
                "bad label accepted: {e:?}"
            );
        }
    }
}

proptest! {
    #![proptest_config(config(96))]

    #[test]
    fn readers_never_panic_on_arbitrary_bytes(bytes in syntax_soup()) {
        let scratch = Scratch::new("bytes");
        let dir = scratch.dir();
        read_all_formats(dir, &bytes);
    }

    #[test]
    fn readers_never_panic_on_arbitrary_json_lines(
        lines in proptest::collection::vec(json_value(), 1..6),
        with_labels in any::<bool>(),
    ) {
        let scratch = Scratch::new("jsonl");
        let dir = scratch.dir();
        let text: Vec<String> = lines.iter().map(|v| v.to_string()).collect();
        let path = dir.join("train.jsonl");
        std::fs::write(&path, text.join("\n")).unwrap();
        let labels = vec!["neg".to_string(), "pos".to_string()];
        check_examples(read_split_with_labels(&path, &opts(), with_labels.then_some(labels.as_slice())));
        // The whole-dataset path (label lists, dev/test checks) too.
        std::fs::write(dir.join("test.jsonl"), text.join("\n")).unwrap();
        if with_labels {
            std::fs::write(dir.join("labels.txt"), "neg\npos\n").unwrap();
        }
        let _ = load_dataset(dir, &opts());
        for f in ["train.jsonl", "test.jsonl", "labels.txt"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
    }

    #[test]
    fn readers_never_panic_on_arbitrary_csv_records(
        rows in proptest::collection::vec(proptest::collection::vec(unicode_string(0..10), 0..4), 0..6),
        header in proptest::collection::vec(prop_oneof![Just("text".to_string()), Just("label".to_string()), unicode_string(0..4)], 0..4),
    ) {
        let scratch = Scratch::new("csv");
        let dir = scratch.dir();
        for (name, delimiter) in [("train.csv", b','), ("train.tsv", b'\t')] {
            let mut w = csv::WriterBuilder::new().delimiter(delimiter).flexible(true).from_writer(Vec::new());
            w.write_record(&header).unwrap();
            for r in &rows {
                w.write_record(r).unwrap();
            }
            let bytes = w.into_inner().unwrap();
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            check_examples(read_split(&path, &opts()));
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn valid_rows_round_trip(rows in proptest::collection::vec((text(), label()), 1..12)) {
        let scratch = Scratch::new("roundtrip");
        let dir = scratch.dir();
        // JSON Lines, plain and gzip-compressed.
        let jsonl: Vec<String> = rows
            .iter()
            .map(|(t, l)| serde_json::json!({"text": t, "label": l}).to_string())
            .collect();
        let jsonl = jsonl.join("\n") + "\n";
        std::fs::write(dir.join("train.jsonl"), &jsonl).unwrap();
        std::fs::write(dir.join("train.jsonl.gz"), gzip(jsonl.as_bytes())).unwrap();
        // CSV (quoted as needed).
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(["label", "text"]).unwrap();
        for (t, l) in &rows {
            w.write_record([l, t]).unwrap();
        }
        std::fs::write(dir.join("train.csv"), w.into_inner().unwrap()).unwrap();
        for name in ["train.jsonl", "train.jsonl.gz", "train.csv"] {
            let got = read_split(&dir.join(name), &opts()).unwrap();
            let got: Vec<(String, String)> = got.into_iter().map(|e| (e.text, e.label)).collect();
            prop_assert_eq!(&got, &rows, "{}", name);
        }
        // TSV has no quoting: rows without tabs and line breaks.
        let plain: Vec<&(String, String)> = rows
            .iter()
            .filter(|(t, l)| !format!("{t}{l}").contains(['\t', '\n', '\r']))
            .collect();
        if !plain.is_empty() {
            let mut tsv = String::from("text\tlabel\n");
            for (t, l) in &plain {
                tsv.push_str(&format!("{t}\t{l}\n"));
            }
            std::fs::write(dir.join("train.tsv"), tsv).unwrap();
            let got = read_split(&dir.join("train.tsv"), &opts()).unwrap();
            let got: Vec<(&String, &String)> = got.iter().map(|e| (&e.text, &e.label)).collect();
            let want: Vec<(&String, &String)> = plain.iter().map(|(t, l)| (t, l)).collect();
            prop_assert_eq!(got, want);
            std::fs::remove_file(dir.join("train.tsv")).unwrap();
        }
        for name in ["train.jsonl", "train.jsonl.gz", "train.csv"] {
            std::fs::remove_file(dir.join(name)).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------- tokenizer

fn minilm_tokenizer() -> &'static TextTokenizer {
    static TOK: OnceLock<TextTokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let dir = std::env::var_os("COREFOCUS_TEST_MODEL")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("target/models/all-MiniLM-L6-v2")
            });
        TextTokenizer::from_dir(&dir).unwrap_or_else(|e| {
            panic!(
                "test checkpoint tokenizer missing at {}: {e:#} (run scripts/fetch-test-model.sh)",
                dir.display()
            )
        })
    })
}

fn word_tokenizer() -> &'static TextTokenizer {
    static TOK: OnceLock<TextTokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let words: Vec<String> = ["the", "film", "Über", "日本", "a.b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        TextTokenizer::word_level(&words, true).unwrap()
    })
}

fn check_encoding(
    tok: &TextTokenizer,
    text: &str,
    max_len: usize,
) -> Result<Vec<u32>, TestCaseError> {
    let ids = tok
        .encode(text, max_len)
        .map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
    prop_assert!(
        ids.len() >= 2 && ids.len() <= max_len,
        "{} ids for max_len {}",
        ids.len(),
        max_len
    );
    prop_assert_eq!(ids[0], tok.cls_id());
    prop_assert_eq!(*ids.last().unwrap(), tok.sep_id());
    // (vocab_size builds the whole vocabulary map: once per text, not per id.)
    let vocab = tok.vocab_size();
    prop_assert!(ids.iter().all(|&i| (i as usize) < vocab));
    Ok(ids)
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn tokenizer_accepts_any_unicode(
        texts in proptest::collection::vec(
            prop_oneof![
                unicode_string(0..60),
                proptest::collection::vec(
                    prop_oneof![
                        Just("[CLS]"), Just("[SEP]"), Just("[PAD]"), Just("[MASK]"), Just("[UNK]"),
                        Just("##"), Just(" "), Just("\u{0301}"), Just("é"), Just("日本語"),
                        Just("\u{200d}"), Just("👩‍👩‍👧"), Just("\0"), Just("\u{feff}"), Just("word"),
                        Just("\r\n"), Just("\u{fffd}"), Just("ﬁ"), Just("İ"),
                    ],
                    0..30,
                )
                .prop_map(|p| p.concat()),
            ],
            1..5,
        ),
        max_len in 2usize..40,
    ) {
        for tok in [minilm_tokenizer(), word_tokenizer()] {
            let mut single = Vec::new();
            for t in &texts {
                single.push(check_encoding(tok, t, max_len)?);
            }
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let batch = tok.encode_batch(&refs, max_len).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
            prop_assert_eq!(batch, single, "encode_batch equals encode");
        }
    }
}

#[test]
fn tokenizer_rejects_max_len_below_two() {
    let tok = minilm_tokenizer();
    for max_len in [0, 1] {
        assert!(tok.encode("x", max_len).is_err());
        assert!(tok.encode_batch(&["x"], max_len).is_err());
    }
}

// ---------------------------------------------------------------------- checkpoint loaders

fn tiny_config() -> BertConfig {
    let mut cfg = BertConfig::sized(16, 4, 2, 2, 8);
    cfg.max_position_embeddings = 12;
    cfg
}

/// A valid tiny HF checkpoint's model.safetensors bytes.
fn tiny_hf_weights() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let mut store = ParamStore::new();
        for (i, (name, shape)) in names::bert_tensors(&tiny_config()).into_iter().enumerate() {
            let n: usize = shape.iter().product();
            store.add(
                &name,
                &shape,
                (0..n).map(|j| (i + j) as f32 / 64.0).collect(),
            );
        }
        let scratch = Scratch::new("hf-src");
        let path = scratch.path("model.safetensors");
        write_safetensors(&path, &store, None).unwrap();
        std::fs::read(&path).unwrap()
    })
}

/// A valid tiny corefocus checkpoint (variant pfc) as (file name, bytes) pairs.
fn tiny_corefocus_checkpoint() -> &'static Vec<(String, Vec<u8>)> {
    static FILES: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    FILES.get_or_init(|| {
        let cfg = tiny_config();
        let mut method = MethodConfig::new(Variant::Pfc, 2);
        method.combine_layer = 2;
        method.combine_tokens = 3;
        method.keep_ratio = 0.7;
        let model = Model::random(cfg, method.clone(), 2, 5).unwrap();
        let words: Vec<String> = ["the", "film", "good", "bad"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let tok = TextTokenizer::word_level(&words, true).unwrap();
        let meta = CheckpointMeta::new(
            vec!["neg".into(), "pos".into()],
            method,
            10,
            None,
            Some(1),
            Some(0.5),
        );
        let scratch = Scratch::new("cf-src");
        let dir = scratch.path("ckpt");
        save_checkpoint(&dir, &model, &tok, &meta).unwrap();
        let mut files = Vec::new();
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            files.push((
                e.file_name().to_string_lossy().to_string(),
                std::fs::read(e.path()).unwrap(),
            ));
        }
        files.sort();
        files
    })
}

/// The header length of a safetensors file whose header is readable.
fn header_len(bytes: &[u8]) -> Option<usize> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    usize::try_from(n).ok().filter(|&n| n <= bytes.len() - 8)
}

/// A safetensors file with its header JSON edited by `edit`, the data kept (unchanged
/// when an earlier damage left no readable header).
fn with_header(
    bytes: &[u8],
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> Vec<u8> {
    let Some(n) = header_len(bytes) else {
        return bytes.to_vec();
    };
    let Ok(mut header) = serde_json::from_slice::<serde_json::Value>(&bytes[8..8 + n]) else {
        return bytes.to_vec();
    };
    let Some(map) = header.as_object_mut() else {
        return bytes.to_vec();
    };
    if map.keys().all(|k| k == "__metadata__") {
        return bytes.to_vec();
    }
    edit(map);
    let mut text = serde_json::to_vec(&header).unwrap();
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

/// One way of damaging a safetensors file.
#[derive(Clone, Debug)]
enum Damage {
    Truncate(usize),
    FlipByte(usize, u8),
    HeaderLength(u64),
    Offsets(usize, u64, u64),
    Shape(usize, Vec<usize>),
    Dtype(usize, &'static str),
    Remove(usize),
    Rename(usize, String),
    Metadata(serde_json::Value),
    Append(Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    let big = prop_oneof![
        0u64..64,
        0u64..100_000,
        Just(u64::MAX),
        Just(u64::MAX / 2),
        Just(1 << 40)
    ];
    let dim = prop_oneof![0usize..20, Just(usize::MAX), Just(1 << 31), Just(1 << 62)];
    prop_oneof![
        any::<usize>().prop_map(Damage::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Damage::FlipByte(i, b)),
        big.clone().prop_map(Damage::HeaderLength),
        (any::<usize>(), big.clone(), big).prop_map(|(t, a, b)| Damage::Offsets(t, a, b)),
        (any::<usize>(), proptest::collection::vec(dim, 0..4))
            .prop_map(|(t, s)| Damage::Shape(t, s)),
        (
            any::<usize>(),
            proptest::sample::select(vec![
                "F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "C64", "XX", ""
            ])
        )
            .prop_map(|(t, d)| Damage::Dtype(t, d)),
        any::<usize>().prop_map(Damage::Remove),
        (
            any::<usize>(),
            prop_oneof![
                Just("bert.embeddings.LayerNorm.weight".to_string()),
                Just("classifier.weight".to_string()),
                Just("embeddings.LayerNorm.gamma".to_string()),
                Just("encoder.layer.9.output.dense.bias".to_string()),
                Just("__metadata__".to_string()),
                unicode_string(0..8),
            ]
        )
            .prop_map(|(t, n)| Damage::Rename(t, n)),
        json_value().prop_map(Damage::Metadata),
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(Damage::Append),
    ]
}

fn apply(bytes: &[u8], d: &Damage) -> Vec<u8> {
    let tensor_key = |h: &serde_json::Map<String, serde_json::Value>, i: usize| {
        let keys: Vec<String> = h.keys().filter(|k| *k != "__metadata__").cloned().collect();
        keys[i % keys.len()].clone()
    };
    if bytes.is_empty() {
        return Vec::new();
    }
    match d {
        Damage::Truncate(n) => bytes[..n % bytes.len()].to_vec(),
        Damage::FlipByte(i, b) => {
            let mut v = bytes.to_vec();
            // Mostly inside the header, where the structure is.
            let n = header_len(bytes).map_or(v.len(), |n| n + 8);
            let at = if i % 4 == 0 { i % v.len() } else { i % n };
            v[at] ^= b | 1;
            v
        }
        Damage::HeaderLength(n) => {
            let mut v = bytes.to_vec();
            let k = v.len().min(8);
            v[..k].copy_from_slice(&n.to_le_bytes()[..k]);
            v
        }
        Damage::Offsets(t, a, b) => with_header(bytes, |h| {
            let k = tensor_key(h, *t);
            h[&k]["data_offsets"] = serde_json::json!([a, b]);
        }),
        Damage::Shape(t, s) => with_header(bytes, |h| {
            let k = tensor_key(h, *t);
            h[&k]["shape"] = serde_json::json!(s);
        }),
        Damage::Dtype(t, dt) => with_header(bytes, |h| {
            let k = tensor_key(h, *t);
            h[&k]["dtype"] = serde_json::json!(dt);
        }),
        Damage::Remove(t) => with_header(bytes, |h| {
            let k = tensor_key(h, *t);
            h.remove(&k);
        }),
        Damage::Rename(t, n) => with_header(bytes, |h| {
            let k = tensor_key(h, *t);
            if let Some(v) = h.remove(&k) {
                h.insert(n.clone(), v);
            }
        }),
        Damage::Metadata(m) => with_header(bytes, |h| {
            h.insert("__metadata__".into(), m.clone());
        }),
        Damage::Append(extra) => [bytes, extra.as_slice()].concat(),
    }
}

/// Loads the damaged HF checkpoint and corefocus checkpoint; errors are fine, panics are
/// not, and a corefocus checkpoint that loads must also run.
fn load_damaged(tag: &str, damages: &[Damage], meta_edit: Option<(String, serde_json::Value)>) {
    let hf_scratch = Scratch::new(&format!("{tag}-hf"));
    let hf = hf_scratch.dir();
    let mut weights = tiny_hf_weights().to_vec();
    for d in damages {
        weights = apply(&weights, d);
    }
    std::fs::write(hf.join("model.safetensors"), &weights).unwrap();
    write_config(hf, &tiny_config());
    let _ = read_safetensors(&hf.join("model.safetensors"), false);
    let _ = read_safetensors(&hf.join("model.safetensors"), true);
    let _ = load_hf_checkpoint(hf);

    let ckpt_scratch = Scratch::new(&format!("{tag}-cf"));
    let ckpt = ckpt_scratch.dir();
    for (name, bytes) in tiny_corefocus_checkpoint() {
        let mut bytes = bytes.clone();
        if name == "model.safetensors" {
            for d in damages {
                bytes = apply(&bytes, d);
            }
        }
        if let (Some((field, value)), "corefocus.json") = (&meta_edit, name.as_str()) {
            let mut meta: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            if let Some(method_field) = field.strip_prefix("method.") {
                meta["method"][method_field] = value.clone();
            } else {
                meta[field.as_str()] = value.clone();
            }
            bytes = serde_json::to_vec(&meta).unwrap();
        }
        std::fs::write(ckpt.join(name), bytes).unwrap();
    }
    if let Ok((model, tok, meta)) = load_checkpoint(ckpt) {
        let ids = vec![tok
            .encode("the film good the bad film the the", meta.max_len)
            .unwrap()];
        let probs = predict_probs(&model, &ids, tok.pad_id(), 4);
        assert_eq!(probs.len(), meta.labels.len());
    }
}

fn meta_edit() -> impl Strategy<Value = Option<(String, serde_json::Value)>> {
    let field = proptest::sample::select(vec![
        "max_len",
        "labels",
        "format_version",
        "method.variant",
        "method.keep_ratio",
        "method.combine_layer",
        "method.combine_tokens",
        "method.combine_scale",
        "method.assign_eps",
        "method.pooling",
        "method.pct_low",
        "method.pct_high",
        "method.classifier_dropout",
        "method.imp_thresh",
        "method.combine_ln_eps",
    ]);
    let value = prop_oneof![
        json_value(),
        (0u64..20).prop_map(serde_json::Value::from),
        Just(serde_json::json!(1_000_000_000_000u64)),
        Just(serde_json::json!(["a"])),
        Just(serde_json::json!(["a", "b", "c"])),
        Just(serde_json::json!("c")),
        Just(serde_json::json!("bert")),
        Just(serde_json::json!("cls")),
        Just(serde_json::json!(-1.0)),
    ];
    proptest::option::of((field.prop_map(String::from), value))
}

proptest! {
    #![proptest_config(config(96))]

    #[test]
    fn safetensors_reader_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let scratch = Scratch::new("st-bytes");
        let dir = scratch.dir();
        let path = dir.join("model.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        prop_assert!(read_safetensors(&path, false).is_err() || bytes.len() >= 8);
        write_config(dir, &tiny_config());
        prop_assert!(load_hf_checkpoint(dir).is_err());
    }

    #[test]
    fn checkpoint_loaders_never_panic_on_damaged_files(
        damages in proptest::collection::vec(damage(), 0..3),
        meta in meta_edit(),
    ) {
        load_damaged("damaged", &damages, meta);
    }
}

#[test]
fn undamaged_fixtures_load() {
    let hf_scratch = Scratch::new("clean-hf");
    let hf = hf_scratch.dir();
    std::fs::write(hf.join("model.safetensors"), tiny_hf_weights()).unwrap();
    write_config(hf, &tiny_config());
    load_hf_checkpoint(hf).unwrap();
    let ckpt_scratch = Scratch::new("clean-cf");
    let ckpt = ckpt_scratch.dir();
    for (name, bytes) in tiny_corefocus_checkpoint() {
        std::fs::write(ckpt.join(name), bytes).unwrap();
    }
    load_checkpoint(ckpt).unwrap();
}
