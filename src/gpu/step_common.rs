//! What the two recursion-step kernels share: the WGSL prelude
//! `shaders/common/step_common.wgsl` (the tiled matrix product, the channel
//! SwiGLU, the RMSNorm over D), the weight prelude of each precision
//! (`shaders/common/weights_{f32,f16,bf16,int8}.wgsl`: the weight binding
//! and how a group of 4 weights is widened) and, on the Rust side, the
//! weights packed at the model's precision, the pipeline with its common
//! specialisation constants, the bind group and the recording of one step.
//!
//! WGSL has no includes: [`step_source!`] prepends the preludes to a
//! kernel's own file at compile time, once per precision, and nothing else
//! assembles WGSL.

use crate::config::TrmConfig;
use crate::error::{Result, TrmError};
use crate::weights::{Matrix, Precision};

use super::context::GpuContext;
use super::kernels::{self, DeviceKernels, KernelFile, KernelKey};
use super::layout::{self, Entry, Kernel, Workgroups};

/// How a kernel's reductions meet across invocations: the lane prelude it
/// is built with (`shaders/common/lanes_{workgroup,subgroup}.wgsl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Lanes {
    /// Through workgroup memory only (no subgroup operations).
    Workgroup,
    /// By subgroup shuffles within clusters the kernel checks at run time,
    /// through workgroup memory beyond them.
    Subgroup,
}

/// One `&'static str` per weight precision (in [`Precision::ALL`] order)
/// and lane prelude ([`Lanes`]): a kernel's WGSL, each with its precision's
/// weight prelude and its lane prelude ([`step_source!`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Variants(pub(crate) [[&'static str; 2]; 4]);

impl Variants {
    /// The one for `precision` and `lanes`.
    pub(crate) fn get(self, precision: Precision, lanes: Lanes) -> &'static str {
        let by_precision = self.0[match precision {
            Precision::F32 => 0,
            Precision::F16 => 1,
            Precision::Bf16 => 2,
            Precision::Int8 => 3,
        }];
        by_precision[match lanes {
            Lanes::Workgroup => 0,
            Lanes::Subgroup => 1,
        }]
    }
}

/// The WGSL of a recursion-step kernel in every variant ([`Variants`]):
/// the parameter block (`shaders/common/params.wgsl`), the weight prelude
/// `shaders/common/weights_$p.wgsl`, the lane prelude
/// `shaders/common/lanes_$l.wgsl`, the prelude
/// `shaders/common/step_common.wgsl`, then `shaders/$kernel`, concatenated
/// at compile time.
macro_rules! step_source {
    ($kernel:literal) => {
        $crate::gpu::step_common::Variants([
            step_source!(@ $kernel, "f32"),
            step_source!(@ $kernel, "f16"),
            step_source!(@ $kernel, "bf16"),
            step_source!(@ $kernel, "int8"),
        ])
    };
    (@ $kernel:literal, $precision:literal) => {
        [
            step_source!(@ $kernel, $precision, "workgroup"),
            step_source!(@ $kernel, $precision, "subgroup"),
        ]
    };
    (@ $kernel:literal, $precision:literal, $lanes:literal) => {
        concat!(
            include_str!("../../shaders/common/params.wgsl"),
            "\n// ---- end of shaders/common/params.wgsl ----\n\n",
            include_str!(concat!("../../shaders/common/weights_", $precision, ".wgsl")),
            "\n// ---- end of shaders/common/weights_",
            $precision,
            ".wgsl ----\n\n",
            include_str!(concat!("../../shaders/common/lanes_", $lanes, ".wgsl")),
            "\n// ---- end of shaders/common/lanes_",
            $lanes,
            ".wgsl ----\n\n",
            include_str!("../../shaders/common/step_common.wgsl"),
            "\n// ---- end of shaders/common/step_common.wgsl; ",
            $kernel,
            " follows ----\n\n",
            include_str!(concat!("../../shaders/", $kernel))
        )
    };
}
pub(crate) use step_source;

