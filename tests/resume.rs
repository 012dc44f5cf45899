//! `train --resume`: an interrupted run (stopped by the test-only `--stop-after-steps`, or
//! killed with SIGKILL) continues from `<out>/resume/` to bit-identical final weights,
//! metrics and test report; and a NaN loss stops training keeping the last good
//! checkpoint. Uses the test checkpoint with `--max-len 16` and 12 training examples.

mod common;

use common::doc_errors::expect;
use common::{corefocus, read_json, succeeded, Scratch};
use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};

/// 12 training, 4 dev and 4 test examples of a two-class toy task.
fn toy_data(dir: &Path) {
    let rows = common::toy_rows_with(
        ["wonderful", "great", "excellent", "lovely"],
        ["awful", "terrible", "boring", "bad"],
        " and ",
    );
    common::write_toy_splits(dir, &rows);
}

/// `train` arguments shared by every run of one comparison (3 steps per epoch).
fn train_args(data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let options = [
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--max-len",
        "16",
        "--lr",
        "1e-4",
        "--variant",
        "pf",
        "--keep-ratio",
        "0.7",
        "--seed",
        "11",
    ];
    let model = common::test_model_dir();
    common::train_args(&model, data, out, &options, extra)
}

fn stopped(out: &Output, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(3),
        "{what}: expected the --stop-after-steps status 3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn state(out: &Path) -> serde_json::Value {
    read_json(&out.join("resume/state.json"))
}

/// metrics.jsonl without its timing fields.
fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("seconds");
            o.remove("tokens_per_s");
            v
        })
        .collect()
}

fn test_report(out: &Path) -> (serde_json::Value, serde_json::Value) {
    let v = read_json(&out.join("test_report.json"));
    (v["loss"].clone(), v["report"].clone())
}

fn assert_same_run(a: &Path, b: &Path, what: &str) {
    // Bit-identical tensors (the header's metadata map may be serialised in any order).
    let wa = std::fs::read(a.join("model.safetensors")).unwrap();
    let wb = std::fs::read(b.join("model.safetensors")).unwrap();
    let (ta, tb) = (
        safetensors::SafeTensors::deserialize(&wa).unwrap(),
        safetensors::SafeTensors::deserialize(&wb).unwrap(),
    );
    let mut names = ta.names();
    names.sort();
    let mut names_b = tb.names();
    names_b.sort();
    assert_eq!(names, names_b, "{what}: tensor names");
    for name in names {
        let (x, y) = (ta.tensor(name).unwrap(), tb.tensor(name).unwrap());
        assert_eq!(x.shape(), y.shape(), "{what}: {name}");
        assert!(x.data() == y.data(), "{what}: tensor {name} differs");
    }
    assert_eq!(metrics(a), metrics(b), "{what}: metrics.jsonl");
    assert_eq!(test_report(a), test_report(b), "{what}: test_report.json");
    assert!(
        !b.join("resume").exists(),
        "{what}: a finished run keeps no resume state"
    );
}

