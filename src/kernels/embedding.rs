//! Embedding lookup and its scatter-add backward.

use rayon::prelude::*;

/// `out[r] = table[ids[r]]` for each row r; `out` is `[ids.len(), dim]`, overwritten.
pub fn embedding_forward(ids: &[u32], table: &[f32], dim: usize, out: &mut [f32]) {
    let vocab = table.len() / dim;
    out[..ids.len() * dim]
        .par_chunks_mut(dim)
        .zip(ids.par_iter())
        .for_each(|(row, &id)| {
            let id = id as usize;
            assert!(
                id < vocab,
                "embedding_forward: id {id} outside table of {vocab} rows"
            );
            row.copy_from_slice(&table[id * dim..(id + 1) * dim]);
        });
}

/// `dtable[ids[r]] += dout[r]` for each row r with `row_mask[r]` (padding rows skipped).
pub fn embedding_backward(
    ids: &[u32],
    row_mask: &[bool],
    dout: &[f32],
    dim: usize,
    dtable: &mut [f32],
) {
    // Serial on purpose: rows may repeat an id, and a fixed summation order keeps the
    // result deterministic. The work (rows x dim adds) is negligible next to the layers.
    assert_eq!(
        ids.len(),
        row_mask.len(),
        "embedding_backward: ids vs row_mask"
    );
    let vocab = dtable.len() / dim;
    for (r, (&id, &keep)) in ids.iter().zip(row_mask).enumerate() {
        if !keep {
            continue;
        }
        let id = id as usize;
        assert!(
            id < vocab,
            "embedding_backward: id {id} outside table of {vocab} rows"
        );
        let src = &dout[r * dim..(r + 1) * dim];
        for (d, &g) in dtable[id * dim..(id + 1) * dim].iter_mut().zip(src) {
            *d += g;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::{assert_grad_close, dot, numeric_grad, random_vec, to_f64};

    fn embedding_ref(ids: &[u32], row_mask: &[bool], table: &[f64], dim: usize) -> Vec<f64> {
        // Masked rows still look up (forward ignores the mask); the test's loss weights
        // them by zero through `row_mask` to mirror what the model does with padding.
        let mut out = Vec::new();
        for (&id, &keep) in ids.iter().zip(row_mask) {
            let w = if keep { 1.0 } else { 0.0 };
            out.extend(
                table[id as usize * dim..(id as usize + 1) * dim]
                    .iter()
                    .map(|v| v * w),
            );
        }
        out
    }

    #[test]
    fn forward_copies_rows() {
        let (vocab, dim) = (7, 5);
        let table = random_vec(1, vocab * dim, 1.0);
        let ids = [3u32, 0, 6, 3];
        let mut out = vec![f32::NAN; ids.len() * dim];
        embedding_forward(&ids, &table, dim, &mut out);
        for (r, &id) in ids.iter().enumerate() {
            assert_eq!(
                &out[r * dim..(r + 1) * dim],
                &table[id as usize * dim..(id as usize + 1) * dim]
            );
        }
    }

    #[test]
    fn backward_matches_finite_differences_and_skips_padding() {
        let (vocab, dim) = (6, 4);
        let table = random_vec(2, vocab * dim, 1.0);
        // Repeated ids accumulate; the masked row (id 5) must contribute nothing.
        let ids = [1u32, 4, 1, 5, 0, 4, 1];
        let row_mask = [true, true, true, false, true, true, true];
        let c = random_vec(3, ids.len() * dim, 1.0);
        let mut dtable = vec![0.5f32; vocab * dim]; // accumulates onto existing values
        embedding_backward(&ids, &row_mask, &c, dim, &mut dtable);
        let want = numeric_grad(
            |t| dot(&c, &embedding_ref(&ids, &row_mask, t, dim)),
            &to_f64(&table),
            1e-4,
        );
        let want_acc: Vec<f64> = want.iter().map(|w| w + 0.5).collect();
        assert_grad_close("embedding dtable", &dtable, &want_acc, 1e-6);
        // Rows 2, 3 (never used unmasked) and 5 (only masked) keep exactly the old value.
        for id in [2usize, 3, 5] {
            assert!(dtable[id * dim..(id + 1) * dim].iter().all(|&v| v == 0.5));
        }
    }
}
