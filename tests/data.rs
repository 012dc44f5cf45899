//! Dataset readers, label handling and stratified splits.

mod common;

use common::{data_dir, gzip, strings, Scratch};
use corefocus::data::{
    label_ids, length_stats, load_dataset, read_split, read_split_with_labels, stratified_split,
    Example, ReadOptions,
};
use std::collections::BTreeMap;
use std::path::Path;

fn opts() -> ReadOptions {
    ReadOptions::default()
}

fn texts(examples: &[Example]) -> Vec<&str> {
    examples.iter().map(|e| e.text.as_str()).collect()
}

fn labels_of(examples: &[Example]) -> Vec<&str> {
    examples.iter().map(|e| e.label.as_str()).collect()
}

/// Reads `path` expecting an error; returns the message with its whole context chain.
fn read_err(path: &Path) -> String {
    match read_split(path, &opts()) {
        Ok(examples) => panic!("{} read without error: {examples:?}", path.display()),
        Err(e) => format!("{e:#}"),
    }
}

fn assert_names(message: &str, path: &Path, line: Option<usize>) {
    let expected = match line {
        Some(line) => format!("{}:{}", path.display(), line),
        None => path.display().to_string(),
    };
    assert!(
        message.contains(&expected),
        "message {message:?} does not name {expected:?}"
    );
}

// ---------------------------------------------------------------- formats

const JSONL: &str = concat!(
    "{\"text\": \"  Leading and trailing spaces kept \\n\", \"label\": \"pos\"}\n",
    "\n",
    "   \n",
    "{\"label\": \"neg\", \"text\": \"Caf\u{e9} \\u00a3 line1\\nline2\\ttab\", \"extra\": 1}\r\n",
    "{\"text\": \"third\", \"label\": \" pos \"}"
);

#[test]
fn jsonl_reads_texts_exactly_and_skips_blank_lines() {
    let dir = Scratch::new("jsonl");
    let path = dir.write("train.jsonl", JSONL.as_bytes());
    let examples = read_split(&path, &opts()).unwrap();
    assert_eq!(
        texts(&examples),
        vec![
            "  Leading and trailing spaces kept \n",
            "Café £ line1\nline2\ttab",
            "third"
        ]
    );
    // labels are identifiers: surrounding whitespace is dropped
    assert_eq!(labels_of(&examples), vec!["pos", "neg", "pos"]);
    assert_eq!(examples[0].origin, format!("{}:1", path.display()));
    assert_eq!(examples[1].origin, format!("{}:4", path.display()));
    assert_eq!(examples[2].origin, format!("{}:5", path.display()));
}

#[test]
fn jsonl_gz_matches_plain() {
    let dir = Scratch::new("jsonl-gz");
    let plain = read_split(&dir.write("a.jsonl", JSONL.as_bytes()), &opts()).unwrap();
    let gz_path = dir.write_gz("b.jsonl.gz", JSONL.as_bytes());
    let gz = read_split(&gz_path, &opts()).unwrap();
    assert_eq!(texts(&plain), texts(&gz));
    assert_eq!(labels_of(&plain), labels_of(&gz));
    assert_eq!(gz[1].origin, format!("{}:4", gz_path.display()));
}

#[test]
fn jsonl_custom_columns() {
    let dir = Scratch::new("jsonl-cols");
    let path = dir.write(
        "x.jsonl",
        b"{\"sentence\": \"hello\", \"y\": \"a\", \"text\": 5}\n{\"sentence\": \"world\", \"y\": \"b\"}\n",
    );
    let options = ReadOptions {
        text_column: Some("sentence".into()),
        label_column: Some("y".into()),
    };
    let examples = read_split(&path, &options).unwrap();
    assert_eq!(texts(&examples), vec!["hello", "world"]);
    assert_eq!(labels_of(&examples), vec!["a", "b"]);
}

