//! What the two recursion-step kernels share: the WGSL prelude
//! `shaders/common/step_common.wgsl` (bindings, the tiled matrix product,
//! the channel SwiGLU, the RMSNorm over D) and, on the Rust side, the
//! pipeline with its common specialisation constants, the bind group and
//! the recording of one step.
//!
//! WGSL has no includes: [`step_source!`] prepends the prelude to a
//! kernel's own file at compile time, and nothing else assembles WGSL.

use crate::config::TrmConfig;
use crate::error::{Result, TrmError};
use crate::weights::Matrix;

use super::context::GpuContext;
use super::layout::{self, Entry, Kernel, Workgroups};

/// The WGSL of a recursion-step kernel: the parameter block
/// (`shaders/common/params.wgsl`), the prelude
/// `shaders/common/step_common.wgsl`, then `shaders/$kernel`, concatenated
/// at compile time.
macro_rules! step_source {
    ($kernel:literal) => {
        concat!(
            include_str!("../../shaders/common/params.wgsl"),
            "\n// ---- end of shaders/common/params.wgsl ----\n\n",
            include_str!("../../shaders/common/step_common.wgsl"),
            "\n// ---- end of shaders/common/step_common.wgsl; ",
            $kernel,
            " follows ----\n\n",
            include_str!(concat!("../../shaders/", $kernel))
        )
    };
}
pub(crate) use step_source;

/// Rounds up to a multiple of 4 (a vec4).
pub(crate) fn pad4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// Appends `matrix`, widened to f32, to `packed`, every row padded with
/// zeros to a multiple of 4 floats (the kernels read weights as vec4).
pub(crate) fn push_rows(packed: &mut Vec<f32>, matrix: &Matrix) {
    let cols = matrix.cols();
    let padded = pad4(cols);
    for r in 0..matrix.rows() {
        let start = packed.len();
        packed.resize(start + padded, 0.0);
        matrix.row_into(r, &mut packed[start..start + cols]);
    }
}

/// Floats of the channel SwiGLU weights of one layer in the kernels'
/// layout: `ch_gu [2CI, DP] | ch_dn [D, CI]`.
pub(crate) fn channel_floats(config: &TrmConfig) -> usize {
    let (d, ci) = (config.hidden_size, config.channel_inter());
    2 * ci * pad4(d) + d * pad4(ci)
}

/// Depth SK of a product's K step for `workgroup_bytes` of workgroup
/// memory, which holds the double-buffered A and B tiles (2 x 2 x 64 x SK
/// floats): 16 (16 KiB) where the adapter has the WebGPU default, 8 (8 KiB)
/// where it has less (Apple's 16352 bytes). The attention's own tiles use
/// the same memory, 2 SK deep.
pub(crate) fn tile_depth(workgroup_bytes: u32) -> Option<u32> {
    [16u32, 8]
        .into_iter()
        .find(|sk| 2 * 2 * 64 * sk * 4 <= workgroup_bytes)
}

/// The bindings of every recursion-step kernel: weights, xyz, scratch,
/// active, params.
const STEP_ENTRIES: [Entry; 5] = [
    Entry::ReadOnly,
    Entry::ReadWrite,
    Entry::ReadWrite,
    Entry::ReadOnly,
    Entry::Params,
];

/// A recursion-step kernel of one model: its weights on the device and its
/// pipeline. Both kernels bind `weights, xyz, scratch, active, params`.
pub(crate) struct StepPipeline {
    kernel: Kernel,
    weights: wgpu::Buffer,
    /// SK, the K depth of a product step this kernel (and every sibling)
    /// was built with.
    depth: u32,
    /// Name of the kernel: the key of its bind group layout, which the
    /// spread schedule's kernels share.
    name: &'static str,
    /// The prelude's specialisation constants.
    prelude: Vec<(&'static str, f64)>,
    /// The kernel's own.
    own: Vec<(&'static str, f64)>,
}

impl StepPipeline {
    /// Uploads `packed` (the kernel's weight layout) and builds the pipeline
    /// of `kernel` with the prelude's constants (S, D, DP, CI, LAYERS,
    /// EPS, SK) followed by the kernel's own `constants`.
    pub(crate) fn new(
        ctx: &GpuContext,
        config: &TrmConfig,
        kernel: &'static str,
        source: &'static str,
        packed: &[f32],
        constants: &[(&'static str, f64)],
    ) -> Result<Self> {
        let limits = ctx.limits();
        let tile_depth =
            tile_depth(limits.max_compute_workgroup_storage_size).ok_or_else(|| {
                TrmError::AdapterUnsuitable {
                    adapter: ctx.adapter_info().name.clone(),
                    reason: "less than 8 KiB of workgroup memory".into(),
                }
            })?;
        let weights = layout::upload_f32(ctx, &format!("{kernel} weights"), packed)?;
        let entries = STEP_ENTRIES;
        let (s, d) = (config.state_len(), config.hidden_size);
        let mut all = vec![
            ("S", s as f64),
            ("D", d as f64),
            ("DP", pad4(d) as f64),
            ("CI", config.channel_inter() as f64),
            ("LAYERS", config.stored_layers() as f64),
            ("EPS", config.rms_norm_eps as f32 as f64),
            ("SK", tile_depth as f64),
        ];
        let prelude = all.clone();
        all.extend_from_slice(constants);
        let name = kernel;
        let kernel = Kernel::new(ctx, name, source, &entries, &all)?;
        Ok(StepPipeline {
            kernel,
            weights,
            depth: tile_depth,
            name,
            prelude,
            own: constants.to_vec(),
        })
    }

    /// SK, the K depth of a product step (the spread plan's split lengths
    /// are multiples of it).
    pub(crate) fn depth(&self) -> u32 {
        self.depth
    }

    /// Another kernel on this one's bind group layout: entry point `entry`
    /// of `source` (which starts with the prelude), cached as `name`, with
    /// the prelude's constants, this kernel's own where `with_own` (the
    /// source is this kernel's), and `extra`. The spread schedule's kernels
    /// are built so and bind the same groups.
    pub(crate) fn sibling(
        &self,
        ctx: &GpuContext,
        name: &'static str,
        entry: &'static str,
        source: &str,
        with_own: bool,
        extra: &[(&'static str, f64)],
    ) -> Result<Kernel> {
        let mut constants = self.prelude.clone();
        if with_own {
            constants.extend_from_slice(&self.own);
        }
        constants.extend_from_slice(extra);
        Kernel::entry_point(
            ctx,
            name,
            entry,
            self.name,
            source,
            &STEP_ENTRIES,
            &constants,
        )
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
        self.kernel
            .bind_group(ctx, &[&self.weights, xyz, scratch, active, params])
    }

    /// Records one recursion step for `workgroups` active puzzles; the
    /// parameter block at `params_offset` says which state is updated.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_depth_fits_workgroup_memory() {
        assert_eq!(tile_depth(16384), Some(16));
        assert_eq!(tile_depth(16352), Some(8));
        assert_eq!(tile_depth(32768), Some(16));
        assert_eq!(tile_depth(4096), None);
    }

    #[test]
    fn kernels_start_with_the_prelude() {
        const MIXER: &str = step_source!("mixer_step.wgsl");
        assert!(MIXER.starts_with("// params.wgsl"));
        assert!(MIXER.contains("\n// step_common.wgsl: "));
        assert!(MIXER.contains("\n// mixer_step.wgsl: "));
        assert_eq!(MIXER.matches("fn product(").count(), 1);
    }
}
