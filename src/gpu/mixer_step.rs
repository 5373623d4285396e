//! The fused recursion step of the MLP-mixer model: one dispatch per network
//! call (`shaders/mixer_step.wgsl` after the shared prelude
//! `shaders/common/step_common.wgsl`, whose headers state the contract).
//!
//! The CPU function it must equal is `CpuEngine::net` with
//! `token_panels::TokenMlp::apply` and `block::channel_swiglu_rows`
//! (`src/cpu/`).

use crate::config::TrmConfig;
use crate::error::{Result, TrmError};
use crate::model::{TokenMixer, TrmModel};

use super::context::GpuContext;
use super::step_common::{StepPipeline, channel_floats, pad4, push_rows, step_source};

const SOURCE: &str = step_source!("mixer_step.wgsl");
/// Name of the kernel (pipeline cache, labels, error messages).
pub(crate) const KERNEL: &str = "mixer_step.wgsl";

/// Floats of per-puzzle scratch: the gated activations of the larger
/// SwiGLU, `max(TI D, CI S)`.
pub(crate) fn scratch_floats(config: &TrmConfig) -> usize {
    let (s, d) = (config.state_len(), config.hidden_size);
    (config.token_inter() * d).max(config.channel_inter() * s)
}

/// The layer weights in the kernel's layout: per layer `tok_gu [2TI, SP] |
/// tok_dn [S, TI] | ch_gu [2CI, DP] | ch_dn [D, CI]`, every row zero-padded
/// to a multiple of 4 floats. `None` for an attention model.
pub(crate) fn pack_weights(model: &TrmModel) -> Option<Vec<f32>> {
    let config = model.config();
    let mut packed = Vec::with_capacity(layer_floats(config) * config.stored_layers());
    for layer in &model.weights().layers {
        let TokenMixer::Mlp { gate_up, down } = &layer.mixer else {
            return None;
        };
        push_rows(&mut packed, gate_up);
        push_rows(&mut packed, down);
        push_rows(&mut packed, &layer.gate_up);
        push_rows(&mut packed, &layer.down);
    }
    Some(packed)
}

/// Floats of one layer in the packed layout.
pub(crate) fn layer_floats(config: &TrmConfig) -> usize {
    let s = config.state_len();
    let ti = config.token_inter();
    2 * ti * pad4(s) + s * pad4(ti) + channel_floats(config)
}

/// Uploads the layer weights and builds the pipeline.
pub(crate) fn new(ctx: &GpuContext, model: &TrmModel) -> Result<StepPipeline> {
    let config = model.config();
    let packed = pack_weights(model).ok_or_else(|| {
        TrmError::Gpu("mixer_step: the model's blocks are not MLP-mixer blocks".into())
    })?;
    let constants = [
        ("TI", config.token_inter() as f64),
        ("SP", pad4(config.state_len()) as f64),
    ];
    StepPipeline::new(ctx, config, KERNEL, SOURCE, &packed, &constants)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(packed.len(), 2 * layer_floats(&config));
        assert_eq!(layer_floats(&config) % 4, 0);
        // first row of tok_gu: 13 weights then 3 zeros
        let TokenMixer::Mlp { gate_up, .. } = &model.weights().layers[0].mixer else {
            unreachable!()
        };
        let gate_up = gate_up.to_f32();
        assert_eq!(&packed[..13], &gate_up[..13]);
        assert_eq!(&packed[13..16], &[0.0; 3]);
        assert_eq!(&packed[16..29], &gate_up[13..26]);
    }

    #[test]
    fn the_kernel_source_is_prelude_then_kernel() {
        assert!(SOURCE.starts_with(include_str!("../../shaders/common/params.wgsl")));
        assert!(SOURCE.contains(include_str!("../../shaders/common/step_common.wgsl")));
        assert!(SOURCE.ends_with(include_str!("../../shaders/mixer_step.wgsl")));
    }
}
