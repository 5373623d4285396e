//! The GPU engine: TRM on wgpu with hand-written WGSL kernels, the whole
//! recursion resident on the device.
//!
//! A solve uploads the token ids and the initial carry, records one
//! embedding dispatch, then N_sup x T x (n + 1) network calls in one of two
//! schedules ([`GpuSchedule`]): `fused`, a workgroup per puzzle walking the
//! whole call (`shaders/mixer_step.wgsl` for the MLP-mixer model,
//! `shaders/attention_step.wgsl` for the attention model, both built on the
//! shared prelude `shaders/common/step_common.wgsl`) in as few dispatches as
//! the loop budget allows (`budget.rs`: some drivers cut long loops short),
//! cut into slices of puzzles so that no dispatch runs too long; or `spread`, each call's phases one
//! dispatch each over the whole batch's tiles (`shaders/spread_step.wgsl`,
//! planned by `spread.rs`), which fills a device at batch 1. Then the heads
//! after the last ACT step, and only the outputs the caller asks for are
//! read back. With early halting the device decides after each ACT step
//! (`shaders/halt.wgsl`: an index buffer maps workgroups to the puzzles
//! still running, and the fused steps and the heads dispatch indirectly
//! from its count), so the solve is still recorded ahead; the host reads
//! the running count one ACT step behind. Batches beyond the device's
//! buffer or dispatch limits are split into chunks, pipelined.
//!
//! That is the fast path for a fixed batch. The engine also provides the
//! solve program's slots (`crate::program::SlotEngine`, continuous
//! batching): a chunk's puzzles are the slots, a refill writes the new
//! puzzle's ids and carry into its region and re-embeds on the device, an
//! ACT step is one recording over the running list, and the host reads the
//! Q logits after it to decide who halts (`TrmConfig::halts`).
//!
//! ```no_run
//! use std::sync::Arc;
//! use trm_wgpu::gpu::{GpuContext, GpuEngine, GpuOptions};
//! use trm_wgpu::{Engine, PuzzleBatch, SolveOptions, TrmModel};
//!
//! # fn main() -> trm_wgpu::Result<()> {
//! let model = Arc::new(TrmModel::load("model.safetensors")?);
//! let context = GpuContext::new(&GpuOptions::default().with_env()?)?;
//! let mut engine = GpuEngine::new(&context, model.clone())?;
//! let tokens = vec![1i64; model.config().seq_len];
//! let batch = PuzzleBatch::new(model.config(), &tokens, None)?;
//! let out = engine.solve(&batch, &SolveOptions::default())?;
//! println!("{:?}, {}", out.predictions(), serde_json::to_string(engine.last_stats()).unwrap());
//! # Ok(())
//! # }
//! ```

mod adapters;
mod attention_step;
mod budget;
mod context;
mod embed;
mod halt;
mod heads;
mod kernels;
mod layout;
mod mixer_step;
pub mod noise;
mod probe;
mod spread;
mod step_common;
mod timing;
#[cfg(test)]
mod translation_tests;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::batch::PuzzleBatch;
use crate::config::{Level, TrmConfig};
use crate::error::{Result, TrmError};
use crate::model::TrmModel;
use crate::program::{Call, SlotEngine, act_step_calls};
use crate::solve::{Carry, Engine, SolveOptions, SolveOutput};
use crate::weights::Precision;

#[cfg(not(target_arch = "wasm32"))]
pub use adapters::list_adapters;
pub use adapters::{AdapterReport, list_adapters_async};
pub use context::{GpuBackend, GpuContext, GpuOptions};
pub use probe::{LoopProbe, loop_limit, probe_loops};
pub use timing::RecursionTiming;

use embed::Embed;
use halt::Halt;
use heads::Heads;
use layout::{PARAMS_BYTES, Params, Workgroups};
use spread::{SpreadKernels, SpreadPlan};
use step_common::{Lanes, StepPipeline};

/// What the engine did in its last solve, counted by the engine itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GpuStats {
    /// Network calls of the solve: ACT steps run (the most any puzzle ran)
    /// x H_cycles x (L_cycles + 1); not multiplied by the batch.
    pub recursion_steps: u64,
    /// ACT steps run (the most any puzzle ran).
    pub act_steps: u64,
    /// Network calls summed over puzzles: what halted puzzles saved shows
    /// here (without halting, `recursion_steps` x B).
    pub puzzle_recursion_steps: u64,
    /// Compute dispatches recorded.
    pub dispatches: u64,
    /// Command buffers submitted.
    pub submits: u64,
    /// Bytes copied from the device to the host.
    pub bytes_read_back: u64,
    /// Bytes written to the device during the solve (token ids, carry,
    /// active lists; the weights are uploaded once, by `GpuEngine::new`).
    pub bytes_uploaded: u64,
    /// Chunks the batch was split into to fit the device's limits.
    pub chunks: u64,
    /// The schedule the solve ran: `fused` or `spread` (`auto` resolved).
    pub schedule: String,
    /// Dispatches one network call records (fused: its segments, 1 where
    /// the whole call fits the loop budget; spread: 1 + 6 L or 1 + 8 L).
    pub dispatches_per_net_call: u64,
    /// Workgroups of the network calls' dispatches: min, median, max.
    pub workgroups_per_dispatch: WorkgroupSpread,
    /// Times the host waited for the device (read-backs and early-halting
    /// decisions).
    pub host_waits: u64,
    /// Whether the kernels' reductions (the norms over D, the attention's
    /// softmax) ran through subgroup shuffles: the device has subgroups and
    /// they were not turned off ([`GpuOptions::disable_subgroups`]).
    /// Otherwise they meet in workgroup memory.
    pub subgroups: bool,
    /// Device time of one network call of the whole chunk, as measured on
    /// the first submission of a large solve (see
    /// [`GpuRunOptions::max_submit_time`]), in seconds.
    pub measured_call_seconds: Option<f64>,
    /// Network calls per submission that measurement allowed.
    pub calls_per_submit: Option<u64>,
    /// The lane widths the kernels reached, as they measured them: left
    /// empty by a solve (which reads back nothing beyond its outputs),
    /// filled by those who ask [`GpuEngine::lane_widths`] (`trm run
    /// --stats`, `trm bench`).
    pub lanes: LaneWidths,
}

/// The lane widths the kernels reached ([`GpuEngine::lane_widths`]): the
/// clusters of consecutive invocations whose reductions met by subgroup
/// shuffles (4, 8 or 16 on lavapipe at 128, 256 or 512 bits; up to 16 on
/// GPUs), 1 where they met in workgroup memory alone; `None` for kernels
/// the last solve did not run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LaneWidths {
    /// The fused schedule's step kernel (`mixer_step` or `attention_step`).
    pub fused: Option<u32>,
    /// The spread schedule's norm over D (`spread_norm_rows`).
    pub spread_norm: Option<u32>,
    /// The spread schedule's attention tiles (`spread_attention`).
    pub spread_attention: Option<u32>,
}

/// Workgroups per dispatch of a solve's network calls.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WorkgroupSpread {
    /// The fewest workgroups of a dispatch.
    pub min: u32,
    /// The median dispatch's.
    pub median: u32,
    /// The most.
    pub max: u32,
}

impl WorkgroupSpread {
    /// Of the workgroup counts `groups` (each dispatch once).
    fn of(mut groups: Vec<u32>) -> Self {
        groups.sort_unstable();
        WorkgroupSpread {
            min: groups.first().copied().unwrap_or(0),
            median: groups.get(groups.len() / 2).copied().unwrap_or(0),
            max: groups.last().copied().unwrap_or(0),
        }
    }
}

/// How a network call is laid out on the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum GpuSchedule {
    /// `spread` below the adapter's crossover batch size, `fused` from it
    /// ([`GpuRunOptions::spread_below`], else [`GpuEngine::crossover`]).
    #[default]
    Auto,
    /// One workgroup per puzzle walks the whole call, in as few dispatches
    /// as the loop budget allows (`shaders/mixer_step.wgsl`,
    /// `shaders/attention_step.wgsl`). Best when the batch alone fills the
    /// device.
    Fused,
    /// Each call cut into phases, each spread over its output tiles for the
    /// whole batch (`shaders/spread_step.wgsl`): a GPU is filled at batch 1.
    Spread,
}

impl GpuSchedule {
    /// The spelling [`GpuSchedule::from_str`] accepts.
    pub fn as_str(self) -> &'static str {
        match self {
            GpuSchedule::Auto => "auto",
            GpuSchedule::Fused => "fused",
            GpuSchedule::Spread => "spread",
        }
    }
}

impl std::fmt::Display for GpuSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for GpuSchedule {
    type Err = TrmError;
    /// `auto`, `fused` or `spread`.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(GpuSchedule::Auto),
            "fused" => Ok(GpuSchedule::Fused),
            "spread" => Ok(GpuSchedule::Spread),
            _ => Err(TrmError::Input(format!(
                "unknown GPU schedule `{s}` (one of fused, spread, auto)"
            ))),
        }
    }
}

/// How a solve runs on the device: the schedule of a network call, and
/// how the solve is cut into submissions and chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GpuRunOptions {
    /// The schedule (default `auto`).
    pub schedule: GpuSchedule,
    /// With `auto`: batches smaller than this run `spread`, others `fused`
    /// (default: [`GpuEngine::crossover`]; `trm bench --tune` measures it).
    pub spread_below: Option<usize>,
    /// Submit the recorded work once it holds this many FLOPs (estimated), so
    /// that no command buffer runs long enough to trip an OS GPU watchdog
    /// (Windows resets a GPU busy for 2 s). The host does not wait between
    /// submissions. Default 2e11; [`GpuRunOptions::max_submit_time`]
    /// cuts closer where the device is measured slower.
    pub max_flops_per_submit: u64,
    /// Keep each submission within about this much device time,
    /// as measured: a solve of more than
    /// [`GpuRunOptions::measure_above_flops`] submits its embedding and
    /// first network call alone, times it (GPU timestamps where the adapter
    /// has them, else the wall clock, which counts the wait too), waits for
    /// it once, and cuts the rest into submissions of as many calls as fit.
    /// Default 0.5 s.
    pub max_submit_time: Duration,
    /// Solves estimated at more FLOPs than this measure their first
    /// submission ([`GpuRunOptions::max_submit_time`]); smaller ones are
    /// one submission with no wait until the results, since even a slow
    /// integrated GPU (50 GFLOP/s) runs them within half a second.
    /// Default 2.5e10.
    pub measure_above_flops: u64,
    /// Cut a fused dispatch (one workgroup per puzzle) into slices of at
    /// most this many FLOPs (estimated), so that no single dispatch runs
    /// long enough to trip a watchdog on a GPU without fine-grained
    /// preemption: 4e11 is 0.4 s at 1 TFLOP/s, 330 Sudoku puzzles or 25 of
    /// ARC size a dispatch. The spread schedule's dispatches are each one
    /// phase of a call (far below it at the small batches it is for).
    /// Default 4e11.
    pub max_flops_per_dispatch: u64,
    /// At most this many puzzles per chunk (default: as the device allows).
    pub max_chunk_puzzles: Option<usize>,
    /// At most this many bytes of per-batch device memory per chunk
    /// (default: no cap beyond the device's buffer limits and its memory: a
    /// chunk the device cannot allocate is halved until it can).
    pub max_chunk_bytes: u64,
    /// Fill the output, state and scratch buffers with NaN before each
    /// solve, so that an element no kernel writes (or one read before it is
    /// written) shows up as NaN (for tests).
    pub poison: bool,
    /// At most this many loop iterations in any invocation of a dispatch:
    /// fused network calls and the heads are cut into as many dispatches as
    /// keep them within it, because some drivers silently end every loop of
    /// an invocation after 65535 iterations (Mesa 22.3's llvmpipe: see
    /// `src/gpu/budget.rs`). Default 32768; `u64::MAX` records each call
    /// as one dispatch (`TRM_GPU_LOOP_BUDGET=none`: what shows whether a
    /// driver has the limit).
    pub max_loop_iterations: u64,
}

