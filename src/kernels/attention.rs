//! Multi-head self-attention whose keys/values are a gathered subset of rows.
//!
//! Layout: `q` is `[B, q_len, H*dh]`; `k`, `v` are `[B, kv_len, H*dh]` where `kv_len` is
//! the largest kept count in the batch and example `b` uses only its first `kv_count[b]`
//! slots (the rest are masked out). Head `h` occupies columns `h*dh .. (h+1)*dh`.
//!
//! Both passes run one rayon task per (example, head) pair; each task uses serial
//! products on views of its head's columns (K and V copied contiguous or transposed
//! first, where a product reads them for every query block) and writes its results
//! straight into its column block of the interleaved `[B, len, H*dh]` outputs
//! (`HeadColumns`).
//!
//! Within a task, queries are processed in blocks of `ROW_BLOCK` rows: the block's
//! `[rows, kv]` scores go through softmax, the stored copy, importance and dropout while
//! they are in L2, instead of as whole `[q_len, kv]` planes (1 MiB at 512 x 512) that
//! each elementwise pass would stream from memory again.

use super::dropout::Mask;
use super::fastmath::{exp2_f32, simd_fn, SubnormalsAsZero};
use super::matmul::MatRef;
use rayon::prelude::*;
use std::cell::RefCell;
use tiles::{matmul_tiles, matmul_tiles_fetching, pack_transposed, LineFetch};

mod tiles;

/// Query rows per block: a `[64, 512]` f32 score block is 128 KiB, so it and its
/// companion block (backward) stay in a 512 KiB L2 with room for K and V.
const ROW_BLOCK: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    pub batch: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub heads: usize,
    pub head_dim: usize,
}

/// The queries (`[B, q_len, H*dh]`), keys and values (`[B, kv_len, H*dh]`) of
/// [`attention_forward`], with their rows `q_stride` and `kv_stride` floats apart: `H*dh`
/// for separate buffers, more where the projections were one product whose output holds
/// them side by side (`[rows, 3·H*dh]` for Q, K and V).
#[derive(Clone, Copy)]
pub struct Qkv<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub q_stride: usize,
    pub kv_stride: usize,
}

impl<'a> Qkv<'a> {
    /// Three separate `[rows, width]` buffers.
    pub fn dense(q: &'a [f32], k: &'a [f32], v: &'a [f32], width: usize) -> Self {
        Qkv {
            q,
            k,
            v,
            q_stride: width,
            kv_stride: width,
        }
    }
}

/// Dropout on the attention probabilities (training only). The mask of probability
/// element `((b*H + h)*q_len + i)*kv_len + j` is
/// `dropout::mask_uniform(seed, that index) < p`.
#[derive(Clone, Copy, Debug)]
pub struct AttnDropout {
    pub p: f32,
    pub seed: u64,
}

/// Importance scores requested from the forward pass (method.md): for each example b,
/// head h and key slot j, `out[(b*H + h)*kv_len + j]` = `Σ_i w[b,i] P[b,h,i,j] / Σ_i w[b,i]`,
/// with `query_weight` `[B, q_len]` = 1 for real embedded tokens and 0 for padding and
/// combination tokens, and P the probabilities before dropout.
pub struct Importance<'a> {
    pub query_weight: &'a [f32],
    pub out: &'a mut [f32],
}

/// Key slots hidden from some queries: query rows `0 .. query_rows` of every example do
/// not see its last `hidden_slots` valid slots (their probabilities are 0 there), the
/// rows after them see every valid slot. The combiner's tokens use it to read the
/// document in the layers before the combiner without being read by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HiddenKeys {
    pub query_rows: usize,
    pub hidden_slots: usize,
}

/// Forward. `ctx` (`[B, q_len, H*dh]`) is overwritten with dropout(P)·V where
/// P = softmax(scale · q kᵀ) over the valid slots. When `probs` is given
/// (`[B, H, q_len, kv_len]`), P (before dropout, masked slots 0) is stored there for the
/// backward pass, negated where dropout drops the element (P >= 0, so the sign carries
/// the mask: the backward reads it instead of hashing every element again); without it
/// the kernel keeps only per-thread scratch (inference). With `hidden`, the rows it
/// names attend over their example's other slots only (see [`HiddenKeys`]); the backward
/// needs no such argument, as the stored P is 0 on the hidden slots.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(
    d: AttnDims,
    qkv: Qkv,
    kv_count: &[usize],
    scale: f32,
    dropout: Option<AttnDropout>,
    probs: Option<&mut [f32]>,
    ctx: &mut [f32],
    importance: Option<Importance>,
    hidden: Option<HiddenKeys>,
) {
    d.check_inputs(qkv, kv_count);
    let AttnDims {
        batch,
        q_len,
        kv_len,
        heads,
        head_dim,
    } = d;
    let width = heads * head_dim;
    let tasks = batch * heads;
    let plane = q_len * kv_len;
    assert_eq!(
        ctx.len(),
        batch * q_len * width,
        "attention_forward: ctx length"
    );
    // The softmax takes the row max of the unscaled scores, valid for scale > 0.
    assert!(
        scale > 0.0,
        "attention_forward: scale {scale} must be positive"
    );
    let dropout = dropout.filter(|dr| dr.p > 0.0);

    let probs_slots = probs_slots(probs, tasks, plane);
    let (query_weight, importance_slots) = importance_slots(importance, d);
    if tasks == 0 || q_len == 0 || head_dim == 0 {
        return;
    }
    if kv_len == 0 {
        // Nothing to attend to anywhere: ctx is zero, probs and importance are empty.
        ctx.fill(0.0);
        return;
    }

    let ctx_out = HeadColumns::new(ctx, q_len, heads, head_dim);
    probs_slots
        .into_par_iter()
        .zip(importance_slots.into_par_iter())
        .enumerate()
        .for_each(|(bh, (mut probs_bh, importance_bh))| {
            with_scratch(|scratch| {
                // Probabilities below 2^-126 are 0 (see `SubnormalsAsZero`).
                let _flush = SubnormalsAsZero::new();
                let (b, h) = (bh / heads, bh % heads);
                let kvc = kv_count[b];
                let view = HeadViews::new(d, qkv, b, h, kvc);
                let mask = dropout.map(|dr| Mask::new(dr.p, dr.seed));
                let plane_base = (bh * plane) as u64;
                // Score blocks have rows of `stride` >= kvc floats (see `pack_transposed`).
                let stride = padded_len(kvc);
                pack_transposed(view.k, stride, &mut scratch.packed);
                copy_head_rows(view.v, &mut scratch.head_rows);
                // Importance: per-slot sums of w_i P_ij over the rows with w_i != 0.
                let mut importance_acc = query_weight.zip(importance_bh).map(|(w, out)| {
                    scratch.acc.clear();
                    scratch.acc.resize(kvc, 0.0);
                    scratch.block_acc.clear();
                    scratch.block_acc.resize(kvc, 0.0);
                    (&w[b * q_len..(b + 1) * q_len], out)
                });
                let mut weight_total = 0.0f64;

                for i0 in (0..q_len).step_by(ROW_BLOCK) {
                    let rows = ROW_BLOCK.min(q_len - i0);
                    // The block's probabilities (row stride `stride`): scores, then
                    // exponentials, then dropout, all in place.
                    let bufs = scratch.buffers(rows * stride, rows * head_dim);
                    let (block, ctx_rows, staged) = (bufs.a, bufs.out, &mut bufs.b[..kvc]);
                    let kt = MatRef::strided(bufs.packed, head_dim, stride, stride);
                    matmul_tiles(block, stride, view.q.rows_from(i0, rows), kt, false);
                    // Row r of the block ends up as e^(s - max) (through the dropout
                    // mask): the 1/Σ normalisation is applied to the dh-wide ctx row
                    // instead, and to the stored copy of P while it is written.
                    let mut inv_sums = [0.0f32; ROW_BLOCK];
                    for (r, inv_sum) in inv_sums.iter_mut().enumerate().take(rows) {
                        let i = i0 + r;
                        let row = &mut block[r * stride..r * stride + kvc];
                        let seen = match hidden {
                            Some(hk) if i < hk.query_rows => kvc - hk.hidden_slots.min(kvc),
                            _ => kvc,
                        };
                        let (visible, unseen) = row.split_at_mut(seen);
                        let sum = exp_shifted_sum(visible, scale);
                        unseen.fill(0.0);
                        // sum >= 1 (the max contributes e^0) unless the row is empty.
                        let inv = if seen == 0 { 0.0 } else { 1.0 / sum };
                        *inv_sum = inv;
                        if let Some((w, _)) = &importance_acc {
                            let wi = w[i];
                            if wi != 0.0 {
                                weight_total += wi as f64;
                                accumulate_scaled(bufs.block_acc, row, wi * inv);
                            }
                        }
                        let base = plane_base + (i * kv_len) as u64;
                        match (probs_bh.as_deref_mut(), mask) {
                            (Some(p), mask) => {
                                let stored = &mut p[i * kv_len..(i + 1) * kv_len];
                                stored[kvc..].fill(0.0);
                                // Staged in L1, then streamed past the caches: the
                                // backward reads P long after, and a plain store would
                                // first read each line it writes (P is 100 MB per layer
                                // at MiniLM 8 x 512).
                                match mask {
                                    Some(mask) => {
                                        mask.store_signed_and_apply(row, inv, staged, base)
                                    }
                                    None => store_scaled(row, inv, staged),
                                }
                                stream_into(staged, &mut stored[..kvc]);
                            }
                            (None, Some(mask)) => mask.apply(row, base),
                            (None, None) => {}
                        }
                    }
                    if importance_acc.is_some() {
                        add_block_sums(bufs.acc, bufs.block_acc);
                    }
                    // ctx rows = P_drop · V / Σ; with kvc = 0 this writes zeros.
                    matmul_tiles(
                        ctx_rows,
                        head_dim,
                        MatRef::strided(block, rows, kvc, stride),
                        MatRef::new(&bufs.head_rows[..kvc * head_dim], kvc, head_dim),
                        false,
                    );
                    // SAFETY: this task is the only one for (b, h).
                    unsafe { ctx_out.write_rows(b, h, i0, ctx_rows, Some(&inv_sums[..rows])) };
                }
                if let Some((_, out)) = importance_acc.take() {
                    finish_importance(out, &scratch.acc[..kvc], weight_total);
                }
                // The streaming stores are weakly ordered: complete them before the task
                // ends (rayon's join then publishes them to whichever thread reads P or
                // ctx).
                stream_fence();
            })
        });
}

