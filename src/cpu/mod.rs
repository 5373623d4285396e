//! The CPU engine: the reference every other engine is diffed against.
//!
//! It computes `shared/TRM.md` exactly, organised for speed:
//!
//! - the active puzzles of a batch advance in lockstep, one network call at
//!   a time, so the channel SwiGLU of all of them is one stream of row
//!   blocks (tokens of any puzzles), each a task of its own whose products
//!   run on weights packed into panels for a microkernel (`panels.rs`);
//! - the token-mixing MLP runs on column blocks of one puzzle, on a
//!   microkernel of its own with the state's columns along the vectors
//!   (`token_panels.rs`);
//! - every sublayer is split into independent tasks (`block.rs`) whose GEMM
//!   output gets its epilogue (gate, second GEMM, residual, RMSNorm) while
//!   in cache; tasks run on a rayon pool, one task per thread at a time,
//!   each with its own scratch memory allocated when the engine is made;
//! - while a solve runs, the pool's threads neither sleep between its
//!   phases nor at the end of one: a wake-up cost more than a tenth of a
//!   short phase (`join.rs`);
//! - weights are laid out once, when the engine is made (`packed.rs`);
//! - nothing is allocated inside the recursion loop.
//!
//! The ACT loop is the solve program's (`crate::program`): this engine
//! provides its slots, keeping the occupied ones at the front of its
//! buffers, so a puzzle that halts leaves the lockstep group at the end of
//! that ACT step and costs nothing afterwards.

mod block;
mod int8_panels;
mod join;
pub(crate) mod ops;
mod packed;
mod panels;
mod token_panels;

use std::sync::{Arc, Mutex};

use faer::MatMut;
use rayon::prelude::*;

use crate::batch::{PuzzleBatch, check_memory};
use crate::config::{Level, PosEncodings, TrmConfig};
use crate::error::{Result, TrmError};
use crate::model::TrmModel;
use crate::model::maths::{LEARNED_POS_SCALE, embedding_scale};
use crate::program::{self, ActReport, ActRun, Call, Fill, SlotEngine, act_step_calls};
use crate::solve::{Carry, Engine, SolveOptions, SolveOutput};
use block::TaskScratch;
use packed::{PackedLayer, PackedMixer};
use token_panels::TokenScratch;

/// The RoPE tables' old path: they are the model's maths, shared by both
/// engines ([`crate::model::maths`]).
pub use crate::model::maths::rope_tables;
pub use int8_panels::Int8Kernel;

/// Rows (tokens) per task at most: the gated activations of a channel
/// SwiGLU task of the Sudoku-Extreme model (`[256, 1536]` floats, 1.5 MiB)
/// stay within a core's L2 cache (2 MiB here) with a weight panel. The
/// more rows a task has, the fewer times each weight is streamed from L3.
const MAX_ROWS_PER_TASK: usize = 256;

/// Columns per token-mixing task at most: one block of the token kernel
/// with AVX-512 (`token_panels.rs`). A task's activations and the mixer's
/// weights (580 KiB) must stay in a core's L2: with faer's GEMMs, 256
/// columns did not (1.6 MiB with 2 MiB of L2), and every network call ran
/// about a fifth slower; 32 to 128 measured the same.
const MAX_COLS_PER_TASK: usize = 64;

/// Worker threads a CPU engine runs at most: more than the cores of any
/// machine this runs on, few enough to start in a moment (a typo such as
/// `--threads 1000000000` would otherwise start threads until the system
/// refuses, for minutes).
pub const MAX_THREADS: usize = 4096;

/// Runs TRM on the CPU.
///
/// ```
/// use std::sync::Arc;
/// use trm_wgpu::{CpuEngine, Engine, PuzzleBatch, SolveOptions, TrmConfig, TrmModel};
///
/// # fn main() -> trm_wgpu::Result<()> {
/// // a small random model (load a trained one with TrmModel::load)
/// let config = TrmConfig { hidden_size: 16, puzzle_emb_ndim: 16, ..TrmConfig::sudoku_extreme() };
/// let model = Arc::new(TrmModel::random(config, 7, 0.5)?);
/// let blanks = vec![1i64; 81]; // token 1 = a blank Sudoku cell
/// let batch = PuzzleBatch::new(model.config(), &blanks, None)?;
/// let mut engine = CpuEngine::with_threads(model, 2)?;
/// let out = engine.solve(&batch, &SolveOptions::default().act_steps(2))?;
/// assert_eq!(out.predictions().len(), 81);
/// assert_eq!(out.steps, vec![2]);
/// # Ok(())
/// # }
/// ```
pub struct CpuEngine {
    model: Arc<TrmModel>,
    /// The blocks' weights in the engine's layout.
    layers: Vec<PackedLayer>,
    /// `(cos, sin)`, each `[S, head_dim]`, for RoPE attention models.
    rope: Option<(Vec<f32>, Vec<f32>)>,
    /// The embeddings and heads widened to f32 (the puzzle table stays in
    /// the model, which reads the rows a solve needs).
    tables: Tables,
    pool: rayon::ThreadPool,
    threads: usize,
    /// One scratch per pool thread, indexed by rayon's thread index. A task
    /// holds its thread's scratch only while it runs no nested parallel
    /// work, so a lock is never contended.
    scratch: Vec<Mutex<TaskScratch>>,
    /// Buffers of the last `recursion_step` call and its puzzle count,
    /// reused while the batch size stays the same.
    step_buffers: Mutex<Option<(usize, Buffers)>>,
    /// The solve program's slots, once opened.
    work: Option<Work>,
    /// What the products multiply the weights with.
    activations: ActivationPrecision,
    /// Bytes the engine may allocate beyond the weights (scratch, tables,
    /// a solve's buffers): [`CpuOptions::memory_limit`].
    memory_limit: u64,
}

