//! What a model puts on a device once, shared by the engines of that model
//! on the device: the network-call kernel of its variant (with its
//! weights), the embedding, the heads and the halting kernel.

use crate::config::TrmConfig;
use crate::error::Result;
use crate::model::TrmModel;
use crate::weights::Precision;

use super::context::GpuContext;
use super::embed::Embed;
use super::halt::Halt;
use super::heads::Heads;
use super::layout::Workgroups;
use super::step_common::StepPipeline;
use super::{attention_step, mixer_step};

/// The network-call kernel of the model's variant: `mixer_step` for the
/// MLP-mixer model, `attention_step` for the attention model. Both bind the
/// same buffers and run a call's segments, one dispatch each.
pub(super) struct StepKernel {
    pub pipeline: StepPipeline,
}

impl StepKernel {
    /// Builds the kernel of `model`'s variant.
    pub fn new(ctx: &GpuContext, model: &TrmModel) -> Result<Self> {
        Ok(if model.config().mlp_t {
            StepKernel {
                pipeline: mixer_step::new(ctx, model)?,
            }
        } else {
            StepKernel {
                pipeline: attention_step::new(ctx, model)?,
            }
        })
    }

    /// Floats of per-puzzle scratch the variant's kernel needs.
    pub fn scratch_floats(config: &TrmConfig) -> usize {
        if config.mlp_t {
            mixer_step::scratch_floats(config)
        } else {
            attention_step::scratch_floats(config)
        }
    }

    /// Bytes of the weights the variant's kernel binds, stored at
    /// `precision`.
    pub fn weight_bytes(config: &TrmConfig, precision: Precision) -> u64 {
        if config.mlp_t {
            mixer_step::weight_bytes(config, precision)
        } else {
            attention_step::weight_bytes(config, precision)
        }
    }

    /// Records one dispatch of a call's segment on a chunk's `step_group`.
    pub fn record(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        step_group: &wgpu::BindGroup,
        params_offset: u32,
        workgroups: Workgroups<'_>,
    ) {
        self.pipeline
            .record(pass, step_group, params_offset, workgroups)
    }
}

/// What a model puts on a device once: its weights and the kernels that
/// read them.
pub(super) struct Resident {
    pub step: StepKernel,
    pub embed: Embed,
    pub heads: Heads,
    pub halt: Halt,
}
