//! Every bad-input case of docs/errors.md, run through the real binary: each must exit
//! with status 1 (2 for clap's usage errors), print exactly one `error:` line that holds
//! the documented message and names the file / line / field, and never panic.
//!
//! The expected messages are read from docs/errors.md itself (the `Message` column, with
//! `<placeholders>` standing for paths and values), so the table cannot drift from the
//! binary; `every_documented_case_is_tested` checks that each row's ID occurs in the test
//! file the row names.

mod common;

use common::doc_errors::{expect, literal_pieces, table};
use common::{
    corefocus, corefocus_with_input, crate_root, gzip, read_json, strings, succeeded,
    test_model_dir, tiny_model, tiny_model_config, toy_data, toy_rows, train_args, write_config,
    Scratch,
};
use corefocus::model::checkpoint::write_safetensors;
use corefocus::model::{names, BertConfig, ParamStore};
use std::path::{Path, PathBuf};
use std::process::Output;

#[test]
fn every_documented_case_is_tested() {
    let rows = table();
    let mut ids = std::collections::HashSet::new();
    for row in &rows {
        assert!(ids.insert(row.id.clone()), "duplicate ID {}", row.id);
        let file = row
            .test
            .split('`')
            .nth(1)
            .and_then(|t| t.split("::").next())
            .unwrap_or_else(|| panic!("{}: test column {:?} names no file", row.id, row.test));
        let source = std::fs::read_to_string(crate_root().join(file))
            .unwrap_or_else(|e| panic!("{}: cannot read {file}: {e}", row.id));
        assert!(
            source.contains(&format!("\"{}\"", row.id)),
            "{}: not exercised in {file}",
            row.id
        );
        assert!(
            !literal_pieces(&row.message).is_empty(),
            "{}: empty message",
            row.id
        );
    }
}

// ---------------------------------------------------------------------------- fixtures

/// `train` on `data` with the tiny model (fails before training for every dataset case).
fn train_on(s: &Scratch, model: &Path, data: &Path, extra: &[&str]) -> Output {
    let options = ["--epochs", "1", "--batch-size", "4", "--max-len", "16"];
    corefocus(&train_args(model, data, &s.path("out"), &options, extra))
}

/// A dataset directory holding only `files`.
fn data_with(s: &Scratch, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let dir = s.path(name);
    std::fs::create_dir_all(&dir).unwrap();
    for (file, bytes) in files {
        s.write(&format!("{name}/{file}"), bytes);
    }
    dir
}

// ------------------------------------------------------------------------------ datasets