/// `dst = src`, the bulk of it with non-temporal (streaming) stores (AVX-512 where the
/// GEMM uses it, else AVX2): lines of `dst` are written without being read first or
/// kept in cache. Call [`stream_fence`] before other threads may read `dst`.
fn stream_into(src: &[f32], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "stream_into: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::gemm_x86::available() {
        // Up to the first 64-byte boundary of dst plainly, then whole vectors.
        let head = (dst.as_ptr().align_offset(64)).min(dst.len());
        dst[..head].copy_from_slice(&src[..head]);
        let body = (dst.len() - head) / 16 * 16;
        let (src_body, dst_body) = (&src[head..head + body], &mut dst[head..head + body]);
        // SAFETY: AVX-512F (`Isa::best`) or AVX2 (`available`) is present; the loops read
        // src[head..head + body] and write dst[head..head + body], in bounds, dst 64-byte
        // aligned there.
        unsafe {
            if crate::kernels::gemm_x86::Isa::best() == crate::kernels::gemm_x86::Isa::Avx512 {
                stream_avx512(src_body, dst_body)
            } else {
                stream_avx2(src_body, dst_body)
            }
        };
        dst[head + body..].copy_from_slice(&src[head + body..]);
        return;
    }
    dst.copy_from_slice(src);
}

/// # Safety
/// AVX2 is available; `dst` is 32-byte aligned and as long as `src`, a multiple of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn stream_avx2(src: &[f32], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    for (s, d) in src.chunks_exact(8).zip(dst.chunks_exact_mut(8)) {
        _mm256_stream_ps(d.as_mut_ptr(), _mm256_loadu_ps(s.as_ptr()));
    }
}

/// # Safety
/// AVX-512F is available; `dst` is 64-byte aligned and as long as `src`, a multiple of 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn stream_avx512(src: &[f32], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    for (s, d) in src.chunks_exact(16).zip(dst.chunks_exact_mut(16)) {
        _mm512_stream_ps(d.as_mut_ptr(), _mm512_loadu_ps(s.as_ptr()));
    }
}

/// Orders this thread's earlier streaming stores before its later stores.
fn stream_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86_64.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

/// The optional `[B, H, q_len, kv_len]` probabilities split into one slot per (b, h) task
/// (`None` slots without them).
fn probs_slots(probs: Option<&mut [f32]>, tasks: usize, plane: usize) -> Vec<Option<&mut [f32]>> {
    let mut slots: Vec<Option<&mut [f32]>> = match probs {
        Some(p) => {
            assert_eq!(p.len(), tasks * plane, "attention_forward: probs length");
            p.chunks_mut(plane.max(1)).map(Some).collect()
        }
        None => Vec::new(),
    };
    slots.resize_with(tasks, || None);
    slots
}

/// The optional importance output split into one `[kv_len]` slot per (b, h) task, with
/// the query weights it is computed with.
fn importance_slots(
    importance: Option<Importance<'_>>,
    d: AttnDims,
) -> (Option<&[f32]>, Vec<Option<&mut [f32]>>) {
    let tasks = d.batch * d.heads;
    let (query_weight, mut slots): (Option<&[f32]>, Vec<Option<&mut [f32]>>) = match importance {
        Some(imp) => {
            assert_eq!(
                imp.query_weight.len(),
                d.batch * d.q_len,
                "attention_forward: query_weight length"
            );
            assert_eq!(
                imp.out.len(),
                tasks * d.kv_len,
                "attention_forward: importance length"
            );
            (
                Some(imp.query_weight),
                imp.out.chunks_mut(d.kv_len.max(1)).map(Some).collect(),
            )
        }
        None => (None, Vec::new()),
    };
    slots.resize_with(tasks, || None);
    (query_weight, slots)
}

/// Writes one task's importance: the accumulated `sum_i w_i P_ij` over the valid slots
/// divided by the total weight, zero on the masked slots.
fn finish_importance(out: &mut [f32], acc: &[f64], weight_total: f64) {
    let inv = if weight_total == 0.0 {
        0.0
    } else {
        1.0 / weight_total
    };
    let kvc = acc.len();
    for (o, &a) in out[..kvc].iter_mut().zip(acc) {
        *o = (a * inv) as f32;
    }
    out[kvc..].fill(0.0);
}

/// Backward. `dq` (`[B, q_len, H*dh]`), `dk`, `dv` (`[B, kv_len, H*dh]`) are
/// overwritten; masked slots get zero gradient.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    d: AttnDims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    kv_count: &[usize],
    scale: f32,
    dropout: Option<AttnDropout>,
    probs: &[f32],
    dctx: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let width = d.heads * d.head_dim;
    let qkv = Qkv::dense(q, k, v, width);
    d.check_inputs(qkv, kv_count);
    let AttnDims {
        batch,
        q_len,
        kv_len,
        heads,
        head_dim,
    } = d;
    let width = heads * head_dim;
    let tasks = batch * heads;
    let plane = q_len * kv_len;
    assert_eq!(
        probs.len(),
        tasks * plane,
        "attention_backward: probs length"
    );
    assert_eq!(
        dctx.len(),
        batch * q_len * width,
        "attention_backward: dctx length"
    );
    assert_eq!(dq.len(), q.len(), "attention_backward: dq length");
    assert_eq!(dk.len(), k.len(), "attention_backward: dk length");
    assert_eq!(dv.len(), v.len(), "attention_backward: dv length");
    if tasks == 0 || q_len == 0 || kv_len == 0 || head_dim == 0 {
        dq.fill(0.0);
        dk.fill(0.0);
        dv.fill(0.0);
        return;
    }
    let dropout = dropout.filter(|dr| dr.p > 0.0);

    let dq_out = HeadColumns::new(dq, q_len, heads, head_dim);
    let dk_out = HeadColumns::new(dk, kv_len, heads, head_dim);
    let dv_out = HeadColumns::new(dv, kv_len, heads, head_dim);
    (0..tasks).into_par_iter().for_each(|bh| {
        with_scratch(|scratch| {
            let _flush = SubnormalsAsZero::new();
            let (b, h) = (bh / heads, bh % heads);
            let kvc = kv_count[b];
            let view = HeadViews::new(d, qkv, b, h, kvc);
            let dctx_h = MatRef::strided(
                &dctx[b * q_len * width + h * head_dim..],
                q_len,
                head_dim,
                width,
            );
            let p_plane = &probs[bh * plane..(bh + 1) * plane];
            let keep_scale = dropout.map(|dr| 1.0 / (1.0 - dr.p));
            let stride = padded_len(kvc);
            pack_transposed(view.v, stride, &mut scratch.packed);
            copy_head_rows(view.k, &mut scratch.head_rows);
            // dK and dV of this head, summed over the query blocks: [kv_len, dh], the
            // rows past kvc zero. (Taken out of the scratch while its blocks are in use.)
            let (mut dk_h, mut dv_h) = scratch.take_key_grads(kv_len * head_dim);

            for i0 in (0..q_len).step_by(ROW_BLOCK) {
                let rows = ROW_BLOCK.min(q_len - i0);
                let first = i0 == 0;
                let p_rows = &p_plane[i0 * kv_len..];
                let dctx_blk = dctx_h.rows_from(i0, rows);
                let bufs = scratch.buffers(rows * stride, rows * head_dim);
                let (pd_buf, ds_buf, dq_rows) = (bufs.a, bufs.b, bufs.out);
                let vt = MatRef::strided(bufs.packed, head_dim, stride, stride);
                // The next block's stored P, fetched into L2 while this block's products
                // run: read from memory when its turn comes, it kept the first pass
                // over it waiting. `bench --profile` at 8 x 512: attention's backward
                // 0.209-0.215 -> 0.195-0.206 s per training step (four alternating
                // rounds, docs/results.md).
                let next_rows = ROW_BLOCK.min(q_len - i0 - rows);
                let next_p = &p_plane[(i0 + rows) * kv_len..(i0 + rows + next_rows) * kv_len];
                let mut fetch = LineFetch::of(next_p);
                // dP_drop = dctx · Vᵀ   [rows, kvc] (row stride `stride`)
                matmul_tiles_fetching(ds_buf, stride, dctx_blk, vt, false, &mut fetch);
                // dS = scale (P_drop ⊙ dP_drop - P Σ_j P_drop dP_drop), row by row, with
                // P_drop (the stored P where its sign says kept, scaled) made in the
                // same pass over the stored row.
                for r in 0..rows {
                    let p_row = &p_rows[r * kv_len..r * kv_len + kvc];
                    let ds_row = &mut ds_buf[r * stride..r * stride + kvc];
                    match keep_scale {
                        Some(keep_scale) => {
                            let pd_row = &mut pd_buf[r * stride..r * stride + kvc];
                            kept_softmax_grad_row(p_row, keep_scale, pd_row, ds_row, scale);
                        }
                        None => softmax_grad_row(p_row, p_row, ds_row, scale),
                    }
                }
                let p_drop = match keep_scale {
                    Some(_) => MatRef::strided(pd_buf, rows, kvc, stride),
                    None => MatRef::strided(p_rows, rows, kvc, kv_len),
                };
                // dV += P_dropᵀ · dctx   [kvc, dh]
                matmul_tiles_fetching(
                    &mut dv_h,
                    head_dim,
                    p_drop.t(),
                    dctx_blk,
                    !first,
                    &mut fetch,
                );
                let ds = MatRef::strided(ds_buf, rows, kvc, stride);
                // dQ rows = dS · K   [rows, dh]; with kvc = 0 this writes zeros.
                let k_rows = MatRef::new(&bufs.head_rows[..kvc * head_dim], kvc, head_dim);
                matmul_tiles_fetching(dq_rows, head_dim, ds, k_rows, false, &mut fetch);
                // SAFETY: this task is the only one for (b, h).
                unsafe { dq_out.write_rows(b, h, i0, dq_rows, None) };
                // dK += dSᵀ · Q rows   [kvc, dh]
                let q_rows = view.q.rows_from(i0, rows);
                matmul_tiles_fetching(&mut dk_h, head_dim, ds.t(), q_rows, !first, &mut fetch);
            }
            // SAFETY: this task is the only one for (b, h).
            unsafe {
                dk_out.write_rows(b, h, 0, &dk_h, None);
                dv_out.write_rows(b, h, 0, &dv_h, None);
            }
            scratch.dk = dk_h;
            scratch.dv = dv_h;
            // Complete the streaming stores (`HeadColumns`) before the task ends.
            stream_fence();
        })
    });
}