/// What the CPU engine's matrix products multiply the weights with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ActivationPrecision {
    /// f32 activations against the weights widened to f32: the engine
    /// computes the network on the dequantized weights (within 1e-5
    /// relative L2 of float64 at every precision).
    #[default]
    F32,
    /// Activations at the weights' precision where a kernel gains from
    /// it. int8 weights: the channel SwiGLU's inputs quantized per token
    /// (symmetric, one scale per token and call) and integer products
    /// (`vpdpbusd` with AVX-512 VNNI); its error bound is stated in
    /// `tests/cpu_precision.rs`. The token mixer, attention and the heads
    /// stay f32, and so do f16 and bf16 weights: bf16 dot products
    /// (`vdpbf16ps`) measured less than half as fast as f32 FMA here.
    Matched,
}

impl ActivationPrecision {
    /// `f32` or `matched`.
    pub fn as_str(self) -> &'static str {
        match self {
            ActivationPrecision::F32 => "f32",
            ActivationPrecision::Matched => "matched",
        }
    }
}

impl std::fmt::Display for ActivationPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ActivationPrecision {
    type Err = TrmError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(ActivationPrecision::F32),
            "matched" => Ok(ActivationPrecision::Matched),
            _ => Err(TrmError::Input(format!(
                "unknown activations `{s}` (expected f32 or matched)"
            ))),
        }
    }
}

/// How [`CpuEngine::with_options`] makes its engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CpuOptions {
    /// Worker threads (default: all cores, at most [`MAX_THREADS`]).
    pub threads: Option<usize>,
    /// What the products multiply the weights with.
    pub activations: ActivationPrecision,
    /// Run the integer products on the portable code whatever the CPU has
    /// (the same results bit for bit, slower; for tests).
    pub portable_kernels: bool,
    /// Bytes the engine may allocate beyond the model's weights: every
    /// thread's scratch, the RoPE tables and a solve's buffers, all sized
    /// by the configuration and checked before anything is allocated
    /// (default: [`PuzzleBatch::max_state_bytes`], 8 GiB).
    pub memory_limit: Option<u64>,
}

impl CpuOptions {
    /// Sets [`CpuOptions::threads`].
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads);
        self
    }

    /// Sets [`CpuOptions::activations`].
    pub fn activations(mut self, activations: ActivationPrecision) -> Self {
        self.activations = activations;
        self
    }

    /// Sets [`CpuOptions::portable_kernels`].
    pub fn portable_kernels(mut self, portable: bool) -> Self {
        self.portable_kernels = portable;
        self
    }

    /// Sets [`CpuOptions::memory_limit`].
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }
}

/// How a network call is cut into tasks for the current group of puzzles,
/// so that every thread has the same work and every GEMM as many rows as
/// the cache allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Plan {
    /// Rows of a row task: channel SwiGLU, qkv, o_proj, element-wise work.
    rows_per_task: usize,
    /// Columns of a token-mixing task.
    cols_per_task: usize,
}

impl Plan {
    fn new(config: &TrmConfig, puzzles: usize, threads: usize) -> Plan {
        let rows = (puzzles * config.state_len()).max(1);
        let threads = threads.max(1);
        // row tasks: a multiple of the threads, within the cache bound
        let row_tasks = rows.div_ceil(MAX_ROWS_PER_TASK).div_ceil(threads) * threads;
        let d = config.hidden_size;
        let col_tasks = threads
            .div_ceil(puzzles.max(1))
            .max(d.div_ceil(MAX_COLS_PER_TASK))
            .min(d)
            .max(1);
        Plan {
            rows_per_task: rows.div_ceil(row_tasks.min(rows)),
            cols_per_task: d.div_ceil(col_tasks),
        }
    }
}

/// Per-batch intermediate buffers of a network call, allocated once per
/// solve: for attention, `[A S, 3D]` qkv and `[A S, D]` head outputs.
struct Buffers {
    qkv: Vec<f32>,
    attn: Vec<f32>,
}

impl Buffers {
    /// Bytes of [`Buffers::new`] for `puzzles` puzzles (saturating).
    fn bytes(config: &TrmConfig, puzzles: usize) -> u64 {
        let rows = (puzzles as u64).saturating_mul(config.state_len() as u64);
        // qkv's 3 D and the heads' D floats a row, for attention
        let floats_per_d = if config.mlp_t { 0 } else { 3 + 1 };
        rows.saturating_mul(config.hidden_size as u64)
            .saturating_mul(floats_per_d * 4)
    }