#[test]
fn jsonl_integer_labels_index_labels_txt_or_stay_strings() {
    let dir = Scratch::new("jsonl-int");
    let body = b"{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\", \"label\": 0}\n{\"text\": \"c\", \"label\": \"negative\"}\n";
    let path = dir.write("train.jsonl", body);

    // without labels.txt: the integer is the label
    let examples = read_split(&path, &opts()).unwrap();
    assert_eq!(labels_of(&examples), vec!["1", "0", "negative"]);

    // with labels.txt next to the file: the integer indexes it
    dir.write("labels.txt", b"negative\npositive\n");
    let examples = read_split(&path, &opts()).unwrap();
    assert_eq!(
        labels_of(&examples),
        vec!["positive", "negative", "negative"]
    );
    let splits = load_dataset(dir.dir(), &opts()).unwrap();
    assert_eq!(
        labels_of(&splits.train),
        vec!["positive", "negative", "negative"]
    );

    // out of range
    let bad = dir.write(
        "bad.jsonl",
        b"{\"text\": \"a\", \"label\": 0}\n{\"text\": \"b\", \"label\": 2}\n",
    );
    let message = format!(
        "{:#}",
        read_split_with_labels(&bad, &opts(), Some(&strings(&["x", "y"]))).unwrap_err()
    );
    assert_names(&message, &bad, Some(2));
    assert!(message.contains("out of range"), "{message}");
}

#[test]
fn integer_labels_without_labels_txt_sort_numerically() {
    let dir = Scratch::new("int-sort");
    let mut body = String::new();
    for label in [10, 2, 0, 1, 2] {
        body.push_str(&format!("{{\"text\": \"t{label}\", \"label\": {label}}}\n"));
    }
    dir.write("train.jsonl", body.as_bytes());
    let splits = load_dataset(dir.dir(), &opts()).unwrap();
    assert_eq!(splits.labels, strings(&["0", "1", "2", "10"]));
}

#[test]
fn csv_quoting_multiline_and_line_numbers() {
    let dir = Scratch::new("csv");
    let body =
        "id,label,text\n1,sport,\"A, quoted \"\"text\"\"\nover two lines \"\n2,tech,  plain  \n";
    let path = dir.write("train.csv", body.as_bytes());
    let examples = read_split(&path, &opts()).unwrap();
    assert_eq!(
        texts(&examples),
        vec!["A, quoted \"text\"\nover two lines ", "  plain  "]
    );
    assert_eq!(labels_of(&examples), vec!["sport", "tech"]);
    assert_eq!(examples[0].origin, format!("{}:2", path.display()));
    assert_eq!(examples[1].origin, format!("{}:4", path.display()));

    let gz = read_split(&dir.write_gz("train2.csv.gz", body.as_bytes()), &opts()).unwrap();
    assert_eq!(texts(&gz), texts(&examples));
}

/// Issue 16 item 5: with CRLF line endings the csv crate's line count ran one behind
/// (an error on line 7 named line 6; failed before the fix).
#[test]
fn csv_crlf_errors_name_the_right_line() {
    let dir = Scratch::new("csv-crlf");
    let good = "text,label\r\none,a\r\n\"two\r\nlines\",b\r\nthree,a\r\nfour,b\r\n";
    let path = dir.write("ok.csv", good.as_bytes());
    let examples = read_split(&path, &opts()).unwrap();
    let origins: Vec<String> = examples.iter().map(|e| e.origin.clone()).collect();
    let at = |n: usize| format!("{}:{n}", path.display());
    assert_eq!(origins, vec![at(2), at(3), at(5), at(6)]);
    for (bad_row, what) in [("seven,b,extra", "row has 3 fields"), ("  ,b", "empty")] {
        let body = format!("{good}{bad_row}\r\n");
        let path = dir.write("bad.csv", body.as_bytes());
        let err = format!("{:#}", read_split(&path, &opts()).unwrap_err());
        assert!(err.contains("bad.csv:7: "), "{err}");
        assert!(err.contains(what), "{err}");
    }
}

