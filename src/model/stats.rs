//! Diagnostics of the combining module (`docs/combining.md`).

use serde::{Deserialize, Serialize};

/// What the combining module did in one training step: means over the batch of how many
/// of the m combination tokens received tokens and the largest group's share of the real
/// tokens; the combination tokens' mean row norm, mean pairwise cosine, and the norm of
/// their gradient (before clipping). Sums of several steps while accumulating;
/// [`CombineStats::mean_of`] divides.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CombineStats {
    pub used_slots: f64,
    pub largest_share: f64,
    pub token_norm: f64,
    pub token_cosine: f64,
    pub token_grad_norm: f64,
}

impl CombineStats {
    pub fn add(&mut self, o: &CombineStats) {
        self.used_slots += o.used_slots;
        self.largest_share += o.largest_share;
        self.token_norm += o.token_norm;
        self.token_cosine += o.token_cosine;
        self.token_grad_norm += o.token_grad_norm;
    }

    /// The mean of `steps` accumulated steps.
    pub fn mean_of(&self, steps: u64) -> CombineStats {
        let k = steps.max(1) as f64;
        CombineStats {
            used_slots: self.used_slots / k,
            largest_share: self.largest_share / k,
            token_norm: self.token_norm / k,
            token_cosine: self.token_cosine / k,
            token_grad_norm: self.token_grad_norm / k,
        }
    }

    /// The statistics of one step: `group_counts` (`[batch, m]`, see `group_counts`),
    /// the real `lengths` of the examples, the `[m, d]` combination `tokens` and their
    /// gradient `token_grads`.
    pub fn measure(
        group_counts: &[u32],
        lengths: &[usize],
        tokens: &[f32],
        token_grads: &[f32],
        m: usize,
    ) -> CombineStats {
        let d = tokens.len() / m;
        let bsz = lengths.len();
        let mut st = CombineStats::default();
        for (b, counts) in group_counts.chunks(m).enumerate() {
            st.used_slots += counts.iter().filter(|&&c| c > 0).count() as f64 / bsz as f64;
            let largest = counts.iter().copied().max().unwrap_or(0) as f64;
            st.largest_share += largest / lengths[b].max(1) as f64 / bsz as f64;
        }
        let rows: Vec<&[f32]> = tokens.chunks(d).collect();
        let norm = |r: &[f32]| r.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        st.token_norm = rows.iter().map(|r| norm(r)).sum::<f64>() / m as f64;
        let mut pairs = 0usize;
        for i in 0..m {
            for j in i + 1..m {
                let dot: f64 = rows[i]
                    .iter()
                    .zip(rows[j])
                    .map(|(a, b)| (a * b) as f64)
                    .sum();
                st.token_cosine += dot / (norm(rows[i]) * norm(rows[j])).max(1e-30);
                pairs += 1;
            }
        }
        st.token_cosine /= pairs.max(1) as f64;
        st.token_grad_norm = norm(token_grads);
        st
    }
}

/// `[batch, m]`: how many real tokens each combination token received, from the
/// `[batch][n]` assignment (-1 = padding).
pub fn group_counts(assign: &[Vec<i64>], m: usize) -> Vec<u32> {
    let mut counts = vec![0u32; assign.len() * m];
    for (b, row) in assign.iter().enumerate() {
        for &g in row.iter().filter(|&&g| g >= 0) {
            counts[b * m + g as usize] += 1;
        }
    }
    counts
}
