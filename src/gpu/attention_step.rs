//! The fused recursion step of the attention model: a network call in a
//! dispatch per segment (`shaders/attention_step.wgsl` after the shared prelude
//! `shaders/common/step_common.wgsl`, whose headers state the contract).
//!
//! The CPU functions it must equal are `CpuEngine::net` with
//! `block::qkv_rows`, `block::attention_head`, `block::o_proj_rows` and
//! `block::channel_mlp_rows` (`src/cpu/`); the RoPE tables and the score
//! scale are the model's ([`crate::model::maths`]), as the CPU engine's,
//! the tables computed on the host and uploaded after the layer weights.

use crate::config::{PosEncodings, TrmConfig};
use crate::error::{Result, TrmError};
use crate::model::maths::{attention_scale, rope_tables};
use crate::model::{TokenMixer, TrmModel};
use crate::weights::Precision;

use super::context::GpuContext;
use super::step_common::{
    StepPipeline, channel_groups, f32_groups, group_bytes, matrix_groups, pad4, push_f32, push_rows,
};

/// Floats of per-puzzle scratch: `qkv [S, 3D]` and the head outputs
/// `[S, D]`, or later in the block the channel SwiGLU's gated activations
/// `[CI, S]`, whichever is larger.
pub(crate) fn scratch_floats(config: &TrmConfig) -> usize {
    let (s, d) = (config.state_len(), config.hidden_size);
    (4 * s * d).max(config.channel_inter() * s)
}

/// Groups (of 4 weights) of one layer in the packed layout at `precision`:
/// `qkv [3D, DP] | o [D, DP] | ch_gu [2CI, DP] | ch_dn [D, CI]`.
pub(crate) fn layer_groups(config: &TrmConfig, precision: Precision) -> usize {
    let d = config.hidden_size;
    matrix_groups(3 * d, pad4(d), precision)
        + matrix_groups(d, pad4(d), precision)
        + channel_groups(config, precision)
}

/// Floats of the RoPE tables (`cos [S, HD] | sin [S, HD]`; none without RoPE).
pub(crate) fn table_floats(config: &TrmConfig) -> usize {
    if config.pos_encodings == PosEncodings::Rope {
        2 * config.state_len() * config.head_dim()
    } else {
        0
    }
}

/// Bytes of everything the kernel binds as weights at `precision`: the
/// layers, then the RoPE tables in f32 (whole groups).
pub(crate) fn weight_bytes(config: &TrmConfig, precision: Precision) -> u64 {
    let groups = layer_groups(config, precision) * config.stored_layers()
        + f32_groups(table_floats(config), precision);
    (groups * group_bytes(precision)) as u64
}

/// The weights in the kernel's layout at the model's precision, as words:
/// per layer `qkv [3D, DP] | o [D, DP] | ch_gu [2CI, DP] | ch_dn [D, CI]`,
/// every row zero-padded to a multiple of 4 weights, each int8 matrix
/// followed by its row scales (`push_rows`), then the RoPE tables
/// `cos [S, HD] | sin [S, HD]` in f32 (RoPE only), padded to a whole group.
pub(crate) fn pack_weights(model: &TrmModel) -> Result<Vec<u32>> {
    let config = model.config();
    let precision = model.precision();
    let mut packed = Vec::with_capacity(weight_bytes(config, precision) as usize / 4);
    for layer in &model.weights().layers {
        let TokenMixer::Attention { qkv, o_proj } = &layer.mixer else {
            return Err(TrmError::Gpu(
                "attention_step: the model's blocks are not attention blocks".into(),
            ));
        };
        for matrix in [qkv, o_proj, &layer.gate_up, &layer.down] {
            push_rows(&mut packed, matrix, precision)?;
        }
    }
    if config.pos_encodings == PosEncodings::Rope {
        let (cos, sin) = rope_tables(config.state_len(), config.head_dim(), config.rope_theta);
        let start = packed.len();
        push_f32(&mut packed, &cos, precision);
        push_f32(&mut packed, &sin, precision);
        let words = f32_groups(cos.len() + sin.len(), precision) * group_bytes(precision) / 4;
        packed.resize(start + words, 0);
    }
    Ok(packed)
}