    fn new(config: &TrmConfig, puzzles: usize) -> Self {
        let rows = puzzles * config.state_len();
        let attention = if config.mlp_t {
            0
        } else {
            rows * config.hidden_size
        };
        Buffers {
            qkv: vec![0.0; 3 * attention],
            attn: vec![0.0; attention],
        }
    }
}

/// The slots of the solve program (`crate::program`): `[slots, ...]`
/// buffers, the occupied slots at the front, a network call running on
/// those only.
struct Work {
    slots: usize,
    x: Vec<f32>,
    y: Vec<f32>,
    z: Vec<f32>,
    injection: Vec<f32>,
    buffers: Buffers,
    /// `[slots, seq_len, vocab]` logits and `[slots]` Q logits of the last
    /// heads.
    logits: Vec<f32>,
    q: Vec<[f32; 2]>,
}

impl Work {
    /// The memory of `slots` slots by part (bytes, saturating): what
    /// [`SlotEngine::open_slots`] checks before allocating.
    fn memory(config: &TrmConfig, slots: usize) -> [(String, u64); 3] {
        let slots64 = slots as u64;
        let sd = (config.state_len() as u64).saturating_mul(config.hidden_size as u64);
        let logits = (config.seq_len as u64).saturating_mul(config.vocab_size as u64);
        [
            (
                format!("the states x, y, z and injection of {slots} puzzles"),
                slots64.saturating_mul(sd).saturating_mul(4 * 4),
            ),
            (
                format!("the attention buffers of {slots} puzzles"),
                Buffers::bytes(config, slots),
            ),
            (
                format!("the logits and Q values of {slots} puzzles"),
                slots64
                    .saturating_mul(logits.saturating_add(2))
                    .saturating_mul(4),
            ),
        ]
    }
}

/// One pool thread's scratch in elements, sized before anything is
/// allocated: [`CpuEngine::with_options`] checks what all threads' take
/// against its memory limit, then allocates exactly these. (u64: the
/// sizes of a hostile configuration may exceed a `usize`.)
#[derive(Clone, Copy, Debug)]
struct ScratchSizes {
    /// f32: one head's attention scores, S^2 (attention models).
    scores: u64,
    /// f32: the channel SwiGLU's gated activations, `[r, inter(D)]`.
    gated: u64,
    /// f32: its second product's (or o_proj's) output, `[r, D]`.
    update: u64,
    /// f32: the token-mixing MLP's scratch (MLP models).
    token: u64,
    /// u8: the int8 products' quantized inputs (the wider of the two).
    quantized: u64,
    /// f32: their per-row scales.
    row_scales: u64,
}

impl ScratchSizes {
    fn new(config: &TrmConfig, layers: &[PackedLayer]) -> Self {
        let (s, d) = (config.state_len() as u64, config.hidden_size as u64);
        let inter = config.channel_inter() as u64;
        // channel SwiGLU and o_proj: row tasks of at most
        // MAX_ROWS_PER_TASK (Plan keeps them within it)
        let r = MAX_ROWS_PER_TASK as u64;
        let int8 = layers.iter().any(|l| l.channel.int8_kernel().is_some());
        ScratchSizes {
            scores: if config.mlp_t { 0 } else { s * s },
            gated: r * inter,
            update: r * d,
            token: match layers.first().map(|l| &l.mixer) {
                Some(PackedMixer::Mlp(mlp)) => mlp.scratch_floats() as u64,
                _ => 0,
            },
            quantized: if int8 {
                r * inter.max(d).next_multiple_of(4)
            } else {
                0
            },
            row_scales: if int8 { r } else { 0 },
        }
    }

    /// What `threads` threads' scratch takes, by part (bytes, saturating).
    fn memory(&self, config: &TrmConfig, threads: usize) -> [(String, u64); 2] {
        let t = threads as u64;
        let rest = 4 * (self.gated + self.update + self.token + self.row_scales) + self.quantized;
        let threads = if threads == 1 {
            "1 thread".to_string()
        } else {
            format!("{threads} threads")
        };
        [
            (
                format!(
                    "attention scores ({threads} x S^2 floats, S = {})",
                    config.state_len()
                ),
                t.saturating_mul(4 * self.scores),
            ),
            (
                format!("the task scratch of {threads}"),
                t.saturating_mul(rest),
            ),
        ]
    }

    /// One thread's scratch.
    fn allocate(&self, layers: &[PackedLayer]) -> Result<TaskScratch> {
        let len = |n: u64| {
            usize::try_from(n).map_err(|_| {
                TrmError::TooLarge(format!("{n} elements of scratch exceed the address space"))
            })
        };
        Ok(TaskScratch {
            wide: vec![0.0; len(self.scores)?],
            gated: vec![0.0; len(self.gated)?],
            update: vec![0.0; len(self.update)?],
            token: match layers.first().map(|l| &l.mixer) {
                Some(PackedMixer::Mlp(mlp)) => mlp.scratch(),
                _ => TokenScratch::default(),
            },
            quantized: vec![0; len(self.quantized)?],
            row_scales: vec![0.0; len(self.row_scales)?],
        })
    }
}