/// Rounds up to a multiple of 4 (a group of weights).
pub(crate) fn pad4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// Groups (of 4 weights) a `[rows, kp]` matrix takes in the step kernels'
/// weight buffer at `precision`: the WGSL `matrix_len` of its weight
/// prelude (int8 adds one word per row for its scale).
pub(crate) fn matrix_groups(rows: usize, kp: usize, precision: Precision) -> usize {
    let scales = if precision == Precision::Int8 {
        rows
    } else {
        0
    };
    rows * (kp / 4) + scales
}

/// Bytes of one group at `precision`: 16 (a vec4 of f32), 8 (four f16 or
/// bf16 in two words) or 4 (four int8 in a word; a scale is one group).
pub(crate) fn group_bytes(precision: Precision) -> usize {
    4 * precision.element_bytes()
}

/// Words one group takes.
fn group_words(precision: Precision) -> usize {
    precision.element_bytes()
}

/// Appends `matrix` to `packed` (u32 words, little-endian) at `precision`,
/// every row padded with zero weights to a multiple of 4 (the kernels read
/// weights in groups of 4), then for int8 the rows' scales as f32 bit
/// patterns: the layout the weight preludes read. The weights are copied
/// as stored, not widened, so the device holds what the CPU engine widens.
pub(crate) fn push_rows(
    packed: &mut Vec<u32>,
    matrix: &Matrix,
    precision: Precision,
) -> Result<()> {
    if matrix.precision() != precision {
        return Err(TrmError::Gpu(format!(
            "a {} x {} matrix is at {}, the rest of the network at {precision}",
            matrix.rows(),
            matrix.cols(),
            matrix.precision()
        )));
    }
    let row_words = pad4(matrix.cols()) * precision.element_bytes() / 4;
    for r in 0..matrix.rows() {
        let start = packed.len();
        for chunk in matrix.raw_row(r).chunks(4) {
            let mut word = [0u8; 4];
            word[..chunk.len()].copy_from_slice(chunk);
            packed.push(u32::from_le_bytes(word));
        }
        packed.resize(start + row_words, 0);
    }
    if precision == Precision::Int8 {
        packed.extend(matrix.scales().iter().map(|s| s.to_bits()));
    }
    Ok(())
}

/// Appends f32 `data` (the RoPE tables) to `packed` as bit patterns,
/// starting at a group boundary (`packed` ends on one: matrices fill whole
/// groups).
pub(crate) fn push_f32(packed: &mut Vec<u32>, data: &[f32], precision: Precision) {
    debug_assert_eq!(packed.len() % group_words(precision), 0);
    packed.extend(data.iter().map(|v| v.to_bits()));
}

/// Groups a run of `floats` f32 values takes at `precision`.
pub(crate) fn f32_groups(floats: usize, precision: Precision) -> usize {
    floats.div_ceil(group_words(precision))
}

/// Groups of the channel SwiGLU weights of one layer in the kernels'
/// layout: `ch_gu [2CI, DP] | ch_dn [D, CI]`.
pub(crate) fn channel_groups(config: &TrmConfig, precision: Precision) -> usize {
    let (d, ci) = (config.hidden_size, config.channel_inter());
    matrix_groups(2 * ci, pad4(d), precision) + matrix_groups(d, pad4(ci), precision)
}

/// Depth SK of a product's K step for `workgroup_bytes` of workgroup
/// memory, which holds the double-buffered A and B tiles (2 x 2 x 64 x SK
/// floats): 16 (16 KiB) where the adapter has the WebGPU default, 8 (8 KiB)
/// where it has less (Apple's 16352 bytes). The attention's own tiles use
/// the same memory.
pub(crate) fn tile_depth(workgroup_bytes: u32) -> Option<u32> {
    [16u32, 8]
        .into_iter()
        .find(|&sk| tile_bytes(sk) <= workgroup_bytes)
}

/// Bytes of the double-buffered tiles at depth `sk`.
fn tile_bytes(sk: u32) -> u32 {
    2 * 2 * 64 * sk * 4
}

