//! The GPU engine: TRM on wgpu with hand-written WGSL kernels, the whole
//! recursion resident on the device.
//!
//! A solve uploads the token ids and the initial carry, records one
//! embedding dispatch, then one dispatch per network call (the fused
//! recursion step: `shaders/mixer_step.wgsl` for the MLP-mixer model,
//! `shaders/attention_step.wgsl` for the attention model, both built on the
//! shared prelude `shaders/common/step_common.wgsl`) for N_sup x T x (n + 1)
//! calls, the heads after the last ACT step, and reads back only the outputs. With
//! early halting the q logits are read after each ACT step and the puzzles
//! that halted are dropped from the dispatches (an index buffer maps
//! workgroups to the puzzles still running). Batches beyond the device's
//! buffer or dispatch limits are split into chunks, each solved the same way.
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
mod context;
mod embed;
mod heads;
mod layout;
mod mixer_step;
mod step_common;
mod timing;

use std::sync::Arc;
use std::sync::mpsc;

use serde::Serialize;

use crate::batch::PuzzleBatch;
use crate::config::TrmConfig;
use crate::error::{Result, TrmError};
use crate::model::TrmModel;
use crate::solve::{Carry, Engine, SolveOptions, SolveOutput};

pub use adapters::{AdapterReport, list_adapters, list_adapters_async};
pub use context::{GpuBackend, GpuContext, GpuOptions};
pub use timing::RecursionTiming;

use embed::Embed;
use heads::Heads;
use layout::{PARAMS_BYTES, Params};
use step_common::StepPipeline;

/// What the engine did in its last solve, counted by the engine itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
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
}

/// How a solve is cut into submissions and chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GpuSchedule {
    /// Submit the recorded work once it holds this many FLOPs (estimated), so
    /// that no command buffer runs long enough to trip an OS GPU watchdog
    /// (Windows resets a GPU busy for 2 s). The host does not wait between
    /// submissions. Default 2e11.
    pub max_flops_per_submit: u64,
    /// At most this many puzzles per chunk (default: as the device allows).
    pub max_chunk_puzzles: Option<usize>,
    /// At most this many bytes of per-batch device memory per chunk
    /// (default 1 GiB).
    pub max_chunk_bytes: u64,
    /// Fill the output, state and scratch buffers with NaN before each
    /// solve, so that an element no kernel writes (or one read before it is
    /// written) shows up as NaN (for tests).
    pub poison: bool,
}

impl Default for GpuSchedule {
    fn default() -> Self {
        GpuSchedule {
            max_flops_per_submit: 200_000_000_000,
            max_chunk_puzzles: None,
            max_chunk_bytes: 1 << 30,
            poison: false,
        }
    }
}

impl GpuSchedule {
    /// Sets [`GpuSchedule::max_flops_per_submit`].
    pub fn max_flops_per_submit(mut self, flops: u64) -> Self {
        self.max_flops_per_submit = flops.max(1);
        self
    }

    /// Sets [`GpuSchedule::max_chunk_puzzles`].
    pub fn max_chunk_puzzles(mut self, puzzles: usize) -> Self {
        self.max_chunk_puzzles = Some(puzzles.max(1));
        self
    }

    /// Sets [`GpuSchedule::max_chunk_bytes`].
    pub fn max_chunk_bytes(mut self, bytes: u64) -> Self {
        self.max_chunk_bytes = bytes;
        self
    }

    /// Sets [`GpuSchedule::poison`].
    pub fn poison(mut self, on: bool) -> Self {
        self.poison = on;
        self
    }
}

/// The network-call kernel of the model's variant: `mixer_step` for the
/// MLP-mixer model, `attention_step` for the attention model. Both bind the
/// same buffers and run one dispatch per recursion step.
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

    /// Floats of the weights the variant's kernel binds.
    fn weight_floats(config: &TrmConfig) -> usize {
        if config.mlp_t {
            mixer_step::layer_floats(config) * config.l_layers
        } else {
            attention_step::weight_floats(config)
        }
    }

    fn record(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        chunk: &Chunk,
        params_offset: u32,
        workgroups: u32,
    ) {
        self.pipeline
            .record(pass, &chunk.step_group, params_offset, workgroups)
    }
}

