//! Weights laid out once, at engine creation, for the matrix products of
//! the CPU engine.
//!
//! The channel SwiGLU's weights are packed into panels for its own
//! microkernel (`panels.rs`), or, for int8 weights with matched
//! activations, kept int8 in the integer kernel's panels
//! (`int8_panels.rs`); the token-mixing MLP's into the register
//! tiles of its kernel (`token_panels.rs`). Attention multiplies token-major rows
//! from the right (`h @ W^T`); faer hands such a product to its GEMM as its
//! transpose, in which the weight becomes the left operand, and in the
//! official layout that operand would be packed again on every call. Stored
//! as `W^T` (`[in, out]`, row-major) it is read in place.

use super::ActivationPrecision;
use super::int8_panels::{Int8Kernel, Int8Panels};
use super::panels::PanelWeights;
use super::token_panels::TokenMlp;
use crate::model::{TokenMixer, TrmModel};
use crate::weights::{Matrix, Precision};

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

/// The channel SwiGLU's weights: `gate_up` (`[2 inter(D), D]`, as
/// gate/up pairs) and `down` (`[D, inter(D)]`).
pub(super) enum ChannelWeights {
    /// Widened to f32, for f32 activations.
    F32 {
        gate_up: PanelWeights,
        down: PanelWeights,
    },
    /// int8 as stored, for per-token int8 activations.
    Int8 {
        gate_up: Int8Panels,
        down: Int8Panels,
    },
}

impl ChannelWeights {
    fn new(
        gate_up: &Matrix,
        down: &Matrix,
        d: usize,
        ci: usize,
        activations: ActivationPrecision,
        kernel: Int8Kernel,
    ) -> Self {
        let int8 = activations == ActivationPrecision::Matched
            && gate_up.precision() == Precision::Int8
            && down.precision() == Precision::Int8
            && ci.max(d) <= super::int8_panels::MAX_INPUTS;
        if int8 {
            ChannelWeights::Int8 {
                gate_up: Int8Panels::swiglu(gate_up.raw(), gate_up.scales(), ci, d, kernel),
                down: Int8Panels::plain(down.raw(), down.scales(), d, ci, kernel),
            }
        } else {
            ChannelWeights::F32 {
                gate_up: PanelWeights::swiglu(&gate_up.to_f32(), ci, d),
                down: PanelWeights::plain(&down.to_f32(), d, ci),
            }
        }
    }

    /// The integer kernel, when the products run on one.
    pub fn int8_kernel(&self) -> Option<Int8Kernel> {
        match self {
            ChannelWeights::F32 { .. } => None,
            ChannelWeights::Int8 { gate_up, .. } => Some(gate_up.kernel()),
        }
    }
}

/// The weights of one block in the engine's layout.
pub(super) struct PackedLayer {
    pub mixer: PackedMixer,
    pub channel: ChannelWeights,
}

impl PackedLayer {
    /// The blocks of `model`, for products with `activations` (int8 ones
    /// on `kernel`).
    pub fn for_model(
        model: &TrmModel,
        activations: ActivationPrecision,
        kernel: Int8Kernel,
    ) -> Vec<PackedLayer> {
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
                channel: ChannelWeights::new(
                    &layer.gate_up,
                    &layer.down,
                    d,
                    ci,
                    activations,
                    kernel,
                ),
            })
            .collect()
    }
}