#[test]
fn csv_custom_columns() {
    let dir = Scratch::new("csv-cols");
    let path = dir.write("d.csv", b"sentence,category\nhello there,greet\n");
    let options = ReadOptions {
        text_column: Some("sentence".into()),
        label_column: Some("category".into()),
    };
    let examples = read_split(&path, &options).unwrap();
    assert_eq!(texts(&examples), vec!["hello there"]);
    assert_eq!(labels_of(&examples), vec!["greet"]);
}

#[test]
fn tsv_keeps_quotes_literally() {
    let dir = Scratch::new("tsv");
    let body = "text\tlabel\n\"quoted\" start, and comma\tpos\nsecond \"row\"\tneg\r\n";
    let path = dir.write("train.tsv", body.as_bytes());
    let examples = read_split(&path, &opts()).unwrap();
    assert_eq!(
        texts(&examples),
        vec!["\"quoted\" start, and comma", "second \"row\""]
    );
    assert_eq!(labels_of(&examples), vec!["pos", "neg"]);
    assert_eq!(examples[1].origin, format!("{}:3", path.display()));

    let gz = read_split(&dir.write_gz("train2.tsv.gz", body.as_bytes()), &opts()).unwrap();
    assert_eq!(texts(&gz), texts(&examples));
    assert_eq!(labels_of(&gz), labels_of(&examples));
}

#[test]
fn folder_per_class() {
    let dir = Scratch::new("folders");
    dir.write("train/sport/002.txt", b"Second sport\n\nbody text\n");
    dir.write("train/sport/001.txt", b"\xEF\xBB\xBFFirst sport");
    dir.write("train/business/001.txt", b" Markets \n");
    dir.write("train/business/notes.md", b"ignored: not a .txt file");
    dir.write("train/.hidden/001.txt", b"ignored: hidden folder");
    dir.write("train/README.txt", b"ignored: not inside a class folder");
    let split_dir = dir.dir().join("train");
    let examples = read_split(&split_dir, &opts()).unwrap();
    assert_eq!(labels_of(&examples), vec!["business", "sport", "sport"]);
    // the byte-order mark is dropped, everything else kept
    assert_eq!(
        texts(&examples),
        vec![" Markets \n", "First sport", "Second sport\n\nbody text\n"]
    );
    assert_eq!(
        examples[1].origin,
        split_dir.join("sport/001.txt").display().to_string()
    );

    let splits = load_dataset(dir.dir(), &opts()).unwrap();
    assert_eq!(splits.labels, strings(&["business", "sport"]));
    assert!(splits.dev.is_none() && splits.test.is_none());
}

// ---------------------------------------------------------------- load_dataset

#[test]
fn load_dataset_finds_splits_by_alternative_names_and_formats() {
    let dir = Scratch::new("load");
    dir.write_gz(
        "train.jsonl.gz",
        b"{\"text\": \"x\", \"label\": \"b\"}\n{\"text\": \"y\", \"label\": \"a\"}\n{\"text\": \"z\", \"label\": \"b\"}\n",
    );
    dir.write("validation.csv", b"text,label\nv1,a\n");
    dir.write("test/b/1.txt", b"t1");
    let splits = load_dataset(dir.dir(), &opts()).unwrap();
    assert_eq!(splits.dir, dir.dir());
    assert_eq!(splits.train.len(), 3);
    assert_eq!(texts(splits.dev.as_ref().unwrap()), vec!["v1"]);
    assert_eq!(labels_of(splits.test.as_ref().unwrap()), vec!["b"]);
    // sorted unique train labels when there is no labels.txt
    assert_eq!(splits.labels, strings(&["a", "b"]));
    assert_eq!(
        label_ids(&splits.train, &splits.labels, "train").unwrap(),
        vec![1, 0, 1]
    );

    // labels.txt wins (its order)
    dir.write("labels.txt", b"b\n\n  a\n");
    let splits = load_dataset(dir.dir(), &opts()).unwrap();
    assert_eq!(splits.labels, strings(&["b", "a"]));
    // ... but a class of it without a training example is an error naming the class
    // (docs/errors.md, D19).
    dir.write("labels.txt", b"b\n\n  c\na\n");
    let message = format!("{:#}", load_dataset(dir.dir(), &opts()).unwrap_err());
    assert!(
        message.contains("\"c\"") && message.contains("no training example"),
        "{message}"
    );
}

