//! `trm run`: solve a batch from a safetensors input file.

use std::path::PathBuf;
use std::sync::Arc;

use trm_wgpu::augment::{self, AugmentOptions, AugmentTask, Selection};
use trm_wgpu::{
    Backend, Engine, EngineOptions, GpuSchedule, PuzzleBatch, Result, SolveOptions, TrmError,
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
    /// How --augment chooses: q-halt (the variant with the highest
    /// q_halt), vote (equal answers pooled, weighted by sigmoid(q_halt)) or
    /// verifier (a valid answer where the task has a check: sudoku).
    #[arg(long, default_value = "q-halt", requires = "augment")]
    select: Selection,
    /// Seed of the --augment variants.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// The largest --steps accepted: the ACT loop's counters are 32-bit, and a
/// solve of more steps than this is a typo rather than a plan.
const MAX_ACT_STEPS: usize = 1 << 16;

pub fn run(args: RunArgs) -> Result<()> {
    let model = Arc::new(args.model.load()?);
    let batch = PuzzleBatch::load(&args.input, model.config())?;
    let mut options = SolveOptions::default().early_halt(args.halt);
    if let Some(steps) = args.steps {
        if steps > MAX_ACT_STEPS {
            return Err(TrmError::Input(format!(
                "--steps {steps} is beyond the {MAX_ACT_STEPS} ACT steps a solve may run"
            )));
        }
        options = options.act_steps(steps);
    }
    let mut engine_options = EngineOptions::default();
    engine_options.adapter = args.adapter.clone();
    engine_options.threads = args.threads;
    engine_options.schedule = args.schedule;
    let mut engine = args.backend.build(model, &engine_options)?;
    if let Some(reason) = engine.gpu_unavailable() {
        eprintln!("note: running on the CPU: {reason}");
    }
    let out = match args.augment {
        Some(variants) => {
            let augment = AugmentOptions {
                task: args.task.expect("clap requires --task"),
                variants,
                select: args.select,
                seed: args.seed,
            };
            let augmented = augment::solve_augmented(&mut engine, &batch, &options, &augment)?;
            let bytes = augmented.to_safetensors_bytes()?;
            std::fs::write(&args.output, bytes).map_err(|e| TrmError::Io {
                path: args.output.clone(),
                source: e,
            })?;
            augmented.output
        }
        None => {
            let out = engine.solve(&batch, &options)?;
            out.save(&args.output)?;
            out
        }
    };
    if args.stats {
        println!("{}", engine.stats_json(&out));
    }
    Ok(())
}
