//! What a caller sets and reads of the GPU engine: the schedule and the
//! run options (how a solve is cut into submissions, dispatches and chunks,
//! test modes), and the counters of the last solve.

use std::time::Duration;

use serde::Serialize;

use crate::error::{Result, TrmError};

use super::budget;

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
    /// they were not turned off ([`GpuOptions::disable_subgroups`](super::GpuOptions::disable_subgroups)).
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
    /// filled by those who ask [`GpuEngine::lane_widths`](super::GpuEngine::lane_widths) (`trm run
    /// --stats`, `trm bench`).
    pub lanes: LaneWidths,
}

/// The lane widths the kernels reached ([`GpuEngine::lane_widths`](super::GpuEngine::lane_widths)): the
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
    pub(super) fn of(mut groups: Vec<u32>) -> Self {
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
    /// ([`GpuRunOptions::spread_below`], else [`GpuEngine::crossover`](super::GpuEngine::crossover)).
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
    /// The spelling its [`FromStr`](std::str::FromStr) implementation accepts.
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
    /// (default: [`GpuEngine::crossover`](super::GpuEngine::crossover); `trm bench --tune` measures it).
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

/// One dispatch as recorded (for the log tests compare).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct RecordedDispatch {
    pub kernel: &'static str,
    pub params_offset: u32,
    pub workgroups: String,
}

impl RecordedDispatch {
    pub fn describe(&self) -> String {
        format!(
            "{} @ {} x {}",
            self.kernel, self.params_offset, self.workgroups
        )
    }
}
