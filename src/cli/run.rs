//! `trm run`: solve a batch from a safetensors input file.

use std::path::PathBuf;
use std::sync::Arc;

use trm_wgpu::augment::{AugmentTask, Selection};
use trm_wgpu::run::{self, RunOptions, RunOutput};
use trm_wgpu::shard::{self, RunSettings, Shard, ShardHeader};
use trm_wgpu::{
    ActivationPrecision, Backend, EngineOptions, GpuSchedule, PuzzleBatch, Result, TrmError,
    TrmModel,
};

use super::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Input: `inputs` (int32/int64 `[B, seq_len]`), optional
    /// `puzzle_identifiers` (int32/int64 `[B]`).
    #[arg(long, short = 'i')]
    input: PathBuf,
    /// Output: logits, q_halt_logits, q_continue_logits, z_H, z_L, steps.
    #[arg(long, short = 'o')]
    output: PathBuf,
    /// Engine: cpu, gpu, auto (GPU when an adapter exists and can run the
    /// model, else CPU), or the GPU on one API: vulkan, metal, dx12, gl.
    /// `gpu` and `auto` honour WGPU_BACKEND.
    #[arg(long, default_value = "cpu")]
    backend: Backend,
    /// GPU adapter: the first whose name contains this, case-insensitive
    /// (default: WGPU_ADAPTER_NAME, else the preferred adapter).
    #[arg(long)]
    adapter: Option<String>,
    /// ACT steps to run (default: the model's halt_max_steps).
    #[arg(long)]
    steps: Option<usize>,
    /// Early halting: stop each puzzle after the first ACT step where it
    /// halts (TRM: q_halt > 0; HRM: q_halt > q_continue).
    #[arg(long)]
    halt: bool,
    /// CPU worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// What the CPU engine's products multiply the weights with: f32, or
    /// matched (int8 weights: int8 activations on integer products; bf16
    /// weights on a CPU with AMX: bf16 activations on AMX tiles).
    /// TRM_CPU_KERNEL=amx|avx512-vnni|avx-vnni|avx2|portable forces a kernel.
    #[arg(long, default_value_t)]
    activations: ActivationPrecision,
    /// GPU schedule: fused (one workgroup per puzzle), spread (every phase
    /// over the whole device, for small batches) or auto (by batch size).
    #[arg(long, default_value = "auto", env = "TRM_GPU_SCHEDULE")]
    schedule: GpuSchedule,
    /// Print the solve's counters (recursion_steps, dispatches, submits,
    /// bytes_read_back, ...) as one JSON object, the last line of output.
    #[arg(long)]
    stats: bool,
    /// The task of the puzzles, whose symmetries --augment uses: sudoku,
    /// maze or arc.
    #[arg(long)]
    task: Option<AugmentTask>,
    /// Test-time augmentation: solve K symmetric variants of each puzzle
    /// (variant 0 the puzzle itself) and choose one answer by --select. The
    /// output adds `predictions`, `selected` and `agreement`.
    #[arg(long, requires = "task")]
    augment: Option<usize>,
    /// How --augment and --trajectories choose: q-halt (the highest
    /// q_halt), vote (equal answers pooled, weighted by sigmoid(q_halt)) or
    /// verifier (a valid answer where the task has a check: sudoku).
    #[arg(long, default_value = "q-halt")]
    select: Selection,
    /// Seed of the --augment variants and of the --noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Noisy trajectories (Probabilistic TRM): solve K trajectories of each
    /// puzzle (of each variant, with --augment), Gaussian noise of --noise
    /// added before every ACT step after the first, and choose by --select.
    #[arg(long, requires = "noise")]
    trajectories: Option<usize>,
    /// Standard deviation of the trajectories' noise (0: the plain solve).
    #[arg(long, requires = "trajectories")]
    noise: Option<f32>,
    /// The state the noise goes to: z_L (default), z_H or both.
    #[arg(long, default_value = "z_L", requires = "trajectories")]
    noise_on: trm_wgpu::noise::NoiseOn,
    /// Continuous batching (with --halt): at most N puzzles in flight, a
    /// halted puzzle's slot refilled with the next puzzle at once. Each
    /// puzzle's outputs are those the plain solve with --halt gives it.
    #[arg(long, requires = "halt", conflicts_with_all = ["augment", "batch", "trajectories"])]
    slots: Option<usize>,
    /// Solve the input in fixed batches of N puzzles, one after another
    /// (default: the whole input as one batch).
    #[arg(long, conflicts_with_all = ["augment", "trajectories"])]
    batch: Option<usize>,
    /// Solve only share K of N of the input's puzzles (0-based: 0/4 is the
    /// first quarter), to split a run across processes or machines. The
    /// output records the share and what the answers depend on; `trm merge`
    /// joins the N outputs into what the whole run writes.
    #[arg(long, value_name = "K/N", conflicts_with_all = ["augment", "trajectories"])]
    shard: Option<Shard>,
}

