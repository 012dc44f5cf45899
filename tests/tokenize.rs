//! Tokenizer tests: the golden ids of the test checkpoint's tokenizer (via tokenizer.json
//! and via vocab.txt only), truncation, the word-level tokenizer and save/load round trips.

use corefocus::data::tokenize::TextTokenizer;
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

const TEXTS: [&str; 3] = [
    "The quick brown fox jumps over the lazy dog.",
    "Stocks fell sharply on Monday after the central bank raised interest rates by half a point, surprising analysts.",
    "A",
];

/// The test checkpoint directory; a missing one fails the test with instructions.
fn model_dir() -> PathBuf {
    let dir = std::env::var_os("COREFOCUS_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/models/all-MiniLM-L6-v2")
        });
    assert!(
        dir.join("model.safetensors").is_file() && dir.join("vocab.txt").is_file(),
        "test checkpoint not found at {} — run scripts/fetch-test-model.sh \
         (or set COREFOCUS_TEST_MODEL)",
        dir.display()
    );
    dir
}

fn golden_dir() -> PathBuf {
    let dir = std::env::var_os("COREFOCUS_GOLDEN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/golden"));
    assert!(
        dir.join("inputs.safetensors").is_file(),
        "golden tensors not found at {} (set COREFOCUS_GOLDEN)",
        dir.display()
    );
    dir
}

/// A fresh, empty directory under the system temp dir.
fn temp_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "corefocus-tokenize-{tag}-{}-{n}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn read_i64(file: &SafeTensors, name: &str) -> (Vec<usize>, Vec<i64>) {
    let view = file.tensor(name).unwrap();
    assert_eq!(view.dtype(), Dtype::I64, "{name}");
    let data = view
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (view.shape().to_vec(), data)
}