impl Default for GpuRunOptions {
    fn default() -> Self {
        GpuRunOptions {
            schedule: GpuSchedule::Auto,
            spread_below: None,
            max_flops_per_submit: 200_000_000_000,
            max_submit_time: Duration::from_millis(500),
            measure_above_flops: 25_000_000_000,
            max_flops_per_dispatch: 400_000_000_000,
            max_chunk_puzzles: None,
            max_chunk_bytes: u64::MAX,
            poison: false,
            max_loop_iterations: budget::LOOP_BUDGET,
        }
    }
}

impl GpuRunOptions {
    /// Sets [`GpuRunOptions::schedule`].
    pub fn schedule(mut self, schedule: GpuSchedule) -> Self {
        self.schedule = schedule;
        self
    }

    /// Sets [`GpuRunOptions::spread_below`].
    pub fn spread_below(mut self, batch: usize) -> Self {
        self.spread_below = Some(batch);
        self
    }

    /// Applies the environment (the CLI and the examples call this, through
    /// `Backend::build`): `TRM_POISON_GPU=1` fills the buffers with NaN
    /// before each solve, so tests can poison solves they run through a
    /// binary; `TRM_GPU_SCHEDULE` (`fused`, `spread`, `auto`) sets the
    /// schedule where it is still `auto`; `TRM_GPU_LOOP_BUDGET` sets
    /// [`GpuRunOptions::max_loop_iterations`] (`none`: no budget, each
    /// call one dispatch, to show a driver's loop limit).
    pub fn with_env(mut self) -> Self {
        if std::env::var("TRM_POISON_GPU").is_ok_and(|v| v == "1") {
            self = self.poison(true);
        }
        match std::env::var("TRM_GPU_LOOP_BUDGET").as_deref() {
            Ok("none") => self.max_loop_iterations = u64::MAX,
            Ok(n) => {
                if let Ok(n) = n.parse() {
                    self = self.max_loop_iterations(n);
                }
            }
            Err(_) => {}
        }
        if self.schedule == GpuSchedule::Auto
            && let Some(chosen) = std::env::var("TRM_GPU_SCHEDULE")
                .ok()
                .and_then(|v| v.parse().ok())
        {
            self.schedule = chosen;
        }
        self
    }

    /// Sets [`GpuRunOptions::max_flops_per_dispatch`].
    pub fn max_flops_per_dispatch(mut self, flops: u64) -> Self {
        self.max_flops_per_dispatch = flops.max(1);
        self
    }

    /// Sets [`GpuRunOptions::max_flops_per_submit`].
    pub fn max_flops_per_submit(mut self, flops: u64) -> Self {
        self.max_flops_per_submit = flops.max(1);
        self
    }

    /// Sets [`GpuRunOptions::max_submit_time`] and
    /// [`GpuRunOptions::measure_above_flops`].
    pub fn max_submit_time(mut self, time: Duration, measure_above_flops: u64) -> Self {
        self.max_submit_time = time;
        self.measure_above_flops = measure_above_flops;
        self
    }

    /// Sets [`GpuRunOptions::max_chunk_puzzles`].
    pub fn max_chunk_puzzles(mut self, puzzles: usize) -> Self {
        self.max_chunk_puzzles = Some(puzzles.max(1));
        self
    }

    /// Sets [`GpuRunOptions::max_chunk_bytes`].
    pub fn max_chunk_bytes(mut self, bytes: u64) -> Self {
        self.max_chunk_bytes = bytes;
        self
    }

    /// Sets [`GpuRunOptions::poison`].
    pub fn poison(mut self, on: bool) -> Self {
        self.poison = on;
        self
    }

    /// Sets [`GpuRunOptions::max_loop_iterations`].
    pub fn max_loop_iterations(mut self, iterations: u64) -> Self {
        self.max_loop_iterations = iterations.max(1);
        self
    }
}

/// The network-call kernel of the model's variant: `mixer_step` for the
/// MLP-mixer model, `attention_step` for the attention model. Both bind the
/// same buffers and run a call's segments, one dispatch each.
struct StepKernel {
    pipeline: StepPipeline,
}

impl StepKernel {
    /// Builds the kernel of `model`'s variant.
    fn new(ctx: &GpuContext, model: &TrmModel) -> Result<Self> {
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
    fn scratch_floats(config: &TrmConfig) -> usize {
        if config.mlp_t {
            mixer_step::scratch_floats(config)
        } else {
            attention_step::scratch_floats(config)
        }
    }

    /// Bytes of the weights the variant's kernel binds, stored at
    /// `precision`.
    fn weight_bytes(config: &TrmConfig, precision: Precision) -> u64 {
        if config.mlp_t {
            mixer_step::weight_bytes(config, precision)
        } else {
            attention_step::weight_bytes(config, precision)
        }
    }

    fn record(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        chunk: &Chunk,
        params_offset: u32,
        workgroups: Workgroups<'_>,
    ) {
        self.pipeline
            .record(pass, &chunk.step_group, params_offset, workgroups)
    }
}

/// What a model puts on a device once: its weights and the kernels that
/// read them.
struct Resident {
    step: StepKernel,
    embed: Embed,
    heads: Heads,
    halt: Halt,
}

/// Device buffers of one chunk of puzzles, allocated once for `capacity`
/// puzzles and kept for later solves.
struct Chunk {
    capacity: usize,
    /// `[3][capacity + 1][S][D]`: x, y = z_H, z = z_L.
    xyz: wgpu::Buffer,
    /// Per-puzzle scratch of the step kernel.
    scratch: wgpu::Buffer,
    /// Token ids `[capacity][seq_len]` then puzzle ids `[capacity]`.
    ids: wgpu::Buffer,
    /// Workgroup -> puzzle.
    active: wgpu::Buffer,
    /// Logits `[capacity][seq_len][vocab]` then q `[capacity][2]`.
    out: wgpu::Buffer,
    /// Parameter blocks: per slice the fused blocks (`fused`), then the
    /// spread plan's (z update, then y update).
    params: wgpu::Buffer,
    /// How the fused calls and the heads are cut into dispatches, and
    /// where their parameter blocks are.
    fused: FusedBlocks,
    /// The fused blocks of the first slice, which the spread plan's start
    /// from.
    bases: [Params; 2],
    /// Puzzles per fused dispatch, and the slices a call of `capacity`
    /// puzzles takes: the parameter blocks start with each slice's fused
    /// blocks.
    slice: u32,
    slices: u32,
    /// First float of the spread schedule's split partials in the scratch
    /// (after the work region of `capacity` puzzles).
    part_base: u32,
    /// Floats of the scratch: the work region, then the partials, then the
    /// kernels' reports (its last [`REPORT_FLOATS`]).
    scratch_floats: u64,
    /// Host-readable copies of what is read back: two, so that one chunk's
    /// results can wait to be mapped while the next chunk runs.
    staging: [wgpu::Buffer; 2],
    /// Floats of each of x, y and z: `capacity + 1` puzzles, the last a
    /// spare slot where the spread schedule computes the columns of
    /// puzzles that halted on the device.
    region: u64,
    /// Early halting on the device (`shaders/halt.wgsl`): the running count,
    /// the indirect dispatch, ACT steps done, then ACT steps per puzzle.
    control: wgpu::Buffer,
    /// Host-readable copies of the running count, two so that one can wait
    /// while the next is written.
    count_staging: [wgpu::Buffer; 2],
    step_group: wgpu::BindGroup,
    embed_group: wgpu::BindGroup,
    heads_group: wgpu::BindGroup,
    halt_group: wgpu::BindGroup,
}

impl Chunk {
    /// Index of the spread plan's first parameter block (after every
    /// slice's fused blocks).
    fn spread_first_block(&self) -> u32 {
        self.slices * self.fused.per_slice()
    }

    /// Staging buffer `slot` of the pair `staging` names.
    fn staging_buffer(&self, staging: Staging, slot: usize) -> &wgpu::Buffer {
        match staging {
            Staging::Results => &self.staging[slot],
            Staging::Count => &self.count_staging[slot],
        }
    }
}

/// The dispatches of the fused schedule's network calls and of the heads
/// ([`budget`]: each within the loop budget) and their parameter blocks:
/// per slice, one block per segment of the z update, of the y update,
/// then per range of the heads' outputs.
struct FusedBlocks {
    /// The segments of the z update's call and of the y update's
    /// (`[unit_first, unit_end)` of their units).
    calls: [budget::Segments; 2],
    /// The heads' output ranges.
    heads: Vec<[u32; 2]>,
}

impl FusedBlocks {
    /// Blocks per slice.
    fn per_slice(&self) -> u32 {
        (self.calls[0].ranges.len() + self.calls[1].ranges.len() + self.heads.len()) as u32
    }

    /// Index of the block of segment `i` of the y update (or z update) in
    /// slice `j`.
    fn step(&self, j: u32, y_update: bool, i: usize) -> u32 {
        let before = if y_update {
            self.calls[0].ranges.len()
        } else {
            0
        };
        j * self.per_slice() + (before + i) as u32
    }

