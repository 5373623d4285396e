//! The sublayers of a TRM block as independent tasks, each a GEMM whose
//! output tile gets its epilogue (SwiGLU gate, second GEMM, residual add,
//! RMSNorm) while it is still in cache. A task owns a disjoint part of the
//! state, so the tasks of a phase run in parallel without locks:
//!
//! - channel SwiGLU: a block of rows (tokens of any puzzles), since it
//!   mixes along D only;
//! - token-mixing MLP: a block of columns of one puzzle, since it mixes
//!   along S only and its RMSNorm runs over S (`token_panels.rs`);
//! - attention: qkv projection by rows, then one (puzzle, head) per task,
//!   then o_proj with residual and norm by rows.
//!
//! All matrices are row-major; the formulas are those of `shared/TRM.md`.

use faer::reborrow::ReborrowMut;
use faer::{MatMut, Par};

use super::amx_panels::Out;
use super::amx_token::AmxTokenScratch;
use super::ops::{add_rms_norm_rows, exp_clamped, mat, mat_mut, mat_strided, matmul_into};
use super::packed::{ChannelWeights, Projection};
use super::token_panels::TokenScratch;

/// Scratch memory of one worker thread, sized for the largest task: `wide`
/// for attention scores, `gated` for the channel SwiGLU's gated
/// activations, `update` for its second product (or o_proj's), `token` for
/// the token-mixing MLP (`amx_token` on AMX), `quantized` and
/// `row_scales` for the int8 products' quantized inputs, `bf16` for the
/// bf16 products' rounded inputs (each empty unless the engine has them).
pub(super) struct TaskScratch {
    pub wide: Vec<f32>,
    pub gated: Vec<f32>,
    pub update: Vec<f32>,
    pub token: TokenScratch,
    pub amx_token: AmxTokenScratch,
    pub quantized: Vec<u8>,
    pub row_scales: Vec<f32>,
    pub bf16: Vec<u16>,
}

/// Channel SwiGLU on a block of rows (tokens of any puzzles), `[r, D]`:
/// `h = rms_norm(h + down(silu(g) * u))` with `[g | u] = h @ gate_up^T`.
/// Both products run on weights packed at load (`panels.rs`), the gate in
/// the first product's epilogue; the block's gated activations
/// (`[r, inter(D)]`, 1.5 MiB at 256 rows) and update stay in L2 for the
/// second product and the norm. On int8 weights (`int8_panels.rs`) each
/// product's input rows are quantized first, per token; on bf16 weights
/// with AMX (`amx_panels.rs`) rounded to bf16, the gated activations
/// written in bf16 at once.
pub(super) fn channel_swiglu_rows(
    weights: &ChannelWeights,
    rows: &mut [f32],
    eps: f32,
    s: &mut TaskScratch,
) {
    let (d, ci) = match weights {
        ChannelWeights::F32 { gate_up, .. } => (gate_up.inputs(), gate_up.outputs()),
        ChannelWeights::Int8 { gate_up, .. } => (gate_up.inputs(), gate_up.outputs()),
        ChannelWeights::Bf16 { gate_up, .. } => (gate_up.inputs(), gate_up.outputs()),
    };
    let r = rows.len() / d;
    let update = &mut s.update[..r * d];
    match weights {
        ChannelWeights::F32 { gate_up, down } => {
            let gated = &mut s.gated[..r * ci];
            gate_up.apply(rows, gated);
            down.apply(gated, update);
        }
        ChannelWeights::Int8 { gate_up, down } => {
            let gated = &mut s.gated[..r * ci];
            let a = gate_up.quantize(rows, &mut s.quantized, &mut s.row_scales);
            gate_up.apply(&a, gated);
            let a = down.quantize(gated, &mut s.quantized, &mut s.row_scales);
            down.apply(&a, update);
        }
        ChannelWeights::Bf16 { gate_up, down } => {
            let (a, gated) = s.bf16.split_at_mut(gate_up.input_len(r));
            let a = gate_up.load_rows(rows, a);
            let (gated, steps) = (&mut gated[..down.input_len(r)], down.steps());
            gate_up.apply(a, r, Out::Bf16 { data: gated, steps });
            down.apply(gated, r, Out::F32(update));
        }
    }
    add_rms_norm_rows(rows, update, d, eps);
}

