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

/// Knowledge distillation (Hinton et al.): the mean over `rows` examples of
/// `T^2 * KL(softmax(t/T) || softmax(z/T))` for student logits `z` and teacher logits `t`;
/// adds `weight` times its gradient with respect to `z` (`T * (softmax(z/T) -
/// softmax(t/T)) / rows` per row) into `dlogits`. The `T^2` keeps the gradient's size
/// independent of the temperature.
pub fn distillation_loss(
    logits: &[f32],
    teacher: &[f32],
    rows: usize,
    classes: usize,
    temperature: f32,
    weight: f32,
    dlogits: &mut [f32],
) -> f32 {
    assert_eq!(
        teacher.len(),
        logits.len(),
        "distillation: teacher vs student"
    );
    let scaled = |z: &[f32]| -> Vec<f32> { z.iter().map(|v| v / temperature).collect() };
    let (zs, zt) = (scaled(logits), scaled(teacher));
    let (mut ps, mut pt) = (vec![0.0f32; zs.len()], vec![0.0f32; zt.len()]);
    softmax_rows(&zs, rows, classes, &mut ps);
    softmax_rows(&zt, rows, classes, &mut pt);
    let log_softmax = |z: &[f32]| -> Vec<f64> {
        let max = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let lse = max + z.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
        z.iter().map(|&v| v as f64 - lse).collect()
    };
    let mut total = 0.0f64;
    for r in 0..rows {
        let span = r * classes..(r + 1) * classes;
        let (ls, lt) = (
            log_softmax(&zs[span.clone()]),
            log_softmax(&zt[span.clone()]),
        );
        total += (0..classes)
            .map(|c| lt[c].exp() * (lt[c] - ls[c]))
            .sum::<f64>();
        for c in span {
            dlogits[c] += weight * temperature * (ps[c] - pt[c]) / rows as f32;
        }
    }
    (total * (temperature as f64).powi(2) / rows as f64) as f32
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
    fn distillation_loss_and_gradient() {
        let (rows, classes, temp) = (4, 3, 2.5f32);
        let logits = random_vec(2, rows * classes, 2.0);
        let teacher = random_vec(3, rows * classes, 3.0);
        let kl = |z: &[f64]| -> f64 {
            let mut total = 0.0;
            for r in 0..rows {
                let ls = |v: &[f64]| {
                    let v: Vec<f64> = v.iter().map(|x| x / temp as f64).collect();
                    let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let lse = max + v.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
                    v.iter().map(|x| x - lse).collect::<Vec<f64>>()
                };
                let t = to_f64(&teacher[r * classes..(r + 1) * classes]);
                let (lt, lz) = (ls(&t), ls(&z[r * classes..(r + 1) * classes]));
                total += (0..classes)
                    .map(|c| lt[c].exp() * (lt[c] - lz[c]))
                    .sum::<f64>();
            }
            total * (temp as f64).powi(2) / rows as f64
        };
        // The gradient is added to what is there, scaled by the weight.
        let mut d = vec![1.0f32; rows * classes];
        let loss = distillation_loss(&logits, &teacher, rows, classes, temp, 0.5, &mut d);
        let z = to_f64(&logits);
        assert!((loss as f64 - kl(&z)).abs() < 1e-5, "{loss} vs {}", kl(&z));
        let grad: Vec<f64> = numeric_grad(kl, &z, 1e-5)
            .iter()
            .map(|g| 1.0 + 0.5 * g)
            .collect();
        assert_grad_close("distillation dlogits", &d, &grad, 1e-5);
        // Equal logits: no loss, no gradient.
        let mut d = vec![0.0f32; rows * classes];
        let loss = distillation_loss(&logits, &logits, rows, classes, temp, 1.0, &mut d);
        assert!(loss.abs() < 1e-6 && d.iter().all(|v| v.abs() < 1e-6));
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
