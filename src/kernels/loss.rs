//! Softmax cross-entropy over classes, mean over the batch.

/// Returns the mean loss over `rows` examples; fills `probs` (`[rows, classes]`) with the
/// softmax, and `dlogits` (if given) with the gradient of the *mean* loss.
pub fn softmax_cross_entropy(
    logits: &[f32],
    rows: usize,
    classes: usize,
    labels: &[usize],
    probs: &mut [f32],
    dlogits: Option<&mut [f32]>,
) -> f32 {
    assert_eq!(labels.len(), rows, "softmax_cross_entropy: labels vs rows");
    assert!(rows > 0, "softmax_cross_entropy: empty batch");
    softmax_rows(logits, rows, classes, probs);
    // loss_r = logsumexp(z_r) - z_r[label], computed from the max-shifted logits so it
    // stays finite (and accurate) for large logits.
    let mut total = 0.0f64;
    for (r, &label) in labels.iter().enumerate() {
        assert!(
            label < classes,
            "softmax_cross_entropy: label {label} of row {r} >= {classes} classes"
        );
        let z = &logits[r * classes..(r + 1) * classes];
        let max = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let sum: f64 = z.iter().map(|&v| (v as f64 - max).exp()).sum();
        total += max + sum.ln() - z[label] as f64;
    }
    if let Some(d) = dlogits {
        let inv_rows = 1.0 / rows as f32;
        for (r, &label) in labels.iter().enumerate() {
            let p = &probs[r * classes..(r + 1) * classes];
            let dr = &mut d[r * classes..(r + 1) * classes];
            for (c, (dv, &pv)) in dr.iter_mut().zip(p).enumerate() {
                let onehot = if c == label { 1.0 } else { 0.0 };
                *dv = (pv - onehot) * inv_rows;
            }
        }
    }
    (total / rows as f64) as f32
}

/// Row-wise softmax of `logits` into `probs` (`[rows, classes]`).
pub fn softmax_rows(logits: &[f32], rows: usize, classes: usize, probs: &mut [f32]) {
    for r in 0..rows {
        let z = &logits[r * classes..(r + 1) * classes];
        let p = &mut probs[r * classes..(r + 1) * classes];
        let max = z.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut sum = 0.0f32;
        for (pv, &zv) in p.iter_mut().zip(z) {
            *pv = (zv - max).exp();
            sum += *pv;
        }
        let inv = 1.0 / sum;
        for pv in p.iter_mut() {
            *pv *= inv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::{assert_grad_close, numeric_grad, random_vec, to_f64};

    fn loss_ref(z: &[f64], rows: usize, classes: usize, labels: &[usize]) -> f64 {
        let mut total = 0.0;
        for r in 0..rows {
            let zr = &z[r * classes..(r + 1) * classes];
            let max = zr.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + zr.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            total += lse - zr[labels[r]];
        }
        total / rows as f64
    }

    #[test]
    fn loss_probs_and_gradient() {
        let (rows, classes) = (6, 5);
        let logits = random_vec(1, rows * classes, 2.0);
        let labels = [0, 4, 2, 2, 1, 3];
        let mut probs = vec![0.0; rows * classes];
        let mut dlogits = vec![f32::NAN; rows * classes];
        let loss = softmax_cross_entropy(
            &logits,
            rows,
            classes,
            &labels,
            &mut probs,
            Some(&mut dlogits),
        );
        let z = to_f64(&logits);
        let want = loss_ref(&z, rows, classes, &labels);
        assert!(
            (loss as f64 - want).abs() < 1e-6 * want.abs().max(1.0),
            "{loss} vs {want}"
        );
        for r in 0..rows {
            let s: f32 = probs[r * classes..(r + 1) * classes].iter().sum();
            assert!((s - 1.0).abs() < 1e-6);
        }
        let grad = numeric_grad(|z| loss_ref(z, rows, classes, &labels), &z, 1e-5);
        assert_grad_close("loss dlogits", &dlogits, &grad, 1e-6);
    }

    #[test]
    fn large_logits_stay_finite() {
        let logits = [1000.0f32, -1000.0, 999.0, 0.0, 3e4, -3e4];
        let mut probs = [0.0f32; 6];
        let mut d = [0.0f32; 6];
        let loss = softmax_cross_entropy(&logits, 2, 3, &[1, 2], &mut probs, Some(&mut d));
        // Row 0: label -1000 against 1000 / 999: loss = 2000 + ln(1 + e^-1).
        // Row 1: label -3e4 against 3e4: loss = 6e4.
        let want = (2000.0 + (1.0 + (-1.0f64).exp()).ln() + 6e4) / 2.0;
        assert!((loss as f64 - want).abs() < 1e-3, "{loss} vs {want}");
        assert!(probs.iter().chain(&d).all(|v| v.is_finite()));
        assert_eq!(probs[4], 1.0);
    }
}
