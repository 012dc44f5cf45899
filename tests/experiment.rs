//! End-to-end test of `corefocus experiment`: a tiny grid (three variants, one seed, one
//! epoch, max length 32) on a synthetic 4-examples-per-class dataset with the test
//! checkpoint, through the binary (so the counting allocator is installed), then a rerun
//! that must skip every finished cell.

mod common;

use common::{corefocus, corefocus_command, succeeded, write_jsonl_gz, Scratch};
use corefocus::experiment::{claim_cell, CellResult};
use corefocus::plot::{check_svg_structure, svg_texts};
use std::path::Path;

/// Two classes with distinct vocabularies: 4 training, 2 dev and 2 test examples each.
fn synthetic_dataset(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let words = [
        (
            "space",
            [
                "galaxy", "planet", "orbit", "comet", "nebula", "rocket", "star", "moon",
            ],
        ),
        (
            "food",
            [
                "recipe", "oven", "garlic", "flour", "soup", "bread", "salt", "pepper",
            ],
        ),
    ];
    let doc = |w: &[&str; 8], i: usize| {
        format!(
            "the {} and the {} near the {}",
            w[i % 8],
            w[(i + 3) % 8],
            w[(i + 5) % 8]
        )
    };
    let split = |range: std::ops::Range<usize>| -> Vec<(String, &str)> {
        range
            .flat_map(|i| words.iter().map(move |(label, w)| (doc(w, i), *label)))
            .collect()
    };
    write_jsonl_gz(dir, "train", &split(0..4));
    write_jsonl_gz(dir, "dev", &split(4..6));
    write_jsonl_gz(dir, "test", &split(6..8));
    std::fs::write(dir.join("labels.txt"), "food\nspace\n").unwrap();
}

fn svg_at(path: &Path) -> Vec<String> {
    let svg = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    check_svg_structure(&svg).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    svg_texts(&svg)
}

/// `experiment table2` on the synthetic dataset under `root` (written here), one seed,
/// max length 32, with the test checkpoint.
fn tiny_grid_args(root: &Path, variants: &str, epochs: &str) -> Vec<String> {
    synthetic_dataset(&root.join("data/synth"));
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let mut args = vec!["experiment".to_string(), "table2".to_string()];
    for (flag, value) in [
        ("--model", path(&common::test_model_dir())),
        ("--data-root", path(&root.join("data"))),
        ("--root", path(&root.join("runs"))),
        ("--datasets", "synth".into()),
        ("--variants", variants.into()),
        ("--seeds", "1".into()),
        ("--epochs", epochs.into()),
        ("--max-len", "32".into()),
    ] {
        args.extend([flag.to_string(), value]);
    }
    args
}

