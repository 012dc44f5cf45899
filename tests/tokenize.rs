//! Tokenizer tests: the golden ids of the test checkpoint's tokenizer (via tokenizer.json
//! and via vocab.txt only), truncation, the word-level tokenizer and save/load round trips.

mod common;

use common::{strings, test_model_dir, Golden, Scratch};
use corefocus::data::tokenize::TextTokenizer;

const TEXTS: [&str; 3] = [
    "The quick brown fox jumps over the lazy dog.",
    "Stocks fell sharply on Monday after the central bank raised interest rates by half a point, surprising analysts.",
    "A",
];

/// The golden token ids of the three texts, each cut to its real length.
fn golden_ids() -> Vec<Vec<u32>> {
    let golden = Golden::open("inputs.safetensors");
    let (shape, ids) = (golden.shape("input_ids"), golden.i64("input_ids"));
    let mask = golden.i64("attention_mask");
    assert_eq!(shape, vec![3, 22]);
    assert_eq!(golden.shape("attention_mask"), shape);
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
    let tok = TextTokenizer::from_dir(&test_model_dir()).unwrap();
    check_golden(&tok);
}

#[test]
fn golden_ids_via_vocab_txt_only() {
    let src = test_model_dir();
    let scratch = Scratch::new("vocab");
    let dir = scratch.dir();
    for f in ["vocab.txt", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let tok = TextTokenizer::from_dir(dir).unwrap();
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
}

#[test]
fn truncation_to_max_len() {
    let tok = TextTokenizer::from_dir(&test_model_dir()).unwrap();
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

#[test]
fn word_level_tokenizer() {
    let tok = TextTokenizer::word_level(&strings(&["the", "cat", "sat", "Mat."]), true).unwrap();
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
        strings(&["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "sat", "mat."])
    );
    assert_eq!(
        tok.encode_batch(&["cat", "", "sat the"], 16).unwrap(),
        vec![vec![2, 5, 3], vec![2, 3], vec![2, 6, 4, 3]]
    );

    let cased = TextTokenizer::word_level(&strings(&["The", "the"]), false).unwrap();
    assert_eq!(
        cased.encode("the The THE", 16).unwrap(),
        vec![2, 5, 4, 1, 3]
    );

    assert!(TextTokenizer::word_level(&strings(&["The", "the"]), true).is_err());
    assert!(TextTokenizer::word_level(&strings(&["a b"]), false).is_err());
    assert!(TextTokenizer::word_level(&strings(&[""]), false).is_err());
    assert!(TextTokenizer::word_level(&strings(&["[CLS]"]), false).is_err());
}

#[test]
fn save_then_from_dir_round_trip() {
    let word = TextTokenizer::word_level(&strings(&["alpha", "beta", "gamma"]), true).unwrap();
    let scratch = Scratch::new("save-word");
    let dir = scratch.dir();
    word.save(dir).unwrap();
    let loaded = TextTokenizer::from_dir(dir).unwrap();
    for text in ["Alpha beta GAMMA delta", "", "gamma gamma"] {
        assert_eq!(
            loaded.encode(text, 16).unwrap(),
            word.encode(text, 16).unwrap()
        );
    }
    assert_eq!(loaded.vocab_size(), word.vocab_size());
    assert_eq!(loaded.pad_id(), 0);

    let bert = TextTokenizer::from_dir(&test_model_dir()).unwrap();
    let scratch = Scratch::new("save-bert");
    let dir = scratch.dir();
    bert.save(dir).unwrap();
    let files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        files,
        vec![std::ffi::OsString::from("tokenizer.json")],
        "no stray temp files"
    );
    check_golden(&TextTokenizer::from_dir(dir).unwrap());
}

#[test]
fn missing_tokenizer_is_an_error_naming_the_dir() {
    let scratch = Scratch::new("empty");
    let dir = scratch.dir();
    let err = TextTokenizer::from_dir(dir).unwrap_err().to_string();
    assert!(err.contains(&dir.display().to_string()), "{err}");
    assert!(
        err.contains("tokenizer.json") && err.contains("vocab.txt"),
        "{err}"
    );

    std::fs::write(dir.join("tokenizer.json"), b"{ not json").unwrap();
    let err = format!("{:#}", TextTokenizer::from_dir(dir).unwrap_err());
    assert!(err.contains("tokenizer.json"), "{err}");
}