    /// Index of the block of the heads' range `i` in slice `j`.
    fn heads(&self, j: u32, i: usize) -> u32 {
        let before = self.calls[0].ranges.len() + self.calls[1].ranges.len();
        j * self.per_slice() + (before + i) as u32
    }

    /// The segments of the y update's call (or the z update's).
    fn segments(&self, y_update: bool) -> &[[u32; 2]] {
        &self.calls[usize::from(y_update)].ranges
    }
}

/// One recorded command.
#[derive(Clone, Copy, Debug)]
enum Op {
    /// Embed the first `n` puzzles.
    Embed(u32),
    /// One network call for the active puzzles: the z update (injection
    /// y + x) or the y update (injection z).
    Step { y_update: bool, active: Active },
    /// Heads of the active puzzles.
    Heads(Active),
    /// Early halting on the device, after an ACT step's heads.
    Halt,
}

/// The puzzles a dispatch runs for.
#[derive(Clone, Copy, Debug)]
enum Active {
    /// The first n of the running list, as the host knows.
    Known(u32),
    /// As many as the device's running count (early halting on the
    /// device), which is at most `at_most`.
    OnDevice { at_most: u32 },
}

impl Active {
    /// The most puzzles it can be.
    fn at_most(self) -> u32 {
        match self {
            Active::Known(n) | Active::OnDevice { at_most: n } => n,
        }
    }
}

/// Where a submission's copies go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Staging {
    /// The chunk's current results buffer.
    Results,
    /// The current small buffer of the running count.
    Count,
}

/// A read-back asked for and not yet waited for.
struct PendingRead {
    submission: wgpu::SubmissionIndex,
    /// The staging buffer it reads: which pair, and which of the two.
    staging: Staging,
    slot: usize,
    bytes: u64,
    receiver: context::MapReceiver,
}

/// A chunk submitted whole, its outputs not yet read.
struct PendingChunk {
    read: PendingRead,
    puzzles: usize,
    /// ACT steps per puzzle, where the host knows them (no early halting);
    /// else they come with the read-back.
    steps: Option<Vec<u32>>,
    with_carry: bool,
}

/// A copy into the staging buffer.
struct Copy<'a> {
    source: &'a wgpu::Buffer,
    offset: u64,
    bytes: u64,
}

/// Runs TRM on a GPU through wgpu.
pub struct GpuEngine {
    ctx: GpuContext,
    model: Arc<TrmModel>,
    /// The model's weights on the device and the kernels that read them,
    /// shared by every engine of this context on the same model.
    resident: Arc<Resident>,
    /// The spread schedule's pipelines, built on its first use.
    spread: Option<SpreadKernels>,
    /// The spread plan of the batch size whose blocks are in the chunk's
    /// parameter buffer.
    plan: Option<SpreadPlan>,
    options: GpuRunOptions,
    /// The schedule of the solve being recorded (`auto` resolved).
    running: GpuSchedule,
    chunk: Option<Chunk>,
    stats: GpuStats,
    /// Workgroups of every network-call dispatch recorded in this solve.
    step_groups: Vec<u32>,
    /// Bytes between the parameter blocks (the uniform offset alignment).
    params_stride: u32,
    /// [`GpuEngine::chunk_capacity`] under the current options, once
    /// computed (the spread plans it sizes are not cheap to build);
    /// `usize::MAX` until then. Atomic so the engine stays `Sync`.
    capacity: std::sync::atomic::AtomicUsize,
    /// The staging buffer the chunk being recorded reads into.
    staging_slot: usize,
    /// The running-count buffer the next count read uses.
    staging_slot_count: usize,
    /// The solve program's slots (`crate::program`): slot i's puzzle lives
    /// in the chunk's puzzle `slot_map[i]`, so moving a slot is a swap here
    /// and the device's state never moves.
    slot_map: Vec<u32>,
    /// A slot was filled since the last embedding dispatch.
    embed_pending: bool,
    /// The noise kernel of noisy trajectories, made at the first noise.
    noise: Option<noise::Noise>,
}

const F32: u64 = 4;

/// The kernels' report slots at the end of the scratch (step_common.wgsl,
/// `report_lanes`): the lane width each kind of kernel found.
const REPORT_FLOATS: u64 = 4;

/// The fused dispatches of `active` puzzles: (slice, workgroups) for each
/// slice with puzzles (the device's counts, at most the slices' sizes,
/// where it decides).
fn slices_of(chunk: &Chunk, active: Active) -> impl Iterator<Item = (u32, u32)> + '_ {
    let n = active.at_most();
    (0..n.div_ceil(chunk.slice)).map(move |j| (j, (n - j * chunk.slice).min(chunk.slice)))
}

/// Puzzles per fused dispatch under `max_flops_per_dispatch`, whose
/// costliest segment takes `segment_flops` per puzzle.
fn slice_puzzles(segment_flops: u64, max_flops_per_dispatch: u64) -> u32 {
    (max_flops_per_dispatch / segment_flops.max(1)).clamp(1, u64::from(u32::MAX)) as u32
}

impl GpuEngine {
    /// Uploads the model's weights to the context's device and builds the
    /// kernels, for either variant (MLP-mixer or attention). Fails with
    /// [`TrmError::AdapterUnsuitable`] when the weights exceed the device's
    /// buffer limits.
    pub fn new(ctx: &GpuContext, model: Arc<TrmModel>) -> Result<Self> {
        check_weights_fit(ctx, &model)?;
        // uploaded once per device and model (the same `Arc`): every other
        // engine on it shares the buffers
        let resident = ctx.resident(&model, || {
            Ok(Resident {
                step: StepKernel::new(ctx, &model)?,
                embed: Embed::new(ctx, &model)?,
                heads: Heads::new(ctx, &model)?,
                halt: Halt::new(ctx, model.config())?,
            })
        })?;
        // the kernels that are not cut into dispatches fit the loop budget
        budget::check_fixed_kernels(
            model.config(),
            resident.step.pipeline.depth(),
            budget::LOOP_BUDGET,
        )?;
        let align = ctx.limits().min_uniform_buffer_offset_alignment.max(1);
        let params_stride = (PARAMS_BYTES as u32).div_ceil(align) * align;
        Ok(GpuEngine {
            ctx: ctx.clone(),
            model,
            resident,
            spread: None,
            plan: None,
            options: GpuRunOptions::default(),
            running: GpuSchedule::Fused,
            chunk: None,
            stats: GpuStats::default(),
            step_groups: Vec::new(),
            params_stride,
            capacity: std::sync::atomic::AtomicUsize::new(usize::MAX),
            staging_slot: 0,
            staging_slot_count: 0,
            slot_map: Vec::new(),
            embed_pending: false,
            noise: None,
        })
    }

    /// Replaces the run options (schedule, submission sizes, chunking,
    /// poisoning).
    pub fn set_run_options(&mut self, options: GpuRunOptions) {
        if options.max_chunk_puzzles != self.options.max_chunk_puzzles
            || options.max_chunk_bytes != self.options.max_chunk_bytes
            || options.max_flops_per_dispatch != self.options.max_flops_per_dispatch
            || options.max_loop_iterations != self.options.max_loop_iterations
        {
            self.chunk = None;
            self.plan = None;
        }
        self.capacity
            .store(usize::MAX, std::sync::atomic::Ordering::Relaxed);
        self.options = options;
    }

    /// The builder form of [`GpuEngine::set_run_options`].
    pub fn with_run_options(mut self, options: GpuRunOptions) -> Self {
        self.set_run_options(options);
        self
    }

    /// The run options.
    pub fn run_options(&self) -> &GpuRunOptions {
        &self.options
    }

    /// Sets the schedule of [`GpuEngine::run_options`].
    pub fn set_schedule(&mut self, schedule: GpuSchedule) {
        self.options.schedule = schedule;
    }

    /// The builder form of [`GpuEngine::set_schedule`].
    pub fn with_schedule(mut self, schedule: GpuSchedule) -> Self {
        self.set_schedule(schedule);
        self
    }

    /// The schedule asked for (`auto` unless set).
    pub fn schedule(&self) -> GpuSchedule {
        self.options.schedule
    }