/// Runs corefocus with `args` and kills it (SIGKILL) as soon as `file` exists.
fn kill_once_written(args: &[String], file: &Path) {
    let mut child = common::corefocus_command()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !file.is_file() {
        assert!(
            start.elapsed().as_secs() < 120,
            "no {} within 120 s",
            file.display()
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before it could be killed");
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn interrupted_runs_resume_to_identical_weights() {
    let s = Scratch::new("same");
    let data = s.path("data");
    toy_data(&data);

    // Uninterrupted.
    let full = s.path("full");
    succeeded(&corefocus(&train_args(&data, &full, &[])), "full run");
    assert!(!full.join("resume").exists());
    assert_eq!(metrics(&full).len(), 2);

    // Stopped at the end of epoch 1 (step 3, before its validation), again mid-epoch 2
    // (step 5, saving every 2 steps on the way), then finished.
    let parts = s.path("parts");
    stopped(
        &corefocus(&train_args(&data, &parts, &["--stop-after-steps", "3"])),
        "first part",
    );
    let pos = state(&parts)["loop_position"].clone();
    assert_eq!(
        (
            pos["step"].as_u64(),
            pos["epoch"].as_u64(),
            pos["position"].as_u64()
        ),
        (Some(3), Some(0), Some(12))
    );
    assert!(
        !parts.join("metrics.jsonl").exists(),
        "no epoch validated yet"
    );
    for f in ["model.safetensors", "optimizer.safetensors", "state.json"] {
        assert!(parts.join("resume").join(f).is_file(), "resume/{f}");
    }
    // Issue 16: a crash between the two renames of a resume-state save leaves no
    // resume/, the new state complete in .resume.tmp-<pid> and the previous one in
    // .resume.old-<pid>; --resume restores the new one and continues from it.
    std::fs::rename(parts.join("resume"), parts.join(".resume.tmp-9")).unwrap();
    std::fs::create_dir_all(parts.join(".resume.old-9")).unwrap();
    std::fs::write(parts.join(".resume.old-9/model.safetensors"), "previous").unwrap();
    stopped(
        &corefocus(&train_args(
            &data,
            &parts,
            &["--resume", "--save-every", "2", "--stop-after-steps", "5"],
        )),
        "second part",
    );
    let pos = state(&parts)["loop_position"].clone();
    assert_eq!(
        (
            pos["step"].as_u64(),
            pos["epoch"].as_u64(),
            pos["position"].as_u64()
        ),
        (Some(5), Some(1), Some(8))
    );
    assert_eq!(metrics(&parts).len(), 1, "epoch 1 is logged");
    // A save killed while writing (kill -9) leaves a temporary the next run removes: it
    // must not end up in the final checkpoint directory.
    std::fs::create_dir_all(parts.join(".resume.tmp-424242")).unwrap();
    std::fs::write(parts.join(".resume.tmp-424242/model.safetensors"), "half").unwrap();
    assert!(
        parts.join("corefocus.json").is_file(),
        "epoch 1's checkpoint is kept"
    );
    succeeded(
        &corefocus(&train_args(&data, &parts, &["--resume"])),
        "last part",
    );
    assert_same_run(&full, &parts, "stopped twice");
    let leftovers: Vec<String> = std::fs::read_dir(&parts)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(".resume"))
        .collect();
    assert!(leftovers.is_empty(), "temporaries left: {leftovers:?}");

    // Killed (SIGKILL) once a resume state exists, wherever it then is.
    let killed = s.path("killed");
    kill_once_written(
        &train_args(&data, &killed, &["--save-every", "2"]),
        &killed.join("resume/state.json"),
    );
    let step = state(&killed)["loop_position"]["step"].as_u64().unwrap();
    assert!((2..6).contains(&step), "killed at step {step}");
    succeeded(
        &corefocus(&train_args(&data, &killed, &["--resume"])),
        "resume after kill",
    );
    assert_same_run(&full, &killed, "killed");

    // A finished run has nothing to resume.
    let out = corefocus(&train_args(&data, &full, &["--resume"]));
    expect(&out, "O17", &["resume/state.json"]);
}

#[test]
fn resume_refuses_changed_options_and_data() {
    let s = Scratch::new("refuse");
    let data = s.path("data");
    toy_data(&data);
    let out = s.path("out");
    stopped(
        &corefocus(&train_args(&data, &out, &["--stop-after-steps", "1"])),
        "stop",
    );

    let mut changed = train_args(&data, &out, &["--resume"]);
    let lr = changed.iter().position(|a| a == "--lr").unwrap();
    changed[lr + 1] = "3e-4".into();
    expect(&corefocus(&changed), "R01", &["--lr 0.0003", "0.0001"]);

    let mut rows = std::fs::read_to_string(data.join("train.jsonl")).unwrap();
    rows.push_str("\n{\"text\": \"the film was fine\", \"label\": \"pos\"}");
    let other = s.path("other-data");
    toy_data(&other);
    std::fs::write(other.join("train.jsonl"), rows).unwrap();
    // Same --data path, different contents.
    let backup = s.path("data-backup");
    std::fs::rename(&data, &backup).unwrap();
    std::fs::rename(&other, &data).unwrap();
    expect(
        &corefocus(&train_args(&data, &out, &["--resume"])),
        "R02",
        &[],
    );
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::rename(&backup, &data).unwrap();

    let weights = out.join("resume/model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 3]).unwrap();
    expect(
        &corefocus(&train_args(&data, &out, &["--resume"])),
        "R03",
        &["resume/model.safetensors"],
    );
    assert!(
        out.join("resume/state.json").is_file(),
        "a refused resume changes nothing"
    );

    // A run stopped before its first epoch ended holds only the resume state; it still
    // counts as corefocus output that --overwrite may replace.
    assert!(!out.join("metrics.jsonl").exists() && !out.join("corefocus.json").exists());
    stopped(
        &corefocus(&train_args(
            &data,
            &out,
            &["--overwrite", "--stop-after-steps", "1"],
        )),
        "overwrite of a resume-only directory",
    );
}

#[test]
fn nan_loss_stops_and_keeps_the_last_good_checkpoint() {
    let s = Scratch::new("nan");
    let data = s.path("data");
    toy_data(&data);
    let out = s.path("out");
    // Step 4 is the first step of epoch 2.
    let failed = corefocus(&train_args(&data, &out, &["--inject-nan-at-step", "4"]));
    expect(&failed, "R04", &[out.to_str().unwrap(), "step 4 of 6"]);

    let meta = read_json(&out.join("corefocus.json"));
    assert_eq!(meta["best_epoch"], 1);
    assert_eq!(metrics(&out).len(), 1);
    assert!(!out.join("test_report.json").exists());
    let st = state(&out);
    assert_eq!(
        st["loop_position"]["epoch"], 1,
        "the epoch-1 resume state stays"
    );
    // The kept checkpoint is whole: it evaluates.
    let model_eval = corefocus(&[
        "eval".to_string(),
        "--checkpoint".to_string(),
        out.to_str().unwrap().to_string(),
        "--data".to_string(),
        data.to_str().unwrap().to_string(),
    ]);
    succeeded(&model_eval, "eval of the kept checkpoint");
    // Without the injection the run resumes and finishes.
    succeeded(
        &corefocus(&train_args(&data, &out, &["--resume"])),
        "resume after NaN",
    );
    assert_eq!(metrics(&out).len(), 2);
    let _ = std::io::stdout().flush();
}

/// `train_args` with `--lr auto` over three rates (each trial: 3 steps on the toy data).
fn auto_lr_args(data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = train_args(data, out, extra);
    let lr = args.iter().position(|a| a == "--lr").unwrap();
    args[lr + 1] = "auto".into();
    args.extend(["--lr-grid".to_string(), "2e-5,1e-4,3e-4".to_string()]);
    args
}

/// `lr_search.json` without its timing fields and the options (whose `--out` differs).
fn lr_search(out: &Path) -> serde_json::Value {
    let mut v = read_json(&out.join("lr_search.json"));
    v.as_object_mut().unwrap().remove("options");
    for t in v["trials"].as_array_mut().unwrap() {
        t.as_object_mut().unwrap().remove("seconds");
    }
    v
}

fn options_of(args: &[String]) -> corefocus::train::TrainOptions {
    corefocus::train::TrainCommand::parse_flags(args[1..].iter().map(String::as_str))
        .expect("the test's train flags parse")
}

/// A run stopped (or killed) inside its `--lr auto` search, before any resume state exists,
/// continues with `--resume` from the trials it finished, to the same final run; the
/// experiment runner sees it as resumable.
#[test]
fn interrupted_lr_search_resumes_from_its_finished_trials() {
    let s = Scratch::new("lr-search");
    let data = s.path("data");
    toy_data(&data);
    let full = s.path("full");
    succeeded(&corefocus(&auto_lr_args(&data, &full, &[])), "full run");
    let chosen = lr_search(&full)["chosen"].as_f64().unwrap();
    assert_eq!(lr_search(&full)["trials"].as_array().unwrap().len(), 3);

    let parts = s.path("parts");
    stopped(
        &corefocus(&auto_lr_args(&data, &parts, &["--stop-after-trials", "1"])),
        "stopped after one trial",
    );
    let partial = lr_search(&parts);
    assert!(partial["chosen"].is_null(), "unfinished: {partial}");
    assert_eq!(partial["trials"][0], lr_search(&full)["trials"][0]);
    assert!(!parts.join("resume").exists() && !parts.join("corefocus.json").exists());
    assert!(corefocus::train::has_resumable_run(&options_of(
        &auto_lr_args(&data, &parts, &["--resume"])
    )));
    // Another rate is another run: neither resumable nor accepted by --resume.
    let mut fixed = auto_lr_args(&data, &parts, &["--resume"]);
    let lr = fixed.iter().position(|a| a == "--lr").unwrap();
    fixed[lr + 1] = "1e-4".into();
    assert!(!corefocus::train::has_resumable_run(&options_of(&fixed)));
    expect(&corefocus(&fixed), "R01", &["--lr 0.0001", "auto"]);

    let resumed = corefocus(&auto_lr_args(&data, &parts, &["--resume"]));
    let log = succeeded(&resumed, "resumed search") + &String::from_utf8_lossy(&resumed.stderr);
    assert_eq!(
        log.matches("taken from the earlier search").count(),
        1,
        "trial 1 is taken over, 2 and 3 are trained: {log}"
    );
    assert_eq!(lr_search(&parts)["chosen"].as_f64(), Some(chosen));
    assert_eq!(lr_search(&parts), lr_search(&full));
    assert_same_run(&full, &parts, "search stopped after one trial");

    // Killed (SIGKILL) once a trial is saved, wherever the run then is.
    let killed = s.path("killed");
    kill_once_written(
        &auto_lr_args(&data, &killed, &[]),
        &killed.join("lr_search.json"),
    );
    succeeded(
        &corefocus(&auto_lr_args(&data, &killed, &["--resume"])),
        "resume after kill",
    );
    assert_eq!(lr_search(&killed), lr_search(&full));
    assert_same_run(&full, &killed, "killed in the search");

    // A fresh run (--overwrite) searches again rather than trusting an old file.
    let again = corefocus(&auto_lr_args(&data, &parts, &["--overwrite"]));
    let log = succeeded(&again, "overwrite") + &String::from_utf8_lossy(&again.stderr);
    assert!(!log.contains("taken from the earlier search"), "{log}");
}

/// A finished search over fewer rates, its `lr_search.json` copied alone into another
/// output directory (as when a grid is trained again over a wider grid under another
/// root), lends the trials of the rates it shares: only the new rate is trained, and the
/// run is the one a search over the whole grid makes.
#[test]
fn search_over_a_wider_grid_takes_over_the_shared_trials() {
    let s = Scratch::new("lr-grid-wider");
    let data = s.path("data");
    toy_data(&data);
    let full = s.path("full");
    succeeded(&corefocus(&auto_lr_args(&data, &full, &[])), "full run");

    let narrow_args = |out: &Path, extra: &[&str]| {
        let mut args = auto_lr_args(&data, out, extra);
        let grid = args.iter().position(|a| a == "--lr-grid").unwrap();
        args[grid + 1] = "2e-5,1e-4".into();
        args
    };
    let narrow = s.path("narrow");
    succeeded(&corefocus(&narrow_args(&narrow, &[])), "run over two rates");
    assert_eq!(lr_search(&narrow)["trials"].as_array().unwrap().len(), 2);
    let wider = s.path("wider");
    std::fs::create_dir_all(&wider).unwrap();
    std::fs::copy(narrow.join("lr_search.json"), wider.join("lr_search.json")).unwrap();
    // The same grid is the same (finished) search; another rate is another run.
    let resume_wider = auto_lr_args(&data, &wider, &["--resume"]);
    assert!(corefocus::train::has_resumable_run(&options_of(
        &resume_wider
    )));
    let mut fixed = resume_wider.clone();
    let lr = fixed.iter().position(|a| a == "--lr").unwrap();
    fixed[lr + 1] = "1e-4".into();
    assert!(!corefocus::train::has_resumable_run(&options_of(&fixed)));

    let resumed = corefocus(&resume_wider);
    let log = succeeded(&resumed, "wider grid") + &String::from_utf8_lossy(&resumed.stderr);
    assert_eq!(
        log.matches("taken from the earlier search").count(),
        2,
        "2e-5 and 1e-4 are taken over, 3e-4 is trained: {log}"
    );
    assert_eq!(lr_search(&wider), lr_search(&full));
    assert_same_run(&full, &wider, "search widened by one rate");
}