#[test]
fn load_dataset_missing_train_names_dir_and_candidates() {
    let dir = Scratch::new("no-train");
    dir.write("dev.jsonl", b"{\"text\": \"x\", \"label\": \"a\"}\n");
    let message = format!("{:#}", load_dataset(dir.dir(), &opts()).unwrap_err());
    assert!(
        message.contains(&dir.dir().display().to_string()),
        "{message}"
    );
    for name in [
        "train.jsonl",
        "train.jsonl.gz",
        "train.csv",
        "train.tsv.gz",
        "train/",
    ] {
        assert!(message.contains(name), "{message} lacks {name}");
    }

    let missing = dir.dir().join("does-not-exist");
    let message = format!("{:#}", load_dataset(&missing, &opts()).unwrap_err());
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );
}

#[test]
fn load_dataset_rejects_two_files_for_one_split() {
    let dir = Scratch::new("ambiguous");
    dir.write("train.jsonl", b"{\"text\": \"x\", \"label\": \"a\"}\n");
    dir.write("train.csv", b"text,label\nx,a\n");
    let message = format!("{:#}", load_dataset(dir.dir(), &opts()).unwrap_err());
    assert!(
        message.contains("train.jsonl") && message.contains("train.csv"),
        "{message}"
    );
}

#[test]
fn train_label_missing_from_labels_txt_is_named() {
    let dir = Scratch::new("labels-missing");
    dir.write("labels.txt", b"a\nb\n");
    let train = dir.write(
        "train.jsonl",
        b"{\"text\": \"x\", \"label\": \"a\"}\n{\"text\": \"y\", \"label\": \"zebra\"}\n",
    );
    let message = format!("{:#}", load_dataset(dir.dir(), &opts()).unwrap_err());
    assert!(message.contains("\"zebra\""), "{message}");
    assert!(message.contains("labels.txt"), "{message}");
    assert_names(&message, &train, Some(2));
}

#[test]
fn unknown_test_label_is_reported_with_origin_and_known_labels() {
    let dir = Scratch::new("unknown-test");
    dir.write(
        "train.jsonl",
        b"{\"text\": \"x\", \"label\": \"a\"}\n{\"text\": \"y\", \"label\": \"b\"}\n",
    );
    let test = dir.write(
        "test.jsonl",
        b"{\"text\": \"x\", \"label\": \"a\"}\n\n{\"text\": \"q\", \"label\": \"c\"}\n",
    );
    let message = format!("{:#}", load_dataset(dir.dir(), &opts()).unwrap_err());
    assert_names(&message, &test, Some(3));
    assert!(
        message.contains("test") && message.contains("\"c\""),
        "{message}"
    );
    assert!(message.contains("a, b"), "{message}");

    // label_ids directly
    let examples = read_split(&test, &opts()).unwrap();
    let message = format!(
        "{:#}",
        label_ids(&examples, &strings(&["a", "b"]), "dev").unwrap_err()
    );
    assert_names(&message, &test, Some(3));
    assert!(
        message.contains("dev") && message.contains("\"c\"") && message.contains("a, b"),
        "{message}"
    );
    assert_eq!(
        label_ids(&examples[..1], &strings(&["b", "a"]), "dev").unwrap(),
        vec![1]
    );
}

