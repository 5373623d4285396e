//! Predict the path through a maze with an attention TRM (the Maze-Hard
//! variant: `mlp_t = false`, RoPE) and draw it over the grid.
//!
//! ```sh
//! cargo run --release --example maze                               # sample maze, golden model
//! cargo run --release --example maze -- my_maze.txt --model maze.safetensors --backend vulkan
//! ```
//!
//! The maze uses the official character set: `#` wall, space open, `S`
//! start, `G` goal (`o`, the path, is what the model predicts). Its side is
//! sqrt(seq_len) of the model: 30 for the official Maze-Hard model.
//!
//! Without a model argument it runs `tests/data/golden/maze_att_rope`, the
//! authors' code on RANDOM weights (an 8x8 maze model that was never
//! trained): it shows the pipeline, not a solved maze. Convert a trained
//! checkpoint with `trm convert` to see real paths.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use trm_wgpu::tasks::maze;
use trm_wgpu::{
    Backend, Engine, EngineOptions, LoadOptions, PuzzleBatch, SolveOptions, TrmError, TrmModel,
};

const GOLDEN_MODEL: &[u8] = include_bytes!("../tests/data/golden/maze_att_rope.model.safetensors");

/// An 8x8 maze for the golden model.
const SAMPLE: &str = "\
########
#S   # #
# ## # #
#  #   #
## # # #
#    #G#
# ##   #
########
";

#[derive(Parser, Debug)]
#[command(about = "Draw a TRM's predicted path through a maze")]
struct Args {
    /// Maze file (side x side characters from `# SGo`); `-` reads stdin.
    maze: Option<String>,
    /// A maze checkpoint, TRM or HRM (default: the golden random TRM).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Weight precision: f32, f16, bf16 or int8 (default: as stored).
    #[arg(long)]
    precision: Option<trm_wgpu::Precision>,
    /// cpu, gpu, auto, vulkan, metal, dx12 or gl.
    #[arg(long, default_value = "cpu")]
    backend: Backend,
    /// GPU adapter name (substring).
    #[arg(long)]
    adapter: Option<String>,
    /// ACT steps (default: the model's halt_max_steps).
    #[arg(long)]
    steps: Option<usize>,
}

fn main() {
    // before any thread or GPU instance exists
    trm_wgpu::GpuContext::quiet_device_select();
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> trm_wgpu::Result<()> {
    let mut options = LoadOptions::default();
    options.precision = args.precision;
    let model = match &args.model {
        Some(path) => TrmModel::load_with(path, &options, None)?,
        None => {
            TrmModel::from_safetensors_bytes(GOLDEN_MODEL, "golden maze_att_rope", &options, None)?
        }
    };
    let config = model.config().clone();
    let side = (config.seq_len as f64).sqrt().round() as usize;
    if side * side != config.seq_len || config.vocab_size < 6 {
        return Err(TrmError::Input(format!(
            "a maze model reads a square grid over the tokens of `# SGo`; this one has seq_len {} and vocab {}",
            config.seq_len, config.vocab_size
        )));
    }
    let text = match args.maze.as_deref() {
        None => SAMPLE.to_string(),
        Some("-") => {
            let mut t = String::new();
            std::io::stdin()
                .read_to_string(&mut t)
                .map_err(|e| TrmError::Input(format!("reading stdin: {e}")))?;
            t
        }
        Some(path) => {
            std::fs::read_to_string(path).map_err(|e| TrmError::Input(format!("{path}: {e}")))?
        }
    };
    let tokens = maze::parse(&text, side)?;
    let batch = PuzzleBatch::new(&config, &tokens, None)?;
    let mut engine = args.backend.build(
        Arc::new(model),
        &match &args.adapter {
            Some(name) => EngineOptions::default().adapter(name.clone()),
            None => EngineOptions::default(),
        },
    )?;
    if let Some(reason) = engine.gpu_unavailable() {
        eprintln!("note: running on the CPU: {reason}");
    }
    let steps = args.steps.unwrap_or(config.halt_max_steps);
    println!(
        "model: {} ({}x{} mazes, {} heads, pos_encodings {})",
        args.model.as_ref().map_or(
            "golden maze_att_rope (random weights, never trained)".into(),
            |p| p.display().to_string()
        ),
        side,
        side,
        config.num_heads,
        config.pos_encodings.as_str()
    );
    println!("engine: {}", engine.describe());
    // the answer only: no carry read back
    let options = SolveOptions::default().act_steps(steps).carry(false);
    let out = engine.solve(&batch, &options)?;
    let predicted = out.puzzle_predictions(0);
    let (on_open, on_walls) = maze::path_cells(&tokens, &predicted);
    println!("maze:");
    print!("{text}");
    println!(
        "predicted path (o) after {steps} ACT step(s), q_halt {:+.2}:",
        out.q_halt_logits[0]
    );
    print!("{}", maze::overlay_path(&tokens, &predicted, side)?);
    println!("path cells: {on_open} on open cells, {on_walls} predicted on walls");
    Ok(())
}
