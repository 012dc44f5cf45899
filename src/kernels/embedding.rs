//! Embedding lookup and its scatter-add backward.

/// `out[r] = table[ids[r]]` for each row r; `out` is `[ids.len(), dim]`, overwritten.
pub fn embedding_forward(ids: &[u32], table: &[f32], dim: usize, out: &mut [f32]) {
    let _ = (ids, table, dim, out);
    todo!("kernels helper")
}

/// `dtable[ids[r]] += dout[r]` for each row r with `row_mask[r]` (padding rows skipped).
pub fn embedding_backward(
    ids: &[u32],
    row_mask: &[bool],
    dout: &[f32],
    dim: usize,
    dtable: &mut [f32],
) {
    let _ = (ids, row_mask, dout, dim, dtable);
    todo!("kernels helper")
}