/// Device buffers of one chunk of puzzles, allocated once for `capacity`
/// puzzles and kept for later solves.
struct Chunk {
    capacity: usize,
    /// `[3][capacity][S][D]`: x, y = z_H, z = z_L.
    xyz: wgpu::Buffer,
    /// Per-puzzle scratch of the step kernel.
    scratch: wgpu::Buffer,
    /// Token ids `[capacity][seq_len]` then puzzle ids `[capacity]`.
    ids: wgpu::Buffer,
    /// Workgroup -> puzzle.
    active: wgpu::Buffer,
    /// Logits `[capacity][seq_len][vocab]` then q `[capacity][2]`.
    out: wgpu::Buffer,
    /// Two parameter blocks: z update (0), y update and heads (1).
    _params: wgpu::Buffer,
    /// Host-readable copy of what is read back.
    staging: wgpu::Buffer,
    step_group: wgpu::BindGroup,
    embed_group: wgpu::BindGroup,
    heads_group: wgpu::BindGroup,
}

/// One recorded command.
#[derive(Clone, Copy, Debug)]
enum Op {
    /// Embed the first `n` puzzles.
    Embed(u32),
    /// One network call for the active puzzles: the z update (injection
    /// y + x) or the y update (injection z).
    Step { y_update: bool, workgroups: u32 },
    /// Heads of the active puzzles.
    Heads(u32),
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
    step: StepKernel,
    embed: Embed,
    heads: Heads,
    schedule: GpuSchedule,
    chunk: Option<Chunk>,
    stats: GpuStats,
    /// Bytes between the parameter blocks (the uniform offset alignment).
    params_stride: u32,
}

const F32: u64 = 4;

impl GpuEngine {
    /// Uploads the model's weights to the context's device and builds the
    /// kernels, for either variant (MLP-mixer or attention). Fails with
    /// [`TrmError::AdapterUnsuitable`] when the weights exceed the device's
    /// buffer limits.
    pub fn new(ctx: &GpuContext, model: Arc<TrmModel>) -> Result<Self> {
        check_weights_fit(ctx, &model)?;
        let step = StepKernel::new(ctx, &model)?;
        let embed = Embed::new(ctx, &model)?;
        let heads = Heads::new(ctx, &model)?;
        let align = ctx.limits().min_uniform_buffer_offset_alignment.max(1);
        let params_stride = (PARAMS_BYTES as u32).div_ceil(align) * align;
        Ok(GpuEngine {
            ctx: ctx.clone(),
            model,
            step,
            embed,
            heads,
            schedule: GpuSchedule::default(),
            chunk: None,
            stats: GpuStats::default(),
            params_stride,
        })
    }

    /// Replaces the schedule (submission sizes, chunking, poisoning).
    pub fn set_schedule(&mut self, schedule: GpuSchedule) {
        if schedule.max_chunk_puzzles != self.schedule.max_chunk_puzzles
            || schedule.max_chunk_bytes != self.schedule.max_chunk_bytes
        {
            self.chunk = None;
        }
        self.schedule = schedule;
    }

    /// The builder form of [`GpuEngine::set_schedule`].
    pub fn with_schedule(mut self, schedule: GpuSchedule) -> Self {
        self.set_schedule(schedule);
        self
    }

    /// The schedule.
    pub fn schedule(&self) -> &GpuSchedule {
        &self.schedule
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

    /// Puzzles one chunk holds at most on this device and schedule; larger
    /// batches are solved chunk after chunk.
    pub fn chunk_capacity(&self) -> Result<usize> {
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
            (
                "scratch",
                StepKernel::scratch_floats(config) as u64 * F32,
                binding,
            ),
            ("outputs", (seq * vocab + 2) * F32, binding),
            ("token ids", (seq + 1) * F32, binding),
            ("staging", (seq * vocab + 2 + 2 * sd) * F32, buffer),
        ];
        let mut capacity = u64::from(limits.max_compute_workgroups_per_dimension);
        // element indices of the state buffer stay within u32
        capacity = capacity.min(u64::from(u32::MAX) / (3 * sd).max(1));
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
        capacity = capacity.min((self.schedule.max_chunk_bytes / total).max(1));
        if let Some(max) = self.schedule.max_chunk_puzzles {
            capacity = capacity.min(max as u64);
        }
        Ok(capacity.max(1) as usize)
    }

