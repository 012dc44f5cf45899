//! The README's tour (issue 20): its first `sh` block runs as written, from a directory laid
//! out like a fresh clone, with `cargo run --release --` standing for this build's binary
//! and a smaller copy of the shipped sample (so it takes a minute, not a quarter hour).

mod common;

use common::{crate_root, test_model_dir, Scratch};
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::Command;

/// The first ```sh block after the `## Tour` heading.
fn tour_block(readme: &str) -> String {
    let tour = &readme[readme
        .find("\n## Tour\n")
        .expect("README has a Tour section")..];
    let start = tour.find("```sh\n").expect("a sh block in the tour") + "```sh\n".len();
    let len = tour[start..].find("\n```").expect("the sh block ends");
    tour[start..start + len].to_string()
}

/// The first `rows` lines of a gzipped JSON Lines split, gzipped again into `to`.
fn head_gz(from: &Path, to: &Path, rows: usize) {
    let reader = std::io::BufReader::new(flate2::read::GzDecoder::new(
        std::fs::File::open(from).unwrap(),
    ));
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(to).unwrap(),
        flate2::Compression::default(),
    );
    for line in reader.lines().take(rows) {
        writeln!(gz, "{}", line.unwrap()).unwrap();
    }
    gz.finish().unwrap();
}

#[test]
fn readme_tour_runs_as_written() {
    let readme = std::fs::read_to_string(crate_root().join("README.md")).unwrap();
    let block = tour_block(&readme);
    assert!(block.contains("data/sst2-sample") && !block.contains("../shared"));

    // A clone: the scripts, the shipped sample (smaller), the cached test checkpoint.
    let s = Scratch::new("tour");
    let clone = s.path("clone");
    std::fs::create_dir_all(clone.join("scripts")).unwrap();
    std::fs::copy(
        crate_root().join("scripts/fetch-test-model.sh"),
        clone.join("scripts/fetch-test-model.sh"),
    )
    .unwrap();
    let sample = clone.join("data/sst2-sample");
    std::fs::create_dir_all(&sample).unwrap();
    let shipped = crate_root().join("data/sst2-sample");
    for (split, rows) in [("train", 48), ("dev", 24), ("test", 24)] {
        let file = format!("{split}.jsonl.gz");
        head_gz(&shipped.join(&file), &sample.join(&file), rows);
    }
    std::fs::copy(shipped.join("labels.txt"), sample.join("labels.txt")).unwrap();
    std::fs::create_dir_all(clone.join("target/models")).unwrap();
    std::os::unix::fs::symlink(
        test_model_dir(),
        clone.join("target/models/all-MiniLM-L6-v2"),
    )
    .unwrap();

    let bin = env!("CARGO_BIN_EXE_corefocus");
    let script = block.replace("cargo run --release --", &format!("'{bin}'"));
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(&clone)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the tour failed:\n--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    for f in [
        "runs/sst2-pfc/corefocus.json",
        "runs/sst2-pfc/test_report.json",
        "explain.html",
        "runs/mydata-pf/corefocus.json",
    ] {
        assert!(clone.join(f).is_file(), "{f} missing after the tour");
    }
    assert!(
        stdout.contains("\"label\""),
        "predict printed a label: {stdout}"
    );
    assert!(
        stdout.contains("| pfc"),
        "bench printed its table: {stdout}"
    );
}