#[test]
fn dataset_errors() {
    let s = Scratch::new("data");
    let model = tiny_model(&s.path("model"));
    let good = toy_rows();
    let train = good[..12].join("\n");
    let run = |name: &str, files: &[(&str, &[u8])], extra: &[&str]| {
        let dir = data_with(&s, name, files);
        train_on(&s, &model, &dir, extra)
    };
    let with_line = |line: &str| format!("{}\n{line}\n", good[0]);

    let out = run(
        "d01",
        &[(
            "train.jsonl",
            with_line("{\"text\": \"a\", \"label\": x}").as_bytes(),
        )],
        &[],
    );
    expect(&out, "D01", &["train.jsonl:2", "column 24"]);
    // Issue 16 item 5: a line cut off mid-string said "at column 0" (failed before).
    let out = run(
        "d01b",
        &[(
            "train.jsonl",
            with_line("{\"text\": \"a film th").as_bytes(),
        )],
        &[],
    );
    expect(&out, "D01b", &["train.jsonl:2", "after 19 characters"]);
    let out = run(
        "d02",
        &[("train.jsonl", with_line("[1, 2]").as_bytes())],
        &[],
    );
    expect(&out, "D02", &["train.jsonl:2"]);
    let out = run(
        "d03",
        &[(
            "train.jsonl",
            with_line("{\"text\": \"the film\"}").as_bytes(),
        )],
        &[],
    );
    expect(&out, "D03", &["train.jsonl:2", "\"label\""]);
    let out = run(
        "d04",
        &[(
            "train.jsonl",
            with_line("{\"text\": 5, \"label\": \"pos\"}").as_bytes(),
        )],
        &[],
    );
    expect(&out, "D04", &["train.jsonl:2", "\"text\""]);
    let out = run(
        "d05",
        &[(
            "train.jsonl",
            with_line("{\"text\": \"a\", \"label\": [1]}").as_bytes(),
        )],
        &[],
    );
    expect(&out, "D05", &["train.jsonl:2", "\"label\""]);
    let out = run(
        "d06",
        &[(
            "train.jsonl",
            with_line("{\"text\": \"\", \"label\": \"pos\"}").as_bytes(),
        )],
        &[],
    );
    expect(&out, "D06", &["train.jsonl:2"]);
    let out = run(
        "d07",
        &[(
            "train.jsonl",
            with_line("{\"text\": \" \\t\\n \", \"label\": \"pos\"}").as_bytes(),
        )],
        &[],
    );
    expect(&out, "D06", &["train.jsonl:2"]);
    let out = run(
        "d08",
        &[(
            "train.jsonl",
            with_line("{\"text\": \"a\", \"label\": \"  \"}").as_bytes(),
        )],
        &[],
    );
    expect(&out, "D07", &["train.jsonl:2"]);
    let mut bad_utf8 = format!("{}\n", good[0]).into_bytes();
    bad_utf8.extend_from_slice(b"{\"text\": \"caf\xe9\", \"label\": \"pos\"}\n");
    let out = run("d09", &[("train.jsonl", &bad_utf8)], &[]);
    expect(&out, "D08", &["train.jsonl:2"]);
    let out = run(
        "d10",
        &[("train.jsonl", train.as_bytes())],
        &["--text-column", "body"],
    );
    expect(&out, "D03", &["train.jsonl:1", "\"body\""]);

    // CSV / TSV.
    let csv = "text,label\nthe film was good,pos\nthe film was bad,neg,extra\n";
    let out = run("d11", &[("train.csv", csv.as_bytes())], &[]);
    expect(&out, "D09", &["train.csv:3"]);
    let out = run("d12", &[("train.csv", b"body,label\nthe film,pos\n")], &[]);
    expect(&out, "D10", &["train.csv:1", "\"text\"", "body, label"]);
    let out = run(
        "d13",
        &[("train.csv", b"text,label\n\"the film\",pos\n\"  \",neg\n")],
        &[],
    );
    expect(&out, "D06", &["train.csv:3"]);
    let out = run(
        "d14",
        &[("train.csv", b"text,label\nthe film,pos\ncaf\xe9,neg\n")],
        &[],
    );
    expect(&out, "D11", &["train.csv:3"]);
    let out = run("d15", &[("train.csv", b"")], &[]);
    expect(&out, "D12", &["train.csv"]);
    let out = run("d16", &[("train.tsv", b"text\tlabel\nthe film\t\n")], &[]);
    expect(&out, "D07", &["train.tsv:2"]);

    // Compression, layout, splits.
    let gz = gzip(train.as_bytes());
    let out = run("d17", &[("train.jsonl.gz", &gz[..gz.len() / 2])], &[]);
    expect(&out, "D13", &["train.jsonl.gz"]);
    let mut garbage = gz.clone();
    garbage[12..20].copy_from_slice(b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8");
    let out = run("d18", &[("train.jsonl.gz", &garbage)], &[]);
    expect(&out, "D13", &["train.jsonl.gz"]);
    let out = run("d19", &[("training.jsonl", train.as_bytes())], &[]);
    expect(&out, "D14", &["train.jsonl, train.jsonl.gz"]);
    let out = run(
        "d20",
        &[
            ("train.jsonl", train.as_bytes()),
            ("train.csv", b"text,label\na,b\n"),
        ],
        &[],
    );
    expect(&out, "D15", &["train.jsonl", "train.csv"]);
    let missing = s.path("no-such-dir");
    let out = train_on(&s, &model, &missing, &[]);
    expect(&out, "D16", &[missing.to_str().unwrap()]);
    let out = run(
        "d21",
        &[("train.jsonl", train.as_bytes()), ("dev.jsonl", b"\n  \n")],
        &[],
    );
    expect(&out, "D17", &["dev.jsonl"]);
    let out = run("d22", &[("train.jsonl", b"\n")], &[]);
    expect(&out, "D17", &["train.jsonl"]);
    let out = run("d23", &[("train.txt", b"x")], &[]);
    expect(&out, "D14", &["d23"]);
    let out = run(
        "d24",
        &[
            ("train.jsonl", train.as_bytes()),
            (
                "test.jsonl",
                b"{\"text\": \"the plot\", \"label\": \"meh\"}\n",
            ),
        ],
        &[],
    );
    expect(&out, "D18", &["test.jsonl:1", "\"meh\"", "neg, pos"]);
    let out = run(
        "d25",
        &[
            ("train.jsonl", train.as_bytes()),
            ("labels.txt", b"neg\npos\nmeh\n"),
        ],
        &[],
    );
    expect(&out, "D19", &["labels.txt", "\"meh\"", "train.jsonl"]);
    let out = run(
        "d26",
        &[("train.jsonl", train.as_bytes()), ("labels.txt", b"neg\n")],
        &[],
    );
    expect(&out, "D20", &["train.jsonl:1", "\"pos\"", "labels.txt"]);
    let out = run(
        "d27",
        &[
            ("train.jsonl", train.as_bytes()),
            ("labels.txt", b"neg\npos\nneg\n"),
        ],
        &[],
    );
    expect(&out, "D21", &["labels.txt:3", "\"neg\""]);
    let int_rows =
        "{\"text\": \"the film\", \"label\": 0}\n{\"text\": \"the plot\", \"label\": 5}\n";
    let out = run(
        "d28",
        &[
            ("train.jsonl", int_rows.as_bytes()),
            ("labels.txt", b"neg\npos\n"),
        ],
        &[],
    );
    expect(&out, "D22", &["train.jsonl:2", "5"]);
    let one_class: Vec<String> = (0..6)
        .map(|i| serde_json::json!({"text": format!("the film {i}"), "label": "pos"}).to_string())
        .collect();
    let out = run(
        "d29",
        &[("train.jsonl", one_class.join("\n").as_bytes())],
        &[],
    );
    expect(&out, "D23", &["d29"]);
    // No dev split and one example per class: nothing can be held out for validation.
    let singletons = format!("{}\n{}\n", good[0], good[1]);
    let out = run("d30", &[("train.jsonl", singletons.as_bytes())], &[]);
    expect(&out, "D24", &["d30"]);
    let out = run(
        "d31",
        &[(
            "train.jsonl",
            b"\xef\xbb\xbf{\"text\": \"x\", \"label\": \"a\"}\n\xff\n",
        )],
        &[],
    );
    expect(&out, "D08", &["train.jsonl:2"]);
}

// ----------------------------------------------------------------- model checkpoints (HF)

/// A tensor as written to a safetensors file: name, dtype, shape, bytes.
type RawTensor = (String, safetensors::Dtype, Vec<usize>, Vec<u8>);

#[test]
fn model_checkpoint_errors() {
    let s = Scratch::new("model");
    let data = toy_data(&s.path("data"));
    let cfg = tiny_model_config();
    let fresh = |name: &str| tiny_model(&s.path(name));
    let train = |model: &Path, extra: &[&str]| train_on(&s, model, &data, extra);

    let missing = s.path("nope");
    expect(&train(&missing, &[]), "M01", &[missing.to_str().unwrap()]);
    let m = fresh("m02");
    std::fs::remove_file(m.join("config.json")).unwrap();
    expect(&train(&m, &[]), "M02", &["m02"]);
    let m = fresh("m03");
    std::fs::write(m.join("config.json"), "{\"hidden_size\": 8,").unwrap();
    expect(&train(&m, &[]), "M03", &["m03/config.json"]);
    let m = fresh("m04");
    let mut json = serde_json::to_value(&cfg).unwrap();
    json.as_object_mut().unwrap().remove("num_hidden_layers");
    std::fs::write(m.join("config.json"), json.to_string()).unwrap();
    expect(
        &train(&m, &[]),
        "M04",
        &["m04/config.json", "num_hidden_layers"],
    );
    let m = fresh("m05");
    write_config(
        &m,
        &BertConfig {
            num_attention_heads: 0,
            ..cfg.clone()
        },
    );
    expect(
        &train(&m, &[]),
        "M05",
        &["m05/config.json", "num_attention_heads"],
    );
    let m = fresh("m06");
    write_config(
        &m,
        &BertConfig {
            num_attention_heads: 3,
            ..cfg.clone()
        },
    );
    expect(&train(&m, &[]), "M06", &["m06/config.json"]);
    let m = fresh("m07");
    write_config(
        &m,
        &BertConfig {
            hidden_act: "relu".into(),
            ..cfg.clone()
        },
    );
    expect(&train(&m, &[]), "M07", &["m07/config.json"]);
    let m = fresh("m08");
    write_config(
        &m,
        &BertConfig {
            hidden_dropout_prob: 1.5,
            ..cfg.clone()
        },
    );
    expect(
        &train(&m, &[]),
        "M08",
        &["m08/config.json", "hidden_dropout_prob"],
    );
    let m = fresh("m09");
    write_config(
        &m,
        &BertConfig {
            vocab_size: 1 << 30,
            ..cfg.clone()
        },
    );
    expect(&train(&m, &[]), "M09", &["m09/config.json", "vocab_size"]);
    let m = fresh("m09b");
    write_config(
        &m,
        &BertConfig {
            initializer_range: f32::INFINITY,
            ..cfg.clone()
        },
    );
    let text = std::fs::read_to_string(m.join("config.json")).unwrap();
    assert!(
        text.contains("null"),
        "serde writes a non-finite float as null: {text}"
    );
    expect(
        &train(&m, &[]),
        "M03",
        &["m09b/config.json", "initializer_range"],
    );

    // Weights.
    let m = fresh("m10");
    std::fs::remove_file(m.join("model.safetensors")).unwrap();
    expect(&train(&m, &[]), "M10", &["m10"]);
    std::fs::write(m.join("pytorch_model.bin"), b"PK").unwrap();
    expect(&train(&m, &[]), "M11", &["m10"]);
    let m = fresh("m12");
    let bytes = std::fs::read(m.join("model.safetensors")).unwrap();
    std::fs::write(m.join("model.safetensors"), &bytes[..bytes.len() - 100]).unwrap();
    expect(&train(&m, &[]), "M12", &["m12/model.safetensors"]);
    std::fs::write(
        m.join("model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00garbage!garbage!",
    )
    .unwrap();
    expect(&train(&m, &[]), "M12", &["m12/model.safetensors"]);
    std::fs::write(m.join("model.safetensors"), b"").unwrap();
    expect(&train(&m, &[]), "M12", &["m12/model.safetensors"]);

    // Tensors: rewrite the file with one tensor dropped, reshaped, retyped or added.
    let rewrite = |name: &str, edit: &dyn Fn(&mut Vec<RawTensor>)| {
        let m = fresh(name);
        let mut tensors: Vec<RawTensor> = names::bert_tensors(&cfg)
            .into_iter()
            .map(|(n, shape)| {
                let count: usize = shape.iter().product();
                (n, safetensors::Dtype::F32, shape, vec![0u8; count * 4])
            })
            .collect();
        edit(&mut tensors);
        let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .map(|(n, d, s, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
                )
            })
            .collect();
        std::fs::write(
            m.join("model.safetensors"),
            safetensors::serialize(views, None).unwrap(),
        )
        .unwrap();
        m
    };
    let m = rewrite("m13", &|t| {
        t.retain(|(n, ..)| n != "encoder.layer.1.output.dense.weight")
    });
    expect(
        &train(&m, &[]),
        "M13",
        &["encoder.layer.1.output.dense.weight", "[8, 16]"],
    );
    let m = rewrite("m14", &|t| {
        let x = t
            .iter_mut()
            .find(|(n, ..)| n == "embeddings.LayerNorm.bias")
            .unwrap();
        x.2 = vec![4];
        x.3 = vec![0; 16];
    });
    expect(
        &train(&m, &[]),
        "M14",
        &["embeddings.LayerNorm.bias", "[4]", "[8]"],
    );
    let m = rewrite("m15", &|t| {
        let x = t
            .iter_mut()
            .find(|(n, ..)| n == "embeddings.LayerNorm.bias")
            .unwrap();
        x.1 = safetensors::Dtype::I32;
    });
    expect(
        &train(&m, &[]),
        "M15",
        &["embeddings.LayerNorm.bias", "I32"],
    );
    let m = rewrite("m16", &|t| {
        t.push((
            "encoder.layer.2.output.dense.bias".into(),
            safetensors::Dtype::F32,
            vec![8],
            vec![0; 32],
        ))
    });
    expect(
        &train(&m, &[]),
        "M16",
        &["encoder.layer.2.output.dense.bias"],
    );
    let m = rewrite("m17", &|t| {
        let x = t
            .iter()
            .find(|(n, ..)| n == "embeddings.LayerNorm.bias")
            .unwrap()
            .clone();
        t.push((format!("bert.{}", x.0), x.1, x.2, x.3));
    });
    expect(&train(&m, &[]), "M17", &["embeddings.LayerNorm.bias"]);

    // Tokenizer.
    let m = fresh("m18");
    std::fs::remove_file(m.join("tokenizer.json")).unwrap();
    expect(&train(&m, &[]), "M18", &["m18"]);
    let m = fresh("m19");
    std::fs::write(m.join("tokenizer.json"), "{\"version\": ").unwrap();
    expect(&train(&m, &[]), "M19", &["m19/tokenizer.json"]);
    let m = fresh("m20");
    let small = BertConfig {
        vocab_size: 8,
        ..cfg.clone()
    };
    write_config(&m, &small);
    let mut store = ParamStore::new();
    for (name, shape) in names::bert_tensors(&small) {
        let n: usize = shape.iter().product();
        store.add(&name, &shape, vec![0.0; n]);
    }
    write_safetensors(&m.join("model.safetensors"), &store, None).unwrap();
    expect(&train(&m, &[]), "M20", &["m20"]);
}

// ------------------------------------------------------------------- options and variants

#[test]
fn option_errors() {
    let s = Scratch::new("opts");
    let model = test_model_dir();
    let data = toy_data(&s.path("data"));
    let train = |extra: &[&str]| corefocus(&train_args(&model, &data, &s.path("out"), &[], extra));
    // Checked against config.json before the dataset is read or --out is created.
    expect(&train(&["--max-len", "600"]), "O01", &["config.json"]);
    expect(
        &train(&["--variant", "bert", "--keep-ratio", "0.5"]),
        "O02",
        &[],
    );
    expect(
        &train(&["--variant", "pf", "--combine-layer", "3"]),
        "O03",
        &[],
    );
    expect(
        &train(&["--variant", "c", "--combine-layer", "1"]),
        "O04",
        &[],
    );
    expect(
        &train(&["--variant", "pfc", "--combine-layer", "7"]),
        "O04",
        &["6-layer"],
    );
    expect(
        &train(&["--variant", "pfc", "--pooling", "cls"]),
        "O05",
        &[],
    );
    expect(&train(&["--variant", "p", "--keep-ratio", "0"]), "O06", &[]);
    expect(
        &train(&["--variant", "pf", "--keep-ratio", "1.5"]),
        "O06",
        &[],
    );
    expect(
        &train(&["--variant", "c", "--combine-tokens", "0"]),
        "O07",
        &[],
    );
    expect(
        &train(&["--variant", "c", "--combine-tokens", "100000"]),
        "O07b",
        &[],
    );
    expect(&train(&["--variant", "c", "--assign-eps", "0"]), "O08", &[]);
    expect(&train(&["--classifier-dropout", "1"]), "O09", &[]);
    expect(&train(&["--lr", "0"]), "O10", &[]);
    expect(&train(&["--lr-grid", "1e-4,0"]), "O10b", &[]);
    expect(&train(&["--new-lr-scale", "0"]), "O10c", &[]);
    expect(&train(&["--distill-weight", "2"]), "O10d", &[]);
    expect(&train(&["--epochs", "0"]), "O11", &[]);
    expect(&train(&["--batch-size", "0"]), "O12", &[]);
    expect(&train(&["--max-len", "1"]), "O13", &[]);
    expect(&train(&["--warmup", "1.5"]), "O14", &[]);
    expect(&train(&["--variant", "zzz"]), "O15", &[]);
    expect(&train(&["--resume", "--overwrite"]), "O16", &[]);
    expect(&train(&["--resume"]), "O17", &["resume/state.json"]);
    assert!(!s.path("out").exists(), "no option error may create --out");

    // Occupied --out.
    s.write("out/notes.txt", "keep me");
    expect(&train(&[]), "O18", &["out"]);
    expect(&train(&["--overwrite"]), "O19", &["out"]);
    assert!(s.path("out/notes.txt").exists());
    // Issue 16: a metrics.jsonl proves nothing; without the run marker nothing is deleted.
    s.write("out/metrics.jsonl", "{}\n");
    s.write("out/thesis.tex", "years of work");
    expect(&train(&["--overwrite"]), "O19", &["out", ".corefocus-run"]);
    assert!(s.path("out/thesis.tex").exists() && s.path("out/metrics.jsonl").exists());
}

// ------------------------------------------------------ corefocus checkpoints, eval, predict

#[test]
fn checkpoint_and_inference_errors() {
    let s = Scratch::new("ckpt");
    let model = tiny_model(&s.path("model"));
    let data = toy_data(&s.path("data"));
    succeeded(&train_on(&s, &model, &data, &[]), "train");
    let good = s.path("out");
    // Distillation: a teacher of these labels trains a student; one of others is refused.
    let teacher = good.to_string_lossy().to_string();
    let student = |data: &Path, out: &str| {
        let options = ["--epochs", "1", "--batch-size", "4", "--max-len", "16"];
        let extra = ["--distill-from", teacher.as_str()];
        corefocus(&train_args(&model, data, &s.path(out), &options, &extra))
    };
    succeeded(&student(&data, "student"), "train --distill-from");
    let other = toy_data(&s.path("teacher-labels"));
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(good.join("corefocus.json")).unwrap())
            .unwrap();
    let mut reversed: Vec<String> = meta["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    reversed.reverse();
    std::fs::write(other.join("labels.txt"), reversed.join("\n") + "\n").unwrap();
    expect(
        &student(&other, "student2"),
        "O10e",
        &[&format!("this dataset's ({})", reversed.join(", "))],
    );
    let copy = |name: &str| {
        let dir = s.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(&good).unwrap() {
            let e = e.unwrap();
            if e.path().is_file() {
                std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
            }
        }
        dir
    };
    let predict = |ckpt: &Path, input: &[u8]| {
        corefocus_with_input(
            &strings(&["predict", "--checkpoint", ckpt.to_str().unwrap()]),
            input,
        )
    };
    let eval = |ckpt: &Path, extra: &[&str]| {
        let mut a = strings(&[
            "eval",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ]);
        a.extend(strings(extra));
        corefocus(&a)
    };
    let edit_meta = |dir: &Path, edit: &dyn Fn(&mut serde_json::Value)| {
        let path = dir.join("corefocus.json");
        let mut meta = read_json(&path);
        edit(&mut meta);
        std::fs::write(&path, meta.to_string()).unwrap();
    };

    expect(&predict(&s.path("nope"), b"x\n"), "C01", &["nope"]);
    let c = copy("c02");
    std::fs::write(c.join("corefocus.json"), "{\"format_version\": 1").unwrap();
    expect(&predict(&c, b"x\n"), "C02", &["c02/corefocus.json"]);
    let c = copy("c03");
    edit_meta(&c, &|m| m["max_len"] = 600.into());
    expect(&predict(&c, b"x\n"), "C03", &["c03/corefocus.json", "600"]);
    let c = copy("c04");
    edit_meta(&c, &|m| {
        m["method"]["variant"] = "c".into();
        m["method"]["combine_layer"] = 1.into();
    });
    expect(
        &predict(&c, b"x\n"),
        "C04",
        &["c04/corefocus.json", "--combine-layer 1"],
    );
    let c = copy("c05");
    edit_meta(&c, &|m| {
        m["labels"] = serde_json::json!(["neg", "pos", "meh"])
    });
    expect(
        &predict(&c, b"x\n"),
        "C05",
        &["c05/model.safetensors", "classifier.weight"],
    );
    let c = copy("c06");
    edit_meta(&c, &|m| m["format_version"] = 99.into());
    expect(&predict(&c, b"x\n"), "C06", &["c06/corefocus.json"]);
    let c = copy("c07");
    let bytes = std::fs::read(c.join("model.safetensors")).unwrap();
    std::fs::write(c.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    expect(&predict(&c, b"x\n"), "M12", &["c07/model.safetensors"]);
    // A checkpoint whose weights have a tensor the model does not use.
    let c = copy("c08");
    let mut store =
        corefocus::model::checkpoint::read_safetensors(&c.join("model.safetensors"), false)
            .unwrap();
    store.add("encoder.layer.5.output.dense.bias", &[8], vec![0.0; 8]);
    write_safetensors(&c.join("model.safetensors"), &store, None).unwrap();
    expect(
        &predict(&c, b"x\n"),
        "C07",
        &["c08/model.safetensors", "encoder.layer.5.output.dense.bias"],
    );
    let c = copy("c09");
    std::fs::remove_file(c.join("config.json")).unwrap();
    expect(&predict(&c, b"x\n"), "C08", &["c09/config.json"]);
    // Issue 16: 4 KB of 0xFF (NaN) written into the weights' data, header intact.
    let c = copy("c10");
    let mut bytes = std::fs::read(c.join("model.safetensors")).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let start = 8 + header + 64;
    let end = (start + 4096).min(bytes.len());
    bytes[start..end].fill(0xFF);
    std::fs::write(c.join("model.safetensors"), &bytes).unwrap();
    expect(
        &predict(&c, b"x\n"),
        "C09",
        &["c10/model.safetensors", "tensor "],
    );
    expect(&eval(&c, &[]), "C09", &["c10/model.safetensors"]);
    // Finite but overflowing weights: no label is printed from NaN probabilities.
    let c = copy("c11");
    let mut store =
        corefocus::model::checkpoint::read_safetensors(&c.join("model.safetensors"), false)
            .unwrap();
    // (Embeddings scaled by f32::MAX overflow to infinities, and attention makes NaNs.)
    let id = store.id("embeddings.LayerNorm.weight").unwrap();
    store.data_mut(id).fill(f32::MAX);
    write_safetensors(&c.join("model.safetensors"), &store, None).unwrap();
    let out = predict(&c, b"the film\nthe plot\n");
    expect(&out, "I09", &["standard input, line 1"]);
    assert!(out.stdout.is_empty(), "no prediction printed");

    // eval / predict inputs.
    expect(
        &predict(&good, b"the film\nthe \xff plot\n"),
        "I01",
        &["standard input, line 2"],
    );
    let input = s.write("in.txt", b"ok\n\xc3\x28\n");
    let out = corefocus(&strings(&[
        "predict",
        "--checkpoint",
        good.to_str().unwrap(),
        input.to_str().unwrap(),
    ]));
    expect(&out, "I01", &["in.txt, line 2"]);
    // Issue 16 item 7 (failed before: a blank line got a confident label): refused,
    // naming the line, as `explain` (I07) and `serve` refuse a blank text.
    expect(
        &predict(
            &good,
            b"the film

the plot
",
        ),
        "I08",
        &["standard input, line 2"],
    );
    let blank = s.write("blank.txt", b" \t\r\n");
    let out = corefocus(&strings(&[
        "predict",
        "--checkpoint",
        good.to_str().unwrap(),
        blank.to_str().unwrap(),
    ]));
    expect(&out, "I08", &["blank.txt, line 1"]);
    let out = corefocus(&strings(&[
        "predict",
        "--checkpoint",
        good.to_str().unwrap(),
        &s.arg("missing.txt"),
    ]));
    expect(&out, "I02", &["missing.txt"]);
    // --precision bf16 / int8 where there is no such arithmetic (COREFOCUS_BF16=off,
    // COREFOCUS_INT8=off pretend so) is refused before anything loads; where there is, eval
    // takes the flag (the tiny model's layers are too narrow to be packed, so its accuracy
    // equals f32's: the arithmetic is checked by tests/golden.rs and the kernels' own tests).
    for (precision, switch, id) in [
        ("bf16", "COREFOCUS_BF16", "I10"),
        ("int8", "COREFOCUS_INT8", "I12"),
    ] {
        let refused = common::corefocus_command()
            .env(switch, "off")
            .args(strings(&[
                "predict",
                "--checkpoint",
                good.to_str().unwrap(),
                "--precision",
                precision,
            ]))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        expect(&refused, id, &[]);
        if precision == "bf16" {
            // Training at bf16 likewise, before anything loads or is written.
            let out_dir = s.path("train-bf16");
            let refused = common::corefocus_command()
                .env(switch, "off")
                .args(common::train_args(
                    &model,
                    &data,
                    &out_dir,
                    &["--precision", "bf16"],
                    &[],
                ))
                .output()
                .unwrap();
            expect(&refused, id, &[]);
            assert!(
                !out_dir.exists(),
                "a refused run wrote {}",
                out_dir.display()
            );
            // A grid at bf16 too, before any cell starts.
            let root = s.path("grid-bf16");
            let refused = common::corefocus_command()
                .env(switch, "off")
                .args(strings(&[
                    "experiment",
                    "recipe",
                    "--model",
                    model.to_str().unwrap(),
                    "--data-root",
                    data.parent().unwrap().to_str().unwrap(),
                    "--datasets",
                    data.file_name().unwrap().to_str().unwrap(),
                    "--root",
                    root.to_str().unwrap(),
                    "--variants",
                    "bert",
                    "--seeds",
                    "1",
                    "--epochs",
                    "1",
                    "--precision",
                    "bf16",
                ]))
                .output()
                .unwrap();
            expect(&refused, id, &[]);
            assert!(!root.exists(), "a refused grid wrote {}", root.display());
        }
        let out = eval(&good, &["--precision", precision]);
        if out.status.success() {
            let f32_report = succeeded(&eval(&good, &[]), "eval f32");
            let accuracy = |report: &str| {
                report
                    .lines()
                    .find(|l| l.trim_start().starts_with("accuracy"))
                    .map(|l| l.to_string())
            };
            assert_eq!(
                accuracy(&String::from_utf8_lossy(&out.stdout)),
                accuracy(&f32_report),
                "{precision} and f32 accuracy on the toy test split"
            );
        } else {
            expect(&out, id, &[]);
        }
    }
    let bench_int8 = corefocus(&strings(&[
        "bench",
        "--config",
        model.to_str().unwrap(),
        "--batch",
        "1",
        "--seq",
        "16",
        "--variant",
        "bert",
        "--reps",
        "1",
        "--precision",
        "int8",
    ]));
    let int8 = corefocus::kernels::matmul::Precision::Int8
        .check_available()
        .is_ok();
    expect(&bench_int8, if int8 { "I11" } else { "I12" }, &[]);
    expect(
        &eval(&good, &["--split", "validation"]),
        "I03",
        &["\"validation\""],
    );
    let no_test = data_with(
        &s,
        "no-test",
        &[(
            "train.jsonl",
            std::fs::read(data.join("train.jsonl")).unwrap().as_slice(),
        )],
    );
    let out = corefocus(&strings(&[
        "eval",
        "--checkpoint",
        good.to_str().unwrap(),
        "--data",
        no_test.to_str().unwrap(),
    ]));
    expect(&out, "I04", &["no-test"]);
    // `--split dev` without a dev split evaluates the part training held out, and says so.
    let out = corefocus(&strings(&[
        "eval",
        "--checkpoint",
        good.to_str().unwrap(),
        "--data",
        no_test.to_str().unwrap(),
        "--split",
        "dev",
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success()
            && stderr.contains("has no dev split")
            && stderr.contains("stratified 20% of the training split"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("held out of the training split"),
        "{stdout}"
    );
    // A held-out example with an unknown label names train.jsonl and says it is held out.
    let rows: String = (0..10)
        .map(|i| format!("{{\"text\": \"the film {i}\", \"label\": \"meh\"}}\n"))
        .collect();
    let odd = data_with(&s, "odd-labels", &[("train.jsonl", rows.as_bytes())]);
    let out = corefocus(&strings(&[
        "eval",
        "--checkpoint",
        good.to_str().unwrap(),
        "--data",
        odd.to_str().unwrap(),
        "--split",
        "dev",
    ]));
    expect(
        &out,
        "D18",
        &[
            "train.jsonl:",
            "unknown dev (held out of the training split) label \"meh\"",
        ],
    );
    let other = data_with(
        &s,
        "other-labels",
        &[
            ("train.jsonl", b"{\"text\": \"the film\", \"label\": \"a\"}\n{\"text\": \"the plot\", \"label\": \"b\"}\n"),
            ("test.jsonl", b"{\"text\": \"the film\", \"label\": \"a\"}\n"),
        ],
    );
    let out = corefocus(&strings(&[
        "eval",
        "--checkpoint",
        good.to_str().unwrap(),
        "--data",
        other.to_str().unwrap(),
    ]));
    expect(&out, "D18", &["test.jsonl:1", "\"a\"", "neg, pos"]);
    expect(&eval(&good, &["--eval-batch", "0"]), "I05", &[]);
    let blocked = s.write("blocked", "a file, not a directory");
    let report = blocked.join("report.json");
    expect(
        &eval(&good, &["--out", report.to_str().unwrap()]),
        "I06",
        &["blocked"],
    );
    let out = corefocus(&strings(&[
        "explain",
        "--checkpoint",
        good.to_str().unwrap(),
        "--text",
        "  \n ",
    ]));
    expect(&out, "I07", &[]);

    // Not an error: `bench` on a model whose vocabulary is smaller than the synthetic
    // token ids it draws (they used to index the embeddings out of range).
    let out = corefocus(&strings(&[
        "bench",
        "--config",
        model.to_str().unwrap(),
        "--batch",
        "2",
        "--seq",
        "16",
        "--reps",
        "1",
        "--warmup",
        "0",
        "--variant",
        "bert,pfc",
    ]));
    succeeded(&out, "bench");
}
