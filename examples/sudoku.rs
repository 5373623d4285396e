//! Solve Sudoku puzzles with a trained TRM and watch the recursion refine
//! its answer.
//!
//! ```sh
//! cargo run --release --example sudoku                      # 100 sample puzzles, CPU
//! cargo run --release --example sudoku -- --backend vulkan --limit 5 --trace
//! echo "97..1..266.34.7...15..624.9...6.4.8...9..36477469.8...3...467...62.89.1389.531.6." \
//!   | cargo run --release --example sudoku -- -
//! ```
//!
//! Without a model argument it uses `data/sudoku-easy`, a small TRM-MLP
//! (0.52M parameters) trained on easy generated puzzles (36-50 givens): NOT
//! the paper's Sudoku-Extreme model. See `data/sudoku-easy/README.md`.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use trm_wgpu::augment::{AugmentOptions, AugmentTask, Selection, solve_augmented};
use trm_wgpu::tasks::sudoku::{Grid, generate, side_by_side};
use trm_wgpu::{
    Backend, Carry, Engine, EngineOptions, LoadOptions, PuzzleBatch, SolveOptions, TrmModel,
};

const SAMPLE_MODEL: &[u8] = include_bytes!("../data/sudoku-easy/model.safetensors");
const SAMPLE_PUZZLES: &str = include_str!("../data/sudoku-easy/puzzles.txt");
const SAMPLE_SOLUTIONS: &str = include_str!("../data/sudoku-easy/solutions.txt");

/// Puzzles per solve call (and per tick of the progress bar).
const CHUNK: usize = 25;

