//! Weights laid out once, at engine creation, for the matrix products of
//! the CPU engine.
//!
//! The channel SwiGLU's weights are packed into panels for its own
//! microkernel (`panels.rs`), the token-mixing MLP's into the register
//! tiles of its kernel (`token_panels.rs`). Attention multiplies token-major rows
//! from the right (`h @ W^T`); faer hands such a product to its GEMM as its
//! transpose, in which the weight becomes the left operand, and in the
//! official layout that operand would be packed again on every call. Stored
//! as `W^T` (`[in, out]`, row-major) it is read in place.

use super::panels::PanelWeights;
use super::token_panels::TokenMlp;
use crate::model::{TokenMixer, TrmModel};

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

/// Token-mixer weights in the engine's layout, one per block.
pub(super) enum PackedMixer {
    /// MLP over the sequence axis, packed for its kernel.
    Mlp(TokenMlp),
    /// Attention: `qkv_t = qkv^T` `[D, 3D]`, `o_t = o_proj^T` `[D, D]`.
    Attention { qkv_t: Vec<f32>, o_t: Vec<f32> },
}

/// The weights of one block in the engine's layout.
pub(super) struct PackedLayer {
    pub mixer: PackedMixer,
    /// Channel SwiGLU `gate_up` (`[2 inter(D), D]`), as gate/up pairs.
    pub gate_up: PanelWeights,
    /// Channel SwiGLU `down` (`[D, inter(D)]`).
    pub down: PanelWeights,
}

impl PackedLayer {
    /// The blocks of `model`.
    pub fn for_model(model: &TrmModel) -> Vec<PackedLayer> {
        let d = model.config().hidden_size;
        let ci = model.config().channel_inter();
        model
            .weights()
            .layers
            .iter()
            .map(|layer| PackedLayer {
                mixer: match &layer.mixer {
                    TokenMixer::Mlp { gate_up, down } => PackedMixer::Mlp(TokenMlp::new(
                        &gate_up.to_f32(),
                        &down.to_f32(),
                        model.config().state_len(),
                        model.config().token_inter(),
                    )),
                    TokenMixer::Attention { qkv, o_proj } => PackedMixer::Attention {
                        qkv_t: transpose(&qkv.to_f32(), 3 * d, d),
                        o_t: transpose(&o_proj.to_f32(), d, d),
                    },
                },
                gate_up: PanelWeights::swiglu(&layer.gate_up.to_f32(), ci, d),
                down: PanelWeights::plain(&layer.down.to_f32(), d, ci),
            })
            .collect()
    }
}
