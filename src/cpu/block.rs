//! The sublayers of a TRM block as independent tasks, each a GEMM whose
//! output tile gets its epilogue (SwiGLU gate, second GEMM, residual add,
//! RMSNorm) while it is still in cache. A task owns a disjoint part of the
//! state, so the tasks of a phase run in parallel without locks:
//!
//! - channel SwiGLU: blocks of rows (tokens of any puzzles), since it mixes
//!   along D only, held feature-major; each product split by output
//!   features among the threads, then residual and norm per block;
//! - token-mixing MLP: a block of columns of one puzzle, since it mixes
//!   along S only and its RMSNorm runs over S;
//! - attention: qkv projection by rows, then one (puzzle, head) per task,
//!   then o_proj with residual and norm by rows.
//!
//! All matrices are row-major; the formulas are those of `shared/TRM.md`.

use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{MatMut, Par};

use super::ops::{
    add_rms_norm_rows, mat, mat_mut, mat_strided, matmul_into, row_slice, silu_gate, transpose_into,
};

/// Scratch memory of one worker thread, sized for the largest task: `wide`
/// for the first product of a SwiGLU (or attention scores), `gated` for its
/// gated activations, `update` for the second product, `transposed` for a
/// block of rows turned feature-major, `col_sums` for norms over columns.
pub(super) struct TaskScratch {
    pub wide: Vec<f32>,
    pub gated: Vec<f32>,
    pub update: Vec<f32>,
    pub transposed: Vec<f32>,
    pub col_sums: Vec<f32>,
}

// Channel SwiGLU, `h = rms_norm(h + down(silu(g) * u))` with
// `[g | u] = h @ gate_up^T`, on a block of rows (tokens of any puzzles).
//
// Computed feature-major: with the block as `h^T` (`[D, r]`), the products
// are `[g; u] = gate_up @ h^T` and `down @ gated`, which read both weights in
// their official `[out, in]` layouts in place and put the tokens along the
// GEMM microkernel's vectors; on AVX-512 that runs about 30% faster than
// the token-major `h @ gate_up^T`. Each product is split by output features
// into parts, one per thread, so that every thread streams only its part of
// the weights and a single block (one puzzle) still keeps every thread
// busy; hence three phases: gate, down, residual and norm, each on parts of
// every block.

/// Channel SwiGLU, first phase, on one part: the intermediate features
/// `first..first + n` of the block `rows` (`[r, D]`), gated:
/// `gated_part` (`[n, r]`) `= silu(g) * u` for those features.
#[allow(clippy::too_many_arguments)]
pub(super) fn channel_gate_part(
    gate_up: &[f32],
    rows: &[f32],
    gated_part: &mut [f32],
    first: usize,
    d: usize,
    ci: usize,
    s: &mut TaskScratch,
) {
    let r = rows.len() / d;
    let n = gated_part.len() / r;
    let rows_t = &mut s.transposed[..d * r];
    transpose_into(rows, r, d, d, rows_t);
    let (g, u) = s.wide[..2 * n * r].split_at_mut(n * r);
    // g is row `first + i` of gate_up, u row `ci + first + i`
    for (out, weight_row) in [(g, first), (u, ci + first)] {
        matmul_into(
            mat_mut(out, n, r),
            mat(&gate_up[weight_row * d..], n, d),
            mat(rows_t, d, r),
            Par::Seq,
        );
    }
    let (g, u) = s.wide[..2 * n * r].split_at(n * r);
    silu_gate(g, u, gated_part);
}

/// Channel SwiGLU, second phase, on one part: output features
/// `first..first + n` of the block: `update_part` (`[n, r]`) `=`
/// `down[first..first + n] @ gated` (`gated`: the block's `[inter(D), r]`).
pub(super) fn channel_down_part(
    down: &[f32],
    gated: &[f32],
    update_part: &mut [f32],
    first: usize,
    ci: usize,
) {
    let r = gated.len() / ci;
    let n = update_part.len() / r;
    matmul_into(
        mat_mut(update_part, n, r),
        mat(&down[first * ci..], n, ci),
        mat(gated, ci, r),
        Par::Seq,
    );
}

/// Channel SwiGLU, third phase, on `rows` (`[r, D]`), the rows
/// `first..first + r` of a block of `block_rows` whose feature-major update
/// is `update_t` (`[D, block_rows]`): `h = rms_norm(h + update)`.
pub(super) fn channel_residual_norm(
    rows: &mut [f32],
    update_t: &[f32],
    first: usize,
    block_rows: usize,
    d: usize,
    eps: f32,
    s: &mut TaskScratch,
) {
    let r = rows.len() / d;
    let update = &mut s.transposed[..r * d];
    transpose_into(&update_t[first..], d, r, block_rows, update);
    add_rms_norm_rows(rows, update, d, eps);
}

