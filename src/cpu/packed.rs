//! Weights laid out once, at engine creation, for the matrix products of
//! the CPU engine.
//!
//! The channel SwiGLU's weights are packed into panels for its own
//! microkernel (`panels.rs`), or, for int8 weights with matched
//! activations, kept int8 in the integer kernel's panels
//! (`int8_panels.rs`); the token-mixing MLP's into the register
//! tiles of its kernel (`token_panels.rs`). For bf16 weights with matched
//! activations on a CPU with AMX, every block product keeps them bf16 in
//! AMX tiles (`amx_panels.rs`, `amx_token.rs`). Attention multiplies token-major rows
//! from the right (`h @ W^T`); faer hands such a product to its GEMM as its
//! transpose, in which the weight becomes the left operand, and in the
//! official layout that operand would be packed again on every call. Stored
//! as `W^T` (`[in, out]`, row-major) it is read in place.

use super::ActivationPrecision;
use super::amx::Amx;
use super::amx_panels::{AmxBf16Panels, Out};
use super::amx_token::AmxTokenMlp;
use super::int8_panels::{Int8Kernel, Int8Panels};
use super::kernels::Kernels;
use super::ops::{mat, mat_mut, matmul_into};
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
    /// The same on AMX tiles in bf16.
    AmxMlp(AmxTokenMlp),
    /// Attention: the `qkv` (`[3D, D]`) and `o_proj` (`[D, D]`) products.
    Attention { qkv: Projection, o: Projection },
}

/// A linear layer `out = a @ w^T` of the attention (`[out, in]` weight).
pub(super) enum Projection {
    /// `w^T` (`[in, out]`, row-major), multiplied by faer in f32.
    F32 {
        t: Vec<f32>,
        inputs: usize,
        outputs: usize,
    },
    /// bf16 on AMX tiles.
    Bf16(AmxBf16Panels),
}

impl Projection {
    fn new(w: &Matrix, amx: Option<Amx>) -> Self {
        match amx {
            Some(amx) => {
                Projection::Bf16(AmxBf16Panels::plain(amx, &bf16_bits(w), w.rows(), w.cols()))
            }
            None => Projection::F32 {
                t: transpose(&w.to_f32(), w.rows(), w.cols()),
                inputs: w.cols(),
                outputs: w.rows(),
            },
        }
    }

    /// `out` (`[r, outputs]`) = `rows` (`[r, inputs]`) `@ w^T`; `bf16` is
    /// scratch for the rounded rows (see [`Projection::bf16_scratch`]).
    pub fn apply(&self, rows: &[f32], out: &mut [f32], bf16: &mut [u16]) {
        match self {
            Projection::F32 { t, inputs, outputs } => {
                let r = rows.len() / inputs;
                matmul_into(
                    mat_mut(out, r, *outputs),
                    mat(rows, r, *inputs),
                    mat(t, *inputs, *outputs),
                    faer::Par::Seq,
                );
            }
            Projection::Bf16(w) => {
                let r = rows.len() / w.inputs();
                let a = w.load_rows(rows, bf16);
                w.apply(a, r, Out::F32(out));
            }
        }
    }

    /// bf16 scratch [`Projection::apply`] needs for `rows` rows.
    fn bf16_scratch(&self, rows: usize) -> usize {
        match self {
            Projection::F32 { .. } => 0,
            Projection::Bf16(w) => w.input_len(rows),
        }
    }
}

/// The bf16 elements of `w`, as bits.
fn bf16_bits(w: &Matrix) -> Vec<u16> {
    debug_assert_eq!(w.precision(), Precision::Bf16);
    w.raw()
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect()
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
    /// bf16 as stored, on AMX tiles, for bf16 activations.
    Bf16 {
        gate_up: AmxBf16Panels,
        down: AmxBf16Panels,
    },
}