    /// The batch size from which `auto` runs `fused` on this adapter, unless
    /// [`GpuRunOptions::spread_below`] says otherwise. A guess from the
    /// device type, since wgpu does not report compute units: on a CPU
    /// adapter (lavapipe, SwiftShader) the fused kernel fills the threads
    /// once the batch has one puzzle per thread; a discrete GPU holds a
    /// hundred or more workgroups at once, an integrated one a few dozen.
    /// `trm bench --tune` measures it.
    pub fn crossover(&self) -> usize {
        match self.ctx.adapter_info().device_type {
            wgpu::DeviceType::Cpu => std::env::var("LP_NUM_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
                .max(2),
            wgpu::DeviceType::DiscreteGpu => 256,
            _ => 32,
        }
    }

    /// The schedule a chunk of `batch` puzzles runs: `fused` or `spread`.
    pub fn resolve_schedule(&self, batch: usize) -> GpuSchedule {
        match self.options.schedule {
            GpuSchedule::Auto => {
                let below = self
                    .options
                    .spread_below
                    .unwrap_or_else(|| self.crossover());
                if batch < below {
                    GpuSchedule::Spread
                } else {
                    GpuSchedule::Fused
                }
            }
            chosen => chosen,
        }
    }

    /// Compiles now every pipeline this engine may run (the step kernel,
    /// embedding, heads and halting were at [`GpuEngine::new`]; the spread
    /// schedule's and the noise kernel otherwise wait for their first use),
    /// so that a browser, whose WGSL compiler is not naga, is checked on
    /// all of them at once ([`GpuContext::flush_errors`] reports the
    /// faults there).
    pub fn prepare_pipelines(&mut self) -> Result<()> {
        if self.spread.is_none() {
            self.spread = Some(SpreadKernels::new(
                &self.ctx,
                self.model.config(),
                &self.resident.step.pipeline,
            )?);
        }
        if self.noise.is_none() {
            self.noise = Some(noise::Noise::new(&self.ctx)?);
        }
        Ok(())
    }

    /// The lane widths the kernels of the last solve reached, as they
    /// measured them (`report_lanes` in `shaders/common/step_common.wgsl`):
    /// the clusters of invocations whose reductions met by subgroup
    /// shuffles, 1 where they met in workgroup memory alone. Reads them
    /// back from the device (blocking).
    pub fn lane_widths(&self) -> Result<LaneWidths> {
        let Some(chunk) = &self.chunk else {
            return Ok(LaneWidths::default());
        };
        let at = (chunk.scratch_floats - REPORT_FLOATS) * F32;
        let bytes = REPORT_FLOATS * F32;
        let ctx = &self.ctx;
        let staging = layout::buffer(
            ctx,
            "lane report",
            bytes,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )?;
        let submission = ctx.scoped("reading the lane report", || {
            let mut encoder =
                ctx.device()
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("lane report"),
                    });
            encoder.copy_buffer_to_buffer(&chunk.scratch, at, &staging, 0, bytes);
            ctx.queue().submit([encoder.finish()])
        })?;
        let (send, receiver) = context::map_channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, send);
        context::block_on(
            "a native build (reading the lane report blocks)",
            ctx.read_mapped(Some(submission), receiver, "the lane report"),
        )?
        .map_err(|e| TrmError::Gpu(format!("mapping the lane report: {e}")))?;
        let view = staging
            .slice(..)
            .get_mapped_range()
            .map_err(|e| TrmError::Gpu(format!("reading the lane report: {e}")))?;
        let slots: Vec<f32> = bytemuck::cast_slice(&view).to_vec();
        drop(view);
        staging.unmap();
        // a slot holds a width once its kernel ran (NaN or 0 before)
        let width = |slot: usize, ran: bool| {
            let v = slots[slot];
            (ran && v >= 1.0).then_some(v as u32)
        };
        let spread = self.running == GpuSchedule::Spread;
        Ok(LaneWidths {
            fused: width(0, !spread),
            spread_norm: width(1, spread),
            spread_attention: width(2, spread && !self.model.config().mlp_t),
        })
    }

    /// Counters of the last solve.
    pub fn last_stats(&self) -> &GpuStats {
        &self.stats
    }

    /// The context the engine runs on.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// The model.
    pub fn model(&self) -> &Arc<TrmModel> {
        &self.model
    }

    /// Whether this engine and `other` read the same weight buffers: engines
    /// of one context on the same model (`Arc`) do, so a model's weights are
    /// on a device once.
    pub fn shares_weights_with(&self, other: &GpuEngine) -> bool {
        Arc::ptr_eq(&self.resident, &other.resident)
    }

    /// Bytes of the blocks' weights on the device: the step kernels' weight
    /// buffer, packed at the model's precision (with int8's row scales and,
    /// for RoPE, its f32 tables). The embeddings and heads are f32 beside it.
    pub fn layer_weight_bytes(&self) -> u64 {
        self.resident.step.pipeline.weight_bytes()
    }

    /// Puzzles one chunk holds at most on this device and schedule; larger
    /// batches are solved chunk after chunk.
    pub fn chunk_capacity(&self) -> Result<usize> {
        let known = self.capacity.load(std::sync::atomic::Ordering::Relaxed);
        if known != usize::MAX {
            return Ok(known);
        }
        let capacity = self.compute_chunk_capacity()?;
        self.capacity
            .store(capacity, std::sync::atomic::Ordering::Relaxed);
        Ok(capacity)
    }

    /// [`GpuEngine::chunk_capacity`], computed.
    fn compute_chunk_capacity(&self) -> Result<usize> {
        let config = self.model.config();
        let limits = self.ctx.limits();
        let (seq, vocab) = (config.seq_len as u64, config.vocab_size as u64);
        let sd = (config.state_len() * config.hidden_size) as u64;
        let binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            .saturating_sub(16);
        let buffer = limits.max_buffer_size.saturating_sub(16);
        let per_puzzle = [
            ("state", 3 * sd * F32, binding),
            // the kernels' work region, and the spread schedule's partials
            (
                "scratch",
                (StepKernel::scratch_floats(config) as u64 + sd) * F32,
                binding,
            ),
            ("outputs", (seq * vocab + 2) * F32, binding),
            ("token ids", Embed::ids_words(config) * F32, binding),
            ("staging", (seq * vocab + 3 + 2 * sd) * F32, buffer),
        ];
        let mut capacity = u64::from(limits.max_compute_workgroups_per_dimension);
        // element indices of the state and scratch buffers stay within u32;
        // the state holds a spare puzzle slot beyond the capacity
        capacity = capacity.min((u64::from(u32::MAX) / (3 * sd).max(1)).saturating_sub(1));
        capacity = capacity.min((binding / (3 * sd * F32).max(1)).saturating_sub(1));
        for (what, bytes, limit) in per_puzzle {
            if bytes > limit {
                return Err(TrmError::AdapterUnsuitable {
                    adapter: self.ctx.adapter_info().name.clone(),
                    reason: format!(
                        "one puzzle needs {bytes} bytes of {what} in one buffer; the device allows {limit}"
                    ),
                });
            }
            capacity = capacity.min(limit / bytes.max(1));
        }
        let total: u64 = per_puzzle.iter().map(|(_, b, _)| b).sum::<u64>() + 4;
        capacity = capacity.min((self.options.max_chunk_bytes / total).max(1));
        if let Some(max) = self.options.max_chunk_puzzles {
            capacity = capacity.min(max as u64);
        }
        // the halting kernel walks the running list in one invocation
        let halt_most = budget::max_halt_puzzles(self.options.max_loop_iterations);
        capacity = capacity.min(halt_most.max(1) as u64);
        // The spread schedule's partials at small batches exceed one
        // puzzle's share: the largest capacity whose exact scratch fits.
        let fits = |cap: u64| {
            let floats = self.scratch_floats(cap);
            floats * F32 <= binding.saturating_add(16) && floats <= u64::from(u32::MAX)
        };
        let (mut lo, mut hi) = (1u64, capacity.max(1));
        if !fits(lo) {
            return Err(TrmError::AdapterUnsuitable {
                adapter: self.ctx.adapter_info().name.clone(),
                reason: format!(
                    "one puzzle needs {} bytes of scratch in one buffer; the device allows {binding}",
                    self.scratch_floats(1) * F32
                ),
            });
        }
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if fits(mid) { lo = mid } else { hi = mid - 1 }
        }
        Ok(lo as usize)
    }

    /// Floats of scratch a chunk of `capacity` puzzles holds: the kernels'
    /// work region, the spread schedule's split partials, then (from a
    /// multiple of 4) the kernels' [`REPORT_FLOATS`] report slots, the last
    /// floats of the binding (`report_lanes` in step_common.wgsl).
    fn scratch_floats(&self, capacity: u64) -> u64 {
        let config = self.model.config();
        let sk = self.resident.step.pipeline.depth();
        let data = capacity * StepKernel::scratch_floats(config) as u64
            + SpreadPlan::partial_floats_up_to(config, capacity as u32, sk);
        data.next_multiple_of(4) + REPORT_FLOATS
    }

    /// The fused calls' segments and the heads' ranges under the loop
    /// budget of the run options, on this device's tile depth.
    fn fused_blocks(&self) -> Result<FusedBlocks> {
        let config = self.model.config();
        let sk = self.resident.step.pipeline.depth();
        let budget = self.options.max_loop_iterations;
        Ok(FusedBlocks {
            calls: [
                budget::fused_segments(config, Level::L, sk, budget)?,
                budget::fused_segments(config, Level::H, sk, budget)?,
            ],
            heads: budget::heads_ranges(config, budget)?,
        })
    }

    /// Allocates the buffers of a chunk of `capacity` puzzles unless the
    /// current ones are large enough.
    fn ensure_chunk(&mut self, capacity: usize) -> Result<()> {
        if self.chunk.as_ref().is_some_and(|c| c.capacity >= capacity) {
            return Ok(());
        }
        self.chunk = None; // free the old buffers first
        self.plan = None;
        let config = self.model.config();
        let ctx = &self.ctx;
        let cap = capacity as u64;
        let (seq, vocab) = (config.seq_len as u64, config.vocab_size as u64);
        let sd = (config.state_len() * config.hidden_size) as u64;
        use wgpu::BufferUsages as U;
        // each region holds a spare puzzle slot after the chunk's own
        let region = (cap + 1) * sd;
        let xyz = layout::buffer(
            ctx,
            "state x, y, z",
            3 * region * F32,
            U::STORAGE | U::COPY_DST | U::COPY_SRC,
        )?;
        let work = cap * StepKernel::scratch_floats(config) as u64;
        let scratch_floats = self.scratch_floats(cap);
        let scratch_bytes = scratch_floats * F32;
        let limits = ctx.limits();
        let binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        if scratch_bytes > binding || scratch_floats > u64::from(u32::MAX) {
            return Err(TrmError::AdapterUnsuitable {
                adapter: ctx.adapter_info().name.clone(),
                reason: format!(
                    "{capacity} puzzles need {scratch_bytes} bytes of scratch in one buffer; the device allows {binding}"
                ),
            });
        }
        let scratch = layout::buffer(
            ctx,
            "scratch",
            scratch_bytes,
            U::STORAGE | U::COPY_DST | U::COPY_SRC,
        )?;
        let ids = layout::buffer(
            ctx,
            "token ids",
            cap * Embed::ids_words(config) * F32,
            U::STORAGE | U::COPY_DST,
        )?;
        let active = layout::buffer(ctx, "active puzzles", cap * F32, U::STORAGE | U::COPY_DST)?;
        let out = layout::buffer(
            ctx,
            "outputs",
            cap * (seq * vocab + 2) * F32,
            U::STORAGE | U::COPY_DST | U::COPY_SRC,
        )?;
        let stride = u64::from(self.params_stride);
        let spread_blocks = spread::most_blocks(config);
        let fused = self.fused_blocks()?;
        let segment_flops = fused.calls[0].most_flops.max(fused.calls[1].most_flops);
        let slice =
            slice_puzzles(segment_flops, self.options.max_flops_per_dispatch).min(capacity as u32);
        let slices = (capacity as u32).div_ceil(slice);
        let fused_block_count = u64::from(slices) * u64::from(fused.per_slice());
        let params = layout::buffer(
            ctx,
            "parameters",
            (fused_block_count + spread_blocks) * stride,
            U::UNIFORM | U::COPY_DST,
        )?;
        // logits, q, each puzzle's ACT steps (early halting), the carry
        let staging_bytes = cap * (seq * vocab + 2 + 1 + 2 * sd) * F32;
        let staging = [
            layout::buffer(ctx, "staging", staging_bytes, U::MAP_READ | U::COPY_DST)?,
            layout::buffer(ctx, "staging", staging_bytes, U::MAP_READ | U::COPY_DST)?,
        ];
        let control = layout::buffer(
            ctx,
            "halting control",
            (halt::control_header(slices) + cap) * F32,
            U::STORAGE | U::INDIRECT | U::COPY_DST | U::COPY_SRC,
        )?;
        let count_staging = [
            layout::buffer(ctx, "running count", 16, U::MAP_READ | U::COPY_DST)?,
            layout::buffer(ctx, "running count", 16, U::MAP_READ | U::COPY_DST)?,
        ];
        let common = Params {
            q_base: (cap * seq * vocab) as u32,
            puzzle_stride: sd as u32,
            batch: capacity as u32,
            slice,
            slices,
            ..Params::default()
        };
        // each update runs its level's blocks (HRM: its own network)
        let blocks = |level| {
            let layers = config.level_layers(level);
            (layers.start as u32, layers.len() as u32)
        };
        let ((l_first, l_count), (h_first, h_count)) = (blocks(Level::L), blocks(Level::H));
        let z_update = Params {
            state_base: 2 * region as u32,
            inj_a_base: region as u32,
            inj_b_base: 0,
            inject_sum: 1,
            layer_first: l_first,
            layer_count: l_count,
            ..common
        };
        let y_update = Params {
            state_base: region as u32,
            inj_a_base: 2 * region as u32,
            inj_b_base: 0,
            inject_sum: 0,
            layer_first: h_first,
            layer_count: h_count,
            ..common
        };
        // each slice's segments of the two calls, then its heads' ranges
        let mut blocks = vec![0u8; (fused_block_count * stride) as usize];
        let mut at = blocks.chunks_exact_mut(stride as usize);
        for j in 0..slices {
            let first = j * slice;
            let segments = [
                (z_update, fused.segments(false)),
                (y_update, fused.segments(true)),
            ];
            let heads = [(y_update, fused.heads.as_slice())];
            for (base, ranges) in segments.into_iter().chain(heads) {
                for &[unit_first, unit_end] in ranges {
                    let block = Params {
                        first,
                        unit_first,
                        unit_end,
                        ..base
                    };
                    let bytes = at.next().expect("a block for every segment");
                    bytes[..PARAMS_BYTES as usize].copy_from_slice(bytemuck::bytes_of(&block));
                }
            }
        }
        ctx.scoped("writing the parameters", || {
            ctx.queue().write_buffer(&params, 0, &blocks)
        })?;
        let step_group = self
            .resident
            .step
            .pipeline
            .bind_group(ctx, &xyz, &scratch, &active, &params)?;
        let embed_group = self.resident.embed.bind_group(ctx, &ids, &xyz, &params)?;
        let heads_group = self
            .resident
            .heads
            .bind_group(ctx, &xyz, &out, &active, &params)?;
        let halt_group = self
            .resident
            .halt
            .bind_group(ctx, &out, &active, &control, &params)?;
        self.chunk = Some(Chunk {
            capacity,
            xyz,
            scratch,
            ids,
            active,
            out,
            params,
            fused,
            bases: [z_update, y_update],
            slice,
            slices,
            part_base: work as u32,
            scratch_floats,
            staging,
            region,
            control,
            count_staging,
            step_group,
            embed_group,
            heads_group,
            halt_group,
        });
        Ok(())
    }

    /// Fills the chunk's state, outputs, scratch and the staging buffers
    /// its results and counts are read through with NaN
    /// ([`GpuRunOptions::poison`]): an element no kernel or copy writes, or
    /// one read before it is written, then shows as NaN.
    fn poison_chunk(&mut self, chunk: &Chunk) -> Result<()> {
        let nan = |bytes: u64| vec![f32::NAN; (bytes / F32) as usize];
        let staging = &chunk.staging[self.staging_slot];
        for buffer in [&chunk.xyz, &chunk.out, &chunk.scratch, staging]
            .into_iter()
            .chain(&chunk.count_staging)
        {
            self.upload(buffer, 0, &nan(buffer.size()))?;
        }
        Ok(())
    }

    /// Writes `data` to `buffer` at `offset` floats.
    fn upload<T: bytemuck::Pod>(
        &mut self,
        buffer: &wgpu::Buffer,
        offset: u64,
        data: &[T],
    ) -> Result<()> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        if bytes.is_empty() {
            return Ok(());
        }
        self.ctx.scoped("uploading to the GPU", || {
            self.ctx.queue().write_buffer(buffer, offset * F32, bytes)
        })?;
        self.stats.bytes_uploaded += bytes.len() as u64;
        Ok(())
    }

    /// Records `ops` in one compute pass, then `copies` into the staging
    /// buffer (back to back from offset 0), and submits.
    fn submit(
        &mut self,
        chunk: &Chunk,
        ops: &mut Vec<Op>,
        copies: &[Copy<'_>],
    ) -> Result<wgpu::SubmissionIndex> {
        self.submit_with(chunk, ops, copies, Staging::Results, None)
    }

    /// [`GpuEngine::submit`], the copies going to `staging`.
    fn submit_to(
        &mut self,
        chunk: &Chunk,
        ops: &mut Vec<Op>,
        copies: &[Copy<'_>],
        staging: Staging,
    ) -> Result<wgpu::SubmissionIndex> {
        self.submit_with(chunk, ops, copies, staging, None)
    }

    /// [`GpuEngine::submit`], with the pass's start and end stamped into
    /// `stamps` (see [`timing`]).
    fn submit_with(
        &mut self,
        chunk: &Chunk,
        ops: &mut Vec<Op>,
        copies: &[Copy<'_>],
        staging: Staging,
        stamps: Option<&timing::Stamps>,
    ) -> Result<wgpu::SubmissionIndex> {
        let ctx = self.ctx.clone();
        let stride = self.params_stride;
        let target = chunk.staging_buffer(
            staging,
            match staging {
                Staging::Results => self.staging_slot,
                Staging::Count => self.staging_slot_count,
            },
        );
        let spread = match (self.running, &self.spread, &self.plan) {
            (GpuSchedule::Spread, Some(kernels), Some(plan)) => Some((kernels, plan)),
            _ => None,
        };
        let mut dispatches = 0u64;
        for op in ops.iter() {
            match (*op, spread) {
                (Op::Step { y_update, active }, Some((_, plan))) => {
                    if plan.batch != active.at_most() {
                        return Err(TrmError::Gpu(format!(
                            "the spread plan is for {} puzzles, the step for {}",
                            plan.batch,
                            active.at_most()
                        )));
                    }
                    let call = plan.call(y_update);
                    dispatches += call.dispatches.len() as u64;
                    self.step_groups.extend(call.groups());
                }
                (Op::Step { active, y_update }, None) => {
                    let segments = chunk.fused.segments(y_update).len();
                    for (_, groups) in slices_of(chunk, active) {
                        dispatches += segments as u64;
                        self.step_groups
                            .extend(std::iter::repeat_n(groups, segments));
                    }
                }
                (Op::Heads(active), _) => {
                    dispatches +=
                        (slices_of(chunk, active).count() * chunk.fused.heads.len()) as u64
                }
                _ => dispatches += 1,
            }
        }
        // the z update's blocks, then the y update's, after the fused ones
        let z_blocks = spread.map_or(0, |(_, plan)| plan.call(false).blocks.len());
        let spread_offset = |y_update: bool, i: usize| -> u32 {
            let first = chunk.spread_first_block() as usize;
            let block = first + if y_update { z_blocks } else { 0 } + i;
            block as u32 * stride
        };
        let index = ctx.scoped("recording and submitting the solve", || {
            let device = ctx.device();
            let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("trm solve"),
            });
            if !ops.is_empty() {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("trm recursion"),
                    timestamp_writes: stamps.map(timing::Stamps::pass_writes),
                });
                let groups = |active: Active, j: u32, n: u32| match active {
                    Active::Known(_) => Workgroups::Fixed(n),
                    Active::OnDevice { .. } => {
                        Workgroups::Indirect(&chunk.control, halt::dispatch_offset(j))
                    }
                };
                for op in ops.iter() {
                    match *op {
                        Op::Embed(n) => {
                            self.resident.embed.record(&mut pass, &chunk.embed_group, n)
                        }
                        // any fused block: they all hold q_base, batch and the slices
                        Op::Halt => self.resident.halt.record(&mut pass, &chunk.halt_group, 0),
                        Op::Step { y_update, active } => match spread {
                            Some((kernels, plan)) => kernels.record(
                                &mut pass,
                                &chunk.step_group,
                                plan.call(y_update),
                                |i| spread_offset(y_update, i),
                            ),
                            None => {
                                for (j, n) in slices_of(chunk, active) {
                                    for i in 0..chunk.fused.segments(y_update).len() {
                                        self.resident.step.record(
                                            &mut pass,
                                            chunk,
                                            chunk.fused.step(j, y_update, i) * stride,
                                            groups(active, j, n),
                                        );
                                    }
                                }
                            }
                        },
                        Op::Heads(active) => {
                            for (j, n) in slices_of(chunk, active) {
                                for i in 0..chunk.fused.heads.len() {
                                    self.resident.heads.record(
                                        &mut pass,
                                        &chunk.heads_group,
                                        chunk.fused.heads(j, i) * stride,
                                        groups(active, j, n),
                                    );
                                }
                            }
                        }
                    }
                }
            }
            if let Some(stamps) = stamps {
                stamps.resolve(&mut encoder);
            }
            let mut at = 0;
            for copy in copies {
                encoder.copy_buffer_to_buffer(copy.source, copy.offset, target, at, copy.bytes);
                at += copy.bytes;
            }
            ctx.queue().submit([encoder.finish()])
        })?;
        ops.clear();
        self.stats.dispatches += dispatches;
        self.stats.submits += 1;
        Ok(index)
    }

    /// Resolves the schedule of a chunk of `batch` puzzles and gets it
    /// ready: the spread pipelines and the plan of the batch size.
    fn prepare_schedule(&mut self, chunk: &Chunk, batch: usize) -> Result<()> {
        self.running = self.resolve_schedule(batch);
        if self.running == GpuSchedule::Spread {
            if self.spread.is_none() {
                let kernels = SpreadKernels::new(
                    &self.ctx,
                    self.model.config(),
                    &self.resident.step.pipeline,
                )?;
                self.spread = Some(kernels);
            }
            self.ensure_plan(chunk, batch as u32)?;
        }
        self.stats.schedule = self.running.as_str().to_string();
        self.stats.subgroups = self.resident.step.pipeline.lanes() == Lanes::Subgroup;
        Ok(())
    }

    /// Writes the spread plan of `batch` active puzzles into the chunk's
    /// parameter buffer, unless it is there. Only between submissions whose
    /// steps run that batch size: a queue write lands before the next
    /// submission's commands.
    fn ensure_plan(&mut self, chunk: &Chunk, batch: u32) -> Result<()> {
        if self.running != GpuSchedule::Spread
            || self.plan.as_ref().is_some_and(|p| p.batch == batch)
        {
            return Ok(());
        }
        let config = self.model.config();
        let sk = self.resident.step.pipeline.depth();
        let [z, y] = &chunk.bases;
        let precision = self.resident.step.pipeline.precision();
        let plan = SpreadPlan::new(config, precision, batch, [z, y], chunk.part_base, sk);
        let stride = self.params_stride as usize;
        let mut bytes = vec![0u8; plan.blocks().count() * stride];
        for (block, at) in plan.blocks().zip(bytes.chunks_exact_mut(stride)) {
            at[..PARAMS_BYTES as usize].copy_from_slice(bytemuck::bytes_of(block));
        }
        self.ctx.scoped("writing the spread plan", || {
            self.ctx.queue().write_buffer(
                &chunk.params,
                u64::from(chunk.spread_first_block()) * stride as u64,
                &bytes,
            )
        })?;
        self.stats.bytes_uploaded += bytes.len() as u64;
        self.plan = Some(plan);
        Ok(())
    }

    /// Asks for the first `bytes` of the current `staging` buffer once
    /// `submission` is done, without waiting.
    fn start_read(
        &mut self,
        chunk: &Chunk,
        submission: wgpu::SubmissionIndex,
        staging: Staging,
        bytes: u64,
    ) -> Result<PendingRead> {
        let slot = match staging {
            Staging::Results => self.staging_slot,
            Staging::Count => self.staging_slot_count,
        };
        let (send, receiver) = context::map_channel();
        if bytes > 0 {
            self.ctx.scoped("mapping the results", || {
                chunk
                    .staging_buffer(staging, slot)
                    .map_async(wgpu::MapMode::Read, 0..bytes, send)
            })?;
        }
        Ok(PendingRead {
            submission,
            staging,
            slot,
            bytes,
            receiver,
        })
    }

    /// Waits for `read` and returns its bytes: the one read-back of every
    /// solve, async so that the web awaits the browser where native code
    /// polls the device ([`GpuContext::read_mapped`]).
    async fn finish_read(&mut self, chunk: &Chunk, read: PendingRead) -> Result<Vec<u8>> {
        let ctx = self.ctx.clone();
        self.stats.host_waits += 1;
        if read.bytes == 0 {
            ctx.wait_async(Some(read.submission)).await?;
            return Ok(Vec::new());
        }
        let mapped = ctx
            .read_mapped(Some(read.submission), read.receiver, "the results")
            .await?;
        if let Err(e) = mapped {
            ctx.check()?;
            let reason = format!("reading the results back failed: {e}");
            ctx.mark_lost(&reason);
            return Err(TrmError::DeviceLost(reason));
        }
        let staging = chunk.staging_buffer(read.staging, read.slot);
        let bytes = staging
            .get_mapped_range(0..read.bytes)
            .map_err(|e| TrmError::Gpu(format!("reading the results back: {e}")))?
            .to_vec();
        staging.unmap();
        self.stats.bytes_read_back += read.bytes;
        Ok(bytes)
    }

    /// [`GpuEngine::finish_read`] for the blocking slot API.
    fn finish_read_blocking(&mut self, chunk: &Chunk, read: PendingRead) -> Result<Vec<u8>> {
        context::block_on("GpuEngine::solve_async", self.finish_read(chunk, read))
    }

    /// Waits for a running count.
    async fn finish_count_read(&mut self, chunk: &Chunk, read: PendingRead) -> Result<u32> {
        let bytes = self.finish_read(chunk, read).await?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// Records and submits the solve of one chunk's puzzles (at most its
    /// capacity) and asks for its outputs; [`GpuEngine::finish_chunk`] waits
    /// for them.
    ///
    /// With early halting the device decides (`shaders/halt.wgsl`) after
    /// each ACT step's heads: the running list shrinks on the device and
    /// the fused steps and the heads read their workgroup count from it, so
    /// the ACT steps are recorded back to back. The host reads the running
    /// count one ACT step behind, while the next step runs: to stop once
    /// every puzzle has halted, and to shrink the spread schedule's plan
    /// (whose surplus columns compute on the spare slot meanwhile).
    async fn solve_chunk(
        &mut self,
        chunk: &Chunk,
        batch: &PuzzleBatch,
        carry: Option<(&[f32], &[f32])>,
        act_steps: usize,
        early_halt: bool,
        with_carry: bool,
    ) -> Result<PendingChunk> {
        let model = Arc::clone(&self.model);
        let config = model.config();
        let n = batch.len();
        let cap = chunk.capacity as u64;
        let (seq, vocab) = (config.seq_len as u64, config.vocab_size as u64);
        let sd = (config.state_len() * config.hidden_size) as u64;
        let region = chunk.region;
        let q_base = cap * seq * vocab;

        if self.options.poison {
            self.poison_chunk(chunk)?;
        }
        self.upload(&chunk.ids, 0, batch.tokens())?;
        self.upload(&chunk.ids, cap * seq, batch.puzzle_ids())?;
        let rows = model.puzzle_rows(batch.puzzle_ids())?;
        self.upload(&chunk.ids, cap * (seq + 1), &rows)?;
        match carry {
            Some((z_h, z_l)) => {
                self.upload(&chunk.xyz, region, z_h)?;
                self.upload(&chunk.xyz, 2 * region, z_l)?;
            }
            None => {
                let w = model.weights();
                let init = Carry::initial(&w.h_init, &w.l_init, n, config.state_len());
                self.upload(&chunk.xyz, region, &init.z_h)?;
                self.upload(&chunk.xyz, 2 * region, &init.z_l)?;
            }
        }
        let active: Vec<u32> = (0..n as u32).collect();
        self.upload(&chunk.active, 0, &active)?;
        if early_halt {
            // the count, ACT steps done, the slices' indirect dispatches
            let header = halt::initial_control(n as u32, chunk.slice, chunk.slices);
            self.upload(&chunk.control, 0, &header)?;
        }
        self.prepare_schedule(chunk, n)?;

        let spread = self.running == GpuSchedule::Spread;
        // puzzles that may still run: exact without halting, an upper bound
        // the host learns one ACT step late with it
        let mut known = n as u32;
        let mut ops = vec![Op::Embed(n as u32)];
        let call_flops = config.flops_per_recursion_step().max(1);
        let mut pending_flops = 0u64;
        // submissions cut by time: a large solve's first one is measured
        let whole =
            call_flops * n as u64 * (act_steps * config.recursion_steps_per_act_step()) as u64;
        let mut measure_first = whole > self.options.measure_above_flops;
        let mut calls_per_submit = u64::MAX;
        let mut pending_calls = 0u64;
        let mut count_read: Option<PendingRead> = None;
        let mut ran = 0;
        for step in 1..=act_steps {
            ran = step;
            let active = match (early_halt, spread) {
                (true, false) => Active::OnDevice { at_most: known },
                _ => Active::Known(known),
            };
            for call in act_step_calls(config) {
                ops.push(Op::Step {
                    y_update: call == Call::Answer,
                    active,
                });
                pending_flops += call_flops * u64::from(known);
                pending_calls += 1;
                if measure_first {
                    measure_first = false;
                    let call = self.submit_timed(chunk, &mut ops).await?;
                    calls_per_submit = self.calls_within_submit_time(call);
                    (pending_flops, pending_calls) = (0, 0);
                } else if pending_flops >= self.options.max_flops_per_submit
                    || pending_calls >= calls_per_submit
                {
                    self.submit(chunk, &mut ops, &[])?;
                    (pending_flops, pending_calls) = (0, 0);
                }
            }
            let last = step == act_steps;
            if !early_halt {
                if last {
                    ops.push(Op::Heads(Active::Known(known)));
                }
                continue;
            }
            ops.push(Op::Heads(Active::OnDevice { at_most: known }));
            ops.push(Op::Halt);
            if last {
                break;
            }
            // the running count after this step, read while the next runs
            self.staging_slot_count = 1 - self.staging_slot_count;
            let copy = Copy {
                source: &chunk.control,
                offset: 0,
                bytes: F32,
            };
            let submission = self.submit_to(chunk, &mut ops, &[copy], Staging::Count)?;
            (pending_flops, pending_calls) = (0, 0);
            let this = self.start_read(chunk, submission, Staging::Count, F32)?;
            if let Some(previous) = count_read.replace(this) {
                let running = self.finish_count_read(chunk, previous).await?;
                if running == 0 {
                    break;
                }
                if spread && running < known {
                    known = running;
                    self.ensure_plan(chunk, known)?;
                }
            }
        }
        if let Some(unread) = count_read.take() {
            self.finish_count_read(chunk, unread).await?;
        }

        let nn = n as u64;
        let mut copies = vec![
            Copy {
                source: &chunk.out,
                offset: 0,
                bytes: nn * seq * vocab * F32,
            },
            Copy {
                source: &chunk.out,
                offset: q_base * F32,
                bytes: 2 * nn * F32,
            },
        ];
        if early_halt {
            copies.push(Copy {
                source: &chunk.control,
                offset: halt::control_header(chunk.slices) * F32,
                bytes: nn * F32,
            });
        }
        if with_carry {
            copies.push(Copy {
                source: &chunk.xyz,
                offset: region * F32,
                bytes: nn * sd * F32,
            });
            copies.push(Copy {
                source: &chunk.xyz,
                offset: 2 * region * F32,
                bytes: nn * sd * F32,
            });
        }
        let floats: u64 = copies.iter().map(|c| c.bytes / F32).sum();
        let submission = self.submit(chunk, &mut ops, &copies)?;
        let read = self.start_read(chunk, submission, Staging::Results, floats * F32)?;
        Ok(PendingChunk {
            read,
            puzzles: n,
            steps: if early_halt {
                None
            } else {
                Some(vec![ran as u32; n])
            },
            with_carry,
        })
    }

    /// Puzzles of a batch of `b` one pass of the chunk runs: as many as it
    /// holds, and under the spread schedule, whose every dispatch covers a
    /// phase of all of them, no more than keep a phase (at most a block's
    /// FLOPs per puzzle) within [`GpuRunOptions::max_flops_per_dispatch`],
    /// as the fused schedule's slices are.
    fn puzzles_per_run(&self, chunk: &Chunk, b: usize) -> usize {
        let n = chunk.capacity.min(b).max(1);
        if self.resolve_schedule(n) != GpuSchedule::Spread {
            return n;
        }
        let per_puzzle = self.model.config().flops_per_block().max(1);
        let most = (self.options.max_flops_per_dispatch / per_puzzle).max(1);
        n.min(usize::try_from(most).unwrap_or(usize::MAX))
    }

    /// Submits `ops` (the first network call of a solve, after its
    /// embedding) alone, waits for it and returns its device time: the
    /// span between the pass's timestamps where the adapter has them, else
    /// the wall clock from submission to completion (which counts the
    /// submission and the wait too, so errs on the long side).
    async fn submit_timed(&mut self, chunk: &Chunk, ops: &mut Vec<Op>) -> Result<Duration> {
        let stamps = self.stamps()?;
        let start = web_time::Instant::now();
        let submission = self.submit_with(chunk, ops, &[], Staging::Results, stamps.as_ref())?;
        self.ctx.wait_async(Some(submission)).await?;
        self.stats.host_waits += 1;
        let wall = start.elapsed();
        Ok(match &stamps {
            Some(stamps) => self.read_stamps(stamps).await?,
            None => wall,
        })
    }

    /// Network calls a submission may hold when one took `call` of device
    /// time: as many as fit [`GpuRunOptions::max_submit_time`], at least
    /// one. Recorded in the stats.
    fn calls_within_submit_time(&mut self, call: Duration) -> u64 {
        let fit = self.options.max_submit_time.as_secs_f64() / call.as_secs_f64().max(1e-9);
        let calls = (fit.floor() as u64).max(1);
        self.stats.measured_call_seconds = Some(call.as_secs_f64());
        self.stats.calls_per_submit = Some(calls);
        calls
    }

    /// Waits for a chunk's results and returns its outputs.
    async fn finish_chunk(&mut self, chunk: &Chunk, pending: PendingChunk) -> Result<SolveOutput> {
        let PendingChunk {
            read,
            puzzles: n,
            steps,
            with_carry,
        } = pending;
        let bytes = self.finish_read(chunk, read).await?;
        let values: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let config = self.model.config();
        let (seq, vocab) = (config.seq_len as u64, config.vocab_size as u64);
        let sd = (config.state_len() * config.hidden_size) as u64;
        let nn = n as u64;
        let mut out = SolveOutput::poisoned(config, n);
        let (logits, rest) = values.split_at((nn * seq * vocab) as usize);
        let (q, rest) = rest.split_at(2 * n);
        out.logits.copy_from_slice(logits);
        for (i, pair) in q.chunks_exact(2).enumerate() {
            out.q_halt_logits[i] = pair[0];
            out.q_continue_logits[i] = pair[1];
        }
        // the ACT steps each puzzle ran: the host's count, or the device's
        // (u32 bit patterns in the float read-back)
        let rest = match steps {
            Some(steps) => {
                out.steps = steps;
                rest
            }
            None => {
                let (ran, rest) = rest.split_at(n);
                out.steps = ran.iter().map(|v| v.to_bits()).collect();
                rest
            }
        };
        let per_act = config.recursion_steps_per_act_step() as u64;
        self.stats.puzzle_recursion_steps +=
            out.steps.iter().map(|&s| u64::from(s)).sum::<u64>() * per_act;
        if !with_carry {
            return Ok(out.without_carry());
        }
        let (z_h, z_l) = rest.split_at((nn * sd) as usize);
        out.z_h.copy_from_slice(z_h);
        out.z_l.copy_from_slice(z_l);
        Ok(out)
    }
}

