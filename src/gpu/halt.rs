//! Early halting on the device (`shaders/halt.wgsl`): after the heads of an
//! ACT step, the running list is compacted by q_halt and the count written
//! where the next step's indirect dispatches read it.
//!
//! The rule it must equal is `TrmConfig::halts`, as the CPU engine applies
//! it: a puzzle halts after the first ACT step whose `q_halt > 0` (TRM) or
//! `q_halt > q_continue` (HRM).

use crate::config::{Arch, TrmConfig};
use crate::error::Result;

use super::context::GpuContext;
use super::kernels::{KernelFile, KernelKey};
use super::layout::{Entry, Kernel};

/// The halting kernel of a model of `config`: its rule.
pub(crate) fn key(config: &TrmConfig) -> KernelKey {
    let vs_continue = f64::from(u8::from(config.arch == Arch::Hrm));
    KernelKey::plain(
        KernelFile::Halt,
        "main",
        vec![("HALT_VS_CONTINUE", vs_continue)],
    )
}

/// `u32`s of the control buffer before the per-puzzle ACT step counts:
/// the count, ACT steps done, and one indirect dispatch per slice.
pub(crate) fn control_header(slices: u32) -> u64 {
    8 + 4 * u64::from(slices)
}

/// Byte offset of slice `j`'s indirect dispatch `(x, 1, 1)`.
pub(crate) fn dispatch_offset(j: u32) -> u64 {
    4 * (8 + 4 * u64::from(j))
}

/// The control buffer's header when `n` puzzles run, in slices of `slice`.
pub(crate) fn initial_control(n: u32, slice: u32, slices: u32) -> Vec<u32> {
    let mut header = vec![0u32; control_header(slices) as usize];
    header[0] = n;
    for j in 0..slices {
        let at = 8 + 4 * j as usize;
        header[at] = n.saturating_sub(j * slice).min(slice);
        header[at + 1] = 1;
        header[at + 2] = 1;
    }
    header
}

/// The halting kernel.
pub(crate) struct Halt {
    kernel: Kernel,
}

impl Halt {
    pub(crate) fn new(ctx: &GpuContext, config: &TrmConfig) -> Result<Self> {
        // outputs, running, control, params
        let entries = [
            Entry::ReadOnly,
            Entry::ReadWrite,
            Entry::ReadWrite,
            Entry::Params,
        ];
        Ok(Halt {
            kernel: Kernel::new(ctx, key(config), &entries)?,
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