/// The golden token ids of the three texts, each cut to its real length.
fn golden_ids() -> Vec<Vec<u32>> {
    let bytes = std::fs::read(golden_dir().join("inputs.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let (shape, ids) = read_i64(&file, "input_ids");
    let (mask_shape, mask) = read_i64(&file, "attention_mask");
    assert_eq!(shape, vec![3, 22]);
    assert_eq!(mask_shape, shape);
    let seq = shape[1];
    let out: Vec<Vec<u32>> = (0..shape[0])
        .map(|b| {
            let len = mask[b * seq..(b + 1) * seq]
                .iter()
                .filter(|&&m| m == 1)
                .count();
            ids[b * seq..b * seq + len]
                .iter()
                .map(|&i| i as u32)
                .collect()
        })
        .collect();
    let lens: Vec<usize> = out.iter().map(Vec::len).collect();
    assert_eq!(lens, vec![12, 22, 3]);
    out
}

fn check_golden(tok: &TextTokenizer) {
    let golden = golden_ids();
    for (text, want) in TEXTS.iter().zip(&golden) {
        assert_eq!(&tok.encode(text, 128).unwrap(), want, "text {text:?}");
    }
    assert_eq!(tok.encode_batch(&TEXTS, 128).unwrap(), golden);
    assert_eq!(tok.pad_id(), 0);
    assert_eq!(tok.vocab_size(), 30522);
    assert_eq!(tok.id_to_token(101), "[CLS]");
    assert_eq!(tok.id_to_token(golden[0][1]), "the");
}

#[test]
fn golden_ids_via_tokenizer_json() {
    let tok = TextTokenizer::from_dir(&model_dir()).unwrap();
    check_golden(&tok);
}

#[test]
fn golden_ids_via_vocab_txt_only() {
    let src = model_dir();
    let dir = temp_dir("vocab");
    for f in ["vocab.txt", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let tok = TextTokenizer::from_dir(&dir).unwrap();
    check_golden(&tok);
    // Uncased normalisation strips accents too (BertTokenizerFast with strip_accents=None).
    assert_eq!(
        tok.encode("Café RÉSUMÉ", 32).unwrap(),
        TextTokenizer::from_dir(&src)
            .unwrap()
            .encode("cafe resume", 32)
            .unwrap()
    );
    // Special tokens in the text are kept whole, as HF does.
    let ids = tok.encode("a [SEP] b", 32).unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == 102).count(), 2, "{ids:?}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn truncation_to_max_len() {
    let tok = TextTokenizer::from_dir(&model_dir()).unwrap();
    let full = &golden_ids()[1];
    assert_eq!(
        tok.encode(TEXTS[1], 5).unwrap(),
        vec![101, full[1], full[2], full[3], 102]
    );
    assert_eq!(tok.encode(TEXTS[1], 2).unwrap(), vec![101, 102]);
    assert_eq!(tok.encode(TEXTS[1], 22).unwrap(), *full);
    assert_eq!(tok.encode(TEXTS[1], 23).unwrap(), *full);
    assert!(tok.encode(TEXTS[1], 1).is_err());
    assert!(tok.encode_batch(&TEXTS, 0).is_err());
    let batch = tok.encode_batch(&TEXTS, 4).unwrap();
    assert_eq!(
        batch.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![4, 4, 3]
    );
    assert_eq!(tok.encode("", 8).unwrap(), vec![101, 102]);

    // tokenizer.json carries truncation at 128 and padding to 128; both must be off.
    let long = TEXTS[1].repeat(20);
    let ids = tok.encode(&long, 512).unwrap();
    assert_eq!(
        ids.len(),
        2 + 20 * (full.len() - 2),
        "file truncation/padding still active"
    );
    assert_eq!(tok.encode(TEXTS[0], 512).unwrap().len(), 12);
}

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn word_level_tokenizer() {
    let tok = TextTokenizer::word_level(&words(&["the", "cat", "sat", "Mat."]), true).unwrap();
    assert_eq!(tok.vocab_size(), 8);
    assert_eq!(tok.pad_id(), 0);
    assert_eq!(
        tok.encode("The cat  SAT on\tthe mat.", 64).unwrap(),
        vec![2, 4, 5, 6, 1, 4, 7, 3]
    );
    assert_eq!(tok.encode("the cat sat", 4).unwrap(), vec![2, 4, 5, 3]);
    let names: Vec<String> = (0..8).map(|i| tok.id_to_token(i)).collect();
    assert_eq!(
        names,
        words(&["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "sat", "mat."])
    );
    assert_eq!(
        tok.encode_batch(&["cat", "", "sat the"], 16).unwrap(),
        vec![vec![2, 5, 3], vec![2, 3], vec![2, 6, 4, 3]]
    );

    let cased = TextTokenizer::word_level(&words(&["The", "the"]), false).unwrap();
    assert_eq!(
        cased.encode("the The THE", 16).unwrap(),
        vec![2, 5, 4, 1, 3]
    );

    assert!(TextTokenizer::word_level(&words(&["The", "the"]), true).is_err());
    assert!(TextTokenizer::word_level(&words(&["a b"]), false).is_err());
    assert!(TextTokenizer::word_level(&words(&[""]), false).is_err());
    assert!(TextTokenizer::word_level(&words(&["[CLS]"]), false).is_err());
}

#[test]
fn save_then_from_dir_round_trip() {
    let word = TextTokenizer::word_level(&words(&["alpha", "beta", "gamma"]), true).unwrap();
    let dir = temp_dir("save-word");
    word.save(&dir).unwrap();
    let loaded = TextTokenizer::from_dir(&dir).unwrap();
    for text in ["Alpha beta GAMMA delta", "", "gamma gamma"] {
        assert_eq!(
            loaded.encode(text, 16).unwrap(),
            word.encode(text, 16).unwrap()
        );
    }
    assert_eq!(loaded.vocab_size(), word.vocab_size());
    assert_eq!(loaded.pad_id(), 0);
    std::fs::remove_dir_all(&dir).ok();

    let bert = TextTokenizer::from_dir(&model_dir()).unwrap();
    let dir = temp_dir("save-bert");
    bert.save(&dir).unwrap();
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        files,
        vec![std::ffi::OsString::from("tokenizer.json")],
        "no stray temp files"
    );
    check_golden(&TextTokenizer::from_dir(&dir).unwrap());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn missing_tokenizer_is_an_error_naming_the_dir() {
    let dir = temp_dir("empty");
    let err = TextTokenizer::from_dir(&dir).unwrap_err().to_string();
    assert!(err.contains(&dir.display().to_string()), "{err}");
    assert!(
        err.contains("tokenizer.json") && err.contains("vocab.txt"),
        "{err}"
    );

    std::fs::write(dir.join("tokenizer.json"), b"{ not json").unwrap();
    let err = format!("{:#}", TextTokenizer::from_dir(&dir).unwrap_err());
    assert!(err.contains("tokenizer.json"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