/// The least workgroup memory of an adapter for which the engine builds
/// the step kernels at tile depth `sk` with `lanes`: every such kernel must
/// fit in it (`translation_tests` checks that each does).
#[cfg(test)]
pub(crate) fn least_workgroup_bytes(sk: u32, lanes: Lanes) -> u32 {
    match lanes {
        Lanes::Subgroup => tile_bytes(sk) + LANE_SETUP_BYTES,
        Lanes::Workgroup => tile_bytes(sk),
    }
}

/// Workgroup memory the subgroup lane prelude adds to a kernel
/// (`lane_faults` and `lane_width` in `shaders/common/lanes_subgroup.wgsl`).
const LANE_SETUP_BYTES: u32 = 8;

/// The lane prelude for a device with or without subgroup operations and
/// `workgroup_bytes` of workgroup memory at tile depth `sk`: subgroups
/// where offered, unless their 8 bytes do not fit beside the tiles (an
/// adapter with exactly 16 KiB keeps SK = 16 rather than halve it).
pub(crate) fn lanes_for(subgroups: bool, workgroup_bytes: u32, sk: u32) -> Lanes {
    if subgroups && tile_bytes(sk) + LANE_SETUP_BYTES <= workgroup_bytes {
        Lanes::Subgroup
    } else {
        Lanes::Workgroup
    }
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

/// The override constants of the step prelude (S, D, DP, CI, LAYERS, EPS,
/// SK, and POISON_WORKGROUP where the device poisons).
pub(crate) fn prelude_constants(
    config: &TrmConfig,
    device: DeviceKernels,
) -> Vec<(&'static str, f64)> {
    let (s, d) = (config.state_len(), config.hidden_size);
    let mut constants = vec![
        ("S", s as f64),
        ("D", d as f64),
        ("DP", pad4(d) as f64),
        ("CI", config.channel_inter() as f64),
        ("LAYERS", config.stored_layers() as f64),
        ("EPS", config.rms_norm_eps as f32 as f64),
        ("SK", device.sk as f64),
    ];
    if device.poison {
        // every kernel built on the prelude declares it
        constants.push(("POISON_WORKGROUP", 1.0));
    }
    constants
}

/// A kernel of `file`, which follows the step prelude, at `entry`: the
/// prelude's constants, and the step kernel's own where `file` is the
/// model's step kernel file (its spread entry points read them too).
pub(crate) fn step_prelude_key(
    config: &TrmConfig,
    precision: Precision,
    device: DeviceKernels,
    file: KernelFile,
    entry: &'static str,
) -> KernelKey {
    let mut constants = prelude_constants(config, device);
    if file == kernels::step_file(config) {
        constants.extend(kernels::own_constants(config));
    }
    KernelKey {
        file,
        entry,
        precision,
        lanes: device.lanes,
        constants,
    }
}

/// The fused step kernel of `config`'s variant (`file`, its `main`).
pub(crate) fn step_key(
    config: &TrmConfig,
    precision: Precision,
    device: DeviceKernels,
    file: KernelFile,
) -> KernelKey {
    step_prelude_key(config, precision, device, file, "main")
}

/// What of `ctx`'s device decides the step kernels: the tile depth its
/// workgroup memory allows, the lane prelude, the poisoning test mode.
pub(crate) fn device_kernels(ctx: &GpuContext) -> Result<DeviceKernels> {
    let workgroup_bytes = ctx.limits().max_compute_workgroup_storage_size;
    let sk = tile_depth(workgroup_bytes).ok_or_else(|| TrmError::AdapterUnsuitable {
        adapter: ctx.adapter_info().name.clone(),
        reason: "less than 8 KiB of workgroup memory".into(),
    })?;
    Ok(DeviceKernels {
        sk,
        lanes: lanes_for(ctx.subgroups(), workgroup_bytes, sk),
        poison: ctx.poisons_workgroup_memory(),
    })
}

/// A recursion-step kernel of one model: its weights on the device and its
/// pipeline. Both kernels bind `weights, xyz, scratch, active, params`.
pub(crate) struct StepPipeline {
    kernel: Kernel,
    weights: wgpu::Buffer,
    /// The precision the weights are stored at (and the weight prelude the
    /// kernel and its siblings are built with).
    precision: Precision,
    /// Bytes of the weights as packed (the buffer is padded to 16).
    weight_bytes: u64,
    /// The device's tile depth, lane prelude and poisoning, which this
    /// kernel and every sibling are built with.
    device: DeviceKernels,
}

impl StepPipeline {
    /// Uploads `packed` (the step kernel's weight layout at `precision`, as
    /// words) and builds the fused step kernel of `config`'s variant.
    pub(crate) fn new(
        ctx: &GpuContext,
        config: &TrmConfig,
        precision: Precision,
        packed: &[u32],
    ) -> Result<Self> {
        let device = device_kernels(ctx)?;
        let key = step_key(config, precision, device, kernels::step_file(config));
        let weights = layout::upload_u32(ctx, &format!("{} weights", key.label()), packed)?;
        let kernel = Kernel::new(ctx, key, &STEP_ENTRIES)?;
        Ok(StepPipeline {
            kernel,
            weights,
            precision,
            weight_bytes: 4 * packed.len() as u64,
            device,
        })
    }

    /// SK, the K depth of a product step (the spread plan's split lengths
    /// are multiples of it).
    pub(crate) fn depth(&self) -> u32 {
        self.device.sk
    }

    /// The lane prelude the kernels are built with.
    pub(crate) fn lanes(&self) -> Lanes {
        self.device.lanes
    }

    /// What of the device the kernels are built for.
    pub(crate) fn device(&self) -> DeviceKernels {
        self.device
    }

    /// The precision the weights are stored and read at.
    pub(crate) fn precision(&self) -> Precision {
        self.precision
    }

    /// Bytes of the weights on the device (at their stored precision).
    pub(crate) fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// Another kernel on this one's bind group layout, `key` (one of
    /// [`crate::gpu::spread::sibling_keys`]): the spread schedule's kernels
    /// are built so and bind the same groups.
    pub(crate) fn sibling(&self, ctx: &GpuContext, key: KernelKey) -> Result<Kernel> {
        debug_assert!(key.file.on_step_prelude() && key.precision == self.precision);
        Kernel::new(ctx, key, &STEP_ENTRIES)
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
    fn subgroups_never_cost_tile_depth() {
        assert_eq!(lanes_for(true, 32768, 16), Lanes::Subgroup);
        assert_eq!(lanes_for(true, 16384, 16), Lanes::Workgroup);
        assert_eq!(lanes_for(true, 16352, 8), Lanes::Subgroup);
        assert_eq!(lanes_for(false, 32768, 16), Lanes::Workgroup);
    }

    #[test]
    fn kernels_start_with_the_preludes() {
        const MIXER: Variants = step_source!("mixer_step.wgsl");
        for (precision, lanes) in Precision::ALL
            .into_iter()
            .flat_map(|p| [(p, Lanes::Workgroup), (p, Lanes::Subgroup)])
        {
            let source = MIXER.get(precision, lanes);
            assert!(source.starts_with("// params.wgsl"));
            let prelude = format!("\n// weights_{precision}.wgsl: ");
            let at = source.find(&prelude).expect("the weight prelude");
            assert_eq!(source.matches("@binding(0)").count(), 1);
            let lane_prelude = match lanes {
                Lanes::Workgroup => "\n// lanes_workgroup.wgsl: ",
                Lanes::Subgroup => "\n// lanes_subgroup.wgsl: ",
            };
            let lanes_at = source.find(lane_prelude).expect("the lane prelude");
            assert!(at < lanes_at);
            assert!(lanes_at < source.find("\n// step_common.wgsl: ").unwrap());
            assert_eq!(source.matches("fn lanes_setup(").count(), 1);
            assert!(source.contains("\n// mixer_step.wgsl: "));
            assert_eq!(source.matches("fn product_part(").count(), 1);
            assert_eq!(source.matches("fn weight4(").count(), 1);
        }
    }

    fn matrix(rows: usize, cols: usize, precision: Precision) -> Matrix {
        let data: Vec<f32> = (0..rows * cols)
            .map(|i| (i as f32 * 0.37 - 1.9).sin() * 3.0)
            .collect();
        Matrix::from_f32(rows, cols, &data)
            .unwrap()
            .convert(precision, "w")
            .unwrap()
    }

    /// What the weight preludes read back: group g of a row widened as the
    /// WGSL does it (unpack2x16float, the bf16 shifts, the int8 sign
    /// extension times the row scale), here on the host.
    fn weight4(
        packed: &[u32],
        precision: Precision,
        rows: usize,
        kp: usize,
        row: usize,
        k: usize,
    ) -> [f32; 4] {
        let groups = kp / 4;
        let g = row * groups + k / 4;
        match precision {
            Precision::F32 => std::array::from_fn(|j| f32::from_bits(packed[4 * g + j])),
            Precision::F16 => {
                let w = [packed[2 * g], packed[2 * g + 1]];
                std::array::from_fn(|j| {
                    half::f16::from_bits((w[j / 2] >> (16 * (j % 2))) as u16).to_f32()
                })
            }
            Precision::Bf16 => {
                let w = [packed[2 * g], packed[2 * g + 1]];
                std::array::from_fn(|j| {
                    f32::from_bits(if j % 2 == 0 {
                        w[j / 2] << 16
                    } else {
                        w[j / 2] & 0xffff_0000
                    })
                })
            }
            Precision::Int8 => {
                let w = packed[g];
                let scale = f32::from_bits(packed[rows * groups + row]);
                std::array::from_fn(|j| {
                    let q = ((w << (24 - 8 * j)) as i32) >> 24;
                    q as f32 * scale
                })
            }
        }
    }

    #[test]
    fn packed_groups_widen_to_the_cpu_engines_weights() {
        // 7 columns: every row has a padded tail (and int8 a partial word)
        let (rows, cols) = (5, 7);
        for precision in Precision::ALL {
            let m = matrix(rows, cols, precision);
            let mut packed = Vec::new();
            push_rows(&mut packed, &m, precision).unwrap();
            let kp = pad4(cols);
            let groups = matrix_groups(rows, kp, precision);
            assert_eq!(packed.len(), groups * group_words(precision), "{precision}");
            let wide = m.to_f32();
            for row in 0..rows {
                for k in (0..kp).step_by(4) {
                    let got = weight4(&packed, precision, rows, kp, row, k);
                    for (j, g) in got.iter().enumerate() {
                        let want = if k + j < cols {
                            wide[row * cols + k + j]
                        } else {
                            0.0
                        };
                        assert_eq!(
                            g.to_bits(),
                            want.to_bits(),
                            "{precision} row {row} k {}",
                            k + j
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn packed_bytes_fall_with_the_precision() {
        let (rows, cols) = (64, 256);
        let bytes = |precision| {
            let mut packed = Vec::new();
            push_rows(&mut packed, &matrix(rows, cols, precision), precision).unwrap();
            4 * packed.len()
        };
        assert_eq!(bytes(Precision::F32), 4 * rows * cols);
        assert_eq!(bytes(Precision::F16), 2 * rows * cols);
        assert_eq!(bytes(Precision::Bf16), 2 * rows * cols);
        assert_eq!(bytes(Precision::Int8), rows * cols + 4 * rows);
        for precision in Precision::ALL {
            assert_eq!(
                bytes(precision),
                matrix_groups(rows, cols, precision) * group_bytes(precision)
            );
            assert_eq!(
                precision.matrix_bytes(rows, cols),
                bytes(precision) as u64,
                "cols a multiple of 4: as Precision::matrix_bytes counts"
            );
        }
    }

    #[test]
    fn a_matrix_at_another_precision_is_refused() {
        let mut packed = Vec::new();
        let m = matrix(2, 4, Precision::Bf16);
        assert!(push_rows(&mut packed, &m, Precision::F32).is_err());
    }

    #[test]
    fn f32_data_fills_whole_groups() {
        for (precision, groups) in [
            (Precision::F32, 3),
            (Precision::F16, 5),
            (Precision::Bf16, 5),
            (Precision::Int8, 10),
        ] {
            assert_eq!(f32_groups(10, precision), groups, "{precision}");
        }
    }
}