/// What the CPU engine reads outside the blocks, widened to f32 once.
struct Tables {
    embed_tokens: Vec<f32>,
    embed_pos: Option<Vec<f32>>,
    lm_head: Vec<f32>,
    q_head: Vec<f32>,
}

/// The workers a pool of `threads` has: 1 where the platform cannot start
/// threads (WebAssembly without atomics: the browser page).
fn pool_threads(threads: usize) -> usize {
    if cfg!(all(target_arch = "wasm32", not(target_feature = "atomics"))) {
        1
    } else {
        threads
    }
}

/// A pool of `threads` workers; where the platform cannot start threads
/// the calling thread alone, as rayon's own global pool falls back there.
/// The threads it has.
fn worker_pool(threads: usize) -> Result<(rayon::ThreadPool, usize)> {
    let threads = pool_threads(threads);
    let mut builder = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("trm-cpu-{i}"));
    if cfg!(all(target_arch = "wasm32", not(target_feature = "atomics"))) {
        builder = builder.use_current_thread();
    }
    let pool = builder
        .build()
        .map_err(|e| TrmError::Input(format!("cannot start {threads} CPU threads: {e}")))?;
    Ok((pool, threads))
}

impl CpuEngine {
    /// An engine on all available cores (at most [`MAX_THREADS`]).
    pub fn new(model: Arc<TrmModel>) -> Result<Self> {
        Self::with_options(model, CpuOptions::default())
    }

    /// An engine on `threads` worker threads.
    pub fn with_threads(model: Arc<TrmModel>, threads: usize) -> Result<Self> {
        Self::with_options(model, CpuOptions::default().threads(threads))
    }

    /// An engine made as `options` say.
    ///
    /// Fails with [`TrmError::TooLarge`] beyond [`MAX_THREADS`] threads, or
    /// when the memory the configuration implies (every thread's scratch,
    /// the attention scores of S^2 floats among it, and the RoPE tables)
    /// exceeds [`CpuOptions::memory_limit`]: checked before anything is
    /// allocated or a thread started. Fails with [`TrmError::Config`] on a
    /// SwiGLU of width 0.
    pub fn with_options(model: Arc<TrmModel>, options: CpuOptions) -> Result<Self> {
        let threads = options
            .threads
            .unwrap_or_else(|| {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                cores.min(MAX_THREADS)
            })
            .max(1);
        if threads > MAX_THREADS {
            return Err(TrmError::TooLarge(format!(
                "{threads} CPU threads asked for; the CPU engine runs at most {MAX_THREADS}"
            )));
        }
        let memory_limit = match options.memory_limit {
            Some(bytes) => bytes,
            None => PuzzleBatch::max_state_bytes()?,
        };
        let kernel = if options.portable_kernels {
            Int8Kernel::Portable
        } else {
            Int8Kernel::detect()
        };
        let config = model.config();
        // a valid configuration, whose products the kernels cannot take
        // (expansion 0.05 at D = 8 rounds inter(D) to 0)
        let (channel, token) = (config.channel_inter(), config.token_inter());
        if channel == 0 || (config.mlp_t && token == 0) {
            return Err(TrmError::Config(format!(
                "the CPU engine needs SwiGLU widths of at least 1, but expansion {} makes inter(D = {}) = {channel}{}",
                config.expansion,
                config.hidden_size,
                if config.mlp_t {
                    format!(" and inter(S = {}) = {token}", config.state_len())
                } else {
                    String::new()
                }
            )));
        }
        // the weights' own copy: sized by the model, not the configuration
        let layers = PackedLayer::for_model(&model, options.activations, kernel);
        let sizes = ScratchSizes::new(config, &layers);
        let rope_memory = crate::model::maths::rope_tables_memory(config);
        check_memory(
            "the CPU engine",
            &sizes
                .memory(config, pool_threads(threads))
                .into_iter()
                .chain([rope_memory])
                .collect::<Vec<_>>(),
            memory_limit,
        )?;
        let (pool, threads) = worker_pool(threads)?;
        let rope = (!config.mlp_t && config.pos_encodings == PosEncodings::Rope)
            .then(|| rope_tables(config.state_len(), config.head_dim(), config.rope_theta));
        let scratch = (0..threads)
            .map(|_| sizes.allocate(&layers).map(Mutex::new))
            .collect::<Result<_>>()?;
        let w = model.weights();
        let tables = Tables {
            embed_tokens: w.embed_tokens.to_f32(),
            embed_pos: w.embed_pos.as_ref().map(|m| m.to_f32()),
            lm_head: w.lm_head.to_f32(),
            q_head: w.q_head_weight.to_f32(),
        };
        Ok(CpuEngine {
            layers,
            model,
            rope,
            tables,
            pool,
            threads,
            scratch,
            step_buffers: Mutex::new(None),
            work: None,
            activations: options.activations,
            memory_limit,
        })
    }

    /// What the products multiply the weights with (as asked: with
    /// `Matched`, f32 weights still take f32 activations).
    pub fn activations(&self) -> ActivationPrecision {
        self.activations
    }