#[derive(Parser, Debug)]
#[command(about = "Solve Sudoku puzzles with a TRM")]
struct Args {
    /// Puzzles, 81 characters a line (`.` or `0` blank); `-` reads stdin.
    /// Default: the 100 sample puzzles of data/sudoku-easy.
    puzzles: Option<String>,
    /// A Sudoku checkpoint, TRM or HRM (default: the embedded sudoku-easy
    /// TRM-MLP).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Weight precision: f32, f16, bf16 or int8 (default: as stored).
    #[arg(long)]
    precision: Option<trm_wgpu::Precision>,
    /// What the CPU engine's products multiply the weights with: f32, or
    /// matched (int8 weights: per-token int8 activations).
    #[arg(long, default_value_t)]
    activations: trm_wgpu::ActivationPrecision,
    /// cpu, gpu, auto, vulkan, metal, dx12 or gl.
    #[arg(long, default_value = "cpu")]
    backend: Backend,
    /// GPU adapter name (substring).
    #[arg(long)]
    adapter: Option<String>,
    /// ACT steps (default: the model's halt_max_steps, 16).
    #[arg(long)]
    steps: Option<usize>,
    /// Stop each puzzle once it halts by its model's rule (TRM: q_halt > 0,
    /// HRM: q_halt > q_continue).
    #[arg(long)]
    halt: bool,
    /// Show how the answer and q_halt change over the ACT steps.
    #[arg(long)]
    trace: bool,
    /// Solve only the first N puzzles.
    #[arg(long)]
    limit: Option<usize>,
    /// `grid` (puzzle and answer side by side) or `line` (81 characters).
    #[arg(long, default_value = "grid")]
    format: String,
    /// Print only the summary.
    #[arg(long)]
    summary: bool,
    /// Test-time augmentation: solve K symmetric variants of each puzzle
    /// (relabelled digits, permuted rows, bands, columns, stacks, maybe
    /// transposed; variant 0 the puzzle itself) and choose by --select.
    #[arg(long, default_value_t = 1)]
    augment: usize,
    /// How --augment chooses: q-halt, vote or verifier.
    #[arg(long, default_value = "q-halt")]
    select: Selection,
    /// Seed of the --augment variants.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Solve N fresh seeded puzzles instead (see --givens, --generate-seed).
    #[arg(long)]
    generate: Option<usize>,
    /// Givens of generated puzzles, as MIN-MAX.
    #[arg(long, default_value = "36-50")]
    givens: String,
    /// Seed of generated puzzles.
    #[arg(long, default_value_t = 1)]
    generate_seed: u64,
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
        None => TrmModel::from_safetensors_bytes(
            SAMPLE_MODEL,
            "data/sudoku-easy/model.safetensors",
            &options,
            None,
        )?,
    };
    let config = model.config().clone();
    if config.seq_len != 81 || config.vocab_size != 11 {
        return Err(trm_wgpu::TrmError::Input(format!(
            "a Sudoku model reads 81 cells over 11 tokens; this one has seq_len {} and vocab {}",
            config.seq_len, config.vocab_size
        )));
    }
    let (text, solutions) = match args.puzzles.as_deref() {
        None if args.generate.is_some() => {
            let (lo, hi) = args
                .givens
                .split_once('-')
                .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
                .filter(|(a, b)| a <= b && *b <= 81)
                .ok_or_else(|| {
                    trm_wgpu::TrmError::Input(format!("--givens {}: use MIN-MAX", args.givens))
                })?;
            let mut rng = trm_wgpu::rng::SplitMix64::new(args.generate_seed);
            let (mut text, mut sols) = (String::new(), Vec::new());
            for _ in 0..args.generate.unwrap_or(0) {
                let givens = lo + rng.below((hi - lo + 1) as u64) as usize;
                let (puzzle, solution) = generate(&mut rng, givens);
                text.push_str(&puzzle.to_line());
                text.push('\n');
                sols.push(solution);
            }
            (text, Some(sols))
        }
        None => (
            SAMPLE_PUZZLES.to_string(),
            Some(Grid::parse_many(SAMPLE_SOLUTIONS)?),
        ),
        Some("-") => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| trm_wgpu::TrmError::Input(format!("reading stdin: {e}")))?;
            (text, None)
        }
        Some(path) => (
            std::fs::read_to_string(path)
                .map_err(|e| trm_wgpu::TrmError::Input(format!("{path}: {e}")))?,
            None,
        ),
    };
    let mut puzzles = Grid::parse_many(&text)?;
    if let Some(n) = args.limit {
        puzzles.truncate(n);
    }
    if puzzles.is_empty() {
        return Err(trm_wgpu::TrmError::Input("no puzzles to solve".into()));
    }
    let steps = args.steps.unwrap_or(config.halt_max_steps);
    let precision = model.precision();
    let mut engine = args.backend.build(
        Arc::new(model),
        &match &args.adapter {
            Some(name) => EngineOptions::default().adapter(name.clone()),
            None => EngineOptions::default(),
        }
        .activations(args.activations),
    )?;
    if let Some(reason) = engine.gpu_unavailable() {
        eprintln!("note: running on the CPU: {reason}");
    }
    let model_name = match &args.model {
        Some(path) => path.display().to_string(),
        None => "data/sudoku-easy (a small TRM-MLP trained on easy puzzles, not the paper's Sudoku-Extreme model)".to_string(),
    };
    println!(
        "model: {model_name}, {} parameters, {}",
        config.parameter_count(),
        precision
    );
    println!("engine: {}", engine.describe());
    println!(
        "solving {} puzzle(s), {} ACT step(s){}",
        puzzles.len(),
        steps,
        if args.halt {
            " at most (early halting)"
        } else {
            ""
        }
    );

    let progress = if puzzles.len() > CHUNK {
        let bar = ProgressBar::new(puzzles.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} puzzles {elapsed} (eta {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    // answers[p], q_halt[p], steps_run[p]; with --trace also every step's
    let mut results = Vec::with_capacity(puzzles.len());
    for chunk in puzzles.chunks(CHUNK) {
        let tokens: Vec<u32> = chunk.iter().flat_map(|p| p.tokens()).collect();
        let batch = PuzzleBatch::new(&config, &tokens, None)?;
        if args.trace && args.augment > 1 {
            return Err(trm_wgpu::TrmError::Input(
                "--trace shows one solve; use it without --augment".into(),
            ));
        }
        if args.augment > 1 {
            let options = SolveOptions::default()
                .act_steps(steps)
                .early_halt(args.halt)
                .carry(false);
            let augment = AugmentOptions {
                task: AugmentTask::Sudoku,
                variants: args.augment,
                select: args.select,
                seed: args.seed,
            };
            let out = solve_augmented(&mut engine, &batch, &options, &augment)?;
            for i in 0..chunk.len() {
                let answer = Grid::from_tokens(&out.predictions[i * 81..(i + 1) * 81]);
                results.push((
                    answer,
                    out.output.q_halt_logits[i],
                    out.output.steps[i] as usize,
                    Vec::new(),
                ));
            }
        } else if args.trace {
            // one ACT step at a time from the carry: the recursion refining
            let mut carry: Option<Carry> = None;
            // per step: the answer, q_halt, and whether the model halts there
            let mut trail: Vec<Vec<(Grid, f32, bool)>> = vec![Vec::new(); chunk.len()];
            for _ in 0..steps {
                let out = engine.solve_from(
                    &batch,
                    carry.as_ref(),
                    &SolveOptions::default().act_steps(1),
                )?;
                for (i, t) in trail.iter_mut().enumerate() {
                    t.push((
                        Grid::from_tokens(&out.puzzle_predictions(i)),
                        out.q_halt_logits[i],
                        config.halts(out.q_halt_logits[i], out.q_continue_logits[i]),
                    ));
                }
                carry = Some(out.carry());
            }
            for t in trail {
                let halted_at = t.iter().position(|(_, _, halts)| *halts);
                let used = if args.halt {
                    halted_at.map_or(t.len(), |k| k + 1)
                } else {
                    t.len()
                };
                let (answer, q, _) = t[used - 1];
                results.push((answer, q, used, t));
            }
        } else {
            // the answers only: no carry read back
            let options = SolveOptions::default()
                .act_steps(steps)
                .early_halt(args.halt)
                .carry(false);
            let out = engine.solve(&batch, &options)?;
            for i in 0..chunk.len() {
                let answer = Grid::from_tokens(&out.puzzle_predictions(i));
                results.push((
                    answer,
                    out.q_halt_logits[i],
                    out.steps[i] as usize,
                    Vec::new(),
                ));
            }
        }
        if let Some(bar) = &progress {
            bar.inc(chunk.len() as u64);
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }

    let mut valid = 0;
    let mut exact = 0;
    for (i, (puzzle, (answer, q, used, trail))) in puzzles.iter().zip(&results).enumerate() {
        let ok = answer.solves(puzzle);
        valid += usize::from(ok);
        let matches = solutions.as_ref().is_some_and(|s| s[i] == *answer);
        exact += usize::from(matches);
        if args.summary {
            continue;
        }
        let verdict = if ok {
            "a valid solution, consistent with the givens"
        } else if !answer.keeps_givens_of(puzzle) {
            "NOT valid: it changes a given"
        } else {
            "NOT a valid Sudoku"
        };
        println!();
        println!(
            "puzzle {} ({} givens): {verdict}; q_halt {q:+.2} after {used} ACT step(s)",
            i + 1,
            puzzle.givens()
        );
        if args.format == "line" {
            println!("puzzle: {}", puzzle.to_line());
            println!("answer: {}", answer.to_line());
        } else {
            print!(
                "{}",
                side_by_side(&[("puzzle", puzzle), ("answer", answer)])
            );
        }
        if args.trace {
            let mut previous: Option<Grid> = None;
            for (k, (grid, q, _)) in trail.iter().enumerate() {
                let changed = previous.map_or(81 - puzzle.givens(), |p| grid.differences(&p));
                println!(
                    "  ACT step {:>2}: q_halt {:+7.2}  {:>2} cells changed  {}",
                    k + 1,
                    q,
                    changed,
                    if grid.solves(puzzle) {
                        "valid"
                    } else {
                        "not yet valid"
                    }
                );
                previous = Some(*grid);
            }
        }
    }
    let n = puzzles.len();
    println!();
    println!(
        "valid solutions: {valid}/{n} ({:.0}%)",
        100.0 * valid as f64 / n as f64
    );
    if solutions.is_some() {
        println!(
            "equal to the generator's solution: {exact}/{n} (a puzzle with few givens can have other valid solutions)"
        );
    }
    if args.halt {
        let used: usize = results.iter().map(|r| r.2).sum();
        println!("ACT steps used: {:.2} on average", used as f64 / n as f64);
    }
    Ok(())
}
