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
//! - with matched activations (`ActivationPrecision::Matched`), int8 and
//!   bf16 weights stay at their precision and the products run on the
//!   CPU's integer or matrix units: AMX tiles (`amx.rs`, `amx_panels.rs`,
//!   `amx_token.rs`), or 512- or 256-bit VNNI (`int8_panels.rs`), chosen
//!   at run time or forced (`kernels.rs`);
//! - weights are laid out once, when the engine is made (`packed.rs`);
//! - nothing is allocated inside the recursion loop.
//!
//! The ACT loop is the solve program's (`crate::program`): this engine
//! provides its slots, keeping the occupied ones at the front of its
//! buffers, so a puzzle that halts leaves the lockstep group at the end of
//! that ACT step and costs nothing afterwards.

mod amx;
mod amx_panels;
mod amx_token;
mod block;
mod int8_panels;
mod join;
mod kernels;
pub(crate) mod ops;
mod options;
mod packed;
mod panels;
mod slots;
mod token_panels;

use std::sync::{Arc, Mutex};

use faer::MatMut;
use rayon::prelude::*;

use crate::batch::{PuzzleBatch, check_memory};
use crate::config::{Level, PosEncodings, TrmConfig};
use crate::error::{Result, TrmError};
use crate::model::TrmModel;
use crate::model::maths::{LEARNED_POS_SCALE, embedding_scale};
use block::TaskScratch;
use packed::{PackedLayer, PackedMixer};
use slots::Work;
use token_panels::TokenScratch;

/// The RoPE tables' old path: they are the model's maths, shared by both
/// engines ([`crate::model::maths`]).
pub use crate::model::maths::rope_tables;
pub use int8_panels::Int8Kernel;
pub use kernels::{KERNEL_ENV, KernelChoice};
pub use options::{ActivationPrecision, CpuOptions};

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
    /// Shared on WebAssembly, where every engine runs on the calling
    /// thread's one pool (`worker_pool`).
    pool: Arc<rayon::ThreadPool>,
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
    /// u16: the bf16 products' inputs (bf16 weights on AMX).
    bf16: u64,
    /// bytes: the AMX token mixer's scratch (MLP models on AMX).
    amx_token: u64,
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
                r * inter.max(d).next_multiple_of(64)
            } else {
                0
            },
            row_scales: if int8 { r } else { 0 },
            bf16: layers
                .first()
                .map_or(0, |l| l.bf16_scratch(r as usize) as u64),
            amx_token: match layers.first().map(|l| &l.mixer) {
                Some(PackedMixer::AmxMlp(mlp)) => mlp.scratch_bytes(),
                _ => 0,
            },
        }
    }

    /// What `threads` threads' scratch takes, by part (bytes, saturating).
    fn memory(&self, config: &TrmConfig, threads: usize) -> [(String, u64); 2] {
        let t = threads as u64;
        let rest = 4 * (self.gated + self.update + self.token + self.row_scales)
            + self.quantized
            + 2 * self.bf16
            + self.amx_token;
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
            amx_token: match layers.first().map(|l| &l.mixer) {
                Some(PackedMixer::AmxMlp(mlp)) => mlp.scratch(),
                _ => Default::default(),
            },
            quantized: vec![0; len(self.quantized)?],
            row_scales: vec![0.0; len(self.row_scales)?],
            bf16: vec![0; len(self.bf16)?],
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
/// (WebAssembly without atomics: the browser page) the calling thread
/// alone, as rayon's own global pool falls back there. The threads it has.
fn worker_pool(threads: usize) -> Result<(Arc<rayon::ThreadPool>, usize)> {
    #[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
    {
        let _ = threads;
        // A thread joins one rayon pool for good (`use_current_thread`
        // leaks its registration; a second pool on it fails with "already
        // part of another thread pool"), so every engine on this thread
        // shares the one pool made for the first: the page's check builds
        // a CPU engine per model.
        thread_local! {
            static CALLING_THREAD: std::cell::RefCell<Option<Arc<rayon::ThreadPool>>> =
                const { std::cell::RefCell::new(None) };
        }
        CALLING_THREAD.with(|cell| {
            let mut cell = cell.borrow_mut();
            if let Some(pool) = cell.as_ref() {
                return Ok((Arc::clone(pool), 1));
            }
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .use_current_thread()
                .build()
                .map_err(|e| TrmError::Input(format!("cannot run on the calling thread: {e}")))?;
            let pool = Arc::new(pool);
            *cell = Some(Arc::clone(&pool));
            Ok((pool, 1))
        })
    }
    #[cfg(not(all(target_arch = "wasm32", not(target_feature = "atomics"))))]
    {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("trm-cpu-{i}"))
            .build()
            .map_err(|e| TrmError::Input(format!("cannot start {threads} CPU threads: {e}")))?;
        Ok((Arc::new(pool), threads))
    }
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
        let kernels = options.kernels.resolve()?;
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
        let layers = PackedLayer::for_model(&model, options.activations, kernels);
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

    /// The kernel family the block products run on, as `trm bench` and
    /// `trm run --stats` report it: `f32` (f32 FMA), `amx-bf16` (bf16
    /// weights with matched activations on AMX), or for int8 weights with
    /// matched activations the integer kernel's name (`amx-int8`,
    /// `avx512-vnni`, `avx-vnni`, `avx2`, `portable`).
    pub fn kernel_family(&self) -> &'static str {
        self.layers.first().map_or("f32", |l| l.channel.family())
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
                PackedMixer::AmxMlp(mlp) => {
                    join::par_chunks(state, s * d, &|p, puzzle| {
                        let injection = injection.map(|all| &all[p * s * d..][..s * d]);
                        let task = |block: MatMut<'_, f32>, first: usize| {
                            let injection = injection.map(|inj| (&inj[first..], d));
                            self.with_scratch(|scratch| {
                                mlp.apply(block, injection, eps, &mut scratch.amx_token)
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
                PackedMixer::Attention { qkv: qkv_proj, o } => {
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
                            self.with_scratch(|scratch| {
                                block::qkv_rows(
                                    qkv_proj,
                                    h,
                                    qkv,
                                    d,
                                    config.head_dim(),
                                    rope,
                                    i * rows,
                                    s,
                                    scratch,
                                )
                            })
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
                                block::o_proj_rows(o, a, h, d, eps, scratch)
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
