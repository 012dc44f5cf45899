//! The built-in default job end to end: the real demo (pretrained checkpoint, shipped SST-2
//! sample) and the offline one, on small settings so they run in seconds.

mod common;

use common::{test_model_dir, Scratch};
use std::path::Path;
use std::process::{Command, Output};

fn demo(out: &Path, extra: &[&str], env: &dyn Fn(&mut Command)) -> Output {
    let mut cmd = common::corefocus_command();
    cmd.args(["demo", "--out", out.to_str().unwrap(), "--epochs", "1"])
        .args(["--variants", "bert,pfc"])
        .args(extra);
    env(&mut cmd);
    cmd.output().expect("corefocus runs")
}

/// The table, the report (one row per variant, RSS within the demo's 1 GB) and the
/// explain page.
fn check_outputs(out: &Path, status: &Output) {
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        stdout.contains("| bert |") && stdout.contains("| pfc |"),
        "{stdout}"
    );
    assert!(stdout.contains("heap ratio"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("demo_report.json")).unwrap())
            .unwrap();
    let rows = report.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        let acc = r["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc));
        assert!(r["train_seconds"].as_f64().unwrap() > 0.0);
        // Issue 16 item 4 (failed before: no RSS was reported, only the counted heap):
        // the process's peak RSS next to the heap, and within the 1 GB the demo promises.
        let heap = r["peak_heap_bytes"].as_f64().unwrap();
        let rss = r["peak_rss_bytes"].as_f64().unwrap();
        assert!(heap > 0.0 && rss >= heap, "{r}");
        assert!(rss < 1e9, "peak RSS {rss} bytes: {r}");
    }
    assert!(stdout.contains("process peak RSS so far MiB"), "{stdout}");
    let page = std::fs::read_to_string(out.join("explain.html")).unwrap();
    assert!(page.contains("<html") && page.trim_end().ends_with("</html>"));
}

#[test]
fn demo_fine_tunes_the_pretrained_checkpoint_on_the_shipped_sample() {
    let scratch = Scratch::new("demo-real");
    let out = scratch.path("out");
    let model = test_model_dir();
    let status = demo(
        &out,
        &["--max-train-examples", "48", "--max-eval-examples", "24"],
        &|cmd| {
            cmd.env("COREFOCUS_TEST_MODEL", &model);
        },
    );
    check_outputs(&out, &status);
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(stderr.contains("fine-tuning all-MiniLM-L6-v2"), "{stderr}");
    // The shipped sample, written out with its licence note.
    assert!(out.join("data/train.jsonl.gz").is_file() && out.join("data/README.md").is_file());
    assert!(out.join("run-pfc/training_curves.svg").is_file());
}

#[test]
fn demo_offline_and_without_network() {
    let scratch = Scratch::new("demo-offline");
    let out = scratch.path("out");
    let offline = ["--train-docs", "48"];
    check_outputs(
        &out,
        &demo(&out, &[&offline[..], &["--offline"]].concat(), &|_| {}),
    );

    // No cached checkpoint and no network: one line says so, then the offline demo runs.
    let empty = scratch.path("empty-cache");
    std::fs::create_dir_all(&empty).unwrap();
    let out2 = scratch.path("out2");
    let cache = ["--model-cache", empty.to_str().unwrap()];
    let status = demo(&out2, &[&offline[..], &cache[..]].concat(), &|cmd| {
        cmd.env_remove("COREFOCUS_TEST_MODEL")
            .env("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
            .env("PIP_RETRIES", "0")
            .env("PIP_TIMEOUT", "2")
            .env("HF_HUB_OFFLINE", "1");
    });
    check_outputs(&out2, &status);
    let stderr = String::from_utf8_lossy(&status.stderr);
    let notes: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("running the offline demo"))
        .collect();
    assert_eq!(notes.len(), 1, "{stderr}");
    assert!(
        notes[0].contains("cannot fetch the pretrained checkpoint"),
        "{stderr}"
    );
}
