//! `trm run`: solve a batch from a safetensors input file.

use std::path::PathBuf;
use std::sync::Arc;

use trm_wgpu::{CpuEngine, Engine, PuzzleBatch, Result, SolveOptions, TrmError};

use super::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Input: `inputs` (int32/int64 [B, seq_len]), optional
    /// `puzzle_identifiers` (int32/int64 [B]).
    #[arg(long, short = 'i')]
    input: PathBuf,
    /// Output: logits, q_halt_logits, q_continue_logits, z_H, z_L, steps.
    #[arg(long, short = 'o')]
    output: PathBuf,
    /// Engine: cpu, gpu, auto (GPU when an adapter exists, else CPU), or a
    /// GPU backend: vulkan, metal, dx12, gl.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// ACT steps to run (default: the model's halt_max_steps).
    #[arg(long)]
    steps: Option<usize>,
    /// Early halting: stop each puzzle after the first ACT step with q_halt > 0.
    #[arg(long)]
    halt: bool,
    /// CPU worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

pub fn run(args: RunArgs) -> Result<()> {
    let model = Arc::new(args.model.load()?);
    let batch = PuzzleBatch::load(&args.input, model.config())?;
    let mut options = SolveOptions::default().early_halt(args.halt);
    if let Some(steps) = args.steps {
        options = options.act_steps(steps);
    }
    let mut engine: Box<dyn Engine> = match args.backend.as_str() {
        "cpu" => Box::new(match args.threads {
            Some(n) => CpuEngine::with_threads(model, n)?,
            None => CpuEngine::new(model)?,
        }),
        other => return Err(TrmError::BackendUnavailable(other.to_string())),
    };
    let out = engine.solve(&batch, &options)?;
    out.save(&args.output)
}