#[test]
fn labels_txt_duplicates_are_an_error() {
    let dir = Scratch::new("labels-dup");
    let labels = dir.write("labels.txt", b"a\nb\n\na\n");
    dir.write("train.jsonl", b"{\"text\": \"x\", \"label\": \"a\"}\n");
    let message = format!("{:#}", load_dataset(dir.dir(), &opts()).unwrap_err());
    assert_names(&message, &labels, Some(4));
    assert!(
        message.contains("duplicate") && message.contains("\"a\""),
        "{message}"
    );
}

// ---------------------------------------------------------------- error cases

#[test]
fn jsonl_errors_name_file_and_line() {
    let dir = Scratch::new("jsonl-errors");
    let good = "{\"text\": \"fine\", \"label\": \"a\"}\n\n";
    let cases: [(&str, &[u8], &str); 9] = [
        (
            "malformed.jsonl",
            b"{\"text\": \"x\", \"label\": }\n",
            "malformed JSON",
        ),
        (
            "missing-text.jsonl",
            b"{\"label\": \"a\"}\n",
            "missing field \"text\"",
        ),
        (
            "missing-label.jsonl",
            b"{\"text\": \"x\"}\n",
            "missing field \"label\"",
        ),
        (
            "text-number.jsonl",
            b"{\"text\": 3, \"label\": \"a\"}\n",
            "must be a string",
        ),
        (
            "text-null.jsonl",
            b"{\"text\": null, \"label\": \"a\"}\n",
            "must be a string",
        ),
        (
            "label-float.jsonl",
            b"{\"text\": \"x\", \"label\": 1.5}\n",
            "string or an integer",
        ),
        ("not-object.jsonl", b"[\"x\", \"a\"]\n", "JSON object"),
        (
            "empty-text.jsonl",
            b"{\"text\": \"\", \"label\": \"a\"}\n",
            "empty",
        ),
        (
            "blank-text.jsonl",
            b"{\"text\": \" \\n\\t \", \"label\": \"a\"}\n",
            "empty",
        ),
    ];
    for (name, bad_line, what) in cases {
        let mut body = good.as_bytes().to_vec();
        body.extend_from_slice(bad_line);
        let path = dir.write(name, &body);
        let message = read_err(&path);
        assert_names(&message, &path, Some(3));
        assert!(message.contains(what), "{name}: {message:?} lacks {what:?}");
    }
}

#[test]
fn invalid_utf8_names_file_and_line() {
    let dir = Scratch::new("utf8");
    let jsonl = dir.write(
        "bad.jsonl",
        b"{\"text\": \"ok\", \"label\": \"a\"}\n{\"text\": \"caf\xE9\", \"label\": \"a\"}\n",
    );
    let message = read_err(&jsonl);
    assert_names(&message, &jsonl, Some(2));
    assert!(message.contains("UTF-8"), "{message}");

    let jsonl_gz = dir.write_gz(
        "bad2.jsonl.gz",
        b"{\"text\": \"ok\", \"label\": \"a\"}\n{\"text\": \"caf\xE9\", \"label\": \"a\"}\n",
    );
    assert_names(&read_err(&jsonl_gz), &jsonl_gz, Some(2));

    let csv = dir.write("bad.csv", b"text,label\nok,a\nok,b\ncaf\xE9,a\n");
    let message = read_err(&csv);
    assert_names(&message, &csv, Some(4));
    assert!(message.contains("UTF-8"), "{message}");

    let tsv = dir.write("bad.tsv", b"text\tlabel\ncaf\xE9\ta\n");
    assert_names(&read_err(&tsv), &tsv, Some(2));

    dir.write("folder/train/a/1.txt", b"fine");
    let txt = dir.write("folder/train/b/2.txt", b"line one\nline two\ncaf\xE9\n");
    let message = read_err(&dir.dir().join("folder/train"));
    assert_names(&message, &txt, Some(3));
    assert!(message.contains("UTF-8"), "{message}");
}

