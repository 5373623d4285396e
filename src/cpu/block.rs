//! One TRM block on one puzzle, `h: [S, D]` row-major, updated in place:
//! the token mixer (MLP over the sequence axis, or attention), then the
//! channel SwiGLU, each followed by its residual add and RMSNorm.

use faer::Par;

use super::ops::{
    add_rms_norm_columns, add_rms_norm_rows, mat, mat_mut, mat_strided, matmul_into, silu,
};
use super::{CpuEngine, Scratch};
use crate::model::{LayerWeights, TokenMixer};

/// `[g | u] -> silu(g) * u`, for `rows` rows of `2 * inter` values in `wide`
/// laid out with `g` then `u` along a row (channel SwiGLU).
fn gate_rows(wide: &[f32], gated: &mut [f32], rows: usize, inter: usize) {
    for (g_row, w_row) in gated[..rows * inter]
        .chunks_exact_mut(inter)
        .zip(wide.chunks_exact(2 * inter))
    {
        let (g, u) = w_row.split_at(inter);
        for ((o, &a), &b) in g_row.iter_mut().zip(g).zip(u) {
            *o = silu(a) * b;
        }
    }
}

/// Token mixer of block `layer`.
pub(super) fn token_mixer(
    engine: &CpuEngine,
    layer: &LayerWeights,
    h: &mut [f32],
    scratch: &mut Scratch,
    par: Par,
) {
    match &layer.mixer {
        TokenMixer::Mlp { gate_up, down } => token_mlp(engine, gate_up, down, h, scratch, par),
        TokenMixer::Attention { qkv, o_proj } => attention(engine, qkv, o_proj, h, scratch, par),
    }
}

/// MLP-mixer: `t = h^T; t = rms_norm(t + swiglu_t(t)); h = t^T`. Computed
/// without transposing: `swiglu_t(h^T)^T = down_t @ gate(gate_up_t @ h)`,
/// and the norm runs over the columns of h.
fn token_mlp(
    engine: &CpuEngine,
    gate_up: &[f32],
    down: &[f32],
    h: &mut [f32],
    scratch: &mut Scratch,
    par: Par,
) {
    let config = engine.model.config();
    let (s, d, ti) = (config.state_len(), config.hidden_size, config.token_inter());
    // [2 ti, S] @ [S, D] -> [2 ti, D]: rows 0..ti are g, ti..2ti are u
    matmul_into(
        mat_mut(&mut scratch.wide, 2 * ti, d),
        mat(gate_up, 2 * ti, s),
        mat(h, s, d),
        par,
    );
    let (g, u) = scratch.wide[..2 * ti * d].split_at(ti * d);
    for ((o, &a), &b) in scratch.gated[..ti * d].iter_mut().zip(g).zip(u) {
        *o = silu(a) * b;
    }
    // [S, ti] @ [ti, D] -> [S, D]
    matmul_into(
        mat_mut(&mut scratch.update, s, d),
        mat(down, s, ti),
        mat(&scratch.gated, ti, d),
        par,
    );
    add_rms_norm_columns(
        h,
        &scratch.update,
        d,
        config.rms_norm_eps as f32,
        &mut scratch.scores,
    );
}

/// Channel SwiGLU: `h = rms_norm(h + down(silu(g) * u))`, `[g | u] = h @ gate_up^T`.
pub(super) fn channel_mlp(
    engine: &CpuEngine,
    layer: &LayerWeights,
    h: &mut [f32],
    scratch: &mut Scratch,
    par: Par,
) {
    let config = engine.model.config();
    let (s, d, ci) = (
        config.state_len(),
        config.hidden_size,
        config.channel_inter(),
    );
    matmul_into(
        mat_mut(&mut scratch.wide, s, 2 * ci),
        mat(h, s, d),
        mat(&layer.gate_up, 2 * ci, d).transpose(),
        par,
    );
    gate_rows(&scratch.wide, &mut scratch.gated, s, ci);
    matmul_into(
        mat_mut(&mut scratch.update, s, d),
        mat(&scratch.gated, s, ci),
        mat(&layer.down, d, ci).transpose(),
        par,
    );
    add_rms_norm_rows(h, &scratch.update, d, config.rms_norm_eps as f32);
}

/// Self-attention over all S positions (not causal), heads of width
/// `hd = D / num_heads`, RoPE on q and k when the model has it, then o_proj,
/// residual and RMSNorm over D.
fn attention(
    engine: &CpuEngine,
    qkv: &[f32],
    o_proj: &[f32],
    h: &mut [f32],
    scratch: &mut Scratch,
    par: Par,
) {
    let config = engine.model.config();
    let (s, d) = (config.state_len(), config.hidden_size);
    let (heads, hd) = (config.num_heads, config.head_dim());
    // [S, D] @ [D, 3D] -> [S, 3D]: per row q heads, then k heads, then v heads
    let wide = &mut scratch.wide[..s * 3 * d];
    matmul_into(
        mat_mut(wide, s, 3 * d),
        mat(h, s, d),
        mat(qkv, 3 * d, d).transpose(),
        par,
    );
    if let Some((cos, sin)) = &engine.rope {
        // q' = q cos + rotate_half(q) sin, rotate_half([a | b]) = [-b | a]
        let half = hd / 2;
        for (pos, row) in wide.chunks_exact_mut(3 * d).enumerate() {
            let (c, sn) = (
                &cos[pos * hd..(pos + 1) * hd],
                &sin[pos * hd..(pos + 1) * hd],
            );
            for head in row[..2 * d].chunks_exact_mut(hd) {
                for j in 0..half {
                    let (a, b) = (head[j], head[j + half]);
                    head[j] = a * c[j] - b * sn[j];
                    head[j + half] = b * c[j + half] + a * sn[j + half];
                }
            }
        }
    }
    let scale = 1.0 / (hd as f32).sqrt();
    let scores = &mut scratch.scores[..s * s];
    for head in 0..heads {
        let q = mat_strided(&wide[head * hd..], s, hd, 3 * d);
        let k = mat_strided(&wide[d + head * hd..], s, hd, 3 * d);
        let v = mat_strided(&wide[2 * d + head * hd..], s, hd, 3 * d);
        matmul_into(mat_mut(scores, s, s), q, k.transpose(), par);
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
        // heads concatenated along D
        let out = mat_mut(&mut scratch.gated[..s * d], s, d).subcols_mut(head * hd, hd);
        matmul_into(out, mat(scores, s, s), v, par);
    }
    matmul_into(
        mat_mut(&mut scratch.update, s, d),
        mat(&scratch.gated, s, d),
        mat(o_proj, d, d).transpose(),
        par,
    );
    add_rms_norm_rows(h, &scratch.update, d, config.rms_norm_eps as f32);
}
