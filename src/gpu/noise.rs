//! Noisy trajectories on the device (`shaders/noise.wgsl`): `sigma *
//! N(0, 1)` added to a state buffer's rows, the numbers of
//! [`crate::noise`] made where the state lives, never uploaded.

use crate::error::{Result, TrmError};
use crate::noise::State;

use super::context::GpuContext;
use super::kernels::{KernelFile, KernelKey};
use super::layout::{self, Entry, Kernel};

/// The noise kernel (no override constants).
pub(crate) fn key() -> KernelKey {
    KernelKey::plain(KernelFile::Noise, "add_noise", Vec::new())
}
/// Invocations per workgroup along a row (`@workgroup_size(64)`).
const GROUPS_PER_WORKGROUP: u32 = 64;

/// What one noise dispatch adds, and where.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NoiseDispatch {
    /// The generator's seed.
    pub seed: u64,
    /// The noise's standard deviation.
    pub sigma: f32,
    /// The ACT step the noise comes before.
    pub step: u32,
    /// Which state: part of the counter.
    pub state: State,
    /// The global row (puzzle x trajectories + trajectory) of the first row.
    pub first_row: u32,
    /// Trajectories per puzzle.
    pub trajectories: u32,
    /// Floats per row (S x D).
    pub row_elems: u32,
    /// Rows.
    pub rows: u32,
    /// Element offset of the first row in the buffer.
    pub base: u32,
}

impl NoiseDispatch {
    fn words(&self) -> [u32; 10] {
        [
            self.seed as u32,
            (self.seed >> 32) as u32,
            self.sigma.to_bits(),
            self.step,
            self.state as u32,
            self.first_row,
            self.trajectories,
            self.row_elems,
            self.rows,
            self.base,
        ]
    }

    fn grid(&self) -> [u32; 2] {
        [
            self.row_elems.div_ceil(4).div_ceil(GROUPS_PER_WORKGROUP),
            self.rows,
        ]
    }
}

/// The noise kernel and the words it reads, made once and reused.
pub(crate) struct Noise {
    kernel: Kernel,
    words: wgpu::Buffer,
}

impl Noise {
    pub(crate) fn new(ctx: &GpuContext) -> Result<Self> {
        Ok(Noise {
            kernel: Kernel::new(ctx, key(), &[Entry::ReadWrite, Entry::ReadOnly])?,
            words: layout::buffer(
                ctx,
                "noise words",
                std::mem::size_of::<[u32; 10]>() as u64,
                wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            )?,
        })
    }

    /// Records the dispatch that adds `dispatch`'s noise to `state`. Its
    /// words are written through the queue, so the pass must be submitted
    /// before the next `record` (each noise dispatch is its own submission).
    pub(crate) fn record(
        &self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass<'_>,
        state: &wgpu::Buffer,
        dispatch: &NoiseDispatch,
    ) -> Result<()> {
        if dispatch.rows > ctx.limits().max_compute_workgroups_per_dimension {
            return Err(TrmError::TooLarge(format!(
                "{} rows of noise in one dispatch, beyond the device's {} workgroups",
                dispatch.rows,
                ctx.limits().max_compute_workgroups_per_dimension
            )));
        }
        ctx.queue()
            .write_buffer(&self.words, 0, bytemuck::cast_slice(&dispatch.words()));
        let group = self.kernel.bind_group(ctx, &[state, &self.words])?;
        self.kernel
            .record_grid_unparametrised(pass, &group, dispatch.grid());
        Ok(())
    }
}

/// Adds the noise `dispatch` describes to `values` on the device and
/// returns the result: the kernel on a host array, so that a test (or a
/// user checking a new adapter) can diff it against
/// [`crate::noise::add_noise`].
pub fn add_noise_on_device(
    ctx: &GpuContext,
    values: &[f32],
    dispatch: &NoiseDispatch,
) -> Result<Vec<f32>> {
    let need = u64::from(dispatch.base) + u64::from(dispatch.rows) * u64::from(dispatch.row_elems);
    if need > values.len() as u64 {
        return Err(TrmError::Input(format!(
            "noise over {need} floats of a buffer of {}",
            values.len()
        )));
    }
    let noise = Noise::new(ctx)?;
    let state = layout::buffer(
        ctx,
        "noise state",
        4 * values.len() as u64,
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
    )?;
    ctx.queue()
        .write_buffer(&state, 0, bytemuck::cast_slice(values));
    let bytes = 4 * values.len() as u64;
    let staging = layout::buffer(
        ctx,
        "noise read-back",
        layout::padded_size(bytes),
        wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
    )?;
    let mut encoder = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("noise"),
        });
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("noise"),
            timestamp_writes: None,
        });
        noise.record(ctx, &mut pass, &state, dispatch)?;
    }
    encoder.copy_buffer_to_buffer(&state, 0, &staging, 0, bytes);
    let submission = ctx.queue().submit([encoder.finish()]);
    let (send, receiver) = super::context::map_channel();
    staging.slice(0..bytes).map_async(wgpu::MapMode::Read, send);
    super::context::block_on(
        "the solve's async API",
        ctx.read_mapped(Some(submission), receiver, "the noise"),
    )?
    .map_err(|e| TrmError::Gpu(format!("mapping the noise: {e}")))?;
    let view = staging
        .slice(0..bytes)
        .get_mapped_range()
        .map_err(|e| TrmError::Gpu(format!("reading the noise: {e}")))?;
    let out = bytemuck::cast_slice(&view).to_vec();
    drop(view);
    staging.unmap();
    Ok(out)
}