#[test]
fn tiny_grid_trains_every_cell_then_resumes() {
    let scratch = Scratch::new("tiny");
    let root = scratch.dir();
    let args = tiny_grid_args(root, "bert,pf,pfc@L-1", "1");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stdout = succeeded(&corefocus(&args), "experiment");
    assert!(
        stdout.contains(
            "3 cells: 3 trained, 0 already done, 0 being trained by another process, 0 failed"
        ),
        "{stdout}"
    );

    let grid = root.join("runs/table2");
    let mut created = Vec::new();
    for (cell, variant) in [("bert", "bert"), ("pf", "pf"), ("pfc-l5", "pfc")] {
        let dir = grid.join(format!("synth/{cell}-seed1"));
        let text = std::fs::read_to_string(dir.join("result.json")).unwrap();
        let r: CellResult = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (r.dataset.as_str(), r.cell.as_str(), r.seed),
            ("synth", cell, 1)
        );
        assert_eq!(r.variant.name(), variant);
        assert_eq!((r.epochs, r.max_len, r.test_examples), (1, 32, 4));
        assert!((0.0..=1.0).contains(&r.test_accuracy));
        assert!((0.0..=1.0).contains(&r.test_macro_f1));
        assert!(
            (r.test_micro_f1 - r.test_accuracy).abs() < 1e-9,
            "single-label micro-F1 = accuracy"
        );
        assert_eq!(r.curve.len(), 1);
        assert_eq!(r.best_epoch, 1);
        assert!(r.train_seconds > 0.0 && r.tokens_per_s > 0.0);
        // The binary counts heap bytes: at least the model's 22M f32 parameters.
        let peak = r
            .peak_heap_bytes
            .expect("the binary installs the counting allocator");
        assert!(peak > 22_000_000 * 4, "peak heap {peak}");
        if cell == "pfc-l5" {
            assert_eq!(
                (r.settings.combine_layer, r.settings.combine_tokens),
                (5, 8)
            );
        }
        let texts = svg_at(&dir.join("training_curves.svg"));
        for t in [
            "train loss",
            "validation loss",
            "validation accuracy",
            "optimizer step",
        ] {
            assert!(
                texts.iter().any(|x| x == t),
                "{cell}: {t:?} not in {texts:?}"
            );
        }
        created.push(text);
    }

    let md = std::fs::read_to_string(grid.join("results.md")).unwrap();
    assert!(md.contains("## synth"), "{md}");
    for row in [
        "| bert | - | - | - | 1 |",
        "| pf | 0.9 | - | - | 1 |",
        "| pfc-l5 | 0.9 | 5 | 8 | 1 |",
    ] {
        assert!(md.contains(row), "{row:?} not in {md}");
    }
    assert!(md.contains("baseline"), "{md}");
    assert!(!md.contains("not finished"), "{md}");
    let texts = svg_at(&grid.join("curves-synth-seed1.svg"));
    for cell in ["bert", "pf", "pfc-l5"] {
        assert!(texts.iter().any(|t| t == cell), "{cell} not in {texts:?}");
    }
    assert!(
        texts
            .iter()
            .any(|t| t == "training loss, mean over 10 steps"),
        "{texts:?}"
    );

    // Rerun: every cell is finished, nothing is trained or rewritten.
    let rerun = corefocus(&args);
    let stdout = succeeded(&rerun, "experiment rerun");
    let stderr = String::from_utf8_lossy(&rerun.stderr);
    assert!(
        stdout.contains("3 cells: 0 trained, 3 already done"),
        "{stdout}"
    );
    assert_eq!(stderr.matches("done, skipping").count(), 3, "{stderr}");
    for (cell, before) in ["bert", "pf", "pfc-l5"].iter().zip(&created) {
        let after =
            std::fs::read_to_string(grid.join(format!("synth/{cell}-seed1/result.json"))).unwrap();
        assert_eq!(&after, before, "{cell} result rewritten");
    }
    let mut dry = args.to_vec();
    dry.push("--dry-run");
    let stdout = succeeded(&corefocus(&dry), "dry run");
    assert_eq!(stdout.matches(": done").count(), 3, "{stdout}");

    // Another variant in the same grid directory, weights dropped once recorded: the
    // table pools every result under the grid, old and new.
    let mut more = args.to_vec();
    let variants_value = more.iter().position(|a| *a == "--variants").unwrap() + 1;
    more[variants_value] = "p";
    more.push("--drop-checkpoints");
    let stdout = succeeded(&corefocus(&more), "experiment, one more variant");
    assert!(stdout.contains("1 cells: 1 trained"), "{stdout}");
    let p_dir = grid.join("synth/p-seed1");
    assert!(p_dir.join("result.json").is_file() && p_dir.join("test_report.json").is_file());
    assert!(!p_dir.join("model.safetensors").exists(), "weights dropped");
    assert!(
        grid.join("synth/bert-seed1/model.safetensors").is_file(),
        "kept by default"
    );
    let md = std::fs::read_to_string(grid.join("results.md")).unwrap();
    // Rows in the built-in grid's order, though this request named only p.
    let at = |row: &str| {
        md.find(row)
            .unwrap_or_else(|| panic!("{row:?} not in {md}"))
    };
    let rows = [
        "| bert | - | - | - | 1 |",
        "| p | 0.9 | - | - | 1 |",
        "| pf | 0.9 | - | - | 1 |",
        "| pfc-l5 | 0.9 | 5 | 8 | 1 |",
    ];
    assert!(rows.windows(2).all(|w| at(w[0]) < at(w[1])), "{md}");

    // --report-only redraws the same table and plots from the finished cells, whichever
    // part of the grid the request names, and trains nothing.
    std::fs::remove_file(grid.join("results.md")).unwrap();
    std::fs::remove_file(grid.join("curves-synth-seed1.svg")).unwrap();
    let mut report = args.to_vec();
    report[variants_value] = "bert";
    report.push("--report-only");
    let out = corefocus(&report);
    succeeded(&out, "report only");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("1 of 1 cells finished; rewrote"),
        "{stderr}"
    );
    assert!(!stderr.contains("training"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(grid.join("results.md")).unwrap(),
        md
    );
    assert!(grid.join("curves-synth-seed1.svg").is_file());
    let missing = root.join("no-such-root");
    let mut typo = report.clone();
    let root_value = typo.iter().position(|a| *a == "--root").unwrap() + 1;
    typo[root_value] = missing.to_str().unwrap();
    let out = corefocus(&typo);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no grid directory"), "{stderr}");
    assert!(!missing.exists(), "nothing written under a mistyped --root");

    // A different schedule for the same cells is refused rather than mixed in.
    let mut other = args.to_vec();
    let epochs_value = other.iter().position(|a| *a == "--epochs").unwrap() + 1;
    other[epochs_value] = "2";
    let out = corefocus(&other);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another recipe"), "{stderr}");
}