/// The kernel's override constants besides the prelude's: HEADS, HD,
/// ROPE, SCALE.
pub(crate) fn own_constants(config: &TrmConfig) -> Vec<(&'static str, f64)> {
    let head_dim = config.head_dim();
    let rope = config.pos_encodings == PosEncodings::Rope;
    vec![
        ("HEADS", config.num_heads as f64),
        ("HD", head_dim as f64),
        ("ROPE", if rope { 1.0 } else { 0.0 }),
        ("SCALE", attention_scale(head_dim) as f64),
    ]
}

/// Uploads the weights and RoPE tables and builds the pipeline.
pub(crate) fn new(ctx: &GpuContext, model: &TrmModel) -> Result<StepPipeline> {
    let packed = pack_weights(model)?;
    StepPipeline::new(ctx, model.config(), model.precision(), &packed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pos: &str) -> TrmConfig {
        TrmConfig::from_json(&format!(
            r#"{{"seq_len": 13, "vocab_size": 5, "hidden_size": 18, "num_heads": 3,
                "expansion": 2, "H_cycles": 1, "L_cycles": 1, "L_layers": 2,
                "halt_max_steps": 1, "mlp_t": false, "pos_encodings": "{pos}"}}"#
        ))
        .unwrap()
    }

    #[test]
    fn packed_layout_pads_rows_and_appends_the_rope_tables() {
        let config = config("rope");
        let model = TrmModel::random(config.clone(), 1, 0.5).unwrap();
        let packed = pack_weights(&model).unwrap();
        assert_eq!(
            4 * packed.len() as u64,
            weight_bytes(&config, Precision::F32)
        );
        let packed: Vec<f32> = packed.iter().map(|&w| f32::from_bits(w)).collect();
        let TokenMixer::Attention { qkv, o_proj } = &model.weights().layers[0].mixer else {
            unreachable!()
        };
        let (qkv, o_proj) = (qkv.to_f32(), o_proj.to_f32());
        // qkv rows: 18 weights then 2 zeros
        assert_eq!(&packed[..18], &qkv[..18]);
        assert_eq!(&packed[18..20], &[0.0; 2]);
        assert_eq!(&packed[20..38], &qkv[18..36]);
        let o_at = 3 * 18 * 20;
        assert_eq!(&packed[o_at..o_at + 18], &o_proj[..18]);
        let (cos, sin) = rope_tables(13, 6, 10000.0);
        let tables = 2 * 4 * layer_groups(&config, Precision::F32);
        assert_eq!(&packed[tables..tables + cos.len()], &cos[..]);
        assert_eq!(&packed[tables + cos.len()..], &sin[..]);
        // at every precision the tables follow the layers' groups, in f32
        for precision in [Precision::F16, Precision::Bf16, Precision::Int8] {
            let words = pack_weights(&model.to_precision(precision).unwrap()).unwrap();
            assert_eq!(4 * words.len() as u64, weight_bytes(&config, precision));
            let at = 2 * layer_groups(&config, precision) * group_bytes(precision) / 4;
            let got: Vec<f32> = words[at..at + cos.len() + sin.len()]
                .iter()
                .map(|&w| f32::from_bits(w))
                .collect();
            assert_eq!(&got[..cos.len()], &cos[..], "{precision}");
            assert_eq!(&got[cos.len()..], &sin[..], "{precision}");
        }
    }

    #[test]
    fn no_tables_without_rope() {
        for pos in ["none", "learned"] {
            let config = config(pos);
            let model = TrmModel::random(config.clone(), 2, 0.5).unwrap();
            assert_eq!(table_floats(&config), 0);
            assert_eq!(
                pack_weights(&model).unwrap().len(),
                2 * 4 * layer_groups(&config, Precision::F32)
            );
        }
    }

    #[test]
    fn scratch_holds_qkv_and_heads_or_the_gated_activations() {
        let config = config("none");
        let (s, d, ci) = (13, 18, config.channel_inter());
        assert_eq!(scratch_floats(&config), (4 * s * d).max(ci * s));
    }
}
