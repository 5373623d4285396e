//! How much each weight precision changes the answers: the README's
//! accuracy table.
//!
//! On the trained sudoku-easy model (`data/sudoku-easy`): the valid-solution
//! rate and the cells equal to the f32 answer after 1 and 16 ACT steps, on
//! the 100 sample puzzles and on fresh seeded puzzles (with fewer givens than
//! the model was trained on, where differences show). On random models of the
//! official Sudoku-Extreme shape: the relative L2 of the logits against f32
//! after 1 and 16 ACT steps.
//!
//! ```text
//! cargo run --release --example precision -- --fresh 1000 --givens 28-35
//! ```

use std::sync::Arc;

use clap::Parser;
use trm_wgpu::rng::SplitMix64;
use trm_wgpu::tasks::sudoku::{Grid, generate};
use trm_wgpu::{
    Backend, Engine, EngineOptions, LoadOptions, Precision, PuzzleBatch, SolveOptions, SolveOutput,
    TrmConfig, TrmModel,
};

const SAMPLE_MODEL: &[u8] = include_bytes!("../data/sudoku-easy/model.safetensors");
const SAMPLE_PUZZLES: &str = include_str!("../data/sudoku-easy/puzzles.txt");

#[derive(Parser, Debug)]
#[command(about = "Accuracy of each weight precision (the README's table)")]
struct Args {
    /// Fresh seeded puzzles besides the 100 samples.
    #[arg(long, default_value_t = 1000)]
    fresh: usize,
    /// Givens of the fresh puzzles, MIN-MAX (the model was trained on 36-50).
    #[arg(long, default_value = "28-35")]
    givens: String,
    /// Seed of the fresh puzzles.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Random official-shape models to compare logits on (0: none).
    #[arg(long, default_value_t = 1)]
    random_models: usize,
    /// Puzzles per random model.
    #[arg(long, default_value_t = 2)]
    random_puzzles: usize,
    /// cpu, gpu, auto, vulkan, metal, dx12 or gl.
    #[arg(long, default_value = "cpu")]
    backend: Backend,
    /// Puzzles per solve.
    #[arg(long, default_value_t = 100)]
    batch: usize,
}

