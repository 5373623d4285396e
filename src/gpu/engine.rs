//! The GPU engine itself: what a model puts on a device ([`Resident`]),
//! the engine's state between solves, its options, how many puzzles a
//! chunk of the device holds and which schedule a batch runs. The solves
//! are driven by the solve program through the engine's slots
//! (`slots.rs`), recorded by `record.rs` and read back by `readback.rs`.

use std::sync::Arc;

use crate::batch::PuzzleBatch;
use crate::config::TrmConfig;
use crate::error::{Result, TrmError};
use crate::model::TrmModel;
use crate::program;
use crate::solve::{Carry, Engine, SolveOptions, SolveOutput};

use super::budget;
use super::chunk::{self, Chunk, WORD};
use super::context::{self, GpuContext};
use super::embed::Embed;
use super::halt::Halt;
use super::heads::Heads;
use super::layout::PARAMS_BYTES;
use super::noise;
use super::options::RecordedDispatch;
use super::options::{GpuRunOptions, GpuSchedule, GpuStats, WorkgroupSpread};
use super::resident::{Resident, StepKernel};
use super::spread::{SpreadKernels, SpreadPlan};
use super::step_common::Lanes;

/// Runs TRM on a GPU through wgpu.
///
/// An engine runs one model on one [`GpuContext`] (a device); engines of
/// the same model on a context share its weights on the device. Where no
/// adapter exists, [`GpuContext::new`] returns [`TrmError::NoAdapter`]
/// (this example then does nothing):
///
/// ```
/// use std::sync::Arc;
/// use trm_wgpu::{Engine, GpuContext, GpuEngine, GpuOptions, PuzzleBatch, SolveOptions, TrmModel};
///
/// # fn main() -> trm_wgpu::Result<()> {
/// let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/sudoku-easy/model.safetensors");
/// let model = Arc::new(TrmModel::load(path)?);
/// # if std::env::var_os("TRM_SKIP_GPU").is_some() { return Ok(()); }
/// let context = match GpuContext::new(&GpuOptions::default()) {
///     Ok(context) => context,
///     Err(e) => {
///         eprintln!("no GPU here: {e}");
///         return Ok(());
///     }
/// };
/// let mut engine = GpuEngine::new(&context, model.clone())?;
/// let batch = PuzzleBatch::new(model.config(), &vec![1u32; 81], None)?;
/// let out = engine.solve(&batch, &SolveOptions::default().act_steps(1))?;
/// assert_eq!(out.steps, vec![1]);
/// println!("{}: {:?}", engine.describe(), engine.last_stats());
/// # Ok(())
/// # }
/// ```
pub struct GpuEngine {
    pub(super) ctx: GpuContext,
    pub(super) model: Arc<TrmModel>,
    /// The model's weights on the device and the kernels that read them,
    /// shared by every engine of this context on the same model.
    pub(super) resident: Arc<Resident>,
    /// The spread schedule's pipelines, built on its first use.
    pub(super) spread: Option<SpreadKernels>,
    /// The spread plan of the batch size whose blocks are in the chunk's
    /// parameter buffer.
    pub(super) plan: Option<SpreadPlan>,
    pub(super) options: GpuRunOptions,
    /// The schedule of the run being recorded (`auto` resolved).
    pub(super) running: GpuSchedule,
    pub(super) chunk: Option<Chunk>,
    pub(super) stats: GpuStats,
    /// Workgroups of every network-call dispatch recorded in this solve.
    pub(super) step_groups: Vec<u32>,
    /// Bytes between the parameter blocks (the uniform offset alignment).
    pub(super) params_stride: u32,
    /// [`GpuEngine::chunk_capacity`] under the current options, once
    /// computed (the spread plans it sizes are not cheap to build);
    /// `usize::MAX` until then. Atomic so the engine stays `Sync`.
    capacity: std::sync::atomic::AtomicUsize,
    /// The staging buffer the next read uses.
    pub(super) staging_slot: usize,
    /// The running-count buffer the next count read uses.
    pub(super) staging_slot_count: usize,
    /// The solve program's slots (`crate::program`): slot i's puzzle lives
    /// in the chunk's puzzle `slot_map[i]`, so moving a slot is a swap here
    /// and the device's state never moves.
    pub(super) slot_map: Vec<u32>,
    /// Chunk puzzles `0..embed_upto` hold a fill not embedded yet (0: none).
    pub(super) embed_upto: u32,
    /// Slots filled since the last run: a run over only fresh slots starts
    /// a new wave of the chunk (a chunk in the stats).
    pub(super) fresh: usize,
    /// Network calls per submission, as measured on the first large run
    /// since the slots were opened ([`GpuRunOptions::max_submit_time`]).
    pub(super) calls_per_submit: Option<u64>,
    /// The noise kernel of noisy trajectories, made at the first noise.
    pub(super) noise: Option<noise::Noise>,
    /// Every dispatch recorded, where a test asked for the log
    /// ([`GpuEngine::log_dispatches`]).
    pub(super) recorded: Option<Vec<RecordedDispatch>>,
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
            embed_upto: 0,
            fresh: 0,
            calls_per_submit: None,
            noise: None,
            recorded: None,
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
            ("state", 3 * sd * WORD, binding),
            // the kernels' work region, and the spread schedule's partials
            (
                "scratch",
                (StepKernel::scratch_floats(config) as u64 + sd) * WORD,
                binding,
            ),
            ("outputs", (seq * vocab + 2) * WORD, binding),
            ("token ids", Embed::ids_words(config) * WORD, binding),
            ("staging", (seq * vocab + 3 + 2 * sd) * WORD, buffer),
        ];
        let mut capacity = u64::from(limits.max_compute_workgroups_per_dimension);
        // element indices of the state and scratch buffers stay within u32;
        // the state holds a spare puzzle slot beyond the capacity
        capacity = capacity.min((u64::from(u32::MAX) / (3 * sd).max(1)).saturating_sub(1));
        capacity = capacity.min((binding / (3 * sd * WORD).max(1)).saturating_sub(1));
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
        let sk = self.resident.step.pipeline.depth();
        let fits = |cap: u64| {
            let words = chunk::scratch_words(config, cap, sk);
            words * WORD <= binding.saturating_add(16) && words <= u64::from(u32::MAX)
        };
        let (mut lo, mut hi) = (1u64, capacity.max(1));
        if !fits(lo) {
            return Err(TrmError::AdapterUnsuitable {
                adapter: self.ctx.adapter_info().name.clone(),
                reason: format!(
                    "one puzzle needs {} bytes of scratch in one buffer; the device allows {binding}",
                    chunk::scratch_words(config, 1, sk) * WORD
                ),
            });
        }
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if fits(mid) { lo = mid } else { hi = mid - 1 }
        }
        Ok(lo as usize)
    }
}