impl AttnDims {
    fn check_inputs(&self, qkv: Qkv, kv_count: &[usize]) {
        let width = self.heads * self.head_dim;
        // Rows `stride` apart, the last one `width` long.
        let holds = |len: usize, rows: usize, stride: usize| {
            stride >= width && (rows == 0 || width == 0 || len >= (rows - 1) * stride + width)
        };
        let q_rows = self.batch * self.q_len;
        let kv_rows = self.batch * self.kv_len;
        assert!(
            holds(qkv.q.len(), q_rows, qkv.q_stride),
            "attention: q length"
        );
        assert!(
            holds(qkv.k.len(), kv_rows, qkv.kv_stride),
            "attention: k length"
        );
        assert!(
            holds(qkv.v.len(), kv_rows, qkv.kv_stride),
            "attention: v length"
        );
        assert_eq!(kv_count.len(), self.batch, "attention: kv_count length");
        for (b, &c) in kv_count.iter().enumerate() {
            assert!(
                c <= self.kv_len,
                "attention: kv_count[{b}] = {c} > kv_len {}",
                self.kv_len
            );
        }
    }
}

/// `out` = the rows of `m` (a head's `[kvc, dh]` slice of K or V, rows `H*dh` apart),
/// contiguous: the products that read all of them for every query block, P·V and dS·K,
/// then stream one array instead of short pieces of rows 1.5 KiB apart (a new page every
/// few rows, where the hardware prefetchers stop). `attention_speed` at 8 x 512 on one
/// thread: 2-3% less time per call, forward and backward.
fn copy_head_rows(m: MatRef, out: &mut Vec<f32>) {
    let (rows, cols) = (m.rows, m.cols);
    debug_assert_eq!(m.col_stride, 1, "copy_head_rows: head slices are row-major");
    if cols == 0 {
        return;
    }
    // Every element up to rows * cols is written below; readers take only those.
    for (r, dst) in grown(out, rows * cols).chunks_exact_mut(cols).enumerate() {
        let start = r * m.row_stride;
        copy_head_row(dst, &m.data[start..start + cols]);
    }
}

/// Strided views of one (example, head): `q` is `[q_len, dh]`, `k` and `v` are the
/// first `kvc` slots, `[kvc, dh]`.
struct HeadViews<'a> {
    q: MatRef<'a>,
    k: MatRef<'a>,
    v: MatRef<'a>,
}

impl<'a> HeadViews<'a> {
    fn new(d: AttnDims, qkv: Qkv<'a>, b: usize, h: usize, kvc: usize) -> Self {
        let col = h * d.head_dim;
        let q_start = b * d.q_len * qkv.q_stride + col;
        let kv_start = b * d.kv_len * qkv.kv_stride + col;
        HeadViews {
            q: MatRef::strided(&qkv.q[q_start..], d.q_len, d.head_dim, qkv.q_stride),
            k: MatRef::strided(&qkv.k[kv_start..], kvc, d.head_dim, qkv.kv_stride),
            v: MatRef::strided(&qkv.v[kv_start..], kvc, d.head_dim, qkv.kv_stride),
        }
    }
}

/// Row-block views of untransposed matrices (`MatRef` belongs to the matmul seam, so
/// the slicing lives here).
trait RowsFrom<'a> {
    fn rows_from(self, first: usize, rows: usize) -> MatRef<'a>;
}

impl<'a> RowsFrom<'a> for MatRef<'a> {
    /// Rows `first .. first + rows`.
    fn rows_from(self, first: usize, rows: usize) -> MatRef<'a> {
        assert!(
            first + rows <= self.rows,
            "attention: row block out of range"
        );
        MatRef {
            data: &self.data[first * self.row_stride..],
            rows,
            ..self
        }
    }
}

thread_local! {
    /// Each thread's attention scratch, kept from call to call: a fresh one per call and
    /// rayon split (as `for_each_init` made) was an allocation and a zero fill of every
    /// buffer each time, about 15% of attention's time at a 1 x 128 request on two
    /// threads (`bench --profile`).
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's [`Scratch`]. The tasks that use it run no parallel work
/// themselves, so a thread never re-enters it.
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|s| f(&mut s.borrow_mut()))
}

/// Per-task scratch, reused across the tasks (and calls) a thread runs; its buffers hold
/// the last task's values, so every use writes before it reads.
#[derive(Default)]
struct Scratch {
    a: Vec<f32>,
    b: Vec<f32>,
    /// Output rows of one block, `[rows, dh]`.
    out: Vec<f32>,
    /// A head's K or V, transposed and padded (`pack_transposed`).
    packed: Vec<f32>,
    /// A head's V (forward) or K (backward) rows, contiguous (`copy_head_rows`).
    head_rows: Vec<f32>,
    /// Importance sums over all query blocks so far.
    acc: Vec<f64>,
    /// Importance sums over the current query block.
    block_acc: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

/// Disjoint borrows of the scratch buffers for one query block.
struct BlockBuffers<'s> {
    a: &'s mut [f32],
    b: &'s mut [f32],
    out: &'s mut [f32],
    packed: &'s [f32],
    head_rows: &'s [f32],
    acc: &'s mut [f64],
    block_acc: &'s mut [f32],
}

fn grown(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

impl Scratch {
    /// Score blocks `a`, `b` of `block` floats and output rows of `out` floats.
    fn buffers(&mut self, block: usize, out: usize) -> BlockBuffers<'_> {
        BlockBuffers {
            a: grown(&mut self.a, block),
            b: grown(&mut self.b, block),
            out: grown(&mut self.out, out),
            packed: &self.packed,
            head_rows: &self.head_rows,
            acc: &mut self.acc,
            block_acc: &mut self.block_acc,
        }
    }

    /// Zeroed dK and dV accumulators of `len` floats, moved out of the scratch (the
    /// caller puts them back).
    fn take_key_grads(&mut self, len: usize) -> (Vec<f32>, Vec<f32>) {
        let mut dk = std::mem::take(&mut self.dk);
        let mut dv = std::mem::take(&mut self.dv);
        for buf in [&mut dk, &mut dv] {
            buf.clear();
            buf.resize(len, 0.0);
        }
        (dk, dv)
    }
}

/// An output `[B, len, H*dh]` that the (example, head) tasks fill concurrently, each
/// its own column block `h*dh .. (h+1)*dh` of example b's rows. The blocks interleave
/// in memory, so no task can hold a `&mut` sub-slice; tasks write through a raw
/// pointer instead, to disjoint elements.
struct HeadColumns<'a> {
    ptr: *mut f32,
    len: usize,
    rows: usize,
    heads: usize,
    head_dim: usize,
    /// Whether rows are written with streaming stores (see [`HeadColumns::new`]).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    stream: bool,
    _out: std::marker::PhantomData<&'a mut [f32]>,
}

/// Outputs at least this large are written with streaming stores: they cannot stay in
/// a core's L2 anyway (2 MiB on the Xeons measured), and a head's 32 floats of a row
/// are two whole cache lines, which a plain store first reads from memory.
const STREAM_OUTPUT_BYTES: usize = 4 << 20;

// SAFETY: the pointer comes from a `&'a mut [f32]` that the struct borrows for 'a, and
// `write_rows` requires callers to write disjoint elements from different threads.
unsafe impl Send for HeadColumns<'_> {}
unsafe impl Sync for HeadColumns<'_> {}

