//! `--model ORG/NAME` through the real binary, without network: a model in a fake
//! Hugging Face cache trains offline; a model that is not cached fails fast with the
//! documented messages (docs/errors.md, H01-H03) when the hub is unreachable or
//! HF_HUB_OFFLINE is set; paths never go to the hub (M01).
//!
//! Every child process gets its own HF_HUB_CACHE / HF_ENDPOINT / HF_HUB_OFFLINE, so the
//! tests neither read the user's cache nor race on the environment.

use corefocus::data::tokenize::TextTokenizer;
use corefocus::model::checkpoint::write_safetensors;
use corefocus::model::{names, BertConfig, ParamStore};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

#[path = "support/doc_errors.rs"]
mod doc_errors;
use doc_errors::expect;

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("corefocus-hub-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const WORDS: &[&str] = &[
    "the", "film", "plot", "was", "good", "great", "fine", "nice", "bad", "awful", "poor", "dull",
];

/// A tiny HF-format BERT directory (word-level tokenizer, 2 layers, hidden 8).
fn tiny_model(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let words: Vec<String> = WORDS.iter().map(|w| w.to_string()).collect();
    TextTokenizer::word_level(&words, true)
        .unwrap()
        .save(dir)
        .unwrap();
    let mut cfg = BertConfig::sized(32, 8, 2, 2, 16);
    cfg.max_position_embeddings = 32;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&cfg).unwrap(),
    )
    .unwrap();
    let mut store = ParamStore::new();
    for (i, (name, shape)) in names::bert_tensors(&cfg).into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let data = (0..n)
            .map(|j| ((i * 31 + j * 7) % 17) as f32 / 40.0 - 0.2)
            .collect();
        store.add(&name, &shape, data);
    }
    write_safetensors(&dir.join("model.safetensors"), &store, None).unwrap();
}

/// A two-class toy dataset.
fn toy_data(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let pos = ["good", "great", "fine", "nice"];
    let neg = ["bad", "awful", "poor", "dull"];
    let mut rows = Vec::new();
    for i in 0..10 {
        for (words, label) in [(&pos, "pos"), (&neg, "neg")] {
            let text = format!("the film was {} {}", words[i % 4], words[(i + 1) % 4]);
            rows.push(serde_json::json!({"text": text, "label": label}).to_string());
        }
    }
    std::fs::write(dir.join("train.jsonl"), rows[..12].join("\n")).unwrap();
    std::fs::write(dir.join("dev.jsonl"), rows[12..16].join("\n")).unwrap();
    std::fs::write(dir.join("test.jsonl"), rows[16..].join("\n")).unwrap();
    std::fs::write(dir.join("labels.txt"), "neg\npos\n").unwrap();
}

const SHA: &str = "4f2e3c1d0b9a88776655443322110fedcba98765";

/// The hub cache layout `huggingface_hub` writes: the files as blobs, the snapshot as
/// symlinks to them, `refs/main` holding the commit.
fn cache_model(cache: &Path, repo: &str, files_from: &Path, skip: &[&str]) -> PathBuf {
    let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    let snapshot = repo_dir.join("snapshots").join(SHA);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo_dir.join("blobs")).unwrap();
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), SHA).unwrap();
    for entry in std::fs::read_dir(files_from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().to_string();
        if skip.contains(&name.as_str()) {
            continue;
        }
        let blob = repo_dir.join("blobs").join(format!("blob-{name}"));
        std::fs::copy(entry.path(), &blob).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/blob-{name}"), snapshot.join(&name))
            .unwrap();
    }
    snapshot
}

/// `corefocus train --model <spec>` with the hub environment `env`.
fn train(spec: &str, data: &Path, out: &Path, env: &[(&str, &Path)], offline: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corefocus"));
    cmd.args(["train", "--model", spec, "--data"])
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(["--epochs", "1", "--batch-size", "4", "--max-len", "16"])
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_HOME")
        .env_remove("HF_TOKEN")
        // Nothing listens on the discard port: a download attempt fails at once.
        .env("HF_ENDPOINT", "http://127.0.0.1:9");
    for proxy in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
    ] {
        cmd.env_remove(proxy);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    if offline {
        cmd.env("HF_HUB_OFFLINE", "1");
    }
    cmd.output().unwrap()
}

#[test]
fn a_cached_hub_model_trains_offline() {
    let root = scratch("cached");
    let model = root.join("tiny");
    tiny_model(&model);
    let data = root.join("data");
    toy_data(&data);
    let cache = root.join("hub");
    let snapshot = cache_model(&cache, "corefocus-test/tiny-bert", &model, &[]);

    let out = root.join("run");
    let result = train(
        "corefocus-test/tiny-bert",
        &data,
        &out,
        &[("HF_HUB_CACHE", &cache)],
        true,
    );
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "train failed:\n{stderr}");
    assert!(out.join("corefocus.json").is_file());
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("corefocus.json")).unwrap())
            .unwrap();
    // The run records the spec the user gave, not the cache path.
    assert_eq!(meta["train"]["model"], "corefocus-test/tiny-bert");

    // HF_HOME/hub is the cache when HF_HUB_CACHE is unset.
    assert!(
        stderr.contains(&format!("using {}", snapshot.display())),
        "the resolved snapshot is named:\n{stderr}"
    );
    let home = root.join("hf-home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::rename(&cache, home.join("hub")).unwrap();
    let result = train(
        "corefocus-test/tiny-bert",
        &data,
        &root.join("run2"),
        &[("HF_HOME", &home)],
        true,
    );
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        result.status.success(),
        "train via HF_HOME failed:\n{stderr}"
    );
    let result = train(
        "corefocus-test/tiny-bert@main",
        &data,
        &root.join("run3"),
        &[("HF_HOME", &home)],
        false,
    );
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        result.status.success(),
        "a complete cached snapshot needs no network:\n{stderr}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn uncached_hub_models_fail_fast_without_network() {
    let root = scratch("uncached");
    let data = root.join("data");
    toy_data(&data);
    let cache = root.join("empty-cache");
    std::fs::create_dir_all(&cache).unwrap();
    let env = [("HF_HUB_CACHE", cache.as_path())];

    // Unreachable hub (HF_ENDPOINT points at a closed port).
    let start = Instant::now();
    let result = train("bert-base-uncased", &data, &root.join("o1"), &env, false);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    expect(&result, "H01", &["'bert-base-uncased'", "127.0.0.1:9"]);

    // HF_HUB_OFFLINE: the network is never tried.
    let start = Instant::now();
    let result = train("org/name@v2", &data, &root.join("o2"), &env, true);
    assert!(start.elapsed() < Duration::from_secs(10));
    expect(&result, "H02", &["'org/name@v2'", cache.to_str().unwrap()]);

    // A cached snapshot without the weights, offline.
    let model = root.join("tiny");
    tiny_model(&model);
    let snapshot = cache_model(&cache, "org/partial", &model, &["model.safetensors"]);
    let result = train("org/partial", &data, &root.join("o3"), &env, true);
    expect(
        &result,
        "H03",
        &["'org/partial'", snapshot.to_str().unwrap()],
    );

    // Paths never reach the hub: the missing-directory message (M01), also online.
    for path in ["./missing/dir", "/no/such/model", "a/b/c"] {
        let result = train(path, &data, &root.join("o4"), &env, false);
        expect(&result, "M01", &[path]);
    }
    for out in ["o1", "o2", "o3", "o4"] {
        assert!(
            !root.join(out).exists(),
            "{out}: created although the model failed"
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}
