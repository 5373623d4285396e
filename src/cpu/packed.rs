//! Weights laid out once, at engine creation, for the matrix products of
//! the CPU engine.
//!
//! faer hands row-major products to its GEMM as their transposes, in which
//! the weight of `x @ W^T` becomes the left operand. In the official
//! `[out, in]` layout that operand is row-major and the GEMM would pack it
//! again on every call (a fifth of the time of a recursion step); stored as
//! `W^T` (`[in, out]`, row-major) it is already column-major, and the GEMM
//! reads it in place. The token-mixing weights multiply from the left
//! (`W @ h`) and are already in the right layout, so they are borrowed as is.
//!
//! The channel `gate_up^T` also has its columns interleaved in groups of
//! [`GATE_GROUP`]: `g[0..16] u[0..16] g[16..32] u[16..32] ...`, so that any
//! block of whole groups of its output columns holds the `g` and `u` that
//! gate each other. A small batch can then split the product by columns
//! (all rows stay in one task, where the GEMM is fastest) and still gate
//! each tile while it is in cache.

use crate::model::{TokenMixer, TrmModel};

/// Width of the gate/up column groups of [`PackedLayer::gate_up_t`]: one
/// AVX-512 vector; `inter(D)` is a multiple of 256, so of this.
pub(super) const GATE_GROUP: usize = 16;

/// `gate_up^T` (`[D, 2I]`) with its `g` and `u` columns interleaved in
/// groups of [`GATE_GROUP`].
fn interleave_gate_up(gate_up_t: &[f32], d: usize, inter: usize) -> Vec<f32> {
    let mut out = vec![0.0; d * 2 * inter];
    for (src, dst) in gate_up_t
        .chunks_exact(2 * inter)
        .zip(out.chunks_exact_mut(2 * inter))
    {
        let (g, u) = src.split_at(inter);
        for ((pair, g), u) in dst
            .chunks_exact_mut(2 * GATE_GROUP)
            .zip(g.chunks_exact(GATE_GROUP))
            .zip(u.chunks_exact(GATE_GROUP))
        {
            pair[..GATE_GROUP].copy_from_slice(g);
            pair[GATE_GROUP..].copy_from_slice(u);
        }
    }
    out
}

/// Transpose of a row-major `[rows, cols]` matrix, as row-major `[cols, rows]`.
fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}

/// Token-mixer weights in the engine's layout.
pub(super) enum PackedMixer {
    /// MLP over the sequence axis: the official layouts (borrowed from the
    /// model by layer index).
    Mlp,
    /// Attention: `qkv_t = qkv^T` `[D, 3D]`, `o_t = o_proj^T` `[D, D]`.
    Attention { qkv_t: Vec<f32>, o_t: Vec<f32> },
}

/// One block's weights in the engine's layout.
pub(super) struct PackedLayer {
    pub mixer: PackedMixer,
    /// `gate_up^T`, `[D, 2 inter(D)]`, its g and u columns interleaved in
    /// groups of [`GATE_GROUP`].
    pub gate_up_t: Vec<f32>,
    /// `down^T`, `[inter(D), D]`.
    pub down_t: Vec<f32>,
}

/// All block weights in the engine's layout.
pub(super) struct PackedWeights {
    pub layers: Vec<PackedLayer>,
}

impl PackedWeights {
    pub fn new(model: &TrmModel) -> Self {
        let c = model.config();
        let (d, ci) = (c.hidden_size, c.channel_inter());
        let layers = model
            .weights()
            .layers
            .iter()
            .map(|layer| PackedLayer {
                mixer: match &layer.mixer {
                    TokenMixer::Mlp { .. } => PackedMixer::Mlp,
                    TokenMixer::Attention { qkv, o_proj } => PackedMixer::Attention {
                        qkv_t: transpose(qkv, 3 * d, d),
                        o_t: transpose(o_proj, d, d),
                    },
                },
                gate_up_t: interleave_gate_up(&transpose(&layer.gate_up, 2 * ci, d), d, ci),
                down_t: transpose(&layer.down, d, ci),
            })
            .collect();
        PackedWeights { layers }
    }
}