/// Token-mixing MLP on a block of columns `h` (`[S, c]`, rows contiguous) of
/// one puzzle: `t = h^T; t = rms_norm(t + swiglu_t(t)); h = t^T`, computed
/// without transposing as `h += down_t @ gate(gate_up_t @ h)`, then the
/// norm over each column (the sequence axis).
pub(super) fn token_mlp_columns(
    gate_up: &[f32],
    down: &[f32],
    mut h: MatMut<'_, f32>,
    ti: usize,
    eps: f32,
    s: &mut TaskScratch,
) {
    let (seq, c) = (h.nrows(), h.ncols());
    let wide = &mut s.wide[..2 * ti * c];
    matmul_into(
        mat_mut(wide, 2 * ti, c),
        mat(gate_up, 2 * ti, seq),
        h.rb(),
        Par::Seq,
    );
    // rows 0..ti of `wide` are g, rows ti..2ti are u
    let (g, u) = wide.split_at(ti * c);
    silu_gate(g, u, &mut s.gated[..ti * c]);
    let update = &mut s.update[..seq * c];
    matmul_into(
        mat_mut(update, seq, c),
        mat(down, seq, ti),
        mat(&s.gated, ti, c),
        Par::Seq,
    );

    // residual, then RMSNorm over the sequence axis of every column
    let sums = &mut s.col_sums[..c];
    sums.fill(0.0);
    for (i, upd) in update.chunks_exact(c).enumerate() {
        let row = row_slice(h.rb_mut(), i);
        for ((v, u), acc) in row.iter_mut().zip(upd).zip(sums.iter_mut()) {
            *v += u;
            *acc += *v * *v;
        }
    }
    for acc in sums.iter_mut() {
        *acc = 1.0 / (*acc / seq as f32 + eps).sqrt();
    }
    for i in 0..seq {
        let row = row_slice(h.rb_mut(), i);
        for (v, scale) in row.iter_mut().zip(sums.iter()) {
            *v *= scale;
        }
    }
}

/// Attention, first phase on `rows` (`[r, D]`, positions `pos0..pos0 + r` of
/// one or more puzzles of `S` positions): `qkv = h @ qkv_proj^T`, then RoPE
/// on the q and k heads (`q' = q cos + rotate_half(q) sin`) when given.
#[allow(clippy::too_many_arguments)]
pub(super) fn qkv_rows(
    qkv_t: &[f32],
    rows: &[f32],
    qkv: &mut [f32],
    d: usize,
    head_dim: usize,
    rope: Option<(&[f32], &[f32])>,
    first_row: usize,
    state_len: usize,
) {
    let r = rows.len() / d;
    matmul_into(
        mat_mut(qkv, r, 3 * d),
        mat(rows, r, d),
        mat(qkv_t, d, 3 * d),
        Par::Seq,
    );
    let Some((cos, sin)) = rope else { return };
    let half = head_dim / 2;
    for (i, row) in qkv.chunks_exact_mut(3 * d).enumerate() {
        let pos = (first_row + i) % state_len;
        let c = &cos[pos * head_dim..(pos + 1) * head_dim];
        let sn = &sin[pos * head_dim..(pos + 1) * head_dim];
        // q heads then k heads; rotate_half([a | b]) = [-b | a]
        for head in row[..2 * d].chunks_exact_mut(head_dim) {
            for j in 0..half {
                let (a, b) = (head[j], head[j + half]);
                head[j] = a * c[j] - b * sn[j];
                head[j + half] = b * c[j + half] + a * sn[j + half];
            }
        }
    }
}

/// Attention, second phase: one head of one puzzle. `qkv` is the puzzle's
/// `[S, 3D]`; `out` is the head's `[S, head_dim]` column block of the
/// concatenated head outputs. Scaled dot-product over all positions (not
/// causal), softmax by rows; `scores` is scratch of `S * S`.
pub(super) fn attention_head(
    qkv: &[f32],
    head: usize,
    mut out: MatMut<'_, f32>,
    d: usize,
    scores: &mut [f32],
) {
    let (s, hd) = (out.nrows(), out.ncols());
    let q = mat_strided(&qkv[head * hd..], s, hd, 3 * d);
    let k = mat_strided(&qkv[d + head * hd..], s, hd, 3 * d);
    let v = mat_strided(&qkv[2 * d + head * hd..], s, hd, 3 * d);
    let scores = &mut scores[..s * s];
    matmul_into(mat_mut(scores, s, s), q, k.transpose(), Par::Seq);
    let scale = 1.0 / (hd as f32).sqrt();
    for row in scores.chunks_exact_mut(s) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v * scale));
        let mut sum = 0.0;
        for v in row.iter_mut() {
            *v = (*v * scale - max).exp();
            sum += *v;
        }
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|v| *v *= inv);
    }
    matmul_into(out.rb_mut(), mat(scores, s, s), v, Par::Seq);
}

/// Attention, third phase on `rows`: `h = rms_norm(h + attn @ o_proj^T)`.
pub(super) fn o_proj_rows(
    o_t: &[f32],
    attn: &[f32],
    rows: &mut [f32],
    d: usize,
    eps: f32,
    s: &mut TaskScratch,
) {
    let r = rows.len() / d;
    let update = &mut s.update[..r * d];
    matmul_into(
        mat_mut(update, r, d),
        mat(attn, r, d),
        mat(o_t, d, d),
        Par::Seq,
    );
    add_rms_norm_rows(rows, update, d, eps);
}