/// Attention, first phase on `rows` (`[r, D]`, positions `pos0..pos0 + r` of
/// one or more puzzles of `S` positions): `qkv = h @ qkv_proj^T`, then RoPE
/// on the q and k heads (`q' = q cos + rotate_half(q) sin`) when given.
#[allow(clippy::too_many_arguments)]
pub(super) fn qkv_rows(
    qkv_proj: &Projection,
    rows: &[f32],
    qkv: &mut [f32],
    d: usize,
    head_dim: usize,
    rope: Option<(&[f32], &[f32])>,
    first_row: usize,
    state_len: usize,
    s: &mut TaskScratch,
) {
    qkv_proj.apply(rows, qkv, &mut s.bf16);
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
    let scale = crate::model::maths::attention_scale(hd);
    for row in scores.chunks_exact_mut(s) {
        softmax_scaled(row, scale);
    }
    matmul_into(out.rb_mut(), mat(scores, s, s), v, Par::Seq);
}

/// `row = softmax(row * scale)`, vectorised: eight lanes for the maximum
/// and the sum, [`exp_clamped`] for the exponentials. A weight below
/// e^-80 of the largest is flushed to zero: it cannot move a float sum of
/// at least 1, and left in (libm's `expf` makes them subnormal) such
/// weights made every multiply a subnormal one, 95% of an ARC-size
/// (S = 916) network call.
fn softmax_scaled(row: &mut [f32], scale: f32) {
    const FLUSH_BELOW: f32 = -80.0;
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = if v > *m { v } else { *m };
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    // scale > 0, and rounding is monotonic: max(v * scale) = max(v) * scale
    let max = lanes.iter().fold(tail, |m, &v| m.max(v)) * scale;
    let mut sums = [0.0f32; 8];
    let mut chunks = row.chunks_exact_mut(8);
    for c in &mut chunks {
        for (acc, v) in sums.iter_mut().zip(c.iter_mut()) {
            let x = *v * scale - max;
            let e = exp_clamped(x);
            *v = if x < FLUSH_BELOW { 0.0 } else { e };
            *acc += *v;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for v in chunks.into_remainder() {
        let x = *v * scale - max;
        *v = if x < FLUSH_BELOW { 0.0 } else { exp_clamped(x) };
        sum += *v;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// Attention, third phase on `rows`: `h = rms_norm(h + attn @ o_proj^T)`.
pub(super) fn o_proj_rows(
    o_proj: &Projection,
    attn: &[f32],
    rows: &mut [f32],
    d: usize,
    eps: f32,
    s: &mut TaskScratch,
) {
    let r = rows.len() / d;
    let update = &mut s.update[..r * d];
    o_proj.apply(attn, update, &mut s.bf16);
    add_rms_norm_rows(rows, update, d, eps);
}

#[cfg(test)]
mod tests {
    use super::softmax_scaled;
    use crate::rng::SplitMix64;

    #[test]
    fn softmax_matches_float64_and_leaves_no_subnormals() {
        let mut rng = SplitMix64::new(17);
        // odd lengths (the tail), and spreads from gentle to far past e^-80
        for (len, spread) in [(1, 1.0), (7, 3.0), (97, 10.0), (916, 300.0), (333, 5000.0)] {
            let row: Vec<f32> = (0..len)
                .map(|_| (rng.uniform() * 2.0 - 1.0) as f32 * spread)
                .collect();
            let scale = 0.125f32;
            let mut got = row.clone();
            softmax_scaled(&mut got, scale);
            let max = row
                .iter()
                .map(|&v| f64::from(v * scale))
                .fold(f64::MIN, f64::max);
            let exps: Vec<f64> = row
                .iter()
                .map(|&v| (f64::from(v * scale) - max).exp())
                .collect();
            let sum: f64 = exps.iter().sum();
            for (i, (&g, &e)) in got.iter().zip(&exps).enumerate() {
                let want = e / sum;
                assert!(g == 0.0 || g.is_normal(), "len {len}: element {i} is {g}");
                // f32 rounds `v * scale - max` to about |x| 2^-24 absolute,
                // which e^x turns into that much relative error
                let x = e.ln().abs().min(200.0);
                let tolerance = want * (1e-6 + x * 1.2e-7) + 1e-30;
                assert!(
                    (f64::from(g) - want).abs() <= tolerance,
                    "len {len} spread {spread}: element {i}: {g} vs {want}"
                );
            }
        }
    }
}