    /// The integer kernel the channel products run on, when they run on
    /// one (int8 weights with matched activations).
    pub fn int8_kernel(&self) -> Option<Int8Kernel> {
        self.layers.first().and_then(|l| l.channel.int8_kernel())
    }

    /// The model.
    pub fn model(&self) -> &Arc<TrmModel> {
        &self.model
    }

    /// Worker threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The embedded input x, `[B, S, D]`: puzzle embedding (zero-padded to P
    /// positions) before the token embeddings, learned positions if any,
    /// all scaled by sqrt(D).
    ///
    /// Fails when a puzzle's row of the table is not finite (a table in a
    /// file mapping is checked as its rows are read).
    pub fn embed(&self, batch: &PuzzleBatch) -> Result<Vec<f32>> {
        let config = self.model.config();
        let sd = config.state_len() * config.hidden_size;
        let mut x = vec![0.0f32; batch.len() * sd];
        for (b, puzzle) in x.chunks_exact_mut(sd).enumerate() {
            self.embed_into(batch.puzzle_tokens(b), batch.puzzle_ids()[b], puzzle)?;
        }
        Ok(x)
    }

    /// [`CpuEngine::embed`] of one puzzle into its `[S, D]` rows.
    fn embed_into(&self, tokens: &[u32], puzzle_id: u32, puzzle: &mut [f32]) -> Result<()> {
        let config = self.model.config();
        let d = config.hidden_size;
        let p = config.puzzle_emb_positions();
        let scale = embedding_scale(config);
        puzzle.fill(0.0);
        // zero padding: positions beyond ndim stay 0
        let row = self.model.puzzle_rows(&[puzzle_id])?;
        puzzle[..row.len()].copy_from_slice(&row);
        let embed_tokens = &self.tables.embed_tokens;
        for (row, &token) in puzzle[p * d..].chunks_exact_mut(d).zip(tokens) {
            let t = token as usize;
            row.copy_from_slice(&embed_tokens[t * d..(t + 1) * d]);
        }
        if let Some(pos) = &self.tables.embed_pos {
            for (v, e) in puzzle.iter_mut().zip(pos) {
                *v = LEARNED_POS_SCALE * (*v + e);
            }
        }
        puzzle.iter_mut().for_each(|v| *v *= scale);
        Ok(())
    }

    /// One network call (one recursion step) on a batch of states:
    /// `state = net(state, injection)`, both `[B, S, D]`, with the latent
    /// update's network (HRM's L level). The unit the recursion throughput
    /// is counted in; used by the benchmarks.
    pub fn recursion_step(&self, state: &mut [f32], injection: &[f32]) -> Result<()> {
        self.recursion_steps(state, injection, 1)
    }

    /// `steps` network calls in a row, `state = net(state, injection)` each
    /// time, on the worker threads as a solve runs them: entering the pool
    /// once (handing work from the caller's thread to the pool and back
    /// costs two thread wake-ups). What `trm bench` times.
    pub fn recursion_steps(
        &self,
        state: &mut [f32],
        injection: &[f32],
        steps: usize,
    ) -> Result<()> {
        let config = self.model.config();
        let sd = config.state_len() * config.hidden_size;
        if state.is_empty() || !state.len().is_multiple_of(sd) || injection.len() != state.len() {
            return Err(TrmError::Input(format!(
                "recursion_step needs [B, S, D] states ({sd} values per puzzle), got {} and {}",
                state.len(),
                injection.len()
            )));
        }
        let puzzles = state.len() / sd;
        let plan = Plan::new(config, puzzles, self.threads);
        let mut cached = match self.step_buffers.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !matches!(&*cached, Some((n, _)) if *n == puzzles) {
            *cached = None; // the old buffers go first
            let bytes = Buffers::bytes(config, puzzles);
            let what = format!("the attention buffers of {puzzles} puzzles");
            check_memory("the CPU engine", &[(what, bytes)], self.memory_limit)?;
            *cached = Some((puzzles, Buffers::new(config, puzzles)));
        }
        if let Some((_, buffers)) = cached.as_mut() {
            self.pool.install(|| {
                join::team_awake(self.threads, || {
                    for _ in 0..steps {
                        self.net(Level::L, state, injection, buffers, plan);
                    }
                })
            });
        }
        Ok(())
    }

