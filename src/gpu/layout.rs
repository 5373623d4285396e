//! Small helpers shared by the kernels: buffers, and a [`Kernel`] (the
//! pipeline, bind group layout and bind groups every kernel builds the same
//! way), each created inside error scopes.

use std::num::NonZeroU64;

use crate::error::Result;

use super::context::GpuContext;
use super::kernels::KernelKey;

/// Parameters of one dispatch (`struct Params` of the kernels): which region
/// of the state buffer is updated and which are injected.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    pub state_base: u32,
    pub inj_a_base: u32,
    pub inj_b_base: u32,
    pub inject_sum: u32,
    pub q_base: u32,
    pub puzzle_stride: u32,
    pub batch: u32,
    /// First running index of a sliced fused dispatch.
    pub first: u32,
    // The spread schedule's phase (`shaders/spread_step.wgsl` states the
    // meaning of each; 0 in the fused kernels' blocks).
    pub n_inner: u32,
    pub n_total: u32,
    pub w_off: u32,
    pub m: u32,
    pub k: u32,
    pub kp: u32,
    pub paired: u32,
    pub b_state: u32,
    pub b_base: u32,
    pub b_ks: u32,
    pub b_ns: u32,
    pub o_base: u32,
    pub o_ms: u32,
    pub o_ns: u32,
    pub o_split: u32,
    pub tiles_m: u32,
    pub tiles_n: u32,
    pub k_chunk: u32,
    pub splits: u32,
    pub part_base: u32,
    pub part_split: u32,
    pub groups: u32,
    /// Puzzles per fused dispatch, and fused dispatches per call (the
    /// halting kernel writes one indirect dispatch per slice).
    pub slice: u32,
    pub slices: u32,
    /// The blocks a network call runs (the fused kernels): the first of
    /// the stored blocks and how many (TRM: all; HRM: its level's).
    pub layer_first: u32,
    pub layer_count: u32,
    /// The units of the work a dispatch runs, `[unit_first, unit_end)`:
    /// its segment of a fused network call, or its range of the heads'
    /// outputs (see [`super::budget`]).
    pub unit_first: u32,
    pub unit_end: u32,
}

/// The WGSL of a kernel in `shaders/`: the parameter block
/// (`shaders/common/params.wgsl`, the one definition of `struct Params`)
/// followed by the kernel's file, concatenated at compile time.
macro_rules! kernel_source {
    ($kernel:literal) => {
        concat!(
            include_str!("../../shaders/common/params.wgsl"),
            "\n// ---- end of shaders/common/params.wgsl; ",
            $kernel,
            " follows ----\n\n",
            include_str!(concat!("../../shaders/", $kernel))
        )
    };
}
pub(crate) use kernel_source;

/// Bytes of [`Params`].
pub(crate) const PARAMS_BYTES: u64 = std::mem::size_of::<Params>() as u64;

/// One binding of a kernel, in binding order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Entry {
    /// `var<storage, read>`
    ReadOnly,
    /// `var<storage, read_write>`
    ReadWrite,
    /// `var<uniform> params: Params`, with a dynamic offset.
    Params,
}

/// Rounds a byte size up to 16 (and at least 16): every buffer of the
/// engine can then be copied and mapped without alignment trouble.
pub(crate) fn padded_size(bytes: u64) -> u64 {
    bytes.max(16).div_ceil(16) * 16
}

/// A storage buffer holding `data` (at least 16 bytes).
pub(crate) fn upload_f32(ctx: &GpuContext, label: &str, data: &[f32]) -> Result<wgpu::Buffer> {
    upload_bytes(ctx, label, bytemuck::cast_slice(data))
}

/// A storage buffer holding the words `data` (packed weights).
pub(crate) fn upload_u32(ctx: &GpuContext, label: &str, data: &[u32]) -> Result<wgpu::Buffer> {
    upload_bytes(ctx, label, bytemuck::cast_slice(data))
}

fn upload_bytes(ctx: &GpuContext, label: &str, bytes: &[u8]) -> Result<wgpu::Buffer> {
    let buffer = ctx.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: padded_size(bytes.len() as u64),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })?;
    ctx.scoped(&format!("uploading `{label}`"), || {
        ctx.queue().write_buffer(&buffer, 0, bytes)
    })?;
    Ok(buffer)
}

/// A buffer of `bytes` (padded) with `usage`.
pub(crate) fn buffer(
    ctx: &GpuContext,
    label: &str,
    bytes: u64,
    usage: wgpu::BufferUsages,
) -> Result<wgpu::Buffer> {
    ctx.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: padded_size(bytes),
        usage,
        mapped_at_creation: false,
    })
}