#[test]
fn csv_errors_name_file_and_line() {
    let dir = Scratch::new("csv-errors");

    let missing = dir.write("missing-col.csv", b"id,body,label\n1,hello,a\n");
    let message = read_err(&missing);
    assert_names(&message, &missing, None);
    assert!(message.contains("\"text\""), "{message}");
    assert!(
        message.contains("id, body, label"),
        "header not listed: {message}"
    );

    let tsv_missing = dir.write("missing-col.tsv", b"text\tcategory\nhello\ta\n");
    let message = read_err(&tsv_missing);
    assert!(
        message.contains("\"label\"") && message.contains("text, category"),
        "{message}"
    );

    let ragged = dir.write("ragged.csv", b"text,label\nx,a\ny,b\nz,c,extra\n");
    let message = read_err(&ragged);
    assert_names(&message, &ragged, Some(4));
    assert!(
        message.contains("3 fields") && message.contains("header has 2"),
        "{message}"
    );

    let short = dir.write("short.tsv", b"text\tlabel\nx\ta\nlonely\n");
    assert_names(&read_err(&short), &short, Some(3));

    let empty_text = dir.write("empty-text.csv", b"text,label\nx,a\n\"  \",b\n");
    let message = read_err(&empty_text);
    assert_names(&message, &empty_text, Some(3));
    assert!(message.contains("empty"), "{message}");

    let empty_label = dir.write("empty-label.csv", b"text,label\nx,\n");
    let message = read_err(&empty_label);
    assert_names(&message, &empty_label, Some(2));
    assert!(message.contains("empty label"), "{message}");

    let no_header = dir.write("no-header.csv", b"");
    let message = read_err(&no_header);
    assert_names(&message, &no_header, None);
    assert!(message.contains("header"), "{message}");

    let header_only = dir.write("header-only.csv", b"text,label\n");
    let message = read_err(&header_only);
    assert!(message.contains("no examples"), "{message}");
}

#[test]
fn truncated_and_corrupt_gzip_name_the_file() {
    let dir = Scratch::new("gz-errors");
    let mut body = String::new();
    for i in 0..2000 {
        body.push_str(&format!(
            "{{\"text\": \"document number {i} with some words {}\", \"label\": \"l{}\"}}\n",
            i * 7919 % 1000,
            i % 3
        ));
    }
    let compressed = gzip(body.as_bytes());
    for (name, bytes) in [
        ("trunc.jsonl.gz", &compressed[..compressed.len() / 2]),
        ("trunc-tail.jsonl.gz", &compressed[..compressed.len() - 4]),
        (
            "trunc.csv.gz",
            &gzip(b"text,label\nsome text,a\nmore text,b\n")[..20],
        ),
        (
            "notgzip.jsonl.gz",
            b"{\"text\": \"x\", \"label\": \"a\"}\n".as_slice(),
        ),
    ] {
        let path = dir.write(name, bytes);
        let message = read_err(&path);
        assert_names(&message, &path, None);
        assert!(message.contains("gzip"), "{name}: {message}");
    }
}

#[test]
fn unknown_extension_and_missing_path() {
    let dir = Scratch::new("ext");
    let path = dir.write("train.txt", b"hello");
    let message = read_err(&path);
    assert_names(&message, &path, None);
    assert!(message.contains(".jsonl"), "{message}");
    let missing = dir.dir().join("nope.jsonl");
    assert_names(&read_err(&missing), &missing, None);
}

#[test]
fn empty_text_file_in_class_folder() {
    let dir = Scratch::new("folder-empty");
    let empty = dir.write("train/a/1.txt", b"  \n\n");
    let message = read_err(&dir.dir().join("train"));
    assert_names(&message, &empty, Some(1));
    assert!(message.contains("empty"), "{message}");
}