/// Solves the input file (or, with --shard, its share of it) and writes
/// the outputs.
pub fn run(args: RunArgs) -> Result<()> {
    let model = Arc::new(args.model.load()?);
    let engine_precision = model.precision();
    let mut batch = PuzzleBatch::load(&args.input, model.config())?;
    let mut options = RunOptions::default();
    options.steps = args.steps;
    options.halt = args.halt;
    options.task = args.task;
    options.augment = args.augment;
    options.select = args.select;
    options.seed = args.seed;
    options.trajectories = args.trajectories;
    options.noise = args.noise;
    options.noise_on = args.noise_on;
    options.slots = args.slots;
    options.batch = args.batch;
    // checked before an engine is built
    let solve = options.solve_options()?;
    let shard = match args.shard {
        Some(shard) => Some(shard_header(
            &args, shard, &model, &batch, &options, &solve,
        )?),
        None => None,
    };
    if let Some(header) = &shard {
        batch = batch.slice(header.shard.range(header.total));
    }
    let mut engine_options = EngineOptions::default();
    engine_options.adapter = args.adapter.clone();
    engine_options.threads = args.threads;
    engine_options.schedule = args.schedule;
    engine_options.activations = args.activations;
    let mut engine = args.backend.build(model, &engine_options)?;
    if let Some(reason) = engine.gpu_unavailable() {
        eprintln!("note: running on the CPU: {reason}");
    }
    let started = std::time::Instant::now();
    let done = run::run(&mut engine, &batch, &options)?;
    match (&shard, &done.output) {
        (Some(header), RunOutput::Plain(out)) => header.save(out, &args.output)?,
        _ => std::fs::write(&args.output, done.output.to_safetensors_bytes()?).map_err(|e| {
            TrmError::Io {
                path: args.output.clone(),
                source: e,
            }
        })?,
    }
    let out = done.output.output();
    if args.stats {
        let seconds = started.elapsed().as_secs_f64();
        let mut json = engine.stats_json(out);
        if let Some(map) = json.as_object_mut() {
            if let Some(stats) = done.stats {
                // the program's counts over the whole run (the engine's
                // cover its last solve)
                map.insert("recursion_steps".into(), stats.recursion_steps.into());
                map.insert("act_steps".into(), stats.act_steps.into());
                map.insert(
                    "puzzle_recursion_steps".into(),
                    stats.puzzle_recursion_steps.into(),
                );
                let key = if args.slots.is_some() {
                    "slots"
                } else {
                    "batch"
                };
                map.insert(key.into(), stats.slots.into());
            }
            map.insert("puzzles".into(), out.batch.into());
            map.insert("seconds".into(), seconds.into());
            map.insert(
                "puzzles_per_second".into(),
                (out.batch as f64 / seconds.max(1e-9)).into(),
            );
            map.insert("precision".into(), engine_precision.as_str().into());
            if let Some(header) = &shard {
                map.insert("shard".into(), header.shard.to_string().into());
            }
            if let Some(mib) = super::peak_resident_mib() {
                map.insert("peak_resident_mib".into(), mib.into());
            }
        }
        println!("{json}");
    }
    Ok(())
}

/// The header of `shard`'s output: its share of the input, and what the
/// answers depend on, so that `trm merge` joins only the shares of one run.
fn shard_header(
    args: &RunArgs,
    shard: Shard,
    model: &TrmModel,
    batch: &PuzzleBatch,
    options: &RunOptions,
    solve: &trm_wgpu::SolveOptions,
) -> Result<ShardHeader> {
    if options.depends_on_position() {
        return Err(TrmError::Input(
            "--shard cannot be combined with --augment or --trajectories: their variants and noise are drawn by each puzzle's position in the input, so a share would not answer as the whole run does".into(),
        ));
    }
    let total = batch.len();
    if shard.range(total).is_empty() {
        return Err(TrmError::Input(format!(
            "shard {shard} of {total} puzzles holds none: split into at most {total} shards"
        )));
    }
    let data_sha256 = shard::sha256_of_parts([
        &(batch.seq_len() as u64).to_le_bytes()[..],
        le_bytes(batch.tokens()).as_slice(),
        le_bytes(batch.puzzle_ids()).as_slice(),
    ]);
    Ok(ShardHeader {
        shard,
        total,
        first: shard.range(total).start,
        settings: RunSettings {
            model_sha256: shard::file_sha256(&args.model.model)?,
            precision: model.precision().as_str().into(),
            act_steps: solve.resolved_act_steps(model.config())?,
            early_halt: solve.early_halt,
            activations: args.activations.to_string(),
            data_sha256,
        },
    })
}

/// Little-endian bytes of `values`.
fn le_bytes(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}
