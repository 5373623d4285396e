//! The fused recursion step of the MLP-mixer model: a network call in a
//! dispatch per segment (`shaders/mixer_step.wgsl` after the shared prelude
//! `shaders/common/step_common.wgsl`, whose headers state the contract).
//!
//! The CPU function it must equal is `CpuEngine::net` with
//! `token_panels::TokenMlp::apply` and `block::channel_swiglu_rows`
//! (`src/cpu/`).

use crate::config::TrmConfig;
use crate::error::{Result, TrmError};
use crate::model::{TokenMixer, TrmModel};

use crate::weights::Precision;

use super::context::GpuContext;
use super::step_common::{
    StepPipeline, channel_groups, group_bytes, matrix_groups, pad4, push_rows,
};

/// Floats of per-puzzle scratch: the gated activations of the larger
/// SwiGLU, `max(TI D, CI S)`.
pub(crate) fn scratch_floats(config: &TrmConfig) -> usize {
    let (s, d) = (config.state_len(), config.hidden_size);
    (config.token_inter() * d).max(config.channel_inter() * s)
}

/// The layer weights in the kernel's layout at the model's precision, as
/// words: per layer `tok_gu [2TI, SP] | tok_dn [S, TI] | ch_gu [2CI, DP] |
/// ch_dn [D, CI]`, every row zero-padded to a multiple of 4 weights, each
/// int8 matrix followed by its row scales (`push_rows`).
pub(crate) fn pack_weights(model: &TrmModel) -> Result<Vec<u32>> {
    let config = model.config();
    let precision = model.precision();
    let mut packed = Vec::with_capacity(weight_bytes(config, precision) as usize / 4);
    for layer in &model.weights().layers {
        let TokenMixer::Mlp { gate_up, down } = &layer.mixer else {
            return Err(TrmError::Gpu(
                "mixer_step: the model's blocks are not MLP-mixer blocks".into(),
            ));
        };
        for matrix in [gate_up, down, &layer.gate_up, &layer.down] {
            push_rows(&mut packed, matrix, precision)?;
        }
    }
    Ok(packed)
}

/// Groups (of 4 weights) of one layer in the packed layout at `precision`.
pub(crate) fn layer_groups(config: &TrmConfig, precision: Precision) -> usize {
    let s = config.state_len();
    let ti = config.token_inter();
    matrix_groups(2 * ti, pad4(s), precision)
        + matrix_groups(s, pad4(ti), precision)
        + channel_groups(config, precision)
}

/// Bytes of everything the kernel binds as weights at `precision`.
pub(crate) fn weight_bytes(config: &TrmConfig, precision: Precision) -> u64 {
    (layer_groups(config, precision) * config.stored_layers() * group_bytes(precision)) as u64
}

/// The kernel's override constants besides the prelude's: TI, SP.
pub(crate) fn own_constants(config: &TrmConfig) -> Vec<(&'static str, f64)> {
    vec![
        ("TI", config.token_inter() as f64),
        ("SP", pad4(config.state_len()) as f64),
    ]
}

/// Uploads the layer weights and builds the pipeline.
pub(crate) fn new(ctx: &GpuContext, model: &TrmModel) -> Result<StepPipeline> {
    let packed = pack_weights(model)?;
    StepPipeline::new(ctx, model.config(), model.precision(), &packed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::kernels::KernelFile;
    use crate::gpu::step_common::Lanes;

    #[test]
    fn packed_rows_are_padded_to_vec4() {
        let config = TrmConfig::from_json(
            r#"{"seq_len": 13, "vocab_size": 5, "hidden_size": 18, "expansion": 2,
                "H_cycles": 1, "L_cycles": 1, "L_layers": 2, "halt_max_steps": 1,
                "mlp_t": true, "pos_encodings": "none"}"#,
        )
        .unwrap();
        let model = TrmModel::random(config.clone(), 1, 0.5).unwrap();
        let packed = pack_weights(&model).unwrap();
        let f32_groups = layer_groups(&config, Precision::F32);
        assert_eq!(packed.len(), 2 * 4 * f32_groups);
        // first row of tok_gu: 13 weights then 3 zeros
        let TokenMixer::Mlp { gate_up, .. } = &model.weights().layers[0].mixer else {
            unreachable!()
        };
        let gate_up = gate_up.to_f32();
        let packed: Vec<f32> = packed.iter().map(|&w| f32::from_bits(w)).collect();
        assert_eq!(&packed[..13], &gate_up[..13]);
        assert_eq!(&packed[13..16], &[0.0; 3]);
        assert_eq!(&packed[16..29], &gate_up[13..26]);
        // bf16 is half the words; int8 a quarter, plus a scale per row
        let rows = 2 * (2 * config.token_inter() + 13) + 2 * (2 * config.channel_inter() + 18);
        for (precision, words) in [
            (Precision::Bf16, packed.len() / 2),
            (Precision::F16, packed.len() / 2),
            (Precision::Int8, packed.len() / 4 + rows),
        ] {
            let model = model.to_precision(precision).unwrap();
            let got = pack_weights(&model).unwrap();
            assert_eq!(got.len(), words, "{precision}");
            assert_eq!(4 * got.len() as u64, weight_bytes(&config, precision));
        }
    }

    #[test]
    fn the_kernel_source_is_preludes_then_kernel() {
        for (precision, prelude) in [
            (
                Precision::F32,
                include_str!("../../shaders/common/weights_f32.wgsl"),
            ),
            (
                Precision::F16,
                include_str!("../../shaders/common/weights_f16.wgsl"),
            ),
            (
                Precision::Bf16,
                include_str!("../../shaders/common/weights_bf16.wgsl"),
            ),
            (
                Precision::Int8,
                include_str!("../../shaders/common/weights_int8.wgsl"),
            ),
        ] {
            let source = KernelFile::MixerStep.source(precision, Lanes::Workgroup);
            assert!(source.starts_with(include_str!("../../shaders/common/params.wgsl")));
            assert!(source.contains(prelude));
            assert!(source.contains(include_str!("../../shaders/common/lanes_workgroup.wgsl")));
            assert!(source.contains(include_str!("../../shaders/common/step_common.wgsl")));
            assert!(source.ends_with(include_str!("../../shaders/mixer_step.wgsl")));
        }
    }
}