    /// Runs `f` with the calling pool thread's scratch.
    fn with_scratch<R>(&self, f: impl FnOnce(&mut TaskScratch) -> R) -> R {
        let index = rayon::current_thread_index().unwrap_or(0) % self.scratch.len();
        let mut guard = match self.scratch[index].lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// Splits `m` into column blocks of `cols` (the last may be narrower)
    /// and runs `f(block, first_column)` on them in parallel, without
    /// allocating.
    fn par_column_blocks(
        &self,
        m: MatMut<'_, f32>,
        first: usize,
        cols: usize,
        f: &(dyn Fn(MatMut<'_, f32>, usize) + Sync),
    ) {
        let n = m.ncols();
        if n <= cols {
            f(m, first);
        } else {
            let split = n.div_ceil(cols).div_ceil(2) * cols;
            let (a, b) = m.split_at_col_mut(split);
            join::join_spinning(
                || self.par_column_blocks(a, first, cols, f),
                || self.par_column_blocks(b, first + split, cols, f),
            );
        }
    }

    /// One network call of `level` on every running puzzle:
    /// `state = net(state, injection)`, both `[A, S, D]`.
    fn net(
        &self,
        level: Level,
        state: &mut [f32],
        injection: &[f32],
        buffers: &mut Buffers,
        plan: Plan,
    ) {
        let config = self.model.config();
        let (s, d) = (config.state_len(), config.hidden_size);
        let eps = config.rms_norm_eps as f32;
        for (index, packed) in self.layers[config.level_layers(level)].iter().enumerate() {
            // `state + injection` is the first layer's input: each of its
            // first tasks adds the part it reads, rather than a phase of
            // its own (and a wait for every thread) doing it beforehand
            let injection = (index == 0).then_some(injection);
            match &packed.mixer {
                PackedMixer::Mlp(mlp) => {
                    join::par_chunks(state, s * d, &|p, puzzle| {
                        let injection = injection.map(|all| &all[p * s * d..][..s * d]);
                        let task = |block: MatMut<'_, f32>, first: usize| {
                            let injection = injection.map(|inj| (&inj[first..], d));
                            self.with_scratch(|scratch| {
                                mlp.apply(block, injection, eps, &mut scratch.token)
                            })
                        };
                        self.par_column_blocks(
                            ops::mat_mut(puzzle, s, d),
                            0,
                            plan.cols_per_task,
                            &task,
                        );
                    });
                }
                PackedMixer::Attention { qkv_t, o_t } => {
                    let rope = self
                        .rope
                        .as_ref()
                        .map(|(c, sn)| (c.as_slice(), sn.as_slice()));
                    let rows = plan.rows_per_task;
                    let qkv = &mut buffers.qkv[..state.len() * 3];
                    qkv.par_chunks_mut(rows * 3 * d)
                        .zip(state.par_chunks_mut(rows * d))
                        .enumerate()
                        .for_each(|(i, (qkv, h))| {
                            if let Some(injection) = injection {
                                let add = &injection[i * rows * d..][..h.len()];
                                h.iter_mut().zip(add).for_each(|(h, a)| *h += a);
                            }
                            block::qkv_rows(qkv_t, h, qkv, d, config.head_dim(), rope, i * rows, s)
                        });
                    let attn = &mut buffers.attn[..state.len()];
                    let qkv = &*qkv;
                    attn.par_chunks_mut(s * d)
                        .zip(qkv.par_chunks(s * 3 * d))
                        .for_each(|(out, qkv)| {
                            let task = |head_block: MatMut<'_, f32>, first: usize| {
                                self.with_scratch(|scratch| {
                                    block::attention_head(
                                        qkv,
                                        first / config.head_dim(),
                                        head_block,
                                        d,
                                        &mut scratch.wide,
                                    )
                                })
                            };
                            self.par_column_blocks(
                                ops::mat_mut(out, s, d),
                                0,
                                config.head_dim(),
                                &task,
                            );
                        });
                    let attn = &*attn;
                    state
                        .par_chunks_mut(rows * d)
                        .zip(attn.par_chunks(rows * d))
                        .for_each(|(h, a)| {
                            self.with_scratch(|scratch| {
                                block::o_proj_rows(o_t, a, h, d, eps, scratch)
                            })
                        });
                }
            }
            // channel SwiGLU: row blocks of tokens of any puzzles
            join::par_chunks(state, plan.rows_per_task * d, &|_, rows| {
                self.with_scratch(|scratch| {
                    block::channel_swiglu_rows(&packed.channel, rows, eps, scratch)
                })
            });
        }
    }

    /// One ACT step on the first `occupied` slots: the calls of
    /// [`act_step_calls`], the injection `y + x` summed before each run of
    /// latent updates (y does not change within one).
    fn run_act_step(&self, work: &mut Work, occupied: usize, plan: Plan) {
        let config = self.model.config();
        let n = occupied * config.state_len() * config.hidden_size;
        let Work {
            x,
            y,
            z,
            injection,
            buffers,
            ..
        } = work;
        let (x, y, z, injection) = (&x[..n], &mut y[..n], &mut z[..n], &mut injection[..n]);
        let rows = plan.rows_per_task * config.hidden_size;
        let mut summed = false;
        for call in act_step_calls(config) {
            match call {
                Call::Latent => {
                    if !summed {
                        injection
                            .par_chunks_mut(rows)
                            .zip(y.par_chunks(rows))
                            .zip(x.par_chunks(rows))
                            .for_each(|((i, y), x)| {
                                for ((i, a), b) in i.iter_mut().zip(y).zip(x) {
                                    *i = a + b;
                                }
                            });
                        summed = true;
                    }
                    self.net(Level::L, z, injection, buffers, plan);
                }
                Call::Answer => {
                    self.net(Level::H, y, z, buffers, plan);
                    summed = false;
                }
            }
        }
    }

    /// Output heads of one puzzle: logits of the sequence positions and the
    /// two Q logits from position 0.
    fn heads(&self, y: &[f32], logits: &mut [f32]) -> (f32, f32) {
        let config = self.model.config();
        let w = self.model.weights();
        let d = config.hidden_size;
        let p = config.puzzle_emb_positions();
        let (seq, vocab) = (config.seq_len, config.vocab_size);
        ops::matmul_into(
            ops::mat_mut(logits, seq, vocab),
            ops::mat(&y[p * d..], seq, d),
            ops::mat(&self.tables.lm_head, vocab, d).transpose(),
            faer::Par::Seq,
        );
        let dot = |row: &[f32]| -> f32 { row.iter().zip(&y[..d]).map(|(a, b)| a * b).sum() };
        let q = &self.tables.q_head;
        (
            dot(&q[..d]) + w.q_head_bias[0],
            dot(&q[d..2 * d]) + w.q_head_bias[1],
        )
    }
}

impl Engine for CpuEngine {
    fn config(&self) -> &TrmConfig {
        self.model.config()
    }