impl<'a> HeadColumns<'a> {
    /// `out` is `[batch, rows, heads * head_dim]`. Large outputs (training batches) are
    /// written past the caches where every head's row is whole cache lines (AVX2 or AVX-512,
    /// `out` 64-byte aligned, `head_dim` a multiple of 16): each (b, h) task writes two
    /// lines of every 1.5 KiB row at MiniLM, and plain stores read each line from
    /// memory first. `bench --profile` at 8 x 512, training: attention's forward
    /// 0.130-0.134 -> 0.126-0.128 s and backward 0.210-0.219 -> 0.200-0.204 s per step
    /// (three alternating rounds, docs/results.md); the products that read these
    /// outputs next were no slower. Writers must call [`stream_fence`] before their task
    /// ends.
    fn new(out: &'a mut [f32], rows: usize, heads: usize, head_dim: usize) -> Self {
        let large = std::mem::size_of_val(out) >= STREAM_OUTPUT_BYTES;
        Self::streaming_if(large, out, rows, heads, head_dim)
    }

    /// [`HeadColumns::new`], streaming where `wanted` and the CPU and layout allow it.
    fn streaming_if(
        wanted: bool,
        out: &'a mut [f32],
        rows: usize,
        heads: usize,
        head_dim: usize,
    ) -> Self {
        #[cfg(target_arch = "x86_64")]
        let can_stream = crate::kernels::gemm_x86::available();
        #[cfg(not(target_arch = "x86_64"))]
        let can_stream = false;
        let stream = wanted
            && can_stream
            && head_dim > 0
            && head_dim.is_multiple_of(16)
            && out.as_ptr().align_offset(64) == 0;
        HeadColumns {
            ptr: out.as_mut_ptr(),
            len: out.len(),
            rows,
            heads,
            head_dim,
            stream,
            _out: std::marker::PhantomData,
        }
    }

    /// Writes `src` (`[n, dh]`, dense) into rows `first .. first + n` of example `b`,
    /// columns of head `h`, each row multiplied by `row_scale[r]` when given.
    ///
    /// # Safety
    /// No other thread may write the same (b, h) column block concurrently (each
    /// (b, h) belongs to one task).
    unsafe fn write_rows(
        &self,
        b: usize,
        h: usize,
        first: usize,
        src: &[f32],
        row_scale: Option<&[f32]>,
    ) {
        let dh = self.head_dim;
        let n = src.len() / dh.max(1);
        let width = self.heads * dh;
        assert!(
            h < self.heads && first + n <= self.rows,
            "attention: rows out of range"
        );
        let start = (b * self.rows + first) * width + h * dh;
        assert!(
            n == 0 || start + (n - 1) * width + dh <= self.len,
            "attention: output too small"
        );
        #[cfg(target_arch = "x86_64")]
        if self.stream {
            // SAFETY: AVX-512F (`Isa::best`) or AVX2 (`streaming_if`) is present and
            // every row starts on a cache line (`new`: the base is aligned, and start and
            // width are multiples of 16 floats as dh is); rows in bounds and disjoint as
            // below.
            if crate::kernels::gemm_x86::Isa::best() == crate::kernels::gemm_x86::Isa::Avx512 {
                stream_rows_avx512(self.ptr.add(start), width, dh, src, row_scale);
            } else {
                stream_rows_avx2(self.ptr.add(start), width, dh, src, row_scale);
            }
            return;
        }
        for (r, src_row) in src.chunks_exact(dh).enumerate() {
            // SAFETY: in bounds by the assertions above; disjoint from other tasks'
            // writes by the caller's contract, and nothing reads `out` meanwhile.
            let dst = std::slice::from_raw_parts_mut(self.ptr.add(start + r * width), dh);
            match row_scale {
                Some(scale) => {
                    for (d, &x) in dst.iter_mut().zip(src_row) {
                        *d = x * scale[r];
                    }
                }
                None => copy_head_row(dst, src_row),
            }
        }
    }
}

/// Row r of `src` (`[n, dh]`, dense; dh a multiple of 16), times `row_scale[r]` when
/// given, streamed to `dst + r * width`.
///
/// # Safety
/// AVX-512F is available; each destination row is 64-byte aligned, in bounds and not
/// accessed by other threads meanwhile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn stream_rows_avx512(
    dst: *mut f32,
    width: usize,
    dh: usize,
    src: &[f32],
    row_scale: Option<&[f32]>,
) {
    use std::arch::x86_64::*;
    for (r, src_row) in src.chunks_exact(dh).enumerate() {
        let row = dst.add(r * width);
        for (v, x) in src_row.chunks_exact(16).enumerate() {
            let mut x = _mm512_loadu_ps(x.as_ptr());
            if let Some(scale) = row_scale {
                // The same single rounding as the scalar `x * scale[r]`.
                x = _mm512_mul_ps(x, _mm512_set1_ps(scale[r]));
            }
            _mm512_stream_ps(row.add(16 * v), x);
        }
    }
}

/// [`stream_rows_avx512`] with 8-float vectors.
///
/// # Safety
/// AVX2 is available; each destination row is 32-byte aligned, in bounds and not
/// accessed by other threads meanwhile; dh is a multiple of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn stream_rows_avx2(
    dst: *mut f32,
    width: usize,
    dh: usize,
    src: &[f32],
    row_scale: Option<&[f32]>,
) {
    use std::arch::x86_64::*;
    for (r, src_row) in src.chunks_exact(dh).enumerate() {
        let row = dst.add(r * width);
        for (v, x) in src_row.chunks_exact(8).enumerate() {
            let mut x = _mm256_loadu_ps(x.as_ptr());
            if let Some(scale) = row_scale {
                // The same single rounding as the scalar `x * scale[r]`.
                x = _mm256_mul_ps(x, _mm256_set1_ps(scale[r]));
            }
            _mm256_stream_ps(row.add(8 * v), x);
        }
    }
}

/// `dst = src` for one head's row: a constant-length copy for the usual head widths,
/// since `copy_from_slice` of a length known only at run time calls libc's `memcpy`,
/// whose call costs about as much as copying 32 floats (the attention backward writes
/// three such rows per query and head).
#[inline(always)]
fn copy_head_row(dst: &mut [f32], src: &[f32]) {
    fn fixed<const N: usize>(dst: &mut [f32], src: &[f32]) {
        let d: &mut [f32; N] = dst.try_into().expect("head row length");
        d.copy_from_slice(src);
    }
    match dst.len() {
        32 => fixed::<32>(dst, src),
        64 => fixed::<64>(dst, src),
        _ => dst.copy_from_slice(src),
    }
}

/// Row stride of score blocks over `kvc` slots: a multiple of 16, so that the products
/// with a packed transposed head (`pack_transposed`) run on whole register tiles, and
/// not a multiple of 256 (1 KiB): rows 2 KiB apart would all map to the same few L1
/// cache sets.
fn padded_len(kvc: usize) -> usize {
    let stride = kvc.div_ceil(16) * 16;
    if stride.is_multiple_of(256) {
        stride + 16
    } else {
        stride
    }
}

/// Lanes of the manual reductions below: 32 independent partial results (two AVX-512 or
/// four AVX2 vectors) let the compiler vectorise them without a chain of dependent
/// instructions (a single running float sum cannot be reordered).
const LANES: usize = 32;

/// `acc[0] op acc[1] op ...` as a tree (halving the lanes each level), which the compiler
/// vectorises: the lanes folded one after another were a chain of 31 dependent scalar
/// instructions per row (a third of the softmax's time at 8 x 512).
#[inline(always)]
fn fold_lanes(mut acc: [f32; LANES], op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for l in 0..width {
            acc[l] = op(acc[l], acc[l + width]);
        }
    }
    acc[0]
}

#[inline(always)]
fn lane_max(x: &[f32]) -> f32 {
    let max = |a: f32, b: f32| if b > a { b } else { a };
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            acc[l] = max(acc[l], c[l]);
        }
    }
    let rest = chunks.remainder();
    if rest.is_empty() || x.len() < LANES {
        return rest.iter().fold(fold_lanes(acc, max), |m, &v| max(m, v));
    }
    // The last LANES elements once more (a maximum does not mind repeats): the rest
    // folded one by one was a chain of up to 31 dependent scalar steps per row, as long
    // as the vector part at pruned key counts (docs/results.md, session 12).
    let last = &x[x.len() - LANES..];
    for l in 0..LANES {
        acc[l] = max(acc[l], last[l]);
    }
    fold_lanes(acc, max)
}

#[inline(always)]
fn lane_sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    fold_lanes(acc, |a, b| a + b) + chunks.remainder().iter().sum::<f32>()
}

#[inline(always)]
fn lane_dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut xc = x.chunks_exact(LANES);
    let mut yc = y.chunks_exact(LANES);
    for (a, b) in (&mut xc).zip(&mut yc) {
        for l in 0..LANES {
            acc[l] += a[l] * b[l];
        }
    }
    let tail: f32 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    fold_lanes(acc, |a, b| a + b) + tail
}

/// In place: `row = e^(scale · (row - max row))`; returns the sum of the new row.
/// (The softmax without its normalisation, which the caller folds into later steps.)
/// Numerically stable: every exponent is <= 0 and the max gives e^0 = 1. With AVX-512,
/// an intrinsics loop (FMA polynomial, `vscalefps` for the power of two, the sum in the
/// same pass): the exponentials took a fifth of attention's time at 8 x 512 and now
/// about a seventh (`examples/attention_speed`, one thread: 41.6-42.5 -> 38.6-39.1 ms;
/// 37.9-38.2 ms with the reduced argument of 5 Dec 2026). With AVX2, the same loop on
/// 8 lanes (docs/results.md, session 28); elsewhere the compiled one.
fn exp_shifted_sum(row: &mut [f32], scale: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::gemm_x86::Isa::best() == super::gemm_x86::Isa::Avx512
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512dq")
    {
        // SAFETY: AVX-512F and DQ were just detected.
        return unsafe { exp_avx512::exp_shifted_sum(row, scale) };
    }
    #[cfg(target_arch = "x86_64")]
    if super::gemm_x86::available() {
        // SAFETY: AVX2 and FMA were detected.
        return unsafe { exp_avx2::exp_shifted_sum(row, scale) };
    }
    exp_shifted_sum_portable(row, scale)
}