// ---------------------------------------------------------------- stratified split

fn synthetic(counts: &[(&str, usize)]) -> Vec<Example> {
    let mut examples = Vec::new();
    // interleave classes so that order preservation is visible
    let max = counts.iter().map(|c| c.1).max().unwrap_or(0);
    for i in 0..max {
        for &(label, n) in counts {
            if i < n {
                examples.push(Example {
                    text: format!("{label}-{i}"),
                    label: label.to_string(),
                    origin: format!("mem:{}", examples.len() + 1),
                });
            }
        }
    }
    examples
}

fn class_counts(examples: &[Example]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for e in examples {
        *counts.entry(e.label.clone()).or_insert(0) += 1;
    }
    counts
}

#[test]
fn stratified_split_proportions_and_class_coverage() {
    let examples = synthetic(&[
        ("big", 100),
        ("mid", 11),
        ("two", 2),
        ("one", 1),
        ("three", 3),
    ]);
    let (kept, held) = stratified_split(examples.clone(), 0.2, 42);
    let held_counts = class_counts(&held);
    // round(0.2 n), at least 1 when n >= 2, none from a singleton class
    assert_eq!(held_counts.get("big"), Some(&20));
    assert_eq!(held_counts.get("mid"), Some(&2));
    assert_eq!(held_counts.get("two"), Some(&1));
    assert_eq!(held_counts.get("three"), Some(&1));
    assert_eq!(held_counts.get("one"), None);
    // every class stays represented in the kept part
    let kept_counts = class_counts(&kept);
    assert_eq!(kept_counts.len(), 5);
    assert_eq!(kept_counts["big"], 80);
    assert_eq!(kept.len() + held.len(), examples.len());

    // the two parts partition the input and keep its order
    let position = |e: &Example| examples.iter().position(|x| x.text == e.text).unwrap();
    let kept_positions: Vec<usize> = kept.iter().map(position).collect();
    let held_positions: Vec<usize> = held.iter().map(position).collect();
    assert!(kept_positions.windows(2).all(|w| w[0] < w[1]));
    assert!(held_positions.windows(2).all(|w| w[0] < w[1]));
    let mut all: Vec<usize> = kept_positions
        .iter()
        .chain(&held_positions)
        .copied()
        .collect();
    all.sort();
    assert_eq!(all, (0..examples.len()).collect::<Vec<_>>());

    // large fractions still leave one example per class behind
    let (kept, held) = stratified_split(examples.clone(), 0.99, 1);
    assert_eq!(
        class_counts(&kept).values().copied().collect::<Vec<_>>(),
        vec![1, 1, 1, 1, 1]
    );
    assert_eq!(held.len(), examples.len() - 5);
    // fraction 0 moves nothing
    let (kept, held) = stratified_split(examples.clone(), 0.0, 1);
    assert_eq!((kept.len(), held.len()), (examples.len(), 0));
}