    /// Allocates the buffers of a chunk of `capacity` puzzles unless the
    /// current ones are large enough.
    fn ensure_chunk(&mut self, capacity: usize) -> Result<()> {
        if self.chunk.as_ref().is_some_and(|c| c.capacity >= capacity) {
            return Ok(());
        }
        self.chunk = None; // free the old buffers first
        let config = self.model.config();
        let ctx = &self.ctx;
        let cap = capacity as u64;
        let (seq, vocab) = (config.seq_len as u64, config.vocab_size as u64);
        let sd = (config.state_len() * config.hidden_size) as u64;
        use wgpu::BufferUsages as U;
        let xyz = layout::buffer(
            ctx,
            "state x, y, z",
            3 * cap * sd * F32,
            U::STORAGE | U::COPY_DST | U::COPY_SRC,
        )?;
        let scratch = layout::buffer(
            ctx,
            "scratch",
            cap * StepKernel::scratch_floats(config) as u64 * F32,
            U::STORAGE | U::COPY_DST,
        )?;
        let ids = layout::buffer(
            ctx,
            "token ids",
            cap * (seq + 1) * F32,
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
        let params = layout::buffer(ctx, "parameters", 2 * stride, U::UNIFORM | U::COPY_DST)?;
        let staging = layout::buffer(
            ctx,
            "staging",
            cap * (seq * vocab + 2 + 2 * sd) * F32,
            U::MAP_READ | U::COPY_DST,
        )?;
        let region = (cap * sd) as u32;
        let common = Params {
            q_base: (cap * seq * vocab) as u32,
            puzzle_stride: sd as u32,
            batch: capacity as u32,
            ..Params::default()
        };
        let z_update = Params {
            state_base: 2 * region,
            inj_a_base: region,
            inj_b_base: 0,
            inject_sum: 1,
            ..common
        };
        let y_update = Params {
            state_base: region,
            inj_a_base: 2 * region,
            inj_b_base: 0,
            inject_sum: 0,
            ..common
        };
        ctx.scoped("writing the parameters", || {
            ctx.queue()
                .write_buffer(&params, 0, bytemuck::bytes_of(&z_update));
            ctx.queue()
                .write_buffer(&params, stride, bytemuck::bytes_of(&y_update));
        })?;
        let step_group = self
            .step
            .pipeline
            .bind_group(ctx, &xyz, &scratch, &active, &params)?;
        let embed_group = self.embed.bind_group(ctx, &ids, &xyz, &params)?;
        let heads_group = self.heads.bind_group(ctx, &xyz, &out, &active, &params)?;
        self.chunk = Some(Chunk {
            capacity,
            xyz,
            scratch,
            ids,
            active,
            out,
            _params: params,
            staging,
            step_group,
            embed_group,
            heads_group,
        });
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
        self.submit_with(chunk, ops, copies, None)
    }

    /// [`GpuEngine::submit`], with the pass's start and end stamped into
    /// `stamps` (see [`timing`]).
    fn submit_with(
        &mut self,
        chunk: &Chunk,
        ops: &mut Vec<Op>,
        copies: &[Copy<'_>],
        stamps: Option<&timing::Stamps>,
    ) -> Result<wgpu::SubmissionIndex> {
        let ctx = self.ctx.clone();
        let stride = self.params_stride;
        let dispatches = ops.len() as u64;
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
                for op in ops.iter() {
                    match *op {
                        Op::Embed(n) => self.embed.record(&mut pass, &chunk.embed_group, n),
                        Op::Step {
                            y_update,
                            workgroups,
                        } => self.step.record(
                            &mut pass,
                            chunk,
                            if y_update { stride } else { 0 },
                            workgroups,
                        ),
                        Op::Heads(n) => self.heads.record(&mut pass, &chunk.heads_group, stride, n),
                    }
                }
            }
            if let Some(stamps) = stamps {
                stamps.resolve(&mut encoder);
            }
            let mut at = 0;
            for copy in copies {
                encoder.copy_buffer_to_buffer(
                    copy.source,
                    copy.offset,
                    &chunk.staging,
                    at,
                    copy.bytes,
                );
                at += copy.bytes;
            }
            ctx.queue().submit([encoder.finish()])
        })?;
        ops.clear();
        self.stats.dispatches += dispatches;
        self.stats.submits += 1;
        Ok(index)
    }

    /// Waits for `submission` and reads the first `floats` floats of the
    /// staging buffer.
    fn read_back(
        &mut self,
        chunk: &Chunk,
        submission: wgpu::SubmissionIndex,
        floats: u64,
    ) -> Result<Vec<f32>> {
        let bytes = floats * F32;
        if bytes == 0 {
            self.ctx.wait(submission)?;
            return Ok(Vec::new());
        }
        let ctx = self.ctx.clone();
        let (sender, receiver) = mpsc::channel();
        ctx.scoped("mapping the results", || {
            chunk
                .staging
                .map_async(wgpu::MapMode::Read, 0..bytes, move |result| {
                    let _ = sender.send(result);
                })
        })?;
        ctx.wait(submission)?;
        if let Err(e) = ctx.mapped(&receiver, "the results")? {
            ctx.check()?;
            let reason = format!("reading the results back failed: {e}");
            ctx.mark_lost(&reason);
            return Err(TrmError::DeviceLost(reason));
        }
        let values = {
            let view = chunk
                .staging
                .get_mapped_range(0..bytes)
                .map_err(|e| TrmError::Gpu(format!("reading the results back: {e}")))?;
            view.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        };
        chunk.staging.unmap();
        self.stats.bytes_read_back += bytes;
        Ok(values)
    }

    /// Solves the puzzles of one chunk (at most its capacity).
    fn solve_chunk(
        &mut self,
        chunk: &Chunk,
        batch: &PuzzleBatch,
        carry: Option<(&[f32], &[f32])>,
        act_steps: usize,
        early_halt: bool,
    ) -> Result<SolveOutput> {
        let model = Arc::clone(&self.model);
        let config = model.config();
        let n = batch.len();
        let cap = chunk.capacity as u64;
        let (seq, vocab) = (config.seq_len as u64, config.vocab_size as u64);
        let sd = (config.state_len() * config.hidden_size) as u64;
        let region = cap * sd;
        let q_base = cap * seq * vocab;

        if self.schedule.poison {
            self.upload(&chunk.xyz, 0, &vec![f32::NAN; (3 * region) as usize])?;
            self.upload(&chunk.out, 0, &vec![f32::NAN; (q_base + 2 * cap) as usize])?;
            let scratch = cap as usize * StepKernel::scratch_floats(config);
            self.upload(&chunk.scratch, 0, &vec![f32::NAN; scratch])?;
        }
        self.upload(&chunk.ids, 0, batch.tokens())?;
        self.upload(&chunk.ids, cap * seq, batch.puzzle_ids())?;
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
        let mut active: Vec<u32> = (0..n as u32).collect();
        self.upload(&chunk.active, 0, &active)?;

        let mut steps = vec![0u32; n];
        let mut ops = vec![Op::Embed(n as u32)];
        let call_flops = config.flops_per_recursion_step().max(1);
        let mut pending_flops = 0u64;
        for step in 1..=act_steps {
            let workgroups = active.len() as u32;
            for _ in 0..config.h_cycles {
                for l in 0..=config.l_cycles {
                    ops.push(Op::Step {
                        y_update: l == config.l_cycles,
                        workgroups,
                    });
                    pending_flops += call_flops * u64::from(workgroups);
                    if pending_flops >= self.schedule.max_flops_per_submit {
                        self.submit(chunk, &mut ops, &[])?;
                        pending_flops = 0;
                    }
                }
            }
            self.stats.puzzle_recursion_steps +=
                u64::from(workgroups) * config.recursion_steps_per_act_step() as u64;
            let last = step == act_steps;
            if early_halt || last {
                ops.push(Op::Heads(workgroups));
            }
            if last {
                for &p in &active {
                    steps[p as usize] = step as u32;
                }
                break;
            }
            if early_halt {
                let copy = Copy {
                    source: &chunk.out,
                    offset: q_base * F32,
                    bytes: 2 * n as u64 * F32,
                };
                let submission = self.submit(chunk, &mut ops, &[copy])?;
                pending_flops = 0;
                let q = self.read_back(chunk, submission, 2 * n as u64)?;
                let running: Vec<u32> = active
                    .iter()
                    .copied()
                    .filter(|&p| {
                        steps[p as usize] = step as u32;
                        q[2 * p as usize] <= 0.0
                    })
                    .collect();
                if running.is_empty() {
                    active.clear();
                    break;
                }
                if running.len() != active.len() {
                    active = running;
                    self.upload(&chunk.active, 0, &active)?;
                }
            }
        }

        let nn = n as u64;
        let copies = [
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
            Copy {
                source: &chunk.xyz,
                offset: region * F32,
                bytes: nn * sd * F32,
            },
            Copy {
                source: &chunk.xyz,
                offset: 2 * region * F32,
                bytes: nn * sd * F32,
            },
        ];
        let floats: u64 = copies.iter().map(|c| c.bytes / F32).sum();
        let submission = self.submit(chunk, &mut ops, &copies)?;
        let values = self.read_back(chunk, submission, floats)?;

        let mut out = SolveOutput::poisoned(config, n);
        let (logits, rest) = values.split_at((nn * seq * vocab) as usize);
        let (q, rest) = rest.split_at(2 * n);
        let (z_h, z_l) = rest.split_at((nn * sd) as usize);
        out.logits.copy_from_slice(logits);
        for (i, pair) in q.chunks_exact(2).enumerate() {
            out.q_halt_logits[i] = pair[0];
            out.q_continue_logits[i] = pair[1];
        }
        out.z_h.copy_from_slice(z_h);
        out.z_l.copy_from_slice(z_l);
        out.steps = steps;
        Ok(out)
    }
}