    fn describe(&self) -> String {
        format!("cpu ({} threads)", self.threads)
    }

    fn solve_from(
        &mut self,
        batch: &PuzzleBatch,
        carry: Option<&Carry>,
        options: &SolveOptions,
    ) -> Result<SolveOutput> {
        let out = program::solve_batch(self, batch, carry, options);
        // a solve's buffers go with it, as a batch's memory should
        self.work = None;
        out
    }
}

impl SlotEngine for CpuEngine {
    fn open_slots(&mut self, slots: usize) -> Result<usize> {
        let config = self.model.config();
        let slots = slots.max(1);
        // the buffers of the last stream serve when they are large enough
        match &mut self.work {
            Some(work) if work.slots >= slots => {}
            _ => {
                self.work = None; // the old buffers go first
                check_memory(
                    "the CPU engine",
                    &Work::memory(config, slots),
                    self.memory_limit,
                )?;
                let n = slots * config.state_len() * config.hidden_size;
                self.work = Some(Work {
                    slots,
                    x: vec![0.0; n],
                    y: vec![0.0; n],
                    z: vec![0.0; n],
                    injection: vec![0.0; n],
                    buffers: Buffers::new(config, slots),
                    logits: vec![0.0; slots * config.seq_len * config.vocab_size],
                    q: vec![[0.0; 2]; slots],
                })
            }
        }
        Ok(slots)
    }

