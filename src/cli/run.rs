//! `trm run`: solve a batch from a safetensors input file.

use std::path::PathBuf;
use std::sync::Arc;

use trm_wgpu::augment::{self, AugmentOptions, AugmentTask, Selection};
use trm_wgpu::program::{self, StreamStats};
use trm_wgpu::{
    ActivationPrecision, Backend, Engine, EngineOptions, GpuSchedule, PuzzleBatch, Result,
    SolveOptions, SolveOutput, TrmError,
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
    /// matched (int8 weights: per-token int8 activations on integer
    /// products).
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
}

/// The largest --steps accepted: the ACT loop's counters are 32-bit, and a
/// solve of more steps than this is a typo rather than a plan.
const MAX_ACT_STEPS: usize = 1 << 16;

pub fn run(args: RunArgs) -> Result<()> {
    let model = Arc::new(args.model.load()?);
    let engine_precision = model.precision();
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
    engine_options.activations = args.activations;
    let mut engine = args.backend.build(model, &engine_options)?;
    if let Some(reason) = engine.gpu_unavailable() {
        eprintln!("note: running on the CPU: {reason}");
    }
    if let (Some(k), Some(sigma)) = (args.trajectories, args.noise) {
        if k == 0 || u32::try_from(k).is_err() || !sigma.is_finite() || sigma < 0.0 {
            return Err(TrmError::Input(format!(
                "--trajectories {k} --noise {sigma}: at least one trajectory and a finite sigma >= 0"
            )));
        }
        options = options.noise(trm_wgpu::noise::NoiseOptions {
            sigma,
            seed: args.seed,
            on: args.noise_on,
            trajectories: k as u32,
        });
    }
    if args.select == Selection::Verifier && args.task.is_none() {
        return Err(TrmError::Input(
            "--select verifier needs --task (a task with a verifier: sudoku)".into(),
        ));
    }
    let started = std::time::Instant::now();
    let mut program_stats = None;
    let augment_variants = match (args.augment, args.trajectories) {
        (None, Some(_)) => Some(1),
        (variants, _) => variants,
    };
    let out = match (augment_variants, args.slots, args.batch) {
        (_, Some(0), _) | (_, _, Some(0)) => {
            return Err(TrmError::Input(
                "--slots and --batch take at least one puzzle".into(),
            ));
        }
        (Some(variants), _, _) => {
            let augment = AugmentOptions {
                // trajectories alone: one variant, the identity, of any task
                task: args.task.unwrap_or(AugmentTask::Sudoku),
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
        (None, Some(slots), _) => {
            let (out, stats) =
                program::solve_streaming(&mut engine, &batch, None, slots, &options)?;
            out.save(&args.output)?;
            program_stats = Some(stats);
            out
        }
        (None, None, Some(size)) => {
            // fixed batches one after another: network calls add up
            let per_act = engine.config().recursion_steps_per_act_step() as u64;
            let mut stats = StreamStats {
                slots: size as u64,
                ..StreamStats::default()
            };
            let mut all: Option<SolveOutput> = None;
            for start in (0..batch.len()).step_by(size) {
                let part = batch.slice(start..(start + size).min(batch.len()));
                let out = engine.solve(&part, &options)?;
                let most = u64::from(out.steps.iter().copied().max().unwrap_or(0));
                stats.act_steps += most;
                stats.recursion_steps += most * per_act;
                stats.puzzle_recursion_steps +=
                    out.steps.iter().map(|&s| u64::from(s)).sum::<u64>() * per_act;
                stats.puzzles += out.batch as u64;
                match &mut all {
                    None => all = Some(out),
                    Some(all) => all.append(out)?,
                }
            }
            let out = all.ok_or_else(|| TrmError::Input("the batch holds no puzzles".into()))?;
            out.save(&args.output)?;
            program_stats = Some(stats);
            out
        }
        (None, None, None) => {
            let out = engine.solve(&batch, &options)?;
            out.save(&args.output)?;
            out
        }
    };
    if args.stats {
        let seconds = started.elapsed().as_secs_f64();
        let mut json = engine.stats_json(&out);
        if let Some(map) = json.as_object_mut() {
            if let Some(stats) = program_stats {
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
            if let Some(mib) = super::peak_resident_mib() {
                map.insert("peak_resident_mib".into(), mib.into());
            }
        }
        println!("{json}");
    }
    Ok(())
}