/// The weights of each kernel must fit one storage binding: the layers at
/// the model's precision (as the step kernels store them), the embeddings
/// and heads widened to f32.
fn check_weights_fit(ctx: &GpuContext, model: &TrmModel) -> Result<()> {
    let config = model.config();
    let limits = ctx.limits();
    let limit = limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size)
        .saturating_sub(16);
    let w = model.weights();
    // the puzzle table is not among them: its rows travel with the ids
    let tables = w.embed_tokens.len() + w.embed_pos.as_ref().map_or(0, |m| m.len());
    let layers = StepKernel::weight_bytes(config, model.precision());
    for (what, bytes) in [
        ("layer weights", layers),
        ("embedding tables", tables as u64 * F32),
        (
            "head weights",
            (w.lm_head.len() + 2 * config.hidden_size + 2) as u64 * F32,
        ),
    ] {
        if bytes > limit {
            return Err(TrmError::AdapterUnsuitable {
                adapter: ctx.adapter_info().name.clone(),
                reason: format!(
                    "the {what} take {bytes} bytes, beyond the device's storage binding limit of {limit} bytes"
                ),
            });
        }
    }
    Ok(())
}

impl Engine for GpuEngine {
    fn config(&self) -> &TrmConfig {
        self.model.config()
    }

