//! `trm run`: solve a batch from a safetensors input file.

use std::path::PathBuf;
use std::sync::Arc;

use trm_wgpu::{
    Backend, CpuEngine, Engine, GpuBackend, GpuContext, GpuEngine, GpuOptions, PuzzleBatch, Result,
    SolveOptions, SolveOutput, TrmError, TrmModel,
};

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
    /// Early halting: stop each puzzle after the first ACT step with q_halt > 0.
    #[arg(long)]
    halt: bool,
    /// CPU worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print the solve's counters (recursion_steps, dispatches, submits,
    /// bytes_read_back, ...) as one JSON object, the last line of output.
    #[arg(long)]
    stats: bool,
}

/// The engine `--backend` chose.
enum Chosen {
    Cpu(CpuEngine),
    Gpu(Box<GpuEngine>),
}

impl Chosen {
    fn engine(&mut self) -> &mut dyn Engine {
        match self {
            Chosen::Cpu(e) => e,
            Chosen::Gpu(e) => e.as_mut(),
        }
    }

    /// The counters line: the GPU engine's own counts, or for the CPU the
    /// recursion steps its solve ran.
    fn stats(&self, out: &SolveOutput) -> serde_json::Value {
        match self {
            Chosen::Gpu(e) => {
                let mut stats =
                    serde_json::to_value(e.last_stats()).unwrap_or_else(|_| serde_json::json!({}));
                if let Some(map) = stats.as_object_mut() {
                    map.insert("engine".into(), "gpu".into());
                    let info = e.context().adapter_info();
                    map.insert("adapter".into(), info.name.clone().into());
                    map.insert(
                        "api".into(),
                        format!("{:?}", info.backend).to_lowercase().into(),
                    );
                }
                stats
            }
            Chosen::Cpu(e) => {
                let act_steps = out.steps.iter().copied().max().unwrap_or(0) as u64;
                let per_act = e.config().recursion_steps_per_act_step() as u64;
                serde_json::json!({
                    "engine": "cpu",
                    "recursion_steps": act_steps * per_act,
                    "act_steps": act_steps,
                    "puzzle_recursion_steps":
                        out.steps.iter().map(|&s| u64::from(s)).sum::<u64>() * per_act,
                })
            }
        }
    }
}

fn cpu(model: Arc<TrmModel>, threads: Option<usize>) -> Result<Chosen> {
    Ok(Chosen::Cpu(match threads {
        Some(n) => CpuEngine::with_threads(model, n)?,
        None => CpuEngine::new(model)?,
    }))
}

fn gpu(model: Arc<TrmModel>, api: GpuBackend, adapter: Option<&str>) -> Result<Chosen> {
    let mut options = GpuOptions::default().backend(api).with_env()?;
    if let Some(name) = adapter {
        options = options.adapter_name(name);
    }
    let context = GpuContext::new(&options)?;
    Ok(Chosen::Gpu(Box::new(GpuEngine::new(&context, model)?)))
}

fn choose(args: &RunArgs, model: Arc<TrmModel>) -> Result<Chosen> {
    match args.backend {
        Backend::Cpu => cpu(model, args.threads),
        Backend::Gpu(api) => gpu(model, api, args.adapter.as_deref()),
        Backend::Auto => match gpu(Arc::clone(&model), GpuBackend::Any, args.adapter.as_deref()) {
            Ok(chosen) => Ok(chosen),
            Err(
                e @ (TrmError::NoAdapter(_)
                | TrmError::AdapterUnsuitable { .. }
                | TrmError::RequestDevice { .. }
                | TrmError::BackendUnavailable(_)),
            ) => {
                eprintln!("note: running on the CPU: {e}");
                cpu(model, args.threads)
            }
            Err(e) => Err(e),
        },
    }
}

pub fn run(args: RunArgs) -> Result<()> {
    let model = Arc::new(args.model.load()?);
    let batch = PuzzleBatch::load(&args.input, model.config())?;
    let mut options = SolveOptions::default().early_halt(args.halt);
    if let Some(steps) = args.steps {
        options = options.act_steps(steps);
    }
    let mut chosen = choose(&args, model)?;
    let out = chosen.engine().solve(&batch, &options)?;
    out.save(&args.output)?;
    if args.stats {
        println!("{}", chosen.stats(&out));
    }
    Ok(())
}
