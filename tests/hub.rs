//! `--model ORG/NAME` through the real binary, without network: a model in a fake
//! Hugging Face cache trains offline; a model that is not cached fails fast with the
//! documented messages (docs/errors.md, H01-H03) when the hub is unreachable or
//! HF_HUB_OFFLINE is set; paths never go to the hub (M01).
//!
//! Every child process gets its own HF_HUB_CACHE / HF_ENDPOINT / HF_HUB_OFFLINE, so the
//! tests neither read the user's cache nor race on the environment.

mod common;

use common::doc_errors::expect;
use common::{read_json, tiny_model, toy_data, Scratch};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

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
    let mut cmd = common::corefocus_command();
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
    let scratch = Scratch::new("cached");
    let root = scratch.dir();
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
    let meta = read_json(&out.join("corefocus.json"));
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
}

#[test]
fn uncached_hub_models_fail_fast_without_network() {
    let scratch = Scratch::new("uncached");
    let root = scratch.dir();
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
}
