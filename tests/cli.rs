//! End-to-end test of the command line: train -> eval -> predict on a tiny synthetic
//! dataset with the test checkpoint (all-MiniLM-L6-v2).

mod common;

use common::{corefocus, corefocus_with_input, read_json, succeeded, test_model_dir, Scratch};
use std::path::Path;

/// A sentiment toy set: distinct positive and negative words, so one epoch can learn it.
fn toy_dataset(dir: &Path) {
    let pos = [
        "wonderful",
        "great",
        "excellent",
        "delightful",
        "superb",
        "lovely",
    ];
    let neg = ["awful", "terrible", "dreadful", "horrible", "boring", "bad"];
    let things = ["movie", "film", "story", "acting", "plot", "ending"];
    let mut rows = Vec::new();
    for (i, thing) in things.iter().enumerate() {
        for j in 0..3 {
            rows.push((
                format!(
                    "the {thing} was {} and {}",
                    pos[(i + j) % 6],
                    pos[(i + j + 1) % 6]
                ),
                "pos",
            ));
            rows.push((
                format!(
                    "the {thing} was {} and {}",
                    neg[(i + j) % 6],
                    neg[(i + j + 1) % 6]
                ),
                "neg",
            ));
        }
    }
    common::write_jsonl_gz(dir, "train", &rows[..24]);
    common::write_jsonl_gz(dir, "dev", &rows[24..30]);
    common::write_jsonl_gz(dir, "test", &rows[30..]);
    std::fs::write(dir.join("labels.txt"), "neg\npos\n").unwrap();
}

fn train_eval_predict(variant_args: &[&str], tag: &str) {
    let model = test_model_dir();
    let scratch = Scratch::new(tag);
    let root = scratch.dir();
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    toy_dataset(&data);
    let out = root.join("run");
    let (m, d, o) = (
        model.to_str().unwrap(),
        data.to_str().unwrap(),
        out.to_str().unwrap(),
    );

    let mut args = vec![
        "train",
        "--model",
        m,
        "--data",
        d,
        "--out",
        o,
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--max-len",
        "32",
        "--lr",
        "1e-4",
    ];
    args.extend_from_slice(variant_args);
    let trained = corefocus(&args);
    let stdout = succeeded(&trained, "train");
    assert!(
        stdout.contains("accuracy"),
        "train prints the test table: {stdout}"
    );
    // Issue 16: it ends by saying where the checkpoint and the reports are.
    let stderr = String::from_utf8_lossy(&trained.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("best checkpoint") && last.contains(o) && last.contains("test_report.json"),
        "{last}"
    );

    for f in [
        "model.safetensors",
        "config.json",
        "corefocus.json",
        "metrics.jsonl",
        "test_report.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing from the checkpoint");
    }
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["epoch"], i + 1);
        for key in [
            "train_loss",
            "val_loss",
            "val_accuracy",
            "val_macro_f1",
            "lr",
            "seconds",
            "tokens_per_s",
        ] {
            assert!(
                l[key].as_f64().is_some_and(f64::is_finite),
                "metrics line {i} lacks {key}"
            );
        }
    }
    let meta = read_json(&out.join("corefocus.json"));
    assert_eq!(meta["labels"], serde_json::json!(["neg", "pos"]));
    assert_eq!(meta["max_len"], 32);
    let best_loss = lines
        .iter()
        .map(|l| l["val_loss"].as_f64().unwrap())
        .fold(f64::INFINITY, f64::min);
    assert_eq!(meta["best_val_loss"].as_f64().unwrap(), best_loss);
    let test_report = read_json(&out.join("test_report.json"));

    // eval of the kept checkpoint reproduces the test report.
    let report = root.join("report.json");
    let args = [
        "eval",
        "--checkpoint",
        o,
        "--data",
        d,
        "--split",
        "test",
        "--out",
        report.to_str().unwrap(),
    ];
    let stdout = succeeded(&corefocus(&args), "eval");
    assert!(stdout.contains("accuracy"));
    let report = read_json(&report);
    assert_eq!(report["accuracy"], test_report["accuracy"]);
    assert_eq!(report["examples"], 6);
    assert!(
        (report["loss"].as_f64().unwrap() - test_report["loss"].as_f64().unwrap()).abs() < 1e-5
    );

    // predict: one JSON line per input line, in order, probabilities summing to 1 (a
    // blank line is an error: tests/errors.rs, I08).
    let input = "what a wonderful and superb film\nan awful, dreadful plot\n";
    let stdout = succeeded(
        &corefocus_with_input(&["predict", "--checkpoint", o], input.as_bytes()),
        "predict",
    );
    let preds: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(preds.len(), 2);
    for p in &preds {
        let label = p["label"].as_str().unwrap();
        assert!(label == "neg" || label == "pos");
        let probs = p["probabilities"].as_object().unwrap();
        let sum: f64 = probs.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-5);
        assert_eq!(
            probs[label].as_f64().unwrap(),
            probs
                .values()
                .map(|v| v.as_f64().unwrap())
                .fold(0.0, f64::max)
        );
    }

    // explain: a per-layer report on stdout and a self-contained, well-formed HTML page.
    let html = root.join("explain.html");
    let stdout = succeeded(
        &corefocus(&[
            "explain",
            "--checkpoint",
            o,
            "--text",
            "a superb <b>film</b> & a wonderful plot",
            "--html",
            html.to_str().unwrap(),
        ]),
        "explain",
    );
    assert!(stdout.contains("Layer 1"), "{stdout}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>") || page.starts_with("<!doctype html>"));
    assert!(page.trim_end().ends_with("</html>"));
    assert!(!page.contains("<b>film"), "token text must be escaped");
    assert!(page.contains("&lt;"), "escaped token expected");
    for tag in ["html", "body", "span", "table"] {
        let open = page.matches(&format!("<{tag}")).count();
        let close = page.matches(&format!("</{tag}>")).count();
        assert_eq!(open, close, "<{tag}> balanced");
    }
    assert!(
        page.contains("class=\"tok l"),
        "token spans coloured by layer"
    );

    // Refuses to train over an existing run without --overwrite; errors go to stderr.
    let args = ["train", "--model", m, "--data", d, "--out", o];
    let failed = corefocus(&args);
    assert_eq!(failed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.starts_with("error:") && stderr.contains("--overwrite"),
        "{stderr}"
    );
}

