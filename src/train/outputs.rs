//! What a run writes into its output directory besides checkpoints: the directory's
//! preparation, `metrics.jsonl` and the JSON evaluation reports.

use super::eval::EvalResult;
use super::records::EpochRecord;
use crate::util::{remove_stale_temporaries, utc_timestamp, write_atomic};
use anyhow::{ensure, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// `metrics.jsonl`, rewritten whole (atomically) on every append so it is never torn.
pub struct MetricsLog {
    path: PathBuf,
    lines: Vec<String>,
}

impl MetricsLog {
    pub fn new(path: PathBuf) -> Self {
        MetricsLog {
            path,
            lines: Vec::new(),
        }
    }

    /// Adds a line without writing the file (a resumed run's earlier epochs).
    pub fn push<T: Serialize>(&mut self, record: &T) -> Result<()> {
        self.lines.push(serde_json::to_string(record)?);
        Ok(())
    }

    /// Takes back a resumed run's earlier epoch records (without writing); returns the
    /// best epoch's number and validation loss.
    pub fn restore(
        &mut self,
        records: &[EpochRecord],
        best: Option<usize>,
    ) -> Result<Option<(usize, f64)>> {
        for record in records {
            self.push(record)?;
        }
        Ok(best.map(|b| (records[b].epoch, records[b].val_loss)))
    }

    pub fn append<T: Serialize>(&mut self, record: &T) -> Result<()> {
        self.push(record)?;
        let mut text = self.lines.join("\n");
        text.push('\n');
        write_atomic(&self.path, text.as_bytes())
    }
}

/// The marker `train` writes into every output directory it creates; `--overwrite` only
/// touches directories that hold it.
pub const RUN_MARKER: &str = ".corefocus-run";
/// Version of the marker's contents.
pub const RUN_MARKER_VERSION: u32 = 1;

/// What `train` writes into its output directory: the only entries `--overwrite` removes
/// (plus temporaries of interrupted resume-state saves, `.resume.tmp-*` / `.resume.old-*`).
pub const RUN_FILES: [&str; 9] = [
    "corefocus.json",
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "metrics.jsonl",
    "training_curves.svg",
    "test_report.json",
    "lr_search.json",
    "result.json",
];

/// Writes `<out>/.corefocus-run` unless it is there.
pub fn write_run_marker(out: &Path) -> Result<()> {
    let path = out.join(RUN_MARKER);
    if path.is_file() {
        return Ok(());
    }
    let marker = serde_json::json!({
        "format_version": RUN_MARKER_VERSION,
        "written_by": "corefocus train",
        "created": utc_timestamp(),
    });
    write_atomic(&path, serde_json::to_string_pretty(&marker)?.as_bytes())
}

/// Checks, without changing anything, that `out` can receive a new run: missing or empty
/// is fine; a non-empty directory needs `overwrite` and must hold the marker of a
/// corefocus run (so a typo cannot delete a home directory). Returns whether an old run
/// must be removed first.
pub fn check_out_dir(out: &Path, overwrite: bool) -> Result<bool> {
    if !out.exists() {
        return Ok(false);
    }
    ensure!(
        out.is_dir(),
        "--out {} exists and is not a directory",
        out.display()
    );
    let mut entries =
        std::fs::read_dir(out).with_context(|| format!("cannot read {}", out.display()))?;
    // (Only the marker: a run that stopped before writing anything.)
    if entries.all(|e| e.is_ok_and(|e| e.file_name() == RUN_MARKER)) {
        return Ok(false);
    }
    ensure!(
        overwrite,
        "output directory {} is not empty; pass --overwrite to replace it",
        out.display()
    );
    ensure!(
        out.join(RUN_MARKER).is_file(),
        "output directory {} holds no {RUN_MARKER} marker, so corefocus train did not create it \
         (or an older version did); refusing to delete anything in it even with --overwrite",
        out.display()
    );
    Ok(true)
}

/// Makes `out` ready for a new run (see [`check_out_dir`]): with `overwrite`, the old
/// run's own files are removed (never anything else; the directory itself only if that
/// leaves it empty); then the marker is written and stale temporaries of crashed
/// checkpoint saves are removed.
pub fn prepare_out_dir(out: &Path, overwrite: bool) -> Result<()> {
    if check_out_dir(out, overwrite)? {
        remove_run_files(out)?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    write_run_marker(out)?;
    remove_stale_temporaries(out, super::checkpoint::META_FILE)
}

/// Removes what a run wrote into `out` ([`RUN_FILES`], `resume/` and its temporaries, the
/// marker last), then `out` itself if nothing else is left in it.
fn remove_run_files(out: &Path) -> Result<()> {
    let remove_file = |path: &Path| match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    };
    for name in RUN_FILES {
        remove_file(&out.join(name))?;
    }
    for entry in std::fs::read_dir(out).with_context(|| format!("cannot read {}", out.display()))? {
        let entry = entry.with_context(|| format!("cannot read {}", out.display()))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let ours = name == super::resume::RESUME_DIR
            || name.starts_with(".resume.tmp-")
            || name.starts_with(".resume.old-");
        if ours && entry.path().is_dir() {
            std::fs::remove_dir_all(entry.path())
                .with_context(|| format!("cannot remove {}", entry.path().display()))?;
        }
    }
    remove_file(&out.join(RUN_MARKER))?;
    // Only succeeds when empty: anything of the user's stays, and so does the directory.
    let _ = std::fs::remove_dir(out);
    Ok(())
}

/// Writes `<out>/test_report.json` style reports.
pub fn report_json(
    split: &str,
    checkpoint: &Path,
    data: &Path,
    result: &EvalResult,
    labels: &[String],
) -> Result<serde_json::Value> {
    Ok(serde_json::json!({
        "split": split,
        "checkpoint": checkpoint.display().to_string(),
        "data": data.display().to_string(),
        "examples": result.predictions.len(),
        "loss": result.loss,
        "accuracy": result.report.accuracy,
        "macro_f1": result.report.macro_f1,
        "micro_f1": result.report.micro_f1,
        "labels": labels,
        "report": serde_json::to_value(&result.report).context("cannot serialise the report")?,
        "created": utc_timestamp(),
    }))
}
