//! Probes of what a driver does that no specification promises, for
//! `trm check` and the tests: whether it runs long loops to their end
//! (`shaders/loop_probe.wgsl`; see [`super::budget`] for why it matters).

use crate::error::{Result, TrmError};

use super::context::{self, GpuContext};
use super::kernels::{KernelFile, KernelKey};
use super::layout::{self, Entry, Kernel};

/// The loop probe (no override constants).
pub(crate) fn key() -> KernelKey {
    KernelKey::plain(KernelFile::LoopProbe, "main", Vec::new())
}

/// What the loop probe found: how many iterations of `outer` x `inner`
/// nested loops one invocation ran, and whether their work was right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoopProbe {
    /// Iterations of the outer loop asked for.
    pub outer: u32,
    /// Iterations of the inner loop asked for, per outer iteration.
    pub inner: u32,
    /// Iterations of the inner loop's body that ran.
    pub ran: u64,
    /// Whether the generator's state after them is what `outer` x `inner`
    /// steps give.
    pub right: bool,
}

impl LoopProbe {
    /// Whether every iteration ran.
    pub fn complete(&self) -> bool {
        self.ran == u64::from(self.outer) * u64::from(self.inner) && self.right
    }
}

/// The generator the probe steps (its WGSL, on the host).
fn lcg_after(steps: u64) -> u32 {
    (0..steps).fold(0u32, |s, _| {
        s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223)
    })
}

/// Runs `outer` x `inner` nested loop iterations in one invocation on
/// `ctx`'s device and reports how many ran (blocking).
pub fn probe_loops(ctx: &GpuContext, outer: u32, inner: u32) -> Result<LoopProbe> {
    let io = [outer, inner, 0, 0];
    let kernel = Kernel::new(ctx, key(), &[Entry::ReadWrite])?;
    let buffer = layout::buffer(
        ctx,
        "loop probe",
        16,
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
    )?;
    ctx.queue()
        .write_buffer(&buffer, 0, bytemuck::cast_slice(&io));
    let staging = layout::buffer(
        ctx,
        "loop probe read-back",
        16,
        wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
    )?;
    let group = kernel.bind_group(ctx, &[&buffer])?;
    let submission = ctx.scoped("the loop probe", || {
        let mut encoder = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("loop probe"),
            });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("loop probe"),
                timestamp_writes: None,
            });
            kernel.record_grid_unparametrised(&mut pass, &group, [1, 1]);
        }
        encoder.copy_buffer_to_buffer(&buffer, 0, &staging, 0, 16);
        ctx.queue().submit([encoder.finish()])
    })?;
    let (send, receiver) = context::map_channel();
    staging.slice(0..16).map_async(wgpu::MapMode::Read, send);
    context::block_on(
        "a native build (the probe blocks)",
        ctx.read_mapped(Some(submission), receiver, "the loop probe"),
    )?
    .map_err(|e| TrmError::Gpu(format!("mapping the loop probe: {e}")))?;
    let view = staging
        .slice(0..16)
        .get_mapped_range()
        .map_err(|e| TrmError::Gpu(format!("reading the loop probe: {e}")))?;
    let out: [u32; 4] = bytemuck::cast_slice(&view)
        .try_into()
        .map_err(|_| TrmError::Gpu("the loop probe read back the wrong size".into()))?;
    drop(view);
    staging.unmap();
    let ran = u64::from(out[2]);
    Ok(LoopProbe {
        outer,
        inner,
        ran,
        right: out[3] == lcg_after(ran) && ran == u64::from(outer) * u64::from(inner),
    })
}

/// The number of loop iterations after which `ctx`'s driver ends every
/// loop of an invocation, if it does so below 2^20 (about 1e6: far beyond
/// the engine's budget of 32768); `None` where loops of 2^20 iterations
/// run to their end, in one loop and in nested ones.
pub fn loop_limit(ctx: &GpuContext) -> Result<Option<u64>> {
    for (outer, inner) in [(1u32, 1u32 << 20), (1 << 10, 1 << 10)] {
        let probe = probe_loops(ctx, outer, inner)?;
        if !probe.complete() {
            return Ok(Some(probe.ran));
        }
    }
    Ok(None)
}