#[test]
fn bert_baseline_train_eval_predict() {
    train_eval_predict(&["--variant", "bert"], "bert");
}

#[test]
fn pfc_train_eval_predict() {
    train_eval_predict(
        &[
            "--variant",
            "pfc",
            "--keep-ratio",
            "0.8",
            "--combine-layer",
            "4",
        ],
        "pfc",
    );
}

#[test]
fn errors_name_the_problem_and_exit_1() {
    let root = Scratch::new("errors");
    let missing = root.path("nope");
    let out = corefocus_with_input(
        &["predict", "--checkpoint", missing.to_str().unwrap()],
        b"text\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error:") && stderr.contains("not a corefocus checkpoint"),
        "{stderr}"
    );

    // clap rejects an unknown variant (its own exit code 2) and names the choices.
    let out = corefocus(&[
        "train",
        "--model",
        "m",
        "--data",
        "d",
        "--out",
        "o",
        "--variant",
        "zzz",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bert, p, pf, c or pfc"));

    // A method flag that does not apply to the variant fails before anything is loaded
    // or created.
    let run = root.path("o");
    let args = [
        "train",
        "--model",
        "m",
        "--data",
        "d",
        "--out",
        run.to_str().unwrap(),
        "--keep-ratio",
        "0.5",
    ];
    let out = corefocus(&args);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: --keep-ratio applies only"),
        "{stderr}"
    );
    assert!(!run.exists());

    // An occupied --out is refused before the inputs are read.
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("notes.txt"), "keep me").unwrap();
    let out = corefocus(&[
        "train",
        "--model",
        "m",
        "--data",
        "d",
        "--out",
        run.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not empty") && stderr.contains("--overwrite"),
        "{stderr}"
    );
    let args = [
        "train",
        "--model",
        "m",
        "--data",
        "d",
        "--out",
        run.to_str().unwrap(),
        "--overwrite",
    ];
    let stderr = String::from_utf8_lossy(&corefocus(&args).stderr).to_string();
    assert!(stderr.contains("refusing to delete"), "{stderr}");
    assert!(run.join("notes.txt").exists());
}
