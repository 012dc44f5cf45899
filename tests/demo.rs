//! The built-in default job end to end, on a small corpus so it runs in seconds.

mod common;

use common::Scratch;

#[test]
fn demo_trains_variants_and_writes_report_and_explain_page() {
    let scratch = Scratch::new("demo");
    let out = scratch.path("out");
    let status = common::corefocus_command()
        .args([
            "demo",
            "--out",
            out.to_str().unwrap(),
            "--train-docs",
            "48",
            "--epochs",
            "1",
        ])
        .args(["--variants", "bert,pfc"])
        .output()
        .expect("corefocus runs");
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
    assert!(stdout.contains("; peak RSS "), "{stdout}");
    let page = std::fs::read_to_string(out.join("explain.html")).unwrap();
    assert!(page.contains("<html") && page.trim_end().ends_with("</html>"));
}
