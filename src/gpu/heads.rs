//! The output heads after an ACT step (`shaders/heads.wgsl`).
//!
//! The CPU function it must equal is `CpuEngine::heads` (`src/cpu/mod.rs`).

use crate::config::TrmConfig;
use crate::error::Result;
use crate::model::TrmModel;

use super::context::GpuContext;
use super::kernels::{KernelFile, KernelKey};
use super::layout::{self, Entry, Kernel, Workgroups};

/// The heads kernel of a model of `config`.
pub(crate) fn key(config: &TrmConfig) -> KernelKey {
    KernelKey::plain(
        KernelFile::Heads,
        "main",
        vec![
            ("S", config.state_len() as f64),
            ("D", config.hidden_size as f64),
            ("SEQ", config.seq_len as f64),
            ("VOCAB", config.vocab_size as f64),
            ("P", config.puzzle_emb_positions() as f64),
        ],
    )
}

/// The heads kernel of one model: `lm_head | q_head | q_head_bias` on the
/// device.
pub(crate) struct Heads {
    kernel: Kernel,
    weights: wgpu::Buffer,
}

impl Heads {
    /// Uploads the head weights and builds the pipeline.
    pub(crate) fn new(ctx: &GpuContext, model: &TrmModel) -> Result<Self> {
        let config = model.config();
        let w = model.weights();
        let mut packed = w.lm_head.to_f32();
        packed.extend_from_slice(&w.q_head_weight.to_f32());
        packed.extend_from_slice(&w.q_head_bias);
        let weights = layout::upload_f32(ctx, "head weights", &packed)?;
        // xyz, weights, out, active, params
        let entries = [
            Entry::ReadOnly,
            Entry::ReadOnly,
            Entry::ReadWrite,
            Entry::ReadOnly,
            Entry::Params,
        ];
        let kernel = Kernel::new(ctx, key(config), &entries)?;
        Ok(Heads { kernel, weights })
    }

    /// The bind group of a chunk.
    pub(crate) fn bind_group(
        &self,
        ctx: &GpuContext,
        xyz: &wgpu::Buffer,
        out: &wgpu::Buffer,
        active: &wgpu::Buffer,
        params: &wgpu::Buffer,
    ) -> Result<wgpu::BindGroup> {
        self.kernel
            .bind_group(ctx, &[xyz, &self.weights, out, active, params])
    }

    /// Records the heads of `workgroups` active puzzles, reading y through
    /// the parameter block at `params_offset`.
    pub(crate) fn record(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bind_group: &wgpu::BindGroup,
        params_offset: u32,
        workgroups: Workgroups<'_>,
    ) {
        self.kernel
            .dispatch(pass, bind_group, params_offset, workgroups);
    }
}
