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

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::error::TrmError;
    use crate::gpu::context::{self, GpuOptions};
    use crate::gpu::layout::{self, PARAMS_BYTES, Params};

    /// q values at the rule's edges: both zeros, the least normal and
    /// subnormal of each sign, NaN, the infinities, ordinary values.
    const EDGES: [f32; 11] = [
        0.0,
        -0.0,
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        1e-45,
        -1e-45,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        3.5,
        -2.0,
    ];

    /// The halting kernel's words after one run on `q` pairs: the running
    /// list and the control buffer.
    fn run_halt(
        ctx: &GpuContext,
        config: &TrmConfig,
        q: &[(f32, f32)],
        slice: u32,
    ) -> Result<(Vec<u32>, Vec<u32>)> {
        let n = q.len() as u32;
        let slices = n.div_ceil(slice);
        let q_base = 5u32; // not at 0: the kernel must use q_base
        let mut outputs = vec![f32::NAN; q_base as usize];
        outputs.extend(q.iter().flat_map(|&(h, c)| [h, c]));
        let mut control = initial_control(n, slice, slices);
        control.extend(std::iter::repeat_n(u32::MAX, n as usize));
        let running: Vec<u32> = (0..n).collect();
        let params = Params {
            q_base,
            batch: n,
            slice,
            slices,
            ..Params::default()
        };
        let out = layout::upload_f32(ctx, "q", &outputs)?;
        let read_write = |label: &str, words: &[u32]| -> Result<wgpu::Buffer> {
            use wgpu::BufferUsages as U;
            let usage = U::STORAGE | U::COPY_DST | U::COPY_SRC;
            let buffer = layout::buffer(ctx, label, 4 * words.len() as u64, usage)?;
            ctx.queue()
                .write_buffer(&buffer, 0, bytemuck::cast_slice(words));
            Ok(buffer)
        };
        let active = read_write("running", &running)?;
        let control_buffer = read_write("control", &control)?;
        let params_buffer = layout::buffer(
            ctx,
            "params",
            PARAMS_BYTES,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        )?;
        ctx.queue()
            .write_buffer(&params_buffer, 0, bytemuck::bytes_of(&params));
        let halt = Halt::new(ctx, config)?;
        let group = halt.bind_group(ctx, &out, &active, &control_buffer, &params_buffer)?;
        let words = (running.len() + control.len()) as u64;
        let staging = layout::buffer(
            ctx,
            "halt read-back",
            4 * words,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )?;
        let submission = ctx.scoped("the halting kernel", || {
            let mut encoder = ctx
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes: None,
                });
                halt.record(&mut pass, &group, 0);
            }
            let running_bytes = 4 * running.len() as u64;
            encoder.copy_buffer_to_buffer(&active, 0, &staging, 0, running_bytes);
            encoder.copy_buffer_to_buffer(
                &control_buffer,
                0,
                &staging,
                running_bytes,
                4 * control.len() as u64,
            );
            ctx.queue().submit([encoder.finish()])
        })?;
        let (send, receiver) = context::map_channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, send);
        context::block_on(
            "a native test",
            ctx.read_mapped(Some(submission), receiver, "the halting kernel"),
        )?
        .map_err(|e| TrmError::Gpu(format!("mapping: {e}")))?;
        let view = staging
            .slice(..)
            .get_mapped_range()
            .map_err(|e| TrmError::Gpu(format!("reading: {e}")))?;
        let all: Vec<u32> = bytemuck::cast_slice::<u8, u32>(&view)[..words as usize].to_vec();
        drop(view);
        staging.unmap();
        let (running, control) = all.split_at(running.len());
        Ok((running.to_vec(), control.to_vec()))
    }

    /// The kernel keeps exactly the puzzles `TrmConfig::halts` keeps, for
    /// every pair of edge values, in order, with the spare slot behind them,
    /// each puzzle's step recorded and the slices' dispatches cut to the
    /// count; for TRM and HRM.
    #[test]
    fn the_halting_kernel_applies_the_configurations_rule() {
        let options = GpuOptions::default().with_env();
        let ctx = match options.and_then(|o| GpuContext::new(&o)) {
            Ok(ctx) => ctx,
            Err(e) if std::env::var("TRM_SKIP_GPU").is_ok_and(|v| v == "1") => {
                eprintln!("skipping (TRM_SKIP_GPU=1): {e}");
                return;
            }
            Err(e) => panic!("no GPU adapter for the halting kernel's test: {e}"),
        };
        let q: Vec<(f32, f32)> = EDGES
            .iter()
            .flat_map(|&h| EDGES.iter().map(move |&c| (h, c)))
            .collect();
        let n = q.len() as u32;
        let slice = 32;
        for config in [TrmConfig::sudoku_extreme(), TrmConfig::hrm_sudoku_extreme()] {
            let (running, control) = run_halt(&ctx, &config, &q, slice).unwrap();
            let kept: Vec<u32> = (0..n)
                .filter(|&p| {
                    let (h, c) = q[p as usize];
                    !config.halts(h, c)
                })
                .collect();
            let k = kept.len();
            assert!(
                0 < k && k < n as usize,
                "{:?}: the edges must split",
                config.arch
            );
            assert_eq!(&running[..k], kept.as_slice(), "{:?}", config.arch);
            assert!(running[k..].iter().all(|&p| p == n), "{:?}", config.arch);
            assert_eq!(control[0] as usize, k, "{:?}: the count", config.arch);
            assert_eq!(control[4], 1, "{:?}: ACT steps done", config.arch);
            let slices = n.div_ceil(slice);
            for j in 0..slices {
                let want = (k as u32).saturating_sub(j * slice).min(slice);
                assert_eq!(
                    control[8 + 4 * j as usize],
                    want,
                    "{:?}: slice {j}",
                    config.arch
                );
            }
            let steps = &control[control_header(slices) as usize..];
            assert!(
                steps.iter().all(|&s| s == 1),
                "{:?}: steps {steps:?}",
                config.arch
            );
        }
    }
}