    fn describe(&self) -> String {
        format!("gpu: {}", self.ctx.describe())
    }

    /// Blocking: natively [`GpuEngine::solve_from_async`] waited for; on
    /// the web it fails (use the async call there).
    fn solve_from(
        &mut self,
        batch: &PuzzleBatch,
        carry: Option<&Carry>,
        options: &SolveOptions,
    ) -> Result<SolveOutput> {
        context::block_on(
            "GpuEngine::solve_from_async",
            self.solve_from_async(batch, carry, options),
        )
    }
}

impl GpuEngine {
    /// [`Engine::solve`], async: the web's way (the browser runs the GPU
    /// and resolves the read-back), and what the blocking call waits for.
    pub async fn solve_async(
        &mut self,
        batch: &PuzzleBatch,
        options: &SolveOptions,
    ) -> Result<SolveOutput> {
        self.solve_from_async(batch, None, options).await
    }

    /// [`Engine::solve_from`], async (see [`GpuEngine::solve_async`]).
    /// Noise runs the solve program's path, which is blocking: natively
    /// only.
    pub async fn solve_from_async(
        &mut self,
        batch: &PuzzleBatch,
        carry: Option<&Carry>,
        options: &SolveOptions,
    ) -> Result<SolveOutput> {
        let model = Arc::clone(&self.model);
        let config = model.config();
        if batch.seq_len() != config.seq_len {
            return Err(TrmError::Input(format!(
                "the batch has seq_len {}, the model {}",
                batch.seq_len(),
                config.seq_len
            )));
        }
        let act_steps = options.resolved_act_steps(config)?;
        let b = batch.len();
        if let Some(c) = carry {
            c.check(config, b)?;
        }
        if options.noise.is_some_and(|n| n.sigma != 0.0) {
            // the noise goes in between ACT steps: the solve program's path
            // (sigma 0 adds exactly nothing, so it keeps the fast path and
            // its outputs bit for bit)
            return crate::program::solve_batch(self, batch, carry, options);
        }
        self.stats = GpuStats::default();
        self.step_groups.clear();
        self.allocate_chunk(b)?;
        let Some(chunk) = self.chunk.take() else {
            return Err(TrmError::Gpu("the chunk buffers are missing".into()));
        };
        let result = self
            .solve_chunks(&chunk, batch, carry, act_steps, options)
            .await;
        self.chunk = Some(chunk);
        let out = result?;
        let most = out.steps.iter().copied().max().unwrap_or(0) as u64;
        self.stats.act_steps = most;
        self.stats.recursion_steps = most * config.recursion_steps_per_act_step() as u64;
        self.finish_stats();
        Ok(out)
    }
}