#[cfg(target_arch = "x86_64")]
mod exp_avx2 {
    use super::lane_max;
    use std::arch::x86_64::*;

    /// The row's maximum as [`lane_max`] finds it (`x > acc ? x : acc`, so NaNs are
    /// passed over), on four vector accumulators: `lane_max` inlined here compiled to
    /// 64-bit loads into 128-bit registers, some of its accumulators spilled to the
    /// stack, and took a third of this function's samples (`perf record` over
    /// `examples/attention_speed 1` on a Zen 3 core, session 29).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn row_max(row: &[f32]) -> f32 {
        let (n, ptr) = (row.len(), row.as_ptr());
        if n < 32 {
            return lane_max(row);
        }
        let mut acc = [_mm256_set1_ps(f32::NEG_INFINITY); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (v, a) in acc.iter_mut().enumerate() {
                // SAFETY: i + 32 <= n elements of `row`.
                *a = _mm256_max_ps(_mm256_loadu_ps(ptr.add(i + 8 * v)), *a);
            }
            i += 32;
        }
        if i < n {
            // The last 32 once more (a maximum does not mind repeats); n >= 32.
            for (v, a) in acc.iter_mut().enumerate() {
                *a = _mm256_max_ps(_mm256_loadu_ps(ptr.add(n - 32 + 8 * v)), *a);
            }
        }
        let m = _mm256_max_ps(_mm256_max_ps(acc[0], acc[1]), _mm256_max_ps(acc[2], acc[3]));
        let mut lanes = [0.0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), m);
        lanes
            .iter()
            .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a })
    }

    /// See [`super::exp_shifted_sum`]: the AVX-512 loop's arithmetic on 8 lanes (the
    /// same degree-5 polynomial of the reduced argument, the sum in the same pass), with
    /// `floor(a)` from `vroundps` and `2^floor(a)` built in the exponent field. `a` is
    /// first raised to at least -127, whose power of two is the zero pattern: 0 below
    /// 2^-126, as `fastmath::exp2_f32` gives (a NaN stays NaN). On a Zen 3 core the
    /// compiled loop took 2.4% of a 1 x 128 forward pass and 6.8% at 8 x 512 in perf's
    /// samples, with a pass of its own for the sum. Two running sums, so that each
    /// vector's add does not wait on the one before (with `row_max`: one-thread attention
    /// at 8 x 512 from 57.3-73.0 to 54.3-74.6 ms, docs/results.md, session 29).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_shifted_sum(row: &mut [f32], scale: f32) -> f32 {
        if row.is_empty() {
            return 0.0;
        }
        let max = row_max(row);
        let scale2 = scale * std::f32::consts::LOG2_E;
        let (max, scale2) = (_mm256_set1_ps(max), _mm256_set1_ps(scale2));
        let lowest = _mm256_set1_ps(-127.0);
        let bias = _mm256_set1_epi32(127);
        let coef = super::EXP2_FRACTION.map(|c| _mm256_set1_ps(c));
        let exp = |x: __m256| {
            // max(lowest, a) returns a where a is NaN.
            let a = _mm256_max_ps(lowest, _mm256_mul_ps(_mm256_sub_ps(x, max), scale2));
            let k = _mm256_floor_ps(a);
            let r = _mm256_sub_ps(a, k);
            let mut p = coef[0];
            for &c in &coef[1..] {
                p = _mm256_fmadd_ps(p, r, c);
            }
            let two_k = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(k), bias));
            _mm256_mul_ps(p, _mm256_castsi256_ps(two_k))
        };
        let n = row.len();
        let ptr = row.as_mut_ptr();
        let mut sums = [_mm256_setzero_ps(); 2];
        let mut i = 0;
        while i + 16 <= n {
            for (v, sum) in sums.iter_mut().enumerate() {
                // SAFETY: i + 16 <= n elements of `row`.
                let y = exp(_mm256_loadu_ps(ptr.add(i + 8 * v)));
                _mm256_storeu_ps(ptr.add(i + 8 * v), y);
                *sum = _mm256_add_ps(*sum, y);
            }
            i += 16;
        }
        let mut sum = _mm256_add_ps(sums[0], sums[1]);
        while i + 8 <= n {
            // SAFETY: i + 8 <= n elements of `row`.
            let y = exp(_mm256_loadu_ps(ptr.add(i)));
            _mm256_storeu_ps(ptr.add(i), y);
            sum = _mm256_add_ps(sum, y);
            i += 8;
        }
        if i < n {
            // The rest through a full vector whose missing lanes are -inf (e^-inf = 0).
            let mut rest = [f32::NEG_INFINITY; 8];
            rest[..n - i].copy_from_slice(&row[i..]);
            let y = exp(_mm256_loadu_ps(rest.as_ptr()));
            _mm256_storeu_ps(rest.as_mut_ptr(), y);
            row[i..].copy_from_slice(&rest[..n - i]);
            sum = _mm256_add_ps(sum, y);
        }
        let halves = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps::<1>(sum));
        let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
        _mm_cvtss_f32(_mm_add_ss(pairs, _mm_movehdup_ps(pairs)))
    }
}

/// `2^r` for `r` in [0, 1): the coefficients of a degree-5 polynomial, highest first,
/// fitted for relative error (1.5e-7 in f32), with p(0) = 1 (the vector loops').
#[cfg(target_arch = "x86_64")]
const EXP2_FRACTION: [f32; 6] = [
    1.867_344_1e-3,
    9.018_503e-3,
    5.579_671_6e-2,
    2.401_663e-1,
    6.931_51e-1,
    1.0,
];

#[cfg(target_arch = "x86_64")]
mod exp_avx512 {
    use super::lane_max;
    use std::arch::x86_64::*;

    /// See [`super::exp_shifted_sum`]. `a = scale·log2(e)·(x - max)` (the difference
    /// first: it is exact near the max, where the large terms are), then
    /// `2^a = 2^floor(a) · 2^r` with `r = a - floor(a)` in [0, 1) from `vreduceps` and
    /// 2^r from a degree-5 polynomial (fitted for relative error on [0, 1], p(0) = 1;
    /// 1.5e-7 in f32), scaled by `vscalefps`, which takes the floor of `a` itself.
    /// Ten vector operations per 16 elements where `fastmath::exp2_f32`'s steps took
    /// thirteen (the exponentials were 3.5% of an 8 x 512 forward pass). Below
    /// 2^-126 the result is 0 under the attention tasks' `SubnormalsAsZero` (as
    /// `exp2_f32` gives), subnormal or 0 without it.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn exp_shifted_sum(row: &mut [f32], scale: f32) -> f32 {
        if row.is_empty() {
            return 0.0;
        }
        let max = lane_max(row);
        let scale2 = scale * std::f32::consts::LOG2_E;
        let (max, scale2) = (_mm512_set1_ps(max), _mm512_set1_ps(scale2));
        let coef = super::EXP2_FRACTION.map(|c| _mm512_set1_ps(c));
        let exp = |x: __m512| {
            let a = _mm512_mul_ps(_mm512_sub_ps(x, max), scale2);
            let r = _mm512_reduce_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(a);
            let mut p = coef[0];
            for &c in &coef[1..] {
                p = _mm512_fmadd_ps(p, r, c);
            }
            _mm512_scalef_ps(p, a)
        };
        let n = row.len();
        let ptr = row.as_mut_ptr();
        let mut sum = _mm512_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 <= n elements of `row`.
            let y = exp(_mm512_loadu_ps(ptr.add(i)));
            _mm512_storeu_ps(ptr.add(i), y);
            sum = _mm512_add_ps(sum, y);
            i += 16;
        }
        if i < n {
            let mask: __mmask16 = (1u16 << (n - i)) - 1;
            // SAFETY: the mask covers the n - i < 16 elements left; the others are not
            // touched (masked loads and stores do not fault on them).
            let y = _mm512_maskz_mov_ps(mask, exp(_mm512_maskz_loadu_ps(mask, ptr.add(i))));
            _mm512_mask_storeu_ps(ptr.add(i), mask, y);
            sum = _mm512_add_ps(sum, y);
        }
        _mm512_reduce_add_ps(sum)
    }
}

simd_fn! {
    /// [`exp_shifted_sum`] as a compiled loop (where there is no AVX-512).
    fn exp_shifted_sum_portable(row: &mut [f32], scale: f32) -> f32 {
        if row.is_empty() {
            return 0.0;
        }
        // scale > 0, so the max of the raw scores gives the max of the scaled ones.
        let max = lane_max(row);
        // e^(scale·d) = 2^(scale·log2(e)·d).
        let scale2 = scale * std::f32::consts::LOG2_E;
        // Two simple loops (each vectorises; fused they do not) over a row in L1.
        for x in row.iter_mut() {
            *x = exp2_f32((*x - max) * scale2);
        }
        lane_sum(row)
    }
}

