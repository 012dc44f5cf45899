//! Learning-rate schedule: linear warm-up then linear decay to 0, as HF
//! `get_linear_schedule_with_warmup`.

/// `lr(s)` for optimizer step `s` (0-based: the first update uses `s = 0`, as HF's
/// `LambdaLR` does before its first `scheduler.step()`, so the very first update has
/// lr 0 when there is a warm-up).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearSchedule {
    pub base_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl LinearSchedule {
    /// Warm-up over the first `warmup_frac` of `total_steps`, rounded up (as HF
    /// `TrainingArguments.get_warmup_steps` does for `warmup_ratio`).
    pub fn new(base_lr: f64, total_steps: u64, warmup_frac: f64) -> Self {
        let warmup_steps = (warmup_frac.clamp(0.0, 1.0) * total_steps as f64).ceil() as u64;
        LinearSchedule {
            base_lr,
            warmup_steps,
            total_steps,
        }
    }

    /// `base * s / warmup` during warm-up, then `base * max(0, (total - s) / (total - warmup))`
    /// (denominators at least 1, as HF).
    pub fn lr_at(&self, step: u64) -> f64 {
        let factor = if step < self.warmup_steps {
            step as f64 / self.warmup_steps.max(1) as f64
        } else {
            let remaining = self.total_steps as f64 - step as f64;
            let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
            (remaining / span).max(0.0)
        };
        self.base_lr * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_linear_decay() {
        // 100 steps, 10% warm-up = 10 steps.
        let s = LinearSchedule::new(2e-5, 100, 0.1);
        assert_eq!(s.warmup_steps, 10);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-18;
        assert!(close(s.lr_at(0), 0.0));
        assert!(close(s.lr_at(1), 2e-6));
        assert!(close(s.lr_at(5), 1e-5));
        assert!(close(s.lr_at(9), 1.8e-5));
        assert!(close(s.lr_at(10), 2e-5)); // peak: (100-10)/90
        assert!(close(s.lr_at(55), 1e-5)); // (100-55)/90 = 0.5
        assert!(close(s.lr_at(99), 2e-5 / 90.0));
        assert!(close(s.lr_at(100), 0.0));
        assert!(close(s.lr_at(150), 0.0)); // never negative
    }

    #[test]
    fn warmup_rounds_up_and_degenerate_cases() {
        // ceil(0.1 * 25) = 3.
        let s = LinearSchedule::new(1.0, 25, 0.1);
        assert_eq!(s.warmup_steps, 3);
        assert!((s.lr_at(2) - 2.0 / 3.0).abs() < 1e-15);
        assert!((s.lr_at(3) - 1.0).abs() < 1e-15);
        assert!((s.lr_at(14) - 0.5).abs() < 1e-15);

        // No warm-up: starts at the base rate.
        let s = LinearSchedule::new(1.0, 4, 0.0);
        assert_eq!(s.lr_at(0), 1.0);
        assert_eq!(s.lr_at(1), 0.75);
        assert_eq!(s.lr_at(3), 0.25);

        // Warm-up over everything: denominator clamps to 1, no division by zero.
        let s = LinearSchedule::new(1.0, 2, 1.0);
        assert_eq!(s.warmup_steps, 2);
        assert_eq!(s.lr_at(1), 0.5);
        assert_eq!(s.lr_at(2), 0.0);

        // One-step run with warm-up: HF gives lr 0 to that single step.
        let s = LinearSchedule::new(1.0, 1, 0.1);
        assert_eq!(s.warmup_steps, 1);
        assert_eq!(s.lr_at(0), 0.0);
    }
}