impl SlotEngine for GpuEngine {
    fn open_slots(&mut self, slots: usize) -> Result<usize> {
        self.stats = GpuStats::default();
        self.step_groups.clear();
        let slots = self.allocate_chunk(slots)?;
        let model = Arc::clone(&self.model);
        let config = model.config();
        self.with_chunk(|e, chunk| {
            let cap = chunk.capacity as u64;
            if e.options.poison {
                e.poison_chunk(chunk)?;
            }
            // every puzzle of the chunk is embedded when a slot is filled:
            // free ones read these valid ids
            let ids = vec![0u32; (cap * Embed::ids_words(config)) as usize];
            e.upload(&chunk.ids, 0, &ids)
        })?;
        self.stats.chunks = 1;
        self.slot_map = (0..slots as u32).collect();
        self.embed_pending = false;
        Ok(slots)
    }

    fn fill_slot(
        &mut self,
        slot: usize,
        tokens: &[u32],
        puzzle_id: u32,
        carry: Option<(&[f32], &[f32])>,
    ) -> Result<()> {
        let model = Arc::clone(&self.model);
        let config = model.config();
        let (seq, sd) = (config.seq_len, config.state_len() * config.hidden_size);
        let p = u64::from(self.physical(slot)?);
        if tokens.len() != seq || carry.is_some_and(|(h, l)| h.len() != sd || l.len() != sd) {
            return Err(TrmError::Input(format!(
                "a slot takes {seq} token ids and a carry of {sd} values each"
            )));
        }
        let initial;
        let (z_h, z_l) = match carry {
            Some(rows) => rows,
            None => {
                let w = model.weights();
                initial = Carry::initial(&w.h_init, &w.l_init, 1, config.state_len());
                (&initial.z_h[..], &initial.z_l[..])
            }
        };
        let row = model.puzzle_rows(&[puzzle_id])?;
        // the puzzle's ids, table row and carry written into its region;
        // the embedding runs on the device before the next ACT step
        self.with_chunk(|e, chunk| {
            let (cap, seq, sd) = (chunk.capacity as u64, seq as u64, sd as u64);
            e.upload(&chunk.ids, p * seq, tokens)?;
            e.upload(&chunk.ids, cap * seq + p, &[puzzle_id])?;
            e.upload(&chunk.ids, cap * (seq + 1) + p * row.len() as u64, &row)?;
            e.upload(&chunk.xyz, chunk.region + p * sd, z_h)?;
            e.upload(&chunk.xyz, 2 * chunk.region + p * sd, z_l)
        })?;
        self.embed_pending = true;
        Ok(())
    }