simd_fn! {
    /// `stored = row · factor`.
    fn store_scaled(row: &[f32], factor: f32, stored: &mut [f32]) {
        for (s, &x) in stored.iter_mut().zip(row) {
            *s = x * factor;
        }
    }
}

simd_fn! {
    /// `block_acc[j] += c · e[j]` in f32, `c` = the row's weight times 1/Σ: the importance
    /// sums of one query block (at most `ROW_BLOCK` rows).
    fn accumulate_scaled(block_acc: &mut [f32], e: &[f32], c: f32) {
        for (a, &ev) in block_acc.iter_mut().zip(e) {
            *a += c * ev;
        }
    }
}

simd_fn! {
    /// `acc[j] += block_acc[j]` in f64, and `block_acc` back to zero. The importance sums
    /// rank slots for discrete pruning decisions: f32 over at most `ROW_BLOCK` rows
    /// (relative error at most about 64 · 2^-24), f64 across blocks, so they stay that close
    /// whatever the sequence length.
    fn add_block_sums(acc: &mut [f64], block_acc: &mut [f32]) {
        for (a, b) in acc.iter_mut().zip(block_acc.iter_mut()) {
            *a += *b as f64;
            *b = 0.0;
        }
    }
}

simd_fn! {
    /// [`softmax_grad_row`] of a row with dropout, making `p_drop` on the way: `p_drop =
    /// max(stored, 0) · keep_scale`, the dropped-out probabilities from the stored ones
    /// (negative where dropped; a dropped P of 0 is stored as -0, whose maximum with 0 is
    /// a zero either way), written while the dot product reads them, in the lanes and
    /// order of [`lane_dot`]. The same bits as making `p_drop` first and then calling
    /// [`softmax_grad_row`], with one pass over the stored row fewer.
    fn kept_softmax_grad_row(
        stored: &[f32],
        keep_scale: f32,
        p_drop: &mut [f32],
        ds: &mut [f32],
        scale: f32,
    ) {
        let mut acc = [0.0f32; LANES];
        let mut s_chunks = stored.chunks_exact(LANES);
        let mut p_chunks = p_drop.chunks_exact_mut(LANES);
        let mut d_chunks = ds.chunks_exact(LANES);
        for ((s, p), d) in (&mut s_chunks).zip(&mut p_chunks).zip(&mut d_chunks) {
            for l in 0..LANES {
                let pd = s[l].max(0.0) * keep_scale;
                p[l] = pd;
                acc[l] += d[l] * pd;
            }
        }
        let tail: f32 = s_chunks
            .remainder()
            .iter()
            .zip(p_chunks.into_remainder())
            .zip(d_chunks.remainder())
            .map(|((&s, p), &d)| {
                *p = s.max(0.0) * keep_scale;
                d * *p
            })
            .sum();
        let dot = fold_lanes(acc, |a, b| a + b) + tail;
        for ((g, &pv), &pd) in ds.iter_mut().zip(stored).zip(p_drop.iter()) {
            *g = scale * (pd * *g - pv.abs() * dot);
        }
    }
}