/// The weights of each kernel must fit one storage binding: the layers at
/// the model's precision (as the step kernels store them), the embeddings
/// and heads widened to f32; and the RoPE tables the host builds for them,
/// the memory limit ([`crate::PuzzleBatch::max_state_bytes`]).
fn check_weights_fit(ctx: &GpuContext, model: &TrmModel) -> Result<()> {
    let config = model.config();
    // the RoPE tables are built on the host before the device sees them
    crate::batch::check_memory(
        "the GPU engine",
        &[crate::model::maths::rope_tables_memory(config)],
        crate::PuzzleBatch::max_state_bytes()?,
    )?;
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
        ("embedding tables", tables as u64 * WORD),
        (
            "head weights",
            (w.lm_head.len() + 2 * config.hidden_size + 2) as u64 * WORD,
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
    /// and resolves the read-backs), and what the blocking call waits for.
    pub async fn solve_async(
        &mut self,
        batch: &PuzzleBatch,
        options: &SolveOptions,
    ) -> Result<SolveOutput> {
        self.solve_from_async(batch, None, options).await
    }

    /// [`Engine::solve_from`], async: the solve program over this engine's
    /// slots, a slot per puzzle (as many as a chunk of the device holds;
    /// more are solved a chunk at a time), every ACT step of a chunk
    /// recorded ahead with halting decided on the device.
    pub async fn solve_from_async(
        &mut self,
        batch: &PuzzleBatch,
        carry: Option<&Carry>,
        options: &SolveOptions,
    ) -> Result<SolveOutput> {
        program::solve_batch_async(self, batch, carry, options).await
    }

    /// Keeps a log of every dispatch recorded from now on (`true`), or
    /// stops (`false`); [`GpuEngine::dispatch_log`] returns it. For tests:
    /// what a solve and `trm bench` record can be compared.
    #[doc(hidden)]
    pub fn log_dispatches(&mut self, on: bool) {
        self.recorded = on.then(Vec::new);
    }

    /// The dispatches recorded since [`GpuEngine::log_dispatches`], each as
    /// `kernel @ parameter block offset x workgroups`.
    #[doc(hidden)]
    pub fn dispatch_log(&self) -> Vec<String> {
        self.recorded
            .iter()
            .flatten()
            .map(RecordedDispatch::describe)
            .collect()
    }

    /// The chunk puzzle holding open slot `slot`.
    pub(super) fn physical(&self, slot: usize) -> Result<u32> {
        self.slot_map.get(slot).copied().ok_or_else(|| {
            TrmError::Input(format!("slot {slot} of {} open slots", self.slot_map.len()))
        })
    }

    /// Allocates the chunk buffers for up to `puzzles` puzzles (at least
    /// one), as many as the device holds; returns how many that is.
    pub(super) fn allocate_chunk(&mut self, puzzles: usize) -> Result<usize> {
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

    /// Allocates the buffers of a chunk of `capacity` puzzles unless the
    /// current ones are large enough.
    fn ensure_chunk(&mut self, capacity: usize) -> Result<()> {
        if self.chunk.as_ref().is_some_and(|c| c.capacity >= capacity) {
            return Ok(());
        }
        self.chunk = None; // free the old buffers first
        self.plan = None;
        self.chunk = Some(Chunk::new(
            &self.ctx,
            &self.model,
            &self.resident,
            &self.options,
            capacity,
            self.params_stride,
        )?);
        Ok(())
    }

    /// The most puzzles of a run of `n` under the spread schedule, whose
    /// every dispatch covers a phase of all of them: as many as keep a
    /// phase (at most a block's FLOPs per puzzle) within
    /// [`GpuRunOptions::max_flops_per_dispatch`], as the fused schedule's
    /// slices are; `n` under the fused schedule.
    pub(super) fn puzzles_per_run(&self, n: usize) -> usize {
        if self.resolve_schedule(n) != GpuSchedule::Spread {
            return n;
        }
        let per_puzzle = self.model.config().flops_per_block().max(1);
        let most = (self.options.max_flops_per_dispatch / per_puzzle).max(1);
        n.min(usize::try_from(most).unwrap_or(usize::MAX))
    }

    /// Resolves the schedule of a run over `batch` puzzles and gets it
    /// ready: the spread pipelines and the plan of the batch size.
    pub(super) fn prepare_schedule(&mut self, chunk: &Chunk, batch: usize) -> Result<()> {
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
    pub(super) fn ensure_plan(&mut self, chunk: &Chunk, batch: u32) -> Result<()> {
        if self.running != GpuSchedule::Spread
            || self.plan.as_ref().is_some_and(|p| p.batch == batch)
        {
            return Ok(());
        }
        let config = self.model.config();
        let sk = self.resident.step.pipeline.depth();
        let [z, y] = &chunk.bases;
        let precision = self.resident.step.pipeline.precision();
        let part_base = chunk.layout.part_base() as u32;
        let plan = SpreadPlan::new(config, precision, batch, [z, y], part_base, sk);
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

    /// The per-call counters from the dispatches recorded.
    pub(super) fn finish_stats(&mut self) {
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

    /// Writes `data` to `buffer` at `offset` words.
    pub(super) fn upload<T: bytemuck::Pod>(
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
            self.ctx.queue().write_buffer(buffer, offset * WORD, bytes)
        })?;
        self.stats.bytes_uploaded += bytes.len() as u64;
        Ok(())
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
}