impl ChannelWeights {
    fn new(
        gate_up: &Matrix,
        down: &Matrix,
        d: usize,
        ci: usize,
        activations: ActivationPrecision,
        kernels: Kernels,
    ) -> Self {
        let matched = |precision| {
            activations == ActivationPrecision::Matched
                && gate_up.precision() == precision
                && down.precision() == precision
        };
        let int8 = matched(Precision::Int8) && ci.max(d) <= super::int8_panels::MAX_INPUTS;
        let kernel = kernels.int8;
        if let (true, Some(amx)) = (matched(Precision::Bf16), kernels.amx) {
            ChannelWeights::Bf16 {
                gate_up: AmxBf16Panels::swiglu(amx, &bf16_bits(gate_up), ci, d),
                down: AmxBf16Panels::plain(amx, &bf16_bits(down), d, ci),
            }
        } else if int8 {
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
    pub fn int8_kernel(&self) -> Option<super::Int8Kernel> {
        match self {
            ChannelWeights::Int8 { gate_up, .. } => Some(gate_up.kernel()),
            _ => None,
        }
    }

    /// The kernel family the products run on: `f32`, `amx-bf16`, or the
    /// integer kernel's name.
    pub fn family(&self) -> &'static str {
        match self {
            ChannelWeights::F32 { .. } => "f32",
            ChannelWeights::Int8 { gate_up, .. } => gate_up.kernel().as_str(),
            ChannelWeights::Bf16 { .. } => "amx-bf16",
        }
    }

    /// bf16 scratch the products need for `rows` rows: the rounded input
    /// rows and the gated activations.
    fn bf16_scratch(&self, rows: usize) -> usize {
        match self {
            ChannelWeights::Bf16 { gate_up, down } => {
                gate_up.input_len(rows) + down.input_len(rows)
            }
            _ => 0,
        }
    }
}

/// The weights of one block in the engine's layout.
pub(super) struct PackedLayer {
    pub mixer: PackedMixer,
    pub channel: ChannelWeights,
}

impl PackedLayer {
    /// The blocks of `model`, for products with `activations` on
    /// `kernels`.
    pub fn for_model(
        model: &TrmModel,
        activations: ActivationPrecision,
        kernels: Kernels,
    ) -> Vec<PackedLayer> {
        let config = model.config();
        let (d, ci) = (config.hidden_size, config.channel_inter());
        // AMX for the token mixer's products where both weights are bf16,
        // or (with the AMX int8 kernel) both int8
        let amx = |a: &Matrix, b: &Matrix, precision| {
            let int8 = precision == Precision::Int8 && kernels.int8 == Int8Kernel::Amx;
            let bf16 = precision == Precision::Bf16 && kernels.amx.is_some();
            (activations == ActivationPrecision::Matched
                && a.precision() == precision
                && b.precision() == precision
                && (int8 || bf16))
                .then(Amx::detect)
                .flatten()
        };
        model
            .weights()
            .layers
            .iter()
            .map(|layer| PackedLayer {
                mixer: match &layer.mixer {
                    TokenMixer::Mlp { gate_up, down } => {
                        let (s, inter) = (config.state_len(), config.token_inter());
                        if let Some(amx) = amx(gate_up, down, Precision::Bf16) {
                            PackedMixer::AmxMlp(AmxTokenMlp::bf16(
                                amx,
                                &bf16_bits(gate_up),
                                &bf16_bits(down),
                                s,
                                inter,
                            ))
                        } else if let Some(amx) = amx(gate_up, down, Precision::Int8) {
                            PackedMixer::AmxMlp(AmxTokenMlp::int8(
                                amx,
                                (gate_up.raw(), gate_up.scales()),
                                (down.raw(), down.scales()),
                                s,
                                inter,
                            ))
                        } else {
                            PackedMixer::Mlp(TokenMlp::new(
                                &gate_up.to_f32(),
                                &down.to_f32(),
                                s,
                                inter,
                            ))
                        }
                    }
                    TokenMixer::Attention { qkv, o_proj } => {
                        let amx = amx(qkv, o_proj, Precision::Bf16);
                        PackedMixer::Attention {
                            qkv: Projection::new(qkv, amx),
                            o: Projection::new(o_proj, amx),
                        }
                    }
                },
                channel: ChannelWeights::new(
                    &layer.gate_up,
                    &layer.down,
                    d,
                    ci,
                    activations,
                    kernels,
                ),
            })
            .collect()
    }

    /// bf16 scratch a task needs for `rows` rows (0 without AMX bf16).
    pub fn bf16_scratch(&self, rows: usize) -> usize {
        let mixer = match &self.mixer {
            PackedMixer::Attention { qkv, o } => qkv.bf16_scratch(rows).max(o.bf16_scratch(rows)),
            _ => 0,
        };
        mixer.max(self.channel.bf16_scratch(rows))
    }
}
