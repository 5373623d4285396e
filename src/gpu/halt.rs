//! Early halting on the device (`shaders/halt.wgsl`): after the heads of an
//! ACT step, the running list is compacted by q_halt and the count written
//! where the next step's indirect dispatches read it.
//!
//! The CPU rule it must equal is in `CpuEngine::solve_from` (`src/cpu/`):
//! a puzzle halts after the first ACT step whose `q_halt > 0`.

use crate::error::Result;

use super::context::GpuContext;
use super::layout::{Entry, Kernel};

const SOURCE: &str = include_str!("../../shaders/halt.wgsl");
const KERNEL: &str = "halt.wgsl";

/// `u32`s of the control buffer before the per-puzzle ACT step counts.
pub(crate) const CONTROL_HEADER: u64 = 8;
/// Byte offset of the indirect dispatch `(count, 1, 1)` in the control
/// buffer.
pub(crate) const DISPATCH_OFFSET: u64 = 4;

/// The halting kernel.
pub(crate) struct Halt {
    kernel: Kernel,
}

impl Halt {
    pub(crate) fn new(ctx: &GpuContext) -> Result<Self> {
        // outputs, running, control, params
        let entries = [
            Entry::ReadOnly,
            Entry::ReadWrite,
            Entry::ReadWrite,
            Entry::Params,
        ];
        Ok(Halt {
            kernel: Kernel::new(ctx, KERNEL, SOURCE, &entries, &[])?,
        })
    }

    /// The bind group of a chunk.
    pub(crate) fn bind_group(
        &self,
        ctx: &GpuContext,
        out: &wgpu::Buffer,
        active: &wgpu::Buffer,
        control: &wgpu::Buffer,
        params: &wgpu::Buffer,
    ) -> Result<wgpu::BindGroup> {
        self.kernel.bind_group(ctx, &[out, active, control, params])
    }

    /// Records the decision after an ACT step's heads; the parameter block
    /// at `params_offset` gives q_base and the spare slot.
    pub(crate) fn record(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bind_group: &wgpu::BindGroup,
        params_offset: u32,
    ) {
        self.kernel.record(pass, bind_group, params_offset, 1);
    }
}