/// The weights of each kernel must fit one storage binding.
fn check_weights_fit(ctx: &GpuContext, model: &TrmModel) -> Result<()> {
    let config = model.config();
    let limits = ctx.limits();
    let limit = limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size)
        .saturating_sub(16);
    let w = model.weights();
    let tables = w.embed_tokens.len()
        + w.puzzle_emb.as_ref().map_or(0, Vec::len)
        + w.embed_pos.as_ref().map_or(0, Vec::len);
    let layers = StepKernel::weight_floats(config);
    for (what, floats) in [
        ("layer weights", layers),
        ("embedding tables", tables),
        ("head weights", w.lm_head.len() + 2 * config.hidden_size + 2),
    ] {
        let bytes = floats as u64 * F32;
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

    fn solve_from(
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
        self.stats = GpuStats::default();
        let capacity = self.chunk_capacity()?.min(b.max(1));
        self.ensure_chunk(capacity)?;
        let Some(chunk) = self.chunk.take() else {
            return Err(TrmError::Gpu("the chunk buffers are missing".into()));
        };
        let result = self.solve_chunks(&chunk, batch, carry, act_steps, options.early_halt);
        self.chunk = Some(chunk);
        let out = result?;
        let most = out.steps.iter().copied().max().unwrap_or(0) as u64;
        self.stats.act_steps = most;
        self.stats.recursion_steps = most * config.recursion_steps_per_act_step() as u64;
        Ok(out)
    }
}

impl GpuEngine {
    fn solve_chunks(
        &mut self,
        chunk: &Chunk,
        batch: &PuzzleBatch,
        carry: Option<&Carry>,
        act_steps: usize,
        early_halt: bool,
    ) -> Result<SolveOutput> {
        let config = self.model.config();
        let sd = config.state_len() * config.hidden_size;
        let b = batch.len();
        let mut total: Option<SolveOutput> = None;
        let mut start = 0;
        while start < b {
            let end = (start + chunk.capacity).min(b);
            let part = if start == 0 && end == b {
                batch.clone()
            } else {
                batch.slice(start..end)
            };
            let part_carry =
                carry.map(|c| (&c.z_h[start * sd..end * sd], &c.z_l[start * sd..end * sd]));
            let out = self.solve_chunk(chunk, &part, part_carry, act_steps, early_halt)?;
            self.stats.chunks += 1;
            match &mut total {
                None => total = Some(out),
                Some(t) => t.append(out),
            }
            start = end;
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