#[test]
fn an_interrupted_cell_continues_from_its_saved_state() {
    let scratch = Scratch::new("interrupted");
    let root = scratch.dir();
    let args = tiny_grid_args(root, "bert", "2");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // One step per epoch (8 examples, batch 16): stop after the first.
    let mut stopping = args.to_vec();
    stopping.extend(["--stop-after-steps", "1"]);
    let out = corefocus(&stopping);
    assert!(!out.status.success(), "the stopped cell counts as failed");
    let cell = root.join("runs/table2/synth/bert-seed1");
    assert!(cell.join("resume/state.json").is_file());
    assert!(!cell.join("result.json").exists());

    let rerun = corefocus(&args);
    let stdout = succeeded(&rerun, "experiment after the interruption");
    let stderr = String::from_utf8_lossy(&rerun.stderr);
    assert!(
        stderr.contains("resuming the interrupted synth/bert-seed1"),
        "{stderr}"
    );
    assert!(stdout.contains("1 cells: 1 trained"), "{stdout}");
    let r: CellResult =
        serde_json::from_str(&std::fs::read_to_string(cell.join("result.json")).unwrap()).unwrap();
    assert!(r.resumed);
    // Both epochs are in the curve: the first from the interrupted attempt.
    assert_eq!(r.curve.len(), 2);
    assert!(
        !cell.join("resume").exists(),
        "a finished run leaves no resume state"
    );
    let md = std::fs::read_to_string(root.join("runs/table2/results.md")).unwrap();
    assert!(md.contains("Resumed after an interruption"), "{md}");
}

#[test]
fn a_cell_another_process_holds_is_left_to_it() {
    let scratch = Scratch::new("claimed");
    let root = scratch.dir();
    let args = tiny_grid_args(root, "bert,pf", "1");
    let pf_dir = root.join("runs/table2/synth/pf-seed1");
    // This test process plays the other `experiment` process: it holds pf's claim.
    let claim = claim_cell(&pf_dir).unwrap().expect("nobody holds pf yet");
    assert!(
        claim_cell(&pf_dir).unwrap().is_none(),
        "a second claim fails while the first is held"
    );
    let run_on = |threads: &str| {
        corefocus_command()
            .args(&args)
            .env("RAYON_NUM_THREADS", threads)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = run_on("2");
    let stdout = succeeded(&out, "experiment beside a held cell");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains(
            "2 cells: 1 trained, 0 already done, 1 being trained by another process, 0 failed"
        ),
        "{stdout}"
    );
    assert!(
        stderr.contains("synth/pf-seed1 is being trained by another process, skipping"),
        "{stderr}"
    );
    assert!(root
        .join("runs/table2/synth/bert-seed1/result.json")
        .is_file());
    assert!(!pf_dir.exists(), "the held cell was not touched");

    // Released (the holder ended): the next run trains it, on the threads it is given.
    drop(claim);
    let stdout = succeeded(&run_on("1"), "experiment after the release");
    assert!(
        stdout.contains("2 cells: 1 trained, 1 already done"),
        "{stdout}"
    );
    let r: CellResult =
        serde_json::from_str(&std::fs::read_to_string(pf_dir.join("result.json")).unwrap())
            .unwrap();
    assert_eq!(r.threads, Some(1));
    let md = std::fs::read_to_string(root.join("runs/table2/results.md")).unwrap();
    assert!(
        md.contains("threads per run (compare run times only at equal counts): 1: synth/pf-seed1; 2: synth/bert-seed1."),
        "{md}"
    );
}