/// How many workgroups a dispatch runs: a count the host knows, or one the
/// device wrote (the running puzzles after early halting on the device).
#[derive(Clone, Copy)]
pub(crate) enum Workgroups<'a> {
    Fixed(u32),
    /// `(x, y, z)` as u32 in `buffer` at byte `offset`.
    Indirect(&'a wgpu::Buffer, u64),
}

/// The compute pipeline of one kernel with its bind group layout: what each
/// kernel's file builds from its WGSL, its bindings and its specialisation
/// constants, then binds and records the same way.
pub(crate) struct Kernel {
    /// What it is (labels, error messages): [`KernelKey::label`].
    name: String,
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    /// Whether the last binding is the parameter block (bound as a window
    /// of [`PARAMS_BYTES`] at a dynamic offset).
    params_last: bool,
}

impl Kernel {
    /// The pipeline `key` describes, binding `entries` at bindings 0, 1,
    /// ... (the last one the parameter block, if any). Pipelines are cached
    /// in the context by key, and bind group layouts by entries: kernels
    /// with the same entries take the same bind groups.
    pub(crate) fn new(ctx: &GpuContext, key: KernelKey, entries: &[Entry]) -> Result<Self> {
        let name = key.label();
        let layout = ctx.layout(entries, || create_bind_group_layout(ctx, &name, entries))?;
        let pipeline = pipeline(ctx, &key, &layout)?;
        Ok(Kernel {
            name,
            pipeline,
            layout,
            params_last: matches!(entries.last(), Some(Entry::Params)),
        })
    }

    /// A bind group of `buffers` at bindings 0, 1, ..., in the order of the
    /// entries (the parameter buffer last).
    pub(crate) fn bind_group(
        &self,
        ctx: &GpuContext,
        buffers: &[&wgpu::Buffer],
    ) -> Result<wgpu::BindGroup> {
        bind_group(ctx, &self.name, &self.layout, buffers, self.params_last)
    }

    /// Records one dispatch of `workgroups` workgroups, reading the
    /// parameter block at `params_offset`.
    pub(crate) fn record(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bind_group: &wgpu::BindGroup,
        params_offset: u32,
        workgroups: u32,
    ) {
        self.record_grid(pass, bind_group, params_offset, [workgroups, 1]);
    }

    /// Records one dispatch of `workgroups`, fixed or written by the device.
    pub(crate) fn dispatch(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bind_group: &wgpu::BindGroup,
        params_offset: u32,
        workgroups: Workgroups<'_>,
    ) {
        match workgroups {
            Workgroups::Fixed(n) => self.record(pass, bind_group, params_offset, n),
            Workgroups::Indirect(args, offset) => {
                pass.set_pipeline(&self.pipeline);
                pass.set_bind_group(0, bind_group, &[params_offset]);
                pass.dispatch_workgroups_indirect(args, offset);
            }
        }
    }

    /// Records one dispatch of a 2-D grid of workgroups of a kernel without
    /// a parameter block (no dynamic offset).
    pub(crate) fn record_grid_unparametrised(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bind_group: &wgpu::BindGroup,
        [x, y]: [u32; 2],
    ) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, bind_group, &[]);
        pass.dispatch_workgroups(x, y, 1);
    }

    /// Records one dispatch of a 2-D grid of workgroups.
    pub(crate) fn record_grid(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bind_group: &wgpu::BindGroup,
        params_offset: u32,
        [x, y]: [u32; 2],
    ) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, bind_group, &[params_offset]);
        pass.dispatch_workgroups(x, y, 1);
    }
}

fn create_bind_group_layout(
    ctx: &GpuContext,
    kernel: &str,
    entries: &[Entry],
) -> Result<wgpu::BindGroupLayout> {
    let entries: Vec<wgpu::BindGroupLayoutEntry> = entries
        .iter()
        .enumerate()
        .map(|(i, entry)| wgpu::BindGroupLayoutEntry {
            binding: i as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: match entry {
                Entry::ReadOnly | Entry::ReadWrite => wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage {
                        read_only: matches!(entry, Entry::ReadOnly),
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                Entry::Params => wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: true,
                    min_binding_size: NonZeroU64::new(PARAMS_BYTES),
                },
            },
            count: None,
        })
        .collect();
    ctx.scoped(&format!("bind group layout of {kernel}"), || {
        ctx.device()
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(kernel),
                entries: &entries,
            })
    })
}

