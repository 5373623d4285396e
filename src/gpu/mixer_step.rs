//! The fused recursion step of the MLP-mixer model: one dispatch per network
//! call (`shaders/mixer_step.wgsl`, whose header states the contract).
//!
//! The CPU function it must equal is `CpuEngine::net` with
//! `block::token_mixer` and `block::channel_mlp` (`src/cpu/`).

use crate::config::TrmConfig;
use crate::error::{Result, TrmError};
use crate::model::{TokenMixer, TrmModel};

use super::context::GpuContext;
use super::layout::{self, Entry};

const SOURCE: &str = include_str!("../../shaders/mixer_step.wgsl");
const KERNEL: &str = "mixer_step.wgsl";

/// Rounds up to a multiple of 4 (a vec4).
pub(crate) fn pad4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

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
    let (s, d) = (config.state_len(), config.hidden_size);
    let (ti, ci) = (config.token_inter(), config.channel_inter());
    let mut packed = Vec::with_capacity(layer_floats(config) * config.l_layers);
    let push_rows = |packed: &mut Vec<f32>, data: &[f32], cols: usize| {
        let padded = pad4(cols);
        for row in data.chunks_exact(cols.max(1)) {
            packed.extend_from_slice(row);
            packed.extend(std::iter::repeat_n(0.0, padded - cols));
        }
    };
    for layer in &model.weights().layers {
        let TokenMixer::Mlp { gate_up, down } = &layer.mixer else {
            return None;
        };
        push_rows(&mut packed, gate_up, s);
        push_rows(&mut packed, down, ti);
        push_rows(&mut packed, &layer.gate_up, d);
        push_rows(&mut packed, &layer.down, ci);
    }
    Some(packed)
}

/// Floats of one layer in the packed layout.
pub(crate) fn layer_floats(config: &TrmConfig) -> usize {
    let (s, d) = (config.state_len(), config.hidden_size);
    let (ti, ci) = (config.token_inter(), config.channel_inter());
    2 * ti * pad4(s) + s * pad4(ti) + 2 * ci * pad4(d) + d * pad4(ci)
}

/// Depth of a tile step for `workgroup_bytes` of workgroup memory: 32
/// (16 KiB) where the adapter has the WebGPU default, 16 (8 KiB) where it
/// has less (Apple's 16352 bytes). 64 (32 KiB, half the barriers) measured
/// no faster on lavapipe and costs occupancy on GPUs, so it is not used.
pub(crate) fn tile_depth(workgroup_bytes: u32) -> Option<u32> {
    [32u32, 16]
        .into_iter()
        .find(|tk| 2 * 64 * tk * 4 <= workgroup_bytes)
}

/// The step kernel of one model: weights on the device and the pipeline.
pub(crate) struct MixerStep {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    weights: wgpu::Buffer,
}

impl MixerStep {
    /// Uploads the layer weights and builds the pipeline.
    pub(crate) fn new(ctx: &GpuContext, model: &TrmModel) -> Result<Self> {
        let config = model.config();
        let packed = pack_weights(model)
            .ok_or_else(|| TrmError::BackendUnavailable("gpu for attention models".to_string()))?;
        let limits = ctx.limits();
        let tile_depth =
            tile_depth(limits.max_compute_workgroup_storage_size).ok_or_else(|| {
                TrmError::AdapterUnsuitable {
                    adapter: ctx.adapter_info().name.clone(),
                    reason: "less than 8 KiB of workgroup memory".into(),
                }
            })?;
        let weights = layout::upload_f32(ctx, "mixer_step weights", &packed)?;
        let layout = layout::bind_group_layout(
            ctx,
            KERNEL,
            &[
                Entry::ReadOnly,
                Entry::ReadWrite,
                Entry::ReadWrite,
                Entry::ReadOnly,
                Entry::Params,
            ],
        )?;
        let (s, d) = (config.state_len(), config.hidden_size);
        let constants = [
            ("S", s as f64),
            ("D", d as f64),
            ("TI", config.token_inter() as f64),
            ("CI", config.channel_inter() as f64),
            ("SP", pad4(s) as f64),
            ("DP", pad4(d) as f64),
            ("L_LAYERS", config.l_layers as f64),
            ("EPS", config.rms_norm_eps as f32 as f64),
            ("TK", tile_depth as f64),
        ];
        let pipeline = layout::pipeline(ctx, KERNEL, SOURCE, &layout, &constants)?;
        Ok(MixerStep {
            pipeline,
            layout,
            weights,
        })
    }

    /// The bind group of a chunk: its state, scratch, active list and
    /// parameter blocks.
    pub(crate) fn bind_group(
        &self,
        ctx: &GpuContext,
        xyz: &wgpu::Buffer,
        scratch: &wgpu::Buffer,
        active: &wgpu::Buffer,
        params: &wgpu::Buffer,
    ) -> Result<wgpu::BindGroup> {
        layout::bind_group(
            ctx,
            KERNEL,
            &self.layout,
            &[&self.weights, xyz, scratch, active, params],
        )
    }

    /// Records one recursion step for `workgroups` active puzzles; the
    /// parameter block at `params_offset` says which state is updated.
    pub(crate) fn record(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bind_group: &wgpu::BindGroup,
        params_offset: u32,
        workgroups: u32,
    ) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, bind_group, &[params_offset]);
        pass.dispatch_workgroups(workgroups, 1, 1);
    }
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
        assert_eq!(&packed[..13], &gate_up[..13]);
        assert_eq!(&packed[13..16], &[0.0; 3]);
        assert_eq!(&packed[16..29], &gate_up[13..26]);
    }

    #[test]
    fn tile_depth_fits_workgroup_memory() {
        assert_eq!(tile_depth(16384), Some(32));
        assert_eq!(tile_depth(16352), Some(16));
        assert_eq!(tile_depth(32768), Some(32));
        assert_eq!(tile_depth(4096), None);
    }
}