#[test]
fn stratified_split_is_deterministic_and_seed_dependent() {
    let examples = synthetic(&[("a", 50), ("b", 30), ("c", 7)]);
    let held_texts = |seed| {
        texts(&stratified_split(examples.clone(), 0.3, seed).1)
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(held_texts(7), held_texts(7));
    assert_ne!(held_texts(7), held_texts(8));

    // a class's picks do not depend on the other classes present
    let only_a: Vec<Example> = examples
        .iter()
        .filter(|e| e.label == "a")
        .cloned()
        .collect();
    let held_a_alone = texts(&stratified_split(only_a, 0.3, 7).1)
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>();
    let held_a_mixed: Vec<String> = held_texts(7)
        .into_iter()
        .filter(|t| t.starts_with("a-"))
        .collect();
    assert_eq!(held_a_alone, held_a_mixed);
}

// ---------------------------------------------------------------- helpers

#[test]
fn length_stats_mean_median_max() {
    assert_eq!(length_stats(&[]), (0.0, 0.0, 0));
    assert_eq!(length_stats(&[5]), (5.0, 5.0, 5));
    assert_eq!(length_stats(&[3, 1, 2]), (2.0, 2.0, 3));
    assert_eq!(length_stats(&[4, 1, 10, 2]), (4.25, 3.0, 10));
}

// ---------------------------------------------------------------- real data

#[test]
fn reads_bbc_news() {
    let dir = data_dir().join("bbc-news");
    assert!(
        dir.is_dir(),
        "BBC News not found at {} (set COREFOCUS_DATA)",
        dir.display()
    );
    let splits = load_dataset(&dir, &opts()).unwrap();
    let dev = splits.dev.as_ref().unwrap();
    let test = splits.test.as_ref().unwrap();
    assert_eq!(
        (splits.train.len(), dev.len(), test.len()),
        (1336, 444, 445)
    );
    assert_eq!(
        splits.labels,
        strings(&["business", "entertainment", "politics", "sport", "tech"])
    );

    // class counts from the dataset README
    let expected_train = [306, 232, 250, 307, 241];
    let counts = class_counts(&splits.train);
    for (label, &n) in splits.labels.iter().zip(&expected_train) {
        assert_eq!(counts[label], n, "{label}");
    }
    assert_eq!(class_counts(test)["politics"], 84);
    for (examples, what) in [(&splits.train, "train"), (dev, "dev"), (test, "test")] {
        let ids = label_ids(examples, &splits.labels, what).unwrap();
        assert!(ids.iter().all(|&i| i < 5));
    }

    // texts are whole articles, untrimmed: title line, blank line, body
    let first = &splits.train[0];
    assert!(
        first
            .text
            .starts_with("Yukos unit buyer faces loan claim\n\n"),
        "{:?}",
        &first.text[..60]
    );
    assert!(
        first.origin.ends_with("train.jsonl.gz:1"),
        "{}",
        first.origin
    );
    // word-count statistics as stated in the README (train: mean 387.8, median 334, max 4432)
    let words: Vec<usize> = splits
        .train
        .iter()
        .map(|e| e.text.split_whitespace().count())
        .collect();
    let (mean, median, max) = length_stats(&words);
    assert!((mean - 387.8).abs() < 0.05, "mean {mean}");
    assert_eq!((median, max), (334.0, 4432));
}

#[test]
fn reads_sst2_and_20newsgroups() {
    let data = data_dir();
    let sst2 = load_dataset(&data.join("sst2"), &opts()).unwrap();
    assert_eq!(
        (
            sst2.train.len(),
            sst2.dev.as_ref().map(Vec::len),
            sst2.test.as_ref().map(Vec::len)
        ),
        (6920, Some(872), Some(1821))
    );
    assert_eq!(sst2.labels, strings(&["negative", "positive"]));
    assert_eq!(class_counts(&sst2.train)["negative"], 3310);

    let news = load_dataset(&data.join("20newsgroups"), &opts()).unwrap();
    assert!(news.dev.is_none(), "20newsgroups has no dev split");
    assert_eq!(
        (news.train.len(), news.test.as_ref().map(Vec::len)),
        (11314, Some(7532))
    );
    assert_eq!(news.labels.len(), 20);
    assert_eq!(class_counts(&news.train)["talk.religion.misc"], 377);
    // texts are read exactly: the README lists files whose CR characters were kept
    assert!(news.train.iter().any(|e| e.text.contains('\r')));

    // carving the paper's 20% validation split out of train
    let (train, dev) = stratified_split(news.train.clone(), 0.2, 13);
    assert_eq!(
        dev.len(),
        class_counts(&news.train)
            .values()
            .map(|&n| (0.2 * n as f64).round() as usize)
            .sum::<usize>()
    );
    assert_eq!(train.len() + dev.len(), 11314);
    assert_eq!(class_counts(&dev).len(), 20);
}