fn main() {
    trm_wgpu::GpuContext::quiet_device_select();
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Answers after 1 and after 16 ACT steps (the second solve continues from
/// the first's carry), for each puzzle.
struct Answers {
    after_1: Vec<u32>,
    after_16: Vec<u32>,
    logits_1: Vec<f32>,
    logits_16: Vec<f32>,
}

fn solve(
    model: &TrmModel,
    backend: Backend,
    tokens: &[u32],
    batch: usize,
) -> trm_wgpu::Result<Answers> {
    let mut engine = backend.build(Arc::new(model.clone()), &EngineOptions::default())?;
    let config = model.config().clone();
    let mut answers = Answers {
        after_1: Vec::new(),
        after_16: Vec::new(),
        logits_1: Vec::new(),
        logits_16: Vec::new(),
    };
    for chunk in tokens.chunks(batch * config.seq_len) {
        let puzzles = PuzzleBatch::new(&config, chunk, None)?;
        let first: SolveOutput = engine.solve(&puzzles, &SolveOptions::default().act_steps(1))?;
        let rest = engine.solve_from(
            &puzzles,
            Some(&first.carry()),
            &SolveOptions::default().act_steps(15).carry(false),
        )?;
        answers.after_1.extend(first.predictions());
        answers.after_16.extend(rest.predictions());
        answers.logits_1.extend(&first.logits);
        answers.logits_16.extend(&rest.logits);
    }
    Ok(answers)
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        num += (x as f64 - y as f64).powi(2);
        den += (y as f64).powi(2);
    }
    (num / den.max(1e-300)).sqrt()
}

fn run(args: Args) -> trm_wgpu::Result<()> {
    let base = TrmModel::from_safetensors_bytes(
        SAMPLE_MODEL,
        "data/sudoku-easy/model.safetensors",
        &LoadOptions::default(),
        None,
    )?;
    let (lo, hi) = args
        .givens
        .split_once('-')
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
        .filter(|(a, b)| a <= b && *b <= 81)
        .ok_or_else(|| trm_wgpu::TrmError::Input("--givens takes MIN-MAX".into()))?;
    let samples = Grid::parse_many(SAMPLE_PUZZLES)?;
    let mut rng = SplitMix64::new(args.seed);
    let fresh: Vec<Grid> = (0..args.fresh)
        .map(|_| {
            let givens = lo + rng.below((hi - lo + 1) as u64) as usize;
            generate(&mut rng, givens).0
        })
        .collect();
    println!(
        "sudoku-easy on {}: valid solutions, and cells equal to the f32 answer, after 1 and 16 ACT steps",
        args.backend
    );
    println!(
        "| puzzles | precision | valid after 1 | valid after 16 | cells = f32 after 1 | cells = f32 after 16 |"
    );
    println!("|---|---|---|---|---|---|");
    let sets = [
        ("100 samples (36-50 givens)".to_string(), samples),
        (format!("{} fresh ({lo}-{hi} givens)", fresh.len()), fresh),
    ];
    for (name, puzzles) in &sets {
        if puzzles.is_empty() {
            continue;
        }
        let tokens: Vec<u32> = puzzles.iter().flat_map(|g| g.tokens()).collect();
        let reference = solve(&base, args.backend, &tokens, args.batch)?;
        for precision in Precision::ALL {
            let answers = if precision == base.precision() {
                None
            } else {
                Some(solve(
                    &base.to_precision(precision)?,
                    args.backend,
                    &tokens,
                    args.batch,
                )?)
            };
            let answers = answers.as_ref().unwrap_or(&reference);
            let valid = |preds: &[u32]| {
                puzzles
                    .iter()
                    .zip(preds.chunks_exact(81))
                    .filter(|(p, a)| Grid::from_tokens(a).solves(p))
                    .count()
            };
            let same = |a: &[u32], b: &[u32]| {
                100.0 * a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
            };
            println!(
                "| {name} | {precision} | {:.1}% | {:.1}% | {:.2}% | {:.2}% |",
                100.0 * valid(&answers.after_1) as f64 / puzzles.len() as f64,
                100.0 * valid(&answers.after_16) as f64 / puzzles.len() as f64,
                same(&answers.after_1, &reference.after_1),
                same(&answers.after_16, &reference.after_16),
            );
        }
    }

    if args.random_models > 0 {
        println!();
        println!(
            "random models of the official Sudoku-Extreme shape (D = 512, S = 97), block scale 1.0 (the authors' initialisation) and 0.5 (contractive): relative L2 of the logits against f32 (worst of {} models, {} puzzles each)",
            args.random_models, args.random_puzzles
        );
        println!("| precision | block scale | after 1 ACT step | after 16 ACT steps |");
        println!("|---|---|---|---|");
        for scale in [1.0f32, 0.5] {
            let mut rows: Vec<(Precision, f64, f64)> = Vec::new();
            for m in 0..args.random_models {
                let config = TrmConfig::sudoku_extreme();
                let model = TrmModel::random(config.clone(), 0x5eed + m as u64, scale)?;
                let mut rng = SplitMix64::new(m as u64);
                let n = args.random_puzzles.max(1);
                let tokens: Vec<u32> = (0..n * config.seq_len)
                    .map(|_| rng.below(config.vocab_size as u64) as u32)
                    .collect();
                let f32_answers = solve(&model, args.backend, &tokens, n)?;
                for precision in &Precision::ALL[1..] {
                    let q = solve(&model.to_precision(*precision)?, args.backend, &tokens, n)?;
                    rows.push((
                        *precision,
                        rel_l2(&q.logits_1, &f32_answers.logits_1),
                        rel_l2(&q.logits_16, &f32_answers.logits_16),
                    ));
                }
            }
            for precision in &Precision::ALL[1..] {
                let mine: Vec<_> = rows.iter().filter(|r| r.0 == *precision).collect();
                let worst = |f: fn(&&(Precision, f64, f64)) -> f64| {
                    mine.iter().map(f).fold(0.0f64, f64::max)
                };
                println!(
                    "| {precision} | {scale} | {:.1e} | {:.1e} |",
                    worst(|r| r.1),
                    worst(|r| r.2)
                );
            }
        }
    }
    Ok(())
}
