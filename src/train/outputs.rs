//! What a run writes into its output directory besides checkpoints: the directory's
//! preparation, `metrics.jsonl` and the JSON evaluation reports.

use super::eval::EvalResult;
use super::records::EpochRecord;
use crate::util::{utc_timestamp, write_atomic};
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

/// Checks, without changing anything, that `out` can receive a new run: missing or empty
/// is fine; a non-empty directory needs `overwrite` and must look like corefocus output
/// (so a typo cannot delete a home directory). Returns whether it must be emptied first.
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
    if entries.next().is_none() {
        return Ok(false);
    }
    ensure!(
        overwrite,
        "output directory {} is not empty; pass --overwrite to replace it",
        out.display()
    );
    // (`resume/state.json` alone: a run interrupted before its first epoch ended.)
    let ours = ["corefocus.json", "metrics.jsonl", "resume/state.json"]
        .iter()
        .any(|f| out.join(f).exists());
    ensure!(
        ours,
        "output directory {} holds no corefocus.json, metrics.jsonl or resume state, so it does not look like \
         corefocus output; refusing to delete it even with --overwrite",
        out.display()
    );
    Ok(true)
}

/// Makes `out` an empty directory for a new run (see [`check_out_dir`]; with `overwrite`
/// an old run there is deleted) and removes stale temporaries of crashed checkpoint saves.
pub fn prepare_out_dir(out: &Path, overwrite: bool) -> Result<()> {
    if check_out_dir(out, overwrite)? {
        std::fs::remove_dir_all(out).with_context(|| format!("cannot remove {}", out.display()))?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    super::checkpoint::remove_stale_temporaries(out)
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
