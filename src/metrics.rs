//! Classification metrics.
//!
//! Conventions follow scikit-learn's `classification_report` / `f1_score` with
//! `labels=` all classes and `zero_division=0`: a ratio with a zero denominator is 0
//! (precision of a never-predicted class, recall of a class with no gold examples), and
//! macro-F1 averages over every label, including labels absent from gold and predictions.

use std::fmt::Write;

#[derive(Clone, Debug, serde::Serialize)]
pub struct ClassificationReport {
    pub accuracy: f64,
    pub macro_f1: f64,
    pub micro_f1: f64,
    pub weighted_f1: f64,
    pub per_class: Vec<ClassMetrics>,
    /// `confusion[gold][pred]`
    pub confusion: Vec<Vec<usize>>,
    pub support: usize,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ClassMetrics {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

/// `num / den`, or 0 when `den` is 0 (scikit-learn's `zero_division=0`).
fn ratio(num: usize, den: usize) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

impl ClassificationReport {
    /// Panics if `gold` and `pred` differ in length or hold an index outside `labels`
    /// (both are programming errors: label ids are validated when data is read).
    pub fn compute(gold: &[usize], pred: &[usize], labels: &[String]) -> Self {
        assert_eq!(gold.len(), pred.len(), "gold and pred lengths differ");
        let n_labels = labels.len();
        let mut confusion = vec![vec![0usize; n_labels]; n_labels];
        for (&g, &p) in gold.iter().zip(pred) {
            assert!(
                g < n_labels && p < n_labels,
                "label index out of range: gold {g}, pred {p}, {n_labels} labels"
            );
            confusion[g][p] += 1;
        }

        let mut per_class = Vec::with_capacity(n_labels);
        let (mut total_tp, mut total_pred) = (0usize, 0usize);
        for (k, label) in labels.iter().enumerate() {
            let tp = confusion[k][k];
            let support: usize = confusion[k].iter().sum();
            let predicted: usize = confusion.iter().map(|row| row[k]).sum();
            total_tp += tp;
            total_pred += predicted;
            // 2tp / (2tp + fp + fn) equals the harmonic mean of precision and recall, and
            // is 0 (not NaN) when both are 0.
            let f1 = ratio(2 * tp, predicted + support);
            per_class.push(ClassMetrics {
                label: label.clone(),
                precision: ratio(tp, predicted),
                recall: ratio(tp, support),
                f1,
                support,
            });
        }

        let support = gold.len();
        let macro_f1 = if n_labels == 0 {
            0.0
        } else {
            per_class.iter().map(|c| c.f1).sum::<f64>() / n_labels as f64
        };
        let weighted_f1 = if support == 0 {
            0.0
        } else {
            per_class
                .iter()
                .map(|c| c.f1 * c.support as f64)
                .sum::<f64>()
                / support as f64
        };
        // Micro-averaged precision and recall pool tp / fp / fn over classes; with every
        // prediction inside `labels` both equal accuracy, so micro-F1 does too.
        let micro_precision = ratio(total_tp, total_pred);
        let micro_recall = ratio(total_tp, support);
        let micro_f1 = if micro_precision + micro_recall == 0.0 {
            0.0
        } else {
            2.0 * micro_precision * micro_recall / (micro_precision + micro_recall)
        };

        ClassificationReport {
            accuracy: ratio(total_tp, support),
            macro_f1,
            micro_f1,
            weighted_f1,
            per_class,
            confusion,
            support,
        }
    }

    /// A readable table (per-class rows + summary + confusion matrix).
    pub fn to_table(&self) -> String {
        let name_width = self
            .per_class
            .iter()
            .map(|c| c.label.chars().count())
            .chain(["weighted avg".len()])
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:>w$}  {:>9}  {:>9}  {:>9}  {:>7}",
            "",
            "precision",
            "recall",
            "f1",
            "support",
            w = name_width
        );
        for c in &self.per_class {
            let _ = writeln!(
                out,
                "{:>w$}  {:>9.4}  {:>9.4}  {:>9.4}  {:>7}",
                c.label,
                c.precision,
                c.recall,
                c.f1,
                c.support,
                w = name_width
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:>w$}  {:>9}  {:>9}  {:>9.4}  {:>7}",
            "accuracy",
            "",
            "",
            self.accuracy,
            self.support,
            w = name_width
        );
        for (name, value) in [
            ("macro f1", self.macro_f1),
            ("micro f1", self.micro_f1),
            ("weighted f1", self.weighted_f1),
        ] {
            let _ = writeln!(
                out,
                "{:>w$}  {:>9}  {:>9}  {:>9.4}  {:>7}",
                name,
                "",
                "",
                value,
                self.support,
                w = name_width
            );
        }

        // Confusion matrix: rows are gold labels, columns predictions, columns headed by
        // label index to keep the table narrow.
        let count_width = self
            .confusion
            .iter()
            .flatten()
            .map(|c| c.to_string().len())
            .chain(std::iter::once(
                self.confusion.len().saturating_sub(1).to_string().len() + 1,
            ))
            .max()
            .unwrap_or(1);
        let _ = writeln!(out);
        let _ = writeln!(out, "confusion matrix (rows: gold, columns: predicted)");
        let _ = write!(out, "{:>w$}", "", w = name_width + 5);
        for j in 0..self.confusion.len() {
            let _ = write!(out, "  {:>cw$}", format!("#{j}"), cw = count_width);
        }
        let _ = writeln!(out);
        for (i, row) in self.confusion.iter().enumerate() {
            let label = self.per_class.get(i).map_or("", |c| c.label.as_str());
            let _ = write!(out, "{:>w$} {:>3} ", label, format!("#{i}"), w = name_width);
            for count in row {
                let _ = write!(out, "  {:>cw$}", count, cw = count_width);
            }
            let _ = writeln!(out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn hand_computed_three_classes() {
        // gold: a a a b b c ; pred: a a b b c c
        // confusion: a->[2,1,0], b->[0,1,1], c->[0,0,1]
        // a: tp 2, pred 2, sup 3 -> P 1, R 2/3, F1 0.8
        // b: tp 1, pred 2, sup 2 -> P 1/2, R 1/2, F1 1/2
        // c: tp 1, pred 2, sup 1 -> P 1/2, R 1, F1 2/3
        let r = ClassificationReport::compute(
            &[0, 0, 0, 1, 1, 2],
            &[0, 0, 1, 1, 2, 2],
            &labels(&["a", "b", "c"]),
        );
        assert_eq!(
            r.confusion,
            vec![vec![2, 1, 0], vec![0, 1, 1], vec![0, 0, 1]]
        );
        assert_eq!(r.support, 6);
        let expect = [
            (1.0, 2.0 / 3.0, 0.8, 3),
            (0.5, 0.5, 0.5, 2),
            (0.5, 1.0, 2.0 / 3.0, 1),
        ];
        for (c, &(p, rc, f, s)) in r.per_class.iter().zip(&expect) {
            assert!(
                close(c.precision, p) && close(c.recall, rc) && close(c.f1, f),
                "{c:?}"
            );
            assert_eq!(c.support, s);
        }
        assert!(close(r.accuracy, 4.0 / 6.0));
        // micro-F1 equals accuracy in single-label multiclass classification
        assert!(close(r.micro_f1, r.accuracy));
        assert!(close(r.macro_f1, (0.8 + 0.5 + 2.0 / 3.0) / 3.0));
        assert!(close(
            r.weighted_f1,
            (0.8 * 3.0 + 0.5 * 2.0 + 2.0 / 3.0) / 6.0
        ));
    }

    #[test]
    fn never_predicted_class_has_zero_precision_and_counts_in_macro() {
        // gold: a a b b ; pred: a a a a  (b never predicted)
        // a: tp 2, pred 4, sup 2 -> P 1/2, R 1, F1 2/3 ; b: P 0 (zero_division), R 0, F1 0
        // c: no gold, no predictions -> all 0, still averaged into macro-F1
        let r =
            ClassificationReport::compute(&[0, 0, 1, 1], &[0, 0, 0, 0], &labels(&["a", "b", "c"]));
        let b = &r.per_class[1];
        assert_eq!((b.precision, b.recall, b.f1, b.support), (0.0, 0.0, 0.0, 2));
        let c = &r.per_class[2];
        assert_eq!((c.precision, c.recall, c.f1, c.support), (0.0, 0.0, 0.0, 0));
        assert!(close(r.per_class[0].precision, 0.5));
        assert!(close(r.per_class[0].f1, 2.0 / 3.0));
        assert!(close(r.macro_f1, (2.0 / 3.0) / 3.0));
        assert!(close(r.weighted_f1, (2.0 / 3.0 * 2.0) / 4.0));
        assert!(close(r.accuracy, 0.5));
        assert!(close(r.micro_f1, 0.5));
        assert!(r.macro_f1.is_finite() && r.weighted_f1.is_finite());
    }

    #[test]
    fn perfect_and_empty() {
        let r = ClassificationReport::compute(&[1, 0, 1], &[1, 0, 1], &labels(&["x", "y"]));
        assert_eq!(
            (r.accuracy, r.macro_f1, r.micro_f1, r.weighted_f1),
            (1.0, 1.0, 1.0, 1.0)
        );
        let empty = ClassificationReport::compute(&[], &[], &labels(&["x", "y"]));
        assert_eq!(
            (
                empty.accuracy,
                empty.macro_f1,
                empty.micro_f1,
                empty.support
            ),
            (0.0, 0.0, 0.0, 0)
        );
    }

    #[test]
    fn table_mentions_every_label_and_count() {
        let r = ClassificationReport::compute(
            &[0, 0, 1, 1],
            &[0, 1, 1, 1],
            &labels(&["sport", "entertainment"]),
        );
        let table = r.to_table();
        assert!(
            table.contains("sport") && table.contains("entertainment"),
            "{table}"
        );
        assert!(
            table.contains("accuracy") && table.contains("macro f1"),
            "{table}"
        );
        assert!(table.contains("0.7500"), "{table}");
        // confusion row for "sport": 1 correct, 1 predicted as entertainment
        let sport_row = table
            .lines()
            .rfind(|l| l.contains("sport") && l.contains("#0"))
            .unwrap_or("");
        let counts: Vec<&str> = sport_row.split_whitespace().skip(2).collect();
        assert_eq!(counts, vec!["1", "1"], "{table}");
    }
}