    fn add_noise(
        &mut self,
        slot: usize,
        state: crate::noise::State,
        draw: &crate::noise::NoiseDraw,
    ) -> Result<()> {
        let config = self.model.config();
        let sd = (config.state_len() * config.hidden_size) as u64;
        let p = u64::from(self.physical(slot)?);
        self.with_chunk(|e, chunk| {
            // z_H is region 1 of the chunk's state, z_L region 2
            let region = match state {
                crate::noise::State::ZH => 1,
                crate::noise::State::ZL => 2,
            };
            let base = u32::try_from(region * chunk.region + p * sd).map_err(|_| {
                TrmError::TooLarge("a state buffer beyond 2^32 floats for the noise".into())
            })?;
            // one row whose global row g gives g / k = puzzle, g % k =
            // trajectory, with k = trajectory + 1
            let k = draw.trajectory + 1;
            let first_row = draw
                .puzzle
                .checked_mul(k)
                .and_then(|g| g.checked_add(draw.trajectory))
                .ok_or_else(|| TrmError::TooLarge("a noise key beyond 32 bits".into()))?;
            let dispatch = noise::NoiseDispatch {
                seed: draw.seed,
                sigma: draw.sigma,
                step: draw.step,
                state,
                first_row,
                trajectories: k,
                row_elems: sd as u32,
                rows: 1,
                base,
            };
            if e.noise.is_none() {
                e.noise = Some(noise::Noise::new(&e.ctx)?);
            }
            let kernel = e.noise.as_ref().expect("made above");
            let mut encoder =
                e.ctx
                    .device()
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("noise"),
                    });
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("noise"),
                    timestamp_writes: None,
                });
                kernel.record(&e.ctx, &mut pass, &chunk.xyz, &dispatch)?;
            }
            // queued before the next ACT step's submission: no wait
            e.ctx.queue().submit([encoder.finish()]);
            Ok(())
        })
    }

    fn move_slot(&mut self, from: usize, to: usize) -> Result<()> {
        self.physical(from.max(to))?;
        self.slot_map.swap(from, to);
        Ok(())
    }

    fn act_step(&mut self, occupied: usize, heads: bool) -> Result<Vec<[f32; 2]>> {
        if occupied == 0 {
            return Ok(Vec::new());
        }
        self.physical(occupied - 1)?;
        let model = Arc::clone(&self.model);
        let config = model.config();
        let running: Vec<u32> = self.slot_map[..occupied].to_vec();
        let n = occupied as u32;
        let q = self.with_chunk(|e, chunk| {
            e.upload(&chunk.active, 0, &running)?;
            e.prepare_schedule(chunk, occupied)?;
            let mut ops = Vec::new();
            if std::mem::take(&mut e.embed_pending) {
                // every puzzle of the chunk: the unchanged ones get the same x
                ops.push(Op::Embed(chunk.capacity as u32));
            }
            // one recording for the ACT step, cut only by the FLOPs per submit
            let call_flops = config.flops_per_recursion_step().max(1) * u64::from(n);
            let mut pending_flops = 0u64;
            for call in act_step_calls(config) {
                ops.push(Op::Step {
                    y_update: call == Call::Answer,
                    active: Active::Known(n),
                });
                pending_flops += call_flops;
                if pending_flops >= e.options.max_flops_per_submit {
                    e.submit(chunk, &mut ops, &[])?;
                    pending_flops = 0;
                }
            }
            if !heads {
                e.submit(chunk, &mut ops, &[])?;
                return Ok(Vec::new());
            }
            ops.push(Op::Heads(Active::Known(n)));
            let cap = chunk.capacity as u64;
            let q_base = cap * config.seq_len as u64 * config.vocab_size as u64;
            let copy = Copy {
                source: &chunk.out,
                offset: q_base * F32,
                bytes: 2 * cap * F32,
            };
            let submission = e.submit(chunk, &mut ops, &[copy])?;
            let read = e.start_read(chunk, submission, Staging::Results, 2 * cap * F32)?;
            let bytes = e.finish_read_blocking(chunk, read)?;
            let value = |i: usize| {
                f32::from_le_bytes([
                    bytes[4 * i],
                    bytes[4 * i + 1],
                    bytes[4 * i + 2],
                    bytes[4 * i + 3],
                ])
            };
            Ok(running
                .iter()
                .map(|&p| [value(2 * p as usize), value(2 * p as usize + 1)])
                .collect())
        })?;
        let per_act = config.recursion_steps_per_act_step() as u64;
        self.stats.act_steps += 1;
        self.stats.recursion_steps += per_act;
        self.stats.puzzle_recursion_steps += per_act * u64::from(n);
        self.finish_stats();
        Ok(q)
    }

    fn read_slots(&mut self, slots: &[usize], carry: bool) -> Result<SolveOutput> {
        let model = Arc::clone(&self.model);
        let config = model.config();
        let physical = slots
            .iter()
            .map(|&s| self.physical(s).map(u64::from))
            .collect::<Result<Vec<u64>>>()?;
        let k = slots.len();
        let mut out = SolveOutput::poisoned(config, k);
        if k == 0 {
            return Ok(out.without_carry());
        }
        let bytes = self.with_chunk(|e, chunk| {
            let cap = chunk.capacity as u64;
            let (seq, vocab) = (config.seq_len as u64, config.vocab_size as u64);
            let sd = (config.state_len() * config.hidden_size) as u64;
            let l = seq * vocab;
            // logits, q, then the carry, each slot after slot
            let mut copies = Vec::new();
            for &p in &physical {
                copies.push(Copy {
                    source: &chunk.out,
                    offset: p * l * F32,
                    bytes: l * F32,
                });
            }
            for &p in &physical {
                copies.push(Copy {
                    source: &chunk.out,
                    offset: (cap * l + 2 * p) * F32,
                    bytes: 2 * F32,
                });
            }
            if carry {
                for region in [chunk.region, 2 * chunk.region] {
                    for &p in &physical {
                        copies.push(Copy {
                            source: &chunk.xyz,
                            offset: (region + p * sd) * F32,
                            bytes: sd * F32,
                        });
                    }
                }
            }
            let total: u64 = copies.iter().map(|c| c.bytes).sum();
            let submission = e.submit(chunk, &mut Vec::new(), &copies)?;
            let read = e.start_read(chunk, submission, Staging::Results, total)?;
            e.finish_read_blocking(chunk, read)
        })?;
        let values: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let (logits, rest) = values.split_at(out.logits.len());
        out.logits.copy_from_slice(logits);
        let (q, rest) = rest.split_at(2 * k);
        for (i, pair) in q.chunks_exact(2).enumerate() {
            out.q_halt_logits[i] = pair[0];
            out.q_continue_logits[i] = pair[1];
        }
        if !carry {
            return Ok(out.without_carry());
        }
        let (z_h, z_l) = rest.split_at(out.z_h.len());
        out.z_h.copy_from_slice(z_h);
        out.z_l.copy_from_slice(z_l);
        Ok(out)
    }
}

impl GpuEngine {
    /// Allocates the chunk buffers for up to `puzzles` puzzles (at least
    /// one), as many as the device holds; returns how many that is.
    fn allocate_chunk(&mut self, puzzles: usize) -> Result<usize> {
        let mut capacity = self.chunk_capacity()?.min(puzzles.max(1));
        // the device's memory, which wgpu does not report, decides the rest
        loop {
            match self.ensure_chunk(capacity) {
                Err(TrmError::OutOfMemory(_)) if capacity > 1 => capacity = capacity.div_ceil(2),
                other => break other,
            }
        }?;
        Ok(capacity)
    }

    /// Runs `f` with the chunk's buffers (taken out of the engine meanwhile).
    fn with_chunk<R>(&mut self, f: impl FnOnce(&mut Self, &Chunk) -> Result<R>) -> Result<R> {
        let Some(chunk) = self.chunk.take() else {
            return Err(TrmError::Input("no slots are open".into()));
        };
        let result = f(self, &chunk);
        self.chunk = Some(chunk);
        result
    }

    /// The chunk puzzle holding open slot `slot`.
    fn physical(&self, slot: usize) -> Result<u32> {
        self.slot_map.get(slot).copied().ok_or_else(|| {
            TrmError::Input(format!("slot {slot} of {} open slots", self.slot_map.len()))
        })
    }

    /// The per-call counters from the dispatches recorded.
    fn finish_stats(&mut self) {
        let calls = self.step_groups.len() as u64;
        let per_call = match (self.running, &self.plan) {
            // HRM's two networks may differ in depth: the deeper one's
            (GpuSchedule::Spread, Some(plan)) => plan
                .calls
                .iter()
                .map(|c| c.dispatches.len() as u64)
                .max()
                .unwrap_or(0),
            // the segments of the longer call (src/gpu/budget.rs)
            _ => self.chunk.as_ref().map_or(1, |chunk| {
                let segments = |y_update| chunk.fused.segments(y_update).len() as u64;
                segments(false).max(segments(true))
            }),
        };
        self.stats.dispatches_per_net_call = if calls == 0 { 0 } else { per_call };
        self.stats.workgroups_per_dispatch = WorkgroupSpread::of(self.step_groups.clone());
    }

    async fn solve_chunks(
        &mut self,
        chunk: &Chunk,
        batch: &PuzzleBatch,
        carry: Option<&Carry>,
        act_steps: usize,
        options: &SolveOptions,
    ) -> Result<SolveOutput> {
        let config = self.model.config();
        let sd = config.state_len() * config.hidden_size;
        let b = batch.len();
        let mut total: Option<SolveOutput> = None;
        let mut add = |out: SolveOutput| -> Result<()> {
            match &mut total {
                None => total = Some(out),
                Some(t) => t.append(out)?,
            }
            Ok(())
        };
        // Chunk i + 1 is recorded and submitted before chunk i's results
        // are waited for (each reads into its own staging buffer), so the
        // device never idles between chunks.
        let mut pending: Option<PendingChunk> = None;
        let mut start = 0;
        let per_run = self.puzzles_per_run(chunk, b);
        while start < b {
            let end = (start + per_run).min(b);
            let part = if start == 0 && end == b {
                batch.clone()
            } else {
                batch.slice(start..end)
            };
            let part_carry =
                carry.map(|c| (&c.z_h[start * sd..end * sd], &c.z_l[start * sd..end * sd]));
            let submitted = self
                .solve_chunk(
                    chunk,
                    &part,
                    part_carry,
                    act_steps,
                    options.early_halt,
                    options.carry,
                )
                .await?;
            self.stats.chunks += 1;
            if let Some(previous) = pending.take() {
                add(self.finish_chunk(chunk, previous).await?)?;
            }
            pending = Some(submitted);
            self.staging_slot = 1 - self.staging_slot;
            start = end;
        }
        if let Some(last) = pending.take() {
            add(self.finish_chunk(chunk, last).await?)?;
        }
        total.ok_or_else(|| TrmError::Input("the batch holds no puzzles".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_and_contexts_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<GpuContext>();
        send::<GpuEngine>();
    }

    #[test]
    fn stats_serialise_with_the_documented_names() {
        let json = serde_json::to_value(GpuStats::default()).unwrap();
        for key in [
            "recursion_steps",
            "dispatches",
            "submits",
            "bytes_read_back",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
    }
}