/// A bind group of `buffers` at bindings 0, 1, ... (the parameter buffer
/// bound as one [`Params`] block, chosen by the dynamic offset).
fn bind_group(
    ctx: &GpuContext,
    kernel: &str,
    layout: &wgpu::BindGroupLayout,
    buffers: &[&wgpu::Buffer],
    params_last: bool,
) -> Result<wgpu::BindGroup> {
    let last = buffers.len().saturating_sub(1);
    let entries: Vec<wgpu::BindGroupEntry<'_>> = buffers
        .iter()
        .enumerate()
        .map(|(i, buffer)| wgpu::BindGroupEntry {
            binding: i as u32,
            resource: if params_last && i == last {
                wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer,
                    offset: 0,
                    size: NonZeroU64::new(PARAMS_BYTES),
                })
            } else {
                buffer.as_entire_binding()
            },
        })
        .collect();
    ctx.scoped(&format!("bind group of {kernel}"), || {
        ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel),
            layout,
            entries: &entries,
        })
    })
}

/// The pipeline `key` describes on `layout` (cached in the context by key).
fn pipeline(
    ctx: &GpuContext,
    key: &KernelKey,
    layout: &wgpu::BindGroupLayout,
) -> Result<wgpu::ComputePipeline> {
    let label = key.label();
    let pipeline_layout = ctx.scoped(&format!("pipeline layout of {label}"), || {
        ctx.device()
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(&label),
                bind_group_layouts: &[Some(layout)],
                immediate_size: 0,
            })
    })?;
    ctx.pipeline(key, &pipeline_layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `shaders/common/params.wgsl` declares [`Params`] field for field and
    /// in order, and no other kernel file declares one of its own.
    #[test]
    fn the_one_wgsl_params_is_the_rust_params() {
        // naming every field: a field added to Params fails to compile here
        let Params {
            state_base: _,
            inj_a_base: _,
            inj_b_base: _,
            inject_sum: _,
            q_base: _,
            puzzle_stride: _,
            batch: _,
            first: _,
            n_inner: _,
            n_total: _,
            w_off: _,
            m: _,
            k: _,
            kp: _,
            paired: _,
            b_state: _,
            b_base: _,
            b_ks: _,
            b_ns: _,
            o_base: _,
            o_ms: _,
            o_ns: _,
            o_split: _,
            tiles_m: _,
            tiles_n: _,
            k_chunk: _,
            splits: _,
            part_base: _,
            part_split: _,
            groups: _,
            slice: _,
            slices: _,
            layer_first: _,
            layer_count: _,
            unit_first: _,
            unit_end: _,
        } = Params::default();
        let fields = [
            "state_base",
            "inj_a_base",
            "inj_b_base",
            "inject_sum",
            "q_base",
            "puzzle_stride",
            "batch",
            "first",
            "n_inner",
            "n_total",
            "w_off",
            "m",
            "k",
            "kp",
            "paired",
            "b_state",
            "b_base",
            "b_ks",
            "b_ns",
            "o_base",
            "o_ms",
            "o_ns",
            "o_split",
            "tiles_m",
            "tiles_n",
            "k_chunk",
            "splits",
            "part_base",
            "part_split",
            "groups",
            "slice",
            "slices",
            "layer_first",
            "layer_count",
            "unit_first",
            "unit_end",
        ];
        assert_eq!(PARAMS_BYTES, 4 * fields.len() as u64);
        let expected: Vec<String> = fields.iter().map(|f| format!("{f}: u32,")).collect();
        let source = include_str!("../../shaders/common/params.wgsl");
        let (_, body) = source
            .split_once("struct Params {")
            .expect("params.wgsl declares struct Params");
        let (body, _) = body.split_once('}').unwrap();
        let declared: Vec<String> = body
            .lines()
            .map(|line| line.split("//").next().unwrap().trim().to_string())
            .filter(|line| !line.is_empty())
            .collect();
        assert_eq!(declared, expected, "struct Params of params.wgsl");
        for (kernel, source) in [
            ("embed.wgsl", include_str!("../../shaders/embed.wgsl")),
            ("heads.wgsl", include_str!("../../shaders/heads.wgsl")),
            ("halt.wgsl", include_str!("../../shaders/halt.wgsl")),
            (
                "spread_step.wgsl",
                include_str!("../../shaders/spread_step.wgsl"),
            ),
            (
                "mixer_step.wgsl",
                include_str!("../../shaders/mixer_step.wgsl"),
            ),
            (
                "attention_step.wgsl",
                include_str!("../../shaders/attention_step.wgsl"),
            ),
            (
                "common/step_common.wgsl",
                include_str!("../../shaders/common/step_common.wgsl"),
            ),
        ] {
            assert!(
                !source.contains("struct Params {"),
                "{kernel} declares its own struct Params"
            );
        }
    }
}
