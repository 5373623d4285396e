//! `trm bench`: recursion throughput of every available backend on the
//! official Sudoku-Extreme shape (or any checkpoint), time-boxed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use trm_wgpu::rng::SplitMix64;
use trm_wgpu::{
    CpuEngine, Engine, PuzzleBatch, Result, SolveOptions, TrmConfig, TrmError, TrmModel,
};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Backends to measure, comma-separated: cpu, gpu (every adapter found),
    /// vulkan, metal, dx12, gl; default: all available.
    #[arg(long, value_delimiter = ',')]
    backend: Vec<String>,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 8])]
    batch: Vec<usize>,
    /// Checkpoint to measure instead of the random Sudoku-Extreme shape.
    #[arg(long)]
    model: Option<PathBuf>,
    /// ACT steps per timed solve.
    #[arg(long, default_value_t = 1)]
    act_steps: usize,
    /// Time box per row, in seconds (a row always completes one solve).
    #[arg(long, default_value_t = 4.0)]
    seconds: f64,
    /// CPU worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// One JSON object per row instead of a table.
    #[arg(long)]
    json: bool,
}

/// One measured row.
#[derive(Serialize, Debug)]
struct Row {
    backend: String,
    adapter: String,
    batch: usize,
    net_calls_per_s: f64,
    /// Puzzles per second if every puzzle ran 16 ACT steps.
    puzzles_per_s_16_act: f64,
    gflops: f64,
    /// GPU time per recursion step from timestamp queries, where available.
    gpu_ms_per_recursion_step: Option<f64>,
    net_calls: u64,
    seconds: f64,
}

fn random_batch(config: &TrmConfig, batch: usize, seed: u64) -> Result<PuzzleBatch> {
    let mut rng = SplitMix64::new(seed);
    let tokens: Vec<i64> = (0..batch * config.seq_len)
        .map(|_| rng.below(config.vocab_size as u64) as i64)
        .collect();
    PuzzleBatch::new(config, &tokens, None)
}

/// Times whole solves of `act_steps` ACT steps until the time box is spent
/// (after one untimed warm-up solve that also builds any pipelines).
fn measure(
    engine: &mut dyn Engine,
    batch: &PuzzleBatch,
    act_steps: usize,
    time_box: Duration,
) -> Result<(u64, Duration)> {
    let config = engine.config().clone();
    let options = SolveOptions::default().act_steps(act_steps);
    engine.solve(batch, &SolveOptions::default().act_steps(1))?;
    let per_solve = (act_steps * config.recursion_steps_per_act_step() * batch.len()) as u64;
    let (mut calls, start) = (0u64, Instant::now());
    while calls == 0 || start.elapsed() < time_box {
        engine.solve(batch, &options)?;
        calls += per_solve;
    }
    Ok((calls, start.elapsed()))
}

fn row(
    backend: &str,
    adapter: String,
    config: &TrmConfig,
    batch: usize,
    calls: u64,
    elapsed: Duration,
) -> Row {
    let rate = calls as f64 / elapsed.as_secs_f64();
    Row {
        backend: backend.to_string(),
        adapter,
        batch,
        net_calls_per_s: rate,
        puzzles_per_s_16_act: rate / (16 * config.recursion_steps_per_act_step()) as f64,
        gflops: rate * config.flops_per_recursion_step() as f64 / 1e9,
        gpu_ms_per_recursion_step: None,
        net_calls: calls,
        seconds: elapsed.as_secs_f64(),
    }
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

pub fn bench(args: BenchArgs) -> Result<()> {
    let model = match &args.model {
        Some(path) => TrmModel::load(path)?,
        None => TrmModel::random(TrmConfig::sudoku_extreme(), 0x7e57, 1.0)?,
    };
    let model = Arc::new(model);
    let config = model.config().clone();
    if args.act_steps == 0 {
        return Err(TrmError::Input("--act-steps must be at least 1".into()));
    }
    let backends: Vec<String> = if args.backend.is_empty() {
        vec!["cpu".into()]
    } else {
        args.backend.clone()
    };
    let time_box = Duration::from_secs_f64(args.seconds.max(0.0));
    if !args.json {
        println!(
            "model: {} (D = {}, S = {}, {} net calls per ACT step, {:.3} GFLOP per net call)",
            args.model
                .as_ref()
                .map_or("random Sudoku-Extreme shape".to_string(), |p| p
                    .display()
                    .to_string()),
            config.hidden_size,
            config.state_len(),
            config.recursion_steps_per_act_step(),
            config.flops_per_recursion_step() as f64 / 1e9
        );
        println!(
            "{:<8} {:<44} {:>5} {:>12} {:>14} {:>9} {:>12}",
            "backend", "adapter", "batch", "net calls/s", "puzzles/s @16", "GFLOP/s", "GPU ms/step"
        );
    }
    for backend in &backends {
        for &batch_size in &args.batch {
            let batch = random_batch(&config, batch_size.max(1), 42)?;
            let result = match backend.as_str() {
                "cpu" => {
                    let mut engine = match args.threads {
                        Some(n) => CpuEngine::with_threads(model.clone(), n)?,
                        None => CpuEngine::new(model.clone())?,
                    };
                    let adapter = format!("{} ({} threads)", cpu_name(), engine.threads());
                    let (calls, elapsed) = measure(&mut engine, &batch, args.act_steps, time_box)?;
                    row("cpu", adapter, &config, batch.len(), calls, elapsed)
                }
                other => return Err(TrmError::BackendUnavailable(other.to_string())),
            };
            if args.json {
                println!("{}", serde_json::to_string(&result).unwrap_or_default());
            } else {
                println!(
                    "{:<8} {:<44} {:>5} {:>12.2} {:>14.4} {:>9.1} {:>12}",
                    result.backend,
                    result.adapter.chars().take(44).collect::<String>(),
                    result.batch,
                    result.net_calls_per_s,
                    result.puzzles_per_s_16_act,
                    result.gflops,
                    result
                        .gpu_ms_per_recursion_step
                        .map_or("-".to_string(), |ms| format!("{ms:.3}"))
                );
            }
        }
    }
    Ok(())
}