simd_fn! {
    /// In place: `ds = scale · (p_drop ⊙ dp_drop - p · Σ_j p_drop_j dp_drop_j)`, the
    /// gradient of the scores given `dp_drop` (on entry), the gradient with respect to
    /// the dropped-out probabilities `p_drop = p ⊙ mask / (1-p)` (`p_drop = p` without
    /// dropout). This is `scale · p ⊙ (dp - Σ_j dp_j p_j)` with `dp = dp_drop ⊙ mask /
    /// (1-p)` the gradient with respect to `p`, written without the mask. `p` is as
    /// stored (negated where dropped), hence its absolute value.
    fn softmax_grad_row(p: &[f32], p_drop: &[f32], ds: &mut [f32], scale: f32) {
        let dot = lane_dot(ds, p_drop);
        for ((g, &pv), &pd) in ds.iter_mut().zip(p).zip(p_drop) {
            *g = scale * (pd * *g - pv.abs() * dot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::dropout::mask_uniform;
    use crate::kernels::gradcheck::{assert_grad_close, dot, numeric_grad, random_vec, to_f64};

    /// Outputs of the f64 reference.
    struct RefOut {
        ctx: Vec<f64>,
        probs: Vec<f64>,
        importance: Vec<f64>,
    }

    /// Straight from the definitions, one (b, h, i) at a time, in f64.
    #[allow(clippy::too_many_arguments)]
    fn attention_ref(
        d: AttnDims,
        q: &[f64],
        k: &[f64],
        v: &[f64],
        kv_count: &[usize],
        scale: f64,
        dropout: Option<AttnDropout>,
        query_weight: &[f32],
        hidden: Option<HiddenKeys>,
    ) -> RefOut {
        let AttnDims {
            batch,
            q_len,
            kv_len,
            heads,
            head_dim,
        } = d;
        let width = heads * head_dim;
        let mut ctx = vec![0.0; batch * q_len * width];
        let mut probs = vec![0.0; batch * heads * q_len * kv_len];
        let mut importance = vec![0.0; batch * heads * kv_len];
        for b in 0..batch {
            let kvc = kv_count[b];
            for h in 0..heads {
                let bh = b * heads + h;
                let mut wsum = 0.0;
                for i in 0..q_len {
                    let kvc = match hidden {
                        Some(hk) if i < hk.query_rows => kvc - hk.hidden_slots.min(kvc),
                        _ => kvc,
                    };
                    let qi = &q[(b * q_len + i) * width + h * head_dim..][..head_dim];
                    let scores: Vec<f64> = (0..kvc)
                        .map(|j| {
                            let kj = &k[(b * kv_len + j) * width + h * head_dim..][..head_dim];
                            scale * qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                    let w = query_weight[b * q_len + i] as f64;
                    wsum += w;
                    for j in 0..kvc {
                        let pij = (scores[j] - max).exp() / z;
                        let index = (bh * q_len + i) * kv_len + j;
                        importance[bh * kv_len + j] += w * pij;
                        let dropped =
                            dropout.is_some_and(|dr| mask_uniform(dr.seed, index as u64) < dr.p);
                        // As stored: negated where dropped.
                        probs[index] = if dropped { -pij } else { pij };
                        let pd = match dropout {
                            Some(_) if dropped => 0.0,
                            Some(dr) => pij / (1.0 - dr.p as f64),
                            None => pij,
                        };
                        let vj = &v[(b * kv_len + j) * width + h * head_dim..][..head_dim];
                        for c in 0..head_dim {
                            ctx[(b * q_len + i) * width + h * head_dim + c] += pd * vj[c];
                        }
                    }
                }
                for j in 0..kv_len {
                    let o = &mut importance[bh * kv_len + j];
                    *o = if wsum == 0.0 { 0.0 } else { *o / wsum };
                }
            }
        }
        RefOut {
            ctx,
            probs,
            importance,
        }
    }

    struct Case {
        d: AttnDims,
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
        kv_count: Vec<usize>,
        query_weight: Vec<f32>,
        scale: f32,
        hidden: Option<HiddenKeys>,
    }

    fn case(d: AttnDims, kv_count: &[usize], seed: u64) -> Case {
        let width = d.heads * d.head_dim;
        // Query weights: a mix of 1 and 0, and example 1 (if any) with no real query.
        let query_weight = (0..d.batch * d.q_len)
            .map(|r| {
                let (b, i) = (r / d.q_len, r % d.q_len);
                if b == 1 || i % 3 == 2 {
                    0.0
                } else {
                    1.0
                }
            })
            .collect();
        Case {
            d,
            q: random_vec(seed, d.batch * d.q_len * width, 1.0),
            k: random_vec(seed + 1, d.batch * d.kv_len * width, 1.0),
            v: random_vec(seed + 2, d.batch * d.kv_len * width, 1.0),
            kv_count: kv_count.to_vec(),
            query_weight,
            scale: 1.0 / (d.head_dim as f32).sqrt(),
            hidden: None,
        }
    }

    struct FwdOut {
        ctx: Vec<f32>,
        probs: Vec<f32>,
        importance: Vec<f32>,
    }

    fn run_forward(c: &Case, dropout: Option<AttnDropout>, store_probs: bool) -> FwdOut {
        let d = c.d;
        let width = d.heads * d.head_dim;
        let mut ctx = vec![f32::NAN; d.batch * d.q_len * width];
        let mut probs = vec![f32::NAN; d.batch * d.heads * d.q_len * d.kv_len];
        let mut importance = vec![f32::NAN; d.batch * d.heads * d.kv_len];
        attention_forward(
            d,
            Qkv::dense(&c.q, &c.k, &c.v, width),
            &c.kv_count,
            c.scale,
            dropout,
            if store_probs { Some(&mut probs) } else { None },
            &mut ctx,
            Some(Importance {
                query_weight: &c.query_weight,
                out: &mut importance,
            }),
            c.hidden,
        );
        FwdOut {
            ctx,
            probs,
            importance,
        }
    }

    fn close(name: &str, got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "{name}: length");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= tol * (1.0 + w.abs()),
                "{name}[{i}]: {g} vs {w}"
            );
        }
    }

    /// Forward against the reference, then backward against central differences of it.
    fn check(c: &Case, dropout: Option<AttnDropout>) {
        let d = c.d;
        let (q64, k64, v64) = (to_f64(&c.q), to_f64(&c.k), to_f64(&c.v));
        let scale = c.scale as f64;
        let want = attention_ref(
            d,
            &q64,
            &k64,
            &v64,
            &c.kv_count,
            scale,
            dropout,
            &c.query_weight,
            c.hidden,
        );
        let got = run_forward(c, dropout, true);
        close("ctx", &got.ctx, &want.ctx, 2e-6);
        close("probs", &got.probs, &want.probs, 1e-6);
        close("importance", &got.importance, &want.importance, 1e-6);

        // Masked slots: exactly zero probability and importance.
        for b in 0..d.batch {
            for h in 0..d.heads {
                let bh = b * d.heads + h;
                for j in c.kv_count[b]..d.kv_len {
                    assert_eq!(got.importance[bh * d.kv_len + j], 0.0);
                    for i in 0..d.q_len {
                        assert_eq!(got.probs[(bh * d.q_len + i) * d.kv_len + j], 0.0);
                    }
                }
            }
        }

        // The inference path (no stored probs) gives bit-identical ctx and importance.
        let inference = run_forward(c, dropout, false);
        assert_eq!(inference.ctx, got.ctx);
        assert_eq!(inference.importance, got.importance);

        // Backward of L = Σ dctx ⊙ ctx.
        let dctx = random_vec(99, got.ctx.len(), 1.0);
        let mut dq = vec![f32::NAN; c.q.len()];
        let mut dk = vec![f32::NAN; c.k.len()];
        let mut dv = vec![f32::NAN; c.v.len()];
        attention_backward(
            d,
            &c.q,
            &c.k,
            &c.v,
            &c.kv_count,
            c.scale,
            dropout,
            &got.probs,
            &dctx,
            &mut dq,
            &mut dk,
            &mut dv,
        );
        let loss = |q: &[f64], k: &[f64], v: &[f64]| {
            dot(
                &dctx,
                &attention_ref(
                    d,
                    q,
                    k,
                    v,
                    &c.kv_count,
                    scale,
                    dropout,
                    &c.query_weight,
                    c.hidden,
                )
                .ctx,
            )
        };
        let h = 1e-5;
        let gq = numeric_grad(|x| loss(x, &k64, &v64), &q64, h);
        let gk = numeric_grad(|x| loss(&q64, x, &v64), &k64, h);
        let gv = numeric_grad(|x| loss(&q64, &k64, x), &v64, h);
        for (name, got, want) in [("dq", &dq, &gq), ("dk", &dk, &gk), ("dv", &dv, &gv)] {
            if want.iter().all(|w| w.abs() < 1e-9) {
                // E.g. one valid slot: P = 1 whatever q and k are.
                assert!(
                    got.iter().all(|g| g.abs() < 1e-6),
                    "attention {name}: expected zero"
                );
            } else {
                assert_grad_close(&format!("attention {name}"), got, want, 2e-5);
            }
        }

        // Masked key/value slots get exactly zero gradient.
        let width = d.heads * d.head_dim;
        for b in 0..d.batch {
            for j in c.kv_count[b]..d.kv_len {
                let row = (b * d.kv_len + j) * width..(b * d.kv_len + j + 1) * width;
                assert!(dk[row.clone()].iter().all(|&x| x == 0.0));
                assert!(dv[row].iter().all(|&x| x == 0.0));
            }
        }
    }

    fn dims(batch: usize, q_len: usize, kv_len: usize, heads: usize, head_dim: usize) -> AttnDims {
        AttnDims {
            batch,
            q_len,
            kv_len,
            heads,
            head_dim,
        }
    }

    /// The row maximum wherever it sits, at every length around the 32-lane steps
    /// (the last 32 elements are visited twice when the length is not a multiple).
    #[test]
    fn lane_max_finds_the_maximum_anywhere() {
        for len in 1..=100usize {
            for pos in 0..len {
                let mut x: Vec<f32> = (0..len).map(|i| -1.0 - i as f32).collect();
                x[pos] = 5.0;
                assert_eq!(lane_max(&x), 5.0, "len {len}, max at {pos}");
            }
        }
        assert_eq!(lane_max(&[]), f32::NEG_INFINITY);
    }

    /// The AVX2 softmax's vector maximum gives `lane_max`'s answer at every length
    /// around its 32-float steps, with the maximum anywhere and NaNs passed over.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_row_max_agrees_with_lane_max() {
        if !crate::kernels::gemm_x86::available() {
            return;
        }
        for len in 1..=100usize {
            for pos in 0..len {
                let mut x: Vec<f32> = (0..len).map(|i| -1.0 - i as f32).collect();
                x[pos] = 5.0;
                x[(pos + 1) % len] = if len > 1 { f32::NAN } else { 5.0 };
                // SAFETY: AVX2 and FMA are present (checked above).
                let got = unsafe { exp_avx2::row_max(&x) };
                assert_eq!(got, lane_max(&x), "len {len}, max at {pos}");
                assert_eq!(got, 5.0, "len {len}, max at {pos}");
            }
        }
    }

    /// Every row length around the 16-lane steps (the masked tail), scores spanning
    /// the underflow limit: within a few ulps of e^x in f64, 0 below it, the sum of the
    /// row; and the AVX-512 or AVX2 loop (where it runs) agrees with the compiled one.
    #[test]
    fn exp_shifted_sum_matches_f64_at_every_length() {
        let scale = 0.7f32;
        for len in 0..=49usize {
            let x: Vec<f32> = (0..len)
                .map(|i| (((i * 7919) % 401) as f32 - 300.0) * if i % 3 == 0 { 1.0 } else { 0.1 })
                .collect();
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut got = x.clone();
            let sum = exp_shifted_sum(&mut got, scale);
            let mut portable = x.clone();
            let portable_sum = exp_shifted_sum_portable(&mut portable, scale);
            let mut want_sum = 0.0f64;
            for (i, (&g, &xi)) in got.iter().zip(&x).enumerate() {
                // (the argument rounded to f32 as the kernel's is)
                let a = ((xi - max) * (scale * std::f32::consts::LOG2_E)) as f64;
                let want = if a < -126.0 { 0.0 } else { a.exp2() };
                want_sum += g as f64;
                // Below 2^-126 the AVX-512 loop may give a subnormal instead of 0.
                let tiny = f32::MIN_POSITIVE;
                assert!(
                    (g as f64 - want).abs() <= 4e-7 * want || (want == 0.0 && g < tiny),
                    "len {len} [{i}]: {g} vs {want}"
                );
                assert!(
                    (g - portable[i]).abs() <= 4e-7 * portable[i]
                        || (portable[i] == 0.0 && g < tiny),
                    "len {len} [{i}]: {g} vs the compiled loop's {}",
                    portable[i]
                );
            }
            assert!(
                (sum as f64 - want_sum).abs() <= 1e-6 * want_sum.max(1.0),
                "len {len}"
            );
            assert!(
                (sum - portable_sum).abs() <= 1e-6 * sum.max(1.0),
                "len {len}"
            );
        }
        // A NaN score stays NaN (on every path), and so does the sum.
        for len in [3, 11] {
            let mut row: Vec<f32> = (0..len).map(|i| i as f32 * 0.1).collect();
            row[1] = f32::NAN;
            let sum = exp_shifted_sum(&mut row, scale);
            assert!(row[1].is_nan() && sum.is_nan(), "len {len}: {row:?}");
        }
    }

    #[test]
    fn matches_reference_with_masking() {
        // Example 0 uses every slot, 1 and 2 fewer; q_len != kv_len (gathered keys).
        let c = case(dims(3, 6, 5, 2, 3), &[5, 3, 1], 10);
        check(&c, None);
    }

    #[test]
    fn hidden_key_slots_match_reference_and_get_zero_probability() {
        // Rows 0..4 of each example do not see its last 2 valid slots (example 2 has
        // only those 2: its first rows see nothing); rows 4.. see every valid slot.
        let hidden = Some(HiddenKeys {
            query_rows: 4,
            hidden_slots: 2,
        });
        for (kv_count, dropout) in [
            ([6, 4, 2], None),
            ([6, 5, 2], Some(AttnDropout { p: 0.2, seed: 7 })),
        ] {
            let mut c = case(dims(3, 6, 6, 2, 3), &kv_count, 60);
            c.hidden = hidden;
            check(&c, dropout);
            let out = run_forward(&c, dropout, true);
            for (b, &kvc) in kv_count.iter().enumerate() {
                for h in 0..2 {
                    for i in 0..6 {
                        let row = &out.probs[((b * 2 + h) * 6 + i) * 6..][..6];
                        let tail = &row[kvc - 2..kvc];
                        if i < 4 {
                            assert!(tail.iter().all(|&p| p == 0.0), "b {b} i {i}");
                        } else {
                            assert!(tail.iter().all(|&p| p != 0.0), "b {b} i {i}");
                        }
                    }
                }
            }
        }
        // The same inputs without hidden slots give other outputs on the first rows only.
        let mut c = case(dims(1, 6, 6, 2, 3), &[6], 61);
        let all = run_forward(&c, None, true);
        c.hidden = hidden;
        let some = run_forward(&c, None, true);
        let width = 2 * 3;
        assert_ne!(all.ctx[..4 * width], some.ctx[..4 * width]);
        assert_eq!(all.ctx[4 * width..], some.ctx[4 * width..]);
    }

    #[test]
    fn kept_softmax_grad_equals_kept_then_softmax_grad() {
        // Rows with and without a tail past the 32 lanes; stored values negative where
        // dropped, some of them -0.
        for n in [1usize, 31, 32, 33, 100, 512] {
            let stored: Vec<f32> = random_vec(n as u64, n, 1.0)
                .into_iter()
                .enumerate()
                .map(|(j, x)| match j % 7 {
                    0 => -x.abs(),
                    3 => -0.0,
                    _ => x.abs(),
                })
                .collect();
            let dp = random_vec(n as u64 + 9, n, 2.0);
            let (keep_scale, scale) = (1.0 / 0.9, 0.176_776_7);
            let want_pd: Vec<f32> = stored.iter().map(|s| s.max(0.0) * keep_scale).collect();
            let mut want_ds = dp.clone();
            softmax_grad_row(&stored, &want_pd, &mut want_ds, scale);
            let (mut pd, mut ds) = (vec![f32::NAN; n], dp.clone());
            kept_softmax_grad_row(&stored, keep_scale, &mut pd, &mut ds, scale);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&pd), bits(&want_pd), "n {n}");
            assert_eq!(bits(&ds), bits(&want_ds), "n {n}");
        }
    }

    #[test]
    fn head_rows_streamed_equal_head_rows_stored() {
        // [2, 5, 3 x 32]: every (b, h) block written in two pieces, scaled or not, once
        // with plain stores and once streamed (where the CPU has AVX2), bit for bit.
        let (batch, rows, heads, dh) = (2, 5, 3, 32);
        let len = batch * rows * heads * dh;
        let src = random_vec(5, rows * dh, 2.0);
        let scale: Vec<f32> = (0..rows).map(|r| 0.3 + r as f32 / 7.0).collect();
        let write = |stream: bool| {
            // A 64-byte aligned output inside a larger buffer, NaN where unwritten.
            let mut buf = vec![f32::NAN; len + 16];
            let at = buf.as_ptr().align_offset(64);
            let out = &mut buf[at..at + len];
            let cols = HeadColumns::streaming_if(stream, out, rows, heads, dh);
            #[cfg(target_arch = "x86_64")]
            assert_eq!(cols.stream, stream && crate::kernels::gemm_x86::available());
            for b in 0..batch {
                for h in 0..heads {
                    let scaled = (b + h) % 2 == 0;
                    let split = 1 + (b + h) % 3;
                    // SAFETY: one writer, every (b, h) block once.
                    unsafe {
                        cols.write_rows(b, h, 0, &src[..split * dh], scaled.then_some(&scale[..]));
                        cols.write_rows(
                            b,
                            h,
                            split,
                            &src[split * dh..],
                            scaled.then(|| &scale[split..]),
                        );
                    }
                }
            }
            stream_fence();
            buf[at..at + len].to_vec()
        };
        let (plain, streamed) = (write(false), write(true));
        assert!(plain.iter().all(|x| x.is_finite()));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&plain), bits(&streamed));
        // Row r of head h in example b is src row r (times scale[r] where scaled).
        let (b, h, r) = (1, 1, 3);
        let want = src[r * dh] * scale[r];
        assert_eq!(plain[((b * rows + r) * heads + h) * dh], want);
    }

    #[test]
    fn stream_into_copies_at_every_alignment_and_length() {
        let src: Vec<f32> = (0..200).map(|i| i as f32 * 0.5 - 7.0).collect();
        let mut buf = vec![f32::NAN; 240];
        for start in 0..17 {
            for len in [0, 1, 15, 16, 17, 31, 33, 64, 100, 200 - 17] {
                buf.iter_mut().for_each(|x| *x = f32::NAN);
                stream_into(&src[..len], &mut buf[start..start + len]);
                stream_fence();
                assert_eq!(
                    &buf[start..start + len],
                    &src[..len],
                    "start {start} len {len}"
                );
                assert!(buf[..start]
                    .iter()
                    .chain(&buf[start + len..])
                    .all(|x| x.is_nan()));
            }
        }
    }

    #[test]
    fn matches_reference_with_dropout() {
        let c = case(dims(3, 6, 5, 2, 3), &[5, 4, 2], 20);
        let dropout = AttnDropout { p: 0.3, seed: 1234 };
        check(&c, Some(dropout));
        // The mask really dropped something and depends on the seed.
        let a = run_forward(&c, Some(dropout), true);
        let b = run_forward(&c, Some(AttnDropout { p: 0.3, seed: 1235 }), true);
        let none = run_forward(&c, None, true);
        assert_ne!(a.ctx, none.ctx);
        assert_ne!(a.ctx, b.ctx);
        // Probabilities and importance are taken before dropout: the stored ones differ
        // from those without dropout only in the sign of the dropped elements.
        let abs = |p: &[f32]| p.iter().map(|x| x.abs()).collect::<Vec<_>>();
        assert_eq!(abs(&a.probs), none.probs);
        assert!(a.probs.iter().any(|&x| x < 0.0));
        assert_eq!(a.importance, none.importance);
    }

    #[test]
    fn matches_reference_on_wider_shapes() {
        // Rows longer than the 8-lane chunks (remainders included), several heads.
        let c = case(dims(2, 13, 19, 3, 8), &[19, 11], 30);
        check(&c, Some(AttnDropout { p: 0.1, seed: 5 }));
    }

    #[test]
    fn matches_reference_across_row_blocks() {
        // More queries than two row blocks (plus a partial one): the per-block outputs,
        // the importance sums over blocks and the dK/dV accumulation across blocks.
        let c = case(dims(2, 2 * ROW_BLOCK + 7, 9, 2, 3), &[9, 5], 80);
        check(&c, Some(AttnDropout { p: 0.2, seed: 11 }));
        check(&c, None);
    }

    #[test]
    fn zero_valid_slots_is_finite_and_zero() {
        let c = case(dims(2, 4, 3, 2, 4), &[3, 0], 40);
        let out = run_forward(&c, Some(AttnDropout { p: 0.2, seed: 3 }), true);
        assert!(out
            .ctx
            .iter()
            .chain(&out.probs)
            .chain(&out.importance)
            .all(|x| x.is_finite()));
        let width = 2 * 4;
        // Example 1: ctx rows, probabilities and importance all exactly 0.
        assert!(out.ctx[4 * width..].iter().all(|&x| x == 0.0));
        assert!(out.probs[2 * 4 * 3..].iter().all(|&x| x == 0.0));
        assert!(out.importance[2 * 3..].iter().all(|&x| x == 0.0));
        // Gradients: finite, and zero for the empty example; example 0 still checked.
        check(&c, Some(AttnDropout { p: 0.2, seed: 3 }));
        let mut dq = vec![f32::NAN; c.q.len()];
        let mut dk = vec![f32::NAN; c.k.len()];
        let mut dv = vec![f32::NAN; c.v.len()];
        let dctx = random_vec(7, out.ctx.len(), 1.0);
        attention_backward(
            c.d,
            &c.q,
            &c.k,
            &c.v,
            &c.kv_count,
            c.scale,
            None,
            &out.probs,
            &dctx,
            &mut dq,
            &mut dk,
            &mut dv,
        );
        assert!(dq[4 * width..].iter().all(|&x| x == 0.0));
        assert!(dk[3 * width..]
            .iter()
            .chain(&dv[3 * width..])
            .all(|&x| x == 0.0));
        assert!(dq.iter().chain(&dk).chain(&dv).all(|x| x.is_finite()));
    }

    #[test]
    fn single_valid_slot_copies_its_value() {
        // With one slot the probability is 1, ctx equals that slot's value row, and q, k
        // get zero gradient (checked inside `check`).
        let c = case(dims(1, 3, 4, 2, 2), &[1], 50);
        let out = run_forward(&c, None, true);
        let width = 4;
        for i in 0..3 {
            assert_eq!(&out.ctx[i * width..(i + 1) * width], &c.v[..width]);
        }
        check(&c, None);
    }

    /// Scores spread over hundreds of nats, as a trained model's: where e^(s - max)
    /// would be subnormal the stored probability is exactly 0 (`SubnormalsAsZero`), the
    /// outputs and gradients still match the reference, and every pool thread's
    /// floating-point mode is as it was.
    #[test]
    fn underflowing_probabilities_are_zero_and_the_mode_is_restored() {
        let before = crate::kernels::fastmath::pool_fp_controls();
        let mut c = case(dims(2, 70, 40, 2, 8), &[40, 33], 61);
        // Queries with positive entries, and every third key slot pushed far against
        // them: its scores lie some 50-120 nats below the row's others, across the
        // range where e^x is subnormal in f32 (-87 .. -103).
        for x in c.q.iter_mut() {
            *x = x.abs();
        }
        for (i, x) in c.k.iter_mut().enumerate() {
            if (i / 16) % 3 == 0 {
                *x -= 60.0;
            }
        }
        let out = run_forward(&c, None, true);
        let valid = |idx: usize| idx % 40 < c.kv_count[idx / (2 * 70 * 40)];
        let zeros = (0..out.probs.len())
            .filter(|&i| valid(i) && out.probs[i] == 0.0)
            .count();
        assert!(zeros > 500, "only {zeros} probabilities underflowed");
        assert!(out.probs.iter().all(|p| *p == 0.0 || p.is_normal()));
        check(&c, None);
        assert_eq!(crate::kernels::fastmath::pool_fp_controls(), before);
    }

    #[test]
    fn large_scores_stay_stable() {
        let mut c = case(dims(1, 4, 6, 1, 4), &[6], 60);
        for x in c.q.iter_mut() {
            *x *= 300.0; // scores in the thousands: exp would overflow without the max shift
        }
        let out = run_forward(&c, None, true);
        assert!(out.ctx.iter().chain(&out.probs).all(|x| x.is_finite()));
        for row in out.probs.chunks(6) {
            let s: f32 = row.iter().sum();
            assert!((s - 1.0).abs() < 1e-5);
        }
    }
}