    fn fill_slots(&mut self, fills: &[Fill<'_>]) -> Result<()> {
        let model = Arc::clone(&self.model);
        let config = model.config();
        let sd = config.state_len() * config.hidden_size;
        let most = fills.iter().map(|f| f.slot).max().unwrap_or(0);
        let mut work = self.take_work(most)?;
        // every fill checked before any slot is written: a refused fill
        // changes nothing
        if let Some(f) = fills
            .iter()
            .find(|f| f.carry.is_some_and(|(h, l)| h.len() != sd || l.len() != sd))
        {
            self.work = Some(work);
            return Err(TrmError::Input(format!(
                "slot {}'s carry must hold {sd} values each",
                f.slot
            )));
        }
        let mut x = vec![0.0; sd];
        for f in fills {
            if let Err(e) = self.embed_into(f.tokens, f.puzzle_id, &mut x) {
                self.work = Some(work);
                return Err(e);
            }
            work.x[f.slot * sd..(f.slot + 1) * sd].copy_from_slice(&x);
        }
        let w = model.weights();
        for f in fills {
            let (y, z) = (
                &mut work.y[f.slot * sd..(f.slot + 1) * sd],
                &mut work.z[f.slot * sd..(f.slot + 1) * sd],
            );
            match f.carry {
                Some((z_h, z_l)) => {
                    y.copy_from_slice(z_h);
                    z.copy_from_slice(z_l);
                }
                None => {
                    for (y, z) in y
                        .chunks_exact_mut(config.hidden_size)
                        .zip(z.chunks_exact_mut(config.hidden_size))
                    {
                        y.copy_from_slice(&w.h_init);
                        z.copy_from_slice(&w.l_init);
                    }
                }
            }
        }
        self.work = Some(work);
        Ok(())
    }

    fn add_noise(
        &mut self,
        slot: usize,
        state: crate::noise::State,
        draw: &crate::noise::NoiseDraw,
    ) -> Result<()> {
        let sd = self.model.config().state_len() * self.model.config().hidden_size;
        let mut work = self.take_work(slot)?;
        let values = match state {
            crate::noise::State::ZH => &mut work.y[slot * sd..(slot + 1) * sd],
            crate::noise::State::ZL => &mut work.z[slot * sd..(slot + 1) * sd],
        };
        crate::noise::add_noise(
            values,
            draw.sigma,
            draw.seed,
            draw.puzzle,
            draw.trajectory,
            draw.step,
            state,
        );
        self.work = Some(work);
        Ok(())
    }

    fn move_slot(&mut self, from: usize, to: usize) -> Result<()> {
        let sd = self.model.config().state_len() * self.model.config().hidden_size;
        let mut work = self.take_work(from.max(to))?;
        for buf in [&mut work.x, &mut work.y, &mut work.z] {
            buf.copy_within(from * sd..(from + 1) * sd, to * sd);
        }
        self.work = Some(work);
        Ok(())
    }

    /// One ACT step (the CPU runs no further ahead: the program gets each
    /// step's halting at once), the heads where the run asks, halting by
    /// the model's rule.
    async fn act_steps(&mut self, occupied: usize, run: ActRun) -> Result<ActReport> {
        if occupied == 0 {
            return Err(TrmError::Input("an ACT step over no slots".into()));
        }
        let mut work = self.take_work(occupied - 1)?;
        let model = Arc::clone(&self.model);
        let config = model.config();
        let plan = Plan::new(config, occupied, self.threads);
        let sd = config.state_len() * config.hidden_size;
        let l = config.seq_len * config.vocab_size;
        // the heads where this step is one a slot may leave after
        let heads = run.halt || (run.heads && run.max_steps == 1);
        self.pool.install(|| {
            join::team_awake(self.threads, || {
                self.run_act_step(&mut work, occupied, plan);
                if heads {
                    let Work { y, logits, q, .. } = &mut work;
                    for slot in 0..occupied {
                        let (h, c) = self.heads(
                            &y[slot * sd..(slot + 1) * sd],
                            &mut logits[slot * l..(slot + 1) * l],
                        );
                        q[slot] = [h, c];
                    }
                }
            })
        });
        let last = run.last && run.max_steps == 1;
        let done = (0..occupied)
            .map(|slot| last || (run.halt && config.halts(work.q[slot][0], work.q[slot][1])))
            .collect();
        self.work = Some(work);
        Ok(ActReport {
            ran: vec![1; occupied],
            done,
            outputs: None,
        })
    }

    async fn read_slots(&mut self, slots: &[usize], carry: bool) -> Result<SolveOutput> {
        let config = self.model.config();
        let Some(work) = &self.work else {
            return Err(TrmError::Input("no slots are open".into()));
        };
        if let Some(&bad) = slots.iter().find(|&&s| s >= work.slots) {
            return Err(TrmError::Input(format!(
                "slot {bad} of {} slots",
                work.slots
            )));
        }
        let sd = config.state_len() * config.hidden_size;
        let l = config.seq_len * config.vocab_size;
        let mut out = SolveOutput::poisoned(config, slots.len());
        for (i, &slot) in slots.iter().enumerate() {
            out.logits[i * l..(i + 1) * l].copy_from_slice(&work.logits[slot * l..(slot + 1) * l]);
            [out.q_halt_logits[i], out.q_continue_logits[i]] = work.q[slot];
            if carry {
                out.z_h[i * sd..(i + 1) * sd].copy_from_slice(&work.y[slot * sd..(slot + 1) * sd]);
                out.z_l[i * sd..(i + 1) * sd].copy_from_slice(&work.z[slot * sd..(slot + 1) * sd]);
            }
        }
        Ok(if carry { out } else { out.without_carry() })
    }
}

impl CpuEngine {
    /// The open slots, taken out while an operation works on them; `slot`
    /// must be one of them.
    fn take_work(&mut self, slot: usize) -> Result<Work> {
        match self.work.take() {
            Some(work) if slot < work.slots => Ok(work),
            other => {
                let slots = other.as_ref().map_or(0, |w| w.slots);
                self.work = other;
                Err(TrmError::Input(format!(
                    "slot {slot} of {slots} open slots"
                )))
            }
        }
    }
}

/// Deterministic inputs in [-0.5, 0.5) for the kernels' tests.
#[cfg(test)]
mod test_values {
    pub(super) fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32)
            .map(|v| v / (1u32 << 24) as f32 - 0.5)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_keep_threads_busy_and_tiles_in_cache() {
        let sudoku = TrmConfig::sudoku_extreme();
        for threads in 1..=8 {
            for puzzles in [1, 2, 3, 7, 8, 64] {
                let plan = Plan::new(&sudoku, puzzles, threads);
                let rows = puzzles * 97;
                let row_tasks = rows.div_ceil(plan.rows_per_task);
                assert!(plan.rows_per_task <= MAX_ROWS_PER_TASK, "{plan:?}");
                assert!(row_tasks >= threads.min(rows), "{plan:?}");
                // balanced: no thread gets a whole task more than another
                // except through the last, shorter task
                assert!(
                    row_tasks.div_ceil(threads) * plan.rows_per_task
                        <= rows.div_ceil(threads) + plan.rows_per_task,
                    "{threads} threads, {puzzles} puzzles: {plan:?}"
                );
                assert!(plan.cols_per_task <= MAX_COLS_PER_TASK, "{plan:?}");
            }
        }
        // one puzzle on two threads: two row tasks, 49 and 48 rows, and
        // eight column tasks; eight puzzles: four row tasks of 194
        let plan = Plan::new(&sudoku, 1, 2);
        assert_eq!((plan.rows_per_task, plan.cols_per_task), (49, 64));
        assert_eq!(Plan::new(&sudoku, 8, 2).rows_per_task, 194);
    }
}
