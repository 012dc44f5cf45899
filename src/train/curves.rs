//! A run's training curves: `metrics.jsonl` read back and drawn as `training_curves.svg`.

use super::records::{EpochRecord, LOSS_WINDOW};
use crate::plot::{write_svg, Panel, Series};
use anyhow::{Context, Result};
use std::path::Path;

/// Reads `metrics.jsonl` (one [`EpochRecord`] per line; blank lines ignored).
pub fn read_metrics(metrics_jsonl: &Path) -> Result<Vec<EpochRecord>> {
    let text = std::fs::read_to_string(metrics_jsonl)
        .with_context(|| format!("cannot read {}", metrics_jsonl.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| {
                format!(
                    "{} line {}: not an epoch record",
                    metrics_jsonl.display(),
                    i + 1
                )
            })
        })
        .collect()
}

/// A run's training-loss curve, `(optimizer step, mean loss of the window)` over all its
/// epochs (empty for records written before the curve was recorded).
pub fn step_loss_curve(records: &[EpochRecord]) -> Vec<(f64, f64)> {
    records
        .iter()
        .flat_map(|r| r.loss_curve.iter().map(|p| (p.step as f64, p.loss)))
        .collect()
}

/// The panels of a run's training curves: train and validation loss, and validation
/// accuracy (with macro-F1), per epoch; then, where recorded, the training loss every
/// `LOSS_WINDOW` steps.
pub fn training_curve_panels(records: &[EpochRecord]) -> Vec<Panel> {
    let per_epoch = |f: fn(&EpochRecord) -> f64| -> Vec<(f64, f64)> {
        records.iter().map(|r| (r.epoch as f64, f(r))).collect()
    };
    let steps = step_loss_curve(records);
    let step_panel = (!steps.is_empty()).then(|| Panel {
        title: format!("training loss, mean over {LOSS_WINDOW} steps"),
        x_label: "optimizer step".into(),
        y_label: "cross-entropy".into(),
        series: vec![Series::new("train loss", steps)],
        integer_x: true,
    });
    let epoch_panels = vec![
        Panel {
            title: "loss".into(),
            x_label: "epoch".into(),
            y_label: "cross-entropy".into(),
            series: vec![
                Series::new("train loss", per_epoch(|r| r.train_loss)),
                Series::new("validation loss", per_epoch(|r| r.val_loss)),
            ],
            integer_x: true,
        },
        Panel {
            title: "validation".into(),
            x_label: "epoch".into(),
            y_label: "score".into(),
            series: vec![
                Series::new("validation accuracy", per_epoch(|r| r.val_accuracy)),
                Series::new("validation macro-F1", per_epoch(|r| r.val_macro_f1)),
            ],
            integer_x: true,
        },
    ];
    epoch_panels.into_iter().chain(step_panel).collect()
}

/// Plots a run's `metrics.jsonl` to `out_svg`: train and validation loss, validation
/// accuracy and macro-F1 per epoch.
pub fn plot_training_curves(metrics_jsonl: &Path, out_svg: &Path) -> Result<()> {
    let records = read_metrics(metrics_jsonl)?;
    let run = metrics_jsonl
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    write_svg(
        out_svg,
        &format!("training curves {run}"),
        &training_curve_panels(&records),
    )
    .with_context(|| format!("cannot plot {}", out_svg.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::{check_svg_structure, svg_texts};
    use crate::train::records::LossPoint;

    fn record(epoch: usize, train_loss: f64, val_loss: f64, acc: f64) -> EpochRecord {
        EpochRecord {
            epoch,
            step: epoch as u64 * 10,
            train_loss,
            val_loss,
            val_accuracy: acc,
            val_macro_f1: acc - 0.01,
            lr: 1e-5,
            seconds: 1.0,
            tokens_per_s: 100.0,
            grad_norm: 1.0,
            best: true,
            loss_curve: [5, 10]
                .iter()
                .map(|&k| LossPoint {
                    step: (epoch as u64 - 1) * 10 + k,
                    loss: train_loss + 0.1 - 0.02 * k as f64,
                    combine: None,
                })
                .collect(),
        }
    }

    #[test]
    fn training_curves_svg_is_well_formed_and_names_its_series() {
        let dir = std::env::temp_dir().join(format!("corefocus-plot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let metrics = dir.join("metrics.jsonl");
        let lines: Vec<String> = [
            record(1, 0.9, 0.8, 0.61),
            record(2, 0.5, 0.6, 0.74),
            record(3, 0.3, 0.65, 0.79),
        ]
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
        std::fs::write(&metrics, lines.join("\n") + "\n").unwrap();
        let out = dir.join("training_curves.svg");
        plot_training_curves(&metrics, &out).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        check_svg_structure(&svg).unwrap();
        let texts = svg_texts(&svg);
        for name in [
            "train loss",
            "validation loss",
            "validation accuracy",
            "validation macro-F1",
            "training curves corefocus-plot-{}",
            "training loss, mean over 10 steps",
            "optimizer step",
        ] {
            let name = name.replace("{}", &std::process::id().to_string());
            assert!(texts.contains(&name), "text {name:?} missing in {texts:?}");
        }
        // Three epochs: each per-epoch line is one polyline of three points; the step
        // curve has six.
        assert_eq!(step_loss_curve(&read_metrics(&metrics).unwrap()).len(), 6);
        assert!(svg.matches("<polyline").count() >= 5, "lines drawn");
        assert!(svg.matches("<circle").count() >= 18, "markers drawn");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn malformed_metrics_name_file_and_line() {
        let dir = std::env::temp_dir().join(format!("corefocus-plot-bad-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let metrics = dir.join("metrics.jsonl");
        let good = serde_json::to_string(&record(1, 1.0, 1.0, 0.5)).unwrap();
        std::fs::write(&metrics, format!("{good}\n{{\"epoch\": 2}}\n")).unwrap();
        let err = format!("{:#}", read_metrics(&metrics).unwrap_err());
        assert!(err.contains("metrics.jsonl line 2"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
