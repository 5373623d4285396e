//! Weights laid out once, at engine creation, for the matrix products of
//! the CPU engine.
//!
//! The MLP weights (token mixing and channel SwiGLU) are used in their
//! official layouts, borrowed from the model: the channel SwiGLU runs
//! feature-major (see `block::channel_swiglu_rows`), where `W @ h^T` reads
//! the `[out, in]` weight in place, and the token-mixing weights multiply
//! from the left (`W @ h`) already. Attention multiplies token-major rows
//! from the right (`h @ W^T`); faer hands such a product to its GEMM as its
//! transpose, in which the weight becomes the left operand, and in the
//! official layout that operand would be packed again on every call. Stored
//! as `W^T` (`[in, out]`, row-major) it is read in place.

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
    /// MLP over the sequence axis: the official layouts (borrowed from the
    /// model by layer index).
    Mlp,
    /// Attention: `qkv_t = qkv^T` `[D, 3D]`, `o_t = o_proj^T` `[D, D]`.
    Attention { qkv_t: Vec<f32>, o_t: Vec<f32> },
}

impl PackedMixer {
    /// The token mixers of every block of `model`.
    pub fn for_model(model: &TrmModel) -> Vec<PackedMixer> {
        let d = model.config().hidden_size;
        model
            .weights()
            .layers
            .iter()
            .map(|layer| match &layer.mixer {
                TokenMixer::Mlp { .. } => PackedMixer::Mlp,
                TokenMixer::Attention { qkv, o_proj } => PackedMixer::Attention {
                    qkv_t: transpose(qkv, 3 * d, d),
                    o_t: transpose(o_proj, d, d),
                },
            })
            .collect()
    }
}
